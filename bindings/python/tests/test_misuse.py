"""The binding under misuse: busy threads during free, reused thread idents, abandoned
servers, repeated decisions, deep recursion in callbacks."""

from __future__ import annotations

import gc
import queue
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import wspush
from conftest import FAST, Recorder, accept_token, connect, wait_until


def run_script(source: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs ``source`` in a fresh interpreter (same environment, so it imports the same wspush)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)], capture_output=True, text=True, timeout=timeout
    )


def publish_until(server: wspush.Server, done: threading.Event, failures: "queue.Queue[BaseException]") -> None:
    """Publishes in a tight loop, as a host's worker threads do, until ``done``."""
    while not done.is_set():
        try:
            server.publish("alice", "mail")
        except wspush.StoppedError:
            pass
        except BaseException as error:  # noqa: BLE001 - reported to the test
            failures.put(error)
            return


def test_free_returns_promptly_while_other_threads_keep_calling(make_server):
    server = make_server()
    done = threading.Event()
    failures: "queue.Queue[BaseException]" = queue.Queue()
    workers = [threading.Thread(target=publish_until, args=(server, done, failures)) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(0.1)  # the workers are in their loops
        began = time.monotonic()
        server.free()
        took = time.monotonic() - began
        # A call that starts after free() began fails with StoppedError without registering,
        # so free() waits only for the calls that were already inside the library.
        assert took < 1.5, f"free() took {took:.1f} s with busy publishers"
        time.sleep(0.05)
        with pytest.raises(wspush.StoppedError):
            server.publish("alice", "late")
    finally:
        done.set()
        for worker in workers:
            worker.join()
    assert failures.empty(), failures.get()


def test_interpreter_exits_while_daemon_threads_keep_calling_an_unfreed_server():
    # At exit the server's finalizer frees it while the daemon threads still publish.
    result = run_script(
        """
        import threading, time, wspush
        server = wspush.Server("127.0.0.1:0", threads=1, drain_timeout_ms=200)
        def spin():
            while True:
                try:
                    server.publish("alice", "mail")
                except wspush.StoppedError:
                    pass
        for _ in range(4):
            threading.Thread(target=spin, daemon=True).start()
        time.sleep(0.2)
        print("leaving")
        """,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "leaving" in result.stdout


def test_free_after_stop_from_a_thread_that_inherits_a_finished_engine_threads_ident():
    # glibc reuses a finished thread's stack (and with it the thread ident) for a new thread
    # with the same stack size: the free() thread below gets the ident of the engine thread
    # that ran on_upgrade, which must not make it look like a callback of the server.
    stack = 2 * 1024 * 1024
    previous = threading.stack_size(stack)
    errors = []
    reused = 0
    try:
        for _ in range(5):
            engine_idents = set()

            def on_upgrade(server, request):
                engine_idents.add(threading.get_ident())
                accept_token(server, request)

            server = wspush.Server(**dict(FAST, threads=1, thread_stack_size=stack), on_upgrade=on_upgrade)
            with connect(server, "alice"):
                wait_until(lambda: server.stats().connections == 1, what="open")
            server.stop()  # the engine thread has ended when this returns

            def free_it():
                nonlocal reused
                reused += threading.get_ident() in engine_idents
                try:
                    server.free()
                except BaseException as error:  # noqa: BLE001 - reported to the test
                    errors.append(error)

            freer = threading.Thread(target=free_it)
            freer.start()
            freer.join()
            with pytest.raises(wspush.StoppedError):
                server.publish("alice", "after free")
    finally:
        threading.stack_size(previous)
    assert errors == []
    # Not a condition of the binding, but what makes this test meaningful on glibc.
    assert reused > 0, "no thread ident was reused: the scenario did not happen"


def test_a_server_collected_without_stop_or_free_still_calls_on_close_for_each_open():
    events = Recorder()
    server = wspush.Server(
        on_upgrade=accept_token,
        on_open=lambda s, conn, user: events.add("open", conn),
        on_close=lambda s, conn, user, code: events.add("close", conn, code, type(s).__name__),
        **FAST,
    )
    with connect(server, "alice"), connect(server, "bob"):
        wait_until(lambda: len(events.of("open")) == 2, what="two opens")
        del server
        gc.collect()  # the finalizer stops and frees the server
        opened = sorted(conn for _, conn in events.of("open"))
        closed = sorted(events.of("close"))
        assert closed == [("close", conn, 1001, "Server") for conn in opened]


def test_a_second_decision_on_a_ticket_raises_not_found(make_server):
    tickets: "queue.Queue[int]" = queue.Queue()
    opened = Recorder()
    server = make_server(
        on_upgrade=lambda s, request: tickets.put(request.defer()),
        on_open=lambda s, conn, user: opened.add("open", conn, user),
    )

    def dial_accepted():
        with connect(server):
            pass

    accepted = threading.Thread(target=dial_accepted)
    accepted.start()
    ticket = tickets.get(timeout=5)
    server.accept_upgrade(ticket, "alice")
    with pytest.raises(wspush.NotFoundError):
        server.accept_upgrade(ticket, "mallory")
    with pytest.raises(wspush.NotFoundError):
        server.reject_upgrade(ticket, 403)
    accepted.join()
    assert opened.of("open") == [("open", ticket, b"alice")]

    rejected = queue.Queue()

    def dial_rejected():
        try:
            with connect(server):
                pass
        except BaseException as error:  # noqa: BLE001 - the refusal is the expected outcome
            rejected.put(error)

    refused = threading.Thread(target=dial_rejected)
    refused.start()
    ticket = tickets.get(timeout=5)
    server.reject_upgrade(ticket, 403)
    with pytest.raises(wspush.NotFoundError):
        server.accept_upgrade(ticket, "alice")
    refused.join()
    assert "403" in str(rejected.get(timeout=5))


def test_a_fork_child_leaving_does_not_touch_the_parents_server():
    result = run_script(
        """
        import os, sys, time, wspush
        server = wspush.Server("127.0.0.1:0", threads=1, drain_timeout_ms=200)
        child = os.fork()
        if child == 0:
            sys.exit(0)  # interpreter exit runs the inherited server's finalizer
        _, status = os.waitpid(child, 0)
        print("child exit", os.waitstatus_to_exitcode(status))
        print("parent publish", server.publish("alice", "still mine"))
        server.free()
        """,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "child exit 0" in result.stdout and "parent publish 0" in result.stdout
    assert "panicked" not in result.stderr


# Recursion through C calls (sum(map(...))) uses the thread's C stack at every level: 6,000
# levels overflow a 2 MiB stack and fit in 8 MiB; 20,000 need more than 8 MiB.
DEEP_CALLBACK = """
    import sys, wspush, websockets.sync.client
    sys.setrecursionlimit(1_000_000)
    def depth(n):
        return 0 if n == 0 else 1 + sum(map(depth, (n - 1,)))
    def on_upgrade(server, request):
        request.accept(str(depth({levels})))
    with wspush.Server("127.0.0.1:0", threads=1, on_upgrade=on_upgrade{options}) as server:
        websockets.sync.client.connect(f"ws://127.0.0.1:{{server.port}}/ws", open_timeout=30).close()
        print("opened", server.stats().upgrades_total)
"""


def test_a_callback_gets_the_stack_of_an_ordinary_thread_by_default():
    result = run_script(DEEP_CALLBACK.format(levels=6000, options=""))
    assert result.returncode == 0, f"rc {result.returncode}: {result.stderr[-2000:]}"
    assert "opened 1" in result.stdout


def test_thread_stack_size_gives_callbacks_a_larger_stack():
    result = run_script(DEEP_CALLBACK.format(levels=20000, options=", thread_stack_size=32 * 1024 * 1024"))
    assert result.returncode == 0, f"rc {result.returncode}: {result.stderr[-2000:]}"
    assert "opened 1" in result.stdout


def test_thread_stack_size_below_64_kib_is_refused():
    for value in (64 * 1024 - 1, -1):
        with pytest.raises(wspush.InvalidArgumentError):
            wspush.Server(**dict(FAST, thread_stack_size=value))
