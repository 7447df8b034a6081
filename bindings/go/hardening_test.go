package wspush

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The settings for running behind a load balancer and against hostile clients, each observed
// taking effect: ProxyProtocol/TrustedProxies, MaxPendingHandshakesPerIP, MessageTimeout,
// MaxPartialInputBytes and SocketSendBuffer/SocketRecvBuffer.

const proxyV1 = "PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n"

// rawConn is a hand-made client on a plain TCP socket.
type rawConn struct {
	net.Conn
	r *bufio.Reader
}

func rawDial(t *testing.T, server *Server) *rawConn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", server.Port()), testTimeout)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(testTimeout))
	return &rawConn{Conn: conn, r: bufio.NewReader(conn)}
}

func upgradeRequest(user string) string {
	key := make([]byte, 16)
	rand.Read(key)
	return fmt.Sprintf("GET /ws?user=%s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", user, base64.StdEncoding.EncodeToString(key))
}

// status reads a response head and returns its status code (0 if there is none).
func (c *rawConn) status(t *testing.T) int {
	t.Helper()
	line, err := c.r.ReadString('\n')
	fields := strings.Fields(line)
	if err != nil || len(fields) < 2 {
		t.Errorf("status line %q: %v", line, err)
		return 0
	}
	status, _ := strconv.Atoi(fields[1])
	for {
		header, err := c.r.ReadString('\n')
		if err != nil || header == "\r\n" {
			return status
		}
	}
}

// rawUpgrade sends prefix and an upgrade request as user; the server must answer 101.
func rawUpgrade(t *testing.T, server *Server, prefix, user string) *rawConn {
	t.Helper()
	c := rawDial(t, server)
	if _, err := io.WriteString(c, prefix+upgradeRequest(user)); err != nil {
		t.Fatalf("write: %v", err)
	}
	if status := c.status(t); status != 101 {
		t.Fatalf("upgrade: HTTP %d, want 101", status)
	}
	return c
}

// maskedFrame is a complete client frame (FIN set, masked as clients must).
func maskedFrame(opcode byte, payload []byte) []byte {
	frame := []byte{0x80 | opcode}
	if len(payload) < 126 {
		frame = append(frame, 0x80|byte(len(payload)))
	} else {
		frame = append(frame, 0x80|126)
		frame = binary.BigEndian.AppendUint16(frame, uint16(len(payload)))
	}
	mask := make([]byte, 4)
	rand.Read(mask)
	frame = append(frame, mask...)
	for i, b := range payload {
		frame = append(frame, b^mask[i%4])
	}
	return frame
}

// closeCode reads server frames (skipping pings) up to the close frame and returns its code.
func (c *rawConn) closeCode(t *testing.T) int {
	t.Helper()
	for {
		head := make([]byte, 2)
		if _, err := io.ReadFull(c.r, head); err != nil {
			t.Fatalf("read frame: %v", err)
		}
		length := uint64(head[1] & 0x7f)
		switch length {
		case 126:
			ext := make([]byte, 2)
			io.ReadFull(c.r, ext)
			length = uint64(binary.BigEndian.Uint16(ext))
		case 127:
			ext := make([]byte, 8)
			io.ReadFull(c.r, ext)
			length = binary.BigEndian.Uint64(ext)
		}
		payload := make([]byte, length)
		if _, err := io.ReadFull(c.r, payload); err != nil {
			t.Fatalf("read frame: %v", err)
		}
		if head[0]&0x0f == 0x8 {
			if len(payload) < 2 {
				return 1005
			}
			return int(binary.BigEndian.Uint16(payload))
		}
	}
}

func TestProxyProtocolGivesTheClientAddressFromATrustedBalancer(t *testing.T) {
	var mu sync.Mutex
	var peers []string
	upgrade := func(s *Server, r *Request) {
		mu.Lock()
		peers = append(peers, r.Peer())
		mu.Unlock()
		_ = r.Accept([]byte("alice"))
	}
	seen := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), peers...)
	}
	server := startServer(t, Config{
		ProxyProtocol: true, TrustedProxies: []string{"127.0.0.1", "10.0.0.0/8"},
		Handler: HandlerFuncs{Upgrade: upgrade},
	})
	rawUpgrade(t, server, proxyV1, "alice")
	if got := seen(); len(got) != 1 || got[0] != "203.0.113.7:5555" {
		t.Errorf("peers %q, want [203.0.113.7:5555] (from the PROXY header)", got)
	}
	// From a trusted source the header is required.
	c := rawDial(t, server)
	io.WriteString(c, upgradeRequest("bob"))
	if status := c.status(t); status != 400 {
		t.Errorf("trusted source without a PROXY header: HTTP %d, want 400", status)
	}
	// Without the setting the client's own address is the peer, and a PROXY header is refused.
	plain := startServer(t, Config{Handler: HandlerFuncs{Upgrade: upgrade}})
	rawUpgrade(t, plain, "", "carol")
	if got := seen(); len(got) != 2 || !strings.HasPrefix(got[1], "127.0.0.1:") {
		t.Errorf("peers %q, want the socket's own 127.0.0.1:port second", got)
	}
	c = rawDial(t, plain)
	io.WriteString(c, proxyV1+upgradeRequest("dave"))
	if status := c.status(t); status != 400 {
		t.Errorf("PROXY header without ProxyProtocol: HTTP %d, want 400", status)
	}
}

func TestHardeningSettingsAreCheckedAtStart(t *testing.T) {
	cases := []struct {
		name   string
		config Config
		want   *Error
		op     string
	}{
		{"proxy protocol without a trusted proxy", Config{ProxyProtocol: true}, ErrInvalidArgument, "Config.ProxyProtocol"},
		{"not a network", Config{TrustedProxies: []string{"not-a-network"}}, ErrInvalidAddress, "Config.TrustedProxies"},
		{"prefix too long", Config{TrustedProxies: []string{"10.0.0.0/33"}}, ErrInvalidAddress, "Config.TrustedProxies"},
		{"negative pending handshakes", Config{MaxPendingHandshakesPerIP: -1}, ErrInvalidArgument, "Config.MaxPendingHandshakesPerIP"},
		{"negative message timeout", Config{MessageTimeout: -time.Second}, ErrInvalidArgument, "Config.MessageTimeout"},
		{"message timeout past 2^32-1 ms", Config{MessageTimeout: (1 << 32) * time.Millisecond}, ErrInvalidArgument, "Config.MessageTimeout"},
		{"negative partial input", Config{MaxPartialInputBytes: -1}, ErrInvalidArgument, "Config.MaxPartialInputBytes"},
		{"negative send buffer", Config{SocketSendBuffer: -1}, ErrInvalidArgument, "Config.SocketSendBuffer"},
		{"negative receive buffer", Config{SocketRecvBuffer: -1}, ErrInvalidArgument, "Config.SocketRecvBuffer"},
	}
	for _, c := range cases {
		assertStartFails(t, c.name, c.config, c.want, c.op)
	}
	// Every one at once, valid: 127.0.0.1 is not a trusted proxy here, so it is served directly.
	server := startServer(t, Config{
		ProxyProtocol: true, TrustedProxies: []string{"10.0.0.0/8", "fd00::/8"},
		MaxPendingHandshakesPerIP: 4, MessageTimeout: time.Second, MaxPartialInputBytes: 1 << 20,
		SocketSendBuffer: 64 << 10, Handler: HandlerFuncs{Upgrade: queryUserAuth},
	})
	conn := mustDial(t, server, "user=alice")
	waitForStats(t, server, "open", func(s Stats) bool { return s.Connections == 1 })
	if _, err := server.Publish([]byte("alice"), []byte("configured"), false); err != nil {
		t.Fatal(err)
	}
	if got := readText(t, conn); got != "configured" {
		t.Errorf("got %q", got)
	}
}

func TestMaxPendingHandshakesPerIPAnswers429WithoutARequest(t *testing.T) {
	server := startServer(t, Config{MaxPendingHandshakesPerIP: 2, Handler: HandlerFuncs{Upgrade: queryUserAuth}})
	idle := []*rawConn{rawDial(t, server), rawDial(t, server)}
	waitForStats(t, server, "2 handshaking", func(s Stats) bool { return s.Handshakes == 2 })
	third := rawDial(t, server) // sends nothing
	if status := third.status(t); status != 429 {
		t.Errorf("third idle socket from one address: HTTP %d, want 429", status)
	}
	if stats, _ := server.Stats(); stats.IPLimitedTotal != 1 {
		t.Errorf("IPLimitedTotal = %d, want 1", stats.IPLimitedTotal)
	}
	// Once the idle sockets are gone, the address may handshake again.
	for _, c := range idle {
		c.Close()
	}
	waitForStats(t, server, "idle sockets gone", func(s Stats) bool { return s.Handshakes == 0 })
	mustDial(t, server, "user=alice")
}

func TestMessageTimeoutClosesAHalfSentFrameWith1008(t *testing.T) {
	rec := &recorder{}
	server := startServer(t, Config{MessageTimeout: 300 * time.Millisecond, Handler: HandlerFuncs{Upgrade: queryUserAuth, Close: rec.close}})
	c := rawUpgrade(t, server, "", "alice")
	started := time.Now()
	c.Write(maskedFrame(0x2, make([]byte, 100))[:10])
	if code := c.closeCode(t); code != 1008 {
		t.Errorf("close code %d, want 1008", code)
	}
	if elapsed := time.Since(started); elapsed < 250*time.Millisecond || elapsed > 2*time.Second {
		t.Errorf("closed after %v, want about 300ms", elapsed)
	}
	c.Close()
	waitFor(t, "the close", func() bool { _, closes := rec.snapshot(); return len(closes) == 1 })
	if _, closes := rec.snapshot(); closes[0].code != 1008 {
		t.Errorf("OnClose code %d, want 1008", closes[0].code)
	}
	if stats, _ := server.Stats(); stats.MessageTimeoutsTotal != 1 {
		t.Errorf("MessageTimeoutsTotal = %d, want 1", stats.MessageTimeoutsTotal)
	}
}

func TestMaxPartialInputBytesClosesWith1013(t *testing.T) {
	rec := &recorder{}
	server := startServer(t, Config{MaxPartialInputBytes: 1000, Handler: HandlerFuncs{Upgrade: queryUserAuth, Close: rec.close}})
	c := rawUpgrade(t, server, "", "alice")
	frame := maskedFrame(0x2, make([]byte, 10_000))
	c.Write(frame[:5_000])
	if code := c.closeCode(t); code != 1013 {
		t.Errorf("close code %d, want 1013", code)
	}
	c.Close()
	waitFor(t, "the close", func() bool { _, closes := rec.snapshot(); return len(closes) == 1 })
	if stats, _ := server.Stats(); stats.PartialInputRefusals != 1 {
		t.Errorf("PartialInputRefusals = %d, want 1", stats.PartialInputRefusals)
	}
	// The default cap (256 MiB) lets the same frame arrive in two parts.
	got := make(chan int, 1)
	plain := startServer(t, Config{Handler: HandlerFuncs{Upgrade: queryUserAuth, Message: func(_ *Server, _ ConnID, _ []byte, msg []byte, _ bool) {
		got <- len(msg)
	}}})
	c = rawUpgrade(t, plain, "", "bob")
	c.Write(frame[:5_000])
	waitForStats(t, plain, "partial input held", func(s Stats) bool { return s.PartialInputBytes > 0 })
	c.Write(frame[5_000:])
	select {
	case n := <-got:
		if n != 10_000 {
			t.Errorf("message of %d bytes, want 10000", n)
		}
	case <-time.After(testTimeout):
		t.Fatal("no message")
	}
}

// acceptedBuffers returns SO_SNDBUF and SO_RCVBUF of the engine's end of client's connection:
// the engine runs in this process, so its sockets are among our descriptors.
func acceptedBuffers(t *testing.T, client net.Conn) (int, int) {
	t.Helper()
	local, peer := client.RemoteAddr().(*net.TCPAddr), client.LocalAddr().(*net.TCPAddr)
	same := func(sa syscall.Sockaddr, addr *net.TCPAddr) bool {
		in4, ok := sa.(*syscall.SockaddrInet4)
		return ok && in4.Port == addr.Port && net.IP(in4.Addr[:]).Equal(addr.IP)
	}
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("finds the engine's sockets through /proc: %v", err)
	}
	for _, entry := range entries {
		fd, err := strconv.Atoi(entry.Name())
		if err != nil {
			continue
		}
		name, err := syscall.Getsockname(fd)
		if err != nil || !same(name, local) {
			continue
		}
		if remote, err := syscall.Getpeername(fd); err != nil || !same(remote, peer) {
			continue
		}
		send, err1 := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_SNDBUF)
		recv, err2 := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVBUF)
		if err1 != nil || err2 != nil {
			t.Fatalf("getsockopt: %v %v", err1, err2)
		}
		return send, recv
	}
	t.Fatalf("no descriptor of ours is the server end of %v -> %v", peer, local)
	return 0, 0
}

func TestSocketBuffersAreSetOnEveryConnection(t *testing.T) {
	const send, recv = 24 << 10, 48 << 10
	// What the kernel reports for these sizes (Linux doubles them).
	probe, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	syscall.SetsockoptInt(probe, syscall.SOL_SOCKET, syscall.SO_SNDBUF, send)
	syscall.SetsockoptInt(probe, syscall.SOL_SOCKET, syscall.SO_RCVBUF, recv)
	wantSend, _ := syscall.GetsockoptInt(probe, syscall.SOL_SOCKET, syscall.SO_SNDBUF)
	wantRecv, _ := syscall.GetsockoptInt(probe, syscall.SOL_SOCKET, syscall.SO_RCVBUF)
	syscall.Close(probe)

	server := startServer(t, Config{SocketSendBuffer: send, SocketRecvBuffer: recv, Handler: HandlerFuncs{Upgrade: queryUserAuth}})
	for i := 0; i < 2; i++ {
		c := rawUpgrade(t, server, "", fmt.Sprintf("u%d", i))
		if gotSend, gotRecv := acceptedBuffers(t, c.Conn); gotSend != wantSend || gotRecv != wantRecv {
			t.Errorf("connection %d: SO_SNDBUF %d, SO_RCVBUF %d; want %d, %d", i, gotSend, gotRecv, wantSend, wantRecv)
		}
		c.Close()
	}
	plain := startServer(t, Config{Handler: HandlerFuncs{Upgrade: queryUserAuth}}) // the kernel's autotuning
	c := rawUpgrade(t, plain, "", "plain")
	if gotSend, gotRecv := acceptedBuffers(t, c.Conn); gotSend == wantSend && gotRecv == wantRecv {
		t.Errorf("without the setting the buffers are %d, %d as well", gotSend, gotRecv)
	}
}
