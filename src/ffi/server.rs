//! `wspush_server`: start, stop, free, and everything a host does with a running server.

use std::ffi::c_char;
use std::ptr::null_mut;

use super::boundary::{bytes, engine, ffi_boundary, text, wspush_result, Out};
use super::handle::{arc_from_handle, arc_into_handle, borrow, borrow_arc, ArcCastable, Borrowed, Castable};
use super::handler::CallbackHandler;
use super::types::{
    message_kind_from_c, wspush_config, wspush_message_kind, wspush_publish_done_fn, wspush_server,
    WSPUSH_MAX_CLOSE_REASON_LEN, WSPUSH_MAX_USER_ID_LEN,
};
use crate::handle::{Shared, ENGINE_OF_THIS_THREAD};
use crate::{Server, ServerHandle};

impl Castable for wspush_server {
    type RustType = Shared;
}
impl ArcCastable for wspush_server {}

/// Borrows the server behind a host pointer.
///
/// # Safety
/// `server` must be NULL, or a pointer from `wspush_server_start` not yet freed, or the server
/// pointer passed to a running callback.
pub(crate) unsafe fn server_arg(server: *const wspush_server) -> Result<Borrowed<ServerHandle>, wspush_result> {
    // SAFETY: such a pointer is the host's reference or the I/O thread's during a callback.
    let borrowed = unsafe { borrow_arc(server) }?.map(|shared| ServerHandle { shared });
    // A panic here unwinds past a live borrow: the reference count must come out unchanged.
    #[cfg(feature = "test-hooks")]
    crate::test_hooks::ffi_call_point();
    Ok(borrowed)
}

/// Whether the calling thread is one of this server's I/O threads, i.e. inside its callback.
fn on_own_io_thread(server: *const wspush_server) -> bool {
    ENGINE_OF_THIS_THREAD.with(|engine| std::ptr::eq(engine.get(), server.cast::<Shared>()))
}

/// A user ID argument: longer than WSPUSH_MAX_USER_ID_LEN is INVALID_USER_ID without reading.
///
/// # Safety
/// As for [`bytes`].
unsafe fn user_arg<'a>(user: *const u8, user_len: usize) -> Result<&'a [u8], wspush_result> {
    // SAFETY: forwarded contract.
    unsafe { bytes(user, user_len, WSPUSH_MAX_USER_ID_LEN, wspush_result::InvalidUserId) }
}

/// A payload argument: longer than the server's max_queue_bytes is MESSAGE_TOO_LARGE without
/// reading.
///
/// # Safety
/// As for [`bytes`].
unsafe fn payload_arg<'a>(
    server: &ServerHandle,
    payload: *const u8,
    payload_len: usize,
) -> Result<&'a [u8], wspush_result> {
    let max = server.shared.config.max_queue_bytes;
    // SAFETY: forwarded contract.
    unsafe { bytes(payload, payload_len, max, wspush_result::MessageTooLarge) }
}

/// Writes a value (a count, an offset) to an optional out-parameter.
///
/// # Safety
/// `out` must be NULL or valid for writes.
unsafe fn write_optional<T>(out: *mut T, value: T) {
    if let Ok(out) = Out::new(out) {
        // SAFETY: non-NULL, valid per the contract.
        unsafe { out.write(value) };
    }
}

/// Writes a publish's outcome to the optional out-parameters (offset 0: history off).
///
/// # Safety
/// Each pointer must be NULL or writable.
unsafe fn write_published(delivered: *mut usize, offset: *mut u64, published: crate::Published) {
    // SAFETY: per this function's contract.
    unsafe {
        write_optional(delivered, published.delivered);
        write_optional(offset, published.offset.unwrap_or(0));
    }
}

/// This library's version, e.g. "0.1.0" (static, NUL-terminated).
#[no_mangle]
pub extern "C" fn wspush_version() -> *const c_char {
    ffi_boundary(|| Ok(concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()))
}

/// A short English description of a result code (static, NUL-terminated); unknown codes get
/// "unknown result code". Never NULL.
#[no_mangle]
pub extern "C" fn wspush_result_str(result: u32) -> *const c_char {
    ffi_boundary(|| {
        let text = wspush_result::from_raw(result).map_or("unknown result code\0", wspush_result::text);
        Ok(text.as_ptr().cast())
    })
}

/// Binds the listening socket(s) and starts the I/O threads with a copy of `config` (which the
/// host still owns and may free right away). On success `*server` receives the server; release
/// it with `wspush_server_free`. Callbacks may run before this returns.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (a configuration value), INVALID_ADDRESS (host does
/// not resolve), BIND_FAILED (e.g. port in use), IO (threads or pollers).
///
/// # Safety
/// `config` must be NULL or a live configuration; `server` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn wspush_server_start(
    config: *const wspush_config,
    server: *mut *const wspush_server,
) -> wspush_result {
    ffi_boundary(|| {
        // SAFETY: per this function's contract.
        let config = unsafe { borrow(config) }?;
        let server_out = Out::new(server)?;
        let handler = Box::new(CallbackHandler::new(config.callbacks));
        let started = engine(Server::start_boxed(config.config.clone(), handler))?;
        // The host's pointer owns one reference; `wspush_server_free` releases it.
        let handle = arc_into_handle(started.into_handle().shared);
        // SAFETY: checked non-NULL, writable per the contract.
        unsafe { server_out.write(handle) };
        Ok(wspush_result::Ok)
    })
}

/// The port the server listens on (useful after listening on port 0).
///
/// # Safety
/// `server` must be NULL or a live server; `port` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn wspush_server_local_port(server: *const wspush_server, port: *mut u16) -> wspush_result {
    ffi_boundary(|| {
        // SAFETY: per this function's contract.
        let server = unsafe { server_arg(server) }?;
        let port = Out::new(port)?;
        // SAFETY: checked non-NULL, writable per the contract.
        unsafe { port.write(server.local_addr().port()) };
        Ok(wspush_result::Ok)
    })
}

/// Graceful stop: stop accepting, close every connection with 1001, flush for up to the drain
/// timeout, call `on_close` for every open connection, then end the I/O threads. Blocks until
/// all that is done, except when called from inside a callback: then it only starts the stop
/// and returns (an I/O thread cannot wait for itself). Calling it again is harmless; while
/// another thread is still inside a stop of the same server, it may return before that stop has
/// finished. Returns OK, also when called again (from any thread); NULL_ARGUMENT for NULL.
/// After it, publish/broadcast/send/close/disconnect/upgrade_* return STOPPED (argument errors
/// such as NULL_ARGUMENT or INVALID_USER_ID are still reported first); stats and local_port
/// keep working until `wspush_server_free`.
///
/// # Safety
/// `server` must be NULL or a live server.
#[no_mangle]
pub unsafe extern "C" fn wspush_server_stop(server: *const wspush_server) -> wspush_result {
    ffi_boundary(|| {
        // SAFETY: per this function's contract.
        let handle = unsafe { server_arg(server) }?;
        // On one of its own I/O threads this only starts the stop (the engine checks that too).
        handle.stop();
        Ok(wspush_result::Ok)
    })
}

/// Stops the server (as `wspush_server_stop`, waiting for the I/O threads) and releases it.
/// NULL is a no-op returning OK. After it returns no callback runs any more, so `userdata` may be
/// released. Returns IN_CALLBACK, doing nothing, when called from a callback of this same server
/// (call `wspush_server_stop` there and free from another thread). The pointer must not be used
/// afterwards, by any thread: freeing twice is undefined behaviour.
///
/// # Safety
/// `server` must be NULL or a live server that no other thread uses any more.
#[no_mangle]
pub unsafe extern "C" fn wspush_server_free(server: *const wspush_server) -> wspush_result {
    ffi_boundary(|| {
        if !server.is_null() && on_own_io_thread(server) {
            return Err(wspush_result::InCallback);
        }
        // SAFETY: the host's reference from `wspush_server_start`, given up now (contract).
        // Dropping it at the end releases the engine's state, callbacks and all.
        if let Some(shared) = unsafe { arc_from_handle(server) } {
            ServerHandle { shared }.stop();
        }
        Ok(wspush_result::Ok)
    })
}

/// Sends `payload` to every open connection of `user` (1-255 bytes, no NUL). `*delivered` (optional,
/// may be NULL) receives how many connections it was queued to, 0 when the user has none. With
/// history on, the message also takes the next offset of the user's stream (see
/// `wspush_publish_with_offset`, which tells it).
/// With Redis (`wspush_config_set_redis_url`) the message is queued for Redis, which sends it
/// to the user's connections on every node, and this returns at once with `*delivered` 0 (and
/// offset 0): `wspush_publish_wait` and `wspush_publish_async` tell the outcome.
/// Errors: NULL_ARGUMENT, INVALID_USER_ID, INVALID_ARGUMENT (kind), MESSAGE_TOO_LARGE (payload
/// larger than max_queue_bytes), STOPPED; with Redis also UNAVAILABLE (Redis unreachable for
/// longer than its timeout, or too much already waits for it).
///
/// # Safety
/// `server` must be NULL or a live server; `user` and `payload` NULL or readable for their
/// lengths; `delivered` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn wspush_publish(
    server: *const wspush_server,
    user: *const u8,
    user_len: usize,
    payload: *const u8,
    payload_len: usize,
    kind: wspush_message_kind,
    delivered: *mut usize,
) -> wspush_result {
    // SAFETY: the same contract, with no offset asked for.
    unsafe { wspush_publish_with_offset(server, user, user_len, payload, payload_len, kind, delivered, null_mut()) }
}

/// `wspush_publish`, also telling the message's offset in the user's history stream:
/// `*offset` (optional, may be NULL) receives it: 1, 2, 3, ... per user, assigned whether or not
/// the user has a connection (a `wspush.v1` client that reconnects with `since` gets the message
/// then), and from 1 again when the user's stream starts a new epoch (expired or evicted). It
/// receives 0 when history is off (`wspush_config_set_history_max_messages`, default off), and
/// never 0 otherwise. `*delivered` (optional, may be NULL) as for `wspush_publish`. Errors as for
/// `wspush_publish`; neither out-parameter is written on an error.
///
/// # Safety
/// `server` must be NULL or a live server; `user` and `payload` NULL or readable for their
/// lengths; `delivered` and `offset` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn wspush_publish_with_offset(
    server: *const wspush_server,
    user: *const u8,
    user_len: usize,
    payload: *const u8,
    payload_len: usize,
    kind: wspush_message_kind,
    delivered: *mut usize,
    offset: *mut u64,
) -> wspush_result {
    ffi_boundary(|| {
        // SAFETY: per this function's contract.
        let server = unsafe { server_arg(server) }?;
        // SAFETY: per this function's contract.
        let (user, payload) = unsafe { (user_arg(user, user_len)?, payload_arg(&server, payload, payload_len)?) };
        let published = engine(server.publish_with_offset(user, payload, message_kind_from_c(kind)?))?;
        // SAFETY: per this function's contract.
        unsafe { write_published(delivered, offset, published) };
        Ok(wspush_result::Ok)
    })
}

/// Publishes like `wspush_publish` and waits for the outcome, at most `timeout_ms`
/// milliseconds and never longer than the Redis timeout. With Redis
/// (`wspush_config_set_redis_url`) `*delivered` receives the number of NODES that hold a
/// connection of the user (each got the message from Redis) and `*offset` the message's offset
/// in the user's stream (0 with history off); both optional. Without Redis it is
/// `wspush_publish_with_offset`. Errors as for `wspush_publish`, plus UNAVAILABLE (Redis did not
/// confirm in time or is unreachable: the message may still be applied) and IN_CALLBACK when
/// called from a `wspush_publish_done_fn` of this server (it would wait for its own thread).
/// Blocks the calling thread: call it from the host's threads.
///
/// # Safety
/// As for `wspush_publish_with_offset`.
#[no_mangle]
pub unsafe extern "C" fn wspush_publish_wait(
    server: *const wspush_server,
    user: *const u8,
    user_len: usize,
    payload: *const u8,
    payload_len: usize,
    kind: wspush_message_kind,
    timeout_ms: u64,
    delivered: *mut usize,
    offset: *mut u64,
) -> wspush_result {
    ffi_boundary(|| {
        // SAFETY: per this function's contract.
        let server = unsafe { server_arg(server) }?;
        // SAFETY: per this function's contract.
        let (user, payload) = unsafe { (user_arg(user, user_len)?, payload_arg(&server, payload, payload_len)?) };
        let timeout = std::time::Duration::from_millis(timeout_ms);
        let published = engine(server.publish_wait(user, payload, message_kind_from_c(kind)?, timeout))?;
        // SAFETY: per this function's contract.
        unsafe { write_published(delivered, offset, published) };
        Ok(wspush_result::Ok)
    })
}

/// The host's `userdata` for a publish completion.
struct DoneUserdata(*mut std::ffi::c_void);
// SAFETY: the host promises (wspush_publish_async) that `userdata` may be used from the engine's
// Redis thread; wspush only passes it back.
unsafe impl Send for DoneUserdata {}

/// Publishes like `wspush_publish` without waiting, and calls `done(userdata, result, delivered,
/// offset)` exactly once with the outcome (see `wspush_publish_done_fn` for which thread and
/// what `delivered` counts). Returns OK when the publish was accepted (then `done` will be
/// called), or an error as for `wspush_publish` plus UNAVAILABLE when Redis is known to be
/// unreachable or too much already waits for it (then `done` is not called). `done` must not be
/// NULL; `userdata` must stay valid until `done` ran and be usable from that thread.
///
/// # Safety
/// As for `wspush_publish`; `done` must be a function with the `wspush_publish_done_fn`
/// signature.
#[no_mangle]
pub unsafe extern "C" fn wspush_publish_async(
    server: *const wspush_server,
    user: *const u8,
    user_len: usize,
    payload: *const u8,
    payload_len: usize,
    kind: wspush_message_kind,
    done: wspush_publish_done_fn,
    userdata: *mut std::ffi::c_void,
) -> wspush_result {
    ffi_boundary(|| {
        let done = done.ok_or(wspush_result::NullArgument)?;
        // SAFETY: per this function's contract.
        let server = unsafe { server_arg(server) }?;
        // SAFETY: per this function's contract.
        let (user, payload) = unsafe { (user_arg(user, user_len)?, payload_arg(&server, payload, payload_len)?) };
        let userdata = DoneUserdata(userdata);
        engine(server.publish_async(user, payload, message_kind_from_c(kind)?, move |outcome| {
            let userdata = userdata;
            let (result, delivered, offset) = match outcome {
                Ok(published) => (wspush_result::Ok, published.delivered, published.offset.unwrap_or(0)),
                Err(error) => (wspush_result::from(error), 0, 0),
            };
            // SAFETY: the host's callback with the userdata it gave, called once.
            unsafe { done(userdata.0, result, delivered, offset) };
        }))?;
        Ok(wspush_result::Ok)
    })
}

/// Sends `payload` to every open connection. `*count` (optional) receives how many were open.
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (kind), MESSAGE_TOO_LARGE, STOPPED.
///
/// # Safety
/// `server` must be NULL or a live server; `payload` NULL or readable for `payload_len` bytes;
/// `count` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn wspush_broadcast(
    server: *const wspush_server,
    payload: *const u8,
    payload_len: usize,
    kind: wspush_message_kind,
    count: *mut usize,
) -> wspush_result {
    ffi_boundary(|| {
        // SAFETY: per this function's contract.
        let server = unsafe { server_arg(server) }?;
        // SAFETY: per this function's contract.
        let payload = unsafe { payload_arg(&server, payload, payload_len) }?;
        let open = engine(server.broadcast(payload, message_kind_from_c(kind)?))?;
        // SAFETY: per this function's contract.
        unsafe { write_optional(count, open) };
        Ok(wspush_result::Ok)
    })
}

/// Sends `payload` to one connection. NOT_FOUND when it is not open (connection IDs are never
/// reused, so a stale ID cannot reach another connection).
/// Errors: NULL_ARGUMENT, INVALID_ARGUMENT (kind), MESSAGE_TOO_LARGE, NOT_FOUND, STOPPED.
///
/// # Safety
/// `server` must be NULL or a live server; `payload` NULL or readable for `payload_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn wspush_send(
    server: *const wspush_server,
    conn: u64,
    payload: *const u8,
    payload_len: usize,
    kind: wspush_message_kind,
) -> wspush_result {
    ffi_boundary(|| {
        // SAFETY: per this function's contract.
        let server = unsafe { server_arg(server) }?;
        // SAFETY: per this function's contract.
        let payload = unsafe { payload_arg(&server, payload, payload_len) }?;
        engine(server.send(conn, payload, message_kind_from_c(kind)?))?;
        Ok(wspush_result::Ok)
    })
}

/// Starts the close handshake on one connection with `code` (1000-1003, 1007-1014, 3000-4999)
/// and a UTF-8 `reason` of at most 123 bytes (NULL/0 for none). `on_close` follows.
/// Errors: NULL_ARGUMENT, INVALID_CLOSE_CODE, INVALID_UTF8, INVALID_CLOSE_REASON, NOT_FOUND,
/// STOPPED.
///
/// # Safety
/// `server` must be NULL or a live server; `reason` NULL or readable for `reason_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn wspush_close(
    server: *const wspush_server,
    conn: u64,
    code: u16,
    reason: *const c_char,
    reason_len: usize,
) -> wspush_result {
    ffi_boundary(|| {
        // SAFETY: per this function's contract.
        let (server, reason) = unsafe {
            (
                server_arg(server)?,
                text(reason, reason_len, WSPUSH_MAX_CLOSE_REASON_LEN, wspush_result::InvalidCloseReason)?,
            )
        };
        engine(server.close(conn, code, reason))?;
        Ok(wspush_result::Ok)
    })
}

/// Closes every connection of `user` with `code`. `*count` (optional) receives how many.
/// Errors: NULL_ARGUMENT, INVALID_USER_ID (not 1-255 bytes, or a NUL), INVALID_CLOSE_CODE, STOPPED.
///
/// # Safety
/// `server` must be NULL or a live server; `user` NULL or readable for `user_len` bytes; `count`
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn wspush_disconnect_user(
    server: *const wspush_server,
    user: *const u8,
    user_len: usize,
    code: u16,
    count: *mut usize,
) -> wspush_result {
    ffi_boundary(|| {
        // SAFETY: per this function's contract.
        let (server, user) = unsafe { (server_arg(server)?, user_arg(user, user_len)?) };
        let closed = engine(server.disconnect_user(user, code))?;
        // SAFETY: per this function's contract.
        unsafe { write_optional(count, closed) };
        Ok(wspush_result::Ok)
    })
}

/// Completes a deferred upgrade (see `wspush_request_defer`) by accepting it as `user`.
/// NOT_FOUND when no pending upgrade or connection has that ticket (unknown, timed out, client
/// gone). The decision is applied asynchronously: one for a ticket that is no longer waiting
/// (already decided) is ignored.
/// Errors: NULL_ARGUMENT, INVALID_USER_ID, NOT_FOUND, STOPPED.
///
/// # Safety
/// `server` must be NULL or a live server; `user` NULL or readable for `user_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn wspush_upgrade_accept(
    server: *const wspush_server,
    ticket: u64,
    user: *const u8,
    user_len: usize,
) -> wspush_result {
    ffi_boundary(|| {
        // SAFETY: per this function's contract.
        let (server, user) = unsafe { (server_arg(server)?, user_arg(user, user_len)?) };
        engine(server.accept_upgrade(ticket, user))?;
        Ok(wspush_result::Ok)
    })
}

/// Completes a deferred upgrade by answering HTTP `status` (400-599, else INVALID_STATUS) and
/// closing. NOT_FOUND and late decisions as for `wspush_upgrade_accept`.
///
/// # Safety
/// `server` must be NULL or a live server.
#[no_mangle]
pub unsafe extern "C" fn wspush_upgrade_reject(
    server: *const wspush_server,
    ticket: u64,
    status: u16,
) -> wspush_result {
    ffi_boundary(|| {
        // SAFETY: per this function's contract.
        let server = unsafe { server_arg(server) }?;
        engine(server.reject_upgrade(ticket, status))?;
        Ok(wspush_result::Ok)
    })
}
