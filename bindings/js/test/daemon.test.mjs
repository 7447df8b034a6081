// The client against a real wspushd (PROTOCOL.md over a real socket): welcome and offsets, resume
// after client- and server-side drops, publishes racing repeated reconnects, reset when the
// daemon's in-memory history is gone, backoff bounds with the daemon down, clean close, binary
// payloads, broadcasts, gaps (one made by the daemon, one by a lossy socket), a stream expiring
// while connected, history off. Needs `cargo build --release -p wspushd` (or $WSPUSHD) and
// `npm ci` here (the ws package: Node 20 has no WebSocket client).

import { test } from "node:test";
import assert from "node:assert/strict";

import WS from "ws";

import { WspushClient, backoffWindow } from "../wspush.js";
import { Daemon, WAIT_MS, freePort, get, sleep, waitFor } from "./daemon.mjs";

/** The ws WebSocket class, recording every socket the client opens (so tests can kill them). */
function trackedWebSocket(Base = WS) {
  const sockets = [];
  class Tracked extends Base {
    constructor(url, protocols) {
      super(url, protocols);
      this.createdAt = performance.now();
      sockets.push(this);
    }
  }
  return { WebSocket: Tracked, sockets };
}

/** Records what the app sees. */
function record(client) {
  const log = { messages: [], states: [], welcomes: [], resets: [], errors: [] };
  client.addEventListener("message", (event) => log.messages.push(event.detail));
  client.addEventListener("statechange", (event) => log.states.push({ ...event.detail, at: performance.now() }));
  client.addEventListener("welcome", (event) => log.welcomes.push(event.detail));
  client.addEventListener("reset", (event) => log.resets.push(event.detail));
  client.addEventListener("error", (event) => log.errors.push(event.detail.error.message));
  log.texts = () => log.messages.map((message) => message.data);
  log.describe = () =>
    JSON.stringify({
      state: client.state,
      position: client.position,
      texts: log.texts().slice(-20),
      welcomes: log.welcomes.slice(-5),
      resets: log.resets,
      errors: log.errors.slice(-5),
    });
  return log;
}

/** A started client for `user` with its log; closed, and the daemon killed, when the test ends. */
function startClient(t, daemon, user, options = {}) {
  const tracked = trackedWebSocket(options.Base);
  const client = new WspushClient(daemon.url(user), { WebSocket: tracked.WebSocket, ...options });
  const log = record(client);
  t.after(() => client.close());
  client.connect();
  return { client, log, sockets: tracked.sockets };
}

async function startDaemon(t, options) {
  const daemon = await Daemon.start(options);
  t.after(() => daemon.kill());
  return daemon;
}

const waitOpen = (client, log) => waitFor(() => client.state === "open", () => `state open: ${log.describe()}`);
const waitTexts = (log, count) =>
  waitFor(() => log.messages.length >= count, () => `${count} messages: ${log.describe()}`);

test("welcome, then live messages with consecutive offsets matching what publish answered", async (t) => {
  const daemon = await startDaemon(t);
  const { client, log, sockets } = startClient(t, daemon, "alice");
  await waitOpen(client, log);
  assert.equal(sockets[0].protocol, "wspush.v1", "the daemon selected the subprotocol");
  assert.equal(log.welcomes.length, 1);
  const [welcome] = log.welcomes;
  assert.equal(welcome.offset, 0, "a fresh daemon has no stream for alice");
  assert.equal(welcome.recovered, false);
  assert.equal(typeof welcome.epoch, "string");

  const answers = [];
  for (const text of ["one", "two", "three"]) answers.push(await daemon.publish("alice", text));
  assert.deepEqual(answers.map((answer) => answer.delivered), [1, 1, 1]);
  assert.deepEqual(answers.map((answer) => answer.offset), [1, 2, 3]);
  await waitTexts(log, 3);
  assert.deepEqual(log.texts(), ["one", "two", "three"]);
  assert.deepEqual(log.messages.map((message) => message.offset), [1, 2, 3]);
  const epoch = log.messages[0].epoch;
  assert.ok(epoch, "the first message names the stream's epoch");
  assert.ok(log.messages.every((message) => message.epoch === epoch && !message.binary));
  assert.deepEqual(client.position, { epoch, offset: 3 });
  assert.deepEqual(log.resets, []);
  assert.deepEqual(log.errors, []);
});

/** Publishes `texts` while the client is away (each must reach no connection), returns offsets. */
async function publishWhileAway(daemon, user, texts) {
  const offsets = [];
  for (const text of texts) {
    const answer = await daemon.publish(user, text);
    assert.equal(answer.delivered, 0, `"${text}" was published while the client was away`);
    offsets.push(answer.offset);
  }
  return offsets;
}

for (const [how, drop] of [
  ["the socket dies under the client", async (daemon, sockets) => sockets.at(-1).terminate()],
  ["the daemon disconnects the user", async (daemon) => assert.equal((await daemon.disconnect("bob")).disconnected, 1)],
]) {
  test(`resume after a drop (${how}): the 3 published while away arrive once each, in order, no reset`, async (t) => {
    const daemon = await startDaemon(t);
    // The first retry waits 1-2 s: time enough to publish while the client is surely away.
    const { client, log, sockets } = startClient(t, daemon, "bob", { minDelay: 1000, maxDelay: 2000 });
    await waitOpen(client, log);
    await daemon.publish("bob", "before");
    await waitTexts(log, 1);
    const { epoch } = client.position;

    await drop(daemon, sockets);
    await waitFor(() => client.state === "reconnecting", () => `reconnecting: ${log.describe()}`);
    assert.deepEqual(await publishWhileAway(daemon, "bob", ["away 1", "away 2", "away 3"]), [2, 3, 4]);

    await waitOpen(client, log);
    assert.equal(sockets.length, 2);
    assert.equal(new URL(sockets[1].url).searchParams.get("since"), `${epoch}:1`);
    assert.deepEqual(log.welcomes[1], { epoch, offset: 4, recovered: true, since: { epoch, offset: 1 } });
    // A live message after the replay: once it is here, any duplicate would be here too.
    assert.equal((await daemon.publish("bob", "after")).delivered, 1);
    await waitTexts(log, 5);
    assert.deepEqual(log.texts(), ["before", "away 1", "away 2", "away 3", "after"]);
    assert.deepEqual(log.messages.map((message) => message.offset), [1, 2, 3, 4, 5]);
    assert.deepEqual(log.resets, []);
    assert.deepEqual(log.errors, []);
  });
}

test("resume from before the user's first message: the stream that began while away is replayed", async (t) => {
  const daemon = await startDaemon(t);
  const { client, log, sockets } = startClient(t, daemon, "olivia", { minDelay: 1000, maxDelay: 2000 });
  await waitOpen(client, log);
  const placeholder = client.position;
  assert.equal(placeholder.offset, 0, "no stream yet");
  sockets[0].terminate();
  await waitFor(() => client.state === "reconnecting", () => `reconnecting: ${log.describe()}`);
  assert.deepEqual(await publishWhileAway(daemon, "olivia", ["first", "second"]), [1, 2]);
  await waitOpen(client, log);
  assert.equal(new URL(sockets[1].url).searchParams.get("since"), `${placeholder.epoch}:0`);
  assert.equal(log.welcomes[1].recovered, true);
  await waitTexts(log, 2);
  assert.deepEqual(log.texts(), ["first", "second"]);
  assert.notEqual(client.position.epoch, placeholder.epoch, "the stream's own epoch was adopted");
  assert.deepEqual(client.position, { epoch: log.messages[0].epoch, offset: 2 });
  assert.deepEqual(log.resets, []);
});

test("races: 400 sequential publishes while the connection is killed again and again: 1..400 once each, in order", async (t) => {
  const daemon = await startDaemon(t, { args: ["--history-messages", "10000"] });
  const { client, log, sockets } = startClient(t, daemon, "carol", { minDelay: 5, maxDelay: 40 });
  await waitOpen(client, log);
  const N = 400;
  let published = 0;
  const publisher = (async () => {
    for (let i = 1; i <= N; i++) {
      const answer = await daemon.publish("carol", String(i));
      assert.equal(answer.offset, i);
      published = i;
    }
  })();
  // Kill the connection each time it has been open a little while (alternating a dead socket on
  // the client's side and a close from the daemon), for as long as publishes are flowing.
  let kills = 0;
  const killer = (async () => {
    while (published < N) {
      await waitFor(() => client.state === "open" || published >= N, "open", WAIT_MS);
      if (published >= N) break;
      await sleep(5 + Math.random() * 20);
      if (client.state !== "open") continue;
      if (kills % 2 === 0) sockets.at(-1).terminate();
      else await daemon.disconnect("carol");
      kills++;
    }
  })();
  await Promise.all([publisher, killer]);
  await waitTexts(log, N);
  // A sentinel after the last publish: when it is here (live, or replayed if the last kill is still
  // being noticed), nothing from before can still be on its way, duplicate or not.
  await daemon.publish("carol", "sentinel");
  await waitFor(() => log.texts().includes("sentinel"), () => `the sentinel: ${log.describe()}`);

  const expected = Array.from({ length: N }, (_, i) => String(i + 1));
  assert.deepEqual(log.texts(), [...expected, "sentinel"]);
  assert.deepEqual(
    log.messages.map((message) => message.offset),
    Array.from({ length: N + 1 }, (_, i) => i + 1),
  );
  assert.deepEqual(log.resets, [], "every resume was honoured");
  const resumed = log.welcomes.slice(1);
  t.diagnostic(`${kills} kills, ${sockets.length} connections, ${resumed.length} resumes`);
  assert.ok(kills >= 5, `the connection was killed ${kills} times; want at least 5`);
  assert.ok(resumed.length >= 5, `${resumed.length} resumes`);
  assert.ok(resumed.every((welcome) => welcome.recovered && welcome.since), "every reconnection resumed");
  const replayed = resumed.reduce((sum, welcome) => sum + (welcome.offset - welcome.since.offset), 0);
  t.diagnostic(`${replayed} messages replayed from history, ${N + 1 - replayed} live`);
  assert.ok(replayed > 0, "some messages came from the replay");
  assert.ok(replayed < N, "some messages came live");
});

test("reset when the daemon restarts (its in-memory history is gone), then a fresh epoch", async (t) => {
  let daemon = await Daemon.start();
  t.after(() => daemon.kill());
  const { client, log } = startClient(t, daemon, "dave", { minDelay: 50, maxDelay: 200 });
  await waitOpen(client, log);
  await daemon.publish("dave", "a");
  await daemon.publish("dave", "b");
  await waitTexts(log, 2);
  const before = client.position;
  assert.equal(before.offset, 2);

  daemon = await daemon.restart();
  await waitFor(() => log.resets.length > 0, () => `a reset: ${log.describe()}`);
  await waitOpen(client, log);
  assert.equal(log.resets.length, 1);
  const [reset] = log.resets;
  assert.equal(reset.reason, "not-recovered");
  assert.deepEqual(reset.previous, before);
  assert.notEqual(reset.position.epoch, before.epoch, "the new process has another epoch");
  assert.deepEqual(log.welcomes.at(-1).since, before, "the client asked to resume");
  assert.equal(log.welcomes.at(-1).recovered, false);

  const answer = await daemon.publish("dave", "c");
  assert.deepEqual(answer, { delivered: 1, offset: 1 }, "offsets start over in the new daemon");
  await waitTexts(log, 3);
  assert.deepEqual(log.texts(), ["a", "b", "c"]);
  assert.notEqual(client.position.epoch, before.epoch);
  assert.equal(client.position.offset, 1);
});

test("backoff bounds with the daemon down: delays within [min, max], growing, real waits honour them", async (t) => {
  const port = await freePort();
  const min = 40;
  const max = 320;
  const tracked = trackedWebSocket();
  const client = new WspushClient(`ws://127.0.0.1:${port}/ws?user=erin`, {
    WebSocket: tracked.WebSocket,
    minDelay: min,
    maxDelay: max,
    factor: 2,
  });
  const log = record(client);
  t.after(() => client.close());
  client.connect();
  const ATTEMPTS = 7;
  await waitFor(() => tracked.sockets.length >= ATTEMPTS, () => `${ATTEMPTS} attempts: ${log.describe()}`);

  const waits = log.states.filter((state) => state.state === "reconnecting").slice(0, ATTEMPTS - 1);
  waits.forEach((wait, attempt) => {
    const [lo, hi] = backoffWindow(attempt, { minDelay: min, maxDelay: max, factor: 2 });
    assert.ok(wait.delay >= lo && wait.delay <= hi, `attempt ${attempt}: ${wait.delay} ms outside [${lo}, ${hi}]`);
    assert.ok(wait.delay >= min && wait.delay <= max);
    assert.equal(wait.cause, "closed", "refused: the socket closed");
    // The next attempt really waited that long (timers do not fire early; a loaded machine may
    // fire them late, hence only a loose upper bound).
    const waited = tracked.sockets[attempt + 1].createdAt - wait.at;
    assert.ok(waited >= wait.delay - 2, `attempt ${attempt}: waited ${waited} ms of ${wait.delay}`);
    assert.ok(waited <= wait.delay + 2000, `attempt ${attempt}: waited ${waited} ms of ${wait.delay}`);
  });
  const delays = waits.map((wait) => wait.delay);
  t.diagnostic(`delays: ${delays.map(Math.round).join(", ")} ms`);
  for (let i = 1; i < 3; i++) assert.ok(delays[i] >= delays[i - 1], `grows below the cap: ${delays}`);
  assert.ok(delays[0] <= 2 * min && delays.slice(3).every((delay) => delay >= max / 2), `${delays}`);

  // The daemon comes up on that port: the client gets in, and its next drop starts over at min.
  const daemon = await startDaemon(t, { listen: `127.0.0.1:${port}` });
  await waitOpen(client, log);
  const opened = tracked.sockets.length;
  tracked.sockets.at(-1).terminate();
  await waitFor(() => tracked.sockets.length > opened, "a reconnection attempt");
  const again = log.states.filter((state) => state.state === "reconnecting").at(-1);
  assert.ok(again.delay >= min && again.delay <= 2 * min, `after a welcome the delay restarts: ${again.delay}`);
  await waitOpen(client, log);
  assert.equal(daemon.wsAddress, `127.0.0.1:${port}`);
});

test("close() stops reconnecting, whether open or waiting to retry", async (t) => {
  const daemon = await startDaemon(t);
  const { client, log, sockets } = startClient(t, daemon, "frank", { minDelay: 20, maxDelay: 40 });
  await waitOpen(client, log);
  client.close();
  assert.equal(client.state, "closed");
  // The daemon sees the close: publishing no longer reaches anyone.
  const deadline = Date.now() + WAIT_MS;
  while ((await daemon.publish("frank", "nobody")).delivered !== 0) {
    assert.ok(Date.now() < deadline, "the daemon still has frank's connection");
    await sleep(20);
  }
  await sleep(400); // ten times maxDelay
  assert.equal(sockets.length, 1, "no reconnection after close()");
  assert.equal(client.state, "closed");
  assert.deepEqual(log.texts(), [], "nothing delivered after close()");

  // Closed while waiting for the next attempt: the attempt never happens.
  client.connect();
  await waitOpen(client, log);
  sockets.at(-1).terminate();
  await waitFor(() => client.state === "reconnecting", "reconnecting");
  client.close();
  await sleep(400);
  assert.equal(sockets.length, 2);
  assert.equal(client.state, "closed");
  assert.deepEqual(
    log.states.map((state) => state.state),
    ["connecting", "open", "closed", "connecting", "open", "reconnecting", "closed"],
  );
});

test("binary messages arrive as bytes and count in the stream", async (t) => {
  const daemon = await startDaemon(t);
  const { client, log } = startClient(t, daemon, "grace");
  await waitOpen(client, log);
  const bytes = Uint8Array.from({ length: 256 }, (_, i) => i);
  assert.equal((await daemon.publish("grace", Buffer.from(bytes))).delivered, 1);
  await daemon.publish("grace", "text after");
  await waitTexts(log, 2);
  const [binary, text] = log.messages;
  assert.equal(binary.binary, true);
  assert.ok(binary.data instanceof Uint8Array);
  assert.deepEqual(Array.from(binary.data), Array.from(bytes));
  assert.equal(binary.offset, 1);
  assert.deepEqual([text.data, text.binary, text.offset], ["text after", false, 2]);
});

test("broadcasts arrive without an offset and leave the position alone", async (t) => {
  const daemon = await startDaemon(t);
  const { client, log, sockets } = startClient(t, daemon, "heidi");
  await waitOpen(client, log);
  await daemon.publish("heidi", "mine 1");
  await waitTexts(log, 1);
  const position = client.position;
  assert.equal((await daemon.broadcast("to everyone")).delivered, 1);
  await waitTexts(log, 2);
  assert.deepEqual(client.position, position, "a broadcast is not part of the user's stream");
  await daemon.publish("heidi", "mine 2");
  await waitTexts(log, 3);
  assert.deepEqual(log.texts(), ["mine 1", "to everyone", "mine 2"]);
  assert.deepEqual(log.messages.map((message) => message.offset), [1, null, 2]);
  assert.equal(sockets.length, 1, "no gap was seen: still the first connection");
  assert.deepEqual(client.position, { epoch: position.epoch, offset: 2 });
});

test("a skipped offset (a frame lost on the first connection) makes the client resume from before it", async (t) => {
  const daemon = await startDaemon(t);
  // The first socket loses the frame with offset 3, as if the server had dropped it.
  let dropped = 0;
  class Skipping extends WS {
    constructor(url, protocols) {
      super(url, protocols);
      this.skip = !Skipping.made++;
    }
    set onmessage(listener) {
      super.onmessage =
        listener &&
        ((event) => {
          if (this.skip && JSON.parse(event.data).offset === 3) return void dropped++;
          listener(event);
        });
    }
    get onmessage() {
      return super.onmessage;
    }
  }
  Skipping.made = 0;
  const { client, log, sockets } = startClient(t, daemon, "ivan", { Base: Skipping });
  await waitOpen(client, log);
  await daemon.publish("ivan", "1");
  await waitTexts(log, 1);
  const { epoch } = client.position;
  for (const text of ["2", "3", "4", "5"]) await daemon.publish("ivan", text);
  await waitTexts(log, 5);
  assert.equal(dropped, 1);
  assert.deepEqual(log.texts(), ["1", "2", "3", "4", "5"]);
  assert.deepEqual(log.messages.map((message) => message.offset), [1, 2, 3, 4, 5]);
  const gap = log.states.find((state) => state.cause === "gap");
  assert.deepEqual([gap.expected, gap.received, gap.delay], [3, 4, 0]);
  assert.equal(sockets.length, 2);
  assert.equal(new URL(sockets[1].url).searchParams.get("since"), `${epoch}:2`);
  assert.equal(log.welcomes[1].recovered, true);
  assert.deepEqual(log.resets, []);
});

test("a real gap: the daemon drops a message to a stalled reader; the client resumes and gets it", async (t) => {
  // --slow-consumer drop: past --max-queue-bytes the daemon drops messages for that connection
  // only and keeps it open, so the next message that gets through skips offsets. The replay
  // budget is half the queue (16 of these messages), so the gap must stay small: publish one at
  // a time and stop at the first drop.
  const QUEUE = 512 * 1024;
  const daemon = await startDaemon(t, {
    args: ["--slow-consumer", "drop", "--max-queue-bytes", String(QUEUE), "--history-messages", "10000",
      "--history-max-bytes", String(256 * 1024 * 1024)],
  });
  const { client, log, sockets } = startClient(t, daemon, "mallory");
  await waitOpen(client, log);
  sockets[0].pause(); // stop reading: kernel buffers fill, then the daemon's queue, then it drops
  const payload = (i) => `${i}:${"x".repeat(16 * 1024)}`;
  const stats = async () => JSON.parse(await get(`http://${daemon.adminAddress}/stats`));
  let top = 0;
  for (;;) {
    top = (await daemon.publish("mallory", payload(top + 1))).offset;
    if ((await stats()).dropped_total > 0) break;
    assert.ok(top < 5000, "no drop after 80 MB: the reader is not stalled");
  }
  const { dropped_total: dropped } = await stats();
  assert.equal(dropped, 1, "stopped at the first drop");
  sockets[0].resume();
  // Everything before the dropped one arrives; nothing after it was published yet.
  await waitTexts(log, top - 1);
  assert.equal(sockets.length, 1, "no reason to reconnect yet");
  // The next message gets through and skips the dropped offset: the client resumes from before it.
  assert.equal((await daemon.publish("mallory", payload(top + 1))).offset, top + 1);
  await waitTexts(log, top + 1);
  t.diagnostic(`offset ${top} dropped by the daemon after ${top - 1} queued`);
  assert.deepEqual(
    log.texts().map((text) => Number(text.split(":", 1)[0])),
    Array.from({ length: top + 1 }, (_, i) => i + 1),
  );
  assert.deepEqual(log.messages.map((message) => message.offset), Array.from({ length: top + 1 }, (_, i) => i + 1));
  const gap = log.states.find((state) => state.cause === "gap");
  assert.deepEqual([gap.expected, gap.received], [top, top + 1]);
  assert.equal(sockets.length, 2);
  assert.equal(new URL(sockets[1].url).searchParams.get("since"), `${client.position.epoch}:${top - 1}`);
  assert.equal(log.welcomes[1].recovered, true);
  assert.deepEqual(log.resets, []);
});

test("a stream that expires while connected comes back in a new epoch at offset 1: adopted, no reset", async (t) => {
  const daemon = await startDaemon(t, { args: ["--history-ttl", "1"] });
  const { client, log, sockets } = startClient(t, daemon, "peggy");
  await waitOpen(client, log);
  assert.equal((await daemon.publish("peggy", "old")).offset, 1);
  await waitTexts(log, 1);
  const first = client.position;
  await sleep(2100); // the store counts whole seconds: 2 s past a 1 s TTL is expired for sure
  assert.deepEqual(await daemon.publish("peggy", "new"), { delivered: 1, offset: 1 }, "the stream started over");
  await waitTexts(log, 2);
  assert.deepEqual(log.texts(), ["old", "new"]);
  const [, renewed] = log.messages;
  assert.notEqual(renewed.epoch, first.epoch, "the new stream has its own epoch");
  assert.deepEqual(client.position, { epoch: renewed.epoch, offset: 1 });
  assert.equal(sockets.length, 1, "live delivery went on: nothing to repair");
  assert.deepEqual(log.resets, []);
});

test("history off on the daemon: no offsets, no since, and a reconnection raises reset", async (t) => {
  const daemon = await startDaemon(t, { args: ["--history-messages", "0"] });
  const { client, log, sockets } = startClient(t, daemon, "judy", { minDelay: 20, maxDelay: 40 });
  await waitOpen(client, log);
  assert.deepEqual(log.welcomes[0], { epoch: "", offset: 0, recovered: false, since: null });
  const answer = await daemon.publish("judy", "untracked");
  assert.equal(answer.delivered, 1);
  await waitTexts(log, 1);
  assert.equal(log.messages[0].offset, null);
  assert.equal(client.position, null);
  sockets[0].terminate();
  await waitFor(() => log.welcomes.length === 2, () => `second welcome: ${log.describe()}`);
  assert.equal(new URL(sockets[1].url).searchParams.get("since"), null);
  assert.deepEqual(log.resets, [{ reason: "no-history", previous: null, position: null }]);
});
