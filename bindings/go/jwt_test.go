package wspush

import (
	"bufio"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// Built-in JWT (HS256) authentication and the per-address limits, seen from real clients, with
// tokens minted here as an auth service would.

var testSecret = []byte("an HS256 secret of at least 32 bytes")

func b64url(data []byte) string { return base64.RawURLEncoding.EncodeToString(data) }

// mint signs claims with secret under the given JOSE header: a compact JWS.
func mint(t *testing.T, header, claims map[string]any, secret []byte) string {
	t.Helper()
	headerJSON, err := json.Marshal(header)
	if err != nil {
		t.Fatal(err)
	}
	claimsJSON, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	signingInput := b64url(headerJSON) + "." + b64url(claimsJSON)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(signingInput))
	return signingInput + "." + b64url(mac.Sum(nil))
}

var hs256 = map[string]any{"alg": "HS256", "typ": "JWT"}

// tokenFor is a token for sub valid for the next minute.
func tokenFor(t *testing.T, sub string, secret []byte) string {
	return mint(t, hs256, map[string]any{"sub": sub, "exp": time.Now().Unix() + 60}, secret)
}

// refusalBody dials an upgrade that must be refused and returns its status and body (gorilla
// keeps the first KiB of it).
func refusalBody(t *testing.T, server *Server, query string, header http.Header) (int, string) {
	t.Helper()
	dialer := websocket.Dialer{HandshakeTimeout: testTimeout}
	conn, resp, err := dialer.Dial(wsURL(server, query), header)
	if err == nil {
		conn.Close()
		t.Fatalf("dial %q: accepted, want refused", query)
	}
	if resp == nil {
		t.Fatalf("dial %q: %v, want an HTTP answer", query, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestValidTokenInQueryOrBearerHeaderOpensAsItsSubWithoutUpgradeHandler(t *testing.T) {
	rec := &recorder{}
	// Only Open is set: no upgrade handler is installed, the engine decides.
	server := startServer(t, Config{JWTHS256Secret: testSecret, Handler: HandlerFuncs{Open: rec.open}})
	byQuery := mustDial(t, server, "token="+tokenFor(t, "alice", testSecret))
	byHeader, _, err := dial(server, "", http.Header{"Authorization": {"Bearer " + tokenFor(t, "bob", testSecret)}})
	if err != nil {
		t.Fatalf("dial with a Bearer token: %v", err)
	}
	defer byHeader.Close()
	opens := rec.waitOpens(t, 2)
	users := map[string]bool{opens[0].user: true, opens[1].user: true}
	if !users["alice"] || !users["bob"] {
		t.Errorf("opened as %+v, want alice and bob", opens)
	}
	for user, conn := range map[string]*websocket.Conn{"alice": byQuery, "bob": byHeader} {
		if n, err := server.Publish([]byte(user), []byte("for "+user), false); n != 1 || err != nil {
			t.Fatalf("Publish(%s) = %d, %v", user, n, err)
		}
		if _, msg, err := conn.ReadMessage(); err != nil || string(msg) != "for "+user {
			t.Errorf("%s got %q, %v", user, msg, err)
		}
	}
	// A nil Handler leaves the decision to the engine as well.
	bare := startServer(t, Config{JWTHS256Secret: testSecret})
	mustDial(t, bare, "token="+tokenFor(t, "carol", testSecret))
	waitForStats(t, bare, "carol open", func(s Stats) bool { return s.Users == 1 })
	if n, _ := bare.Publish([]byte("carol"), []byte("x"), false); n != 1 {
		t.Errorf("carol has %d connections, want 1", n)
	}
}

func TestEveryInvalidTokenGets401InvalidTokenAndNothingMore(t *testing.T) {
	rec := &recorder{}
	server := startServer(t, Config{JWTHS256Secret: testSecret, Handler: HandlerFuncs{Open: rec.open}})
	now := time.Now().Unix()
	claims := map[string]any{"sub": "mallory", "exp": now + 60}
	valid := tokenFor(t, "mallory", testSecret)
	parts := strings.Split(valid, ".")
	forgedClaims, _ := json.Marshal(map[string]any{"sub": "admin", "exp": now + 60})
	signedNone := mint(t, map[string]any{"alg": "none"}, claims, testSecret)
	cases := []struct{ name, query string }{
		{"no token", ""},
		{"garbage", "token=not.a.jwt"},
		{"alg none", "token=" + signedNone[:strings.LastIndex(signedNone, ".")+1]},
		{"alg none, signed anyway", "token=" + signedNone},
		{"HS512 header", "token=" + mint(t, map[string]any{"alg": "HS512"}, claims, testSecret)},
		{"wrong secret", "token=" + tokenFor(t, "mallory", []byte("some other secret, 32 bytes long!"))},
		{"forged claims", "token=" + parts[0] + "." + b64url(forgedClaims) + "." + parts[2]},
		{"expired", "token=" + mint(t, hs256, map[string]any{"sub": "mallory", "exp": now - 120}, testSecret)},
		{"no exp", "token=" + mint(t, hs256, map[string]any{"sub": "mallory"}, testSecret)},
		{"not yet valid", "token=" + mint(t, hs256, map[string]any{"sub": "mallory", "exp": now + 600, "nbf": now + 300}, testSecret)},
		{"no sub", "token=" + mint(t, hs256, map[string]any{"exp": now + 60}, testSecret)},
	}
	for _, c := range cases {
		if status, body := refusalBody(t, server, c.query, nil); status != 401 || body != "invalid token\n" {
			t.Errorf("%s: HTTP %d %q, want 401 \"invalid token\\n\"", c.name, status, body)
		}
	}
	if status, _ := refusalBody(t, server, "", http.Header{"Authorization": {"Basic " + valid}}); status != 401 {
		t.Errorf("Basic scheme: HTTP %d, want 401 (only Bearer carries a token)", status)
	}
	stats, _ := server.Stats()
	if stats.UpgradesTotal != 0 || stats.RejectedTotal != uint64(len(cases)+1) {
		t.Errorf("stats %+v: want no upgrade and %d rejections", stats, len(cases)+1)
	}
	if opens, _ := rec.snapshot(); len(opens) != 0 {
		t.Errorf("opened %+v", opens)
	}
}

func TestUpgradeHandlerSeesTheVerifiedUserAndDecides(t *testing.T) {
	type seen struct {
		user []byte
		ok   bool
	}
	var mu sync.Mutex
	var seens []seen
	rec := &recorder{}
	server := startServer(t, Config{JWTHS256Secret: testSecret, Handler: HandlerFuncs{
		Upgrade: func(s *Server, r *Request) {
			user, ok := r.VerifiedUser()
			mu.Lock()
			seens = append(seens, seen{user, ok})
			mu.Unlock()
			switch {
			case string(user) == "banned":
				_ = r.Reject(403)
			case ok:
				_ = r.Accept(append([]byte("verified:"), user...))
			default:
				_ = r.Reject(401)
			}
		},
		Open: rec.open,
	}})
	mustDial(t, server, "token="+tokenFor(t, "carol", testSecret))
	if opens := rec.waitOpens(t, 1); opens[0].user != "verified:carol" {
		t.Errorf("opened as %q, want verified:carol", opens[0].user)
	}
	if status := dialStatus(t, server, "token="+tokenFor(t, "banned", testSecret)); status != 403 {
		t.Errorf("banned: HTTP %d, want 403", status)
	}
	if status := dialStatus(t, server, "token="+tokenFor(t, "carol", []byte(strings.Repeat("x", 32)))); status != 401 {
		t.Errorf("foreign token: HTTP %d, want 401", status)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []seen{{[]byte("carol"), true}, {[]byte("banned"), true}, {nil, false}}
	if fmt.Sprint(seens) != fmt.Sprint(want) {
		t.Errorf("VerifiedUser returned %v, want %v", seens, want)
	}
}

// embeddingHandler is a whole Handler (its OnUpgrade is always installed) that embeds
// HandlerFuncs without an Upgrade: the embedded OnUpgrade must make the engine's decision.
type embeddingHandler struct {
	HandlerFuncs
}

func TestInstalledHandlerWithoutUpgradeFallsBackToDefaultUpgrade(t *testing.T) {
	var kept *Request
	keptDone := make(chan struct{})
	server := startServer(t, Config{JWTHS256Secret: testSecret, Handler: &embeddingHandler{}})
	mustDial(t, server, "token="+tokenFor(t, "erin", testSecret))
	waitForStats(t, server, "erin open", func(s Stats) bool { return s.Users == 1 })
	if status, body := refusalBody(t, server, "token=x.y.z", nil); status != 401 || body != "invalid token\n" {
		t.Errorf("invalid token: HTTP %d %q", status, body)
	}

	// DefaultUpgrade as an explicit handler, and VerifiedUser outside its handler.
	explicit := startServer(t, Config{JWTHS256Secret: testSecret, Handler: HandlerFuncs{
		Upgrade: func(s *Server, r *Request) {
			DefaultUpgrade(s, r)
			if kept == nil {
				kept = r
				close(keptDone)
			}
		},
	}})
	mustDial(t, explicit, "token="+tokenFor(t, "finn", testSecret))
	<-keptDone
	if user, ok := kept.VerifiedUser(); ok || user != nil {
		t.Errorf("VerifiedUser after the handler = %q, %v; want nil, false", user, ok)
	}
	waitForStats(t, explicit, "finn open", func(s Stats) bool { return s.Users == 1 })
}

func TestWithoutASecretNoRequestIsVerified(t *testing.T) {
	verified := make(chan bool, 1)
	server := startServer(t, Config{Handler: HandlerFuncs{Upgrade: func(s *Server, r *Request) {
		_, ok := r.VerifiedUser()
		verified <- ok
		_ = r.Reject(401)
	}}})
	if status, body := refusalBody(t, server, "token="+tokenFor(t, "alice", testSecret), nil); status != 401 || body == "invalid token\n" {
		t.Errorf("HTTP %d %q: want 401 without token talk", status, body)
	}
	if <-verified {
		t.Error("a request was verified without a secret")
	}
	// No secret and no upgrade handler: nothing is let in, token or not.
	if status := dialStatus(t, startServer(t, Config{}), "token="+tokenFor(t, "alice", testSecret)); status != 401 {
		t.Errorf("no handler, no secret: HTTP %d, want 401", status)
	}
}

func TestJWTLeewayReachesTheEngine(t *testing.T) {
	justExpired := mint(t, hs256, map[string]any{"sub": "dora", "exp": time.Now().Unix() - 5}, testSecret)
	strict := startServer(t, Config{JWTHS256Secret: testSecret, JWTLeeway: time.Millisecond})
	if status, body := refusalBody(t, strict, "token="+justExpired, nil); status != 401 || body != "invalid token\n" {
		t.Errorf("expired 5 s ago with 1 ms leeway: HTTP %d %q, want 401", status, body)
	}
	lenient := startServer(t, Config{JWTHS256Secret: testSecret, JWTLeeway: time.Minute})
	conn := mustDial(t, lenient, "token="+justExpired)
	waitForStats(t, lenient, "dora open", func(s Stats) bool { return s.Users == 1 })
	lenient.Publish([]byte("dora"), []byte("within the leeway"), false)
	if msg := readText(t, conn); msg != "within the leeway" {
		t.Errorf("got %q", msg)
	}
}

func TestShortSecretAndBadLimitsAreRefusedAtStart(t *testing.T) {
	short := []byte("31 bytes of a too short secret!")
	cases := []struct {
		name   string
		config Config
	}{
		{"31-byte secret", Config{JWTHS256Secret: short}},
		{"negative leeway", Config{JWTHS256Secret: testSecret, JWTLeeway: -time.Second}},
		{"negative per-IP connections", Config{MaxConnectionsPerIP: -1}},
		{"negative per-IP handshakes", Config{MaxHandshakesPerIPPerSec: -1}},
		{"per-IP handshakes past uint32", Config{MaxHandshakesPerIPPerSec: 1 << 32}},
	}
	for _, c := range cases {
		err := assertStartFails(t, c.name, c.config, ErrInvalidArgument, "Config.")
		if err != nil && strings.Contains(err.Error(), "too short secret") {
			t.Errorf("%s: the error %q shows the secret", c.name, err)
		}
	}
	// Exactly 32 bytes is enough (RFC 7518 3.2).
	startServer(t, Config{JWTHS256Secret: []byte(strings.Repeat("k", 32))})
}

// upgradeStatus sends a hand-made upgrade request from sourceIP (any 127.0.0.0/8 address works
// on Linux) and returns the status line's code. A per-address limit answers as soon as the
// socket is accepted, possibly before the request is written; the raw socket reads it anyway.
func upgradeStatus(t *testing.T, server *Server, user, sourceIP string) int {
	t.Helper()
	dialer := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(sourceIP)}, Timeout: testTimeout}
	conn, err := dialer.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", server.Port()))
	if err != nil {
		t.Fatalf("dial from %s: %v", sourceIP, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(testTimeout))
	key := make([]byte, 16)
	rand.Read(key)
	// A write error means the answer came first; it is still there to read.
	fmt.Fprintf(conn, "GET /ws?user=%s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", user, base64.StdEncoding.EncodeToString(key))
	line, err := bufio.NewReader(conn).ReadString('\n')
	fields := strings.Fields(line)
	if err != nil || len(fields) < 2 {
		t.Fatalf("status line %q: %v", line, err)
	}
	status, err := strconv.Atoi(fields[1])
	if err != nil {
		t.Fatalf("status line %q", line)
	}
	return status
}

func TestMaxConnectionsPerIPAnswers429AndFreesThePlaceOnClose(t *testing.T) {
	rec := &recorder{}
	server := startServer(t, Config{MaxConnectionsPerIP: 2, Handler: HandlerFuncs{Upgrade: queryUserAuth, Open: rec.open, Close: rec.close}})
	first := mustDial(t, server, "user=a")
	mustDial(t, server, "user=b")
	rec.waitOpens(t, 2)
	for i := 0; i < 3; i++ {
		if status := upgradeStatus(t, server, "c", "127.0.0.1"); status != 429 {
			t.Errorf("third connection from one address: HTTP %d, want 429", status)
		}
	}
	if stats, _ := server.Stats(); stats.IPLimitedTotal != 3 {
		t.Errorf("IPLimitedTotal = %d, want 3", stats.IPLimitedTotal)
	}
	if status := upgradeStatus(t, server, "d", "127.0.0.2"); status != 101 {
		t.Errorf("another address: HTTP %d, want 101 (its own allowance)", status)
	}
	first.Close() // abruptly, as a tab that goes away
	waitFor(t, "a's close", func() bool {
		_, closes := rec.snapshot()
		for _, c := range closes {
			if c.user == "a" {
				return true
			}
		}
		return false
	})
	mustDial(t, server, "user=c")
	rec.waitOpens(t, 4) // a, b, d (from 127.0.0.2), c
}

func TestMaxHandshakesPerIPPerSecAnswers429PastTheBurst(t *testing.T) {
	server := startServer(t, Config{MaxHandshakesPerIPPerSec: 3, Handler: HandlerFuncs{Upgrade: queryUserAuth}})
	var opened, limited int
	var outcomes []int
	for i := 0; i < 8; i++ {
		status := upgradeStatus(t, server, fmt.Sprintf("u%d", i), "127.0.0.1")
		outcomes = append(outcomes, status)
		switch status {
		case 101:
			opened++
		case 429:
			limited++
		}
	}
	// A burst of 3, plus whatever refilled (3/s) while the attempts ran.
	if opened < 3 || opened >= 8 || opened+limited != 8 {
		t.Errorf("outcomes %v: want at least 3 opened and every other attempt 429", outcomes)
	}
	if stats, _ := server.Stats(); stats.IPLimitedTotal != uint64(limited) {
		t.Errorf("IPLimitedTotal = %d, want %d", stats.IPLimitedTotal, limited)
	}
	time.Sleep(1050 * time.Millisecond) // a second later the allowance is back
	if status := upgradeStatus(t, server, "later", "127.0.0.1"); status != 101 {
		t.Errorf("a second later: HTTP %d, want 101", status)
	}
}
