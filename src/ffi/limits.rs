//! The limits of a `wspush_config`: sizes, timeouts, per-user and per-address caps, the
//! slow-consumer policy. What keeps a reconnect storm or a hostile client from taking the
//! server down; each has a safe default (see `wspush_config_new`).

use super::boundary::wspush_result;
use super::config::{millis, update};
use super::types::*;
use crate::SlowConsumerPolicy;

fn slow_consumer_policy(policy: wspush_slow_consumer_policy) -> Result<SlowConsumerPolicy, wspush_result> {
    match policy {
        WSPUSH_SLOW_CONSUMER_CLOSE => Ok(SlowConsumerPolicy::Close),
        WSPUSH_SLOW_CONSUMER_DROP => Ok(SlowConsumerPolicy::Drop),
        _ => Err(wspush_result::InvalidArgument),
    }
}

/// Open plus handshaking connections beyond which new sockets get 503 (must be > 0).
/// `wspush_server_start` grows the process's descriptor table to hold this many more descriptors
/// (capped by RLIMIT_NOFILE), so a connection storm never stalls on the kernel doubling it.
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_max_connections(
    config: *mut wspush_config,
    max_connections: usize,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe { update(config, |c| c.max_connections = max_connections) }
}

/// Largest message a client may send, after reassembly (must be > 0); larger closes with 1009.
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_max_message_size(config: *mut wspush_config, bytes: usize) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe { update(config, |c| c.max_message_size = bytes) }
}

/// A connection silent this long (ms, > 0) is sent a ping.
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_ping_interval_ms(
    config: *mut wspush_config,
    ping_interval_ms: u64,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe { update(config, |c| millis(ping_interval_ms).map(|value| c.ping_interval = value)) }
}

/// A connection silent this long (ms, > 0) is closed with 1006: the peer is gone.
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_idle_timeout_ms(
    config: *mut wspush_config,
    idle_timeout_ms: u64,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe { update(config, |c| millis(idle_timeout_ms).map(|value| c.idle_timeout = value)) }
}

/// Time (ms, > 0) from accept to a completed upgrade, including a deferred decision.
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_handshake_timeout_ms(
    config: *mut wspush_config,
    handshake_timeout_ms: u64,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe { update(config, |c| millis(handshake_timeout_ms).map(|value| c.handshake_timeout = value)) }
}

/// Cap on bytes queued for one connection that its socket has not taken yet; what happens
/// beyond it is the slow-consumer policy. Also the largest payload publish/send accept
/// (larger: MESSAGE_TOO_LARGE).
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_max_queue_bytes(config: *mut wspush_config, bytes: usize) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe { update(config, |c| c.max_queue_bytes = bytes) }
}

/// Largest HTTP request head (request line plus headers), at least 256; larger gets 431.
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_max_header_bytes(config: *mut wspush_config, bytes: usize) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe { update(config, |c| c.max_header_bytes = bytes) }
}

/// Handshakes in progress per I/O thread (> 0) beyond which that thread pauses accepting, so
/// a reconnect storm waits in the kernel's backlog.
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_max_handshakes_per_thread(
    config: *mut wspush_config,
    handshakes: usize,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe { update(config, |c| c.max_handshakes_per_thread = handshakes) }
}

/// Connections one user may hold at once (the next is rejected with 429); 0 = no limit.
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_max_connections_per_user(
    config: *mut wspush_config,
    connections: usize,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe { update(config, |c| c.max_connections_per_user = connections) }
}

/// Connections (open or handshaking) one client IP address may hold, IPv6 counted per /64;
/// beyond, new sockets from it get 429. 0 (default) = no limit.
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_max_connections_per_ip(
    config: *mut wspush_config,
    connections: usize,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe { update(config, |c| c.max_connections_per_ip = connections) }
}

/// New connections one client IP address (IPv6: /64) may open per second, in bursts of at most
/// that many; beyond, new sockets from it get 429. 0 (default) = no limit.
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_max_handshakes_per_ip_per_sec(
    config: *mut wspush_config,
    handshakes: u32,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe { update(config, |c| c.max_handshakes_per_ip_per_sec = handshakes) }
}

/// How long (ms) a graceful stop waits for queued data and close handshakes.
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_drain_timeout_ms(
    config: *mut wspush_config,
    drain_timeout_ms: u64,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe { update(config, |c| millis(drain_timeout_ms).map(|value| c.drain_timeout = value)) }
}

/// How long (ms) a connection being closed waits for the peer's close frame.
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_close_timeout_ms(
    config: *mut wspush_config,
    close_timeout_ms: u64,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe { update(config, |c| millis(close_timeout_ms).map(|value| c.close_timeout = value)) }
}

/// `WSPUSH_SLOW_CONSUMER_CLOSE` (default) or `WSPUSH_SLOW_CONSUMER_DROP`; other values give
/// INVALID_ARGUMENT.
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_slow_consumer_policy(
    config: *mut wspush_config,
    policy: wspush_slow_consumer_policy,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe { update(config, |c| slow_consumer_policy(policy).map(|value| c.slow_consumer = value)) }
}

/// Time (ms, > 0; default 5000) a client has to complete a frame or a fragmented message once it
/// has started sending it; then the connection is closed with 1008, so parked half-frames can't
/// pin memory until the idle timeout.
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_message_timeout_ms(
    config: *mut wspush_config,
    message_timeout_ms: u64,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe { update(config, |c| millis(message_timeout_ms).map(|value| c.message_timeout = value)) }
}

/// Bytes all connections together may hold for incomplete frames and messages (default
/// 256 MiB); the connection whose input would pass it is closed with 1013 (try again later).
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_max_partial_input_bytes(
    config: *mut wspush_config,
    bytes: usize,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe { update(config, |c| c.max_partial_input_bytes = bytes) }
}

/// Handshakes in progress (accepted, not yet upgraded) one client address (IPv6: /64) may have;
/// beyond, new sockets from it get 429. 0 (default) = no limit.
///
/// # Safety
/// `config` must be NULL or a live configuration not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn wspush_config_set_max_pending_handshakes_per_ip(
    config: *mut wspush_config,
    handshakes: usize,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe { update(config, |c| c.max_pending_handshakes_per_ip = handshakes) }
}
