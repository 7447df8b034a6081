//! What the host plugs in: the [`Handler`] callbacks. The request view they see and their
//! answers are in `request` (re-exported here, where they have always been).

pub use crate::request::{default_upgrade_decision, HttpResponse, Request, UpgradeDecision};
pub use crate::types::{ConnId, MessageKind};

use crate::handle::ServerHandle;

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
