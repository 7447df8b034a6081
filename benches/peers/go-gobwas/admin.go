package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// hub maps each user to the set of their open connections (tabs).
type hub struct {
	mu    sync.RWMutex
	users map[string]map[*conn]struct{}
}

func (h *hub) add(c *conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	set := h.users[c.user]
	if set == nil {
		set = make(map[*conn]struct{})
		h.users[c.user] = set
	}
	set[c] = struct{}{}
}

func (h *hub) remove(c *conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.users[c.user], c)
	if len(h.users[c.user]) == 0 {
		delete(h.users, c.user)
	}
}

// publish queues one frame, framed once and shared, to every connection of user (or of everyone
// when all is set) and answers how many took it; slow consumers are closed.
func (s *server) publish(user string, all bool, frame []byte) int {
	delivered := 0
	var slow []*conn
	deliver := func(set map[*conn]struct{}) {
		for c := range set {
			queued, full := s.send(c, frame)
			if queued {
				delivered++
			} else if full {
				slow = append(slow, c)
			}
		}
	}
	s.hub.mu.RLock()
	if all {
		for _, set := range s.hub.users {
			deliver(set)
		}
	} else {
		deliver(s.hub.users[user])
	}
	s.hub.mu.RUnlock()
	for _, c := range slow {
		s.close(c)
	}
	return delivered
}

// adminPublish serves POST /publish?user=U (all=false) and POST /broadcast (all=true).
func (s *server) adminPublish(all bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", "POST")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		user := r.URL.Query().Get("user")
		if !all && user == "" {
			http.Error(w, "missing user", http.StatusBadRequest)
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxPublishBody))
		if err != nil {
			http.Error(w, "body too large or unreadable", http.StatusRequestEntityTooLarge)
			return
		}
		op := ws.OpText
		mediaType, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";")
		if strings.EqualFold(strings.TrimSpace(mediaType), "application/octet-stream") {
			op = ws.OpBinary
		} else if !utf8.Valid(body) {
			http.Error(w, "text payload is not UTF-8", http.StatusBadRequest)
			return
		}
		delivered := s.publish(user, all, ws.MustCompileFrame(ws.NewFrame(op, true, body)))
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, "{\"delivered\":%d}", delivered)
	}
}

func (s *server) adminMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/publish", s.adminPublish(false))
	mux.HandleFunc("/broadcast", s.adminPublish(true))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	return mux
}
