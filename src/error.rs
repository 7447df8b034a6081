//! Errors returned by the Rust API (the C surface maps each to a `wspush_result`).

use std::fmt;
use std::io;

/// Why a call failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range; the text says which.
    InvalidConfig(&'static str),
    /// The listen address is not "host:port" or does not resolve.
    InvalidAddress,
    /// Binding or setting up the listening socket failed.
    Bind(io::Error),
    /// Creating the engine's threads or pollers failed.
    Io(io::Error),
    /// A user ID must be 1 to 255 bytes long, without NUL bytes.
    InvalidUserId,
    /// Close codes must be 1000-1003, 1007-1014 or 3000-4999.
    InvalidCloseCode,
    /// The close reason must be at most 123 bytes of UTF-8.
    InvalidCloseReason,
    /// HTTP status for a rejected upgrade must be 400-599.
    InvalidStatus,
    /// The payload is larger than a WebSocket frame can carry here (max_queue_bytes).
    MessageTooLarge,
    /// No live connection (or pending upgrade) with that ID.
    NotFound,
    /// The server is stopping or stopped.
    Stopped,
    /// Redis (`Config::redis_url`) did not confirm the publish within `redis_timeout`, or is
    /// known to be unreachable. The message may still be applied (then delivered and numbered
    /// like any other); retry or give up, as the host's semantics need.
    Unavailable,
    /// A waiting call made on the engine thread that would have to answer it (e.g.
    /// `publish_wait` from a publish completion): it would wait for itself.
    WouldDeadlock,
    /// An engine thread panicked (a bug in wspush): the server stopped itself. Stop it (which
    /// joins the threads) and start a new one.
    Failed,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidConfig(what) => write!(f, "invalid configuration: {what}"),
            Error::InvalidAddress => f.write_str("invalid listen address"),
            Error::Bind(e) => write!(f, "cannot listen: {e}"),
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::InvalidUserId => f.write_str("user ID must be 1 to 255 bytes without NUL"),
            Error::InvalidCloseCode => f.write_str("invalid close code"),
            Error::InvalidCloseReason => f.write_str("close reason must be at most 123 bytes of UTF-8"),
            Error::InvalidStatus => f.write_str("HTTP status must be 400-599"),
            Error::MessageTooLarge => f.write_str("message larger than max_queue_bytes"),
            Error::NotFound => f.write_str("no such connection"),
            Error::Stopped => f.write_str("server is stopped"),
            Error::Unavailable => f.write_str("Redis did not confirm in time or is unreachable"),
            Error::WouldDeadlock => f.write_str("a waiting call on the engine thread that would answer it"),
            Error::Failed => f.write_str("server failed: an engine thread panicked"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Bind(e) | Error::Io(e) => Some(e),
            _ => None,
        }
    }
}
