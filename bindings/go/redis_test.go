package wspush

// Publishing with an outcome (PublishWait, PublishAsync) and Redis scale-out: without Redis, with
// a Redis that cannot be reached, and with a real redis-server shared by two servers ("nodes")
// in this process, which is then killed.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// outcome is what a PublishAsync completion received.
type outcome struct {
	published Published
	err       error
}

// completions records PublishAsync outcomes; safe for the engine's Redis thread.
type completions struct {
	mu    sync.Mutex
	calls []outcome
	ch    chan outcome
}

func newCompletions() *completions {
	return &completions{ch: make(chan outcome, 16)}
}

func (c *completions) done(published Published, err error) {
	c.mu.Lock()
	c.calls = append(c.calls, outcome{published, err})
	c.mu.Unlock()
	c.ch <- outcome{published, err}
}

func (c *completions) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.calls)
}

// waitOne waits (at most within; 0: not at all) for the first completion.
func (c *completions) waitOne(t *testing.T, within time.Duration) outcome {
	t.Helper()
	select {
	case got := <-c.ch:
		return got
	default:
	}
	select {
	case got := <-c.ch:
		return got
	case <-time.After(within):
		t.Fatalf("PublishAsync completion not called within %v", within)
		return outcome{}
	}
}

func TestResultUnavailableIsKnownToTheLibrary(t *testing.T) {
	if ResultUnavailable != 16 || ResultUnavailable.String() == "unknown result code" {
		t.Errorf("ResultUnavailable = %d %q", ResultUnavailable, ResultUnavailable.String())
	}
	if got := Result(ResultUnavailable + 1).String(); got != "unknown result code" {
		t.Errorf("the library knows a code past ResultUnavailable: %q (add it to errors.go)", got)
	}
	for code := ResultNullArgument; code <= ResultUnavailable; code++ {
		if code.String() == "unknown result code" {
			t.Errorf("Result %d is unknown to the library", code)
		}
	}
	err := error(&Error{Code: ResultUnavailable, Op: "PublishWait"})
	if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrStopped) {
		t.Errorf("errors.Is(%v, ErrUnavailable) is false", err)
	}
	if !strings.HasPrefix(err.Error(), "wspush: PublishWait: ") {
		t.Errorf("Error() = %q", err.Error())
	}
}

func TestPublishWaitWithoutRedisIsPublishWithOffset(t *testing.T) {
	server := startServer(t, Config{Handler: HandlerFuncs{Upgrade: queryUserAuth}, HistoryMaxMessages: 10})
	publishWait := func(user, msg string, binary bool, timeout time.Duration) Published {
		t.Helper()
		published, err := server.PublishWait([]byte(user), []byte(msg), binary, timeout)
		if err != nil {
			t.Fatalf("PublishWait(%q): %v", msg, err)
		}
		return published
	}
	if got := publishWait("alice", "a", false, time.Second); got != (Published{Delivered: 0, Offset: 1}) {
		t.Errorf("offline: %+v", got)
	}
	conn := mustDial(t, server, "user=alice")
	waitForStats(t, server, "alice open", func(s Stats) bool { return s.Connections == 1 })
	if got := publishWait("alice", "\x00b", true, 0); got != (Published{Delivered: 1, Offset: 2}) {
		t.Errorf("online: %+v", got)
	}
	if kind, msg := readMessage(t, conn); kind != websocket.BinaryMessage || string(msg) != "\x00b" {
		t.Errorf("received %d %q", kind, msg)
	}
	if got := publishWait("alice", "c", false, time.Nanosecond); got != (Published{Delivered: 1, Offset: 3}) {
		t.Errorf("online: %+v", got)
	}
	if got := readText(t, conn); got != "c" {
		t.Errorf("received %q", got)
	}

	if _, err := server.PublishWait([]byte("alice"), []byte("x"), false, -time.Millisecond); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("negative timeout: %v, want ErrInvalidArgument", err)
	}
	if _, err := server.PublishWait(nil, []byte("x"), false, time.Second); !errors.Is(err, ErrInvalidUserID) {
		t.Errorf("empty user: %v, want ErrInvalidUserID", err)
	}
	if got := mustPublishWithOffset(t, server, "alice", "d", false); got.Offset != 4 {
		t.Errorf("refused calls took an offset: %+v", got)
	}

	off := startServer(t, Config{})
	if got, err := off.PublishWait([]byte("bob"), []byte("x"), false, time.Second); err != nil || got != (Published{}) {
		t.Errorf("history off: %+v %v", got, err)
	}
	if err := server.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := server.PublishWait([]byte("alice"), []byte("late"), false, time.Second); !errors.Is(err, ErrStopped) {
		t.Errorf("after Stop: %v, want ErrStopped", err)
	}
}

func TestPublishAsyncWithoutRedisCompletesOnceBeforeReturning(t *testing.T) {
	var logged syncBuffer
	server := startServer(t, Config{Handler: HandlerFuncs{Upgrade: queryUserAuth}, HistoryMaxMessages: 10,
		ErrorLog: newLogger(&logged), MaxQueueBytes: 1024})
	c := newCompletions()
	if err := server.PublishAsync([]byte("alice"), []byte("a"), false, c.done); err != nil {
		t.Fatalf("PublishAsync: %v", err)
	}
	if c.count() != 1 {
		t.Fatalf("completion not called before PublishAsync returned (%d calls)", c.count())
	}
	if got := c.waitOne(t, 0); got.err != nil || got.published != (Published{Delivered: 0, Offset: 1}) {
		t.Errorf("outcome %+v", got)
	}

	conn := mustDial(t, server, "user=alice")
	waitForStats(t, server, "alice open", func(s Stats) bool { return s.Connections == 1 })
	if err := server.PublishAsync([]byte("alice"), []byte("\x01bin"), true, c.done); err != nil {
		t.Fatalf("PublishAsync: %v", err)
	}
	if got := c.waitOne(t, 0); got.err != nil || got.published != (Published{Delivered: 1, Offset: 2}) {
		t.Errorf("outcome %+v", got)
	}
	if kind, msg := readMessage(t, conn); kind != websocket.BinaryMessage || string(msg) != "\x01bin" {
		t.Errorf("received %d %q", kind, msg)
	}

	// Refused at once: the error is returned and done is never called.
	for name, call := range map[string]func() error{
		"user with NUL": func() error { return server.PublishAsync([]byte("a\x00b"), []byte("x"), false, c.done) },
		"too large":     func() error { return server.PublishAsync([]byte("alice"), make([]byte, 2048), true, c.done) },
		"nil done":      func() error { return server.PublishAsync([]byte("alice"), []byte("x"), false, nil) },
	} {
		want := map[string]error{"user with NUL": ErrInvalidUserID, "too large": ErrMessageTooLarge, "nil done": ErrNullArgument}[name]
		if err := call(); !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", name, err, want)
		}
	}
	if c.count() != 2 {
		t.Errorf("refused publishes completed: %d calls, want 2", c.count())
	}

	// A panic in done is recovered and logged; the publish was applied.
	if err := server.PublishAsync([]byte("alice"), []byte("p"), false, func(Published, error) { panic("done went wrong") }); err != nil {
		t.Errorf("PublishAsync with a panicking done: %v", err)
	}
	if !containsAll(logged.String(), "panic in PublishAsync completion", "done went wrong") {
		t.Errorf("log: %q", logged.String())
	}
	if got := readText(t, conn); got != "p" {
		t.Errorf("received %q", got)
	}

	// done may use the server, Stop included (it runs once PublishAsync let go of the server).
	var inside []error
	err := server.PublishAsync([]byte("alice"), []byte("q"), false, func(p Published, err error) {
		_, publishErr := server.PublishWithOffset([]byte("alice"), []byte("from done"), false)
		inside = append(inside, err, publishErr, server.Stop())
	})
	if err != nil || len(inside) != 3 || inside[0] != nil || inside[1] != nil || inside[2] != nil {
		t.Fatalf("PublishAsync: %v; inside done: %v", err, inside)
	}
	select {
	case <-server.Done():
	default:
		t.Error("Stop inside done did not stop the server")
	}
	if err := server.PublishAsync([]byte("alice"), []byte("late"), false, c.done); !errors.Is(err, ErrStopped) {
		t.Errorf("after Stop: %v, want ErrStopped", err)
	}
	if c.count() != 2 {
		t.Errorf("%d calls, want 2", c.count())
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close()
	return listener.Addr().(*net.TCPAddr).Port
}

func TestRedisSettingsAreChecked(t *testing.T) {
	assertStartFails(t, "not a redis URL", Config{RedisURL: "http://127.0.0.1:6379"}, ErrInvalidArgument, "Config.RedisURL")
	assertStartFails(t, "timeout under 10ms", Config{RedisURL: fmt.Sprintf("redis://127.0.0.1:%d", freePort(t)), RedisTimeout: 5 * time.Millisecond},
		ErrInvalidArgument, "Config.RedisTimeout")
	assertStartFails(t, "negative timeout", Config{RedisTimeout: -time.Second}, ErrInvalidArgument, "Config.RedisTimeout")
	err := assertStartFails(t, "URL with a password", Config{RedisURL: "redis://:hunter2@127.0.0.1:6379/notadb"}, ErrInvalidArgument, "Config.RedisURL")
	if err != nil && strings.Contains(err.Error(), "hunter2") {
		t.Errorf("the error shows the URL's password: %v", err)
	}
}

func TestAnUnreachableRedisMakesPublishesUnavailableWithinTheTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	// Nothing listens there: every connect is refused.
	server := startServer(t, Config{RedisURL: fmt.Sprintf("redis://127.0.0.1:%d", freePort(t)), RedisTimeout: timeout, HistoryMaxMessages: 10})
	if n, err := server.Publish([]byte("alice"), []byte("queued"), false); n != 0 || err != nil {
		t.Errorf("Publish with Redis: %d %v, want 0 (only queued)", n, err)
	}
	for i := 0; i < 2; i++ {
		started := time.Now()
		if _, err := server.PublishWait([]byte("alice"), []byte("x"), false, 5*time.Second); !errors.Is(err, ErrUnavailable) {
			t.Errorf("PublishWait %d: %v, want ErrUnavailable", i, err)
		}
		if elapsed := time.Since(started); elapsed > timeout+time.Second {
			t.Errorf("PublishWait %d took %v", i, elapsed)
		}
	}
	// Down for longer than the timeout by now: refused at once, done never called.
	c := newCompletions()
	if err := server.PublishAsync([]byte("alice"), []byte("x"), false, c.done); !errors.Is(err, ErrUnavailable) {
		t.Errorf("PublishAsync: %v, want ErrUnavailable", err)
	}
	started := time.Now()
	if err := server.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if elapsed := time.Since(started); elapsed > 3*time.Second {
		t.Errorf("Stop took %v", elapsed)
	}
	if c.count() != 0 {
		t.Errorf("a refused publish completed")
	}
}

// redisServer is a throwaway redis-server on a free port, without persistence.
type redisServer struct {
	cmd  *exec.Cmd
	port int
	url  string
}

// startRedis starts redis-server for the test (killed when it ends). Skipped when redis-server is
// not on PATH, unless WSPUSH_REQUIRE_REDIS=1, which makes that a failure.
func startRedis(t *testing.T) *redisServer {
	t.Helper()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("WSPUSH_REQUIRE_REDIS") == "1" {
			t.Fatalf("WSPUSH_REQUIRE_REDIS=1 but redis-server is not on PATH: %v", err)
		}
		t.Skip("redis-server is not on PATH (WSPUSH_REQUIRE_REDIS=1 makes this a failure)")
	}
	for attempt := 0; attempt < 3; attempt++ {
		port := freePort(t)
		cmd := exec.Command(path, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir())
		if err := cmd.Start(); err != nil {
			t.Fatalf("redis-server: %v", err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		redis := &redisServer{cmd: cmd, port: port, url: fmt.Sprintf("redis://127.0.0.1:%d", port)}
		t.Cleanup(func() {
			cmd.Process.Kill()
			<-exited
		})
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			select {
			case <-exited:
				deadline = time.Time{} // e.g. the port was taken meanwhile: try another
				continue
			default:
			}
			if reply, err := redisCommand(port, "PING"); err == nil && reply == "PONG" {
				return redis
			}
			time.Sleep(20 * time.Millisecond)
		}
		cmd.Process.Kill()
	}
	t.Fatal("redis-server did not start (3 attempts)")
	return nil
}

// kill ends redis-server with SIGKILL and waits until it is gone.
func (r *redisServer) kill(t *testing.T) {
	t.Helper()
	if err := r.cmd.Process.Kill(); err != nil {
		t.Fatalf("kill redis-server: %v", err)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, err := redisCommand(r.port, "PING"); err != nil {
			return
		}
	}
	t.Fatal("redis-server still answers after SIGKILL")
}

// redisCommand sends one command on a fresh connection and returns the reply (a minimal RESP
// client: simple strings and bulk strings as string, integers as int64, arrays as []any).
func redisCommand(port int, args ...string) (any, error) {
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 2*time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	var request strings.Builder
	fmt.Fprintf(&request, "*%d\r\n", len(args))
	for _, arg := range args {
		fmt.Fprintf(&request, "$%d\r\n%s\r\n", len(arg), arg)
	}
	if _, err := io.WriteString(conn, request.String()); err != nil {
		return nil, err
	}
	return readReply(bufio.NewReader(conn))
}

func readReply(reader *bufio.Reader) (any, error) {
	line, err := reader.ReadString('\n')
	if err != nil {
		return nil, err
	}
	if len(line) < 3 || !strings.HasSuffix(line, "\r\n") {
		return nil, fmt.Errorf("short reply %q", line)
	}
	body := line[1 : len(line)-2]
	switch line[0] {
	case '+':
		return body, nil
	case '-':
		return nil, fmt.Errorf("redis: %s", body)
	case ':':
		return strconv.ParseInt(body, 10, 64)
	case '$':
		length, err := strconv.Atoi(body)
		if err != nil || length < 0 {
			return nil, err
		}
		data := make([]byte, length+2)
		if _, err := io.ReadFull(reader, data); err != nil {
			return nil, err
		}
		return string(data[:length]), nil
	case '*':
		count, err := strconv.Atoi(body)
		if err != nil {
			return nil, err
		}
		items := make([]any, count)
		for i := range items {
			if items[i], err = readReply(reader); err != nil {
				return nil, err
			}
		}
		return items, nil
	}
	return nil, fmt.Errorf("unexpected reply %q", line)
}

// waitSubscribed waits (bounded) until nodes nodes subscribe to the user's sharded channel
// (src/redis/keys.rs names it wspush:{u:USER}:c). Watched in Redis rather than by publishing to
// the user: a probe would take offsets.
func waitSubscribed(t *testing.T, redis *redisServer, user string, nodes int64) {
	t.Helper()
	channel := "wspush:{u:" + user + "}:c"
	var last any
	deadline := time.Now().Add(3 * time.Second)
	for {
		reply, err := redisCommand(redis.port, "PUBSUB", "SHARDNUMSUB", channel)
		if err != nil {
			t.Fatalf("PUBSUB SHARDNUMSUB: %v", err)
		}
		last = reply
		if items, ok := reply.([]any); ok && len(items) == 2 && items[0] == channel && items[1] == nodes {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d node(s) not subscribed to %s within 3s: %v", nodes, channel, last)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTwoNodesShareAUserThroughRedisUntilRedisDies(t *testing.T) {
	redis := startRedis(t)
	const timeout = 500 * time.Millisecond
	config := Config{Handler: HandlerFuncs{Upgrade: queryUserAuth}, RedisURL: redis.url, RedisTimeout: timeout, HistoryMaxMessages: 100}
	nodeA := startServer(t, config)
	nodeB := startServer(t, config)
	publishWait := func(node *Server, user, msg string, binary bool) Published {
		t.Helper()
		published, err := node.PublishWait([]byte(user), []byte(msg), binary, 2*time.Second)
		if err != nil {
			t.Fatalf("PublishWait(%q): %v", msg, err)
		}
		return published
	}

	client := mustDial(t, nodeB, "user=alice")
	if client.Subprotocol() != "" {
		t.Fatalf("subprotocol %q: want a raw client", client.Subprotocol())
	}
	waitSubscribed(t, redis, "alice", 1)

	// Published on A, delivered by B, counted in nodes, numbered by Redis.
	if got := publishWait(nodeA, "alice", "hello from A", false); got != (Published{Delivered: 1, Offset: 1}) {
		t.Errorf("from A: %+v, want 1 node, offset 1", got)
	}
	if got := readText(t, client); got != "hello from A" {
		t.Errorf("received %q", got)
	}
	if got := publishWait(nodeB, "alice", "\x00from B\xff", true); got != (Published{Delivered: 1, Offset: 2}) {
		t.Errorf("from B: %+v", got)
	}
	if kind, msg := readMessage(t, client); kind != websocket.BinaryMessage || string(msg) != "\x00from B\xff" {
		t.Errorf("received %d %q", kind, msg)
	}
	if got := publishWait(nodeB, "bob", "away", false); got != (Published{Delivered: 0, Offset: 1}) {
		t.Errorf("bob: %+v, want no node and offset 1", got)
	}

	c := newCompletions()
	if err := nodeA.PublishAsync([]byte("alice"), []byte("async from A"), false, c.done); err != nil {
		t.Fatalf("PublishAsync: %v", err)
	}
	if got := c.waitOne(t, 2*time.Second); got.err != nil || got.published != (Published{Delivered: 1, Offset: 3}) {
		t.Errorf("PublishAsync outcome %+v", got)
	}
	if got := readText(t, client); got != "async from A" {
		t.Errorf("received %q", got)
	}

	// Plain Publish only queues (0), and the message still arrives, numbered.
	if n, err := nodeA.Publish([]byte("alice"), []byte("queued"), false); n != 0 || err != nil {
		t.Errorf("Publish: %d %v, want 0 (queued)", n, err)
	}
	if got := readText(t, client); got != "queued" {
		t.Errorf("received %q", got)
	}
	if got := publishWait(nodeA, "alice", "next", false); got != (Published{Delivered: 1, Offset: 5}) {
		t.Errorf("after a plain Publish: %+v", got)
	}
	readText(t, client)

	// A second connection on A: two nodes hold alice.
	second := mustDial(t, nodeA, "user=alice")
	waitSubscribed(t, redis, "alice", 2)
	if got := publishWait(nodeB, "alice", "both", false); got != (Published{Delivered: 2, Offset: 6}) {
		t.Errorf("two nodes: %+v", got)
	}
	if a, b := readText(t, second), readText(t, client); a != "both" || b != "both" {
		t.Errorf("received %q and %q", a, b)
	}
	second.Close()

	redis.kill(t)

	// At once, before the node can know Redis is gone for good: the publish is accepted and
	// its completion reports ErrUnavailable once the Redis timeout has passed.
	lost := newCompletions()
	started := time.Now()
	if err := nodeA.PublishAsync([]byte("alice"), []byte("lost (async)"), false, lost.done); err != nil {
		t.Fatalf("PublishAsync right after the kill: %v (want it accepted)", err)
	}
	if _, err := nodeA.PublishWait([]byte("alice"), []byte("lost (wait)"), false, 5*time.Second); !errors.Is(err, ErrUnavailable) {
		t.Errorf("PublishWait after the kill: %v, want ErrUnavailable", err)
	}
	if elapsed := time.Since(started); elapsed > timeout+time.Second {
		t.Errorf("PublishWait took %v, want about the Redis timeout (%v)", elapsed, timeout)
	}
	if got := lost.waitOne(t, timeout+time.Second); !errors.Is(got.err, ErrUnavailable) || got.published != (Published{}) {
		t.Errorf("completion after the kill: %+v, want ErrUnavailable", got)
	}

	// Down for longer than the timeout: refused at once, done never called (publishes accepted
	// meanwhile still complete with ErrUnavailable).
	var refused error
	var accepted []*completions
	refusedDone := newCompletions()
	for deadline := time.Now().Add(3 * time.Second); refused == nil && time.Now().Before(deadline); {
		attempt := newCompletions()
		if err := nodeA.PublishAsync([]byte("alice"), []byte("refused"), false, attempt.done); err != nil {
			refused, refusedDone = err, attempt
		} else {
			accepted = append(accepted, attempt)
			time.Sleep(50 * time.Millisecond)
		}
	}
	if !errors.Is(refused, ErrUnavailable) {
		t.Fatalf("PublishAsync while Redis is down: %v, want ErrUnavailable at once", refused)
	}
	for _, attempt := range accepted {
		if got := attempt.waitOne(t, timeout+time.Second); !errors.Is(got.err, ErrUnavailable) {
			t.Errorf("an accepted publish completed with %+v, want ErrUnavailable", got)
		}
	}
	started = time.Now()
	if _, err := nodeB.PublishWait([]byte("alice"), []byte("refused"), false, 5*time.Second); !errors.Is(err, ErrUnavailable) {
		t.Errorf("PublishWait while Redis is down: %v, want ErrUnavailable", err)
	}
	if elapsed := time.Since(started); elapsed > timeout+time.Second {
		t.Errorf("PublishWait took %v", elapsed)
	}

	// Each completion ran exactly once; nothing published after the kill arrived.
	time.Sleep(200 * time.Millisecond)
	if lost.count() != 1 || refusedDone.count() != 0 {
		t.Errorf("completions: lost %d (want 1), refused %d (want 0)", lost.count(), refusedDone.count())
	}
	for _, attempt := range accepted {
		if attempt.count() != 1 {
			t.Errorf("an accepted publish completed %d times", attempt.count())
		}
	}
	client.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, msg, err := client.ReadMessage(); err == nil {
		t.Errorf("received %q after Redis died", msg)
	}

	started = time.Now()
	if err := nodeA.Stop(); err != nil {
		t.Errorf("Stop A: %v", err)
	}
	if err := nodeB.Stop(); err != nil {
		t.Errorf("Stop B: %v", err)
	}
	if elapsed := time.Since(started); elapsed > 5*time.Second {
		t.Errorf("stopping took %v with Redis dead", elapsed)
	}
}

// A completion on the Redis thread may call the server (Stop only starts the stop there), and
// PublishWait from it is refused instead of waiting for its own thread.
func TestPublishAsyncCompletionOnTheRedisThreadMayUseTheServer(t *testing.T) {
	redis := startRedis(t)
	server := startServer(t, Config{RedisURL: redis.url, HistoryMaxMessages: 10})
	type inside struct {
		waitErr, publishErr, stopErr error
		published                    Published
	}
	got := make(chan inside, 1)
	err := server.PublishAsync([]byte("alice"), []byte("a"), false, func(p Published, err error) {
		var in inside
		in.published = p
		_, in.waitErr = server.PublishWait([]byte("alice"), []byte("b"), false, time.Second)
		in.publishErr = server.PublishAsync([]byte("alice"), []byte("c"), false, func(Published, error) {})
		in.stopErr = server.Stop()
		got <- in
	})
	if err != nil {
		t.Fatalf("PublishAsync: %v", err)
	}
	select {
	case in := <-got:
		if in.published != (Published{Delivered: 0, Offset: 1}) {
			t.Errorf("outcome %+v", in.published)
		}
		if !errors.Is(in.waitErr, ErrInCallback) {
			t.Errorf("PublishWait inside the completion: %v, want ErrInCallback", in.waitErr)
		}
		if in.publishErr != nil || in.stopErr != nil {
			t.Errorf("PublishAsync / Stop inside the completion: %v / %v", in.publishErr, in.stopErr)
		}
	case <-time.After(testTimeout):
		t.Fatal("completion not called")
	}
	select {
	case <-server.Done():
	case <-time.After(testTimeout):
		t.Fatal("Stop started inside the completion did not finish")
	}
}
