"""Every setting reaches the engine (observed from a client), bad settings raise the right
error, plain HTTP through on_http, slow consumers, and the stats snapshot."""

from __future__ import annotations

import dataclasses
import resource
import socket
import time

import pytest
import websockets.exceptions
import websockets.sync.client

import wspush
from conftest import FAST, Recorder, connect, http_head, http_request, raw_upgrade, url, wait_until


def status_of(server: wspush.Server, query: str = "user=a", path: str = "/ws", **options: object) -> int:
    with pytest.raises(websockets.exceptions.InvalidStatus) as info:
        with websockets.sync.client.connect(url(server, query, path), open_timeout=5, **options):  # type: ignore[arg-type]
            pass
    return info.value.response.status_code


def test_path_and_allowed_origins(make_server):
    server = make_server(path="/push", allowed_origins=["https://mail.example.com", "https://app.example.com"])
    assert status_of(server, path="/ws", origin="https://mail.example.com") == 404
    assert status_of(server, path="/push", origin="https://evil.example.com") == 403
    with websockets.sync.client.connect(url(server, "user=a", "/push"), origin="https://app.example.com"):
        wait_until(lambda: server.stats().connections == 1, what="open")


def test_max_connections_per_user_and_max_connections(make_server):
    per_user = make_server(max_connections_per_user=1)
    with connect(per_user, "alice"):
        wait_until(lambda: per_user.stats().connections == 1, what="open")
        assert status_of(per_user, "user=alice") == 429
        with connect(per_user, "bob"):
            wait_until(lambda: per_user.stats().connections == 2, what="bob open")
    capped = make_server(max_connections=1)
    with connect(capped, "alice"):
        wait_until(lambda: capped.stats().connections == 1, what="open")
        # The engine answers 503 as soon as it accepts the socket, possibly before the request
        # is sent, so a raw socket reads it (a full client can trip over the early close).
        with socket.create_connection(("127.0.0.1", capped.port), timeout=5) as sock:
            assert http_head(sock).startswith("HTTP/1.1 503")
        assert capped.stats().over_capacity_total == 1


def test_max_message_size_closes_with_1009(make_server):
    closed = Recorder()
    server = make_server(max_message_size=16, on_close=lambda s, conn, user, code: closed.add("close", code))
    with connect(server, "alice") as client:
        client.send("x" * 16)
        client.send("x" * 17)
        with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
            client.recv(timeout=5)
        assert info.value.rcvd.code == 1009
    wait_until(lambda: closed.of("close") == [("close", 1009)], what="on_close 1009")
    assert server.stats().protocol_errors_total == 1
    assert server.stats().messages_in_total == 1


def test_max_header_bytes_answers_431(make_server):
    server = make_server(max_header_bytes=512)
    assert status_of(server, additional_headers={"Cookie": "c" * 600}) == 431
    with connect(server, "alice", additional_headers={"Cookie": "c" * 100}):
        wait_until(lambda: server.stats().connections == 1, what="open")


def test_ping_interval_and_idle_timeout_close_a_silent_peer(make_server):
    closed = Recorder()
    server = make_server(
        ping_interval_ms=50, idle_timeout_ms=300, on_close=lambda s, conn, user, code: closed.add("close", code)
    )
    started = time.monotonic()
    with raw_upgrade(server.port):  # never answers the pings
        wait_until(lambda: closed.of("close"), what="idle close")
    elapsed = time.monotonic() - started
    assert closed.of("close") == [("close", 1006)]
    assert 0.25 < elapsed < 3
    stats = server.stats()
    assert stats.timeouts_total == 1 and stats.pings_total >= 1


def test_close_timeout_ends_a_close_the_peer_never_answers(make_server):
    opened, closed = Recorder(), Recorder()
    server = make_server(
        close_timeout_ms=100,
        on_open=lambda s, conn, user: opened.add("open", conn),
        on_close=lambda s, conn, user, code: closed.add("close", code),
    )
    with raw_upgrade(server.port):
        wait_until(lambda: opened.of("open"), what="open")
        started = time.monotonic()
        server.close(opened.of("open")[0][1], 4000)
        wait_until(lambda: closed.of("close"), what="on_close")
        assert time.monotonic() - started < 2


@pytest.mark.parametrize("policy", ["drop", "close"])
def test_slow_consumer_policies(make_server, policy):
    events = Recorder()
    server = make_server(
        slow_consumer=policy,
        max_queue_bytes=64 * 1024,
        on_drop=lambda s, conn, user, size: events.add("drop", user, size),
        on_close=lambda s, conn, user, code: events.add("close", user, code),
    )
    with raw_upgrade(server.port, "/ws?user=slow", rcvbuf=4096) as sock:  # never reads
        wait_until(lambda: server.stats().connections == 1, what="open")
        chunk = b"m" * 32 * 1024
        for _ in range(1000):
            try:
                server.publish("slow", chunk)
            except wspush.WspushError:
                break
            if events.events:
                break
        wait_until(lambda: events.events, what=f"slow consumer {policy}")
        stats = server.stats()
        if policy == "drop":
            kind, user, size = events.of("drop")[0]
            assert user == b"slow" and len(chunk) <= size <= len(chunk) + 14  # payload (+ frame header)
            assert stats.dropped_total >= 1 and stats.connections == 1 and not events.of("close")
        else:
            assert events.of("close") == [("close", b"slow", 1008)]
            assert stats.slow_consumer_closes_total == 1 and not events.of("drop")
        sock.close()


def test_on_http_answers_plain_requests_and_default_is_426(make_server):
    def on_http(server, request):
        if request.path == "/health":
            request.respond(200, f"ok {server.stats().connections}\n")
        elif request.path == "/boom":
            raise RuntimeError("handler bug")

    server = make_server(on_http=on_http)
    response = http_request(server.port, "GET /health?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert response.startswith("HTTP/1.1 200") and response.endswith("ok 0\n")
    assert "text/plain; charset=utf-8" in response
    assert http_request(server.port, "GET /other HTTP/1.1\r\nHost: a\r\n\r\n").startswith("HTTP/1.1 426")
    assert http_request(server.port, "GET /boom HTTP/1.1\r\nHost: a\r\n\r\n").startswith("HTTP/1.1 500")
    plain = make_server()
    assert http_request(plain.port, "GET /health HTTP/1.1\r\nHost: a\r\n\r\n").startswith("HTTP/1.1 426")


@pytest.mark.parametrize(
    "setting, error",
    [
        (dict(listen="not-an-address"), wspush.InvalidAddressError),
        (dict(path="ws"), wspush.InvalidArgumentError),
        (dict(threads=256), wspush.InvalidArgumentError),
        (dict(max_connections=0), wspush.InvalidArgumentError),
        (dict(max_message_size=0), wspush.InvalidArgumentError),
        (dict(ping_interval_ms=0), wspush.InvalidArgumentError),
        (dict(idle_timeout_ms=0), wspush.InvalidArgumentError),
        (dict(handshake_timeout_ms=0), wspush.InvalidArgumentError),
        (dict(drain_timeout_ms=2**32), wspush.InvalidArgumentError),
        (dict(close_timeout_ms=-1), wspush.InvalidArgumentError),
        (dict(max_header_bytes=100), wspush.InvalidArgumentError),
        (dict(max_handshakes_per_thread=0), wspush.InvalidArgumentError),
        (dict(max_queue_bytes=2**64), wspush.InvalidArgumentError),
        (dict(slow_consumer="ignore"), wspush.InvalidArgumentError),
        (dict(max_connections_per_user=-5), wspush.InvalidArgumentError),
        (dict(max_connections_per_ip=-1), wspush.InvalidArgumentError),
        (dict(max_handshakes_per_ip_per_sec=2**32), wspush.InvalidArgumentError),
        (dict(jwt_leeway_ms=-1), wspush.InvalidArgumentError),
        (dict(jwt_hs256_secret=b"short"), wspush.InvalidArgumentError),
        (dict(jwt_hs256_secret=""), wspush.InvalidArgumentError),
        (dict(history_ttl_ms=0), wspush.InvalidArgumentError),
        (dict(history_ttl_ms=2**32), wspush.InvalidArgumentError),
        (dict(history_max_bytes=0), wspush.InvalidArgumentError),
        (dict(history_max_messages=-1), wspush.InvalidArgumentError),
    ],
)
def test_bad_settings_raise_the_matching_error(setting, error):
    settings = dict(FAST)
    settings.update(setting)
    with pytest.raises(error) as info:
        wspush.Server(**settings)  # type: ignore[arg-type]
    assert isinstance(info.value, wspush.WspushError) and isinstance(info.value, ValueError)
    assert next(iter(setting)) in str(info.value)


def test_every_setting_at_once_is_accepted(make_server):
    server = make_server(
        max_connections=10,
        max_message_size=1024,
        ping_interval_ms=1000,
        idle_timeout_ms=5000,
        handshake_timeout_ms=1000,
        max_queue_bytes=4096,
        slow_consumer="drop",
        allowed_origins=["https://mail.example.com"],
        max_header_bytes=4096,
        max_handshakes_per_thread=4,
        max_connections_per_user=3,
        drain_timeout_ms=100,
        close_timeout_ms=100,
        max_connections_per_ip=5,
        max_handshakes_per_ip_per_sec=100,
        jwt_hs256_secret=b"s" * 32,
        jwt_leeway_ms=1000,
    )
    with connect(server, "alice", origin="https://mail.example.com") as client:
        wait_until(lambda: server.stats().connections == 1, what="open")
        server.publish("alice", "configured")
        assert client.recv(timeout=5) == "configured"


def test_port_in_use_raises_bind_failed():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = dict(FAST, listen=f"127.0.0.1:{taken.getsockname()[1]}")
        with pytest.raises(wspush.BindFailedError) as info:
            wspush.Server(**settings)  # type: ignore[arg-type]
        assert info.value.code == wspush.Result.BIND_FAILED


def test_stats_count_what_happened(make_server):
    server = make_server(ping_interval_ms=50)
    empty = dataclasses.asdict(server.stats())
    # The connection cap in force is set at start (max_connections, lowered to RLIMIT_NOFILE).
    assert 0 < empty.pop("max_connections") <= resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert empty == {field.name: 0 for field in dataclasses.fields(wspush.Stats) if field.name != "max_connections"}
    with connect(server, "alice") as tab1, connect(server, "alice") as tab2, connect(server, "bob") as bob:
        wait_until(lambda: server.stats().connections == 3, what="opens")
        assert status_of(server, "") == 401
        tab1.send("in")
        server.publish("alice", "out")
        server.broadcast(b"all")
        for client in (tab1, tab2):
            assert client.recv(timeout=5) == "out"
        for client in (tab1, tab2, bob):
            assert client.recv(timeout=5) == b"all"
        wait_until(lambda: server.stats().pings_total >= 3, what="pings")
        stats = server.stats()
    assert stats.connections == 3 and stats.users == 2 and stats.handshakes == 0
    assert stats.accepted_total == 4 and stats.upgrades_total == 3 and stats.rejected_total == 1
    assert stats.messages_in_total == 1 and stats.messages_out_total == 5
    assert stats.publishes_total == 1 and stats.broadcasts_total == 1
    assert stats.bytes_out_total >= 5 * 5
    assert stats.over_capacity_total == stats.dropped_total == stats.slow_consumer_closes_total == 0
    assert stats.protocol_errors_total == stats.timeouts_total == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.connections = 0  # type: ignore[misc]
    wait_until(lambda: server.stats().connections == 0 and server.stats().users == 0, what="closes")
