"""examples/python_host.py as a user runs it: token auth, stdin publishing, clean stops."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import websockets.exceptions
import websockets.sync.client

from conftest import http_request

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "python_host.py"


class Host:
    """The example in a subprocess, its stdout lines readable with a timeout."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--listen", "127.0.0.1:0", "--token", "t-alice=alice"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            # Ctrl-C as a user's terminal delivers it: a runner that started us in the
            # background hands down SIGINT ignored, and Python then never raises
            # KeyboardInterrupt (it only installs its handler over the default disposition).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.lines: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.port = int(re.search(r":(\d+)/ws$", self.expect("listening on")).group(1))

    def _pump(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, fragment: str, timeout: float = 10) -> str:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"the example never printed {fragment!r}") from None
            if fragment in line:
                return line

    def send(self, text: str) -> None:
        self.process.stdin.write(text)
        self.process.stdin.flush()

    def url(self, query: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws?{query}"


@pytest.fixture
def host():
    running = Host()
    yield running
    if running.process.poll() is None:
        running.process.kill()
    running.process.wait(10)


def test_token_auth_stdin_publish_health_and_eof_stop(host):
    with pytest.raises(websockets.exceptions.InvalidStatus) as info:
        with websockets.sync.client.connect(host.url("token=wrong"), open_timeout=5):
            pass
    assert info.value.response.status_code == 401
    host.expect("rejected 127.0.0.1")
    with websockets.sync.client.connect(host.url("token=t-alice"), open_timeout=5) as client:
        host.expect("connected    alice")
        host.send("alice\thello from stdin\n")
        assert client.recv(timeout=5) == "hello from stdin"
        host.expect("published to alice: 1 connection(s)")
        host.send("*\tto everyone\n")
        assert client.recv(timeout=5) == "to everyone"
        client.send("hi server")
        host.expect("from alice: 'hi server'")
        health = http_request(host.port, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert json.loads(health.split("\r\n\r\n", 1)[1])["connections"] == 1
        host.process.stdin.close()  # EOF stops the host
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            client.recv(timeout=5)
        assert closed.value.rcvd.code == 1001
    host.expect("disconnected alice")
    host.expect("stopped")
    assert host.process.wait(10) == 0


def test_ctrl_c_stops_cleanly(host):
    with websockets.sync.client.connect(
        host.url("token=t-alice"), open_timeout=5
    ) as client:
        host.expect("connected    alice")
        host.process.send_signal(signal.SIGINT)
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            client.recv(timeout=5)
        assert closed.value.rcvd.code == 1001
    line = host.expect("disconnected alice")
    assert "code 1001" in line
    host.expect("stopped")
    assert host.process.wait(10) == 0
