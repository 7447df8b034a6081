"""publish / broadcast / send / close / disconnect_user, as real clients see them."""

from __future__ import annotations

import threading

import pytest
import websockets.exceptions

import wspush
from conftest import Recorder, connect, wait_until


def test_every_tab_of_a_user_gets_a_message_and_other_users_none(make_server):
    server = make_server()
    with connect(server, "alice") as tab1, connect(server, "alice") as tab2, connect(server, "bob") as other:
        wait_until(lambda: server.stats().connections == 3, what="three opens")
        assert server.publish("alice", "new mail") == 2
        assert tab1.recv(timeout=5) == "new mail"
        assert tab2.recv(timeout=5) == "new mail"
        with pytest.raises(TimeoutError):
            other.recv(timeout=0.2)
        assert server.publish(b"nobody", "lost") == 0
        # bob's first message is his own: nothing for alice leaked into his connection.
        assert server.publish("bob", "for bob") == 1
        assert other.recv(timeout=5) == "for bob"


def test_str_is_text_and_bytes_is_binary_both_ways(make_server):
    received = Recorder()
    server = make_server(on_message=lambda s, conn, user, data: received.add("message", user, data))
    with connect(server, "alice") as client:
        wait_until(lambda: server.stats().connections == 1, what="open")
        server.publish("alice", "héllo")
        server.publish("alice", b"\x00\xffbin")
        server.publish("alice", bytearray(b"ba"))
        server.publish(b"alice", memoryview(b"mv"))
        server.publish("alice", "")
        assert client.recv(timeout=5) == "héllo"
        assert client.recv(timeout=5) == b"\x00\xffbin"
        assert client.recv(timeout=5) == b"ba"
        assert client.recv(timeout=5) == b"mv"
        assert client.recv(timeout=5) == ""
        client.send("text ✓")
        client.send(b"\x00raw\x00")
        wait_until(lambda: len(received.of("message")) == 2, what="two messages")
    assert received.of("message") == [("message", b"alice", "text ✓"), ("message", b"alice", b"\x00raw\x00")]
    with pytest.raises(TypeError):
        server.publish("alice", 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        server.publish(7, "x")  # type: ignore[arg-type]


def test_eight_python_threads_publishing_at_once_each_message_exactly_once_in_order(make_server):
    threads_count, per_thread = 8, 1000
    server = make_server()
    with connect(server, "alice", max_size=None) as client:
        wait_until(lambda: server.stats().connections == 1, what="open")
        start = threading.Barrier(threads_count)
        failures = []

        def publisher(index):
            start.wait()
            try:
                for sequence in range(per_thread):
                    assert server.publish("alice", f"{index}:{sequence}") == 1
            except BaseException as error:  # reported by the main thread
                failures.append(error)

        workers = [threading.Thread(target=publisher, args=(index,)) for index in range(threads_count)]
        for worker in workers:
            worker.start()
        last_seen = [-1] * threads_count
        for _ in range(threads_count * per_thread):
            index, sequence = map(int, client.recv(timeout=10).split(":"))
            # Per publishing thread, messages arrive in order, none twice, none skipped.
            assert sequence == last_seen[index] + 1, (index, sequence, last_seen[index])
            last_seen[index] = sequence
        for worker in workers:
            worker.join()
        assert not failures
        assert last_seen == [per_thread - 1] * threads_count
        with pytest.raises(TimeoutError):
            client.recv(timeout=0.1)
    assert server.stats().publishes_total == threads_count * per_thread


def test_publish_from_inside_on_message(make_server):
    def echo_to_all_tabs(server, conn, user, data):
        server.publish(user, f"echo:{data}")

    server = make_server(on_message=echo_to_all_tabs)
    with connect(server, "alice") as sender, connect(server, "alice") as other_tab:
        wait_until(lambda: server.stats().connections == 2, what="two opens")
        sender.send("ping")
        assert sender.recv(timeout=5) == "echo:ping"
        assert other_tab.recv(timeout=5) == "echo:ping"


def test_broadcast_send_to_one_connection_and_not_found(make_server):
    opened = Recorder()
    server = make_server(on_open=lambda s, conn, user: opened.add("open", conn, user))
    with connect(server, "alice") as alice, connect(server, "bob") as bob:
        wait_until(lambda: len(opened.of("open")) == 2, what="two opens")
        assert server.broadcast("to all") == 2
        assert alice.recv(timeout=5) == "to all" and bob.recv(timeout=5) == "to all"
        bob_conn = next(conn for _, conn, user in opened.of("open") if user == b"bob")
        server.send(bob_conn, b"only bob")
        assert bob.recv(timeout=5) == b"only bob"
        with pytest.raises(TimeoutError):
            alice.recv(timeout=0.2)
        with pytest.raises(wspush.NotFoundError) as info:
            server.send(bob_conn + 1_000_000, "nobody")
        assert info.value.code == wspush.Result.NOT_FOUND
        assert "WSPUSH_RESULT_NOT_FOUND" in str(info.value)
    assert server.stats().broadcasts_total == 1


def test_close_one_connection_and_disconnect_a_user(make_server):
    opened, closed = Recorder(), Recorder()
    server = make_server(
        on_open=lambda s, conn, user: opened.add("open", conn, user),
        on_close=lambda s, conn, user, code: closed.add("close", conn, user, code),
    )
    with connect(server, "alice") as alice, connect(server, "bob") as bob1, connect(server, "bob") as bob2:
        wait_until(lambda: len(opened.of("open")) == 3, what="three opens")
        alice_conn = next(conn for _, conn, user in opened.of("open") if user == b"alice")
        server.close(alice_conn, 4000, "bye alice")
        with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
            alice.recv(timeout=5)
        assert info.value.rcvd.code == 4000 and info.value.rcvd.reason == "bye alice"
        assert server.disconnect_user("bob", 4001) == 2
        for bob in (bob1, bob2):
            with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
                bob.recv(timeout=5)
            assert info.value.rcvd.code == 4001
        wait_until(lambda: len(closed.of("close")) == 3, what="three on_close")
    codes = sorted((user, code) for _, _, user, code in closed.of("close"))
    assert codes == [(b"alice", 4000), (b"bob", 4001), (b"bob", 4001)]
    assert server.disconnect_user("bob") == 0
    with pytest.raises(wspush.NotFoundError):
        server.close(alice_conn)
    with pytest.raises(wspush.InvalidCloseCodeError):
        server.close(alice_conn, 1005)
    with pytest.raises(wspush.InvalidCloseReasonError):
        server.close(alice_conn, 1000, "r" * 124)
    with pytest.raises(wspush.InvalidCloseCodeError):
        server.disconnect_user("bob", 999)


def test_integers_are_range_checked_not_truncated(make_server):
    # ctypes would silently wrap these onto valid values (65536 + 4000 -> 4000).
    opened = Recorder()
    server = make_server(on_open=lambda s, conn, user: opened.add("open", conn))
    with connect(server, "alice") as client:
        wait_until(lambda: opened.of("open"), what="open")
        conn = opened.of("open")[0][1]
        with pytest.raises(wspush.InvalidCloseCodeError):
            server.close(conn, 65536 + 4000)
        with pytest.raises(wspush.InvalidCloseCodeError):
            server.disconnect_user("alice", 65536 + 4000)
        with pytest.raises(wspush.NotFoundError):
            server.send(conn + 2**64, "wrapped")
        with pytest.raises(wspush.InvalidStatusError):
            server.reject_upgrade(conn, 65536 + 403)
        server.publish("alice", "still open")
        assert client.recv(timeout=5) == "still open"


def test_invalid_user_ids_and_oversized_messages(make_server):
    server = make_server(max_queue_bytes=1024)
    for bad in ("", "x" * 256, b"", "ali\x00ce", b"\x00"):
        with pytest.raises(wspush.InvalidUserIdError) as info:
            server.publish(bad, "x")
        assert info.value.code == wspush.Result.INVALID_USER_ID
        assert isinstance(info.value, ValueError)
    with pytest.raises(wspush.MessageTooLargeError):
        server.publish("alice", b"x" * 1025)
    with pytest.raises(wspush.MessageTooLargeError):
        server.broadcast(b"x" * 1025)
    assert server.publish("alice", b"x" * 1024) == 0
