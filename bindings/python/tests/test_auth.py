"""on_upgrade: accept, reject, defer (completed from other threads), request accessors."""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import websockets.exceptions
import websockets.sync.client

import wspush
from conftest import Recorder, connect, url, wait_until


def rejected_status(server: wspush.Server, query: str = "", **options: object) -> int:
    with pytest.raises(websockets.exceptions.InvalidStatus) as info:
        with websockets.sync.client.connect(url(server, query), open_timeout=5, **options):  # type: ignore[arg-type]
            pass
    return info.value.response.status_code


def test_token_accepted_as_user_and_bad_token_rejected(make_server):
    tokens = {"t-alice": "alice"}

    def on_upgrade(server, request):
        user = tokens.get(request.query("token") or "")
        if user:
            request.accept(user)
        else:
            request.reject(403)

    opened = Recorder()
    server = make_server(on_upgrade=on_upgrade, on_open=lambda s, conn, user: opened.add("open", conn, user))
    with websockets.sync.client.connect(url(server, "token=t-alice"), open_timeout=5) as client:
        wait_until(lambda: opened.of("open"), what="on_open")
        assert opened.of("open")[0][2] == b"alice"
        assert server.publish("alice", "hi") == 1
        assert client.recv(timeout=5) == "hi"
    assert rejected_status(server, "token=wrong") == 403
    assert rejected_status(server) == 403
    assert len(opened.of("open")) == 1


def test_request_accessors_copy_what_the_client_sent(make_server):
    seen = {}

    def on_upgrade(server, request):
        seen.update(
            method=request.method,
            path=request.path,
            query_string=request.query_string,
            token=request.query("token"),
            flag=request.query("flag"),
            absent=request.query("absent"),
            cookie=request.header("cookie"),
            cookie_upper=request.header("COOKIE"),
            cookie_bytes=request.header_bytes("Cookie"),
            no_header=request.header("x-absent"),
            headers=request.headers,
            peer=request.peer,
            ticket=request.ticket,
        )
        request.accept("bob")

    opened = Recorder()
    server = make_server(on_upgrade=on_upgrade, on_open=lambda s, conn, user: opened.add("open", conn))
    with websockets.sync.client.connect(
        url(server, "token=abc%20d&flag"), additional_headers={"Cookie": "session=xyz"}, open_timeout=5
    ):
        wait_until(lambda: opened.of("open"), what="on_open")
    assert seen["method"] == "GET"
    assert seen["path"] == "/ws"
    assert seen["query_string"] == "token=abc%20d&flag"
    assert seen["token"] == "abc%20d"  # as sent, not percent-decoded
    assert seen["flag"] == ""
    assert seen["absent"] is None
    assert seen["cookie"] == seen["cookie_upper"] == "session=xyz"
    assert seen["cookie_bytes"] == b"session=xyz"
    assert seen["no_header"] is None
    assert ("Cookie", "session=xyz") in seen["headers"]
    assert [name.lower() for name, _ in seen["headers"]].count("sec-websocket-key") == 1
    assert seen["peer"].startswith("127.0.0.1:")
    # The ticket becomes the connection's ID.
    assert opened.of("open")[0][1] == seen["ticket"]


def test_no_decision_rejects_401_and_no_on_upgrade_rejects_everything(make_server):
    undecided = make_server(on_upgrade=lambda server, request: None)
    assert rejected_status(undecided, "user=a") == 401
    no_callback = make_server(on_upgrade=None)
    assert rejected_status(no_callback, "user=a") == 401
    assert no_callback.stats().rejected_total == 1


def test_exception_in_on_upgrade_answers_500_and_is_logged(make_server, caplog):
    def on_upgrade(server, request):
        if request.query("user") == "boom":
            raise RuntimeError("auth backend down")
        request.accept(request.query("user"))

    server = make_server(on_upgrade=on_upgrade)
    with caplog.at_level(logging.ERROR, logger="wspush"):
        assert rejected_status(server, "user=boom") == 500
    assert any("on_upgrade" in record.getMessage() and record.exc_info for record in caplog.records)
    assert "auth backend down" in caplog.text
    # The engine carries on: the next client gets in.
    with connect(server, "fine") as client:
        wait_until(lambda: server.stats().connections == 1, what="open")
        server.publish("fine", "still up")
        assert client.recv(timeout=5) == "still up"


def test_deferred_accept_from_a_thread_pool(make_server):
    pool = ThreadPoolExecutor(max_workers=2)
    decided_on = []

    def slow_auth(server, ticket, token):
        threading.Event().wait(0.05)  # a database lookup
        decided_on.append(threading.current_thread().name)
        server.accept_upgrade(ticket, f"user-{token}")

    def on_upgrade(server, request):
        ticket = request.defer()
        assert ticket == request.ticket
        pool.submit(slow_auth, server, ticket, request.query("token"))

    server = make_server(on_upgrade=on_upgrade)
    try:
        with websockets.sync.client.connect(url(server, "token=7"), open_timeout=5) as client:
            wait_until(lambda: server.stats().connections == 1, what="open")
            assert server.publish("user-7", b"\x00\x01") == 1
            assert client.recv(timeout=5) == b"\x00\x01"
        assert decided_on and decided_on[0].startswith("ThreadPoolExecutor")
    finally:
        pool.shutdown()


def test_deferred_reject_from_another_thread(make_server):
    def on_upgrade(server, request):
        ticket = request.defer()
        threading.Timer(0.05, server.reject_upgrade, args=(ticket, 403)).start()

    server = make_server(on_upgrade=on_upgrade)
    assert rejected_status(server, "token=x") == 403
    wait_until(lambda: server.stats().rejected_total == 1, what="rejected_total")
    assert server.stats().connections == 0


def test_deferred_decision_on_an_asyncio_loop(make_server):
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()

    async def authenticate(server, ticket, token):
        await asyncio.sleep(0.02)  # an async auth client
        if token == "good":
            server.accept_upgrade(ticket, "carol")
        else:
            server.reject_upgrade(ticket, 401)

    def on_upgrade(server, request):
        asyncio.run_coroutine_threadsafe(authenticate(server, request.defer(), request.query("token")), loop)

    try:
        server = make_server(on_upgrade=on_upgrade)
        with websockets.sync.client.connect(url(server, "token=good"), open_timeout=5) as client:
            wait_until(lambda: server.stats().connections == 1, what="open")
            server.publish("carol", "async ok")
            assert client.recv(timeout=5) == "async ok"
        assert rejected_status(server, "token=bad") == 401
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(5)
        loop.close()


def test_stale_ticket_is_not_found_and_undecided_deferral_times_out(make_server):
    tickets = []

    def on_upgrade(server, request):
        tickets.append(request.defer())  # never decided

    server = make_server(on_upgrade=on_upgrade, handshake_timeout_ms=200)
    with pytest.raises((websockets.exceptions.InvalidHandshake, EOFError, OSError, TimeoutError)):
        with websockets.sync.client.connect(url(server, "token=x"), open_timeout=5):
            pass
    wait_until(lambda: server.stats().timeouts_total == 1, what="handshake timeout")
    with pytest.raises(wspush.NotFoundError) as info:
        server.accept_upgrade(tickets[0], "late")
    assert info.value.code == wspush.Result.NOT_FOUND
    with pytest.raises(wspush.NotFoundError):
        server.reject_upgrade(12345, 403)


def test_request_cannot_be_used_after_its_callback(make_server):
    kept = []

    def on_upgrade(server, request):
        kept.append(request)
        request.accept("dave")

    server = make_server(on_upgrade=on_upgrade)
    with connect(server, "dave"):
        wait_until(lambda: server.stats().connections == 1, what="open")
    with pytest.raises(wspush.InvalidArgumentError, match="only inside its callback"):
        kept[0].accept("eve")
    with pytest.raises(wspush.WspushError):
        _ = kept[0].path


def test_invalid_decisions_raise_inside_the_callback(make_server):
    errors = {}

    def on_upgrade(server, request):
        for name, call in [
            ("empty_user", lambda: request.accept("")),
            ("long_user", lambda: request.accept("x" * 256)),
            ("nul_user", lambda: request.accept("ali\x00ce")),
            ("status", lambda: request.reject(200)),
            ("respond", lambda: request.respond(200, "no")),
        ]:
            try:
                call()
            except wspush.WspushError as error:
                errors[name] = error
        request.accept("x" * 255)  # the longest valid user ID

    server = make_server(on_upgrade=on_upgrade)
    with connect(server, "whatever") as client:
        wait_until(lambda: server.stats().connections == 1, what="open")
        assert server.publish("x" * 255, "longest") == 1
        assert client.recv(timeout=5) == "longest"
    assert isinstance(errors["empty_user"], wspush.InvalidUserIdError)
    assert isinstance(errors["long_user"], wspush.InvalidUserIdError)
    assert isinstance(errors["nul_user"], wspush.InvalidUserIdError)
    assert isinstance(errors["status"], wspush.InvalidStatusError)
    assert isinstance(errors["respond"], wspush.InvalidArgumentError)  # respond is for on_http
