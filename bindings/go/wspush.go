// Package wspush is the Go binding of wspush, a WebSocket push engine for very many mostly
// idle connections (libwspush.so, written in Rust, used here through cgo).
//
// The host starts a Server, decides in Handler.OnUpgrade who each connection belongs to (or
// lets the engine verify a JSON Web Token, see Config.JWTHS256Secret), and calls
// Server.Publish from any goroutine when there is news for a user: every open connection
// (browser tab) of that user gets the message.
//
// # Building
//
// The package links libwspush through pkg-config (#cgo pkg-config: wspush). With the library
// installed into a prefix (cargo cinstall, see the repository's README), point pkg-config at it:
//
//	PKG_CONFIG_PATH=/opt/wspush/lib/pkgconfig go build
//
// (and let the dynamic linker find the library at run time: a system prefix such as /usr/local
// after ldconfig, LD_LIBRARY_PATH=/opt/wspush/lib, or CGO_LDFLAGS="-Wl,-rpath,/opt/wspush/lib").
//
// From a checkout, without installing: `cargo build --release` at the repository root writes
// target/release/pkgconfig/wspush-uninstalled.pc, which pkg-config prefers over an installed
// wspush.pc and which records target/release as the run-time search path:
//
//	PKG_CONFIG_PATH=$REPO/target/release/pkgconfig go test ./...
//
// # Threading
//
// Handler methods run on the engine's I/O threads, several at once, so they must be safe for
// concurrent use. A handler that blocks stalls the connections of its I/O thread: hand slow
// work (e.g. a session lookup for auth) to a goroutine, using Request.Defer and
// Server.AcceptUpgrade / Server.RejectUpgrade. Every Server method may be called from any
// goroutine, including from inside a handler. Byte slices passed to handlers are copies the
// handler may keep.
//
// A panic in a handler is recovered and logged (to Config.ErrorLog); in OnUpgrade the
// connection is then rejected with HTTP 500.
//
// # Several nodes
//
// With Config.RedisURL several servers share users through Redis: a publish on any node
// reaches the user's connections on every node. Publish then only queues the message;
// Server.PublishWait and Server.PublishAsync tell the outcome, where Published.Delivered counts
// the NODES holding a connection of the user, and ErrUnavailable means Redis did not confirm in
// time (the message may still be applied). PublishAsync completions run on the engine's Redis
// thread, with the same rules as handlers.
//
// # Never runtime.Goexit in a handler
//
// A handler must return (or panic); it must not call runtime.Goexit, and so, in tests, not
// t.Fatal, t.FailNow, t.Skip or anything else that calls it: use t.Error and return, or send
// the failure to the test goroutine. Handlers run on the engine's I/O threads, which Go did not
// create and cannot exit, and Goexit cannot be recovered: the Go runtime aborts the whole
// process ("Goexit called in a thread that was not created by the Go runtime"). The binding
// cannot prevent that; it writes "wspush: FATAL: the ... handler called runtime.Goexit" with
// the handler's stack to Config.ErrorLog and standard error just before.
//
// # Lifetime and processes
//
// Handlers may run before Start returns (clients connecting during the start); Port, Stop and
// every other method work there. A Server is valid only as returned by Start: the zero value
// acts as a stopped server (Stop and Stats return ErrStopped). A server belongs to the process
// that started it; the engine's descriptors are close-on-exec, so os/exec children inherit
// none of them.
package wspush

/*
#cgo pkg-config: wspush
#include <stdlib.h>
#include "bridge.h"
*/
import "C"

import (
	"log"
	"math"
	"reflect"
	"runtime/cgo"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// ConnID identifies one connection (and, before it is upgraded, its pending upgrade ticket).
// IDs are never reused while the server runs, so a stale ID cannot reach another connection.
type ConnID uint64

// MaxUserIDLen is the longest user ID in bytes; the shortest is 1. A user ID never contains a
// NUL byte (ErrInvalidUserID).
const MaxUserIDLen = 255

// SlowConsumerPolicy says what happens when a connection's unsent data would pass
// Config.MaxQueueBytes.
type SlowConsumerPolicy uint32

const (
	// SlowConsumerClose closes the connection with 1008 (the default): the client reconnects.
	SlowConsumerClose SlowConsumerPolicy = 0
	// SlowConsumerDrop drops that message for that connection only (Handler.OnDrop is told).
	SlowConsumerDrop SlowConsumerPolicy = 1
)

// The numbers above are the header's; these fail to compile if a value ever differed.
var (
	_ = [1]struct{}{}[MaxUserIDLen-C.WSPUSH_MAX_USER_ID_LEN]
	_ = [1]struct{}{}[SlowConsumerClose-C.WSPUSH_SLOW_CONSUMER_CLOSE]
	_ = [1]struct{}{}[SlowConsumerDrop-C.WSPUSH_SLOW_CONSUMER_DROP]
)

// Config configures a Server. The zero value of every field means the library's default,
// given in brackets.
type Config struct {
	// Listen is the address to listen on, "host:port" ["127.0.0.1:8080"]; port 0 picks a free
	// port (see Server.Port).
	Listen string
	// Path is the request path that accepts upgrades ["/ws"]; other paths get 404.
	Path string
	// AllowedOrigins, when not empty, lists the only Origin header values accepted (others
	// get 403) [any origin].
	AllowedOrigins []string
	// Threads is the number of I/O threads, at most 255 [one per core].
	Threads int
	// MaxConnections: open plus handshaking connections beyond which new sockets get 503
	// [1,000,000].
	MaxConnections int
	// MaxConnectionsPerUser: connections one user may hold at once; the next is rejected with
	// 429 [0: no limit].
	MaxConnectionsPerUser int
	// MaxMessageSize is the largest message a client may send; larger closes with 1009 [64 KiB].
	MaxMessageSize int
	// MaxQueueBytes caps the bytes queued for one connection that its socket has not taken
	// yet; SlowConsumer says what happens beyond. It is also the largest payload Publish,
	// Broadcast and Send accept [1 MiB].
	MaxQueueBytes int
	// SlowConsumer is the policy when MaxQueueBytes would be passed [SlowConsumerClose].
	SlowConsumer SlowConsumerPolicy
	// MaxHeaderBytes is the largest HTTP request head, at least 256; larger gets 431 [8 KiB].
	MaxHeaderBytes int
	// MaxHandshakesPerThread: handshakes in progress per I/O thread beyond which that thread
	// pauses accepting, so a reconnect storm waits in the kernel's backlog [1024].
	MaxHandshakesPerThread int
	// PingInterval: a connection silent this long is sent a ping [30s].
	PingInterval time.Duration
	// IdleTimeout: a connection silent this long is closed with 1006 [75s].
	IdleTimeout time.Duration
	// HandshakeTimeout is the time from accept to a completed upgrade, deferred decisions
	// included [10s].
	HandshakeTimeout time.Duration
	// DrainTimeout is how long Stop waits for queued data and close handshakes [5s].
	DrainTimeout time.Duration
	// CloseTimeout is how long a connection we close waits for the peer to end it (answer our
	// close frame and close its socket, as browsers do) before the socket is closed anyway [2s].
	CloseTimeout time.Duration
	// MaxConnectionsPerIP: connections (open or handshaking) one client IP address may hold,
	// IPv6 counted per /64; beyond, new sockets from it get 429 [0: no limit].
	MaxConnectionsPerIP int
	// MaxHandshakesPerIPPerSec: new connections one client IP address (IPv6: /64) may open per
	// second, in bursts of at most that many; beyond, 429. At most math.MaxUint32 [0: no limit].
	MaxHandshakesPerIPPerSec int
	// JWTHS256Secret, when not empty, turns on the built-in JSON Web Token authentication with
	// this HS256 secret (at least 32 bytes, else Start returns ErrInvalidArgument; copied). The
	// token is read from an "Authorization: Bearer" header, else the "token" query parameter;
	// it must be signed with HS256 (any other alg, "none" included, is refused), carry exp and
	// a sub of 1 to MaxUserIDLen bytes; nbf is honoured. Without an upgrade handler (see
	// Handler) a valid token opens as its sub and anything else gets 401 "invalid token";
	// an upgrade handler reads the sub with Request.VerifiedUser and decides [off].
	JWTHS256Secret []byte
	// JWTLeeway is the clock skew allowed when checking a token's exp and nbf; rounded up to
	// whole milliseconds, so time.Millisecond is the strictest setting [30s].
	JWTLeeway time.Duration
	// ThreadStackSize is the stack size in bytes of the engine's I/O threads, at least 64 KiB
	// [8 MiB]. Go handlers run on goroutine stacks, which grow as needed; this matters only for
	// C code a handler calls on that thread.
	ThreadStackSize int
	// ProxyProtocol, behind a load balancer: connections from TrustedProxies must open with a
	// PROXY protocol header, v1 or v2 (HAProxy send-proxy/send-proxy-v2, nginx
	// "proxy_protocol on", cloud TCP balancers), else they get 400. The client address it
	// carries is what the per-address limits count and what Request.Peer returns. Other
	// sources are served directly; a PROXY header from them gets 400. Needs at least one
	// trusted proxy, else Start returns ErrInvalidArgument [off].
	ProxyProtocol bool
	// TrustedProxies lists the sources allowed to send PROXY headers: addresses ("127.0.0.1",
	// "::1") or CIDR networks ("10.0.0.0/8", "fd00::/8"); anything else makes Start return
	// ErrInvalidAddress [none].
	TrustedProxies []string
	// MaxPendingHandshakesPerIP: handshakes in progress (accepted, not yet upgraded) one client
	// IP address (IPv6: /64) may have; beyond, new sockets from it get 429 at once
	// [0: no limit].
	MaxPendingHandshakesPerIP int
	// MessageTimeout is the time a client has to complete a frame or a fragmented message once
	// it has started sending it; then the connection is closed with 1008. Rounded up to whole
	// milliseconds [5s].
	MessageTimeout time.Duration
	// MaxPartialInputBytes: bytes all connections together may hold for incomplete frames and
	// messages; the connection whose input would pass it is closed with 1013 (try again later)
	// [256 MiB].
	MaxPartialInputBytes int
	// SocketSendBuffer and SocketRecvBuffer are the SO_SNDBUF and SO_RCVBUF of every
	// connection's socket in bytes. Smaller buffers save kernel memory per connection at the
	// cost of throughput per connection [0: the kernel's autotuning].
	SocketSendBuffer int
	SocketRecvBuffer int
	// HistoryMaxMessages turns on per-user history for clients of the wspush.v1 subprotocol:
	// the last this many messages published to each user are kept and numbered (offsets 1, 2,
	// 3, ... per user, see Server.PublishWithOffset), and a client that reconnects with
	// ?since=EPOCH:OFFSET is sent what it missed [0: off].
	HistoryMaxMessages int
	// HistoryTTL is how long a message stays in a user's history; kept in whole seconds,
	// rounded up. A stream whose newest message has expired is dropped: the user's next
	// publish starts a new epoch at offset 1 [10m].
	HistoryTTL time.Duration
	// HistoryMaxBytes: bytes all users' histories together may take, payloads plus bookkeeping
	// (Stats.HistoryBytes); past it the least recently published users' streams are dropped
	// whole [64 MiB]. Does not apply with RedisURL (Redis's maxmemory does).
	HistoryMaxBytes int
	// RedisURL, when not empty, makes several servers ("nodes", in one or several processes)
	// share users through Redis: "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]" (else Start returns
	// ErrInvalidArgument). A publish on any node then reaches the user's connections on every
	// node, history (when on) is kept in Redis, and Publish only queues the message (it returns
	// 0): PublishWait and PublishAsync tell the outcome [off].
	RedisURL string
	// RedisTimeout is how long Redis may take to answer before a publish fails with
	// ErrUnavailable (the message may still be applied) and the connection to Redis is remade;
	// at least 10ms, rounded up to whole milliseconds [2s].
	RedisTimeout time.Duration
	// Handler receives the server's events. Without one (nil, or a HandlerFuncs with a nil
	// Upgrade), upgrades get DefaultUpgrade: a valid JWT (JWTHS256Secret) opens as its sub,
	// anything else gets 401. If it also implements HTTPHandler, it answers plain HTTP
	// requests too.
	Handler Handler
	// ErrorLog receives reports of panics recovered in handlers [the log package's standard
	// logger].
	ErrorLog *log.Logger
}

// Stats is a snapshot of the server's gauges and counters. *Total counters only grow. The
// JSON names are those of the C struct wspush_stats_snapshot, in its order (see StatsFields).
type Stats struct {
	Connections             uint64 `json:"connections"`                  // open (upgraded) connections now
	Handshakes              uint64 `json:"handshakes"`                   // connections accepted but not yet upgraded (deferred included)
	Users                   uint64 `json:"users"`                        // distinct users with at least one open connection
	AcceptedTotal           uint64 `json:"accepted_total"`               // sockets accepted
	UpgradesTotal           uint64 `json:"upgrades_total"`               // successful upgrades
	RejectedTotal           uint64 `json:"rejected_total"`               // requests answered with an HTTP error (host rejections included)
	OverCapacityTotal       uint64 `json:"over_capacity_total"`          // sockets answered 503 because MaxConnections was reached
	MessagesInTotal         uint64 `json:"messages_in_total"`            // messages received from clients
	MessagesOutTotal        uint64 `json:"messages_out_total"`           // messages handed to sockets, one per recipient connection
	BytesOutTotal           uint64 `json:"bytes_out_total"`              // bytes written to sockets, frame headers included
	PublishesTotal          uint64 `json:"publishes_total"`              // calls to Publish
	BroadcastsTotal         uint64 `json:"broadcasts_total"`             // calls to Broadcast
	DroppedTotal            uint64 `json:"dropped_total"`                // messages dropped for a slow consumer (SlowConsumerDrop)
	SlowConsumerClosesTotal uint64 `json:"slow_consumer_closes_total"`   // connections closed with 1008 (SlowConsumerClose)
	ProtocolErrorsTotal     uint64 `json:"protocol_errors_total"`        // connections closed for a protocol violation
	TimeoutsTotal           uint64 `json:"timeouts_total"`               // connections closed by the handshake deadline or idle timeout
	PingsTotal              uint64 `json:"pings_total"`                  // heartbeat pings sent
	IPLimitedTotal          uint64 `json:"ip_limited_total"`             // sockets answered 429 by MaxConnectionsPerIP, MaxHandshakesPerIPPerSec or MaxPendingHandshakesPerIP
	QueuedBytes             uint64 `json:"queued_bytes"`                 // bytes queued for connections, not yet taken by their sockets
	PartialInputBytes       uint64 `json:"partial_input_bytes"`          // bytes held for incomplete client frames and messages
	MessageTimeoutsTotal    uint64 `json:"message_timeouts_total"`       // closed with 1008: a started frame or message not completed in time
	PartialInputRefusals    uint64 `json:"partial_input_refusals_total"` // closed with 1013: the cap on incomplete input was reached
	MaxConnections          uint64 `json:"max_connections"`              // the connection cap in force (lowered to RLIMIT_NOFILE)
	HistoryUsers            uint64 `json:"history_users"`                // users with a history stream (HistoryMaxMessages > 0)
	HistoryMessages         uint64 `json:"history_messages"`             // messages held in users' histories
	HistoryBytes            uint64 `json:"history_bytes"`                // bytes charged to history: payloads plus bookkeeping (HistoryMaxBytes)
	ResumesTotal            uint64 `json:"resumes_total"`                // wspush.v1 connections that asked to resume (since=...)
	RecoveriesTotal         uint64 `json:"recoveries_total"`             // resumes that recovered: everything after since was replayed
	RecoveryFailuresTotal   uint64 `json:"recovery_failures_total"`      // resumes not honoured (other epoch, trimmed, expired, too large): the client resets
	RedisConnected          uint64 `json:"redis_connected"`              // 1 while this node's Redis connections are all up (0 without Redis)
	RedisSubscribedUsers    uint64 `json:"redis_subscribed_users"`       // users whose Redis channel this node is subscribed to
	RedisPublishFailures    uint64 `json:"redis_publish_failures_total"` // publishes Redis did not confirm in time (they may still have been applied)
	RedisFills              uint64 `json:"redis_fills_total"`            // stream reads to fill a jump in offsets or catch up after a lost Redis connection
	RedisResets             uint64 `json:"redis_resets_total"`           // users whose wspush.v1 connections were closed with 1012: history under them was lost
}

// Published is what Server.PublishWithOffset, Server.PublishWait or Server.PublishAsync did.
type Published struct {
	// Delivered is how many connections the message was queued to (0 when the user has none).
	// With Redis (Config.RedisURL; PublishWait and PublishAsync) it is the number of NODES
	// (servers sharing the Redis) holding a connection of the user, each of which got the
	// message.
	Delivered int
	// Offset is the message's offset in the user's history stream: 1, 2, 3, ... per user (from 1
	// again when the stream starts a new epoch), 0 when history is off (Config.HistoryMaxMessages).
	Offset uint64
}

// Server is a running wspush server. Its methods are safe for concurrent use, also from
// inside handlers. Stop it with Stop, which also releases it.
type Server struct {
	// lifetime: every call into the library holds the read lock, so that Stop's release of the
	// C server (under the write lock) cannot happen during a call.
	lifetime sync.RWMutex
	// ptr is the C server; nil before Start returned (set by the first callback in that
	// window) and after the release.
	// (An unsafe.Pointer because atomic.Pointer cannot hold an incomplete C type.)
	ptr unsafe.Pointer
	// port is the listening port, 0 until known (a handler may ask before Start returned).
	port atomic.Int32
	// handle is the cgo.Handle of the serverState, the callbacks' userdata; set before the C
	// server starts, deleted after it is released, when no callback can run any more.
	handle   cgo.Handle
	stopping atomic.Bool
	// started is closed once Start has the C server or has failed (startFailed, written
	// before). A Stop called by a handler before that waits for it: until
	// wspush_server_start has returned, the host does not own the server and must not free it.
	started     chan struct{}
	startFailed bool
	// done is nil only in a Server not made by Start (the zero value).
	done chan struct{}
	// Written before done is closed.
	finalStats Stats
	stopErr    error
	// redis: started with Config.RedisURL (publish completions then run on the Redis thread).
	redis bool
	// errorLog receives panics recovered in PublishAsync completions (Config.ErrorLog).
	errorLog *log.Logger
}

// afterCStart, when set (by tests), runs in Start between wspush_server_start and the moment
// the Server takes the C server: the window in which handlers already run.
var afterCStart func(port int)

// closedChannel is what Done returns for a Server not made by Start.
var closedChannel = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// serverState is what the callbacks reach through the cgo.Handle passed as userdata.
type serverState struct {
	server   *Server
	handler  Handler
	http     HTTPHandler
	errorLog *log.Logger
}

// Version returns the library's version, e.g. "0.1.0".
func Version() string {
	return C.GoString(C.wspush_version())
}

// Start binds the listening socket(s) and starts the I/O threads. Handlers may run before
// Start returns.
func Start(config Config) (*Server, error) {
	cfg := C.wspush_config_new()
	if cfg == nil {
		return nil, &Error{Code: ResultPanic, Op: "Start"}
	}
	defer C.wspush_config_free(cfg)
	if err := applyConfig(cfg, &config); err != nil {
		return nil, err
	}

	server := &Server{started: make(chan struct{}), done: make(chan struct{}), redis: config.RedisURL != ""}
	state := &serverState{server: server, handler: config.Handler, errorLog: config.ErrorLog}
	if state.errorLog == nil {
		state.errorLog = log.Default()
	}
	server.errorLog = state.errorLog
	mask := callbackMask(config.Handler)
	if h, ok := config.Handler.(HTTPHandler); ok && mask&C.WSPUSH_GO_ON_HTTP != 0 {
		state.http = h
	}
	handle := cgo.NewHandle(state)
	// Before the start: a handler may run (and Stop) before wspush_go_start returns.
	server.handle = handle
	if err := check("Start: callbacks", C.wspush_go_set_callbacks(cfg, C.uintptr_t(handle), C.unsigned(mask))); err != nil {
		handle.Delete()
		return nil, err
	}
	started := C.wspush_go_start(cfg)
	if err := check("Start", started.result); err != nil {
		// The engine has joined whatever threads it started: no handler runs any more. One
		// that called Stop meanwhile left finishStop waiting for started.
		server.storePtr(nil)
		server.startFailed = true
		close(server.started)
		if server.stopping.CompareAndSwap(false, true) {
			close(server.done)
		} else {
			<-server.done
		}
		handle.Delete()
		return nil, err
	}
	if port := C.wspush_go_local_port(started.server); port.result == C.WSPUSH_RESULT_OK {
		server.port.Store(int32(port.value))
	}
	if afterCStart != nil {
		afterCStart(int(server.port.Load()))
	}
	server.storePtr(started.server)
	close(server.started)
	return server, nil
}

// callbackMask selects the C callbacks to install: all of the Handler interface, but only the
// non-nil fields of a HandlerFuncs (so unused events cost no call into Go).
func callbackMask(handler Handler) uint {
	var funcs *HandlerFuncs
	switch h := handler.(type) {
	case nil:
		return 0
	case HandlerFuncs:
		funcs = &h
	case *HandlerFuncs:
		if h == nil {
			return 0
		}
		funcs = h
	default:
		mask := uint(C.WSPUSH_GO_ON_UPGRADE | C.WSPUSH_GO_ON_OPEN | C.WSPUSH_GO_ON_MESSAGE |
			C.WSPUSH_GO_ON_CLOSE | C.WSPUSH_GO_ON_DROP)
		if _, ok := handler.(HTTPHandler); ok {
			mask |= C.WSPUSH_GO_ON_HTTP
		}
		return mask
	}
	var mask uint
	for _, entry := range []struct {
		set bool
		bit uint
	}{
		{funcs.Upgrade != nil, C.WSPUSH_GO_ON_UPGRADE},
		{funcs.Open != nil, C.WSPUSH_GO_ON_OPEN},
		{funcs.Message != nil, C.WSPUSH_GO_ON_MESSAGE},
		{funcs.Close != nil, C.WSPUSH_GO_ON_CLOSE},
		{funcs.Drop != nil, C.WSPUSH_GO_ON_DROP},
		{funcs.HTTP != nil, C.WSPUSH_GO_ON_HTTP},
	} {
		if entry.set {
			mask |= entry.bit
		}
	}
	return mask
}

// applyConfig copies every non-zero field of config into cfg.
func applyConfig(cfg *C.wspush_config, config *Config) error {
	if config.Listen != "" {
		if err := check("Config.Listen", C.wspush_config_set_listen(cfg, strPtr(config.Listen), C.size_t(len(config.Listen)))); err != nil {
			return err
		}
	}
	if config.Path != "" {
		if err := check("Config.Path", C.wspush_config_set_path(cfg, strPtr(config.Path), C.size_t(len(config.Path)))); err != nil {
			return err
		}
	}
	for _, origin := range config.AllowedOrigins {
		if err := check("Config.AllowedOrigins", C.wspush_config_add_allowed_origin(cfg, strPtr(origin), C.size_t(len(origin)))); err != nil {
			return err
		}
	}
	// The trusted proxies first: the library refuses ProxyProtocol without one.
	for _, network := range config.TrustedProxies {
		if err := check("Config.TrustedProxies", C.wspush_config_add_trusted_proxy(cfg, strPtr(network), C.size_t(len(network)))); err != nil {
			return err
		}
	}
	if config.ProxyProtocol {
		if err := check("Config.ProxyProtocol", C.wspush_config_set_proxy_protocol(cfg, C.bool(true))); err != nil {
			return err
		}
	}
	sizes := []struct {
		name  string
		value int
		set   func(*C.wspush_config, C.size_t) C.wspush_result
	}{
		{"Threads", config.Threads, func(c *C.wspush_config, v C.size_t) C.wspush_result { return C.wspush_config_set_threads(c, v) }},
		{"MaxConnections", config.MaxConnections, func(c *C.wspush_config, v C.size_t) C.wspush_result {
			return C.wspush_config_set_max_connections(c, v)
		}},
		{"MaxConnectionsPerUser", config.MaxConnectionsPerUser, func(c *C.wspush_config, v C.size_t) C.wspush_result {
			return C.wspush_config_set_max_connections_per_user(c, v)
		}},
		{"MaxMessageSize", config.MaxMessageSize, func(c *C.wspush_config, v C.size_t) C.wspush_result {
			return C.wspush_config_set_max_message_size(c, v)
		}},
		{"MaxQueueBytes", config.MaxQueueBytes, func(c *C.wspush_config, v C.size_t) C.wspush_result {
			return C.wspush_config_set_max_queue_bytes(c, v)
		}},
		{"MaxHeaderBytes", config.MaxHeaderBytes, func(c *C.wspush_config, v C.size_t) C.wspush_result {
			return C.wspush_config_set_max_header_bytes(c, v)
		}},
		{"MaxHandshakesPerThread", config.MaxHandshakesPerThread, func(c *C.wspush_config, v C.size_t) C.wspush_result {
			return C.wspush_config_set_max_handshakes_per_thread(c, v)
		}},
		{"MaxConnectionsPerIP", config.MaxConnectionsPerIP, func(c *C.wspush_config, v C.size_t) C.wspush_result {
			return C.wspush_config_set_max_connections_per_ip(c, v)
		}},
		{"MaxPendingHandshakesPerIP", config.MaxPendingHandshakesPerIP, func(c *C.wspush_config, v C.size_t) C.wspush_result {
			return C.wspush_config_set_max_pending_handshakes_per_ip(c, v)
		}},
		{"MaxPartialInputBytes", config.MaxPartialInputBytes, func(c *C.wspush_config, v C.size_t) C.wspush_result {
			return C.wspush_config_set_max_partial_input_bytes(c, v)
		}},
		{"HistoryMaxMessages", config.HistoryMaxMessages, func(c *C.wspush_config, v C.size_t) C.wspush_result {
			return C.wspush_config_set_history_max_messages(c, v)
		}},
		{"HistoryMaxBytes", config.HistoryMaxBytes, func(c *C.wspush_config, v C.size_t) C.wspush_result {
			return C.wspush_config_set_history_max_bytes(c, v)
		}},
	}
	for _, size := range sizes {
		if size.value < 0 {
			return &Error{Code: ResultInvalidArgument, Op: "Config." + size.name}
		}
		if size.value > 0 {
			if err := check("Config."+size.name, size.set(cfg, C.size_t(size.value))); err != nil {
				return err
			}
		}
	}
	durations := []struct {
		name  string
		value time.Duration
		set   func(*C.wspush_config, C.uint64_t) C.wspush_result
	}{
		{"PingInterval", config.PingInterval, func(c *C.wspush_config, v C.uint64_t) C.wspush_result {
			return C.wspush_config_set_ping_interval_ms(c, v)
		}},
		{"IdleTimeout", config.IdleTimeout, func(c *C.wspush_config, v C.uint64_t) C.wspush_result {
			return C.wspush_config_set_idle_timeout_ms(c, v)
		}},
		{"HandshakeTimeout", config.HandshakeTimeout, func(c *C.wspush_config, v C.uint64_t) C.wspush_result {
			return C.wspush_config_set_handshake_timeout_ms(c, v)
		}},
		{"DrainTimeout", config.DrainTimeout, func(c *C.wspush_config, v C.uint64_t) C.wspush_result {
			return C.wspush_config_set_drain_timeout_ms(c, v)
		}},
		{"CloseTimeout", config.CloseTimeout, func(c *C.wspush_config, v C.uint64_t) C.wspush_result {
			return C.wspush_config_set_close_timeout_ms(c, v)
		}},
		{"JWTLeeway", config.JWTLeeway, func(c *C.wspush_config, v C.uint64_t) C.wspush_result {
			return C.wspush_config_set_jwt_leeway_ms(c, v)
		}},
		{"MessageTimeout", config.MessageTimeout, func(c *C.wspush_config, v C.uint64_t) C.wspush_result {
			return C.wspush_config_set_message_timeout_ms(c, v)
		}},
		{"HistoryTTL", config.HistoryTTL, func(c *C.wspush_config, v C.uint64_t) C.wspush_result {
			return C.wspush_config_set_history_ttl_ms(c, v)
		}},
		{"RedisTimeout", config.RedisTimeout, func(c *C.wspush_config, v C.uint64_t) C.wspush_result {
			return C.wspush_config_set_redis_timeout_ms(c, v)
		}},
	}
	for _, duration := range durations {
		if duration.value < 0 {
			return &Error{Code: ResultInvalidArgument, Op: "Config." + duration.name}
		}
		if duration.value > 0 {
			// Round up so that a positive sub-millisecond value does not become 0 ("invalid").
			ms := (duration.value + time.Millisecond - 1) / time.Millisecond
			if err := check("Config."+duration.name, duration.set(cfg, C.uint64_t(ms))); err != nil {
				return err
			}
		}
	}
	if config.MaxHandshakesPerIPPerSec < 0 || uint64(config.MaxHandshakesPerIPPerSec) > math.MaxUint32 {
		return &Error{Code: ResultInvalidArgument, Op: "Config.MaxHandshakesPerIPPerSec"}
	}
	if config.MaxHandshakesPerIPPerSec > 0 {
		if err := check("Config.MaxHandshakesPerIPPerSec", C.wspush_config_set_max_handshakes_per_ip_per_sec(cfg, C.uint32_t(config.MaxHandshakesPerIPPerSec))); err != nil {
			return err
		}
	}
	if config.SocketSendBuffer < 0 {
		return &Error{Code: ResultInvalidArgument, Op: "Config.SocketSendBuffer"}
	}
	if config.SocketRecvBuffer < 0 {
		return &Error{Code: ResultInvalidArgument, Op: "Config.SocketRecvBuffer"}
	}
	if config.SocketSendBuffer > 0 || config.SocketRecvBuffer > 0 {
		// One C call sets both; a zero one keeps the kernel's autotuning.
		if err := check("Config.SocketSendBuffer/SocketRecvBuffer", C.wspush_config_set_socket_buffers(cfg, C.size_t(config.SocketSendBuffer), C.size_t(config.SocketRecvBuffer))); err != nil {
			return err
		}
	}
	if config.ThreadStackSize < 0 {
		return &Error{Code: ResultInvalidArgument, Op: "Config.ThreadStackSize"}
	}
	if config.ThreadStackSize > 0 {
		if err := check("Config.ThreadStackSize", C.wspush_config_set_thread_stack_size(cfg, C.size_t(config.ThreadStackSize))); err != nil {
			return err
		}
	}
	if config.RedisURL != "" {
		// The error names the field only: the URL may carry a password.
		if err := check("Config.RedisURL", C.wspush_config_set_redis_url(cfg, strPtr(config.RedisURL), C.size_t(len(config.RedisURL)))); err != nil {
			return err
		}
	}
	if len(config.JWTHS256Secret) > 0 {
		// The error names the field only: the secret never reaches an error message or a log.
		if err := check("Config.JWTHS256Secret", C.wspush_config_set_jwt_hs256_secret(cfg, bytesPtr(config.JWTHS256Secret), C.size_t(len(config.JWTHS256Secret)))); err != nil {
			return err
		}
	}
	if config.SlowConsumer != SlowConsumerClose {
		if err := check("Config.SlowConsumer", C.wspush_config_set_slow_consumer_policy(cfg, C.wspush_slow_consumer_policy(config.SlowConsumer))); err != nil {
			return err
		}
	}
	return nil
}

// strPtr points C at a Go string's bytes for the duration of a call (C copies what it keeps).
func strPtr(s string) *C.char {
	return (*C.char)(unsafe.Pointer(unsafe.StringData(s)))
}

// bytesPtr points C at a Go slice's bytes for the duration of a call; NULL when empty (the C
// API's empty buffer).
func bytesPtr(b []byte) *C.uint8_t {
	if len(b) == 0 {
		return nil
	}
	return (*C.uint8_t)(unsafe.Pointer(unsafe.SliceData(b)))
}

func messageKind(binary bool) C.wspush_message_kind {
	if binary {
		return C.WSPUSH_MESSAGE_KIND_BINARY
	}
	return C.WSPUSH_MESSAGE_KIND_TEXT
}

// acquire returns the live C server with the read lock held (release with s.lifetime.RUnlock),
// or nil (lock not held) once the server has been released.
func (s *Server) acquire() *C.wspush_server {
	s.lifetime.RLock()
	ptr := s.loadPtr()
	if ptr == nil {
		s.lifetime.RUnlock()
	}
	return ptr
}

func (s *Server) loadPtr() *C.wspush_server {
	return (*C.wspush_server)(atomic.LoadPointer(&s.ptr))
}

func (s *Server) storePtr(ptr *C.wspush_server) {
	atomic.StorePointer(&s.ptr, unsafe.Pointer(ptr))
}

// Port returns the TCP port the server listens on (useful with port 0 in Config.Listen), also
// in a handler that runs before Start has returned; 0 for a Server not made by Start.
func (s *Server) Port() int {
	if port := s.port.Load(); port != 0 {
		return int(port)
	}
	// Start has not read it yet: the handler asking has the C server (see stateOf).
	ptr := s.acquire()
	if ptr == nil {
		return 0
	}
	out := C.wspush_go_local_port(ptr)
	s.lifetime.RUnlock()
	if out.result != C.WSPUSH_RESULT_OK {
		return 0
	}
	s.port.Store(int32(out.value))
	return int(out.value)
}

// Publish sends msg to every open connection of user (1 to MaxUserIDLen bytes, no NUL), as a
// binary or text message (text must be UTF-8; it is not checked). It returns how many connections
// it was queued to: 0 when the user has none. Messages published by one goroutine reach each
// connection in publish order. msg is copied; the caller may reuse it. With Redis
// (Config.RedisURL) it only queues the message for Redis and returns 0 (ErrUnavailable when Redis
// has been unreachable for longer than Config.RedisTimeout): PublishWait and PublishAsync tell
// the outcome.
func (s *Server) Publish(user []byte, msg []byte, binary bool) (int, error) {
	ptr := s.acquire()
	if ptr == nil {
		return 0, &Error{Code: ResultStopped, Op: "Publish"}
	}
	out := C.wspush_go_publish(ptr, bytesPtr(user), C.size_t(len(user)), bytesPtr(msg), C.size_t(len(msg)), messageKind(binary))
	s.lifetime.RUnlock()
	return int(out.count), check("Publish", out.result)
}

// PublishWithOffset is Publish, also telling the offset the message got in the user's history
// stream (Published.Offset, 0 with history off). The offset is assigned whether or not the user
// has a connection: a wspush.v1 client that reconnects with since is sent the message then.
func (s *Server) PublishWithOffset(user []byte, msg []byte, binary bool) (Published, error) {
	ptr := s.acquire()
	if ptr == nil {
		return Published{}, &Error{Code: ResultStopped, Op: "PublishWithOffset"}
	}
	out := C.wspush_go_publish_with_offset(ptr, bytesPtr(user), C.size_t(len(user)), bytesPtr(msg), C.size_t(len(msg)), messageKind(binary))
	s.lifetime.RUnlock()
	if err := check("PublishWithOffset", out.result); err != nil {
		return Published{}, err
	}
	return Published{Delivered: int(out.delivered), Offset: uint64(out.offset)}, nil
}

// maxTimeoutMs is WSPUSH_MAX_TIMEOUT_MS, the longest timeout the library takes.
const maxTimeoutMs = math.MaxUint32

// PublishWait publishes like Publish and waits for the outcome, at most timeout (0: as long as
// Config.RedisTimeout allows; never longer than that). With Redis (Config.RedisURL)
// Published.Delivered is the number of NODES holding a connection of the user (each got the
// message) and Published.Offset the message's offset in the user's stream (0 with history off).
// ErrUnavailable when Redis did not confirm in time or is unreachable: the message may still be
// applied. Without Redis it is PublishWithOffset and does not wait. It blocks the calling
// goroutine's thread; inside a PublishAsync completion of this server it returns ErrInCallback.
// A negative timeout is ErrInvalidArgument.
func (s *Server) PublishWait(user []byte, msg []byte, binary bool, timeout time.Duration) (Published, error) {
	if timeout < 0 {
		return Published{}, &Error{Code: ResultInvalidArgument, Op: "PublishWait"}
	}
	ms := uint64(maxTimeoutMs)
	if timeout > 0 {
		// Rounded up so that a positive sub-millisecond timeout does not become 0.
		ms = min(uint64((timeout+time.Millisecond-1)/time.Millisecond), maxTimeoutMs)
	}
	ptr := s.acquire()
	if ptr == nil {
		return Published{}, &Error{Code: ResultStopped, Op: "PublishWait"}
	}
	out := C.wspush_go_publish_wait(ptr, bytesPtr(user), C.size_t(len(user)), bytesPtr(msg), C.size_t(len(msg)), messageKind(binary), C.uint64_t(ms))
	s.lifetime.RUnlock()
	if err := check("PublishWait", out.result); err != nil {
		return Published{}, err
	}
	return Published{Delivered: int(out.delivered), Offset: uint64(out.offset)}, nil
}

// PublishAsync publishes like Publish without waiting, and calls done exactly once with the
// outcome: a Published as PublishWait returns it, or the error (ErrUnavailable: Redis did not
// confirm in time, the message may still be applied; ErrStopped). It returns nil when the
// publish was accepted; an error returned here (as Publish returns, plus ErrUnavailable when
// Redis is known to be unreachable or too much already waits for it) means done is never
// called.
//
// Without Redis done runs on the calling goroutine before PublishAsync returns. With Redis it
// runs later on the engine's Redis thread, like a handler (keep it short: it holds up the other
// completions; never runtime.Goexit, see the package documentation); there it may call any
// method except PublishWait (ErrInCallback), and Stop only starts the stop. A panic in done is
// recovered and logged to Config.ErrorLog. msg is copied; the caller may reuse it.
func (s *Server) PublishAsync(user []byte, msg []byte, binary bool, done func(Published, error)) error {
	if done == nil {
		return &Error{Code: ResultNullArgument, Op: "PublishAsync"}
	}
	ptr := s.acquire()
	if ptr == nil {
		return &Error{Code: ResultStopped, Op: "PublishAsync"}
	}
	completion := &publishDone{done: done, errorLog: s.errorLog, onCaller: !s.redis}
	handle := cgo.NewHandle(completion)
	result := C.wspush_go_publish_async(ptr, bytesPtr(user), C.size_t(len(user)), bytesPtr(msg), C.size_t(len(msg)), messageKind(binary), C.uintptr_t(handle))
	s.lifetime.RUnlock()
	if err := check("PublishAsync", result); err != nil {
		// Refused: the completion will never run, so the handle is still ours.
		handle.Delete()
		return err
	}
	if completion.onCaller {
		completion.callerReturned()
	}
	return nil
}

// Broadcast sends msg to every open connection and returns how many were open.
func (s *Server) Broadcast(msg []byte, binary bool) (int, error) {
	ptr := s.acquire()
	if ptr == nil {
		return 0, &Error{Code: ResultStopped, Op: "Broadcast"}
	}
	out := C.wspush_go_broadcast(ptr, bytesPtr(msg), C.size_t(len(msg)), messageKind(binary))
	s.lifetime.RUnlock()
	return int(out.count), check("Broadcast", out.result)
}

// Send sends msg to one connection; ErrNotFound when it is not open.
func (s *Server) Send(conn ConnID, msg []byte, binary bool) error {
	ptr := s.acquire()
	if ptr == nil {
		return &Error{Code: ResultStopped, Op: "Send"}
	}
	result := C.wspush_send(ptr, C.uint64_t(conn), bytesPtr(msg), C.size_t(len(msg)), messageKind(binary))
	s.lifetime.RUnlock()
	return check("Send", result)
}

// Close starts the close handshake on one connection with code (1000-1003, 1007-1014,
// 3000-4999) and a UTF-8 reason of at most 123 bytes ("" for none). Handler.OnClose follows.
func (s *Server) Close(conn ConnID, code int, reason string) error {
	if code < 0 || code > math.MaxUint16 {
		return &Error{Code: ResultInvalidCloseCode, Op: "Close"}
	}
	ptr := s.acquire()
	if ptr == nil {
		return &Error{Code: ResultStopped, Op: "Close"}
	}
	result := C.wspush_close(ptr, C.uint64_t(conn), C.uint16_t(code), strPtr(reason), C.size_t(len(reason)))
	s.lifetime.RUnlock()
	return check("Close", result)
}

// DisconnectUser closes every connection of user with code and returns how many.
func (s *Server) DisconnectUser(user []byte, code int) (int, error) {
	if code < 0 || code > math.MaxUint16 {
		return 0, &Error{Code: ResultInvalidCloseCode, Op: "DisconnectUser"}
	}
	ptr := s.acquire()
	if ptr == nil {
		return 0, &Error{Code: ResultStopped, Op: "DisconnectUser"}
	}
	out := C.wspush_go_disconnect_user(ptr, bytesPtr(user), C.size_t(len(user)), C.uint16_t(code))
	s.lifetime.RUnlock()
	return int(out.count), check("DisconnectUser", out.result)
}

// AcceptUpgrade completes a deferred upgrade (see Request.Defer) by accepting it as user.
// ErrNotFound when the ticket is no longer pending (timed out, client gone). The decision is
// applied asynchronously; a second decision for the same ticket is ignored.
func (s *Server) AcceptUpgrade(ticket ConnID, user []byte) error {
	ptr := s.acquire()
	if ptr == nil {
		return &Error{Code: ResultStopped, Op: "AcceptUpgrade"}
	}
	result := C.wspush_upgrade_accept(ptr, C.uint64_t(ticket), bytesPtr(user), C.size_t(len(user)))
	s.lifetime.RUnlock()
	return check("AcceptUpgrade", result)
}

// RejectUpgrade completes a deferred upgrade by answering HTTP status (400-599) and closing.
func (s *Server) RejectUpgrade(ticket ConnID, status int) error {
	if status < 0 || status > math.MaxUint16 {
		return &Error{Code: ResultInvalidStatus, Op: "RejectUpgrade"}
	}
	ptr := s.acquire()
	if ptr == nil {
		return &Error{Code: ResultStopped, Op: "RejectUpgrade"}
	}
	result := C.wspush_upgrade_reject(ptr, C.uint64_t(ticket), C.uint16_t(status))
	s.lifetime.RUnlock()
	return check("RejectUpgrade", result)
}

// Stats returns a snapshot of the server's gauges and counters. After Stop it returns the
// final snapshot, taken when the server had stopped.
func (s *Server) Stats() (Stats, error) {
	if s.done == nil {
		return Stats{}, &Error{Code: ResultStopped, Op: "Stats"}
	}
	ptr := s.acquire()
	if ptr == nil {
		<-s.done
		return s.finalStats, nil
	}
	defer s.lifetime.RUnlock()
	return statsOf(ptr)
}

func statsOf(ptr *C.wspush_server) (Stats, error) {
	var snapshot C.wspush_stats_snapshot
	snapshot.size = C.size_t(unsafe.Sizeof(snapshot))
	// A pointer to a Go struct without Go pointers inside, valid for the call only: allowed.
	if err := check("Stats", C.wspush_stats(ptr, &snapshot)); err != nil {
		return Stats{}, err
	}
	// The snapshot is `size`, then one uint64 per Stats field, in the same order (the C
	// library's table, which TestStatsFieldsAreTheLibrarysTable checks against Stats).
	var stats Stats
	fields := reflect.ValueOf(&stats).Elem()
	values := unsafe.Slice((*C.uint64_t)(unsafe.Pointer(&snapshot.connections)), fields.NumField())
	for i, value := range values {
		fields.Field(i).SetUint(uint64(value))
	}
	return stats, nil
}

// StatField describes one value of Stats, as the library's table does: its JSON (and C) name,
// a one-line help text, and whether it is a counter (only grows) or a gauge. Useful to export
// every value, e.g. as Prometheus text, without listing them.
type StatField struct {
	Name    string
	Help    string
	Counter bool
}

// StatsFields is the library's table of Stats values, in field order.
func StatsFields() []StatField {
	count := int(C.wspush_stats_field_count())
	table := make([]StatField, 0, count)
	for i := 0; i < count; i++ {
		var name, help *C.char
		var kind C.wspush_stat_kind
		if C.wspush_stats_field(C.size_t(i), &name, &help, &kind) != C.WSPUSH_RESULT_OK {
			break
		}
		table = append(table, StatField{Name: C.GoString(name), Help: C.GoString(help), Counter: kind == C.WSPUSH_STAT_KIND_COUNTER})
	}
	return table
}

// Stop stops the server gracefully and releases it: it stops accepting, closes every
// connection with 1001, flushes for up to Config.DrainTimeout, calls Handler.OnClose for each
// open connection, ends the I/O threads, then frees the C server. There is no separate Free.
//
// Stop blocks until all that is done and no handler runs any more, except when called from
// inside one of this server's own handlers: there it only starts the stop and returns at once
// (an I/O thread cannot wait for itself); Done tells when it has finished. Calling Stop again,
// or from several goroutines, is safe: later calls wait for the first to finish (or return at
// once inside a handler). After Stop, the other methods return ErrStopped, except Port and
// Stats (the final snapshot). A handler may call Stop even before Start has returned: the
// release then waits for Start. On a Server not made by Start (the zero value) Stop returns
// ErrStopped.
func (s *Server) Stop() error {
	if s.done == nil {
		return &Error{Code: ResultStopped, Op: "Stop"}
	}
	ptr := s.loadPtr()
	inOwnCallback := ptr != nil && C.wspush_go_callback_server() == ptr
	if inOwnCallback {
		// Only starts the stop: the engine sees it is on its own I/O thread.
		C.wspush_server_stop(ptr)
		if s.stopping.CompareAndSwap(false, true) {
			go s.finishStop()
		}
		return nil
	}
	if s.stopping.CompareAndSwap(false, true) {
		s.finishStop()
	}
	<-s.done
	return s.stopErr
}

// Done returns a channel closed when the server has stopped and been released (at once for a
// Server not made by Start).
func (s *Server) Done() <-chan struct{} {
	if s.done == nil {
		return closedChannel
	}
	return s.done
}

// finishStop runs once, on a goroutine that is not an I/O thread of this server.
func (s *Server) finishStop() {
	// Stop may come from a handler running before Start returned: the C server is ours to
	// release only once Start has it.
	<-s.started
	if s.startFailed {
		close(s.done) // Start releases the handle
		return
	}
	ptr := s.loadPtr()
	// Blocks until the I/O threads have ended: no handler runs after this.
	s.stopErr = check("Stop", C.wspush_server_stop(ptr))
	if final, err := statsOf(ptr); err == nil {
		s.finalStats = final
	}
	// Wait for calls in flight on other goroutines, then make later calls see the release.
	s.lifetime.Lock()
	s.storePtr(nil)
	s.lifetime.Unlock()
	if err := check("Stop", C.wspush_server_free(ptr)); err != nil && s.stopErr == nil {
		s.stopErr = err
	}
	s.handle.Delete()
	close(s.done)
}
