//! The C surface's plain types: the opaque handles, message kinds, policies, argument limits,
//! the callback typedefs and the callbacks struct a host fills in.

use std::ffi::c_void;
use std::mem::size_of;

use super::boundary::wspush_result;
use crate::MessageKind;

// The opaque handles (what each points to: `Castable` in config.rs, server.rs, request.rs).

/// Server configuration under construction. Made by `wspush_config_new`, released by
/// `wspush_config_free`. Not thread-safe: use one from one thread at a time.
pub struct wspush_config {
    _opaque: [u8; 0],
}

/// A running server. Made by `wspush_server_start`, released by `wspush_server_free`. Every
/// function taking a `const wspush_server *` is thread-safe, except `wspush_server_free`.
pub struct wspush_server {
    _opaque: [u8; 0],
}

/// An HTTP request seen by `on_upgrade` or `on_http`. Borrowed: valid only until that callback
/// returns, and so is every pointer the accessors hand out (none is NUL-terminated; use the
/// length, e.g. `printf("%.*s", (int)len, ptr)`). Use it only on the callback's own thread; to
/// decide elsewhere, defer and pass the ticket.
pub struct wspush_request {
    _opaque: [u8; 0],
}

/// A WebSocket message type: `WSPUSH_MESSAGE_KIND_TEXT` or `WSPUSH_MESSAGE_KIND_BINARY`. A
/// plain integer rather than a C enum so that an out-of-range value from the host is reported
/// (`WSPUSH_RESULT_INVALID_ARGUMENT`) instead of being undefined behaviour.
pub type wspush_message_kind = u32;
/// UTF-8 text (WebSocket opcode 1). Messages from clients are validated; yours are not.
pub const WSPUSH_MESSAGE_KIND_TEXT: wspush_message_kind = 1;
/// Binary data (WebSocket opcode 2).
pub const WSPUSH_MESSAGE_KIND_BINARY: wspush_message_kind = 2;

pub(crate) fn message_kind_from_c(kind: wspush_message_kind) -> Result<MessageKind, wspush_result> {
    match kind {
        WSPUSH_MESSAGE_KIND_TEXT => Ok(MessageKind::Text),
        WSPUSH_MESSAGE_KIND_BINARY => Ok(MessageKind::Binary),
        _ => Err(wspush_result::InvalidArgument),
    }
}

pub(crate) fn message_kind_to_c(kind: MessageKind) -> wspush_message_kind {
    match kind {
        MessageKind::Text => WSPUSH_MESSAGE_KIND_TEXT,
        MessageKind::Binary => WSPUSH_MESSAGE_KIND_BINARY,
    }
}

/// What happens when a connection's unsent data would pass max_queue_bytes.
pub type wspush_slow_consumer_policy = u32;
/// Close the connection with 1008 (default); the client reconnects and resyncs.
pub const WSPUSH_SLOW_CONSUMER_CLOSE: wspush_slow_consumer_policy = 0;
/// Drop that message for that connection only (`on_drop` is called) and keep it open.
pub const WSPUSH_SLOW_CONSUMER_DROP: wspush_slow_consumer_policy = 1;

/// Longest user ID, in bytes (the shortest is 1). User IDs never contain a NUL byte: one that
/// does is INVALID_USER_ID everywhere (a C host reading it as a C string would see another user).
pub const WSPUSH_MAX_USER_ID_LEN: usize = 255;
/// Longest close reason, in bytes (RFC 6455: a control frame's 125 bytes minus the code).
pub const WSPUSH_MAX_CLOSE_REASON_LEN: usize = 123;
/// Longest listen address or trusted-proxy network accepted, in bytes. Longer is refused on the
/// length alone, before the buffer is read.
pub const WSPUSH_MAX_ADDRESS_LEN: usize = 255;
/// Longest of the other text and byte arguments, in bytes: path, allowed origin, JWT secret,
/// query parameter and header names, Content-Type. Longer is refused with INVALID_ARGUMENT on
/// the length alone, before the buffer is read.
pub const WSPUSH_MAX_ARG_LEN: usize = 1024;
/// Longest timeout the `_ms` setters accept: 2^32-1 ms, about 49 days.
pub const WSPUSH_MAX_TIMEOUT_MS: u64 = 4_294_967_295;

/// Called for each WebSocket upgrade request that passed the protocol checks (path, version,
/// key, origin). Read the request with the `wspush_request_*` accessors and decide with
/// `wspush_request_accept`, `wspush_request_reject` or `wspush_request_defer`. Deciding nothing
/// rejects with 401. `request` is valid only until the callback returns.
pub type wspush_on_upgrade_fn =
    Option<unsafe extern "C" fn(userdata: *mut c_void, server: *const wspush_server, request: *mut wspush_request)>;

/// A connection was upgraded and registered under `user` (1-255 bytes, no NUL, borrowed for the
/// call).
#[rustfmt::skip] // the leading parameters all connection callbacks share, on one line
pub type wspush_on_open_fn = Option<unsafe extern "C" fn(
    userdata: *mut c_void, server: *const wspush_server, conn: u64, user: *const u8, user_len: usize,
)>;

/// A complete message arrived from a client (fragments reassembled; text validated as UTF-8,
/// not NUL-terminated). `user` and `payload` are borrowed for the call.
#[rustfmt::skip]
pub type wspush_on_message_fn = Option<unsafe extern "C" fn(
    userdata: *mut c_void, server: *const wspush_server, conn: u64, user: *const u8, user_len: usize,
    kind: wspush_message_kind, payload: *const u8, payload_len: usize,
)>;

/// An opened connection ended; called exactly once per `on_open`. `code` is the close code:
/// the peer's, or ours (1001 on stop, 1008 slow consumer, 1002/1007/1009 protocol errors), or
/// 1006 when the connection was lost without a close handshake.
#[rustfmt::skip]
pub type wspush_on_close_fn = Option<unsafe extern "C" fn(
    userdata: *mut c_void, server: *const wspush_server, conn: u64, user: *const u8, user_len: usize,
    code: u16,
)>;

/// A message for `conn` was dropped because its queue was full and the slow-consumer policy is
/// `WSPUSH_SLOW_CONSUMER_DROP`. `dropped_bytes` is the frame's size on the wire (payload plus 2-10
/// header bytes).
#[rustfmt::skip]
pub type wspush_on_drop_fn = Option<unsafe extern "C" fn(
    userdata: *mut c_void, server: *const wspush_server, conn: u64, user: *const u8, user_len: usize,
    dropped_bytes: usize,
)>;

/// A plain HTTP request (no `Upgrade: websocket`) arrived. Answer it with
/// `wspush_request_respond`; not answering gives the default 426 Upgrade Required. The
/// connection is closed after the response. `request` is valid only until the callback returns.
pub type wspush_on_http_fn =
    Option<unsafe extern "C" fn(userdata: *mut c_void, server: *const wspush_server, request: *mut wspush_request)>;

/// A publish's outcome (`wspush_publish_async`): `result` is OK, UNAVAILABLE (Redis did not
/// confirm within its timeout; the message may still be applied) or STOPPED; `delivered` and
/// `offset` as `wspush_publish_wait` writes them (0 unless OK). Called exactly once per publish
/// that `wspush_publish_async` accepted: with Redis on the engine's Redis thread, without Redis
/// on the calling thread before `wspush_publish_async` returns. It may call any wspush function
/// except `wspush_publish_wait` on the same server (IN_CALLBACK) and `wspush_server_free`.
pub type wspush_publish_done_fn =
    Option<unsafe extern "C" fn(userdata: *mut c_void, result: wspush_result, delivered: usize, offset: u64)>;

/// The host's callbacks. Zero-initialise it, set `size = sizeof(wspush_callbacks)`, then fill in
/// what you need; NULL callbacks are skipped (a NULL `on_upgrade` rejects every upgrade with
/// 401). Fields are only ever added at the end: a host built against an older header passes a
/// smaller `size` and the newer fields count as NULL.
///
/// Every callback gets `userdata` first and the server second; the server pointer is valid for
/// the whole call (also during `wspush_server_start`, before it returned), so callbacks may
/// publish, send, close, or decide upgrades with it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct wspush_callbacks {
    /// `sizeof(wspush_callbacks)` as the host compiled it.
    pub size: usize,
    /// Passed unchanged to every callback. Callbacks run on several engine threads at once, so
    /// whatever it points to must be safe to use from any thread; it must stay valid until
    /// `wspush_server_free` returns.
    pub userdata: *mut c_void,
    pub on_upgrade: wspush_on_upgrade_fn,
    pub on_open: wspush_on_open_fn,
    pub on_message: wspush_on_message_fn,
    pub on_close: wspush_on_close_fn,
    pub on_drop: wspush_on_drop_fn,
    pub on_http: wspush_on_http_fn,
}

impl wspush_callbacks {
    /// No callbacks: every upgrade is rejected with 401.
    pub(crate) fn none() -> wspush_callbacks {
        wspush_callbacks {
            size: size_of::<wspush_callbacks>(),
            userdata: std::ptr::null_mut(),
            on_upgrade: None,
            on_open: None,
            on_message: None,
            on_close: None,
            on_drop: None,
            on_http: None,
        }
    }
}

/// Whether a value of `wspush_stats_snapshot` is a gauge (goes up and down) or a counter (only
/// grows; its name ends in `_total`).
pub type wspush_stat_kind = u32;
/// A gauge: Prometheus type "gauge".
pub const WSPUSH_STAT_KIND_GAUGE: wspush_stat_kind = 0;
/// A counter: Prometheus type "counter".
pub const WSPUSH_STAT_KIND_COUNTER: wspush_stat_kind = 1;
