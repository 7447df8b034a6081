//! What the host plugs in: the [`Handler`] callbacks and the request view they see.

use std::net::SocketAddr;

use crate::server::ServerHandle;

/// Connection IDs are unique for the server's life: an ID is never given to a second connection.
pub type ConnId = u64;

/// WebSocket message type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// UTF-8 text (opcode 1). Payloads from clients are validated; payloads you publish are not.
    Text,
    /// Binary (opcode 2).
    Binary,
}

/// The host's answer to an upgrade request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpgradeDecision {
    /// Accept and register the connection under this user ID (1 to 255 bytes, no NUL byte).
    Accept(Vec<u8>),
    /// Answer with this HTTP status (400-599) and close.
    Reject(u16),
    /// Decide later, from any thread, with `ServerHandle::accept_upgrade(request.ticket(), ..)`
    /// or `reject_upgrade`. The handshake deadline still applies.
    Defer,
}

/// A plain HTTP response for a non-upgrade request (see [`Handler::on_http`]).
#[derive(Clone, Debug)]
pub struct HttpResponse {
    /// Status code, e.g. 200.
    pub status: u16,
    /// Value of the Content-Type header.
    pub content_type: String,
    /// Response body.
    pub body: Vec<u8>,
}

/// An HTTP request as received, borrowed from the engine's read buffer: valid only during the
/// callback, no header is copied.
pub struct Request<'a> {
    pub(crate) method: &'a str,
    pub(crate) target: &'a str,
    pub(crate) headers: &'a [httparse::Header<'a>],
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) ticket: ConnId,
    pub(crate) verified_user: Option<Vec<u8>>,
}

impl<'a> Request<'a> {
    /// The request method, e.g. "GET".
    pub fn method(&self) -> &'a str {
        self.method
    }

    /// The path part of the request target, without the query string.
    pub fn path(&self) -> &'a str {
        self.target.split_once('?').map_or(self.target, |(path, _)| path)
    }

    /// The raw query string (after '?'), or "" when there is none.
    pub fn query(&self) -> &'a str {
        self.target.split_once('?').map_or("", |(_, query)| query)
    }

    /// The first query parameter called `name`, as sent (not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&'a str> {
        self.query().split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then_some(value)
        })
    }

    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    }

    /// Every header in the order received.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + '_ {
        self.headers.iter().map(|h| (h.name, h.value))
    }

    /// The client's address: the socket's peer, or, from a trusted load balancer with
    /// `Config::proxy_protocol`, the address its PROXY header gave. `None` when the socket no
    /// longer has one.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The user ID (`sub` claim) of the valid JSON Web Token this request carries, when
    /// `Config::jwt_hs256_secret` is set: taken from an `Authorization: Bearer` header, else the
    /// `token` query parameter. `None` without a secret, without a token, or when the token is
    /// invalid (bad signature, not HS256, expired, not yet valid, no usable `sub`).
    pub fn verified_user(&self) -> Option<&[u8]> {
        self.verified_user.as_deref()
    }

    /// Identifies this pending upgrade for a deferred decision; it becomes the connection's ID.
    pub fn ticket(&self) -> ConnId {
        self.ticket
    }
}

/// What an upgrade gets when the host does not decide: accepted as the user of its verified token
/// (see [`Request::verified_user`]), else rejected with 401.
pub fn default_upgrade_decision(request: &Request<'_>) -> UpgradeDecision {
    match request.verified_user() {
        Some(user) => UpgradeDecision::Accept(user.to_vec()),
        None => UpgradeDecision::Reject(401),
    }
}

/// The host's callbacks. Every method runs on an engine I/O thread; every `ServerHandle` method may
/// be called from inside any of them without deadlock. A callback that blocks stalls every
/// connection of that I/O thread (not the others) until it returns: hand slow work to your own
/// threads and answer later (see [`UpgradeDecision::Defer`]).
pub trait Handler: Send + Sync + 'static {
    /// A WebSocket upgrade request passed protocol checks (path, version, key, origin). The
    /// default is [`default_upgrade_decision`]: with a JWT secret configured, a valid token lets
    /// its `sub` in; otherwise 401. Nothing is let in unless a token or the host says so.
    fn on_upgrade(&self, server: &ServerHandle, request: &Request<'_>) -> UpgradeDecision {
        let _ = server;
        default_upgrade_decision(request)
    }

    /// A connection was upgraded and registered under `user`.
    fn on_open(&self, server: &ServerHandle, conn: ConnId, user: &[u8]) {
        let _ = (server, conn, user);
    }

    /// A complete message arrived (fragments reassembled, text validated as UTF-8).
    fn on_message(&self, server: &ServerHandle, conn: ConnId, user: &[u8], kind: MessageKind, payload: &[u8]) {
        let _ = (server, conn, user, kind, payload);
    }

    /// An opened connection ended; called exactly once per `on_open`. `code` is the close code of
    /// the close handshake (the peer's, or ours: 1001 on stop, 1008 slow consumer, 1002/1007/1009
    /// protocol errors), or 1006 when the connection was lost without one.
    fn on_close(&self, server: &ServerHandle, conn: ConnId, user: &[u8], code: u16) {
        let _ = (server, conn, user, code);
    }

    /// A message for `conn` was dropped because its queue was full and the slow-consumer policy
    /// is `Drop` (with `Close` you get `on_close` with 1008 instead). `dropped_bytes` is the size
    /// of the dropped frame as it would have gone on the wire (payload plus 2-10 header bytes).
    fn on_drop(&self, server: &ServerHandle, conn: ConnId, user: &[u8], dropped_bytes: usize) {
        let _ = (server, conn, user, dropped_bytes);
    }

    /// A request without `Upgrade: websocket` arrived. Return a response to serve it (the
    /// connection is closed after it), or `None` for the default 426 Upgrade Required.
    fn on_http(&self, server: &ServerHandle, request: &Request<'_>) -> Option<HttpResponse> {
        let _ = (server, request);
        None
    }
}
