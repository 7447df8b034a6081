"""Built-in JWT (HS256) authentication and the per-address limits, seen from real clients:
tokens minted here with hmac/hashlib, as an auth service would."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import time
from typing import Optional

import pytest
import websockets.exceptions
import websockets.sync.client

import wspush
from conftest import FAST, Recorder, connect, http_head, url, wait_until

SECRET = b"an HS256 secret of at least 32 bytes"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint(claims: dict, secret: bytes = SECRET, header: Optional[dict] = None) -> str:
    """A compact JWS: base64url(header).base64url(claims).base64url(HMAC-SHA256)."""
    header = {"alg": "HS256", "typ": "JWT"} if header is None else header
    signing_input = b64url(json.dumps(header, separators=(",", ":")).encode()) + "." + b64url(
        json.dumps(claims, separators=(",", ":")).encode()
    )
    signature = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def token_for(sub: str, lifetime: int = 60, secret: bytes = SECRET) -> str:
    return mint({"sub": sub, "exp": int(time.time()) + lifetime}, secret)


def refusal(server: wspush.Server, query: str = "", **options: object) -> websockets.http11.Response:
    """The HTTP response of an upgrade the server must refuse."""
    options.setdefault("open_timeout", 5)
    with pytest.raises(websockets.exceptions.InvalidStatus) as info:
        with websockets.sync.client.connect(url(server, query), **options):  # type: ignore[arg-type]
            pass
    return info.value.response


def jwt_server(make_server, **options: object) -> wspush.Server:
    """A server with the test secret and no on_upgrade: the engine's default decision."""
    settings: dict = dict(on_upgrade=None, jwt_hs256_secret=SECRET)
    settings.update(options)
    return make_server(**settings)


@pytest.mark.parametrize("secret", [SECRET, SECRET.decode("ascii")], ids=["bytes", "str"])
def test_a_valid_token_in_the_query_or_a_bearer_header_opens_as_its_sub(make_server, secret):
    opened = Recorder()
    server = jwt_server(make_server, jwt_hs256_secret=secret, on_open=lambda s, conn, user: opened.add("open", user))
    with websockets.sync.client.connect(url(server, f"token={token_for('alice')}"), open_timeout=5) as by_query:
        with websockets.sync.client.connect(
            url(server), additional_headers={"Authorization": f"Bearer {token_for('bob')}"}, open_timeout=5
        ) as by_header:
            wait_until(lambda: len(opened.of("open")) == 2, what="two opens")
            assert sorted(event[1] for event in opened.of("open")) == [b"alice", b"bob"]
            assert server.publish("alice", "for alice") == 1
            assert server.publish("bob", "for bob") == 1
            assert by_query.recv(timeout=5) == "for alice"
            assert by_header.recv(timeout=5) == "for bob"
    assert server.stats().upgrades_total == 2


def test_every_invalid_token_gets_401_invalid_token_and_nothing_more(make_server):
    opened = Recorder()
    server = jwt_server(make_server, on_open=lambda s, conn, user: opened.add("open", user))
    now = int(time.time())
    claims = {"sub": "mallory", "exp": now + 60}
    valid = token_for("mallory")
    header_part, _, signature = valid.split(".")
    forged = f"{header_part}.{b64url(json.dumps({'sub': 'admin', 'exp': now + 60}).encode())}.{signature}"
    unsigned_none = mint(claims, header={"alg": "none"}).rsplit(".", 1)[0] + "."
    cases = {
        "no token": "",
        "garbage": "token=not.a.jwt",
        "alg none": f"token={unsigned_none}",
        "alg none, signed anyway": f"token={mint(claims, header={'alg': 'none'})}",
        "HS512 header": f"token={mint(claims, header={'alg': 'HS512'})}",
        "wrong secret": f"token={token_for('mallory', secret=b'some other secret, 32 bytes long!')}",
        "forged claims": f"token={forged}",
        "expired": f"token={mint({'sub': 'mallory', 'exp': now - 120})}",
        "no exp": f"token={mint({'sub': 'mallory'})}",
        "not yet valid": f"token={mint({'sub': 'mallory', 'exp': now + 600, 'nbf': now + 300})}",
        "no sub": f"token={mint({'exp': now + 60})}",
    }
    for what, query in cases.items():
        response = refusal(server, query)
        assert (what, response.status_code) == (what, 401)
        assert (what, response.body) == (what, b"invalid token\n")
    basic = refusal(server, additional_headers={"Authorization": f"Basic {valid}"})
    assert basic.status_code == 401, "only the Bearer scheme carries a token"
    stats = server.stats()
    assert stats.upgrades_total == 0 and stats.rejected_total == len(cases) + 1
    assert not opened.of("open")


def test_a_host_on_upgrade_sees_the_verified_user_and_decides(make_server):
    seen = Recorder()

    def on_upgrade(server, request):
        user = request.verified_user
        seen.add("upgrade", user)
        if user == b"banned":
            request.reject(403)
        elif user is not None:
            request.accept(b"verified:" + user)
        else:
            request.reject(401)

    opened = Recorder()
    server = make_server(
        on_upgrade=on_upgrade, jwt_hs256_secret=SECRET, on_open=lambda s, conn, user: opened.add("open", user)
    )
    with websockets.sync.client.connect(url(server, f"token={token_for('carol')}"), open_timeout=5):
        wait_until(lambda: opened.of("open"), what="on_open")
    assert opened.of("open") == [("open", b"verified:carol")]
    assert refusal(server, f"token={token_for('banned')}").status_code == 403
    assert refusal(server, f"token={token_for('carol', secret=b'x' * 32)}").status_code == 401
    assert [event[1] for event in seen.of("upgrade")] == [b"carol", b"banned", None]


def test_without_a_secret_no_request_is_verified(make_server):
    seen = Recorder()

    def on_upgrade(server, request):
        seen.add("upgrade", request.verified_user)
        request.reject(401)

    server = make_server(on_upgrade=on_upgrade)
    response = refusal(server, f"token={token_for('alice')}")
    assert response.status_code == 401 and response.body != b"invalid token\n"
    assert seen.of("upgrade") == [("upgrade", None)]
    # No secret and no on_upgrade: nothing is let in, token or not.
    assert refusal(make_server(on_upgrade=None), f"token={token_for('alice')}").status_code == 401


def test_jwt_leeway_ms_reaches_the_engine(make_server):
    just_expired = mint({"sub": "dora", "exp": int(time.time()) - 5})
    strict = jwt_server(make_server, jwt_leeway_ms=0)
    assert refusal(strict, f"token={just_expired}").body == b"invalid token\n"
    lenient = jwt_server(make_server, jwt_leeway_ms=60_000)
    with websockets.sync.client.connect(url(lenient, f"token={just_expired}"), open_timeout=5) as client:
        wait_until(lambda: lenient.stats().connections == 1, what="open")
        assert lenient.publish("dora", "within the leeway") == 1
        assert client.recv(timeout=5) == "within the leeway"


def test_a_short_secret_is_refused_at_construction_without_echoing_it():
    short = b"31 bytes of a too short secret!"
    assert len(short) == 31
    with pytest.raises(wspush.InvalidArgumentError) as info:
        wspush.Server(**dict(FAST, jwt_hs256_secret=short))  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError) and info.value.code == wspush.Result.INVALID_ARGUMENT
    assert "jwt_hs256_secret" in str(info.value)
    assert "too short secret" not in str(info.value) and "too short secret" not in repr(info.value)
    with pytest.raises(TypeError, match="jwt_hs256_secret must be bytes or str, not int"):
        wspush.Server(**dict(FAST, jwt_hs256_secret=12345678901234567890123456789012))  # type: ignore[arg-type]
    # Exactly 32 bytes is enough (RFC 7518 3.2).
    wspush.Server(**dict(FAST, jwt_hs256_secret=bytearray(b"k" * 32))).free()  # type: ignore[arg-type]


def upgrade_status(server: wspush.Server, user: str, source_ip: str = "127.0.0.1") -> int:
    """The status a hand-made upgrade request from ``source_ip`` gets (any 127.0.0.0/8 address
    works on Linux). A per-address limit answers as soon as the socket is accepted, possibly
    before the request is sent, which the websockets client can trip over: a raw socket reads
    whatever comes."""
    with socket.socket() as sock:
        sock.settimeout(5)
        sock.bind((source_ip, 0))
        sock.connect(("127.0.0.1", server.port))
        key = base64.b64encode(os.urandom(16)).decode()
        try:
            sock.sendall(
                (
                    f"GET /ws?user={user} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
        except OSError:
            pass  # already answered and closed: the answer is still there to read
        head = http_head(sock)
    return int(head.split(" ", 2)[1])


def test_max_connections_per_ip_answers_429_and_frees_the_place_on_close(make_server):
    server = make_server(max_connections_per_ip=2)
    with connect(server, "a") as first, connect(server, "b"):
        wait_until(lambda: server.stats().connections == 2, what="two opens")
        assert [upgrade_status(server, "c") for _ in range(3)] == [429, 429, 429]
        assert server.stats().ip_limited_total == 3
        # Another address has its own allowance (its socket is closed again right away).
        assert upgrade_status(server, "d", source_ip="127.0.0.2") == 101
        first.close()
        wait_until(lambda: server.stats().connections == 1, what="a place freed by a close")
        with connect(server, "c"):
            wait_until(lambda: server.stats().users == 2, what="open after a close")
    assert server.stats().ip_limited_total == 3


def test_max_handshakes_per_ip_per_sec_answers_429_past_the_burst(make_server):
    server = make_server(max_handshakes_per_ip_per_sec=3)
    outcomes = [upgrade_status(server, f"u{index}") for index in range(8)]
    opened, limited = outcomes.count(101), outcomes.count(429)
    # A burst of 3, plus whatever refilled (3/s) while the attempts ran.
    assert 3 <= opened < 8, outcomes
    assert opened + limited == 8, outcomes
    assert server.stats().ip_limited_total == limited
    time.sleep(1.05)  # a second later the allowance is back
    assert upgrade_status(server, "later") == 101
