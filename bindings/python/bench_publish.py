"""Publishes per second from Python into the wspush engine: one thread, one loop.

    python bindings/python/bench_publish.py [--count N] [--size BYTES]

Measures ``server.publish(user, payload)`` (a) to a user with one open connection, drained by
a reader in another process, and (b) to a user with no connection (the lookup alone). The
numbers are what the binding costs on top of the engine: the ctypes call, argument conversion
and the in-flight guard.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import wspush

# A WebSocket client in a separate process (no GIL shared with the publisher) that completes
# the upgrade and then discards everything it receives.
READER = r"""
import base64, os, socket, sys
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
key = base64.b64encode(os.urandom(16)).decode()
sock.sendall(("GET /ws?user=alice HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
while sock.recv(1 << 20):
    pass
"""


def on_upgrade(server: wspush.Server, request: wspush.Request) -> None:
    request.accept(request.query("user") or "anonymous")


def rate(server: wspush.Server, user: str, payload: wspush.Payload, count: int) -> float:
    publish = server.publish
    started = time.perf_counter()
    for _ in range(count):
        publish(user, payload)
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000, help="publishes per measurement")
    parser.add_argument("--size", type=int, default=64, help="payload bytes")
    args = parser.parse_args()
    payload = os.urandom(args.size // 2).hex().encode()[: args.size].ljust(args.size, b"x")

    with wspush.Server("127.0.0.1:0", threads=1, on_upgrade=on_upgrade, max_queue_bytes=64 << 20) as server:
        reader = subprocess.Popen([sys.executable, "-c", READER, str(server.port)])
        try:
            deadline = time.monotonic() + 10
            while server.stats().connections != 1:
                if time.monotonic() > deadline:
                    raise SystemExit("the reader did not connect")
                time.sleep(0.01)
            rate(server, "alice", payload, 10_000)  # warm-up
            connected = rate(server, "alice", payload, args.count)
            delivered_before = server.stats().messages_out_total
            absent = rate(server, "nobody", payload, args.count)
            text = rate(server, "nobody", payload.decode(), args.count)
            stats = server.stats()
        finally:
            reader.kill()
            reader.wait()

    print(f"wspush {wspush.version()} via {wspush.library_path()}")
    print(f"Python {sys.version.split()[0]}, one thread, {args.count} publishes of {args.size} bytes each:")
    print(f"  to a user with 1 connection: {connected:>10,.0f} publishes/s")
    print(f"  to an absent user:           {absent:>10,.0f} publishes/s")
    print(f"  to an absent user, str:      {text:>10,.0f} publishes/s  (UTF-8 encode per call)")
    print(
        f"  messages handed to the socket by the end: {delivered_before:,} "
        f"(slow-consumer closes: {stats.slow_consumer_closes_total})"
    )


if __name__ == "__main__":
    main()
