package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// startGateway runs the example on ephemeral ports until the test ends.
func startGateway(t *testing.T) (g *gateway, admin string, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, options{wsListen: "127.0.0.1:0", adminListen: "127.0.0.1:0", secret: "test-secret"},
			log.New(io.Discard, "", 0), func(started *gateway, addr net.Addr) {
				g, admin = started, "http://"+addr.String()
				close(ready)
			})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("gateway did not start")
	}
	stop = func() error {
		cancel()
		return <-done
	}
	t.Cleanup(func() { cancel() })
	return g, admin, stop
}

func call(t *testing.T, method, url, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	var decoded map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&decoded)
	return resp.StatusCode, decoded
}

func TestNotifyReachesTheBrowserThatPresentedAValidToken(t *testing.T) {
	g, admin, stop := startGateway(t)
	_, minted := call(t, "GET", admin+"/token?user=alice@example.com", "")
	tok, _ := minted["token"].(string)
	ws := fmt.Sprintf("ws://127.0.0.1:%d/ws", g.push.Port())

	conn, _, err := websocket.DefaultDialer.Dial(ws+"?token="+url.QueryEscape(tok), nil)
	if err != nil {
		t.Fatalf("dial with a valid token: %v", err)
	}
	defer conn.Close()
	status, answer := call(t, "POST", admin+"/notify?user=alice@example.com", `{"new_mail":1}`)
	if status != 200 || answer["delivered"] != 1.0 {
		t.Fatalf("notify: %d %v", status, answer)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, msg, err := conn.ReadMessage(); err != nil || string(msg) != `{"new_mail":1}` {
		t.Fatalf("browser got %q, %v", msg, err)
	}
	conn.WriteMessage(websocket.TextMessage, []byte("ping"))
	if _, msg, err := conn.ReadMessage(); err != nil || string(msg) != "pong" {
		t.Fatalf("keepalive answer %q, %v", msg, err)
	}

	forged := tok[:len(tok)-1] + "0"
	if forged == tok {
		forged = tok[:len(tok)-1] + "1"
	}
	for _, bad := range []string{"", "?token=" + url.QueryEscape(forged), "?token=garbage"} {
		_, resp, err := websocket.DefaultDialer.Dial(ws+bad, nil)
		if err == nil || resp == nil || resp.StatusCode != 401 {
			t.Errorf("dial %q: %v, want 401", bad, err)
		}
	}
	if status, _ := call(t, "POST", admin+"/notify?user=", "x"); status != 400 {
		t.Errorf("notify without a user: %d, want 400", status)
	}

	// Shutdown closes the browser with 1001 ("going away": reconnect).
	closed := make(chan int, 1)
	go func() {
		_, _, err := conn.ReadMessage()
		var closeErr *websocket.CloseError
		code := -1
		if errors.As(err, &closeErr) {
			code = closeErr.Code
		}
		conn.Close()
		closed <- code
	}()
	if err := stop(); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if code := <-closed; code != 1001 {
		t.Errorf("browser saw close %d, want 1001", code)
	}
}
