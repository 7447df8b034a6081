// The client's state machine against a scripted fake WebSocket and node's mock timers: no network,
// no real time. Each test plays the server's side of PROTOCOL.md and checks what the app sees.

import { test } from "node:test";
import assert from "node:assert/strict";

import { WspushClient, backoffWindow, resumeUrl, PROTOCOL } from "../wspush.js";
import { FakeWebSocket } from "./fake-websocket.mjs";

const URL_ALICE = "ws://push.test/ws?user=alice";
const EVENT_TYPES = ["statechange", "welcome", "message", "reset", "error"];

/** A client on the fake WebSocket with mocked timers; records every event it dispatches. */
function setup(t, options = {}, url = URL_ALICE) {
  FakeWebSocket.reset();
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const client = new WspushClient(url, {
    WebSocket: FakeWebSocket,
    minDelay: 100,
    maxDelay: 1000,
    factor: 2,
    random: () => 0.5,
    ...options,
  });
  const events = [];
  for (const type of EVENT_TYPES) client.addEventListener(type, (event) => events.push({ type, ...event.detail }));
  const of = (type) => events.filter((event) => event.type === type);
  return {
    client,
    events,
    of,
    messages: () => of("message").map((event) => event.data),
    states: () => of("statechange").map((event) => event.state),
    tick: (ms) => t.mock.timers.tick(ms),
  };
}

test("connects with the wspush.v1 subprotocol and is open only after the welcome", (t) => {
  const { client, of, states } = setup(t);
  assert.equal(client.state, "closed");
  client.connect();
  const ws = FakeWebSocket.last;
  assert.equal(ws.url, URL_ALICE);
  assert.equal(ws.protocols, PROTOCOL);
  assert.equal(ws.since, null, "no position yet: no since");
  assert.equal(client.state, "connecting");
  ws.serverOpen();
  assert.equal(client.state, "connecting", "the socket is open but the welcome has not come");
  ws.welcome("e1", 7);
  assert.equal(client.state, "open");
  assert.deepEqual(states(), ["connecting", "open"]);
  assert.deepEqual(client.position, { epoch: "e1", offset: 7 });
  assert.deepEqual(of("welcome")[0], { type: "welcome", epoch: "e1", offset: 7, recovered: false, since: null });
  assert.deepEqual(of("reset"), [], "a first connection without a position is no reset");
});

test("delivers text and binary messages in order, drops duplicates, passes untracked ones through", (t) => {
  const { client, of, messages } = setup(t);
  client.connect();
  const ws = FakeWebSocket.last;
  ws.accept("e1", 0);
  ws.serverSend({ type: "message", offset: 1, epoch: "e1", data: "one" });
  ws.serverSend({ type: "message", offset: 2, data_base64: "AAH/gA==" });
  ws.serverSend({ type: "message", offset: 2, data: "two again" }); // duplicate
  ws.serverSend({ type: "message", offset: 1, data: "one again" }); // duplicate
  ws.serverSend({ type: "message", data: "broadcast" });
  ws.serverSend({ type: "message", offset: 3, data: "three" });
  assert.deepEqual(messages(), ["one", new Uint8Array([0, 1, 255, 128]), "broadcast", "three"]);
  const [one, two, broadcast] = of("message");
  assert.deepEqual([one.offset, one.epoch, one.binary], [1, "e1", false]);
  assert.ok(two.data instanceof Uint8Array);
  assert.deepEqual([two.offset, two.binary], [2, true]);
  assert.deepEqual([broadcast.offset, broadcast.epoch], [null, null], "a broadcast carries no position");
  assert.deepEqual(client.position, { epoch: "e1", offset: 3 });
  assert.equal(FakeWebSocket.instances.length, 1, "nothing made it reconnect");
});

test("position in a message listener already counts that message (so the app can persist it)", (t) => {
  const { client } = setup(t);
  const seen = [];
  client.addEventListener("message", () => seen.push(client.position.offset));
  client.connect();
  FakeWebSocket.last.accept("e1", 4);
  FakeWebSocket.last.serverSend({ type: "message", offset: 5, data: "x" });
  FakeWebSocket.last.serverSend({ type: "message", offset: 6, data: "y" });
  assert.deepEqual(seen, [5, 6]);
});

test("after a drop it waits a backoff delay and resumes with since=E:K, replacing the URL's since", (t) => {
  const url = "ws://push.test/ws?user=a%20b&since=stale%3A9&x=1+2";
  const { client, of, tick, messages } = setup(t, {}, url);
  client.connect();
  const first = FakeWebSocket.last;
  assert.equal(new URL(first.url).search, "?user=a%20b&x=1+2", "a since from the URL is not ours: removed");
  first.accept("ep-1.x", 2);
  first.serverSend({ type: "message", offset: 3, data: "three" });
  first.serverClose(1001, "going away");
  const reconnecting = of("statechange").at(-1);
  assert.equal(reconnecting.state, "reconnecting");
  assert.equal(reconnecting.cause, "closed");
  assert.equal(reconnecting.code, 1001);
  assert.equal(reconnecting.reason, "going away");
  assert.equal(reconnecting.delay, 150, "first window [100, 200], random 0.5");
  tick(149);
  assert.equal(FakeWebSocket.instances.length, 1, "not before the delay");
  tick(1);
  const second = FakeWebSocket.last;
  assert.equal(FakeWebSocket.instances.length, 2);
  assert.equal(new URL(second.url).search, "?user=a%20b&x=1+2&since=ep-1.x%3A3", "other parameters untouched");
  assert.equal(second.since, "ep-1.x:3");
  second.accept("ep-1.x", 5, true);
  second.serverSend({ type: "message", offset: 4, data: "four" });
  second.serverSend({ type: "message", offset: 5, data: "five" });
  assert.deepEqual(messages(), ["three", "four", "five"]);
  assert.deepEqual(of("reset"), []);
  assert.equal(of("welcome").at(-1).recovered, true);
  assert.equal(client.state, "open");
});

test("a resume the server could not honour raises reset with the old and new positions", (t) => {
  const { client, of, tick, messages } = setup(t);
  client.connect();
  FakeWebSocket.last.accept("old", 0);
  FakeWebSocket.last.serverSend({ type: "message", offset: 1, epoch: "old", data: "a" });
  FakeWebSocket.last.serverClose();
  tick(1000);
  assert.equal(FakeWebSocket.last.since, "old:1");
  const order = [];
  client.addEventListener("reset", () => order.push(`reset in state ${client.state}`));
  client.addEventListener("statechange", (event) => order.push(event.detail.state));
  FakeWebSocket.last.accept("new", 3, false);
  assert.deepEqual(order, ["reset in state connecting", "open"], "reset comes before open");
  assert.deepEqual(of("reset"), [
    {
      type: "reset",
      reason: "not-recovered",
      previous: { epoch: "old", offset: 1 },
      position: { epoch: "new", offset: 3 },
    },
  ]);
  FakeWebSocket.last.serverSend({ type: "message", offset: 4, data: "live" });
  assert.deepEqual(messages(), ["a", "live"]);
  assert.deepEqual(client.position, { epoch: "new", offset: 4 });
});

test("resuming from a no-stream placeholder: recovered with the stream's new epoch, no reset", (t) => {
  const { client, of, tick, messages } = setup(t);
  client.connect();
  FakeWebSocket.last.accept("n00ff.0", 0); // the user had no stream yet
  assert.deepEqual(client.position, { epoch: "n00ff.0", offset: 0 });
  FakeWebSocket.last.serverClose();
  tick(1000);
  assert.equal(FakeWebSocket.last.since, "n00ff.0:0");
  // The stream began while we were away: the server verified the placeholder and replays it.
  FakeWebSocket.last.accept("5eed", 2, true);
  FakeWebSocket.last.serverSend({ type: "message", epoch: "5eed", offset: 1, data: "first" });
  FakeWebSocket.last.serverSend({ type: "message", offset: 2, data: "second" });
  assert.deepEqual(messages(), ["first", "second"]);
  assert.deepEqual(of("reset"), []);
  assert.equal(of("welcome").at(-1).recovered, true);
  assert.deepEqual(client.position, { epoch: "5eed", offset: 2 });
});

test("a recovered claim that cannot be true (top below the since sent) is treated as a reset", (t) => {
  const { client, of, tick } = setup(t);
  client.connect();
  FakeWebSocket.last.accept("e1", 5);
  FakeWebSocket.last.serverClose();
  tick(1000);
  FakeWebSocket.last.accept("e1", 3, true);
  assert.equal(of("reset").length, 1);
  assert.equal(of("welcome").at(-1).recovered, false);
  assert.deepEqual(client.position, { epoch: "e1", offset: 3 });
});

test("an initial position from the options is resumed from on the first connection", (t) => {
  const { client, of, messages } = setup(t, { position: { epoch: "saved", offset: 41 } });
  assert.deepEqual(client.position, { epoch: "saved", offset: 41 });
  client.connect();
  assert.equal(FakeWebSocket.last.since, "saved:41");
  FakeWebSocket.last.accept("saved", 42, true);
  FakeWebSocket.last.serverSend({ type: "message", offset: 42, data: "missed while the page was gone" });
  assert.deepEqual(messages(), ["missed while the page was gone"]);
  assert.deepEqual(of("reset"), []);
});

test("an initial position the server no longer has raises reset on the first welcome", (t) => {
  const { client, of } = setup(t, { position: { epoch: "saved", offset: 41 } });
  client.connect();
  FakeWebSocket.last.accept("fresh", 0, false);
  assert.equal(of("reset").length, 1);
  assert.deepEqual(of("reset")[0].previous, { epoch: "saved", offset: 41 });
});

test("a gap is not delivered: the client reconnects at once with since=E:last and gets the replay", (t) => {
  const { client, of, tick, messages } = setup(t);
  client.connect();
  const first = FakeWebSocket.last;
  first.accept("e", 0);
  first.serverSend({ type: "message", offset: 1, epoch: "e", data: "1" });
  first.serverSend({ type: "message", offset: 2, data: "2" });
  first.serverSend({ type: "message", offset: 4, data: "4" }); // 3 was dropped by the server
  first.serverSend({ type: "message", offset: 5, data: "5" }); // late frame of the abandoned socket
  assert.deepEqual(messages(), ["1", "2"], "nothing out of order reaches the app");
  assert.deepEqual(first.closedWith, { code: 4000, reason: "gap" });
  const reconnecting = of("statechange").at(-1);
  assert.deepEqual(
    [reconnecting.state, reconnecting.cause, reconnecting.expected, reconnecting.received, reconnecting.delay],
    ["reconnecting", "gap", 3, 4, 0],
  );
  tick(0);
  const second = FakeWebSocket.last;
  assert.equal(second.since, "e:2");
  second.accept("e", 5, true);
  for (const offset of [3, 4, 5]) second.serverSend({ type: "message", offset, data: String(offset) });
  assert.deepEqual(messages(), ["1", "2", "3", "4", "5"]);
  assert.deepEqual(of("reset"), []);
});

test("a second gap before any progress backs off instead of reconnecting at once", (t) => {
  const { client, of, tick } = setup(t);
  client.connect();
  FakeWebSocket.last.accept("e", 0);
  FakeWebSocket.last.serverSend({ type: "message", offset: 3, epoch: "e", data: "x" });
  assert.equal(of("statechange").at(-1).delay, 0);
  tick(0);
  FakeWebSocket.last.accept("e", 3, true);
  FakeWebSocket.last.serverSend({ type: "message", offset: 2, data: "x" }); // still a gap (1 missing)
  const reconnecting = of("statechange").at(-1);
  assert.equal(reconnecting.cause, "gap");
  assert.equal(reconnecting.delay, 150, "backoff: a server that keeps skipping is not hammered");
  assert.equal(FakeWebSocket.instances.length, 2);
  tick(150);
  assert.equal(FakeWebSocket.instances.length, 3);
  assert.equal(FakeWebSocket.last.since, "e:0");
  assert.equal(client.state, "connecting");
});

test("a message naming a new epoch starts the position over at its offset", (t) => {
  const { client, messages, of } = setup(t);
  client.connect();
  FakeWebSocket.last.accept("e1", 0);
  FakeWebSocket.last.serverSend({ type: "message", offset: 1, epoch: "e1", data: "a" });
  FakeWebSocket.last.serverSend({ type: "message", offset: 2, data: "b" });
  // The stream expired and was re-created while connected: offsets start over in epoch e2.
  FakeWebSocket.last.serverSend({ type: "message", offset: 1, epoch: "e2", data: "c" });
  FakeWebSocket.last.serverSend({ type: "message", offset: 2, data: "d" });
  assert.deepEqual(messages(), ["a", "b", "c", "d"]);
  assert.deepEqual(client.position, { epoch: "e2", offset: 2 });
  assert.deepEqual(of("reset"), [], "nothing was missed: live delivery went on");
  assert.equal(FakeWebSocket.instances.length, 1);
});

test("offset 1 repeating the current epoch (replay from a placeholder) is processed normally", (t) => {
  const { client, messages } = setup(t, { position: { epoch: "p", offset: 0 } });
  client.connect();
  FakeWebSocket.last.accept("p", 2, true);
  FakeWebSocket.last.serverSend({ type: "message", offset: 1, epoch: "p", data: "1" });
  FakeWebSocket.last.serverSend({ type: "message", offset: 2, data: "2" });
  FakeWebSocket.last.serverSend({ type: "message", offset: 1, epoch: "p", data: "1 again" });
  assert.deepEqual(messages(), ["1", "2"]);
  assert.deepEqual(client.position, { epoch: "p", offset: 2 });
});

test("history off (empty epoch): no position, no since, and a reconnection raises reset", (t) => {
  const { client, of, tick, messages } = setup(t);
  client.connect();
  FakeWebSocket.last.accept("", 0);
  FakeWebSocket.last.serverSend({ type: "message", data: "plain" });
  assert.equal(client.position, null);
  FakeWebSocket.last.serverClose();
  tick(1000);
  assert.equal(FakeWebSocket.last.since, null);
  FakeWebSocket.last.accept("", 0);
  assert.deepEqual(messages(), ["plain"]);
  assert.deepEqual(
    of("reset").map((event) => [event.reason, event.previous, event.position]),
    [["no-history", null, null]],
    "what was published while away is lost: the app must reload",
  );
});

test("backoff delays stay in [minDelay, maxDelay], grow window by window, and restart after a welcome", (t) => {
  for (const [random, edge] of [
    [() => 0, 0],
    [() => 0.999999, 1],
  ]) {
    const { client, of, tick } = setup(t, { minDelay: 100, maxDelay: 1000, factor: 2, random });
    client.connect();
    for (let i = 0; i < 8; i++) {
      FakeWebSocket.last.serverClose();
      tick(of("statechange").at(-1).delay);
    }
    const delays = of("statechange")
      .filter((event) => event.state === "reconnecting")
      .map((event) => Math.round(event.delay));
    // Windows: [100,200] [200,400] [400,800] [500,1000] (capped) ...
    const expected = edge ? [200, 400, 800, 1000, 1000, 1000, 1000, 1000] : [100, 200, 400, 500, 500, 500, 500, 500];
    assert.deepEqual(delays, expected);
    assert.equal(FakeWebSocket.instances.length, 9, "one attempt per delay");
    FakeWebSocket.last.accept("e", 0);
    FakeWebSocket.last.serverClose();
    assert.equal(Math.round(of("statechange").at(-1).delay), edge ? 200 : 100, "back to the first window");
    client.close();
    t.mock.timers.reset();
  }
});

test("backoffWindow: adjacent windows, bounded, and factor 1 means a constant delay", () => {
  const options = { minDelay: 250, maxDelay: 30000, factor: 2 };
  let previousHi = 250;
  for (let attempt = 0; attempt < 40; attempt++) {
    const [lo, hi] = backoffWindow(attempt, options);
    assert.ok(lo >= 250 && hi <= 30000 && lo <= hi, `attempt ${attempt}: [${lo}, ${hi}]`);
    if (hi < 30000) assert.equal(lo, previousHi, "below the cap each window starts where the last ended");
    previousHi = hi;
  }
  assert.deepEqual(backoffWindow(1000, options), [15000, 30000], "huge attempt counts stay finite");
  assert.deepEqual(backoffWindow(3, { minDelay: 500, maxDelay: 9000, factor: 1 }), [500, 500]);
});

test("close() stops everything: while open, while waiting to reconnect, and while connecting", (t) => {
  const { client, of, tick, states } = setup(t);
  client.connect();
  const ws = FakeWebSocket.last;
  ws.accept("e", 0);
  client.close(1000, "bye");
  assert.deepEqual(ws.closedWith, { code: 1000, reason: "bye" });
  assert.equal(client.state, "closed");
  ws.serverSend({ type: "message", offset: 1, epoch: "e", data: "late" });
  ws.serverClose(1000);
  tick(60000);
  assert.equal(FakeWebSocket.instances.length, 1, "no reconnection after close()");
  assert.deepEqual(of("message"), []);

  client.connect(); // resumes from the kept position
  assert.equal(FakeWebSocket.last.since, "e:0");
  FakeWebSocket.last.serverClose();
  assert.equal(client.state, "reconnecting");
  client.close();
  tick(60000);
  assert.equal(FakeWebSocket.instances.length, 2, "the pending reconnection was cancelled");

  client.connect();
  const connecting = FakeWebSocket.last;
  client.close();
  assert.ok(connecting.closedWith, "the half-open socket is closed");
  connecting.serverOpen();
  connecting.welcome("e", 0);
  tick(60000);
  assert.equal(client.state, "closed");
  assert.equal(FakeWebSocket.instances.length, 3);
  assert.deepEqual(states(), [
    "connecting",
    "open",
    "closed",
    "connecting",
    "reconnecting",
    "closed",
    "connecting",
    "closed",
  ]);
});

test("close() from a reconnecting listener cancels the reconnection (e.g. the app saw a kick code)", (t) => {
  const { client, tick } = setup(t);
  client.addEventListener("statechange", (event) => {
    if (event.detail.state === "reconnecting" && event.detail.code === 4403) client.close();
  });
  client.connect();
  FakeWebSocket.last.accept("e", 0);
  FakeWebSocket.last.serverClose(4403, "logged out");
  tick(60000);
  assert.equal(client.state, "closed");
  assert.equal(FakeWebSocket.instances.length, 1);
});

test("reconnect() skips the backoff wait", (t) => {
  const { client, tick } = setup(t, { minDelay: 10000, maxDelay: 20000 });
  client.connect();
  FakeWebSocket.last.accept("e", 2);
  FakeWebSocket.last.serverClose();
  client.reconnect();
  assert.equal(FakeWebSocket.instances.length, 2);
  assert.equal(FakeWebSocket.last.since, "e:2");
  tick(60000);
  assert.equal(FakeWebSocket.instances.length, 2, "the skipped timer does not fire later");
});

test("protocol violations are reported as error events and cost a backoff reconnection", (t) => {
  const cases = [
    ["selected subprotocol \"\", not wspush.v1", (ws) => ws.serverOpen("")],
    ["message before welcome", (ws) => (ws.serverOpen(), ws.serverSend({ type: "message", offset: 1, data: "x" }))],
    ["frame is not JSON", (ws) => (ws.serverOpen(), ws.serverSend("not json"))],
    ["malformed welcome", (ws) => (ws.serverOpen(), ws.serverSend({ type: "welcome", epoch: 5, offset: 0 }))],
    ["second welcome", (ws) => (ws.accept("e", 0), ws.welcome("e", 0))],
    ["not base64", (ws) => (ws.accept("e", 0), ws.serverSend({ type: "message", offset: 1, data_base64: "%%" }))],
  ];
  for (const [expected, play] of cases) {
    const { client, of } = setup(t);
    client.connect();
    const ws = FakeWebSocket.last;
    play(ws);
    assert.equal(of("error").length, 1, expected);
    assert.match(of("error")[0].error.message, new RegExp(expected), expected);
    assert.equal(client.state, "reconnecting", expected);
    assert.equal(of("statechange").at(-1).cause, "protocol", expected);
    assert.ok(of("statechange").at(-1).delay >= 100, `${expected}: not an immediate retry`);
    assert.ok(ws.closedWith, `${expected}: the socket is closed`);
    assert.deepEqual(of("message"), [], expected);
    client.close();
    t.mock.timers.reset();
  }
});

test("unknown frame types are ignored (room for later protocol versions)", (t) => {
  const { client, of, messages } = setup(t);
  client.connect();
  FakeWebSocket.last.accept("e", 0);
  FakeWebSocket.last.serverSend({ type: "pong-v2", anything: 1 });
  FakeWebSocket.last.serverSend({ type: "message", offset: 1, epoch: "e", data: "ok" });
  assert.deepEqual(messages(), ["ok"]);
  assert.deepEqual(of("error"), []);
  assert.equal(client.state, "open");
});

test("no welcome within connectTimeout: the attempt is abandoned and retried", (t) => {
  const { client, of, tick } = setup(t, { connectTimeout: 3000 });
  client.connect();
  const ws = FakeWebSocket.last;
  ws.serverOpen();
  tick(2999);
  assert.equal(client.state, "connecting");
  tick(1);
  assert.equal(client.state, "reconnecting");
  assert.equal(of("statechange").at(-1).cause, "timeout");
  assert.match(of("error")[0].error.message, /no welcome within 3000 ms/);
  assert.ok(ws.closedWith);
});

test("a URL function is called before every attempt (fresh tokens); its failure is retried", async (t) => {
  FakeWebSocket.reset();
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const tick = (ms) => t.mock.timers.tick(ms);
  let calls = 0;
  const tokens = ["t1", null, "t3"];
  const urlClient = new WspushClient(
    async () => {
      const token = tokens[calls++];
      if (!token) throw new Error("token service down");
      return `wss://push.test/ws?token=${token}`;
    },
    { WebSocket: FakeWebSocket, minDelay: 100, maxDelay: 1000, random: () => 0 },
  );
  const errors = [];
  urlClient.addEventListener("error", (event) => errors.push(event.detail.error.message));
  urlClient.connect();
  await Promise.resolve();
  await Promise.resolve();
  assert.equal(FakeWebSocket.last.url, "wss://push.test/ws?token=t1");
  FakeWebSocket.last.accept("e", 1);
  FakeWebSocket.last.serverClose();
  tick(100);
  await Promise.resolve();
  await Promise.resolve();
  assert.deepEqual(errors, ["token service down"]);
  assert.equal(urlClient.state, "reconnecting");
  tick(200);
  await Promise.resolve();
  await Promise.resolve();
  assert.equal(FakeWebSocket.last.url, "wss://push.test/ws?token=t3&since=e%3A1");
  urlClient.close();
});

test("send() reaches the server only while connected", (t) => {
  const { client } = setup(t);
  assert.equal(client.send("early"), false);
  client.connect();
  assert.equal(client.send("connecting"), false);
  FakeWebSocket.last.accept("e", 0);
  assert.equal(client.send("hello"), true);
  assert.deepEqual(FakeWebSocket.last.sent, ["hello"]);
});

test("options are validated", () => {
  const WebSocket = FakeWebSocket;
  assert.throws(() => new WspushClient(URL_ALICE, { WebSocket, minDelay: 0 }), RangeError);
  assert.throws(() => new WspushClient(URL_ALICE, { WebSocket, minDelay: 500, maxDelay: 100 }), RangeError);
  assert.throws(() => new WspushClient(URL_ALICE, { WebSocket, factor: 0.5 }), RangeError);
  assert.throws(() => new WspushClient(URL_ALICE, { WebSocket, position: { epoch: "e", offset: -1 } }), TypeError);
  assert.throws(() => new WspushClient(42, { WebSocket }), TypeError);
  assert.throws(() => new WspushClient(URL_ALICE, { WebSocket: "nope" }), TypeError);
  assert.equal(new WspushClient(URL_ALICE, { WebSocket, position: { epoch: "", offset: 3 } }).position, null);
});

test("resumeUrl: http(s) becomes ws(s), the fragment goes, since is replaced or removed", () => {
  assert.equal(resumeUrl("https://h/p?since=x&a=1#frag", { epoch: "e", offset: 2 }), "wss://h/p?a=1&since=e%3A2");
  assert.equal(resumeUrl("http://h/p?since=x", null), "ws://h/p");
  assert.equal(resumeUrl(new URL("ws://h/p?%73ince=x&b=%2F"), null), "ws://h/p?b=%2F", "an encoded name is found too");
  assert.throws(() => resumeUrl("/relative", null), TypeError, "outside a page a relative URL has no base");
});
