"""The settings for running behind a load balancer and against hostile clients, each observed
taking effect: proxy_protocol/trusted_proxies, max_pending_handshakes_per_ip,
message_timeout_ms, max_partial_input_bytes and socket_send_buffer/socket_recv_buffer."""

from __future__ import annotations

import os
import socket
import time
from typing import Tuple

import pytest

import wspush
from conftest import FAST, Recorder, connect, http_head, http_request, raw_upgrade, wait_until

PROXY_V1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n"


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A complete client frame (FIN set, masked as clients must)."""
    mask = os.urandom(4)
    if len(payload) < 126:
        head = bytes([0x80 | opcode, 0x80 | len(payload)])
    else:
        head = bytes([0x80 | opcode, 0x80 | 126]) + len(payload).to_bytes(2, "big")
    return head + mask + bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))


def read_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"connection ended after {len(data)} of {size} bytes")
        data += chunk
    return data


def read_close(sock: socket.socket) -> int:
    """Reads server frames (skipping pings) up to the close frame; returns its code."""
    while True:
        first, second = read_exact(sock, 2)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(read_exact(sock, 2), "big")
        elif length == 127:
            length = int.from_bytes(read_exact(sock, 8), "big")
        payload = read_exact(sock, length)
        if first & 0x0F == 0x8:
            return int.from_bytes(payload[:2], "big")


def test_proxy_protocol_gives_the_client_address_from_a_trusted_balancer(make_server):
    peers = Recorder()

    def on_upgrade(server, request):
        peers.add("peer", request.peer)
        request.accept("alice")

    server = make_server(proxy_protocol=True, trusted_proxies=["127.0.0.1", "10.0.0.0/8"], on_upgrade=on_upgrade)
    with raw_upgrade(server.port, prefix=PROXY_V1):
        wait_until(lambda: server.stats().connections == 1, what="open")
    assert peers.of("peer") == [("peer", "203.0.113.7:5555")]
    # From a trusted source the header is required.
    assert http_request(server.port, "GET /ws?user=a HTTP/1.1\r\nHost: a\r\n\r\n").startswith("HTTP/1.1 400")
    # Without the setting the client's own address is the peer, and a PROXY header is refused.
    plain = make_server(on_upgrade=on_upgrade)
    with raw_upgrade(plain.port):
        wait_until(lambda: plain.stats().connections == 1, what="open")
    assert peers.of("peer")[-1][1].startswith("127.0.0.1:")
    with socket.create_connection(("127.0.0.1", plain.port), timeout=5) as sock:
        sock.sendall(PROXY_V1 + b"GET /ws?user=a HTTP/1.1\r\nHost: a\r\n\r\n")
        assert http_head(sock).startswith("HTTP/1.1 400")
    assert len(peers.of("peer")) == 2


@pytest.mark.parametrize(
    "setting, error",
    [
        (dict(proxy_protocol=True), wspush.InvalidArgumentError),  # no trusted proxy
        (dict(proxy_protocol=True, trusted_proxies=[]), wspush.InvalidArgumentError),
        (dict(proxy_protocol="yes", trusted_proxies=["127.0.0.1"]), wspush.InvalidArgumentError),
        (dict(trusted_proxies=["not-a-network"]), wspush.InvalidAddressError),
        (dict(trusted_proxies=["10.0.0.0/33"]), wspush.InvalidAddressError),
        (dict(max_pending_handshakes_per_ip=-1), wspush.InvalidArgumentError),
        (dict(message_timeout_ms=0), wspush.InvalidArgumentError),
        (dict(message_timeout_ms=2**32), wspush.InvalidArgumentError),
        (dict(max_partial_input_bytes=-1), wspush.InvalidArgumentError),
        (dict(socket_send_buffer=-1), wspush.InvalidArgumentError),
        (dict(socket_recv_buffer=2**64), wspush.InvalidArgumentError),
    ],
)
def test_bad_settings_raise_the_matching_error(setting, error):
    settings = dict(FAST)
    settings.update(setting)
    with pytest.raises(error) as info:
        wspush.Server(**settings)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError) and next(iter(setting)) in str(info.value)


def test_max_pending_handshakes_per_ip_answers_429_without_a_request(make_server):
    server = make_server(max_pending_handshakes_per_ip=2)
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(2)]
    try:
        wait_until(lambda: server.stats().handshakes == 2, what="2 handshaking")
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as third:
            assert http_head(third).startswith("HTTP/1.1 429")  # sent nothing
        assert server.stats().ip_limited_total == 1
    finally:
        for sock in idle:
            sock.close()
    # Once the idle sockets are gone, the address may handshake again.
    wait_until(lambda: server.stats().handshakes == 0, what="idle sockets gone")
    with connect(server, "alice"):
        wait_until(lambda: server.stats().connections == 1, what="open")


def test_message_timeout_closes_a_half_sent_frame_with_1008(make_server):
    closed = Recorder()
    server = make_server(message_timeout_ms=300, on_close=lambda s, conn, user, code: closed.add("close", code))
    with raw_upgrade(server.port) as sock:
        started = time.monotonic()
        sock.sendall(masked_frame(0x2, b"h" * 100)[:10])
        assert read_close(sock) == 1008
        elapsed = time.monotonic() - started
    assert 0.25 < elapsed < 2, elapsed
    wait_until(lambda: closed.of("close") == [("close", 1008)], what="on_close 1008")
    assert server.stats().message_timeouts_total == 1


def test_max_partial_input_bytes_closes_with_1013(make_server):
    closed = Recorder()
    server = make_server(max_partial_input_bytes=1000, on_close=lambda s, conn, user, code: closed.add("close", code))
    with raw_upgrade(server.port) as sock:
        sock.sendall(masked_frame(0x2, b"p" * 10_000)[:5_000])
        assert read_close(sock) == 1013
    wait_until(lambda: closed.of("close") == [("close", 1013)], what="on_close 1013")
    assert server.stats().partial_input_refusals_total == 1
    # The default cap (256 MiB) lets the same frame arrive in two parts.
    messages = Recorder()
    plain = make_server(on_message=lambda s, conn, user, data: messages.add("message", len(data)))
    with raw_upgrade(plain.port) as sock:
        frame = masked_frame(0x2, b"p" * 10_000)
        sock.sendall(frame[:5_000])
        wait_until(lambda: plain.stats().partial_input_bytes > 0, what="partial input held")
        sock.sendall(frame[5_000:])
        wait_until(lambda: messages.of("message") == [("message", 10_000)], what="the message")


def accepted_socket_of(client: socket.socket) -> socket.socket:
    """The engine's end of ``client``'s connection (a duplicate of its descriptor): the engine
    runs in this process, so its sockets are among our descriptors."""
    local, peer = client.getpeername(), client.getsockname()
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = os.dup(int(name))
        except OSError:
            continue
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            continue
        try:
            if sock.type == socket.SOCK_STREAM and sock.getsockname() == local and sock.getpeername() == peer:
                return sock
        except OSError:
            pass
        sock.close()
    raise AssertionError(f"no socket of ours is the server end of {peer} -> {local}")


def buffers_of(sock: socket.socket) -> Tuple[int, int]:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF), sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="finds the engine's sockets through /proc")
def test_socket_buffers_are_set_on_every_connection(make_server):
    send, recv = 24 * 1024, 48 * 1024
    with socket.socket() as probe:  # what the kernel reports for these sizes (Linux doubles them)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv)
        expected = buffers_of(probe)
    server = make_server(socket_send_buffer=send, socket_recv_buffer=recv)
    for _ in range(2):
        with raw_upgrade(server.port) as client, accepted_socket_of(client) as accepted:
            assert buffers_of(accepted) == expected
    plain = make_server()  # the kernel's autotuning
    with raw_upgrade(plain.port) as client, accepted_socket_of(client) as accepted:
        assert buffers_of(accepted) != expected


def test_every_new_setting_at_once_is_accepted(make_server):
    server = make_server(
        proxy_protocol=True,
        trusted_proxies="10.0.0.0/8",  # one network as a plain str, like allowed_origins
        max_pending_handshakes_per_ip=4,
        message_timeout_ms=1000,
        max_partial_input_bytes=1 << 20,
        socket_send_buffer=64 * 1024,
        socket_recv_buffer=None,
    )
    # 127.0.0.1 is not a trusted proxy: served directly, without a PROXY header.
    with connect(server, "alice") as client:
        wait_until(lambda: server.stats().connections == 1, what="open")
        server.publish("alice", "configured")
        assert client.recv(timeout=5) == "configured"
