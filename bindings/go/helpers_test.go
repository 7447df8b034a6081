package wspush

import (
	"bytes"
	"errors"
	"fmt"
	"log"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// testTimeout bounds every wait in the tests; nothing should come near it.
const testTimeout = 10 * time.Second

// startServer starts a server on an ephemeral port with short timeouts and stops it when the
// test ends.
func startServer(t *testing.T, config Config) *Server {
	t.Helper()
	config.Listen = "127.0.0.1:0"
	if config.Threads == 0 {
		config.Threads = 2
	}
	if config.DrainTimeout == 0 {
		config.DrainTimeout = time.Second
	}
	if config.CloseTimeout == 0 {
		config.CloseTimeout = 500 * time.Millisecond
	}
	if config.HandshakeTimeout == 0 {
		config.HandshakeTimeout = 3 * time.Second
	}
	server, err := Start(config)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := server.Stop(); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return server
}

func wsURL(server *Server, query string) string {
	url := fmt.Sprintf("ws://127.0.0.1:%d/ws", server.Port())
	if query != "" {
		url += "?" + query
	}
	return url
}

// dial opens a WebSocket to the server; the response is returned for failed handshakes.
func dial(server *Server, query string, header http.Header) (*websocket.Conn, *http.Response, error) {
	dialer := websocket.Dialer{HandshakeTimeout: testTimeout}
	conn, resp, err := dialer.Dial(wsURL(server, query), header)
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	return conn, resp, err
}

// mustDial opens a WebSocket that must be accepted, closed when the test ends.
func mustDial(t *testing.T, server *Server, query string) *websocket.Conn {
	t.Helper()
	conn, resp, err := dial(server, query, nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %q: %v (HTTP %d)", query, err, status)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// dialStatus dials a WebSocket that must be refused and returns the HTTP status.
func dialStatus(t *testing.T, server *Server, query string) int {
	t.Helper()
	conn, resp, err := dial(server, query, nil)
	if err == nil {
		conn.Close()
		t.Fatalf("dial %q: accepted, want refused", query)
	}
	if resp == nil {
		t.Fatalf("dial %q: %v, want an HTTP answer", query, err)
	}
	return resp.StatusCode
}

// readMessage reads one message or fails the test.
func readMessage(t *testing.T, conn *websocket.Conn) (int, []byte) {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(testTimeout))
	kind, msg, err := conn.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return kind, msg
}

// readText reads one message that must be text and returns it.
func readText(t *testing.T, conn *websocket.Conn) string {
	t.Helper()
	kind, msg := readMessage(t, conn)
	if kind != websocket.TextMessage {
		t.Fatalf("message %q has type %d, want text", msg, kind)
	}
	return string(msg)
}

func writeText(t *testing.T, conn *websocket.Conn, text string) {
	t.Helper()
	if err := conn.WriteMessage(websocket.TextMessage, []byte(text)); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// waitFor polls cond until it holds or the test times out.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitForStats polls Stats until cond holds.
func waitForStats(t *testing.T, server *Server, what string, cond func(Stats) bool) Stats {
	t.Helper()
	var last Stats
	waitFor(t, what, func() bool {
		stats, err := server.Stats()
		if err != nil {
			t.Fatalf("Stats: %v", err)
		}
		last = stats
		return cond(stats)
	})
	return last
}

// queryUserAuth accepts ?user=NAME as NAME and rejects a missing user with 401.
func queryUserAuth(s *Server, r *Request) {
	if user := r.Query("user"); user != "" {
		_ = r.Accept([]byte(user))
	} else {
		_ = r.Reject(401)
	}
}

// event is one connection event seen by a recorder.
type event struct {
	conn ConnID
	user string
	code int
}

// recorder records opens and closes, safe for the engine's threads.
type recorder struct {
	mu     sync.Mutex
	opens  []event
	closes []event
}

func (r *recorder) open(_ *Server, conn ConnID, user []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.opens = append(r.opens, event{conn: conn, user: string(user)})
}

func (r *recorder) close(_ *Server, conn ConnID, user []byte, code int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closes = append(r.closes, event{conn: conn, user: string(user), code: code})
}

func (r *recorder) snapshot() (opens, closes []event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]event(nil), r.opens...), append([]event(nil), r.closes...)
}

func (r *recorder) waitOpens(t *testing.T, n int) []event {
	t.Helper()
	var opens []event
	waitFor(t, fmt.Sprintf("%d opens", n), func() bool {
		opens, _ = r.snapshot()
		return len(opens) >= n
	})
	return opens
}

// syncBuffer is a bytes.Buffer safe for concurrent writers (the engine's threads log).
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newLogger(buf *syncBuffer) *log.Logger {
	return log.New(buf, "", 0)
}

func containsAll(s string, parts ...string) bool {
	for _, part := range parts {
		if !strings.Contains(s, part) {
			return false
		}
	}
	return true
}

// readClose reads until the server's close frame and returns its code (-1 for another error),
// then closes the client's socket as a browser does: the engine lingers for the client's FIN
// (up to Config.CloseTimeout) before it reports the close.
func readClose(conn *websocket.Conn) (code int, text string, err error) {
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(testTimeout))
	for {
		if _, _, err = conn.ReadMessage(); err != nil {
			break
		}
	}
	var closeErr *websocket.CloseError
	if errors.As(err, &closeErr) {
		return closeErr.Code, closeErr.Text, nil
	}
	return -1, "", err
}

// assertStartFails checks that Start refuses config with want, naming the field: the error's Op
// is op, or starts with it when op ends in ".". It returns the error.
func assertStartFails(t *testing.T, name string, config Config, want error, op string) error {
	t.Helper()
	config.Listen = "127.0.0.1:0"
	server, err := Start(config)
	if err == nil {
		server.Stop()
	}
	var e *Error
	named := errors.As(err, &e) && (e.Op == op || strings.HasSuffix(op, ".") && strings.HasPrefix(e.Op, op))
	if !errors.Is(err, want) || !named {
		t.Errorf("%s: %v, want %v from %s", name, err, want, op)
	}
	return err
}
