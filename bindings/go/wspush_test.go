package wspush

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// upgradeSeen is what an upgrade handler read from its Request.
type upgradeSeen struct {
	method, path, rawQuery, peer, client string
	ticket                               ConnID
	headers                              []HeaderField
}

func TestTokenAuthAcceptsKnownTokensAndRejectsOthers(t *testing.T) {
	tokens := map[string]string{"t-alice": "alice"}
	seen := make(chan upgradeSeen, 1)
	rec := &recorder{}
	server := startServer(t, Config{Handler: HandlerFuncs{
		Upgrade: func(s *Server, r *Request) {
			switch token := r.Query("token"); {
			case token == "undecided":
				return // deciding nothing must reject with 401
			case tokens[token] != "":
				select {
				case seen <- upgradeSeen{r.Method(), r.Path(), r.RawQuery(), r.Peer(), r.Header("x-mail-client"), r.Ticket(), r.Headers()}:
				default:
				}
				if err := r.Accept([]byte(tokens[token])); err != nil {
					t.Errorf("Accept: %v", err)
				}
			default:
				_ = r.Reject(403)
			}
		},
		Open: rec.open,
	}})

	conn, _, err := dial(server, "token=t-alice&x=1", http.Header{"X-Mail-Client": {"webmail/2"}})
	if err != nil {
		t.Fatalf("dial with a valid token: %v", err)
	}
	defer conn.Close()
	got := <-seen
	if got.method != "GET" || got.path != "/ws" || got.rawQuery != "token=t-alice&x=1" || got.client != "webmail/2" {
		t.Errorf("request seen as %+v", got)
	}
	if !strings.HasPrefix(got.peer, "127.0.0.1:") || got.peer != conn.LocalAddr().String() {
		t.Errorf("peer %q, want the client's address %s", got.peer, conn.LocalAddr())
	}
	var sawUpgradeHeader bool
	for _, header := range got.headers {
		sawUpgradeHeader = sawUpgradeHeader || strings.EqualFold(header.Name, "Upgrade") && strings.EqualFold(header.Value, "websocket")
	}
	if !sawUpgradeHeader {
		t.Errorf("Headers() lacks Upgrade: websocket: %v", got.headers)
	}
	// The ticket becomes the connection's ID.
	if opens := rec.waitOpens(t, 1); opens[0].conn != got.ticket || opens[0].user != "alice" || got.ticket == 0 {
		t.Errorf("open %+v, want conn = ticket %d and user alice", opens[0], got.ticket)
	}

	delivered, err := server.Publish([]byte("alice"), []byte("you have mail"), false)
	if err != nil || delivered != 1 {
		t.Fatalf("Publish = %d, %v; want 1, nil", delivered, err)
	}
	if msg := readText(t, conn); msg != "you have mail" {
		t.Errorf("client got %q", msg)
	}

	if status := dialStatus(t, server, "token=wrong"); status != 403 {
		t.Errorf("wrong token: HTTP %d, want 403", status)
	}
	if status := dialStatus(t, server, ""); status != 403 {
		t.Errorf("no token: HTTP %d, want 403", status)
	}
	if status := dialStatus(t, server, "token=undecided"); status != 401 {
		t.Errorf("undecided: HTTP %d, want 401", status)
	}
}

func TestNilHandlerRejectsEveryUpgradeWith401(t *testing.T) {
	server := startServer(t, Config{})
	if status := dialStatus(t, server, "user=alice"); status != 401 {
		t.Errorf("HTTP %d, want 401", status)
	}
}

func TestDeferredUpgradeIsDecidedFromAnotherGoroutine(t *testing.T) {
	release := make(chan struct{})
	server := startServer(t, Config{Handler: HandlerFuncs{
		Upgrade: func(s *Server, r *Request) {
			token := r.Query("token")
			ticket, err := r.Defer()
			if err != nil {
				t.Errorf("Defer: %v", err)
				return
			}
			if ticket != r.Ticket() {
				t.Errorf("Defer returned ticket %d, Ticket() is %d", ticket, r.Ticket())
			}
			// The decision comes later from another goroutine, like a session-store lookup.
			go func() {
				<-release
				var err error
				if user, ok := strings.CutPrefix(token, "valid-"); ok {
					err = s.AcceptUpgrade(ticket, []byte(user))
				} else {
					err = s.RejectUpgrade(ticket, 403)
				}
				if err != nil {
					t.Errorf("deciding ticket %d: %v", ticket, err)
				}
			}()
		},
	}})

	type dialResult struct {
		conn   *websocket.Conn
		status int
		err    error
	}
	dialAsync := func(query string) chan dialResult {
		out := make(chan dialResult, 1)
		go func() {
			conn, resp, err := dial(server, query, nil)
			result := dialResult{conn: conn, err: err}
			if resp != nil {
				result.status = resp.StatusCode
			}
			out <- result
		}()
		return out
	}
	accepted := dialAsync("token=valid-carol")
	rejected := dialAsync("token=forged")
	// Both wait as handshakes until the goroutines decide.
	waitForStats(t, server, "two pending handshakes", func(s Stats) bool { return s.Handshakes == 2 })
	close(release)

	good := <-accepted
	if good.err != nil {
		t.Fatalf("deferred accept: %v (HTTP %d)", good.err, good.status)
	}
	defer good.conn.Close()
	if delivered, err := server.Publish([]byte("carol"), []byte("hi carol"), false); err != nil || delivered != 1 {
		t.Fatalf("Publish = %d, %v", delivered, err)
	}
	if msg := readText(t, good.conn); msg != "hi carol" {
		t.Errorf("got %q", msg)
	}
	if bad := <-rejected; bad.err == nil || bad.status != 403 {
		t.Errorf("deferred reject: err %v, HTTP %d; want 403", bad.err, bad.status)
	}
	if err := server.AcceptUpgrade(ConnID(1)<<40, []byte("x")); !errors.Is(err, ErrNotFound) {
		t.Errorf("AcceptUpgrade of an unknown ticket: %v, want ErrNotFound", err)
	}
}

func TestRequestIsInertOutsideItsHandler(t *testing.T) {
	kept := make(chan *Request, 1)
	fromOtherGoroutine := make(chan error, 1)
	server := startServer(t, Config{Handler: HandlerFuncs{Upgrade: func(s *Server, r *Request) {
		// While the handler runs, another goroutine must not reach the request.
		done := make(chan error)
		go func() { done <- r.Reject(403) }()
		fromOtherGoroutine <- <-done
		kept <- r
		_ = r.Accept([]byte("dave"))
	}}})
	mustDial(t, server, "") // accepted: the other goroutine's Reject had no effect
	if err := <-fromOtherGoroutine; err != ErrRequestOutsideHandler {
		t.Errorf("Reject from another goroutine: %v, want ErrRequestOutsideHandler", err)
	}
	r := <-kept
	if err := r.Accept([]byte("eve")); err != ErrRequestOutsideHandler {
		t.Errorf("Accept after the handler: %v", err)
	}
	if r.Path() != "" || r.Query("x") != "" || r.Ticket() != 0 || r.Headers() != nil {
		t.Error("a Request answers outside its handler")
	}
	if _, err := r.Defer(); err != ErrRequestOutsideHandler {
		t.Errorf("Defer: %v", err)
	}
}

func TestPublishReachesEveryTabOfTheUserOnly(t *testing.T) {
	rec := &recorder{}
	server := startServer(t, Config{Handler: HandlerFuncs{Upgrade: queryUserAuth, Open: rec.open}})
	tabs := []*websocket.Conn{mustDial(t, server, "user=alice"), mustDial(t, server, "user=alice"), mustDial(t, server, "user=alice")}
	bob := mustDial(t, server, "user=bob")
	rec.waitOpens(t, 4)

	delivered, err := server.Publish([]byte("alice"), []byte(`{"new_mail":1}`), false)
	if err != nil || delivered != 3 {
		t.Fatalf("Publish = %d, %v; want 3 tabs", delivered, err)
	}
	for i, tab := range tabs {
		if msg := readText(t, tab); msg != `{"new_mail":1}` {
			t.Errorf("tab %d got %q", i, msg)
		}
	}
	if delivered, _ := server.Publish([]byte("bob"), []byte("for bob"), false); delivered != 1 {
		t.Errorf("Publish to bob = %d", delivered)
	}
	if msg := readText(t, bob); msg != "for bob" {
		t.Errorf("bob's first message is %q: alice's leaked", msg)
	}
	if delivered, err := server.Publish([]byte("nobody"), []byte("x"), false); err != nil || delivered != 0 {
		t.Errorf("Publish to an absent user = %d, %v; want 0, nil", delivered, err)
	}
	stats, _ := server.Stats()
	if stats.Connections != 4 || stats.Users != 2 {
		t.Errorf("stats: %d connections, %d users; want 4, 2", stats.Connections, stats.Users)
	}
}

func TestConcurrentPublishersDeliverEachMessageOnceInPerGoroutineOrder(t *testing.T) {
	const publishers, perPublisher = 16, 250
	rec := &recorder{}
	server := startServer(t, Config{Handler: HandlerFuncs{Upgrade: queryUserAuth, Open: rec.open}})
	tabs := []*websocket.Conn{mustDial(t, server, "user=seq"), mustDial(t, server, "user=seq")}
	rec.waitOpens(t, 2)

	// Each tab reads everything concurrently with the publishers.
	type tally struct {
		next   [publishers]int
		errors []string
	}
	results := make([]chan tally, len(tabs))
	for i, tab := range tabs {
		results[i] = make(chan tally, 1)
		go func(tab *websocket.Conn, out chan tally) {
			var got tally
			for n := 0; n < publishers*perPublisher; n++ {
				tab.SetReadDeadline(time.Now().Add(testTimeout))
				_, msg, err := tab.ReadMessage()
				if err != nil {
					got.errors = append(got.errors, err.Error())
					break
				}
				var g, seq int
				if _, err := fmt.Sscanf(string(msg), "%d:%d", &g, &seq); err != nil || g < 0 || g >= publishers {
					got.errors = append(got.errors, "bad message "+string(msg))
					continue
				}
				// Exactly once and in order: each publisher's next message is the expected one.
				if seq != got.next[g] {
					got.errors = append(got.errors, fmt.Sprintf("publisher %d: got %d, want %d", g, seq, got.next[g]))
				}
				got.next[g] = seq + 1
			}
			out <- got
		}(tab, results[i])
	}

	var wg sync.WaitGroup
	start := make(chan struct{})
	for g := 0; g < publishers; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			<-start
			for seq := 0; seq < perPublisher; seq++ {
				if delivered, err := server.Publish([]byte("seq"), []byte(fmt.Sprintf("%d:%d", g, seq)), false); err != nil || delivered != 2 {
					t.Errorf("Publish %d:%d = %d, %v", g, seq, delivered, err)
					return
				}
			}
		}(g)
	}
	close(start)
	wg.Wait()
	for i, result := range results {
		got := <-result
		if len(got.errors) > 0 {
			t.Errorf("tab %d: %d problems, first: %v", i, len(got.errors), got.errors[0])
		}
		for g, next := range got.next {
			if next != perPublisher {
				t.Errorf("tab %d: publisher %d delivered %d of %d", i, g, next, perPublisher)
			}
		}
	}
	if stats, _ := server.Stats(); stats.PublishesTotal != publishers*perPublisher {
		t.Errorf("PublishesTotal = %d", stats.PublishesTotal)
	}
}

func TestHandlersMayPublishSendAndCloseFromInsideCallbacks(t *testing.T) {
	server := startServer(t, Config{Handler: HandlerFuncs{
		Upgrade: queryUserAuth,
		Message: func(s *Server, conn ConnID, user []byte, msg []byte, binary bool) {
			switch text := string(msg); {
			case text == "bye":
				if err := s.Close(conn, 4000, "see you"); err != nil {
					t.Errorf("Close in callback: %v", err)
				}
			default:
				// Every tab of the user hears it, and the sender gets a receipt.
				if _, err := s.Publish(user, append([]byte("echo:"), msg...), binary); err != nil {
					t.Errorf("Publish in callback: %v", err)
				}
				if err := s.Send(conn, []byte("receipt:"+text), false); err != nil {
					t.Errorf("Send in callback: %v", err)
				}
			}
		},
	}})
	conn := mustDial(t, server, "user=frank")
	other := mustDial(t, server, "user=frank")
	writeText(t, conn, "hello")
	if got := readText(t, conn); got != "echo:hello" {
		t.Errorf("sender got %q first", got)
	}
	if got := readText(t, conn); got != "receipt:hello" {
		t.Errorf("sender got %q second", got)
	}
	if got := readText(t, other); got != "echo:hello" {
		t.Errorf("other tab got %q", got)
	}
	writeText(t, conn, "bye")
	if code, text, err := readClose(conn); code != 4000 || text != "see you" {
		t.Errorf("after bye: %d %q %v, want close 4000 \"see you\"", code, text, err)
	}
}

func TestPanickingHandlersAreRecoveredLoggedAndRejectWith500(t *testing.T) {
	var logged syncBuffer
	server := startServer(t, Config{
		ErrorLog: newLogger(&logged),
		Handler: HandlerFuncs{
			Upgrade: func(s *Server, r *Request) {
				if r.Query("user") == "boom" {
					_ = r.Accept([]byte("boom")) // the panic must override this
					panic("auth backend exploded")
				}
				queryUserAuth(s, r)
			},
			Message: func(s *Server, conn ConnID, user []byte, msg []byte, binary bool) {
				if string(msg) == "panic" {
					var m map[string]int
					m["nil map"]++ // a real runtime panic
				}
				_ = s.Send(conn, msg, binary)
			},
		},
	})
	if status := dialStatus(t, server, "user=boom"); status != 500 {
		t.Errorf("panicking upgrade: HTTP %d, want 500", status)
	}
	conn := mustDial(t, server, "user=grace")
	writeText(t, conn, "panic")
	writeText(t, conn, "still alive")
	if got := readText(t, conn); got != "still alive" {
		t.Errorf("after a panic the connection got %q", got)
	}
	if !containsAll(logged.String(), "panic in upgrade handler", "auth backend exploded", "panic in message handler", "nil map") {
		t.Errorf("log lacks the panics:\n%s", logged.String())
	}
	if stats, _ := server.Stats(); stats.Connections != 1 {
		t.Errorf("%d connections after panics, want 1", stats.Connections)
	}
}

func TestStopClosesOpenConnectionsWith1001AndReportsEachClose(t *testing.T) {
	rec := &recorder{}
	server, err := Start(Config{
		Listen: "127.0.0.1:0", Threads: 2, DrainTimeout: 2 * time.Second, CloseTimeout: time.Second,
		Handler: HandlerFuncs{Upgrade: queryUserAuth, Open: rec.open, Close: rec.close},
	})
	if err != nil {
		t.Fatal(err)
	}
	clients := []*websocket.Conn{mustDial(t, server, "user=ann"), mustDial(t, server, "user=ann"), mustDial(t, server, "user=ben")}
	opens := rec.waitOpens(t, 3)
	closeCodes := make(chan int, len(clients))
	for _, client := range clients {
		go func(client *websocket.Conn) {
			code, _, _ := readClose(client)
			closeCodes <- code
		}(client)
	}

	if err := server.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	for range clients {
		if code := <-closeCodes; code != 1001 {
			t.Errorf("client saw close code %d, want 1001", code)
		}
	}
	// Stop returned: every close callback has already run.
	_, closes := rec.snapshot()
	if len(closes) != len(opens) {
		t.Fatalf("%d close callbacks for %d opens", len(closes), len(opens))
	}
	closed := map[ConnID]event{}
	for _, c := range closes {
		closed[c.conn] = c
	}
	for _, o := range opens {
		if c, ok := closed[o.conn]; !ok || c.code != 1001 || c.user != o.user {
			t.Errorf("open %+v closed as %+v, want code 1001", o, c)
		}
	}

	// A second Stop, and calls after it, are safe.
	if err := server.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	select {
	case <-server.Done():
	default:
		t.Error("Done not closed after Stop")
	}
	if _, err := server.Publish([]byte("ann"), []byte("late"), false); !errors.Is(err, ErrStopped) {
		t.Errorf("Publish after Stop: %v, want ErrStopped", err)
	}
	if err := server.Send(opens[0].conn, []byte("late"), false); !errors.Is(err, ErrStopped) {
		t.Errorf("Send after Stop: %v, want ErrStopped", err)
	}
	stats, err := server.Stats()
	if err != nil || stats.Connections != 0 || stats.UpgradesTotal != 3 {
		t.Errorf("final stats %+v, %v; want 0 connections, 3 upgrades", stats, err)
	}
}

func TestStopFromInsideACallbackFinishesInTheBackground(t *testing.T) {
	rec := &recorder{}
	server, err := Start(Config{
		Listen: "127.0.0.1:0", Threads: 2, DrainTimeout: time.Second, CloseTimeout: 500 * time.Millisecond,
		Handler: HandlerFuncs{
			Upgrade: queryUserAuth,
			Close:   rec.close,
			Message: func(s *Server, conn ConnID, user []byte, msg []byte, binary bool) {
				if err := s.Stop(); err != nil { // must not wait for its own I/O thread
					t.Errorf("Stop in callback: %v", err)
				}
			},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	conn := mustDial(t, server, "user=hal")
	writeText(t, conn, "shut down please")
	if code, _, err := readClose(conn); code != 1001 {
		t.Errorf("client got %d %v, want close 1001", code, err)
	}
	select {
	case <-server.Done():
	case <-time.After(testTimeout):
		t.Fatal("server not released after Stop in a callback")
	}
	if _, closes := rec.snapshot(); len(closes) != 1 || closes[0].code != 1001 {
		t.Errorf("closes %+v, want one with 1001", closes)
	}
	if err := server.Stop(); err != nil {
		t.Errorf("Stop after the background stop: %v", err)
	}
}

func TestConcurrentStopAndPublishAreSafe(t *testing.T) {
	// The client never reads, so Stop lingers CloseTimeout for it.
	server, err := Start(Config{Listen: "127.0.0.1:0", Threads: 2, CloseTimeout: 100 * time.Millisecond,
		Handler: HandlerFuncs{Upgrade: queryUserAuth}})
	if err != nil {
		t.Fatal(err)
	}
	mustDial(t, server, "user=ivy")
	var wg sync.WaitGroup
	var published, stopped atomic.Int64
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				_, err := server.Publish([]byte("ivy"), []byte("x"), false)
				if errors.Is(err, ErrStopped) {
					stopped.Add(1)
					return
				}
				if err != nil {
					t.Errorf("Publish: %v", err)
					return
				}
				published.Add(1)
			}
		}()
	}
	waitFor(t, "some publishes", func() bool { return published.Load() > 100 })
	for g := 0; g < 3; g++ {
		wg.Add(1)
		go func() { defer wg.Done(); _ = server.Stop() }()
	}
	wg.Wait()
	if stopped.Load() != 4 {
		t.Errorf("%d publishers saw ErrStopped, want 4", stopped.Load())
	}
}

func TestStatsCountWhatHappened(t *testing.T) {
	server := startServer(t, Config{Handler: HandlerFuncs{
		Upgrade: queryUserAuth,
		Message: func(s *Server, conn ConnID, user []byte, msg []byte, binary bool) {},
	}})
	before, err := server.Stats()
	if err != nil {
		t.Fatal(err)
	}
	// The connection cap in force is set at start (MaxConnections, lowered to RLIMIT_NOFILE).
	if before.MaxConnections == 0 {
		t.Errorf("fresh server stats %+v: no connection cap", before)
	}
	capInForce := before.MaxConnections
	before.MaxConnections = 0
	if before != (Stats{}) {
		t.Errorf("fresh server stats %+v, want zero", before)
	}
	a := mustDial(t, server, "user=a")
	b := mustDial(t, server, "user=b")
	mustDial(t, server, "user=b")
	dialStatus(t, server, "")
	writeText(t, a, "one")
	writeText(t, b, "two")
	server.Publish([]byte("b"), []byte("to b"), false)
	server.Publish([]byte("nobody"), []byte("lost"), false)
	server.Broadcast([]byte("all"), false)
	stats := waitForStats(t, server, "messages in and out", func(s Stats) bool {
		return s.MessagesInTotal == 2 && s.MessagesOutTotal == 5
	})
	want := Stats{
		Connections: 3, Users: 2, AcceptedTotal: 4, UpgradesTotal: 3, RejectedTotal: 1,
		MessagesInTotal: 2, MessagesOutTotal: 5, PublishesTotal: 2, BroadcastsTotal: 1,
		MaxConnections: capInForce,
	}
	stats.BytesOutTotal, stats.PingsTotal = 0, 0 // depend on framing and timing
	if stats != want {
		t.Errorf("stats\n got %+v\nwant %+v", stats, want)
	}
}

func TestBinaryAndTextMessagesKeepTheirType(t *testing.T) {
	type received struct {
		msg    []byte
		binary bool
	}
	got := make(chan received, 4)
	server := startServer(t, Config{Handler: HandlerFuncs{
		Upgrade: queryUserAuth,
		Message: func(s *Server, conn ConnID, user []byte, msg []byte, binary bool) { got <- received{msg, binary} },
	}})
	conn := mustDial(t, server, "user=jo")
	payload := []byte{0x00, 0xff, 0x80, 'x', 0x00}

	server.Publish([]byte("jo"), payload, true)
	server.Publish([]byte("jo"), []byte("héllo"), false)
	server.Broadcast(payload[:2], true)
	for _, want := range []struct {
		kind int
		msg  []byte
	}{{websocket.BinaryMessage, payload}, {websocket.TextMessage, []byte("héllo")}, {websocket.BinaryMessage, payload[:2]}} {
		if kind, msg := readMessage(t, conn); kind != want.kind || !bytes.Equal(msg, want.msg) {
			t.Errorf("got type %d %x, want type %d %x", kind, msg, want.kind, want.msg)
		}
	}

	conn.WriteMessage(websocket.BinaryMessage, payload)
	conn.WriteMessage(websocket.TextMessage, []byte("text"))
	conn.WriteMessage(websocket.BinaryMessage, nil)
	for _, want := range []received{{payload, true}, {[]byte("text"), false}, {[]byte{}, true}} {
		select {
		case r := <-got:
			if r.binary != want.binary || !bytes.Equal(r.msg, want.msg) {
				t.Errorf("handler got binary=%v %x, want binary=%v %x", r.binary, r.msg, want.binary, want.msg)
			}
		case <-time.After(testTimeout):
			t.Fatal("message not received")
		}
	}
}

func TestCloseAndDisconnectUser(t *testing.T) {
	rec := &recorder{}
	server := startServer(t, Config{Handler: HandlerFuncs{Upgrade: queryUserAuth, Open: rec.open, Close: rec.close}})
	kim := mustDial(t, server, "user=kim")
	lee := []*websocket.Conn{mustDial(t, server, "user=lee"), mustDial(t, server, "user=lee")}
	opens := rec.waitOpens(t, 3)

	var kimConn ConnID
	for _, o := range opens {
		if o.user == "kim" {
			kimConn = o.conn
		}
	}
	if err := server.Close(kimConn, 4001, "session revoked"); err != nil {
		t.Fatal(err)
	}
	if code, text, err := readClose(kim); code != 4001 || text != "session revoked" {
		t.Errorf("kim got %d %q %v", code, text, err)
	}
	if n, err := server.DisconnectUser([]byte("lee"), 4002); err != nil || n != 2 {
		t.Errorf("DisconnectUser = %d, %v; want 2", n, err)
	}
	for _, conn := range lee {
		if code, _, err := readClose(conn); code != 4002 {
			t.Errorf("lee got %d %v", code, err)
		}
	}
	waitFor(t, "3 close callbacks", func() bool { _, closes := rec.snapshot(); return len(closes) == 3 })
	waitFor(t, "kim's connection to be gone", func() bool {
		return errors.Is(server.Send(kimConn, []byte("x"), false), ErrNotFound)
	})
}

func TestErrorsCarryResultCodesForErrorsIs(t *testing.T) {
	server := startServer(t, Config{MaxQueueBytes: 1024, Handler: HandlerFuncs{Upgrade: queryUserAuth}})
	cases := []struct {
		name string
		err  error
		want *Error
	}{
		{"empty user", second(server.Publish(nil, []byte("x"), false)), ErrInvalidUserID},
		{"long user", second(server.Publish(make([]byte, MaxUserIDLen+1), []byte("x"), false)), ErrInvalidUserID},
		{"user with NUL", second(server.Publish([]byte("ali\x00ce"), []byte("x"), false)), ErrInvalidUserID},
		{"too large", second(server.Publish([]byte("u"), make([]byte, 1025), false)), ErrMessageTooLarge},
		{"unknown conn", server.Send(ConnID(7)<<40, []byte("x"), false), ErrNotFound},
		{"bad close code", server.Close(ConnID(7)<<40, 999, ""), ErrInvalidCloseCode},
		{"huge close code", server.Close(ConnID(7)<<40, 70000, ""), ErrInvalidCloseCode},
		{"long reason", server.Close(ConnID(7)<<40, 1000, strings.Repeat("r", 124)), ErrInvalidCloseReason},
		{"bad status", server.RejectUpgrade(ConnID(7)<<40, 200), ErrInvalidStatus},
	}
	for _, c := range cases {
		if !errors.Is(c.err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, c.err, c.want)
			continue
		}
		var e *Error
		if !errors.As(c.err, &e) || e.Code != c.want.Code || e.Op == "" || !strings.Contains(e.Error(), e.Op) {
			t.Errorf("%s: %#v lacks its code or operation", c.name, c.err)
		}
	}
	if errors.Is(ErrNotFound, ErrStopped) {
		t.Error("different codes compare equal")
	}
	if ResultNotFound.String() == ResultStopped.String() || Result(9999).String() != "unknown result code" {
		t.Error("result descriptions are wrong")
	}
}

func second(_ int, err error) error { return err }

func TestStartRejectsBadConfigurations(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cases := []struct {
		name   string
		config Config
		want   *Error
	}{
		{"path without slash", Config{Listen: "127.0.0.1:0", Path: "ws"}, ErrInvalidArgument},
		{"negative threads", Config{Listen: "127.0.0.1:0", Threads: -1}, ErrInvalidArgument},
		{"too many threads", Config{Listen: "127.0.0.1:0", Threads: 256}, ErrInvalidArgument},
		{"negative timeout", Config{Listen: "127.0.0.1:0", PingInterval: -time.Second}, ErrInvalidArgument},
		{"tiny header limit", Config{Listen: "127.0.0.1:0", MaxHeaderBytes: 100}, ErrInvalidArgument},
		{"bad policy", Config{Listen: "127.0.0.1:0", SlowConsumer: 7}, ErrInvalidArgument},
		{"not host:port", Config{Listen: "localhost"}, ErrInvalidAddress},
		{"port in use", Config{Listen: taken.Addr().String()}, ErrBindFailed},
	}
	for _, c := range cases {
		server, err := Start(c.config)
		if err == nil {
			server.Stop()
		}
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
}

func TestConfigLimitsAreApplied(t *testing.T) {
	server := startServer(t, Config{
		Path: "/push", MaxConnectionsPerUser: 1, MaxMessageSize: 16, AllowedOrigins: []string{"https://mail.example"},
		PingInterval: 150 * time.Millisecond, IdleTimeout: 5 * time.Second,
		Handler: HandlerFuncs{Upgrade: queryUserAuth},
	})
	url := fmt.Sprintf("ws://127.0.0.1:%d/push?user=max", server.Port())
	origin := http.Header{"Origin": {"https://mail.example"}}
	conn, _, err := websocket.DefaultDialer.Dial(url, origin)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	statusOf := func(url string, header http.Header) int {
		c, resp, err := websocket.DefaultDialer.Dial(url, header)
		if err == nil {
			c.Close()
			return 101
		}
		return resp.StatusCode
	}
	if status := statusOf(url, origin); status != 429 {
		t.Errorf("second connection of a user: HTTP %d, want 429 (MaxConnectionsPerUser)", status)
	}
	if status := statusOf(strings.Replace(url, "max", "other", 1), http.Header{"Origin": {"https://evil.example"}}); status != 403 {
		t.Errorf("foreign origin: HTTP %d, want 403", status)
	}
	if status := statusOf(wsURL(server, "user=x"), origin); status != 404 {
		t.Errorf("default path: HTTP %d, want 404 (Path is /push)", status)
	}
	// Pings come every 150 ms; gorilla answers them while reading.
	waitForStats(t, server, "pings", func(s Stats) bool { return s.PingsTotal >= 1 })
	conn.WriteMessage(websocket.TextMessage, []byte(strings.Repeat("x", 17)))
	if code, _, err := readClose(conn); code != 1009 {
		t.Errorf("message over MaxMessageSize: %d %v, want close 1009", code, err)
	}
}

func TestSlowConsumerDropKeepsTheConnectionAndReportsDrops(t *testing.T) {
	var dropped atomic.Int64
	server := startServer(t, Config{
		MaxQueueBytes: 64 << 10, SlowConsumer: SlowConsumerDrop,
		Handler: HandlerFuncs{
			Upgrade: queryUserAuth,
			Drop: func(s *Server, conn ConnID, user []byte, droppedBytes int) {
				// The size counts the frame: payload plus a 2-14 byte WebSocket header.
				if string(user) == "slow" && droppedBytes >= 32<<10 && droppedBytes <= 32<<10+14 {
					dropped.Add(1)
				}
			},
		},
	})
	mustDial(t, server, "user=slow") // never reads: kernel buffers, then our queue, fill up
	chunk := make([]byte, 32<<10)
	for i := 0; i < 20000 && dropped.Load() == 0; i++ {
		if _, err := server.Publish([]byte("slow"), chunk, true); err != nil {
			t.Fatal(err)
		}
		if i%64 == 63 {
			time.Sleep(time.Millisecond) // let the I/O thread write and find the queue full
		}
	}
	waitFor(t, "a drop", func() bool { return dropped.Load() > 0 })
	stats, _ := server.Stats()
	if stats.DroppedTotal == 0 || stats.Connections != 1 || stats.SlowConsumerClosesTotal != 0 {
		t.Errorf("stats %+v: want drops and the connection still open", stats)
	}
}

func TestHTTPHandlerAnswersPlainRequests(t *testing.T) {
	var logged syncBuffer
	server := startServer(t, Config{ErrorLog: newLogger(&logged), Handler: HandlerFuncs{
		Upgrade: queryUserAuth,
		HTTP: func(s *Server, r *Request) {
			switch r.Path() {
			case "/health":
				stats, _ := s.Stats()
				_ = r.Respond(200, "text/plain", []byte("ok "+strconv.FormatUint(stats.Connections, 10)))
			case "/panic":
				panic("health check bug")
			}
		},
	}})
	get := func(path string) (int, string) {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", server.Port(), path))
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if status, body := get("/health"); status != 200 || body != "ok 0" {
		t.Errorf("/health: %d %q", status, body)
	}
	if status, _ := get("/other"); status != 426 {
		t.Errorf("unanswered: HTTP %d, want 426", status)
	}
	if status, _ := get("/panic"); status != 500 {
		t.Errorf("panicking HTTP handler: HTTP %d, want 500", status)
	}
	if !strings.Contains(logged.String(), "health check bug") {
		t.Errorf("panic not logged: %s", logged.String())
	}
}

// interfaceHandler implements Handler (all methods) and HTTPHandler.
type interfaceHandler struct{ opens, messages atomic.Int64 }

func (h *interfaceHandler) OnUpgrade(s *Server, r *Request) { queryUserAuth(s, r) }
func (h *interfaceHandler) OnOpen(s *Server, conn ConnID, user []byte) {
	h.opens.Add(1)
}
func (h *interfaceHandler) OnMessage(s *Server, conn ConnID, user, msg []byte, binary bool) {
	h.messages.Add(1)
	_ = s.Send(conn, msg, binary)
}
func (h *interfaceHandler) OnClose(s *Server, conn ConnID, user []byte, code int)        {}
func (h *interfaceHandler) OnDrop(s *Server, conn ConnID, user []byte, droppedBytes int) {}
func (h *interfaceHandler) OnHTTP(s *Server, r *Request) {
	_ = r.Respond(200, "text/plain", []byte("hi"))
}

func TestHandlerInterfaceReceivesEveryEvent(t *testing.T) {
	h := &interfaceHandler{}
	server := startServer(t, Config{Handler: h})
	conn := mustDial(t, server, "user=ola")
	writeText(t, conn, "round trip")
	if got := readText(t, conn); got != "round trip" {
		t.Errorf("got %q", got)
	}
	if h.opens.Load() != 1 || h.messages.Load() != 1 {
		t.Errorf("opens %d, messages %d", h.opens.Load(), h.messages.Load())
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", server.Port()))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET: %v %v", resp, err)
	}
	resp.Body.Close()
}

func TestVersion(t *testing.T) {
	if v := Version(); v == "" || strings.Count(v, ".") != 2 {
		t.Errorf("Version() = %q", v)
	}
}
