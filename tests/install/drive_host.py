"""Drives an example host (the C example or examples/python_host.py) with a real WebSocket
client, for tests/install.sh: waits for the host's listening line, connects and upgrades with
a token, publishes through the host's stdin ("user<TAB>message"), expects the message on the
socket, sends one to the host and expects it logged, then closes stdin and expects a clean exit
(the client seeing close code 1001).

    python drive_host.py --port-pattern REGEX --query QUERY --user NAME -- HOST COMMAND...
"""

from __future__ import annotations

import argparse
import queue
import re
import shlex
import subprocess
import sys
import threading
import time

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

WAIT = 20.0  # seconds for any one step; generous for a loaded 2-core CI machine


class Host:
    def __init__(self, command: list[str]) -> None:
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, pattern: str) -> re.Match[str]:
        """The first output line matching ``pattern`` (regex search) within WAIT seconds."""
        deadline = time.monotonic() + WAIT
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no host output line matching {pattern!r}; got {self.seen!r}")

    def write(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text)
        self.process.stdin.flush()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-pattern", required=True, help="regex whose group 'port' is the port")
    parser.add_argument("--query", required=True, help="the upgrade request's query (credentials)")
    parser.add_argument("--user", required=True, help="the user that query authenticates")
    parser.add_argument("--path", default="/ws")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args()

    host = Host(args.command)
    try:
        port = int(host.expect(args.port_pattern).group("port"))
        url = f"ws://127.0.0.1:{port}{args.path}?{args.query}"
        with connect(url, open_timeout=WAIT, close_timeout=WAIT) as client:
            published = f"news for {args.user} {time.time_ns()}"
            host.write(f"{args.user}\t{published}\n")
            # The C example greets first ("welcome NAME"); anything before the published text
            # is allowed, the text itself must arrive.
            received = []
            while published not in received:
                received.append(client.recv(timeout=WAIT))
            print(f"drive_host: received {published!r} (after {received[:-1]!r})")

            sent = f"hello from {args.user}'s client"
            client.send(sent)
            host.expect(re.escape(sent))

            assert host.process.stdin is not None
            host.process.stdin.close()  # the examples stop on end of input
            try:
                while True:
                    client.recv(timeout=WAIT)
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else None
                assert code == 1001, f"expected close code 1001 on stop, got {code}"
        status = host.process.wait(timeout=WAIT)
        assert status == 0, f"host exited with {status}; output {host.seen!r}"
        print(f"drive_host: {shlex.join(args.command)}: connected, published, received, stopped cleanly")
        return 0
    finally:
        if host.process.poll() is None:
            host.process.kill()
            host.process.wait()


if __name__ == "__main__":
    sys.exit(main())
