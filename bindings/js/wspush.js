// wspush.js: the client side of the wspush.v1 protocol (PROTOCOL.md), for browsers and Node >= 20.
// Dependency-free ES module. It connects, resumes with `since` after every drop so no notification
// is lost or repeated, and tells the app when that was impossible (`reset`). Usage: README.md.

/** The WebSocket subprotocol this client speaks. */
export const PROTOCOL = "wspush.v1";

/** Default options (milliseconds). */
export const DEFAULTS = Object.freeze({
  minDelay: 500,
  maxDelay: 30000,
  factor: 2,
  connectTimeout: 10000,
});

/** The event type every client event is dispatched as: a plain Event with a `detail`. */
export class WspushEvent extends Event {
  constructor(type, detail) {
    super(type);
    this.detail = detail;
  }
}

/**
 * The window [lo, hi] the delay before reconnection attempt `attempt` (0 = first) is drawn from:
 * hi = min(maxDelay, minDelay * factor^(attempt+1)), lo = max(minDelay, hi / factor).
 * Windows of successive attempts are adjacent, so delays never shrink until they reach the cap,
 * and every delay is within [minDelay, maxDelay].
 */
export function backoffWindow(attempt, { minDelay, maxDelay, factor }) {
  const hi = Math.min(maxDelay, minDelay * factor ** (attempt + 1));
  const lo = Math.max(minDelay, hi / factor);
  return [lo, hi];
}

const OPEN = 1; // WebSocket.OPEN; fakes and wrappers need not define the constant
const GAP_CLOSE_CODE = 4000;
const noop = () => {};

export class WspushClient extends EventTarget {
  #url;
  #WebSocket;
  #minDelay;
  #maxDelay;
  #factor;
  #connectTimeout;
  #random;

  #state = "closed";
  // The position: epoch null means "none" (never welcomed with history on, or history off).
  #epoch = null;
  #offset = 0;

  #ws = null;
  #generation = 0; // bumped whenever the current socket is abandoned: its late events are ignored
  #retryTimer = null;
  #connectTimer = null;
  #attempt = 0; // failed attempts since the last welcome: drives the backoff
  #welcomed = false; // the current socket got its welcome
  #everWelcomed = false;
  #sentSince = null; // the position the current socket asked to resume from
  #quickGapRetry = true; // one immediate reconnection per gap; a repeat gap without progress backs off

  /**
   * @param {string | URL | (() => string | URL | Promise<string | URL>)} url ws(s):// URL (or
   *   relative to the page in a browser); a function is called before every attempt (fresh tokens).
   * @param {object} [options] see README.md
   */
  constructor(url, options = {}) {
    super();
    if (typeof url !== "string" && !(url instanceof URL) && typeof url !== "function") {
      throw new TypeError("url must be a string, a URL or a function returning one");
    }
    this.#url = url;
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== "function") {
      throw new TypeError("no WebSocket constructor: pass one as options.WebSocket (Node: the ws package)");
    }
    this.#minDelay = options.minDelay ?? DEFAULTS.minDelay;
    this.#maxDelay = options.maxDelay ?? DEFAULTS.maxDelay;
    this.#factor = options.factor ?? DEFAULTS.factor;
    this.#connectTimeout = options.connectTimeout ?? DEFAULTS.connectTimeout;
    this.#random = options.random ?? Math.random;
    if (!(this.#minDelay > 0 && Number.isFinite(this.#minDelay))) throw new RangeError("minDelay must be > 0");
    if (!(this.#maxDelay >= this.#minDelay && Number.isFinite(this.#maxDelay))) {
      throw new RangeError("maxDelay must be >= minDelay");
    }
    if (!(this.#factor >= 1 && Number.isFinite(this.#factor))) throw new RangeError("factor must be >= 1");
    if (!(this.#connectTimeout > 0)) throw new RangeError("connectTimeout must be > 0");
    if (typeof this.#random !== "function") throw new TypeError("random must be a function");
    const position = options.position;
    if (position != null) {
      if (typeof position.epoch !== "string" || !Number.isSafeInteger(position.offset) || position.offset < 0) {
        throw new TypeError("position must be { epoch: string, offset: integer >= 0 }");
      }
      // An empty epoch is what a server without history says: nothing to resume from.
      if (position.epoch !== "") {
        this.#epoch = position.epoch;
        this.#offset = position.offset;
      }
    }
  }

  /** "connecting" | "open" | "reconnecting" | "closed" */
  get state() {
    return this.#state;
  }

  /** The last processed message's place in the user's stream, or null: persist it to resume later. */
  get position() {
    return this.#epoch === null ? null : { epoch: this.#epoch, offset: this.#offset };
  }

  /** Starts connecting (from "closed"); does nothing in any other state. */
  connect() {
    if (this.#state === "closed") {
      this.#attempt = 0;
      this.#dial();
    }
    return this;
  }

  /**
   * Reconnects now: skips a pending backoff wait, or replaces the current connection (e.g. when
   * the browser reports it is online again). From "closed" it is connect().
   */
  reconnect() {
    if (this.#state === "closed") return this.connect();
    if (this.#state === "reconnecting") {
      clearTimeout(this.#retryTimer);
      this.#retryTimer = null;
      this.#dial();
    } else {
      this.#drop({ cause: "client", immediate: true });
    }
    return this;
  }

  /** Closes the connection and stops reconnecting. The position is kept: connect() resumes. */
  close(code = 1000, reason = "") {
    if (this.#state === "closed") return;
    this.#abandonSocket(code, reason);
    this.#setState("closed", { cause: "client", code, reason });
  }

  /** Sends a frame to the server (raw, to its on_message); false when not connected. */
  send(data) {
    if (this.#ws?.readyState !== OPEN) return false;
    this.#ws.send(data);
    return true;
  }

  // ---- connection lifecycle ----

  #dial() {
    this.#abandonSocket(1000, "");
    const generation = this.#generation;
    this.#setState("connecting", { attempt: this.#attempt });
    if (generation !== this.#generation) return; // a listener closed or reconnected
    let target;
    try {
      target = typeof this.#url === "function" ? this.#url() : this.#url;
    } catch (error) {
      this.#failBeforeSocket(generation, error);
      return;
    }
    if (target && typeof target.then === "function") {
      target.then(
        (resolved) => this.#open(generation, resolved),
        (error) => this.#failBeforeSocket(generation, error),
      );
    } else {
      this.#open(generation, target);
    }
  }

  #open(generation, target) {
    if (generation !== this.#generation) return; // closed or replaced while the URL resolved
    const since = this.position;
    let ws;
    try {
      ws = new this.#WebSocket(resumeUrl(target, since), PROTOCOL);
    } catch (error) {
      this.#failBeforeSocket(generation, error);
      return;
    }
    this.#ws = ws;
    this.#sentSince = since;
    this.#welcomed = false;
    ws.binaryType = "arraybuffer";
    // One deadline for the handshake and the welcome: a black-holed connect can take minutes.
    this.#connectTimer = setTimeout(() => {
      if (generation !== this.#generation) return;
      this.#emitError(generation, new Error(`no welcome within ${this.#connectTimeout} ms`));
      if (generation === this.#generation) this.#drop({ cause: "timeout" });
    }, this.#connectTimeout);
    ws.onopen = () => {
      if (generation !== this.#generation) return;
      // Browsers accept a 101 that selected no subprotocol: such a server sends raw frames.
      if (ws.protocol !== PROTOCOL) {
        this.#protocolError(generation, `server selected subprotocol "${ws.protocol}", not ${PROTOCOL}`);
      }
    };
    ws.onmessage = (event) => {
      if (generation === this.#generation) this.#onFrame(generation, event.data);
    };
    ws.onerror = noop; // the close event that follows carries what we act on
    ws.onclose = (event) => {
      if (generation !== this.#generation) return;
      this.#ws = null;
      this.#scheduleRetry({ cause: "closed", code: event.code, reason: event.reason });
    };
  }

  #failBeforeSocket(generation, error) {
    if (generation !== this.#generation) return;
    this.#emitError(generation, error);
    if (generation === this.#generation) this.#scheduleRetry({ cause: "error" });
  }

  /** Stops listening to the current socket and closes it; its late events are ignored. */
  #abandonSocket(code, reason) {
    this.#generation++;
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#connectTimer);
    this.#retryTimer = this.#connectTimer = null;
    const ws = this.#ws;
    this.#ws = null;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.onerror = noop; // the ws package throws on an 'error' nobody listens to (close while connecting)
    try {
      ws.close(code, reason);
    } catch {
      // already closing, or a code the implementation refuses: the socket is dropped either way
    }
  }

  /** Drops the current socket on our side and schedules the next attempt. */
  #drop(info) {
    this.#abandonSocket(info.cause === "gap" ? GAP_CLOSE_CODE : 1000, info.cause);
    this.#scheduleRetry(info);
  }

  #scheduleRetry(info) {
    clearTimeout(this.#connectTimer);
    this.#connectTimer = null;
    const delay = info.immediate ? 0 : this.#nextDelay();
    const { immediate, ...detail } = info;
    // The timer is armed before listeners run, so close() or reconnect() from a listener cancels it.
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      this.#dial();
    }, delay);
    this.#setState("reconnecting", { ...detail, delay, attempt: this.#attempt });
  }

  #nextDelay() {
    const [lo, hi] = backoffWindow(this.#attempt, {
      minDelay: this.#minDelay,
      maxDelay: this.#maxDelay,
      factor: this.#factor,
    });
    this.#attempt++;
    return lo + this.#random() * (hi - lo);
  }

  // ---- frames ----

  #onFrame(generation, data) {
    if (typeof data !== "string") {
      this.#protocolError(generation, "binary frame (every wspush.v1 frame is JSON text)");
      return;
    }
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      this.#protocolError(generation, "frame is not JSON");
      return;
    }
    if (frame === null || typeof frame !== "object") {
      this.#protocolError(generation, "frame is not a JSON object");
    } else if (frame.type === "welcome") {
      this.#onWelcome(generation, frame);
    } else if (frame.type === "message") {
      if (this.#welcomed) this.#onMessage(generation, frame);
      else this.#protocolError(generation, "message before welcome");
    }
    // Other types are ignored: later protocol versions may add some.
  }

  #onWelcome(generation, welcome) {
    const { epoch, offset, recovered } = welcome;
    if (this.#welcomed) {
      this.#protocolError(generation, "second welcome");
      return;
    }
    if (typeof epoch !== "string" || !Number.isSafeInteger(offset) || offset < 0 || typeof recovered !== "boolean") {
      this.#protocolError(generation, "malformed welcome");
      return;
    }
    clearTimeout(this.#connectTimer);
    this.#connectTimer = null;
    this.#welcomed = true;
    this.#attempt = 0; // this connection worked: the next drop starts the backoff over
    const sent = this.#sentSince;
    const previous = this.position;
    // Recovered: the replay after `since` follows; adopt the welcome's epoch (it differs from ours
    // when we resumed from a no-stream placeholder and the stream began since) and keep our
    // offset. A claim that cannot be true (top below what we asked for) is treated as a reset.
    const honoured = recovered && sent !== null && offset >= sent.offset;
    let reset = null;
    if (honoured) {
      this.#epoch = epoch;
    } else {
      if (epoch === "") {
        this.#epoch = null; // history off: messages carry no offset, nothing to resume from
        this.#offset = 0;
      } else {
        this.#epoch = epoch;
        this.#offset = offset;
      }
      // Something may have been missed: we asked to resume and could not, or we were connected
      // before and the server keeps no history to replay from.
      if (sent !== null || this.#everWelcomed) {
        reset = { reason: sent !== null ? "not-recovered" : "no-history", previous, position: this.position };
      }
    }
    this.#everWelcomed = true;
    this.#dispatch("welcome", { epoch, offset, recovered: honoured, since: sent });
    if (generation !== this.#generation) return;
    if (reset) {
      this.#dispatch("reset", reset);
      if (generation !== this.#generation) return;
    }
    this.#setState("open", { recovered: honoured });
  }

  #onMessage(generation, message) {
    let data;
    let binary;
    if (typeof message.data === "string" && message.data_base64 === undefined) {
      data = message.data;
      binary = false;
    } else if (typeof message.data_base64 === "string" && message.data === undefined) {
      try {
        data = decodeBase64(message.data_base64);
      } catch {
        this.#protocolError(generation, "data_base64 is not base64");
        return;
      }
      binary = true;
    } else {
      this.#protocolError(generation, "message needs exactly one of data and data_base64");
      return;
    }
    const offset = message.offset;
    if (offset === undefined || offset === null) {
      // Broadcast or send to this connection: not part of the user's stream.
      this.#dispatch("message", { data, binary, offset: null, epoch: null });
      return;
    }
    if (!Number.isSafeInteger(offset) || offset < 1) {
      this.#protocolError(generation, "malformed offset");
      return;
    }
    // The first message of a new stream incarnation names its epoch: it starts over at 1.
    if (typeof message.epoch === "string" && message.epoch !== "" && message.epoch !== this.#epoch) {
      this.#epoch = message.epoch;
      this.#offset = 0;
    }
    if (this.#epoch === null) {
      // An offset without a known epoch cannot be resumed from: deliver, do not track.
      this.#dispatch("message", { data, binary, offset, epoch: null });
      return;
    }
    if (offset <= this.#offset) return; // duplicate
    if (offset > this.#offset + 1) {
      // The server dropped messages to us (slow consumer): reconnect, `since` makes it replay them.
      // The out-of-order one is not delivered: it comes again, in order, in the replay.
      const immediate = this.#quickGapRetry;
      this.#quickGapRetry = false;
      this.#drop({ cause: "gap", expected: this.#offset + 1, received: offset, immediate });
      return;
    }
    this.#offset = offset;
    this.#quickGapRetry = true;
    this.#dispatch("message", { data, binary, offset, epoch: this.#epoch });
  }

  #protocolError(generation, message) {
    this.#emitError(generation, new Error(`wspush.v1 protocol error: ${message}`));
    if (generation === this.#generation) this.#drop({ cause: "protocol", message });
  }

  #emitError(generation, error) {
    if (generation === this.#generation) this.#dispatch("error", { error });
  }

  #setState(state, detail) {
    const previous = this.#state;
    this.#state = state;
    this.#dispatch("statechange", { state, previous, ...detail });
  }

  #dispatch(type, detail) {
    // A throwing listener is reported by the EventTarget (browser console / Node uncaught
    // exception); it cannot break the client's state.
    this.dispatchEvent(new WspushEvent(type, detail));
  }
}

/** The URL of an attempt: ws(s) scheme, and `since` replaced (or removed when there is no position). */
export function resumeUrl(target, since) {
  const base = globalThis.location?.href;
  const url = base ? new URL(String(target), base) : new URL(String(target));
  if (url.protocol === "http:") url.protocol = "ws:";
  else if (url.protocol === "https:") url.protocol = "wss:";
  url.hash = "";
  // Edit the query by hand: URLSearchParams would re-encode the app's other parameters.
  const parts = url.search
    .slice(1)
    .split("&")
    .filter((part) => part !== "" && paramName(part) !== "since");
  if (since) parts.push(`since=${encodeURIComponent(`${since.epoch}:${since.offset}`)}`);
  url.search = parts.length ? `?${parts.join("&")}` : "";
  return url.href;
}

function paramName(part) {
  const name = part.split("=", 1)[0].replace(/\+/g, " ");
  try {
    return decodeURIComponent(name);
  } catch {
    return name;
  }
}

function decodeBase64(text) {
  const binary = atob(text); // throws on anything but base64
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}
