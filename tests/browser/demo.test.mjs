// End to end, as a person sees it: wspushd --demo serves its inbox page (a wspush.v1 client:
// bindings/js/wspush.js, served at /wspush.js), Debian's headless Chromium opens it, the backend
// publishes through the admin API, and the page shows the notifications, keeps other users' out,
// shows what was published while its connection was down once each and in order, and after a
// daemon restart (in-memory history gone) says that it reset, and receives again.
//
// Needs: `cargo build --release -p wspushd`, `apt-get install chromium`,
// `npm ci --prefix tests/browser`. Run: `node --test tests/browser/demo.test.mjs`.
// Environment overrides: WSPUSHD (daemon binary), CHROMIUM (browser binary).
// Leaves a screenshot of the page in target/artifacts/demo.png.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import http from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const WSPUSHD = process.env.WSPUSHD || path.join(REPO, "target/release/wspushd");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SCREENSHOT = path.join(REPO, "target/artifacts/demo.png");

// Every wait is bounded, so a regression fails the test instead of hanging it.
const WAIT_MS = 5000;
// The page retries with exponential backoff (0.5-1 s, then 1-2 s, 2-4 s, 4-8 s): while the
// daemon is down its attempts are refused and the delay grows, so allow for a few steps.
const RECONNECT_WAIT_MS = 10000;

// Chromium must stay on this machine: no sync, no component or field-trial downloads, no QUIC.
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-quic",
];

const LISTENING = /^wspushd listening on ws:\/\/(\S+?)(\/\S*), admin on http:\/\/(\S+)$/;

/** A running wspushd --demo, started on the given addresses (port 0 picks a free one). */
class Daemon {
  static async start({ listen = "127.0.0.1:0", adminListen = "127.0.0.1:0" } = {}) {
    if (!existsSync(WSPUSHD)) {
      throw new Error(`${WSPUSHD} missing: build it with cargo build --release -p wspushd`);
    }
    const child = spawn(
      WSPUSHD,
      ["--demo", "--listen", listen, "--admin-listen", adminListen, "--threads", "1", "--drain-timeout-ms", "1000"],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    const daemon = new Daemon(child);
    const line = await daemon.waitForLine(LISTENING, WAIT_MS);
    const [, wsAddress, wsPath, adminAddress] = line.match(LISTENING);
    daemon.origin = `http://${wsAddress}`;
    daemon.wsAddress = wsAddress;
    daemon.wsPath = wsPath;
    daemon.adminAddress = adminAddress;
    return daemon;
  }

  constructor(child) {
    this.child = child;
    this.output = []; // stdout and stderr lines, for failure messages
    this.waiters = [];
    this.exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
    for (const stream of [child.stdout, child.stderr]) {
      let partial = "";
      stream.setEncoding("utf8");
      stream.on("data", (chunk) => {
        const lines = (partial + chunk).split("\n");
        partial = lines.pop();
        for (const line of lines) this.onLine(line);
      });
    }
  }

  onLine(line) {
    this.output.push(line);
    this.waiters = this.waiters.filter((waiter) => !waiter(line));
  }

  /** Resolves with the first output line (from now on) matching `pattern`. */
  waitForLine(pattern, timeoutMs) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => fail(`no line matching ${pattern} within ${timeoutMs} ms`), timeoutMs);
      const fail = (why) => {
        clearTimeout(timer);
        reject(new Error(`wspushd: ${why}; output so far:\n${this.output.join("\n")}`));
      };
      this.exited.then(({ code, signal }) => fail(`exited (code ${code}, signal ${signal})`));
      this.waiters.push((line) => {
        if (!pattern.test(line)) return false;
        clearTimeout(timer);
        resolve(line);
        return true;
      });
    });
  }

  /** SIGTERM, then waits for the exit; resolves with { code, signal }. */
  async stop(timeoutMs = WAIT_MS) {
    this.child.kill("SIGTERM");
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`wspushd did not exit within ${timeoutMs} ms after SIGTERM`)), timeoutMs);
    });
    try {
      return await Promise.race([this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  kill() {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
  }

  /** POST /publish?user=U on the admin API; resolves with the number of connections reached. */
  async publish(user, text) {
    return (await this.admin(`/publish?user=${encodeURIComponent(user)}`, text)).delivered;
  }

  /** POST /disconnect?user=U: the daemon closes the user's connections (code 1000). */
  async disconnect(user) {
    return (await this.admin(`/disconnect?user=${encodeURIComponent(user)}`, "")).disconnected;
  }

  async admin(pathAndQuery, body) {
    const response = await post(`http://${this.adminAddress}${pathAndQuery}`, body);
    assert.equal(response.status, 200, `${pathAndQuery} answered ${response.status}: ${response.body}`);
    return JSON.parse(response.body);
  }
}

/** A plain HTTP POST on a fresh connection (no keep-alive across daemon restarts). */
function post(url, body) {
  return new Promise((resolve, reject) => {
    const request = http.request(
      url,
      { method: "POST", agent: false, timeout: WAIT_MS, headers: { "Content-Type": "text/plain; charset=utf-8" } },
      (response) => {
        let text = "";
        response.setEncoding("utf8");
        response.on("data", (chunk) => (text += chunk));
        response.on("end", () => resolve({ status: response.statusCode, body: text }));
      },
    );
    request.on("timeout", () => request.destroy(new Error(`POST ${url} timed out`)));
    request.on("error", reject);
    request.end(body);
  });
}

/** What the page says: connection state, its detail line, the notification texts newest first,
 * and the whole list with reset markers (as "[reset]"). */
function pageView(page) {
  return page.evaluate(() => ({
    state: document.querySelector("#state").dataset.state,
    detail: document.querySelector("#detail").textContent,
    notifications: Array.from(document.querySelectorAll("li.notification .payload"), (el) => el.textContent),
    list: Array.from(document.querySelectorAll("#notifications > li"), (li) =>
      li.classList.contains("reset") ? "[reset]" : li.querySelector(".payload").textContent,
    ),
  }));
}

async function waitForState(page, state, timeoutMs = WAIT_MS) {
  try {
    await page.waitForFunction((s) => document.querySelector("#state").dataset.state === s, state, {
      timeout: timeoutMs,
    });
  } catch (e) {
    throw new Error(`page state not ${state} within ${timeoutMs} ms: ${JSON.stringify(await pageView(page))}`, {
      cause: e,
    });
  }
}

async function waitForNewest(page, text) {
  try {
    await page.waitForFunction(
      (t) => document.querySelector("li.notification .payload")?.textContent === t,
      text,
      { timeout: WAIT_MS },
    );
  } catch (e) {
    throw new Error(`newest notification not ${JSON.stringify(text)}: ${JSON.stringify(await pageView(page))}`, {
      cause: e,
    });
  }
}

/** Records every (state, detail) the page shows from now on into window.stateLog (emptied on
 * every call; the observers are installed once). */
function recordStates(page) {
  return page.evaluate(() => {
    const installed = Array.isArray(window.stateLog);
    window.stateLog = [];
    if (installed) return;
    const state = document.querySelector("#state");
    const detail = document.querySelector("#detail");
    // setState() writes both elements in one task, so one observer callback sees the pair.
    const observer = new MutationObserver(() => window.stateLog.push(`${state.dataset.state}: ${detail.textContent}`));
    observer.observe(state, { childList: true, attributes: true });
    observer.observe(detail, { childList: true, characterData: true });
  });
}

// One test with ordered steps: each step builds on the page state the previous one left. Setup
// runs inside the test, so a daemon or browser that cannot start counts as a failure.
test("wspushd demo page in headless Chromium", async (t) => {
  let daemon;
  let context;
  let userDataDir;
  let alice;
  const pageErrors = [];

  try {
    if (!existsSync(CHROMIUM)) {
      throw new Error(`${CHROMIUM} missing: apt-get install -y chromium`);
    }
    daemon = await Daemon.start();
    userDataDir = await mkdtemp(path.join(tmpdir(), "wspush-chromium-"));
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 900, height: 640 },
      timeout: 20000,
    });
    await t.test("opens the demo page as alice and connects", async () => {
      alice = context.pages()[0] ?? (await context.newPage());
      alice.on("pageerror", (error) => pageErrors.push(String(error)));
      const response = await alice.goto(`${daemon.origin}/?user=alice`, { timeout: WAIT_MS });
      assert.equal(response.status(), 200);
      await waitForState(alice, "open");
      assert.equal(await alice.inputValue("#user"), "alice");
      const view = await pageView(alice);
      assert.equal(view.detail, "as alice");
      assert.deepEqual(view.notifications, []);
      assert.equal(await alice.isVisible("#empty"), true, "the 'No notifications yet' line shows");
      // The curl hint points at this daemon's admin API.
      assert.match(await alice.textContent("#hint"), new RegExp(`http://${daemon.adminAddress}/publish\\?user=alice`));
    });

    await t.test("shows alice's notifications, newest first", async () => {
      assert.equal(await daemon.publish("alice", "You have new mail: Quarterly report"), 1);
      await waitForNewest(alice, "You have new mail: Quarterly report");
      assert.equal(await daemon.publish("alice", "You have new mail: Lunch on Friday?"), 1);
      await waitForNewest(alice, "You have new mail: Lunch on Friday?");
      assert.deepEqual((await pageView(alice)).notifications, [
        "You have new mail: Lunch on Friday?",
        "You have new mail: Quarterly report",
      ]);
      assert.equal(await alice.isVisible("#empty"), false, "the empty-inbox line is gone");
    });

    await t.test("does not show bob's notification on alice's page", async () => {
      const bob = await context.newPage();
      try {
        await bob.goto(`${daemon.origin}/?user=bob`, { timeout: WAIT_MS });
        await waitForState(bob, "open");
        assert.equal(await daemon.publish("bob", "For bob only"), 1, "bob's page is the one connection reached");
        await waitForNewest(bob, "For bob only");
        // Alice's connection delivers in order: once this later message is shown, a misrouted
        // message for bob would already be there too.
        assert.equal(await daemon.publish("alice", "You have new mail: Re: budget"), 1);
        await waitForNewest(alice, "You have new mail: Re: budget");
        assert.ok(!(await pageView(alice)).notifications.includes("For bob only"));
        assert.deepEqual((await pageView(bob)).notifications, ["For bob only"]);
      } finally {
        await bob.close();
      }
    });

    await t.test("shows the three published while its connection was down, once each, in order", async (step) => {
      await recordStates(alice);
      const dropped = Date.now();
      assert.equal(await daemon.disconnect("alice"), 1, "the daemon dropped alice's page");
      await alice.waitForFunction(() => window.stateLog.some((entry) => entry.startsWith("closed: code 1000")), null, {
        timeout: WAIT_MS,
      });
      // The page waits at least 0.5 s before it reconnects: these reach no connection.
      for (const text of ["While away: 1", "While away: 2", "While away: 3"]) {
        assert.equal(await daemon.publish("alice", text), 0, `"${text}" was published while the page was away`);
      }
      await waitForState(alice, "open", RECONNECT_WAIT_MS);
      await waitForNewest(alice, "While away: 3");
      // A live one after the replay: any duplicate of the replay would be shown before it.
      assert.equal(await daemon.publish("alice", "You have new mail: back online"), 1);
      await waitForNewest(alice, "You have new mail: back online");
      const log = await alice.evaluate(() => window.stateLog);
      step.diagnostic(`open again ${Date.now() - dropped} ms after the drop; states: ${JSON.stringify(log)}`);
      assert.equal(log.at(-1), "open: as alice", `state log: ${JSON.stringify(log)}`);
      const view = await pageView(alice);
      assert.deepEqual(view.list, [
        "You have new mail: back online",
        "While away: 3",
        "While away: 2",
        "While away: 1",
        "You have new mail: Re: budget",
        "You have new mail: Lunch on Friday?",
        "You have new mail: Quarterly report",
      ]);
      // Offsets are alice's stream positions: no gap, no repeat (bob's message is not in it).
      const offsets = await alice.evaluate(() =>
        Array.from(document.querySelectorAll("li.notification"), (li) => Number(li.dataset.offset)),
      );
      assert.deepEqual(offsets, [7, 6, 5, 4, 3, 2, 1]);
    });

    await t.test("after a daemon restart (history gone) shows that it reset, then receives again", async (step) => {
      await recordStates(alice);
      const stopped = Date.now();
      const { wsAddress, adminAddress } = daemon;

      assert.deepEqual(await daemon.stop(), { code: 0, signal: null }, "graceful stop exits 0");
      await alice.waitForFunction(() => window.stateLog.some((entry) => entry.startsWith("closed: code 1001")), null, {
        timeout: WAIT_MS,
      });

      daemon = await Daemon.start({ listen: wsAddress, adminListen: adminAddress });
      assert.equal(daemon.wsAddress, wsAddress);
      assert.equal(daemon.adminAddress, adminAddress);
      await waitForState(alice, "open", RECONNECT_WAIT_MS);
      const log = await alice.evaluate(() => window.stateLog);
      step.diagnostic(`open again ${Date.now() - stopped} ms after SIGTERM; states: ${JSON.stringify(log)}`);
      assert.equal(log.at(-1), "open: as alice", `state log: ${JSON.stringify(log)}`);

      // The new daemon could not replay from the page's position: the page says so.
      const reset = alice.locator("li.reset");
      assert.equal(await reset.count(), 1, "one reset marker");
      assert.equal(await reset.isVisible(), true);
      assert.match(await reset.textContent(), /^History reset at .*: what was sent while disconnected could not be replayed/);

      assert.equal(await daemon.publish("alice", "You have new mail: after the restart"), 1);
      await waitForNewest(alice, "You have new mail: after the restart");
      assert.deepEqual((await pageView(alice)).list, [
        "You have new mail: after the restart",
        "[reset]",
        "You have new mail: back online",
        "While away: 3",
        "While away: 2",
        "While away: 1",
        "You have new mail: Re: budget",
        "You have new mail: Lunch on Friday?",
        "You have new mail: Quarterly report",
      ]);
      assert.equal(
        await alice.evaluate(() => document.querySelector("li.notification").dataset.offset),
        "1",
        "offsets start over in the new daemon's stream",
      );
      assert.deepEqual(pageErrors, [], "no uncaught errors in the page");
    });
  } finally {
    if (alice) {
      // Also after a failure: the picture shows what the page looked like.
      await mkdir(path.dirname(SCREENSHOT), { recursive: true });
      await alice.screenshot({ path: SCREENSHOT, fullPage: true }).catch(() => {});
    }
    await context?.close().catch(() => {});
    daemon?.kill();
    if (userDataDir) await rm(userDataDir, { recursive: true, force: true });
  }
});
