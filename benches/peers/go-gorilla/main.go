// go-gorilla: the wspushd contract on net/http + gorilla/websocket, one reader and one writer
// goroutine per connection (the "before" of Mail.Ru's "A Million WebSockets and Go").
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

const (
	peerName       = "go-gorilla"
	sendQueueLen   = 64      // per connection; when full the connection is closed (slow consumer)
	maxMessageSize = 1 << 16 // largest client message, as wspushd's default
	maxPublishBody = 1 << 20
)

// outgoing is either a prepared (framed once, shared) publish or an echoed client message.
type outgoing struct {
	prepared *websocket.PreparedMessage
	kind     int
	data     []byte
}

type client struct {
	ws        *websocket.Conn // set before the reader and writer start; publishers never touch it
	user      string
	send      chan outgoing
	done      chan struct{}
	closeOnce sync.Once
}

// kill stops the writer, which closes the socket; the reader then fails and unregisters.
func (c *client) kill() {
	c.closeOnce.Do(func() { close(c.done) })
}

// queue never blocks: a publisher must not wait for one slow tab.
func (c *client) queue(m outgoing) bool {
	select {
	case c.send <- m:
		return true
	default:
		c.kill()
		return false
	}
}

type hub struct {
	mu    sync.RWMutex
	users map[string]map[*client]struct{}
}

func (h *hub) add(c *client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	set := h.users[c.user]
	if set == nil {
		set = make(map[*client]struct{})
		h.users[c.user] = set
	}
	set[c] = struct{}{}
}

func (h *hub) remove(c *client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.users[c.user], c)
	if len(h.users[c.user]) == 0 {
		delete(h.users, c.user)
	}
}

// publish queues m to every connection of user, or of everyone when all is set.
func (h *hub) publish(user string, all bool, m outgoing) int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	delivered := 0
	deliver := func(set map[*client]struct{}) {
		for c := range set {
			if c.queue(m) {
				delivered++
			}
		}
	}
	if !all {
		deliver(h.users[user])
		return delivered
	}
	for _, set := range h.users {
		deliver(set)
	}
	return delivered
}

var upgrader = websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}

func (h *hub) serveWS(echo bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		user := r.URL.Query().Get("user")
		if user == "" {
			http.Error(w, "missing user", http.StatusBadRequest)
			return
		}
		// Registered before the 101 goes out, so a publish right after the client sees it counts
		// this tab (as wspushd does); messages wait in the channel until the writer starts.
		c := &client{user: user, send: make(chan outgoing, sendQueueLen), done: make(chan struct{})}
		h.add(c)
		ws, err := upgrader.Upgrade(w, r, nil) // writes its own error response
		if err != nil {
			h.remove(c)
			return
		}
		c.ws = ws
		go c.writer()
		c.reader(h, echo)
	}
}

func (c *client) reader(h *hub, echo bool) {
	defer func() { h.remove(c); c.kill() }()
	c.ws.SetReadLimit(maxMessageSize)
	for {
		kind, data, err := c.ws.ReadMessage()
		if err != nil {
			return
		}
		if echo && !c.queue(outgoing{kind: kind, data: data}) {
			return
		}
	}
}

func (c *client) writer() {
	defer c.ws.Close()
	for {
		select {
		case <-c.done:
			return
		case m := <-c.send:
			var err error
			if m.prepared != nil {
				err = c.ws.WritePreparedMessage(m.prepared)
			} else {
				err = c.ws.WriteMessage(m.kind, m.data)
			}
			if err != nil {
				c.kill()
				return
			}
		}
	}
}

// adminPublish serves POST /publish?user=U (all=false) and POST /broadcast (all=true).
func (h *hub) adminPublish(all bool) http.HandlerFunc {
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
		kind := websocket.TextMessage
		mediaType, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";")
		if strings.EqualFold(strings.TrimSpace(mediaType), "application/octet-stream") {
			kind = websocket.BinaryMessage
		} else if !utf8.Valid(body) {
			http.Error(w, "text payload is not UTF-8", http.StatusBadRequest)
			return
		}
		prepared, err := websocket.NewPreparedMessage(kind, body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		delivered := h.publish(user, all, outgoing{prepared: prepared})
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, "{\"delivered\":%d}", delivered)
	}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "WebSocket address")
	adminListen := flag.String("admin-listen", "127.0.0.1:8081", "admin HTTP address")
	path := flag.String("path", "/ws", "WebSocket path")
	echo := flag.Bool("echo", false, "echo every client message back to its sender")
	flag.Parse()

	h := &hub{users: make(map[string]map[*client]struct{})}
	wsMux := http.NewServeMux()
	wsMux.HandleFunc(*path, h.serveWS(*echo))
	adminMux := http.NewServeMux()
	adminMux.HandleFunc("/publish", h.adminPublish(false))
	adminMux.HandleFunc("/broadcast", h.adminPublish(true))
	adminMux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })

	wsLn, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("%s: listen %s: %v", peerName, *listen, err)
	}
	adminLn, err := net.Listen("tcp", *adminListen)
	if err != nil {
		log.Fatalf("%s: admin listen %s: %v", peerName, *adminListen, err)
	}
	go func() { log.Fatal(http.Serve(wsLn, wsMux)) }()
	go func() { log.Fatal(http.Serve(adminLn, adminMux)) }()
	// Catch the signals before announcing: a harness may stop us as soon as it reads the line.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	// os.Stdout is unbuffered: the line is out before the load generator reads it.
	fmt.Printf("%s listening on ws://%s%s, admin on http://%s\n", peerName, wsLn.Addr(), *path, adminLn.Addr())
	<-stop
	os.Exit(0)
}
