#!/usr/bin/env python3
"""A Python host for wspush: token auth, publishing from stdin, connection log.

    cargo build --release && pip install ./bindings/python
    python examples/python_host.py --token secret-alice=alice --token secret-bob=bob

Clients connect to ws://127.0.0.1:8080/ws?token=secret-alice (or send the token as
``Authorization: Bearer secret-alice``). Each stdin line ``user<TAB>message`` is published to
every tab of that user; ``*<TAB>message`` goes to everyone. EOF (Ctrl-D) or Ctrl-C stops the
server cleanly: every client gets close code 1001. ``GET /health`` answers with the stats.

Auth runs on a thread pool through ``request.defer()``, as a real host would do for a session
store or database lookup: the engine's I/O threads never wait for it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, Optional

try:
    import wspush
except ImportError:  # running from a checkout without `pip install ./bindings/python`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bindings" / "python" / "src"))
    import wspush

Authenticator = Callable[[str], Optional[str]]


def token_table(tokens: Dict[str, str]) -> Authenticator:
    """An authenticator from a token -> user dict; replace with your session store lookup."""
    return tokens.get


class PushHost:
    """Wires wspush callbacks to an authenticator and prints connection events."""

    def __init__(self, authenticate: Authenticator, auth_threads: int = 4) -> None:
        self.authenticate = authenticate
        self.auth_pool = ThreadPoolExecutor(max_workers=auth_threads, thread_name_prefix="auth")
        self.print_lock = threading.Lock()

    def say(self, text: str) -> None:
        with self.print_lock:
            print(text, flush=True)

    def on_upgrade(self, server: wspush.Server, request: wspush.Request) -> None:
        token = request.query("token")
        if token is None:
            bearer = request.header("authorization") or ""
            token = bearer[7:] if bearer.lower().startswith("bearer ") else ""
        peer = request.peer
        # Copy what the decision needs now: the request is only valid inside this callback.
        ticket = request.defer()
        self.auth_pool.submit(self.decide, server, ticket, token, peer)

    def decide(self, server: wspush.Server, ticket: int, token: str, peer: Optional[str]) -> None:
        try:
            user = self.authenticate(token) if token else None
            if user:
                server.accept_upgrade(ticket, user)
            else:
                self.say(f"rejected {peer}: bad or missing token")
                server.reject_upgrade(ticket, 401)
        except wspush.NotFoundError:
            pass  # the client left (or the handshake timed out) while we were deciding
        except wspush.StoppedError:
            pass
        except Exception:
            logging.exception("auth failed")
            try:
                server.reject_upgrade(ticket, 500)
            except wspush.WspushError:
                pass

    def on_open(self, server: wspush.Server, conn: int, user: bytes) -> None:
        self.say(f"connected    {user.decode(errors='replace')} (conn {conn})")

    def on_close(self, server: wspush.Server, conn: int, user: bytes, code: int) -> None:
        self.say(f"disconnected {user.decode(errors='replace')} (conn {conn}, code {code})")

    def on_message(self, server: wspush.Server, conn: int, user: bytes, data: object) -> None:
        self.say(f"from {user.decode(errors='replace')}: {data!r}")

    def on_http(self, server: wspush.Server, request: wspush.Request) -> None:
        if request.path == "/health":
            body = json.dumps(dataclasses.asdict(server.stats()), indent=1) + "\n"
            request.respond(200, body, "application/json")


def publish_stdin(server: wspush.Server, host: PushHost, done: threading.Event) -> None:
    """Reads ``user<TAB>message`` lines until EOF, then sets ``done``."""
    try:
        for line in sys.stdin:
            line = line.rstrip("\r\n")
            if not line:
                continue
            user, tab, message = line.partition("\t")
            if not tab:
                host.say("expected user<TAB>message")
                continue
            try:
                if user == "*":
                    count = server.broadcast(message)
                else:
                    count = server.publish(user, message)
            except wspush.StoppedError:
                break
            except wspush.WspushError as error:
                host.say(f"cannot publish to {user!r}: {error}")
                continue
            host.say(f"published to {user}: {count} connection(s)")
    finally:
        done.set()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8080", help="host:port (port 0 picks one)")
    parser.add_argument("--path", default="/ws")
    parser.add_argument(
        "--token", action="append", default=[], metavar="TOKEN=USER", help="accept TOKEN as USER (repeatable)"
    )
    parser.add_argument("--allowed-origin", action="append", default=[], metavar="ORIGIN")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    tokens = dict(item.split("=", 1) for item in args.token if "=" in item)
    if not tokens:
        tokens = {"secret-alice": "alice", "secret-bob": "bob"}
        print("no --token given: demo tokens secret-alice -> alice, secret-bob -> bob", flush=True)
    host = PushHost(token_table(tokens))

    try:
        server = wspush.Server(
            args.listen,
            path=args.path,
            on_upgrade=host.on_upgrade,
            on_open=host.on_open,
            on_message=host.on_message,
            on_close=host.on_close,
            on_http=host.on_http,
            allowed_origins=args.allowed_origin,
            handshake_timeout_ms=5000,
            drain_timeout_ms=2000,
        )
    except (wspush.WspushError, wspush.LibraryNotFoundError) as error:
        print(f"cannot start: {error}", file=sys.stderr)
        return 1

    done = threading.Event()
    # SIGTERM (service managers) stops like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with server:
        listen_host = args.listen.rsplit(":", 1)[0]
        host.say(f"wspush {wspush.version()} listening on ws://{listen_host}:{server.port}{args.path}")
        # A daemon thread: a blocking stdin read must not keep the process alive after Ctrl-C.
        threading.Thread(target=publish_stdin, args=(server, host, done), name="stdin", daemon=True).start()
        try:
            while not done.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        host.say("stopping: closing every connection with 1001")
        server.stop()
    host.auth_pool.shutdown(wait=True, cancel_futures=True)
    host.say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
