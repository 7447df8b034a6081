"""Shared helpers: servers on 127.0.0.1:0 with short timeouts, real WebSocket clients."""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
from typing import Callable, Iterator, List

import pytest
import websockets.sync.client

import wspush

# Short timeouts so that nothing in a test waits for a default (ping 30 s, drain 5 s...).
FAST = dict(
    listen="127.0.0.1:0",
    threads=2,
    ping_interval_ms=200,
    idle_timeout_ms=2000,
    handshake_timeout_ms=2000,
    drain_timeout_ms=500,
    close_timeout_ms=500,
)


def accept_token(server: wspush.Server, request: wspush.Request) -> None:
    """The usual test auth: ``?user=NAME`` is accepted as NAME, no parameter gets 401."""
    user = request.query("user")
    if user:
        request.accept(user)
    else:
        request.reject(401)


@pytest.fixture
def make_server() -> Iterator[Callable[..., wspush.Server]]:
    """Starts servers with the FAST settings (overridable) and frees them after the test."""
    servers: List[wspush.Server] = []

    def make(**options: object) -> wspush.Server:
        settings = dict(FAST)
        settings.setdefault("on_upgrade", accept_token)  # type: ignore[arg-type]
        settings.update(options)
        server = wspush.Server(**settings)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.free()


def url(server: wspush.Server, query: str = "", path: str = "/ws") -> str:
    return f"ws://127.0.0.1:{server.port}{path}{'?' + query if query else ''}"


def connect(server: wspush.Server, user: str = "", **options: object) -> websockets.sync.client.ClientConnection:
    """A real WebSocket client (the websockets package), as ``user``."""
    options.setdefault("open_timeout", 5)
    options.setdefault("close_timeout", 2)
    return websockets.sync.client.connect(url(server, f"user={user}" if user else ""), **options)  # type: ignore[arg-type]


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def raw_upgrade(
    port: int, target: str = "/ws?user=raw", headers: str = "", rcvbuf: int = 0, prefix: bytes = b""
) -> socket.socket:
    """A hand-made client that completes the upgrade and then does only what the test does
    (e.g. never reads, never answers pings). Returns the socket after the 101 response.
    ``prefix`` is sent just before the request (a PROXY protocol header, say)."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        prefix
        + (
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
        ).encode()
    )
    head = http_head(sock)
    assert head.startswith("HTTP/1.1 101"), head
    return sock


def http_head(sock: socket.socket) -> str:
    """Reads an HTTP response head byte by byte (so nothing after it is consumed)."""
    data = b""
    while not data.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            break
        data += byte
    return data.decode("latin-1")


def http_request(port: int, request: str) -> str:
    """Sends a raw HTTP request and returns the whole response (the server closes after it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request.encode())
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode("latin-1")


class Recorder:
    """Thread-safe record of callback events."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: List[tuple] = []

    def add(self, *event: object) -> None:
        with self.lock:
            self.events.append(event)

    def of(self, kind: str) -> List[tuple]:
        with self.lock:
            return [event for event in self.events if event[0] == kind]
