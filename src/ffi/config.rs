//! `wspush_config`: a mutable builder for [`Config`] plus the host's callbacks.

use std::ffi::c_char;
use std::mem::{offset_of, size_of};
use std::time::Duration;

use super::boundary::{bytes, ffi_boundary, shared_prefix, text, wspush_result};
use super::handle::{borrow_mut, box_into_handle, free_box, BoxCastable, Castable};
use super::types::*;
use crate::Config;

/// What a `wspush_config` points to.
pub(crate) struct ConfigBuilder {
    pub(crate) config: Config,
    pub(crate) callbacks: wspush_callbacks,
}

impl Castable for wspush_config {
    type RustType = ConfigBuilder;
}
impl BoxCastable for wspush_config {}

/// Applies `change` to a copy of the configuration and keeps it only if the whole configuration
/// is still valid, so a rejected setter leaves the previous value in place.
///
/// # Safety
/// `config` must be NULL or a live `wspush_config` not used by another thread.
pub(super) unsafe fn update<R: Change>(
    config: *mut wspush_config,
    change: impl FnOnce(&mut Config) -> R,
) -> wspush_result {
    ffi_boundary(|| {
        // SAFETY: per this function's contract.
        let builder = unsafe { borrow_mut(config) }?;
        let mut candidate = builder.config.clone();
        change(&mut candidate).accepted()?;
        candidate.validate().map_err(|_| wspush_result::InvalidArgument)?;
        builder.config = candidate;
        Ok(wspush_result::Ok)
    })
}

/// What a setter's change returns: nothing when it cannot refuse the value, else a result.
pub(super) trait Change {
    fn accepted(self) -> Result<(), wspush_result>;
}

impl Change for () {
    fn accepted(self) -> Result<(), wspush_result> {
        Ok(())
    }
}

impl Change for Result<(), wspush_result> {
    fn accepted(self) -> Result<(), wspush_result> {
        self
    }
}

pub(super) fn millis(ms: u64) -> Result<Duration, wspush_result> {
    if ms > WSPUSH_MAX_TIMEOUT_MS {
        Err(wspush_result::InvalidArgument)
    } else {
        Ok(Duration::from_millis(ms))
    }
}

/// "host:port" with a numeric port; the host is resolved by `wspush_server_start`.
fn looks_like_listen_address(address: &str) -> bool {
    address.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// A new configuration with the defaults: listen "127.0.0.1:8080", path "/ws", one I/O thread
/// per core, 1,000,000 connections, 64 KiB messages, ping every 30 s, idle timeout 75 s,
/// handshake timeout 10 s, 1 MiB queue per connection with the close policy, any Origin, 8 KiB
/// request heads, 1024 handshakes per thread, no per-user or per-IP limit, no JWT authentication,
/// no PROXY protocol, 5 s drain, 2 s close timeout, 8 MiB I/O thread stacks, history off (once
/// turned on: 600 s TTL, 64 MiB for all users), no callbacks. Returns NULL only on an internal
/// error. Release with `wspush_config_free`.
#[no_mangle]
pub extern "C" fn wspush_config_new() -> *mut wspush_config {
    ffi_boundary(|| {
        Ok(box_into_handle(ConfigBuilder { config: Config::default(), callbacks: wspush_callbacks::none() }))
    })
}

/// Releases a configuration. NULL is a no-op. A running server does not need its configuration:
/// `wspush_server_start` copies it.
///
/// # Safety
/// `config` must be NULL or come from `wspush_config_new` and not be freed yet.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_free(config: *mut wspush_config) {
    ffi_boundary(|| {
        // SAFETY: per this function's contract.
        unsafe { free_box(config) };
        Ok(())
    })
}

/// Sets the listen address, "host:port" (UTF-8, `address_len` bytes, no NUL needed), e.g.
/// "0.0.0.0:8080" or "[::1]:0". Port 0 picks a free port (see `wspush_server_local_port`).
/// Returns INVALID_ADDRESS when it is not host:port with a numeric port or is longer than
/// WSPUSH_MAX_ADDRESS_LEN (checked before reading); the host name is resolved by
/// `wspush_server_start`.
///
/// # Safety
/// `config` must be NULL or a live configuration; `address` must be NULL or point to
/// `address_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_listen(
    config: *mut wspush_config,
    address: *const c_char,
    address_len: usize,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe {
        update(config, |c| {
            let address = text(address, address_len, WSPUSH_MAX_ADDRESS_LEN, wspush_result::InvalidAddress)?;
            if !looks_like_listen_address(address) {
                return Err(wspush_result::InvalidAddress);
            }
            c.listen = address.to_string();
            Ok(())
        })
    }
}

/// Sets the request path that accepts upgrades (default "/ws"; other paths get 404). Must start
/// with '/' and be at most WSPUSH_MAX_ARG_LEN bytes (else INVALID_ARGUMENT).
///
/// # Safety
/// As for `wspush_config_set_listen`.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_path(
    config: *mut wspush_config,
    path: *const c_char,
    path_len: usize,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe {
        update(config, |c| {
            text(path, path_len, WSPUSH_MAX_ARG_LEN, wspush_result::InvalidArgument)
                .map(|path| c.path = path.to_string())
        })
    }
}

/// Only upgrades whose Origin header equals one of the added origins are accepted (others get
/// 403). With none added (default), any Origin is accepted. E.g. "https://mail.example.com".
/// At most WSPUSH_MAX_ARG_LEN bytes (else INVALID_ARGUMENT).
///
/// # Safety
/// As for `wspush_config_set_listen`.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_add_allowed_origin(
    config: *mut wspush_config,
    origin: *const c_char,
    origin_len: usize,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe {
        update(config, |c| {
            let origin = text(origin, origin_len, WSPUSH_MAX_ARG_LEN, wspush_result::InvalidArgument)?;
            if origin.is_empty() {
                return Err(wspush_result::InvalidArgument);
            }
            c.allowed_origins.push(origin.to_string());
            Ok(())
        })
    }
}

// The setters below are written out (not macro-generated) because cbindgen does not expand
// macros: every function must be visible in the source to reach the header.
// Each returns NULL_ARGUMENT for a NULL config and INVALID_ARGUMENT for an out-of-range value
// (the configuration then keeps its previous value). Timeouts above WSPUSH_MAX_TIMEOUT_MS are
// out of range.

/// Number of I/O threads, at most 255; 0 (default) means one per available core.
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_threads(config: *mut wspush_config, threads: usize) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe { update(config, |c| c.threads = threads) }
}

/// Turns on the built-in JSON Web Token authentication with this HS256 secret (`secret_len`
/// bytes, 32 to WSPUSH_MAX_ARG_LEN, copied; INVALID_ARGUMENT otherwise). The token is read from an
/// `Authorization: Bearer` header, else from the `token` query parameter; it must be signed with
/// HS256 (any other alg, "none" included, is refused), carry `exp` (enforced, as is `nbf`, with
/// the leeway of `wspush_config_set_jwt_leeway_ms`) and a `sub` of 1-255 bytes without NUL. Without an
/// `on_upgrade` callback, a valid token is accepted as user `sub` and anything else gets 401
/// "invalid token"; with one, the callback decides and reads the verified `sub` with
/// `wspush_request_verified_user`.
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread; `secret` NULL or
/// `secret_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_jwt_hs256_secret(
    config: *mut wspush_config,
    secret: *const u8,
    secret_len: usize,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe {
        update(config, |c| {
            let secret = bytes(secret, secret_len, WSPUSH_MAX_ARG_LEN, wspush_result::InvalidArgument)?;
            if secret.len() < crate::jwt::MIN_SECRET_LEN {
                return Err(wspush_result::InvalidArgument);
            }
            c.jwt_hs256_secret = Some(secret.into());
            Ok(())
        })
    }
}

/// Clock skew (ms) allowed when checking a token's `exp` and `nbf` (default 30,000).
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_jwt_leeway_ms(config: *mut wspush_config, leeway_ms: u64) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe { update(config, |c| millis(leeway_ms).map(|value| c.jwt_leeway = value)) }
}

/// Stack size in bytes of each engine I/O thread, where every callback runs: 0 (default) means
/// 8 MiB, what glibc gives an ordinary thread, so callback code that recurses deeply (e.g. an
/// interpreter's) has the stack it would have on the host's own threads. Otherwise at least
/// 64 KiB (else INVALID_ARGUMENT). Untouched stack pages are never committed: a larger stack
/// costs address space, not memory. A size the system cannot give makes `wspush_server_start`
/// fail with IO.
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_thread_stack_size(
    config: *mut wspush_config,
    bytes: usize,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe { update(config, |c| c.thread_stack_size = bytes) }
}

/// Behind a load balancer: with `enabled`, connections from a trusted proxy (see
/// `wspush_config_add_trusted_proxy`; add at least one first, else INVALID_ARGUMENT) must open
/// with a PROXY protocol header, v1 or v2 (HAProxy `send-proxy`/`send-proxy-v2`, nginx
/// `proxy_protocol on`, cloud TCP balancers), else they get 400. The client address it carries
/// is what per-address limits count and what `wspush_request_peer` returns. Other sources are
/// served directly; a PROXY header from them gets 400. Default: off.
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_proxy_protocol(config: *mut wspush_config, enabled: bool) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe { update(config, |c| c.proxy_protocol = enabled) }
}

/// Adds a source allowed to send PROXY headers: an address ("127.0.0.1", "::1") or a CIDR
/// network ("10.0.0.0/8", "fd00::/8"), UTF-8, at most WSPUSH_MAX_ADDRESS_LEN bytes. Anything
/// else is INVALID_ADDRESS.
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread; `network` NULL or
/// `network_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_add_trusted_proxy(
    config: *mut wspush_config,
    network: *const c_char,
    network_len: usize,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe {
        update(config, |c| {
            let network = text(network, network_len, WSPUSH_MAX_ADDRESS_LEN, wspush_result::InvalidAddress)?;
            c.trusted_proxies.push(network.parse().map_err(|_| wspush_result::InvalidAddress)?);
            Ok(())
        })
    }
}

/// Copies the host's callbacks (and userdata) into the configuration, replacing earlier ones.
/// `callbacks->size` must be at least `offsetof(wspush_callbacks, on_upgrade)`, else
/// INVALID_ARGUMENT; fields past `size` count as NULL.
///
/// # Safety
/// `config` must be NULL or a live configuration; `callbacks` must be NULL or point to
/// `callbacks->size` readable bytes laid out as `wspush_callbacks`, whose non-NULL function
/// pointers stay callable until every server started with this configuration is freed.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_callbacks(
    config: *mut wspush_config,
    callbacks: *const wspush_callbacks,
) -> wspush_result {
    ffi_boundary(|| {
        // SAFETY: per this function's contract.
        let builder = unsafe { borrow_mut(config) }?;
        // Every field is pointer-sized.
        // SAFETY: the leading size field is readable per the contract.
        let copied =
            unsafe { shared_prefix(callbacks, 0, offset_of!(wspush_callbacks, on_upgrade), size_of::<usize>()) }?;
        let mut accepted = wspush_callbacks::none();
        // SAFETY: the host's struct has at least `copied` readable bytes (its size field); `accepted` has
        // `size_of::<wspush_callbacks>() >= copied` bytes; they don't overlap; every byte
        // pattern of a pointer or nullable function pointer is a valid value (NULL is None).
        unsafe {
            std::ptr::copy_nonoverlapping(
                callbacks.cast::<u8>(),
                (&mut accepted as *mut wspush_callbacks).cast::<u8>(),
                copied,
            );
        }
        accepted.size = size_of::<wspush_callbacks>();
        builder.callbacks = accepted;
        Ok(wspush_result::Ok)
    })
}

/// SO_SNDBUF and SO_RCVBUF of every connection's socket, in bytes; 0 (default) keeps the
/// kernel's autotuning. Smaller buffers save kernel memory per connection (several KiB each at
/// millions of connections) at the cost of throughput per connection.
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_socket_buffers(
    config: *mut wspush_config,
    send_bytes: usize,
    recv_bytes: usize,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe {
        update(config, |c| {
            c.socket_send_buffer = send_bytes;
            c.socket_recv_buffer = recv_bytes;
            Ok(())
        })
    }
}

/// Per-user history, for clients speaking the `wspush.v1` subprotocol (bindings/js/PROTOCOL.md):
/// the last `messages` messages published to each user are kept and numbered (offsets 1, 2, 3,
/// ... per user, whether or not the user has a connection), and a client that reconnects with
/// `since=EPOCH:OFFSET` in its upgrade URL is sent what it missed. 0 (default) turns history
/// off: nothing is kept and `wspush_publish_with_offset` reports offset 0. Connections cost
/// nothing more with it on; each user published to costs one stream. See also
/// `wspush_config_set_history_ttl_ms` and `wspush_config_set_history_max_bytes`.
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_history_max_messages(
    config: *mut wspush_config,
    messages: usize,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe { update(config, |c| c.history_max_messages = messages) }
}

/// How long (ms, > 0; default 600,000) a message stays in a user's history. Kept in whole
/// seconds, rounded up. A user's stream whose newest message has expired is dropped, and the
/// next publish to that user starts a new epoch (a client resuming across it is told it did not
/// recover).
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_history_ttl_ms(config: *mut wspush_config, ttl_ms: u64) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe {
        update(config, |c| {
            // Refused here, not only when history is on, so the order of the setters never matters.
            if ttl_ms == 0 {
                return Err(wspush_result::InvalidArgument);
            }
            c.history_ttl = millis(ttl_ms)?;
            Ok(())
        })
    }
}

/// Bytes all users' histories together may take, payloads plus bookkeeping (the `history_bytes`
/// stat; > 0, default 64 MiB). Past it the least recently published users' streams are dropped
/// whole (their next publish starts a new epoch).
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_history_max_bytes(
    config: *mut wspush_config,
    bytes: usize,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe {
        update(config, |c| {
            if bytes == 0 {
                return Err(wspush_result::InvalidArgument);
            }
            c.history_max_bytes = bytes;
            Ok(())
        })
    }
}

/// Several nodes sharing users through Redis (README, "Running several nodes"): the URL
/// `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`, `url_len` bytes of UTF-8 (no NUL needed;
/// length 0 turns Redis off, the default). A publish on any node then reaches the user's
/// connections on every node, `wspush_publish` only queues it (see `wspush_publish_wait` and
/// `wspush_publish_async` for its outcome), and history (when on) is kept in Redis
/// (`wspush_config_set_history_max_bytes` does not apply; Redis's maxmemory does). INVALID_ARGUMENT
/// when the URL is malformed or longer than WSPUSH_MAX_ARG_LEN.
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread; `url` NULL or
/// readable for `url_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_redis_url(
    config: *mut wspush_config,
    url: *const c_char,
    url_len: usize,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe {
        update(config, |c| {
            let url = text(url, url_len, WSPUSH_MAX_ARG_LEN, wspush_result::InvalidArgument)?;
            if url.is_empty() {
                c.redis_url = None;
                return Ok(());
            }
            let mut check = Config { redis_url: Some(url.to_string()), ..Config::default() };
            check.validate().map_err(|_| wspush_result::InvalidArgument)?;
            c.redis_url = check.redis_url.take();
            Ok(())
        })
    }
}

/// How long (ms, at least 10; default 2,000) Redis may take to answer before a publish fails
/// with UNAVAILABLE (and a waiting `wspush.v1` connection is closed with 1013 to retry), and
/// the connection to Redis is remade.
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_redis_timeout_ms(
    config: *mut wspush_config,
    timeout_ms: u64,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe {
        update(config, |c| {
            if timeout_ms < 10 {
                return Err(wspush_result::InvalidArgument);
            }
            c.redis_timeout = millis(timeout_ms)?;
            Ok(())
        })
    }
}
