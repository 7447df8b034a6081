// Command go_host is an example Go host of wspush: the push gateway of a webmail service.
//
// Browsers open ws://HOST:8080/ws?token=TOKEN, where TOKEN is what the webmail's login issued:
// base64url(user) "." hex(HMAC-SHA256(secret, user)). The upgrade handler checks it and
// registers the connection under that user. The mail backend, on an internal port, calls
//
//	POST /notify?user=alice     body: the message (JSON)  -> {"delivered": N}
//	POST /broadcast             body: the message         -> {"delivered": N}
//	POST /disconnect?user=alice (e.g. after a password change)
//	GET  /stats                 engine counters as JSON
//	GET  /token?user=alice      a token for alice (stands in for the login; demo only)
//
// Build the library first (cargo build --release at the repository root, which also writes the
// pkg-config file the binding links through), then:
//
//	cd examples/go_host && PKG_CONFIG_PATH=../../target/release/pkgconfig go run . -secret s3cret
//	curl -s 'http://127.0.0.1:8081/token?user=alice'       # then connect a browser with it
//	curl -d '{"new_mail":1}' 'http://127.0.0.1:8081/notify?user=alice'
package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	wspush "wspush/bindings/go"
)

// maxNotifyBytes bounds a /notify body; the engine refuses payloads over MaxQueueBytes anyway.
const maxNotifyBytes = 64 << 10

// gateway is the push gateway: the wspush server and what its handlers need.
type gateway struct {
	push   *wspush.Server
	secret []byte
	log    *log.Logger
}

// options are the command-line settings.
type options struct {
	wsListen    string
	adminListen string
	secret      string
	origins     string
}

func main() {
	var opts options
	flag.StringVar(&opts.wsListen, "ws", "127.0.0.1:8080", "WebSocket listen address (browsers)")
	flag.StringVar(&opts.adminListen, "admin", "127.0.0.1:8081", "internal HTTP listen address (mail backend)")
	flag.StringVar(&opts.secret, "secret", os.Getenv("PUSH_TOKEN_SECRET"), "HMAC secret shared with the login service (or $PUSH_TOKEN_SECRET)")
	flag.StringVar(&opts.origins, "origins", "", "comma-separated allowed Origins, e.g. https://mail.example.com (default: any)")
	flag.Parse()
	if opts.secret == "" {
		log.Fatal("a token secret is required: -secret or $PUSH_TOKEN_SECRET")
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	if err := run(ctx, opts, log.Default(), nil); err != nil {
		log.Fatal(err)
	}
}

// run serves until ctx is cancelled, then shuts down gracefully. ready, if not nil, receives
// the gateway and the admin address once both listen (for tests).
func run(ctx context.Context, opts options, logger *log.Logger, ready func(*gateway, net.Addr)) error {
	g := &gateway{secret: []byte(opts.secret), log: logger}
	config := wspush.Config{
		Listen:                opts.wsListen,
		MaxConnectionsPerUser: 50, // tabs and devices of one person; more is a runaway script
		MaxMessageSize:        4 << 10,
		HandshakeTimeout:      5 * time.Second,
		Handler: wspush.HandlerFuncs{
			Upgrade: g.authorize,
			Open: func(_ *wspush.Server, conn wspush.ConnID, user []byte) {
				g.log.Printf("open %d user=%s", conn, user)
			},
			Message: g.clientMessage,
			Close: func(_ *wspush.Server, conn wspush.ConnID, user []byte, code int) {
				g.log.Printf("close %d user=%s code=%d", conn, user, code)
			},
		},
		ErrorLog: logger,
	}
	if opts.origins != "" {
		config.AllowedOrigins = strings.Split(opts.origins, ",")
	}
	push, err := wspush.Start(config)
	if err != nil {
		return fmt.Errorf("starting wspush: %w", err)
	}
	g.push = push
	defer push.Stop() // after an early return; the normal path stops below

	listener, err := net.Listen("tcp", opts.adminListen)
	if err != nil {
		return fmt.Errorf("admin listener: %w", err)
	}
	admin := &http.Server{Handler: g.adminRoutes(), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- admin.Serve(listener) }()
	wsHost, _, _ := net.SplitHostPort(opts.wsListen)
	g.log.Printf("wspush %s: WebSocket on ws://%s/ws, admin on http://%s",
		wspush.Version(), net.JoinHostPort(wsHost, fmt.Sprint(push.Port())), listener.Addr())
	if ready != nil {
		ready(g, listener.Addr())
	}

	select {
	case <-ctx.Done():
	case err := <-served:
		return fmt.Errorf("admin server: %w", err)
	}
	g.log.Print("shutting down: closing WebSockets with 1001 (clients reconnect elsewhere)")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = admin.Shutdown(shutdownCtx)
	return push.Stop()
}

// token returns the token the login service issues for user.
func token(secret []byte, user string) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(user))
	return base64.RawURLEncoding.EncodeToString([]byte(user)) + "." + hex.EncodeToString(mac.Sum(nil))
}

// userOf checks a token and returns its user.
func userOf(secret []byte, tok string) (string, bool) {
	encodedUser, signature, ok := strings.Cut(tok, ".")
	if !ok {
		return "", false
	}
	user, err := base64.RawURLEncoding.DecodeString(encodedUser)
	if err != nil || len(user) == 0 || len(user) > wspush.MaxUserIDLen {
		return "", false
	}
	want := token(secret, string(user))
	// Constant-time comparison: the signature must not leak through timing.
	if !hmac.Equal([]byte(encodedUser+"."+signature), []byte(want)) {
		return "", false
	}
	return string(user), true
}

// authorize is the upgrade handler. An HMAC check is fast enough to run here, on the I/O
// thread. A check that needs a database or another service must not block it: call r.Defer()
// and finish with g.push.AcceptUpgrade / RejectUpgrade from a goroutine.
func (g *gateway) authorize(_ *wspush.Server, r *wspush.Request) {
	tok := r.Query("token")
	if tok == "" {
		// Non-browser clients (mobile apps) may send it in a header instead of the URL.
		tok = r.Header("X-Push-Token")
	}
	user, ok := userOf(g.secret, tok)
	if !ok {
		g.log.Printf("rejected upgrade from %s: bad or missing token", r.Peer())
		_ = r.Reject(http.StatusUnauthorized)
		return
	}
	_ = r.Accept([]byte(user))
}

// clientMessage answers the application-level keepalive some clients send; the push channel
// carries nothing else from clients.
func (g *gateway) clientMessage(s *wspush.Server, conn wspush.ConnID, user []byte, msg []byte, binary bool) {
	if !binary && string(msg) == "ping" {
		_ = s.Send(conn, []byte("pong"), false)
	}
}

// adminRoutes is the internal HTTP API of the mail backend. Keep it off the public network.
func (g *gateway) adminRoutes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /notify", func(w http.ResponseWriter, r *http.Request) {
		user := r.URL.Query().Get("user")
		body, ok := readBody(w, r)
		if !ok {
			return
		}
		delivered, err := g.push.Publish([]byte(user), body, r.Header.Get("Content-Type") == "application/octet-stream")
		g.answer(w, delivered, err)
	})
	mux.HandleFunc("POST /broadcast", func(w http.ResponseWriter, r *http.Request) {
		body, ok := readBody(w, r)
		if !ok {
			return
		}
		delivered, err := g.push.Broadcast(body, false)
		g.answer(w, delivered, err)
	})
	mux.HandleFunc("POST /disconnect", func(w http.ResponseWriter, r *http.Request) {
		// 4001: an application code the web client understands as "log in again".
		closed, err := g.push.DisconnectUser([]byte(r.URL.Query().Get("user")), 4001)
		g.answer(w, closed, err)
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		stats, err := g.push.Stats()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, http.StatusOK, stats)
	})
	mux.HandleFunc("GET /token", func(w http.ResponseWriter, r *http.Request) {
		user := r.URL.Query().Get("user")
		if user == "" || len(user) > wspush.MaxUserIDLen {
			http.Error(w, "user must be 1-255 bytes", http.StatusBadRequest)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"user": user, "token": token(g.secret, user)})
	})
	return mux
}

func readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxNotifyBytes))
	if err != nil {
		http.Error(w, "body too large or unreadable", http.StatusRequestEntityTooLarge)
		return nil, false
	}
	return body, true
}

// answer reports a count, or maps the engine's error to an HTTP status.
func (g *gateway) answer(w http.ResponseWriter, count int, err error) {
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, map[string]int{"delivered": count})
	case errors.Is(err, wspush.ErrInvalidUserID), errors.Is(err, wspush.ErrMessageTooLarge):
		http.Error(w, err.Error(), http.StatusBadRequest)
	case errors.Is(err, wspush.ErrStopped):
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
	default:
		g.log.Printf("admin: %v", err)
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}

func writeJSON(w http.ResponseWriter, status int, value any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(value)
}
