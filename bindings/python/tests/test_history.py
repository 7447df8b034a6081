"""Per-user history through the binding: publish_with_offset, the history settings and stats, and a
real ``websockets`` client speaking wspush.v1 that goes away and resumes with ``since``."""

from __future__ import annotations

import base64
import json

import pytest
import websockets.sync.client

import wspush
from conftest import connect, url, wait_until

V1 = "wspush.v1"


def connect_v1(server: wspush.Server, query: str) -> websockets.sync.client.ClientConnection:
    """A websockets client offering wspush.v1, which the server must select."""
    client = websockets.sync.client.connect(url(server, query), subprotocols=[V1], open_timeout=5, close_timeout=2)
    assert client.subprotocol == V1
    return client


def recv_json(client) -> dict:
    frame = client.recv(timeout=5)
    assert isinstance(frame, str), frame  # every v1 frame is a text frame
    return json.loads(frame)


def test_offsets_count_per_user_from_1_and_are_none_with_history_off(make_server):
    off = make_server()
    assert off.publish_with_offset("alice", "a") == wspush.Published(delivered=0, offset=None)
    assert off.stats().history_users == 0

    server = make_server(history_max_messages=2)
    assert [server.publish_with_offset("alice", f"m{i}").offset for i in range(3)] == [1, 2, 3]
    assert server.publish_with_offset(b"bob", b"\x00bin") == wspush.Published(delivered=0, offset=1)
    server.publish("alice", "plain publish takes an offset too")
    assert server.publish_with_offset("alice", "m5").offset == 5
    with connect(server, "alice") as raw:
        wait_until(lambda: server.stats().connections == 1, what="open")
        published = server.publish_with_offset("alice", "to the raw client")
        assert published == wspush.Published(delivered=1, offset=6)
        assert raw.recv(timeout=5) == "to the raw client", "a client without wspush.v1 gets raw frames"
    stats = server.stats()
    assert (stats.history_users, stats.history_messages) == (2, 3), "2 kept for alice, 1 for bob"
    assert stats.history_bytes > len("m5") + len("to the raw client") + 4
    assert stats.publishes_total == 7
    with pytest.raises(wspush.InvalidUserIdError):
        server.publish_with_offset("", "x")
    with pytest.raises(TypeError):
        server.publish_with_offset("alice", 42)  # type: ignore[arg-type]
    server.free()
    with pytest.raises(wspush.StoppedError):
        server.publish_with_offset("alice", "late")


def test_a_client_that_goes_away_resumes_with_since_and_gets_exactly_what_it_missed(make_server):
    server = make_server(history_max_messages=100)
    with connect_v1(server, "user=alice") as client:
        welcome = recv_json(client)
        assert welcome["type"] == "welcome" and welcome["offset"] == 0 and welcome["recovered"] is False
        since = f"{welcome['epoch']}:{welcome['offset']}"
    wait_until(lambda: server.stats().connections == 0, what="alice gone")

    missed = ["one", b"\x00two\xff", "three \u2713"]
    assert [server.publish_with_offset("alice", data) for data in missed] == [
        wspush.Published(delivered=0, offset=offset) for offset in (1, 2, 3)
    ]

    with connect_v1(server, f"user=alice&since={since}") as client:
        welcome = recv_json(client)
        assert welcome["type"] == "welcome"
        assert (welcome["offset"], welcome["recovered"]) == (3, True)
        epoch = welcome["epoch"]
        replayed = [recv_json(client) for _ in missed]
        assert [message["offset"] for message in replayed] == [1, 2, 3]
        assert replayed[0] == {"type": "message", "epoch": epoch, "offset": 1, "data": "one"}
        assert replayed[1] == {"type": "message", "offset": 2, "data_base64": base64.b64encode(missed[1]).decode()}
        assert replayed[2] == {"type": "message", "offset": 3, "data": "three \u2713"}
        with pytest.raises(TimeoutError):
            client.recv(timeout=0.3)  # exactly those three
        assert server.publish_with_offset("alice", "live").offset == 4
        assert recv_json(client) == {"type": "message", "offset": 4, "data": "live"}
        # Broadcasts are not part of the user's stream: no offset.
        assert server.broadcast("to everyone") == 1
        assert recv_json(client) == {"type": "message", "data": "to everyone"}
    stats = server.stats()
    assert (stats.resumes_total, stats.recoveries_total, stats.recovery_failures_total) == (1, 1, 0)


def test_a_resume_past_what_is_kept_is_not_recovered_and_is_counted(make_server):
    server = make_server(history_max_messages=2)
    for offset in (1, 2, 3):
        assert server.publish_with_offset("alice", f"m{offset}").offset == offset
    with connect_v1(server, "user=alice") as client:
        epoch = recv_json(client)["epoch"]
    # Offset 1 was trimmed (2 kept): what followed since=E:0 is no longer all there.
    with connect_v1(server, f"user=alice&since={epoch}:0") as client:
        welcome = recv_json(client)
        assert (welcome["epoch"], welcome["offset"], welcome["recovered"]) == (epoch, 3, False)
        assert server.publish_with_offset("alice", "live").offset == 4
        assert recv_json(client) == {"type": "message", "offset": 4, "data": "live"}, "nothing replayed"
    # Still all there after offset 2.
    with connect_v1(server, f"user=alice&since={epoch}:2") as client:
        assert recv_json(client)["recovered"] is True
        assert [recv_json(client)["data"] for _ in range(2)] == ["m3", "live"]
    stats = server.stats()
    assert (stats.resumes_total, stats.recoveries_total, stats.recovery_failures_total) == (2, 1, 1)
    assert (stats.history_users, stats.history_messages) == (1, 2)


def test_history_off_v1_clients_get_a_welcome_and_messages_without_offsets(make_server):
    server = make_server()
    with connect_v1(server, "user=alice") as client:
        assert recv_json(client) == {"type": "welcome", "epoch": "", "offset": 0, "recovered": False}
        assert server.publish_with_offset("alice", "hi") == wspush.Published(delivered=1, offset=None)
        assert recv_json(client) == {"type": "message", "data": "hi"}


def test_history_ttl_and_max_bytes_take_effect(make_server):
    server = make_server(history_max_messages=10, history_max_bytes=1000)
    big = "m" * 600
    assert server.publish_with_offset("alice", big).offset == 1
    assert server.publish_with_offset("bob", big).offset == 1  # past 1000 bytes: alice's stream goes
    assert (server.stats().history_users, server.stats().history_messages) == (1, 1)
    assert server.publish_with_offset("alice", big).offset == 1, "a new epoch for alice"

    # 2 s: kept in whole seconds, so the stream cannot go between the two publishes.
    server = make_server(history_max_messages=10, history_ttl_ms=2000)
    assert [server.publish_with_offset("carol", data).offset for data in ("a", "b")] == [1, 2]
    wait_until(lambda: server.stats().history_users == 0, timeout=10, what="carol's stream to expire")
    assert server.publish_with_offset("carol", "c").offset == 1
