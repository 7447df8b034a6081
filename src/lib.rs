//! # wspush: a WebSocket push engine
//!
//! Holds very many mostly idle WebSocket connections cheaply and pushes messages to users from any
//! thread. An idle connection costs one small slab entry and a registry entry: no thread, no
//! buffer. The host (C, C++, Go, Python via the C ABI in [`ffi`], or Rust directly) decides who a
//! connection belongs to in [`Handler::on_upgrade`] and calls [`ServerHandle::publish`].
//!
//! Architecture, one module each:
//! - [`config`]: every limit, with defaults; [`server`]: the public API, cross-thread commands;
//! - `event_loop`: one I/O thread (epoll via mio, listener, slab of connections, inbox);
//! - `connection`: per-connection state machine, input parsing, output queue, closing;
//! - `handshake`: in-place HTTP upgrade parsing and validation; `codec`: RFC 6455 frames;
//! - `registry`: user → connections; `timer`: heartbeat and deadlines; `conn_id`: ID layout;
//! - `socket`: the raw socket calls; [`stats`]: counters; [`ffi`]: the C surface only.
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

mod codec;
mod conn_id;
mod connection;
mod event_loop;
mod handshake;
mod registry;
mod socket;
mod timer;

pub use codec::is_valid_close_code;
pub use config::{Config, SlowConsumerPolicy};
pub use error::Error;
pub use handler::{ConnId, Handler, HttpResponse, MessageKind, Request, UpgradeDecision};
pub use server::{Server, ServerHandle};
pub use stats::Stats;

/// Longest user ID, in bytes.
pub const MAX_USER_ID_LEN: usize = 255;
/// This crate's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
