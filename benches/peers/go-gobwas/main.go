// go-gobwas: the wspushd contract built as Mail.Ru's "A Million WebSockets and Go" describes its
// "after": gobwas/ws zero-copy upgrade on the bare net.Conn, epoll readiness (mailru/easygo) before
// any read so an idle connection has no goroutine and no buffer, a bounded goroutine pool for reads
// that also throttles accept+upgrade, and a writer goroutine only while there is something to send.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/gobwas/pool/pbufio"
	"github.com/gobwas/ws"
	"github.com/mailru/easygo/netpoll"
)

const (
	peerName         = "go-gobwas"
	poolSize         = 128     // the article's figure
	sendQueueLen     = 64      // frames per connection; when full the connection is closed (slow consumer)
	maxMessageSize   = 1 << 16 // largest client frame, as wspushd's default
	maxHeadBytes     = 8 << 10 // request line + headers, as wspushd's default; beyond, 431
	maxPublishBody   = 1 << 20
	handshakeTimeout = 10 * time.Second
	frameTimeout     = 10 * time.Second // to finish a frame once its first bytes were readable
	acceptCooldown   = 5 * time.Millisecond
	readEvents       = netpoll.EPOLLIN | netpoll.EPOLLRDHUP | netpoll.EPOLLONESHOT
)

// conn is all an idle connection owns: no goroutine, no read buffer, no write buffer.
type conn struct {
	nc         net.Conn
	fd         int // raw descriptor, not dup'ed: easygo's HandleRead would double the fd count
	user       string
	fragmented bool // inside a fragmented message; touched only by the (one-shot) receive task

	mu      sync.Mutex
	queue   [][]byte // framed messages for the writer; nil while idle
	writing bool     // a writer goroutine is running
	closed  bool
}

type server struct {
	path string
	echo bool
	ep   *netpoll.Epoll
	pool *pool
	hub  hub
}

func rawFD(sc syscall.Conn) (int, error) {
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return -1, err
	}
	return fd, nil
}

// serveListener accepts only when epoll says a connection is waiting and a pool worker takes
// the accept+upgrade within 1 ms; otherwise it cools down: the article's self-DDoS guard.
func (s *server) serveListener(ln *net.TCPListener) error {
	fd, err := rawFD(ln)
	if err != nil {
		return err
	}
	rearm := func() { _ = s.ep.Mod(fd, netpoll.EPOLLIN|netpoll.EPOLLONESHOT) }
	return s.ep.Add(fd, netpoll.EPOLLIN|netpoll.EPOLLONESHOT, func(netpoll.EpollEvent) {
		err := s.pool.ScheduleTimeout(time.Millisecond, func() {
			nc, err := ln.Accept()
			if err != nil { // e.g. out of descriptors: retry later rather than spin
				time.Sleep(acceptCooldown)
				rearm()
				return
			}
			rearm()
			s.handshake(nc)
		})
		if err != nil {
			time.Sleep(acceptCooldown)
			rearm()
		}
	})
}

// headLimiter caps the request head: gobwas/ws reads a header line of any length.
type headLimiter struct {
	r    io.Reader
	left int
}

var errHeadTooLarge = errors.New("request head too large")

func (l *headLimiter) Read(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, errHeadTooLarge
	}
	if len(p) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= n
	return n, err
}

type countingWriter struct {
	w io.Writer
	n int
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += n
	return n, err
}

func (s *server) handshake(nc net.Conn) {
	_ = nc.SetDeadline(time.Now().Add(handshakeTimeout))
	// writing=true holds publishes in the queue until the 101 is out and the writer may start.
	c := &conn{nc: nc, fd: -1, writing: true}
	registered := false
	upgrader := ws.Upgrader{
		OnRequest: func(uri []byte) error {
			path, rawQuery, _ := bytes.Cut(uri, []byte("?"))
			if string(path) != s.path {
				return ws.RejectConnectionError(ws.RejectionStatus(http.StatusNotFound), ws.RejectionReason("not found"))
			}
			query, _ := url.ParseQuery(string(rawQuery))
			if c.user = query.Get("user"); c.user == "" {
				return ws.RejectConnectionError(ws.RejectionStatus(http.StatusBadRequest), ws.RejectionReason("missing user"))
			}
			return nil
		},
		// Registered before the 101 goes out, so a publish right after the client sees it counts
		// this tab (as wspushd does).
		OnBeforeUpgrade: func() (ws.HandshakeHeader, error) {
			s.hub.add(c)
			registered = true
			return nil, nil
		},
	}
	out := &countingWriter{w: nc}
	_, err := upgrader.Upgrade(struct {
		io.Reader
		io.Writer
	}{&headLimiter{r: nc, left: maxHeadBytes}, out})
	if err != nil && registered {
		s.close(c)
		return
	}
	if err != nil {
		// gobwas/ws answers nothing for an unparsable request line or an I/O error.
		var rejected *ws.ConnectionRejectedError
		if out.n == 0 && errors.Is(err, errHeadTooLarge) {
			io.WriteString(nc, "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		} else if out.n == 0 && errors.As(err, &rejected) {
			io.WriteString(nc, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		}
		go lingerClose(nc)
		return
	}
	_ = nc.SetDeadline(time.Time{})

	fd, err := rawFD(nc.(*net.TCPConn))
	c.mu.Lock()
	// A publish may already have closed c (queue full): never register a closed, reusable fd number.
	if err == nil && !c.closed {
		c.fd = fd
		err = s.ep.Add(fd, readEvents, func(netpoll.EpollEvent) { s.pool.Schedule(func() { s.receive(c) }) })
	}
	c.writing = len(c.queue) > 0
	if c.writing && !c.closed {
		go s.write(c)
	}
	c.mu.Unlock()
	if err != nil {
		s.close(c)
	}
}

// lingerClose lets the client read our error answer: closing with unread input sends a RST.
func lingerClose(nc net.Conn) {
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	_ = nc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	_, _ = io.Copy(io.Discard, io.LimitReader(nc, 1<<20))
	nc.Close()
}

// receive runs on a pool worker once epoll reports c readable. It reads every frame that arrived,
// gives the pooled read buffer back, and re-arms the one-shot epoll registration.
func (s *server) receive(c *conn) {
	c.mu.Lock() // also orders this task after the previous one (which re-armed under c.mu)
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return
	}
	br := pbufio.GetReader(c.nc, 4096)
	defer pbufio.PutReader(br)
	_ = c.nc.SetReadDeadline(time.Now().Add(frameTimeout))
	for {
		if !s.readFrame(c, br) {
			s.close(c)
			return
		}
		if br.Buffered() == 0 {
			break
		}
	}
	_ = c.nc.SetReadDeadline(time.Time{})
	c.mu.Lock()
	if !c.closed {
		_ = s.ep.Mod(c.fd, readEvents)
	}
	c.mu.Unlock()
}

// readFrame handles one client frame; false means the connection must close.
func (s *server) readFrame(c *conn, br io.Reader) bool {
	h, err := ws.ReadHeader(br)
	if err != nil {
		return false
	}
	state := ws.StateServerSide
	if c.fragmented {
		state |= ws.StateFragmented
	}
	if err := ws.CheckHeader(h, state); err != nil {
		s.sendCloseNow(c, ws.StatusProtocolError)
		return false
	}
	if h.Length > maxMessageSize {
		s.sendCloseNow(c, ws.StatusMessageTooBig)
		return false
	}
	payload := make([]byte, h.Length)
	if _, err := io.ReadFull(br, payload); err != nil {
		return false
	}
	ws.Cipher(payload, h.Mask, 0)
	switch h.OpCode {
	case ws.OpPing:
		queued, _ := s.send(c, ws.MustCompileFrame(ws.NewPongFrame(payload)))
		return queued
	case ws.OpPong:
		return true
	case ws.OpClose:
		code := ws.StatusNormalClosure
		if len(payload) >= 2 {
			code, _ = ws.ParseCloseFrameData(payload)
		}
		s.sendCloseNow(c, code)
		return false
	default: // text, binary, continuation: echoed frame by frame, fragmentation kept
		c.fragmented = !h.Fin
		if !s.echo {
			return true
		}
		queued, _ := s.send(c, ws.MustCompileFrame(ws.NewFrame(h.OpCode, h.Fin, payload)))
		return queued
	}
}

func (s *server) sendCloseNow(c *conn, code ws.StatusCode) {
	_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.nc.Write(ws.MustCompileFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(code, ""))))
}

// send queues a framed message and starts a writer goroutine if none is running. full reports a
// slow consumer, which the caller closes (outside any hub lock: close takes the hub's write lock).
func (s *server) send(c *conn, frame []byte) (queued, full bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false, false
	}
	if len(c.queue) >= sendQueueLen {
		return false, true
	}
	c.queue = append(c.queue, frame)
	if !c.writing {
		c.writing = true
		go s.write(c)
	}
	return true, false
}

// write drains the queue with one writev per batch and exits when it is empty.
func (s *server) write(c *conn) {
	for {
		c.mu.Lock()
		frames := c.queue
		c.queue = nil
		if len(frames) == 0 || c.closed {
			c.writing = false
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		batch := net.Buffers(frames)
		if _, err := batch.WriteTo(c.nc); err != nil {
			s.close(c)
			return
		}
	}
}

func (s *server) close(c *conn) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.queue = nil
	// Leave epoll before close: once closed, the fd number may be reused by the next accept.
	_ = s.ep.Del(c.fd)
	c.mu.Unlock()
	s.hub.remove(c)
	c.nc.Close()
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "WebSocket address")
	adminListen := flag.String("admin-listen", "127.0.0.1:8081", "admin HTTP address")
	path := flag.String("path", "/ws", "WebSocket path")
	echo := flag.Bool("echo", false, "echo every client message back to its sender")
	flag.Parse()

	ep, err := netpoll.EpollCreate(nil)
	if err != nil {
		log.Fatalf("%s: epoll: %v", peerName, err)
	}
	s := &server{path: *path, echo: *echo, ep: ep, pool: newPool(poolSize), hub: hub{users: make(map[string]map[*conn]struct{})}}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("%s: listen %s: %v", peerName, *listen, err)
	}
	adminLn, err := net.Listen("tcp", *adminListen)
	if err != nil {
		log.Fatalf("%s: admin listen %s: %v", peerName, *adminListen, err)
	}
	if err := s.serveListener(ln.(*net.TCPListener)); err != nil {
		log.Fatalf("%s: epoll add listener: %v", peerName, err)
	}
	go func() { log.Fatal(http.Serve(adminLn, s.adminMux())) }()
	// Catch the signals before announcing: a harness may stop us as soon as it reads the line.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	// os.Stdout is unbuffered: the line is out before the load generator reads it.
	fmt.Printf("%s listening on ws://%s%s, admin on http://%s\n", peerName, ln.Addr(), *path, adminLn.Addr())
	<-stop
	os.Exit(0)
}
