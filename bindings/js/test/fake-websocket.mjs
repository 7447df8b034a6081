// A scriptable stand-in for the WebSocket class: no network, the test plays the server.

export class FakeWebSocket {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;
  /** Every socket constructed, in order. */
  static instances = [];

  static reset() {
    FakeWebSocket.instances = [];
  }

  static get last() {
    return FakeWebSocket.instances.at(-1);
  }

  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.protocol = "";
    this.readyState = FakeWebSocket.CONNECTING;
    this.binaryType = "blob";
    this.sent = [];
    this.closedWith = null; // { code, reason } when the client called close()
    this.onopen = this.onmessage = this.onerror = this.onclose = null;
    FakeWebSocket.instances.push(this);
  }

  get since() {
    return new URL(this.url).searchParams.get("since");
  }

  send(data) {
    if (this.readyState !== FakeWebSocket.OPEN) throw new Error("send on a socket that is not open");
    this.sent.push(data);
  }

  close(code, reason) {
    this.closedWith = { code, reason };
    this.readyState = FakeWebSocket.CLOSED;
  }

  // ---- the server's side ----

  serverOpen(protocol = "wspush.v1") {
    this.protocol = protocol;
    this.readyState = FakeWebSocket.OPEN;
    this.onopen?.({ type: "open" });
  }

  serverSend(frame) {
    this.onmessage?.({ type: "message", data: typeof frame === "string" ? frame : JSON.stringify(frame) });
  }

  welcome(epoch, offset, recovered = false) {
    this.serverSend({ type: "welcome", epoch, offset, recovered });
  }

  /** Open, then welcome: the usual start of a connection. */
  accept(epoch, offset, recovered = false) {
    this.serverOpen();
    this.welcome(epoch, offset, recovered);
  }

  serverClose(code = 1006, reason = "") {
    this.readyState = FakeWebSocket.CLOSED;
    this.onerror?.({ type: "error" });
    this.onclose?.({ type: "close", code, reason, wasClean: code !== 1006 });
  }
}
