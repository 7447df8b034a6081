// Types for wspush.js (the wspush.v1 client). Behaviour: README.md; wire format: PROTOCOL.md.

/** The WebSocket subprotocol the client offers: "wspush.v1". */
export declare const PROTOCOL: "wspush.v1";

export declare const DEFAULTS: Readonly<{
  minDelay: 500;
  maxDelay: 30000;
  factor: 2;
  connectTimeout: 10000;
}>;

/** Where the client is in the user's stream: resume from here. */
export interface Position {
  /** Opaque stream incarnation id; never parse it. */
  epoch: string;
  /** Offset of the last message processed (0: none yet in this epoch). */
  offset: number;
}

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

/** Why the client is reconnecting. */
export type ReconnectCause =
  /** the socket closed (server close, network loss, refused connection) */
  | "closed"
  /** a message skipped an offset; reconnecting with since makes the server replay it */
  | "gap"
  /** no welcome within connectTimeout */
  | "timeout"
  /** the server broke the protocol (see the error event) */
  | "protocol"
  /** the URL function or the WebSocket constructor threw (see the error event) */
  | "error"
  /** reconnect() was called */
  | "client";

/** The minimal WebSocket the client needs (the browser's, or the ws package's in Node). */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol: string;
  binaryType: string;
  // Handlers are typed loosely so that both the DOM's and the ws package's WebSocket fit.
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  send(data: any): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface WspushClientOptions {
  /** WebSocket constructor; default globalThis.WebSocket. In Node 20: `import WebSocket from "ws"`. */
  WebSocket?: WebSocketConstructor;
  /** Resume from here on the first connection (e.g. saved in sessionStorage). */
  position?: Position | null;
  /** Smallest reconnection delay, ms (default 500). Must be > 0. */
  minDelay?: number;
  /** Largest reconnection delay, ms (default 30000). Must be >= minDelay. */
  maxDelay?: number;
  /** Growth of the delay window per failed attempt (default 2). Must be >= 1. */
  factor?: number;
  /** Deadline for the handshake plus the welcome, ms (default 10000). */
  connectTimeout?: number;
  /** Source of jitter in [0, 1) (default Math.random); for tests. */
  random?: () => number;
}

export interface StateChangeDetail {
  state: ConnectionState;
  previous: ConnectionState;
  /** "connecting": failed attempts so far; "reconnecting": attempts counted for the next delay. */
  attempt?: number;
  /** "reconnecting": ms until the next attempt. */
  delay?: number;
  /** "reconnecting": why; "closed": "client". */
  cause?: ReconnectCause;
  /** Close code and reason ("reconnecting" after cause "closed", and "closed"). */
  code?: number;
  reason?: string;
  /** "reconnecting" after a gap: the offset expected and the one received. */
  expected?: number;
  received?: number;
  /** "reconnecting" after a protocol error. */
  message?: string;
  /** "open": whether the server replayed everything since the position sent. */
  recovered?: boolean;
}

export interface WelcomeDetail {
  epoch: string;
  /** Top of the user's stream when the connection joined. */
  offset: number;
  /** True when the replay after `since` follows (validated against what was sent). */
  recovered: boolean;
  /** The position sent as since, or null. */
  since: Position | null;
}

export interface MessageDetail {
  /** Text as a string; binary decoded from base64. */
  data: string | Uint8Array;
  binary: boolean;
  /** The message's offset in the user's stream; null for broadcasts and sends to one connection. */
  offset: number | null;
  epoch: string | null;
}

export interface ResetDetail {
  /** "not-recovered": since was sent and not honoured; "no-history": the server keeps no history. */
  reason: "not-recovered" | "no-history";
  /** The position before the reset (null with no-history). */
  previous: Position | null;
  /** The position adopted from the welcome (null when the server keeps no history). */
  position: Position | null;
}

export interface ErrorDetail {
  error: Error;
}

// Self-contained (not the DOM lib's names) so the types also check in Node-only projects.
type ListenerOptions = boolean | { capture?: boolean; once?: boolean; passive?: boolean; signal?: AbortSignal };
type AnyListener = ((event: Event) => void) | { handleEvent(event: Event): void } | null;

/** Every event the client dispatches: a plain Event with a `detail`. */
export declare class WspushEvent<T = unknown> extends Event {
  constructor(type: string, detail: T);
  readonly detail: T;
}

export interface WspushEventMap {
  statechange: WspushEvent<StateChangeDetail>;
  welcome: WspushEvent<WelcomeDetail>;
  message: WspushEvent<MessageDetail>;
  reset: WspushEvent<ResetDetail>;
  error: WspushEvent<ErrorDetail>;
}

export declare class WspushClient extends EventTarget {
  constructor(
    url: string | URL | (() => string | URL | Promise<string | URL>),
    options?: WspushClientOptions,
  );
  readonly state: ConnectionState;
  /** The last processed message's position, or null (none yet, or history off on the server). */
  readonly position: Position | null;
  /** Starts connecting from "closed"; no-op otherwise. */
  connect(): this;
  /** Reconnects now (skips a backoff wait or replaces the connection); from "closed", connect(). */
  reconnect(): this;
  /** Closes and stops reconnecting; the position is kept, connect() resumes from it. */
  close(code?: number, reason?: string): void;
  /** Sends a raw frame to the server's on_message; false when not connected. */
  send(data: string | ArrayBufferLike | ArrayBufferView | Blob): boolean;

  addEventListener<K extends keyof WspushEventMap>(
    type: K,
    listener: (this: WspushClient, event: WspushEventMap[K]) => void,
    options?: ListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: AnyListener,
    options?: ListenerOptions,
  ): void;
  removeEventListener<K extends keyof WspushEventMap>(
    type: K,
    listener: (this: WspushClient, event: WspushEventMap[K]) => void,
    options?: ListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: AnyListener,
    options?: ListenerOptions,
  ): void;
}

/** The delay window [lo, hi] (ms) for reconnection attempt `attempt` (0-based). */
export declare function backoffWindow(
  attempt: number,
  options: { minDelay: number; maxDelay: number; factor: number },
): [number, number];

/** The URL of an attempt: ws(s) scheme, no fragment, `since` replaced by `position` (or removed). */
export declare function resumeUrl(target: string | URL, position: Position | null): string;
