package main

// These tests run the peer as its own process (this test binary re-executed with the peer's flags)
// and drive it with a minimal hand-written WebSocket client, so that neither the server library
// nor its own client code can hide a bug, and the start line, flags and exit status are checked
// exactly as the load generator sees them. The same file is used by every Go peer.

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	if os.Getenv("PEER_TEST_RUN_SERVER") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

type peer struct {
	pid                      int
	wsAddr, wsPath, adminURL string
}

func startPeer(t *testing.T, args ...string) *peer {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"}, args...)...)
	cmd.Env = append(os.Environ(), "PEER_TEST_RUN_SERVER=1")
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("peer did not exit 0 on SIGTERM: %v", err)
		}
	})
	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		lines <- line
		_, _ = io.Copy(io.Discard, stdout)
	}()
	var line string
	select {
	case line = <-lines:
	case <-time.After(10 * time.Second):
		t.Fatal("no start line within 10 s")
	}
	startLine := regexp.MustCompile(`^` + regexp.QuoteMeta(peerName) +
		` listening on ws://(127\.0\.0\.1:[1-9][0-9]*)(/\S*), admin on http://(127\.0\.0\.1:[1-9][0-9]*)\n$`)
	m := startLine.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("start line %q does not match %v", line, startLine)
	}
	return &peer{pid: cmd.Process.Pid, wsAddr: m[1], wsPath: m[2], adminURL: "http://" + m[3]}
}

// post calls the admin API and returns the status and body.
func (p *peer) post(t *testing.T, target, contentType string, body []byte) (int, string) {
	t.Helper()
	resp, err := http.Post(p.adminURL+target, contentType, strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	reply, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(reply)
}

func (p *peer) mustDeliver(t *testing.T, target, contentType string, body []byte, want int) {
	t.Helper()
	status, reply := p.post(t, target, contentType, body)
	if wantReply := fmt.Sprintf(`{"delivered":%d}`, want); status != 200 || reply != wantReply {
		t.Fatalf("POST %s = %d %q, want 200 %q", target, status, reply, wantReply)
	}
}

type wsClient struct {
	conn net.Conn
	br   *bufio.Reader
}

const (
	opText   = 1
	opBinary = 2
	opClose  = 8
	opPing   = 9
	opPong   = 10
)

// rawRequest sends head and returns the server's HTTP status line.
func rawRequest(addr, head string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, head); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimSpace(line), err
}

func (p *peer) dial(user string) (*wsClient, error) {
	conn, err := net.DialTimeout("tcp", p.wsAddr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	// The key and accept value are RFC 6455's own example.
	head := "GET " + p.wsPath + "?user=" + user + " HTTP/1.1\r\nHost: " + p.wsAddr +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := io.WriteString(conn, head); err != nil {
		conn.Close()
		return nil, err
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		conn.Close()
		return nil, fmt.Errorf("upgrade answered %s, accept %q", resp.Status, resp.Header.Get("Sec-WebSocket-Accept"))
	}
	_ = conn.SetDeadline(time.Time{})
	return &wsClient{conn: conn, br: br}, nil
}

// frameHeader builds a masked client frame header; declaredLen may exceed the payload sent.
func frameHeader(op byte, declaredLen int, mask [4]byte) []byte {
	b := []byte{0x80 | op}
	switch {
	case declaredLen < 126:
		b = append(b, 0x80|byte(declaredLen))
	case declaredLen <= 0xFFFF:
		b = append(b, 0x80|126)
		b = binary.BigEndian.AppendUint16(b, uint16(declaredLen))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(declaredLen))
	}
	return append(b, mask[:]...)
}

func (c *wsClient) send(op byte, payload []byte) error {
	var mask [4]byte
	_, _ = rand.Read(mask[:])
	frame := frameHeader(op, len(payload), mask)
	for i, b := range payload {
		frame = append(frame, b^mask[i%4])
	}
	_, err := c.conn.Write(frame)
	return err
}

func (c *wsClient) recv(timeout time.Duration) (op byte, payload []byte, err error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	var head [2]byte
	if _, err := io.ReadFull(c.br, head[:]); err != nil {
		return 0, nil, err
	}
	if head[1]&0x80 != 0 {
		return 0, nil, errors.New("server frame is masked")
	}
	length := uint64(head[1] & 0x7F)
	switch length {
	case 126:
		var ext [2]byte
		_, err = io.ReadFull(c.br, ext[:])
		length = uint64(binary.BigEndian.Uint16(ext[:]))
	case 127:
		var ext [8]byte
		_, err = io.ReadFull(c.br, ext[:])
		length = binary.BigEndian.Uint64(ext[:])
	}
	if err != nil {
		return 0, nil, err
	}
	payload = make([]byte, length)
	_, err = io.ReadFull(c.br, payload)
	return head[0] & 0x0F, payload, err
}

func (c *wsClient) expect(t *testing.T, wantOp byte, want string) {
	t.Helper()
	op, payload, err := c.recv(5 * time.Second)
	if err != nil || op != wantOp || string(payload) != want {
		t.Fatalf("got op %d %q (err %v), want op %d %q", op, payload, err, wantOp, want)
	}
}

func (c *wsClient) expectNothing(t *testing.T) {
	t.Helper()
	op, payload, err := c.recv(300 * time.Millisecond)
	var netErr net.Error
	if !errors.As(err, &netErr) || !netErr.Timeout() {
		t.Fatalf("expected no message, got op %d %q (err %v)", op, payload, err)
	}
}

func dialOrFail(t *testing.T, p *peer, user string) *wsClient {
	t.Helper()
	c, err := p.dial(user)
	if err != nil {
		t.Fatalf("dial as %s: %v", user, err)
	}
	t.Cleanup(func() { c.conn.Close() })
	return c
}

func TestHealthzAndBadRequests(t *testing.T) {
	p := startPeer(t)
	resp, err := http.Get(p.adminURL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok" {
		t.Fatalf("healthz = %d %q", resp.StatusCode, body)
	}
	if status, _ := p.post(t, "/publish", "text/plain", []byte("x")); status != http.StatusBadRequest {
		t.Fatalf("publish without user = %d, want 400", status)
	}
	for _, tc := range []struct {
		head, wantStatus string
	}{
		{"GARBAGE\r\n\r\n", "400"},
		{"GET /elsewhere?user=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", "404"},
		{"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", "400"},
	} {
		line, err := rawRequest(p.wsAddr, tc.head)
		if err != nil || !strings.HasPrefix(line, "HTTP/1.1 "+tc.wantStatus+" ") {
			t.Errorf("request %q answered %q (err %v), want status %s", tc.head, line, err, tc.wantStatus)
		}
	}
}

func TestPublishReachesEveryTabOfThatUserOnly(t *testing.T) {
	p := startPeer(t)
	aliceTab1, aliceTab2, bob := dialOrFail(t, p, "alice"), dialOrFail(t, p, "alice"), dialOrFail(t, p, "bob")

	p.mustDeliver(t, "/publish?user=alice", "text/plain", []byte("You have new mail"), 2)
	aliceTab1.expect(t, opText, "You have new mail")
	aliceTab2.expect(t, opText, "You have new mail")
	bob.expectNothing(t)

	p.mustDeliver(t, "/publish?user=bob", "application/octet-stream", []byte{0, 1, 2, 255}, 1)
	bob.expect(t, opBinary, "\x00\x01\x02\xff")
	aliceTab1.expectNothing(t)

	p.mustDeliver(t, "/publish?user=carol", "text/plain", []byte("nobody home"), 0)

	// A closed tab stops counting once the server has seen the close.
	_ = aliceTab2.send(opClose, []byte{0x03, 0xE8})
	aliceTab2.expect(t, opClose, "\x03\xe8")
	deadline := time.Now().Add(5 * time.Second)
	for {
		status, reply := p.post(t, "/publish?user=alice", "text/plain", []byte("again"))
		if status == 200 && reply == `{"delivered":1}` {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after one tab closed, publish answered %d %q", status, reply)
		}
		time.Sleep(20 * time.Millisecond)
	}
	aliceTab1.expect(t, opText, "again")
}

func TestBroadcastReachesEveryone(t *testing.T) {
	p := startPeer(t)
	clients := []*wsClient{dialOrFail(t, p, "alice"), dialOrFail(t, p, "alice"), dialOrFail(t, p, "bob")}
	p.mustDeliver(t, "/broadcast", "text/plain; charset=utf-8", []byte("maintenance at noon"), 3)
	for _, c := range clients {
		c.expect(t, opText, "maintenance at noon")
	}
}

func TestEchoKeepsTheOpcode(t *testing.T) {
	p := startPeer(t, "--echo")
	c := dialOrFail(t, p, "alice")
	big := strings.Repeat("x", 1<<16) // the largest message both peers accept
	for _, m := range []struct {
		op      byte
		payload string
	}{{opText, "hello"}, {opBinary, "\x00\xffbinary"}, {opText, big}} {
		if err := c.send(m.op, []byte(m.payload)); err != nil {
			t.Fatal(err)
		}
		c.expect(t, m.op, m.payload)
	}
	if err := c.send(opPing, []byte("are you there")); err != nil {
		t.Fatal(err)
	}
	c.expect(t, opPong, "are you there")

	// A frame declaring more than 64 KiB is refused with 1009 before any payload is read.
	if _, err := c.conn.Write(frameHeader(opBinary, 1<<20, [4]byte{1, 2, 3, 4})); err != nil {
		t.Fatal(err)
	}
	c.expect(t, opClose, "\x03\xf1")

	// Without --echo nothing comes back.
	quiet := startPeer(t)
	q := dialOrFail(t, quiet, "bob")
	_ = q.send(opText, []byte("hello"))
	q.expectNothing(t)
}

// TestTwoThousandConnections: every connection echoes once (so each has read and written), then a
// broadcast reaches all 2,000 and a publish reaches exactly one user's two tabs.
func TestTwoThousandConnections(t *testing.T) {
	const users, tabs = 1000, 2
	p := startPeer(t, "--echo")
	clients := make([]*wsClient, users*tabs)
	var wg sync.WaitGroup
	errs := make(chan error, len(clients))
	for worker := 0; worker < 8; worker++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := worker; i < len(clients); i += 8 {
				c, err := p.dial(fmt.Sprintf("u%d", i%users))
				if err == nil {
					clients[i] = c
					if err = c.send(opText, []byte(fmt.Sprintf("hi %d", i))); err == nil {
						var payload []byte
						_, payload, err = c.recv(10 * time.Second)
						if err == nil && string(payload) != fmt.Sprintf("hi %d", i) {
							err = fmt.Errorf("connection %d got echo %q", i, payload)
						}
					}
				}
				if err != nil {
					errs <- fmt.Errorf("connection %d: %w", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range clients {
			if c != nil {
				c.conn.Close()
			}
		}
	})
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// One descriptor per connection (easygo's HandleRead would dup each one), plus a few.
	if fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.pid)); err != nil || len(fds) > len(clients)+32 {
		t.Fatalf("peer holds %d descriptors for %d connections (err %v)", len(fds), len(clients), err)
	}

	p.mustDeliver(t, "/broadcast", "text/plain", []byte("to all"), len(clients))
	for i, c := range clients {
		if op, payload, err := c.recv(10 * time.Second); err != nil || op != opText || string(payload) != "to all" {
			t.Fatalf("connection %d: got op %d %q (err %v)", i, op, payload, err)
		}
	}
	p.mustDeliver(t, "/publish?user=u42", "text/plain", []byte("only u42"), tabs)
	clients[42].expect(t, opText, "only u42")
	clients[42+users].expect(t, opText, "only u42")
	clients[43].expectNothing(t)
}
