//! Server configuration: every limit a production deployment tunes, with safe defaults.

use std::time::Duration;

pub use crate::proxy_protocol::TrustedProxy;

/// What to do when a connection's queue of unsent bytes would pass `max_queue_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowConsumerPolicy {
    /// Close the connection with 1008 "slow consumer" (default): the client reconnects and resyncs.
    Close,
    /// Drop the message for this connection only and keep it open. Pong and close frames are
    /// never dropped.
    Drop,
}

/// Configuration of a [`crate::Server`]. Start from `Config::default()` and change what you need.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on, "host:port"; port 0 picks a free port (see `ServerHandle::local_addr`).
    pub listen: String,
    /// Request path that accepts WebSocket upgrades (default "/ws"); other paths get 404.
    pub path: String,
    /// Number of I/O threads; 0 means one per available core.
    pub threads: usize,
    /// Open plus handshaking connections beyond which new sockets are answered 503 and closed.
    /// At start the process's descriptor table is grown to hold this many more descriptors
    /// (capped by RLIMIT_NOFILE; 8 bytes of kernel memory each), so a storm never waits for the
    /// kernel to double it.
    pub max_connections: usize,
    /// Largest message (after reassembly of fragments) a client may send; larger closes with 1009.
    pub max_message_size: usize,
    /// A connection silent for this long is sent a ping.
    pub ping_interval: Duration,
    /// A connection silent for this long is closed (the peer is gone).
    pub idle_timeout: Duration,
    /// Time allowed from accept to a completed upgrade, including a deferred decision.
    pub handshake_timeout: Duration,
    /// Cap on bytes queued for one connection that the socket has not taken yet.
    pub max_queue_bytes: usize,
    /// What happens when `max_queue_bytes` would be passed.
    pub slow_consumer: SlowConsumerPolicy,
    /// When non-empty, only upgrades whose `Origin` header is in this list are accepted (else 403).
    pub allowed_origins: Vec<String>,
    /// Largest HTTP request head (request line plus headers); larger gets 431.
    pub max_header_bytes: usize,
    /// Handshakes in progress per I/O thread beyond which that thread stops accepting for a while:
    /// a reconnect storm waits in the kernel's backlog instead of taking the server down.
    pub max_handshakes_per_thread: usize,
    /// Connections one user may hold at once; 0 means no limit. The next one is rejected with 429.
    pub max_connections_per_user: usize,
    /// How long a graceful stop waits for queued data and close handshakes before closing sockets.
    pub drain_timeout: Duration,
    /// How long a connection we are closing waits for the peer's close frame.
    pub close_timeout: Duration,
    /// Connections (open or handshaking) one client IP address may hold; 0 (default) means no
    /// limit. IPv6 clients are counted per /64 (one host usually owns a whole /64). Beyond: 429.
    pub max_connections_per_ip: usize,
    /// New connections one client IP address (IPv6: /64) may open per second, with bursts of the
    /// same size; 0 (default) means no limit. Beyond: 429.
    pub max_handshakes_per_ip_per_sec: u32,
    /// When set, upgrades are authenticated with JSON Web Tokens signed with this HS256 secret
    /// (at least 32 bytes): see [`crate::Request::verified_user`] and the default
    /// [`crate::Handler::on_upgrade`].
    pub jwt_hs256_secret: Option<Secret>,
    /// Clock skew allowed when checking a token's `exp` and `nbf`.
    pub jwt_leeway: Duration,
    /// Time a client has to complete a frame or a fragmented message once it has started
    /// sending it; then the connection is closed with 1008. Parked half-frames cannot pin memory
    /// until the idle timeout.
    pub message_timeout: Duration,
    /// Bytes all connections together may hold for incomplete frames and messages; the
    /// connection whose input would pass it is closed with 1013 (try again later). Each
    /// connection holds at most about `max_message_size` on its own.
    pub max_partial_input_bytes: usize,
    /// Handshakes in progress (accepted, not yet upgraded) one client address (IPv6: /64) may
    /// have; 0 (default) means no limit. Beyond: 429. Keeps idle sockets from one address from
    /// taking every handshake slot.
    pub max_pending_handshakes_per_ip: usize,
    /// SO_SNDBUF / SO_RCVBUF of every connection's socket (set on the listeners, which pass them
    /// on); 0 (default) leaves the kernel's autotuning. Smaller buffers save kernel memory per
    /// connection at the cost of throughput per connection.
    pub socket_send_buffer: usize,
    pub socket_recv_buffer: usize,
    /// Stack size of each I/O thread in bytes; 0 (default) means [`DEFAULT_THREAD_STACK_SIZE`].
    /// Every callback runs on these threads, so host code that recurses deeply (an interpreter's
    /// callback, say) needs as much stack as on its own threads. At least [`MIN_THREAD_STACK_SIZE`].
    pub thread_stack_size: usize,
    /// Behind a load balancer: connections from `trusted_proxies` must open with a PROXY
    /// protocol header (v1 or v2, as HAProxy `send-proxy`, nginx `proxy_protocol on` and cloud
    /// TCP balancers send it), else 400. The client address it carries is what per-address
    /// limits count and what [`crate::Request::peer_addr`] returns. Connections from other
    /// sources are served directly, and a PROXY header from them is refused (400): only a
    /// trusted balancer may say where a client is.
    pub proxy_protocol: bool,
    /// Sources allowed (and, with `proxy_protocol` on, required) to send a PROXY header:
    /// addresses or CIDR networks, e.g. `"10.0.0.0/8".parse()?`. Must not be empty when
    /// `proxy_protocol` is on.
    pub trusted_proxies: Vec<TrustedProxy>,
    /// Per-user history, for `wspush.v1` clients that reconnect with `since` (see
    /// bindings/js/PROTOCOL.md): the last this many messages published to each user are kept
    /// and numbered. 0 (default) turns history off: publishes carry no offset and nothing is
    /// kept. Connections cost nothing more with it on; each user published to costs one stream.
    pub history_max_messages: usize,
    /// How long a stored message is kept (whole seconds, rounded up). A user's stream whose newest
    /// message has expired is dropped, which starts a new epoch.
    pub history_ttl: Duration,
    /// Bytes all users' histories may take (payloads plus bookkeeping, see `Stats::history_bytes`);
    /// past it the least recently published users' streams are dropped whole (new epoch).
    pub history_max_bytes: usize,
    /// Several nodes sharing users through Redis (README, "Running several nodes"):
    /// `redis://[[user]:password@]host[:port][/db]`. A publish on any node then goes through
    /// Redis to the user's connections on every node, and history (when on) is kept in Redis
    /// (`history_max_messages` and `history_ttl` apply there; `history_max_bytes` does not:
    /// Redis's `maxmemory` does). `None` (default): one node, everything in process.
    pub redis_url: Option<String>,
    /// How long Redis may take to answer before a publish fails with `Error::Unavailable` and
    /// the connection to Redis is dropped and remade (default 2 s).
    pub redis_timeout: Duration,
}

/// The I/O threads' stack size when `Config::thread_stack_size` is 0: 8 MiB, what glibc gives an
/// ordinary thread (RLIMIT_STACK's usual value), so host callbacks get the stack they would have
/// on the host's own threads rather than Rust's 2 MiB. Untouched stack pages are never committed,
/// so this costs address space, not memory, for the few (one per core) I/O threads.
pub const DEFAULT_THREAD_STACK_SIZE: usize = 8 * 1024 * 1024;

/// The smallest `Config::thread_stack_size` accepted (besides 0): below it the engine's own frames
/// plus a trivial callback could overflow.
pub const MIN_THREAD_STACK_SIZE: usize = 64 * 1024;

/// Key material that must not end up in logs: `Debug` prints its length only.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// The secret's bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Secret {
    fn from(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }
}

impl From<&[u8]> for Secret {
    fn from(bytes: &[u8]) -> Secret {
        Secret(bytes.to_vec())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes, redacted)", self.0.len())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".to_string(),
            path: "/ws".to_string(),
            threads: 0,
            max_connections: 1_000_000,
            max_message_size: 64 * 1024,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            handshake_timeout: Duration::from_secs(10),
            max_queue_bytes: 1024 * 1024,
            slow_consumer: SlowConsumerPolicy::Close,
            allowed_origins: Vec::new(),
            max_header_bytes: 8 * 1024,
            max_handshakes_per_thread: 1024,
            max_connections_per_user: 0,
            drain_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(2),
            max_connections_per_ip: 0,
            max_handshakes_per_ip_per_sec: 0,
            jwt_hs256_secret: None,
            jwt_leeway: Duration::from_secs(30),
            message_timeout: Duration::from_secs(5),
            max_partial_input_bytes: 256 * 1024 * 1024,
            max_pending_handshakes_per_ip: 0,
            socket_send_buffer: 0,
            socket_recv_buffer: 0,
            thread_stack_size: 0,
            proxy_protocol: false,
            trusted_proxies: Vec::new(),
            history_max_messages: 0,
            history_ttl: Duration::from_secs(600),
            history_max_bytes: 64 * 1024 * 1024,
            redis_url: None,
            redis_timeout: Duration::from_secs(2),
        }
    }
}

impl Config {
    /// Checks values that would make the server misbehave; returns what is wrong.
    pub(crate) fn validate(&self) -> Result<(), &'static str> {
        if !self.path.starts_with('/') {
            return Err("path must start with '/'");
        }
        if self.max_message_size == 0 {
            return Err("max_message_size must be > 0");
        }
        if self.max_connections == 0 {
            return Err("max_connections must be > 0");
        }
        if self.threads > 255 {
            return Err("threads must be <= 255");
        }
        if self.ping_interval.is_zero()
            || self.idle_timeout.is_zero()
            || self.handshake_timeout.is_zero()
            || self.message_timeout.is_zero()
        {
            return Err("timeouts must be > 0");
        }
        if self.max_header_bytes < 256 {
            return Err("max_header_bytes must be >= 256");
        }
        if self.max_handshakes_per_thread == 0 {
            return Err("max_handshakes_per_thread must be > 0");
        }
        if self.jwt_hs256_secret.as_ref().is_some_and(|s| s.0.len() < crate::jwt::MIN_SECRET_LEN) {
            return Err("jwt_hs256_secret must be at least 32 bytes (RFC 7518 section 3.2)");
        }
        if self.thread_stack_size != 0 && self.thread_stack_size < MIN_THREAD_STACK_SIZE {
            return Err("thread_stack_size must be 0 (default) or >= 64 KiB");
        }
        if self.proxy_protocol && self.trusted_proxies.is_empty() {
            return Err("proxy_protocol needs at least one trusted proxy (trusted_proxies)");
        }
        if let Some(url) = &self.redis_url {
            url.parse::<crate::redis::RedisUrl>()?;
            if self.redis_timeout < Duration::from_millis(10) {
                return Err("redis_timeout must be at least 10 ms");
            }
        }
        if self.history_max_messages > 0 && (self.history_ttl.is_zero() || self.history_max_bytes == 0) {
            return Err("with history on, history_ttl and history_max_bytes must be > 0");
        }
        Ok(())
    }

    /// The I/O threads' stack size actually used.
    pub(crate) fn io_thread_stack_size(&self) -> usize {
        if self.thread_stack_size == 0 {
            DEFAULT_THREAD_STACK_SIZE
        } else {
            self.thread_stack_size
        }
    }

    /// The thread count actually used.
    pub(crate) fn io_threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(255)
        }
    }
}
