//! What the host decides about: the request view its callbacks see, and its answers (upgrade
//! decision, plain HTTP response). Plain data, borrowed from the engine's read buffer.

use std::net::SocketAddr;

use crate::types::ConnId;

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

/// A plain HTTP response for a non-upgrade request (see [`Handler::on_http`](crate::Handler::on_http)).
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
