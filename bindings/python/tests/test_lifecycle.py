"""stop / free / context manager / garbage collection, and callbacks that raise."""

from __future__ import annotations

import contextlib
import gc
import logging
import socket
import threading

import pytest
import websockets.exceptions

import wspush
from conftest import FAST, Recorder, accept_token, connect, wait_until


def assert_port_free(port):
    """Nothing listens on ``port`` any more (SO_REUSEADDR: the closed connections' TIME_WAIT
    entries don't count, a live listener does)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
        probe.listen()


def test_stop_with_connections_open_sends_1001_and_fires_on_close_for_each(make_server):
    closed = Recorder()
    server = make_server(on_close=lambda s, conn, user, code: closed.add("close", user, code))
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(connect(server, user)) for user in ("alice", "alice", "bob")]
        wait_until(lambda: server.stats().connections == 3, what="three opens")
        server.stop()
        # stop() returns after the drain: every on_close has run by then.
        assert sorted(closed.of("close")) == [
            ("close", b"alice", 1001),
            ("close", b"alice", 1001),
            ("close", b"bob", 1001),
        ]
        for client in clients:
            with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
                client.recv(timeout=5)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        stats = server.stats()  # still readable after stop
        assert stats.connections == 0 and stats.upgrades_total == 3
        with pytest.raises(wspush.StoppedError) as info:
            server.publish("alice", "late")
        assert info.value.code == wspush.Result.STOPPED
        server.stop()  # harmless again


def test_context_manager_frees_and_later_calls_raise_stopped():
    closed = Recorder()
    with wspush.Server(
        on_upgrade=accept_token, on_close=lambda s, conn, user, code: closed.add("close", code), **FAST
    ) as server, connect(server, "alice") as client:
        port = server.port
        assert port > 0
        wait_until(lambda: server.stats().connections == 1, what="open")
        server.free()  # what leaving the block does (twice is harmless)
        assert closed.of("close") == [("close", 1001)]
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            client.recv(timeout=5)
    for call in (
        lambda: server.publish("alice", "x"),
        lambda: server.broadcast("x"),
        lambda: server.send(1, "x"),
        lambda: server.close(1),
        lambda: server.disconnect_user("alice"),
        lambda: server.accept_upgrade(1, "alice"),
        lambda: server.reject_upgrade(1, 403),
        server.stats,
    ):
        with pytest.raises(wspush.StoppedError):
            call()
    server.stop()  # no-ops after free
    server.free()
    assert_port_free(port)


def test_exceptions_in_callbacks_are_logged_and_the_engine_keeps_running(make_server, caplog):
    closes = Recorder()

    def on_open(server, conn, user):
        raise ValueError("open failed")

    def on_message(server, conn, user, data):
        if data == "crash":
            raise KeyError("message failed")
        server.publish(user, f"ok:{data}")

    def on_close(server, conn, user, code):
        closes.add("close", code)
        raise RuntimeError("close failed")

    server = make_server(on_open=on_open, on_message=on_message, on_close=on_close)
    with caplog.at_level(logging.ERROR, logger="wspush"):
        with connect(server, "alice") as client:
            client.send("crash")
            client.send("after")
            assert client.recv(timeout=5) == "ok:after"
        wait_until(lambda: closes.of("close"), what="on_close")
        with connect(server, "bob") as client:
            client.send("still")
            assert client.recv(timeout=5) == "ok:still"
        wait_until(lambda: len(closes.of("close")) == 2, what="second on_close")
    text = caplog.text
    for expected in ("on_open", "open failed", "on_message", "message failed", "on_close", "close failed"):
        assert expected in text
    assert all(record.name == "wspush" for record in caplog.records)
    assert server.stats().upgrades_total == 2


def test_stop_inside_a_callback_only_starts_it_and_free_there_is_refused(make_server):
    outcome = {}
    done = threading.Event()

    def on_message(server, conn, user, data):
        try:
            server.free()
        except wspush.InCallbackError as error:
            outcome["free"] = error
        server.stop()  # must not deadlock: the I/O thread cannot wait for itself
        outcome["stopped_inside"] = True
        done.set()

    server = make_server(on_message=on_message)
    with connect(server, "alice") as client:
        client.send("stop please")
        assert done.wait(5)
        with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
            client.recv(timeout=5)
        assert info.value.rcvd.code == 1001
    assert isinstance(outcome["free"], wspush.InCallbackError)
    assert outcome["free"].code == wspush.Result.IN_CALLBACK
    server.free()  # from this thread it completes


def test_free_waits_for_other_threads_still_publishing(make_server):
    server = make_server()
    stop = threading.Event()
    outcomes = Recorder()

    def publisher():
        while not stop.is_set():
            try:
                server.publish("alice", "x")
            except wspush.StoppedError:
                outcomes.add("stopped")
                return

    workers = [threading.Thread(target=publisher) for _ in range(4)]
    for worker in workers:
        worker.start()
    server.free()
    stop.set()
    for worker in workers:
        worker.join(5)
    # Every publisher saw a clean StoppedError, none crashed the process.
    assert len(outcomes.of("stopped")) == 4


def test_a_garbage_collected_server_is_stopped_and_its_port_released():
    closed = Recorder()
    server = wspush.Server(
        on_upgrade=accept_token, on_close=lambda s, conn, user, code: closed.add("close", code), **FAST
    )
    port = server.port
    with connect(server, "alice") as client:
        wait_until(lambda: server.stats().connections == 1, what="open")
        del server
        gc.collect()
        with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
            client.recv(timeout=5)
        assert info.value.rcvd.code == 1001
    # on_close is owed once per on_open, also when the program dropped the server.
    assert closed.of("close") == [("close", 1001)]
    assert_port_free(port)


def test_two_servers_side_by_side_are_independent(make_server):
    first, second = make_server(), make_server()
    assert first.port != second.port
    with connect(first, "alice") as on_first, connect(second, "alice") as on_second:
        wait_until(lambda: first.stats().connections == 1 and second.stats().connections == 1, what="opens")
        assert first.publish("alice", "one") == 1
        assert on_first.recv(timeout=5) == "one"
        with pytest.raises(TimeoutError):
            on_second.recv(timeout=0.2)


def test_last_reference_dropped_inside_a_callback_frees_without_deadlock_or_crash(caplog):
    # The finalizer then runs on the engine's own I/O thread, which cannot wait for itself.
    entered, gate = threading.Event(), threading.Event()

    def on_message(server, conn, user, data):
        entered.set()
        gate.wait(5)  # meanwhile the program drops its reference

    server = wspush.Server(on_upgrade=accept_token, on_message=on_message, **FAST)
    port = server.port
    with connect(server, "alice") as client:
        client.send("hold the server")
        assert entered.wait(5)
        del server
        gc.collect()
        gate.set()  # the callback returns: its argument was the last reference
        with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
            client.recv(timeout=5)
        assert info.value.rcvd.code == 1001
    wait_until(lambda: port_is_free(port), what="the listener to close")
    wait_until(lambda: not [t for t in threading.enumerate() if t.name == "wspush-free"], what="the free")
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR], caplog.text


def port_is_free(port):
    try:
        assert_port_free(port)
        return True
    except OSError:
        return False
