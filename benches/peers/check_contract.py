"""Checks a server against the wspushd contract with raw sockets (no third-party packages).

    python3 benches/peers/check_contract.py COMMAND [ARGS...]

COMMAND is started with `--listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --echo` appended and must
print its listening line first, e.g. `node benches/peers/node-ws/server.js`,
`benches/peers/rust-tokio/target/release/rust-tokio`, or `target/release/wspushd --demo`.
Exits non-zero on the first broken expectation. Opens 2,000+ sockets.
"""
import base64, json, os, re, resource, signal, socket, struct, subprocess, sys, time

LISTENING = re.compile(r"(\S+) listening on ws://([\d.]+):(\d+)(/\S*), admin on http://([\d.]+):(\d+)")

def delivered(body):
    """The `delivered` count of a /publish or /broadcast answer. A server with per-user history
    (wspushd) adds the message's `offset` (a positive integer) to a publish's answer."""
    answer = json.loads(body)
    assert set(answer) <= {"delivered", "offset"}, answer
    assert "offset" not in answer or (type(answer["offset"]) is int and answer["offset"] > 0), answer
    return answer["delivered"]

def start(cmd):
    """Starts the server; returns it with its addresses from the listening line (wspushd prints a
    banner line before it, the peers print only that line)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    for _ in range(10):
        line = p.stdout.readline().strip()
        m = LISTENING.fullmatch(line)
        if m:
            print("start line:", line)
            return p, (m[2], int(m[3])), m[4], (m[5], int(m[6]))
    p.kill()
    sys.exit(f"no listening line from {cmd}; last line: {line!r}")

def ws_connect(addr, target):
    s = socket.create_connection(addr)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk: break
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return s, status, rest

class Conn:
    def __init__(self, addr, target):
        self.sock, status, self.buf = ws_connect(addr, target)
        assert status == 101, status
    def send(self, opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        hdr = bytes([0x80 | opcode])
        if n < 126: hdr += bytes([0x80 | n])
        elif n < 65536: hdr += bytes([0x80 | 126]) + struct.pack(">H", n)
        else: hdr += bytes([0x80 | 127]) + struct.pack(">Q", n)
        self.sock.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk: raise EOFError
            self.buf += chunk
    def recv(self, timeout=2.0):
        self.sock.settimeout(timeout)
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        n, off = b1 & 0x7F, 2
        if n == 126: self._need(4); n = struct.unpack(">H", self.buf[2:4])[0]; off = 4
        elif n == 127: self._need(10); n = struct.unpack(">Q", self.buf[2:10])[0]; off = 10
        assert not (b1 & 0x80), "server frames must be unmasked"
        self._need(off + n)
        payload = self.buf[off:off + n]; self.buf = self.buf[off + n:]
        return b0 & 0x0F, payload
    def nothing(self, wait=0.3):
        try:
            f = self.recv(wait)
        except (socket.timeout, TimeoutError):
            return True
        raise AssertionError(f"unexpected frame {f}")
    def close(self):
        self.send(0x8, struct.pack(">H", 1000))
        op, _ = self.recv()
        assert op == 0x8, op
        self.sock.close()

class Admin:
    def __init__(self, addr):
        self.sock = socket.create_connection(addr); self.buf = b""
        self.host = f"{addr[0]}:{addr[1]}"  # wspushd refuses foreign Host names (DNS rebinding)
    def req(self, method, target, body=b"", ctype="text/plain"):
        self.sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        while b"\r\n\r\n" not in self.buf:
            c = self.sock.recv(4096); assert c, "admin closed"; self.buf += c
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
        n = int(hdrs.get("content-length", 0))
        while len(self.buf) < n:
            c = self.sock.recv(4096); assert c; self.buf += c
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, hdrs, body

def main():
    cmd = sys.argv[1:]
    if not cmd:
        sys.exit(__doc__)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    p, ws, path, admin_addr = start(cmd + ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--echo"])
    try:
        admin = Admin(admin_addr)
        st, _, body = admin.req("GET", "/healthz"); assert (st, body) == (200, b"ok"), (st, body)
        a1, a2 = Conn(ws, f"{path}?user=alice"), Conn(ws, f"{path}?user=alice")
        b = Conn(ws, f"{path}?user=bob")
        st, h, body = admin.req("POST", "/publish?user=alice", b"hello alice")
        assert st == 200 and delivered(body) == 2, (st, body); print("publish alice:", body, h.get("content-type"))
        for c in (a1, a2): assert c.recv() == (0x1, b"hello alice")
        assert b.nothing()
        st, _, body = admin.req("POST", "/publish?user=alice", b"\x00\xffbin", "application/octet-stream")
        assert delivered(body) == 2
        for c in (a1, a2): assert c.recv() == (0x2, b"\x00\xffbin")
        st, _, body = admin.req("POST", "/publish?user=nobody", b"x"); assert delivered(body) == 0, body
        st, _, body = admin.req("POST", "/publish?user=alice", b"\xff\xfe", "text/plain"); assert st == 400, st
        st, _, body = admin.req("POST", "/broadcast", b"to all")
        assert delivered(body) == 3, body
        for c in (a1, a2, b): assert c.recv() == (0x1, b"to all")
        # echo, same opcode; a 60,000-byte message too (16-bit length; under wspushd's 64 KiB default limit)
        a1.send(0x1, b"echo text"); assert a1.recv() == (0x1, b"echo text")
        a1.send(0x2, b"\x01\x02"); assert a1.recv() == (0x2, b"\x01\x02")
        big = os.urandom(60_000); b.send(0x2, big); assert b.recv() == (0x2, big)
        assert a2.nothing()
        # ping gets a pong
        a2.send(0x9, b"pi"); assert a2.recv() == (0xA, b"pi")
        # bad requests
        _, st, _ = ws_connect(ws, "/other?user=x"); assert st == 404, st
        _, st, _ = ws_connect(ws, f"{path}"); assert st == 400, st
        # a closed tab leaves the registry
        a2.close(); time.sleep(0.2)
        st, _, body = admin.req("POST", "/publish?user=alice", b"one left"); assert delivered(body) == 1, body
        assert a1.recv() == (0x1, b"one left")
        # %-encoded user
        e = Conn(ws, f"{path}?user=j%C3%B6rg+x")
        st, _, body = admin.req("POST", "/publish?user=j%C3%B6rg%20x", b"hi"); assert delivered(body) == 1, body
        assert e.recv() == (0x1, b"hi")
        # 2,000 idle connections, 20 users x 100 tabs, each reached by a broadcast and a publish
        many = [Conn(ws, f"{path}?user=idle{i % 20}") for i in range(2000)]
        time.sleep(0.5)
        st, _, body = admin.req("POST", "/broadcast", b"wake"); n = json.loads(body)["delivered"]
        assert n == 2000 + 3, n   # a1, b, e as well
        for c in many: assert c.recv(5) == (0x1, b"wake")
        for c in (a1, b, e): assert c.recv() == (0x1, b"wake")
        st, _, body = admin.req("POST", "/publish?user=idle7", b"seven"); assert delivered(body) == 100, body
        got = sum(1 for i, c in enumerate(many) if i % 20 == 7 and c.recv(5) == (0x1, b"seven"))
        assert got == 100
        assert all(c.nothing(0.001) for i, c in enumerate(many[:200]) if i % 20 != 7)
        rss = [l for l in open(f"/proc/{p.pid}/status") if l.startswith(("VmRSS", "RssAnon"))]
        print("2000 idle connections OK;", " ".join(x.split()[1] + "kB" for x in rss), "(RSS, RssAnon)")
        for c in many: c.sock.close()
        print("ALL CHECKS PASSED")
    finally:
        p.send_signal(signal.SIGTERM)
        rc = p.wait(5)
        print("exit status after SIGTERM:", rc)
        assert rc == 0
main()
