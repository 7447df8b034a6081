package main

import (
	"strings"
	"testing"
)

// gobwas/ws itself reads a request line or header of any length and answers nothing to an
// unparsable request line; the peer caps the head at 8 KiB and answers itself.
func TestOversizedHeadGets431(t *testing.T) {
	p := startPeer(t)
	for name, head := range map[string]string{
		"long request line": "GET /ws?user=" + strings.Repeat("a", 9000) + " HTTP/1.1\r\n",
		"long header":       "GET /ws?user=a HTTP/1.1\r\nHost: x\r\nX-Junk: " + strings.Repeat("b", 9000) + "\r\n",
	} {
		line, err := rawRequest(p.wsAddr, head)
		if err != nil || !strings.HasPrefix(line, "HTTP/1.1 431 ") {
			t.Errorf("%s answered %q (err %v), want 431", name, line, err)
		}
	}
	// The peer still serves normal upgrades afterwards.
	dialOrFail(t, p, "alice")
	p.mustDeliver(t, "/publish?user=alice", "text/plain", []byte("hi"), 1)
}
