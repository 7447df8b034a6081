package wspush

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// v1Frame is a wspush.v1 server frame (bindings/js/PROTOCOL.md); absent fields stay nil.
type v1Frame struct {
	Type       string  `json:"type"`
	Epoch      *string `json:"epoch"`
	Offset     *uint64 `json:"offset"`
	Recovered  *bool   `json:"recovered"`
	Data       *string `json:"data"`
	DataBase64 *string `json:"data_base64"`
}

// dialV1 opens a WebSocket offering the wspush.v1 subprotocol, which the server must select.
func dialV1(t *testing.T, server *Server, query string) *websocket.Conn {
	t.Helper()
	dialer := websocket.Dialer{HandshakeTimeout: testTimeout, Subprotocols: []string{"wspush.v1"}}
	conn, resp, err := dialer.Dial(wsURL(server, query), nil)
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		t.Fatalf("dial %q: %v", query, err)
	}
	t.Cleanup(func() { conn.Close() })
	if conn.Subprotocol() != "wspush.v1" {
		t.Fatalf("subprotocol %q, want wspush.v1", conn.Subprotocol())
	}
	return conn
}

// readV1 reads one v1 frame: a text frame holding one JSON object.
func readV1(t *testing.T, conn *websocket.Conn) v1Frame {
	t.Helper()
	text := readText(t, conn)
	var frame v1Frame
	if err := json.Unmarshal([]byte(text), &frame); err != nil {
		t.Fatalf("not a JSON object (%v): %s", err, text)
	}
	return frame
}

func (f v1Frame) String() string {
	text, _ := json.Marshal(f)
	return string(text)
}

func mustPublishWithOffset(t *testing.T, server *Server, user, msg string, binary bool) Published {
	t.Helper()
	published, err := server.PublishWithOffset([]byte(user), []byte(msg), binary)
	if err != nil {
		t.Fatalf("PublishWithOffset(%q): %v", user, err)
	}
	return published
}

func TestPublishWithOffsetCountsPerUserFrom1AndIs0WithHistoryOff(t *testing.T) {
	off := startServer(t, Config{})
	if got := mustPublishWithOffset(t, off, "alice", "a", false); got != (Published{}) {
		t.Errorf("history off: %+v, want offset 0", got)
	}

	server := startServer(t, Config{HistoryMaxMessages: 2, Handler: HandlerFuncs{Upgrade: queryUserAuth}})
	for want := uint64(1); want <= 3; want++ {
		if got := mustPublishWithOffset(t, server, "alice", fmt.Sprint("m", want), false); got != (Published{Offset: want}) {
			t.Errorf("alice's publish %d: %+v", want, got)
		}
	}
	if got := mustPublishWithOffset(t, server, "bob", "\x00bin", true); got != (Published{Offset: 1}) {
		t.Errorf("bob's stream is his own: %+v", got)
	}
	if _, err := server.Publish([]byte("alice"), []byte("plain"), false); err != nil {
		t.Fatal(err)
	}
	if got := mustPublishWithOffset(t, server, "alice", "m5", false); got.Offset != 5 {
		t.Errorf("Publish numbers its message too: next offset %d, want 5", got.Offset)
	}
	raw := mustDial(t, server, "user=alice")
	waitForStats(t, server, "open", func(s Stats) bool { return s.Connections == 1 })
	if got := mustPublishWithOffset(t, server, "alice", "to the raw client", false); got != (Published{Delivered: 1, Offset: 6}) {
		t.Errorf("%+v", got)
	}
	if got := readText(t, raw); got != "to the raw client" {
		t.Errorf("a client without wspush.v1 gets raw frames: %q", got)
	}
	stats, err := server.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if stats.HistoryUsers != 2 || stats.HistoryMessages != 3 || stats.HistoryBytes == 0 || stats.PublishesTotal != 7 {
		t.Errorf("stats %+v: want 2 users, 3 messages (2 kept for alice, 1 for bob), 7 publishes", stats)
	}
	if _, err := server.PublishWithOffset(nil, []byte("x"), false); !errors.Is(err, ErrInvalidUserID) {
		t.Errorf("empty user: %v", err)
	}
	server.Stop()
	if got, err := server.PublishWithOffset([]byte("alice"), []byte("late"), false); !errors.Is(err, ErrStopped) || got != (Published{}) {
		t.Errorf("after Stop: %+v, %v", got, err)
	}
}

func TestAV1ClientThatGoesAwayResumesWithSinceAndGetsExactlyWhatItMissed(t *testing.T) {
	server := startServer(t, Config{HistoryMaxMessages: 100, Handler: HandlerFuncs{Upgrade: queryUserAuth}})
	conn := dialV1(t, server, "user=alice")
	welcome := readV1(t, conn)
	if welcome.Type != "welcome" || welcome.Epoch == nil || welcome.Offset == nil || *welcome.Offset != 0 || welcome.Recovered == nil || *welcome.Recovered {
		t.Fatalf("first frame %s, want a welcome at offset 0, not recovered", welcome)
	}
	since := fmt.Sprintf("%s:%d", *welcome.Epoch, *welcome.Offset)
	conn.Close()
	waitForStats(t, server, "alice gone", func(s Stats) bool { return s.Connections == 0 })

	missed := []struct {
		data   string
		binary bool
	}{{"one", false}, {"\x00two\xff", true}, {"three ✓", false}}
	for i, m := range missed {
		if got := mustPublishWithOffset(t, server, "alice", m.data, m.binary); got != (Published{Offset: uint64(i + 1)}) {
			t.Fatalf("publish %d while alice is away: %+v", i+1, got)
		}
	}

	conn = dialV1(t, server, "user=alice&since="+since)
	welcome = readV1(t, conn)
	if welcome.Type != "welcome" || *welcome.Offset != 3 || !*welcome.Recovered {
		t.Fatalf("welcome %s, want offset 3, recovered", welcome)
	}
	for i, m := range missed {
		frame := readV1(t, conn)
		if frame.Type != "message" || frame.Offset == nil || *frame.Offset != uint64(i+1) {
			t.Fatalf("replayed message %d: %s", i+1, frame)
		}
		if (i == 0) != (frame.Epoch != nil) || frame.Epoch != nil && *frame.Epoch != *welcome.Epoch {
			t.Errorf("offset %d: epoch %v, want the welcome's epoch on offset 1 only", i+1, frame.Epoch)
		}
		if m.binary {
			if frame.DataBase64 == nil || *frame.DataBase64 != base64.StdEncoding.EncodeToString([]byte(m.data)) {
				t.Errorf("binary message %d: %s", i+1, frame)
			}
		} else if frame.Data == nil || *frame.Data != m.data {
			t.Errorf("text message %d: %s", i+1, frame)
		}
	}
	// Exactly those three: the next frame is the next publish, live.
	if got := mustPublishWithOffset(t, server, "alice", "live", false); got != (Published{Delivered: 1, Offset: 4}) {
		t.Errorf("live publish: %+v", got)
	}
	if frame := readV1(t, conn); frame.Offset == nil || *frame.Offset != 4 || frame.Data == nil || *frame.Data != "live" {
		t.Errorf("after the replay, want the live offset 4: %s", frame)
	}
	if _, err := server.Broadcast([]byte("to everyone"), false); err != nil {
		t.Fatal(err)
	}
	if frame := readV1(t, conn); frame.Offset != nil || frame.Data == nil || *frame.Data != "to everyone" {
		t.Errorf("a broadcast is not part of the user's stream: %s", frame)
	}

	// Another epoch cannot be recovered: told so, nothing replayed.
	stale := dialV1(t, server, "user=alice&since=00000000000000ab:1")
	if frame := readV1(t, stale); *frame.Recovered || *frame.Offset != 4 {
		t.Errorf("resume from another epoch: %s", frame)
	}
	stats := waitForStats(t, server, "resume counters", func(s Stats) bool { return s.ResumesTotal == 2 })
	if stats.RecoveriesTotal != 1 || stats.RecoveryFailuresTotal != 1 || stats.HistoryUsers != 1 || stats.HistoryMessages != 4 {
		t.Errorf("stats %+v: want 2 resumes, 1 recovery, 1 failure, 1 user, 4 messages", stats)
	}
}

func TestHistoryTTLAndMaxBytesTakeEffect(t *testing.T) {
	server := startServer(t, Config{HistoryMaxMessages: 10, HistoryMaxBytes: 1000})
	big := string(make([]byte, 600))
	if got := mustPublishWithOffset(t, server, "alice", big, true); got.Offset != 1 {
		t.Fatalf("%+v", got)
	}
	// Past 1000 bytes: alice's stream, the least recently published, is dropped whole.
	if got := mustPublishWithOffset(t, server, "bob", big, true); got.Offset != 1 {
		t.Fatalf("%+v", got)
	}
	if stats, _ := server.Stats(); stats.HistoryUsers != 1 || stats.HistoryMessages != 1 || stats.HistoryBytes > 1000 {
		t.Errorf("after the eviction: %+v", stats)
	}
	if got := mustPublishWithOffset(t, server, "alice", big, true); got.Offset != 1 {
		t.Errorf("alice starts a new epoch at 1: %+v", got)
	}

	// 2 s: kept in whole seconds, so the stream cannot go between the two publishes.
	server = startServer(t, Config{HistoryMaxMessages: 10, HistoryTTL: 2 * time.Second})
	for want := uint64(1); want <= 2; want++ {
		if got := mustPublishWithOffset(t, server, "carol", "m", false); got.Offset != want {
			t.Fatalf("%+v, want offset %d", got, want)
		}
	}
	waitForStats(t, server, "carol's stream to expire", func(s Stats) bool { return s.HistoryUsers == 0 })
	if got := mustPublishWithOffset(t, server, "carol", "m", false); got.Offset != 1 {
		t.Errorf("after the TTL a new epoch at 1: %+v", got)
	}
}

func TestHistorySettingsAreCheckedAtStart(t *testing.T) {
	cases := []struct {
		name   string
		config Config
		op     string
	}{
		{"negative messages", Config{HistoryMaxMessages: -1}, "Config.HistoryMaxMessages"},
		{"negative bytes", Config{HistoryMaxBytes: -1}, "Config.HistoryMaxBytes"},
		{"negative TTL", Config{HistoryTTL: -time.Second}, "Config.HistoryTTL"},
		{"TTL past 2^32-1 ms", Config{HistoryTTL: (1 << 32) * time.Millisecond}, "Config.HistoryTTL"},
	}
	for _, c := range cases {
		assertStartFails(t, c.name, c.config, ErrInvalidArgument, c.op)
	}
	// A sub-millisecond TTL rounds up (to 1 ms, kept as 1 s), not down to an invalid 0.
	server := startServer(t, Config{HistoryMaxMessages: 1, HistoryTTL: time.Nanosecond, HistoryMaxBytes: 1 << 20})
	if got := mustPublishWithOffset(t, server, "alice", "m", false); got.Offset != 1 {
		t.Errorf("%+v", got)
	}
}
