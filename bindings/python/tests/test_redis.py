"""Publishing with an outcome (publish_wait, publish_async) and Redis scale-out through the binding:
without Redis, with a Redis that cannot be reached, and with a real redis-server shared by two
servers ("nodes") in this process, which is then killed."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from typing import Iterator, List, Optional, Union

import pytest

import wspush
from wspush import _errors, _server
from conftest import connect, wait_until

Outcome = Union[wspush.Published, wspush.WspushError]


class Outcomes:
    """What a publish_async ``done`` received, with the thread it ran on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: List[Outcome] = []
        self.threads: List[int] = []
        self.called = threading.Event()

    def __call__(self, outcome: Outcome) -> None:
        with self.lock:
            self.calls.append(outcome)
            self.threads.append(threading.get_ident())
        self.called.set()

    def wait_one(self, timeout: float) -> Outcome:
        assert self.called.wait(timeout), f"done not called within {timeout} s"
        with self.lock:
            assert len(self.calls) == 1, self.calls
            return self.calls[0]


# --- every result code is known -------------------------------------------------------------


def test_every_result_code_of_the_library_has_a_name_and_an_exception():
    codes = [int(code) for code in wspush.Result]
    assert codes == list(range(len(codes))), "contiguous from OK = 0"
    assert wspush.Result.UNAVAILABLE == 16
    for code in codes[1:]:
        assert wspush.result_str(code) != "unknown result code", code
        cls = _errors._ERROR_CLASSES[code]
        assert cls is not wspush.WspushError and issubclass(cls, wspush.WspushError)
        assert type(_errors.error_for(code)) is cls
    # The library knows no code past the last one named here.
    assert wspush.result_str(codes[-1] + 1) == "unknown result code"
    error = _errors.error_for(16, "publish_wait")
    assert isinstance(error, wspush.UnavailableError) and error.code == wspush.Result.UNAVAILABLE
    assert "WSPUSH_RESULT_UNAVAILABLE" in str(error) and str(error).startswith("publish_wait: ")
    assert wspush.UnavailableError.__module__ == "wspush"


# --- without Redis ---------------------------------------------------------------------------


def test_publish_wait_without_redis_is_publish_with_offset(make_server):
    server = make_server(history_max_messages=10)
    assert server.publish_wait("alice", "a", timeout=1) == wspush.Published(delivered=0, offset=1)
    with connect(server, "alice") as client:
        wait_until(lambda: server.stats().connections == 1, what="open")
        assert server.publish_wait("alice", b"\x00b", timeout=0) == wspush.Published(delivered=1, offset=2)
        assert client.recv(timeout=5) == b"\x00b"
        assert server.publish_wait(b"alice", "c") == wspush.Published(delivered=1, offset=3)
        assert client.recv(timeout=5) == "c"
    assert server.publish_with_offset("alice", "d").offset == 4, "one stream for all three calls"

    off = make_server()
    assert off.publish_wait("alice", "x", timeout=0.5) == wspush.Published(delivered=0, offset=None)

    for bad in (-1, float("nan"), "1", True):
        with pytest.raises(wspush.InvalidArgumentError):
            server.publish_wait("alice", "x", timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(wspush.InvalidUserIdError):
        server.publish_wait("", "x", timeout=1)
    with pytest.raises(TypeError):
        server.publish_wait("alice", 42, timeout=1)  # type: ignore[arg-type]
    assert server.publish_with_offset("alice", "e").offset == 5, "refused calls took no offset"
    server.free()
    with pytest.raises(wspush.StoppedError):
        server.publish_wait("alice", "late", timeout=1)


def test_publish_async_without_redis_calls_done_once_on_the_caller_before_returning(make_server):
    server = make_server(history_max_messages=10)
    pending_before = len(_server._pending_publishes)
    done = Outcomes()
    assert server.publish_async("alice", "a", done) is None
    assert done.called.is_set(), "called before publish_async returned"
    assert done.calls == [wspush.Published(delivered=0, offset=1)]
    assert done.threads == [threading.get_ident()]

    with connect(server, "alice") as client:
        wait_until(lambda: server.stats().connections == 1, what="open")
        done = Outcomes()
        server.publish_async("alice", b"\x01bin", done)
        assert done.calls == [wspush.Published(delivered=1, offset=2)]
        assert client.recv(timeout=5) == b"\x01bin"

    # History off: no offset.
    off = make_server()
    done = Outcomes()
    off.publish_async("bob", "x", done)
    assert done.calls == [wspush.Published(delivered=0, offset=None)]

    # Refused at once: raised here, done never called.
    done = Outcomes()
    with pytest.raises(wspush.InvalidUserIdError):
        server.publish_async("a\0b", "x", done)
    with pytest.raises(wspush.MessageTooLargeError):
        make_server(max_queue_bytes=1024).publish_async("alice", b"x" * 2048, done)
    with pytest.raises(TypeError):
        server.publish_async("alice", "x", None)  # type: ignore[arg-type]
    assert done.calls == []
    assert len(_server._pending_publishes) == pending_before, "every token was given back"

    server.free()
    with pytest.raises(wspush.StoppedError):
        server.publish_async("alice", "late", done)
    assert done.calls == [] and len(_server._pending_publishes) == pending_before


def test_an_exception_in_done_is_logged_not_raised_and_free_is_refused_inside_done(make_server, caplog):
    server = make_server(history_max_messages=10)
    seen: List[object] = []

    def raising(outcome: Outcome) -> None:
        seen.append(outcome)
        raise RuntimeError("done went wrong")

    with caplog.at_level(logging.ERROR, logger="wspush"):
        server.publish_async("alice", "a", raising)  # does not raise
    assert seen == [wspush.Published(delivered=0, offset=1)]
    assert any("done callback raised" in record.getMessage() for record in caplog.records)
    assert any("done went wrong" in (record.exc_text or "") for record in caplog.records)

    inside: List[object] = []

    def frees(outcome: Outcome) -> None:
        try:
            server.free()
        except wspush.WspushError as error:
            inside.append(error)
        inside.append(server.publish_with_offset("alice", "from done").offset)

    server.publish_async("alice", "b", frees)
    assert isinstance(inside[0], wspush.InCallbackError), inside
    assert inside[1:] == [3], "the server stays usable inside done"
    assert server.publish_with_offset("alice", "after").offset == 4


# --- a Redis that cannot be reached ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_redis_settings_are_checked(make_server):
    with pytest.raises(wspush.InvalidArgumentError):
        make_server(redis_url="http://127.0.0.1:6379")
    with pytest.raises(wspush.InvalidArgumentError):
        make_server(redis_url=f"redis://127.0.0.1:{free_port()}", redis_timeout_ms=5)
    with pytest.raises(wspush.InvalidArgumentError):
        make_server(redis_timeout_ms=-1)
    with pytest.raises(TypeError):
        make_server(redis_url=b"redis://127.0.0.1:6379")  # type: ignore[arg-type]
    # "" is off, as the C API's length 0: a plain single-node server.
    server = make_server(redis_url="", history_max_messages=5)
    assert server.publish_wait("alice", "x", timeout=1) == wspush.Published(delivered=0, offset=1)


def test_an_unreachable_redis_makes_publishes_unavailable_within_the_timeout(make_server):
    # Nothing listens there: every connect is refused.
    server = make_server(redis_url=f"redis://127.0.0.1:{free_port()}", redis_timeout_ms=300, history_max_messages=10)
    assert server.publish("alice", "queued") == 0, "with Redis, publish only queues"
    started = time.monotonic()
    with pytest.raises(wspush.UnavailableError):
        server.publish_wait("alice", "x", timeout=5)
    assert time.monotonic() - started < 0.3 + 1.0
    # Once Redis has been down longer than the timeout, publishes fail at once.
    started = time.monotonic()
    with pytest.raises(wspush.UnavailableError):
        server.publish_wait("alice", "x", timeout=5)
    assert time.monotonic() - started < 0.3 + 1.0
    pending_before = len(_server._pending_publishes)
    done = Outcomes()
    with pytest.raises(wspush.UnavailableError):
        server.publish_async("alice", "x", done)
    assert done.calls == [] and len(_server._pending_publishes) == pending_before
    started = time.monotonic()
    server.free()
    assert time.monotonic() - started < 3, "stopping does not wait for Redis"


# --- a real redis-server, two nodes ----------------------------------------------------------


def _resp(*args: Union[str, bytes]) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _read_reply(reader) -> object:
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError(f"short reply from Redis: {line!r}")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(f"Redis error: {rest.decode()}")
    if kind == b":":
        return int(rest)
    if kind == b"$":
        length = int(rest)
        if length < 0:
            return None
        data = reader.read(length + 2)
        return data[:-2]
    if kind == b"*":
        return [_read_reply(reader) for _ in range(int(rest))]
    raise ConnectionError(f"unexpected reply from Redis: {line!r}")


def redis_command(port: int, *args: Union[str, bytes]) -> object:
    """One command on a fresh connection (a minimal RESP client: the tests need no redis package)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(_resp(*args))
        with sock.makefile("rb") as reader:
            return _read_reply(reader)


class RedisServer:
    def __init__(self, process: subprocess.Popen, port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"redis://127.0.0.1:{port}"

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=5)


def _start_redis(executable: str, directory: str) -> Optional[RedisServer]:
    port = free_port()
    process = subprocess.Popen(
        [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", directory],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return None  # e.g. the port was taken meanwhile: try another
        try:
            if redis_command(port, "PING") == "PONG":
                return RedisServer(process, port)
        except (OSError, RuntimeError):
            pass
        time.sleep(0.02)
    process.kill()
    process.wait(timeout=5)
    return None


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    """A throwaway redis-server on a free port (no persistence). Skipped when redis-server is not
    on PATH, unless WSPUSH_REQUIRE_REDIS=1, which makes that a failure."""
    executable = shutil.which("redis-server")
    if executable is None:
        if os.environ.get("WSPUSH_REQUIRE_REDIS") == "1":
            pytest.fail("WSPUSH_REQUIRE_REDIS=1 but redis-server is not on PATH")
        pytest.skip("redis-server is not on PATH (WSPUSH_REQUIRE_REDIS=1 makes this a failure)")
    redis = None
    for _ in range(3):
        redis = _start_redis(executable, str(tmp_path))
        if redis is not None:
            break
    if redis is None:
        pytest.fail("redis-server did not start (3 attempts)")
    try:
        yield redis
    finally:
        if redis.process.poll() is None:
            redis.kill()


def wait_subscribed(redis: RedisServer, user: str, nodes: int) -> None:
    """Until `nodes` nodes subscribe to the user's sharded channel (src/redis/keys.rs names it
    wspush:{u:USER}:c). Watched in Redis rather than by publishing: a probe would take offsets."""
    channel = f"wspush:{{u:{user}}}:c"

    def subscribed() -> bool:
        reply = redis_command(redis.port, "PUBSUB", "SHARDNUMSUB", channel)
        assert isinstance(reply, list) and reply[0] == channel.encode(), reply
        return reply[1] == nodes

    wait_until(subscribed, timeout=3, what=f"{nodes} node(s) subscribed to {channel}")


def test_two_nodes_share_a_user_through_redis_until_redis_dies(make_server, redis_server):
    timeout_ms = 500
    options = dict(redis_url=redis_server.url, redis_timeout_ms=timeout_ms, history_max_messages=100)
    node_a = make_server(**options)
    node_b = make_server(**options)

    with connect(node_b, "alice") as client:
        assert client.subprotocol is None, "a raw client: plain frames"
        wait_subscribed(redis_server, "alice", nodes=1)

        # Published on A, delivered by B, counted in nodes, numbered by Redis.
        assert node_a.publish_wait("alice", "hello from A", timeout=2) == wspush.Published(delivered=1, offset=1)
        assert client.recv(timeout=5) == "hello from A"
        assert node_b.publish_wait("alice", b"\x00from B\xff", timeout=2) == wspush.Published(delivered=1, offset=2)
        assert client.recv(timeout=5) == b"\x00from B\xff"
        # Nobody holds bob: no node, but an offset all the same.
        assert node_b.publish_wait("bob", "away", timeout=2) == wspush.Published(delivered=0, offset=1)

        done = Outcomes()
        assert node_a.publish_async("alice", "async from A", done) is None
        assert done.wait_one(timeout=2) == wspush.Published(delivered=1, offset=3)
        assert done.threads != [threading.get_ident()], "with Redis, done runs on the engine's Redis thread"
        assert client.recv(timeout=5) == "async from A"

        # Plain publish only queues (0), and the message still arrives, numbered.
        assert node_a.publish("alice", "queued") == 0
        assert client.recv(timeout=5) == "queued"
        assert node_a.publish_wait("alice", "next", timeout=2) == wspush.Published(delivered=1, offset=5)
        assert client.recv(timeout=5) == "next"

        # A second connection on A: two nodes hold alice now.
        with connect(node_a, "alice") as second:
            wait_subscribed(redis_server, "alice", nodes=2)
            assert node_b.publish_wait("alice", "both", timeout=2) == wspush.Published(delivered=2, offset=6)
            assert second.recv(timeout=5) == "both"
            assert client.recv(timeout=5) == "both"

        redis_server.kill()

        # At once, before the node can know Redis is gone for good: the publish is accepted and
        # done reports UNAVAILABLE once the Redis timeout has passed.
        lost = Outcomes()
        started = time.monotonic()
        node_a.publish_async("alice", "lost (async)", lost)
        with pytest.raises(wspush.UnavailableError) as info:
            node_a.publish_wait("alice", "lost (wait)", timeout=5)
        assert info.value.code == wspush.Result.UNAVAILABLE
        assert time.monotonic() - started < timeout_ms / 1000 + 1.0
        outcome = lost.wait_one(timeout=timeout_ms / 1000 + 1.0)
        assert isinstance(outcome, wspush.UnavailableError), outcome
        assert time.monotonic() - started < timeout_ms / 1000 + 1.0

        # Down for longer than the timeout: refused at once, done never called (publishes
        # accepted meanwhile still get their UNAVAILABLE).
        refused = None
        accepted: List[Outcomes] = []
        deadline = time.monotonic() + 3
        while refused is None and time.monotonic() < deadline:
            attempt = Outcomes()
            try:
                node_a.publish_async("alice", "refused", attempt)
                accepted.append(attempt)
                time.sleep(0.05)
            except wspush.UnavailableError as error:
                refused = (error, attempt)
        assert refused is not None, "publish_async was never refused at once while Redis was down"
        assert refused[1].calls == []
        for attempt in accepted:
            assert isinstance(attempt.wait_one(timeout=timeout_ms / 1000 + 1.0), wspush.UnavailableError)
        started = time.monotonic()
        with pytest.raises(wspush.UnavailableError):
            node_b.publish_wait("alice", "refused", timeout=5)
        assert time.monotonic() - started < timeout_ms / 1000 + 1.0

        # Each done ran exactly once.
        time.sleep(0.2)
        assert len(lost.calls) == 1 and all(len(attempt.calls) == 1 for attempt in accepted)
        with pytest.raises(TimeoutError):
            client.recv(timeout=0.2)  # nothing published after the kill arrived

    started = time.monotonic()
    node_a.free()
    node_b.free()
    assert time.monotonic() - started < 5, "stopping does not wait for the dead Redis"


def test_a_completion_on_the_redis_thread_may_use_the_server_but_not_wait_or_free(make_server, redis_server):
    server = make_server(redis_url=redis_server.url, history_max_messages=10)
    inside: dict = {}
    finished = threading.Event()

    def done(outcome: Outcome) -> None:
        inside["outcome"] = outcome
        for name, call in (
            ("publish_wait", lambda: server.publish_wait("alice", "b", timeout=1)),
            ("free", server.free),
            ("publish_async", lambda: server.publish_async("alice", "c", lambda _: None)),
            ("stop", server.stop),  # only starts the stop on this thread
        ):
            try:
                inside[name] = call()
            except wspush.WspushError as error:
                inside[name] = error
        finished.set()

    server.publish_async("alice", "a", done)
    assert finished.wait(5), "done not called"
    assert inside["outcome"] == wspush.Published(delivered=0, offset=1)
    assert isinstance(inside["publish_wait"], wspush.InCallbackError), inside
    assert isinstance(inside["free"], wspush.InCallbackError), inside
    assert inside["publish_async"] is None and inside["stop"] is None, inside
    wait_until(lambda: _raises_stopped(server), timeout=5, what="the stop started in done to take effect")
    started = time.monotonic()
    server.free()
    assert time.monotonic() - started < 5


def _raises_stopped(server: wspush.Server) -> bool:
    try:
        server.publish("alice", "probe")
    except wspush.StoppedError:
        return True
    return False
