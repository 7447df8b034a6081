// A real wspushd for the tests: started on free ports in demo mode (the user is ?user= in the
// WebSocket URL), driven through its admin HTTP API. Binary: target/release/wspushd in the repo
// (cargo build --release -p wspushd) or $WSPUSHD.

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
export const WSPUSHD = process.env.WSPUSHD || path.join(REPO, "target/release/wspushd");

/** Generous: the suite must pass on a loaded 2-core machine. Every wait is bounded by it. */
export const WAIT_MS = 10000;

const LISTENING = /^wspushd listening on ws:\/\/(\S+?)(\/\S*), admin on http:\/\/(\S+)$/;

export class Daemon {
  /** Starts wspushd --demo; `args` are extra flags (e.g. history limits). */
  static async start({ listen = "127.0.0.1:0", adminListen = "127.0.0.1:0", args = [] } = {}) {
    if (!existsSync(WSPUSHD)) {
      throw new Error(`${WSPUSHD} missing: build it with cargo build --release -p wspushd (or set WSPUSHD)`);
    }
    const child = spawn(
      WSPUSHD,
      ["--demo", "--listen", listen, "--admin-listen", adminListen, "--threads", "1", "--drain-timeout-ms", "1000", ...args],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    const daemon = new Daemon(child, args);
    try {
      const line = await daemon.waitForLine(LISTENING, WAIT_MS);
      const [, wsAddress, wsPath, adminAddress] = line.match(LISTENING);
      Object.assign(daemon, { wsAddress, wsPath, adminAddress });
    } catch (error) {
      daemon.kill();
      throw error;
    }
    return daemon;
  }

  constructor(child, args) {
    this.child = child;
    this.args = args;
    this.output = [];
    this.waiters = [];
    this.exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
    for (const stream of [child.stdout, child.stderr]) {
      let partial = "";
      stream.setEncoding("utf8");
      stream.on("data", (chunk) => {
        const lines = (partial + chunk).split("\n");
        partial = lines.pop();
        for (const line of lines) {
          this.output.push(line);
          this.waiters = this.waiters.filter((waiter) => !waiter(line));
        }
      });
    }
  }

  /** The WebSocket URL for a demo-mode user. */
  url(user) {
    return `ws://${this.wsAddress}${this.wsPath}?user=${encodeURIComponent(user)}`;
  }

  waitForLine(pattern, timeoutMs) {
    return new Promise((resolve, reject) => {
      const fail = (why) => {
        clearTimeout(timer);
        reject(new Error(`wspushd: ${why}; output so far:\n${this.output.join("\n")}`));
      };
      const timer = setTimeout(() => fail(`no line matching ${pattern} within ${timeoutMs} ms`), timeoutMs);
      this.exited.then(({ code, signal }) => fail(`exited (code ${code}, signal ${signal})`));
      this.waiters.push((line) => {
        if (!pattern.test(line)) return false;
        clearTimeout(timer);
        resolve(line);
        return true;
      });
    });
  }

  /** SIGTERM and wait for the exit. */
  async stop() {
    this.child.kill("SIGTERM");
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`wspushd did not exit within ${WAIT_MS} ms`)), WAIT_MS);
    });
    try {
      return await Promise.race([this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Same ports, same flags, fresh process (so a fresh in-memory history). */
  async restart() {
    const { wsAddress, adminAddress, args } = this;
    await this.stop();
    return Daemon.start({ listen: wsAddress, adminListen: adminAddress, args });
  }

  kill() {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
  }

  /** POST /publish?user=U; resolves with the JSON answer ({ delivered, offset }). */
  publish(user, payload) {
    return this.admin(`/publish?user=${encodeURIComponent(user)}`, payload);
  }

  broadcast(payload) {
    return this.admin("/broadcast", payload);
  }

  /** The daemon closes the user's connections (a server-side drop). */
  disconnect(user) {
    return this.admin(`/disconnect?user=${encodeURIComponent(user)}`, "");
  }

  async admin(pathAndQuery, payload) {
    const binary = typeof payload !== "string";
    const response = await post(
      `http://${this.adminAddress}${pathAndQuery}`,
      payload,
      binary ? "application/octet-stream" : "text/plain; charset=utf-8",
    );
    if (response.status !== 200) throw new Error(`POST ${pathAndQuery} answered ${response.status}: ${response.body}`);
    return JSON.parse(response.body);
  }
}

function post(url, body, contentType) {
  return new Promise((resolve, reject) => {
    const request = http.request(
      url,
      { method: "POST", agent: false, timeout: WAIT_MS, headers: { "Content-Type": contentType } },
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

/** A plain HTTP GET; resolves with the body (status 200 required). */
export function get(url) {
  return new Promise((resolve, reject) => {
    const request = http.get(url, { agent: false, timeout: WAIT_MS }, (response) => {
      let text = "";
      response.setEncoding("utf8");
      response.on("data", (chunk) => (text += chunk));
      response.on("end", () =>
        response.statusCode === 200 ? resolve(text) : reject(new Error(`GET ${url}: ${response.statusCode} ${text}`)),
      );
    });
    request.on("timeout", () => request.destroy(new Error(`GET ${url} timed out`)));
    request.on("error", reject);
  });
}

/** A TCP port nothing listens on (bound then released), for "daemon down" tests. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Polls `predicate` every 5 ms until it is truthy; fails after `timeoutMs` with `describe()`. */
export async function waitFor(predicate, what, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${typeof what === "function" ? what() : what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
