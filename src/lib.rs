//! # wspush: a WebSocket push engine
//!
//! Holds very many mostly idle WebSocket connections cheaply and pushes messages to users from any
//! thread. An idle connection costs one small slab entry and a registry entry: no thread, no
//! buffer. The host (C, C++, Go, Python via the C ABI in [`ffi`], or Rust directly) decides who a
//! connection belongs to in [`Handler::on_upgrade`] and calls [`ServerHandle::publish`].
//!
//! Architecture, ground floor up: each line imports only from itself and the lines above it
//! (`tests/import_layers.py` checks that there is no import loop).
//! - `types`: connection ID, message kind, the user-ID rule; [`error`]; `slack`, `guard` (panics
//!   at callbacks), `socket` (the raw socket calls); [`stats`]: counters;
//! - `request`: what the host sees of a request and how it answers; `jwt`: HS256 tokens;
//!   `proxy_protocol`: the PROXY header parser; `codec`: RFC 6455 frames (encoder, client-stream
//!   decoder, UTF-8); `registry`: user → connections; `conn_id`: ID layout and live table;
//!   `redis`: the Redis wire protocol, URL, key layout and scripts, and the queue into the bridge;
//! - [`config`]: every limit, with defaults; `handshake`: the HTTP upgrade, its token check
//!   and its responses; `timer`: the timer wheel; `ip_limits`: per-client-address limits;
//! - `handle`: [`ServerHandle`], the state it shares with the I/O threads, their inboxes and
//!   the commands queued there; [`handler`]: the host's callbacks, given a `ServerHandle`;
//! - `connection`: one connection (state machine, input, output, lifecycle), working in its
//!   I/O thread's context; `event_loop`: one I/O thread (epoll via mio, listener, slab, inbox);
//!   `cluster`: the Redis bridge thread (several nodes sharing users: publish through Redis,
//!   subscriptions that follow local users, gap filling, welcomes for resuming clients);
//! - [`server`]: [`Server`], which starts the I/O threads and stops them; [`ffi`]: the C
//!   surface, a skin on top.
//!
//! ```no_run
//! use wspush::{Config, Handler, MessageKind, Request, Server, ServerHandle, UpgradeDecision};
//!
//! struct Auth;
//! impl Handler for Auth {
//!     fn on_upgrade(&self, _: &ServerHandle, req: &Request<'_>) -> UpgradeDecision {
//!         match req.query_param("user") {
//!             Some(user) if !user.is_empty() => UpgradeDecision::Accept(user.as_bytes().to_vec()),
//!             _ => UpgradeDecision::Reject(401),
//!         }
//!     }
//! }
//!
//! let server = Server::start(Config { listen: "127.0.0.1:0".into(), ..Config::default() }, Auth)?;
//! let delivered = server.publish(b"alice", b"{\"new_mail\":1}", MessageKind::Text)?;
//! # Ok::<(), wspush::Error>(())
//! ```

pub mod config;
pub mod error;
pub mod ffi;
pub mod handler;
pub mod server;
pub mod stats;
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub mod test_hooks;

mod cluster;
mod codec;
mod conn_id;
mod connection;
mod event_loop;
mod guard;
mod handle;
mod handshake;
mod history;
mod ip_limits;
mod jwt;
mod keymap;
mod proxy_protocol;
mod redis;
mod registry;
mod request;
mod slack;
mod socket;
mod subprotocol;
mod timer;
mod types;

pub use codec::is_valid_close_code;
pub use config::{Config, Secret, SlowConsumerPolicy, TrustedProxy, DEFAULT_THREAD_STACK_SIZE, MIN_THREAD_STACK_SIZE};
pub use error::Error;
pub use handle::ServerHandle;
pub use handler::Handler;
pub use history::{Epoch, Position};
pub use proxy_protocol::InvalidTrustedProxy;
pub use request::{default_upgrade_decision, HttpResponse, Request, UpgradeDecision};
pub use server::Server;
pub use stats::Stats;
pub use types::Published;
pub use types::{ConnId, MessageKind, MAX_USER_ID_LEN};
/// Shortest HS256 secret `Config::jwt_hs256_secret` accepts (RFC 7518 §3.2: the hash's size).
pub const JWT_MIN_SECRET_LEN: usize = jwt::MIN_SECRET_LEN;
/// This crate's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Hot-path internals for the criterion benches (`--features bench-internals`); not a stable API.
#[cfg(feature = "bench-internals")]
#[doc(hidden)]
pub mod internals {
    use crate::config::Config;
    use crate::handshake::{self, Head, MAX_HEADERS};

    /// The client-stream decoder the connection runs (frames, reassembly, UTF-8): the
    /// `frame_decoder` fuzz target drives exactly this.
    pub use crate::codec::{decode_next, Decoded, DecoderState};

    /// Unmasks a client payload in place.
    pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
        crate::codec::apply_mask(buf, mask, offset)
    }

    /// Parses and validates an upgrade request; returns the head length when it is an upgrade.
    /// What it asks of `wspush.v1` (subprotocol, `since`) is read too, as on a connection.
    pub fn parse_upgrade(buf: &[u8], config: &Config) -> Option<usize> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match handshake::parse(buf, &mut headers, config, 1, || None) {
            Head::Upgrade { len, request, .. } => {
                std::hint::black_box(crate::subprotocol::Negotiated::of(&request));
                Some(len)
            }
            _ => None,
        }
    }

    /// The PROXY protocol header parser a trusted balancer's connection goes through, and its
    /// caps (v1 line, v2 header).
    pub use crate::proxy_protocol::{parse as parse_proxy_header, Parsed as ProxyHeader};
    pub const PROXY_V1_MAX_LEN: usize = crate::proxy_protocol::V1_MAX_LEN;
    pub const PROXY_V2_MAX_LEN: usize = crate::proxy_protocol::V2_MAX_LEN;

    /// What the Redis bridge reads from Redis: the RESP reply parser, and the message format on
    /// a user's channel (`Some((epoch, offset))` for a numbered one, the kind byte, the payload).
    pub use crate::redis::resp::{
        parse as parse_redis_reply, ProtocolError as RedisProtocolError, Reply as RedisReply,
    };
    pub type ChannelMessageParts<'a> = (Option<(u64, u64)>, u8, &'a [u8]);
    pub fn parse_channel_message(raw: &[u8]) -> Option<ChannelMessageParts<'_>> {
        let message = crate::redis::keys::ChannelMessage::parse(raw)?;
        let stream = message.stream.map(|position| match position.epoch {
            crate::history::Epoch::Stream(epoch) => (epoch, position.offset),
            crate::history::Epoch::NoStream { .. } => unreachable!("a channel carries stream epochs only"),
        });
        Some((stream, crate::redis::keys::kind_byte(message.kind), message.payload))
    }

    /// Decodes a client frame header: (header length, payload length).
    pub fn parse_frame_header(buf: &[u8], max_payload: usize) -> Option<(usize, usize)> {
        match crate::codec::parse_header(buf, max_payload) {
            Ok(Some(info)) => Some((info.header_len, info.payload_len)),
            _ => None,
        }
    }

    /// Frames a text message once, as publish does.
    pub fn frame_text(payload: &[u8]) -> std::sync::Arc<[u8]> {
        crate::codec::encode(crate::codec::Opcode::Text, payload)
    }

    /// Built-in token verification, as every upgrade runs it when a secret is configured.
    pub struct JwtVerifier(crate::jwt::JwtVerifier);

    impl JwtVerifier {
        pub fn new(secret: &[u8], leeway: std::time::Duration) -> JwtVerifier {
            JwtVerifier(crate::jwt::JwtVerifier::new(secret, leeway))
        }

        /// The subject of `token` if it is valid at `now` (seconds since the Unix epoch).
        pub fn verify_at(&self, token: &[u8], now: f64) -> Option<Vec<u8>> {
            self.0.verify_at(token, now).ok()
        }
    }

    /// Signs `header.claims` (JSON texts) with HS256, as a token issuer would.
    pub fn sign_jwt(header: &str, claims: &str, secret: &[u8]) -> String {
        crate::jwt::sign(header, claims, secret)
    }

    /// The user registry.
    pub struct Registry(crate::registry::Registry);

    impl Default for Registry {
        fn default() -> Self {
            Registry(crate::registry::Registry::new())
        }
    }

    impl Registry {
        pub fn add(&self, user: &[u8], conn: u64) {
            let _ = self.0.add(user, conn, 0);
        }

        /// Connections of `user`, as publish walks them.
        pub fn lookup(&self, user: &[u8]) -> usize {
            self.0.for_each_conn(user, |conn, check| {
                std::hint::black_box((conn, check));
            })
        }
    }
}
