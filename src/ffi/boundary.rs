//! What every entry point shares: the result codes, the panic boundary, and argument checks.
//!
//! Each `extern "C"` function is `ffi_boundary(|| { ... })`: the body returns
//! `Result<R, wspush_result>` so NULL and argument checks can use `?`, and a panic inside becomes
//! `WSPUSH_RESULT_PANIC` instead of unwinding into C (which would abort the host). What an error
//! or panic turns into for each return type is the [`FfiReturn`] trait.

use crate::guard::guarded;
use std::ffi::c_char;
use std::mem::size_of;

use crate::Error;

/// Result of every fallible call. Values are part of the ABI: never renumbered, new codes are
/// only added with new numbers.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum wspush_result {
    /// Success.
    Ok = 0,
    /// A required pointer argument was NULL (or a NULL buffer with a non-zero length).
    NullArgument = 1,
    /// A value is out of range, or the call is not allowed here (e.g. accepting in `on_http`).
    InvalidArgument = 2,
    /// Text that must be UTF-8 is not.
    InvalidUtf8 = 3,
    /// The listen address is not "host:port" or does not resolve.
    InvalidAddress = 4,
    /// The listening socket could not be bound (address in use, permission, ...).
    BindFailed = 5,
    /// A user ID must be 1 to 255 bytes long and contain no NUL byte.
    InvalidUserId = 6,
    /// Close codes must be 1000-1003, 1007-1014 or 3000-4999.
    InvalidCloseCode = 7,
    /// A close reason must be at most 123 bytes of UTF-8 (a longer length is refused before
    /// the buffer is read).
    InvalidCloseReason = 8,
    /// An HTTP status is out of range (400-599 to reject, 200-599 to respond).
    InvalidStatus = 9,
    /// The payload is larger than max_queue_bytes (it could never be queued).
    MessageTooLarge = 10,
    /// No such open connection, pending upgrade, query parameter, header or peer address.
    NotFound = 11,
    /// The server is stopping or stopped.
    Stopped = 12,
    /// The engine could not create its threads or pollers.
    Io = 13,
    /// The call is not allowed from inside a callback of this server (`wspush_server_free`), or
    /// would wait for the thread it is called on (`wspush_publish_wait` in a publish completion).
    InCallback = 14,
    /// A bug in wspush: a panic was caught at the C boundary (the call had no effect or only
    /// part of it), or an engine thread panicked earlier and the server stopped itself (every
    /// later call on it returns PANIC: stop and free it, then start a new one).
    Panic = 15,
    /// Redis (`wspush_config_set_redis_url`) did not confirm the publish within the Redis
    /// timeout, or is known to be unreachable. The message may still be applied (then delivered
    /// and numbered like any other). The admin API of wspushd answers 503.
    Unavailable = 16,
}

/// Every `wspush_result` value (for tests; not part of the C header).
///
/// cbindgen:ignore
pub const ALL_RESULTS: [wspush_result; 17] = [
    wspush_result::Ok,
    wspush_result::NullArgument,
    wspush_result::InvalidArgument,
    wspush_result::InvalidUtf8,
    wspush_result::InvalidAddress,
    wspush_result::BindFailed,
    wspush_result::InvalidUserId,
    wspush_result::InvalidCloseCode,
    wspush_result::InvalidCloseReason,
    wspush_result::InvalidStatus,
    wspush_result::MessageTooLarge,
    wspush_result::NotFound,
    wspush_result::Stopped,
    wspush_result::Io,
    wspush_result::InCallback,
    wspush_result::Panic,
    wspush_result::Unavailable,
];

impl wspush_result {
    /// The description `wspush_result_str` returns, NUL-terminated for C.
    pub(crate) fn text(self) -> &'static str {
        match self {
            wspush_result::Ok => "ok\0",
            wspush_result::NullArgument => "a required pointer argument is NULL\0",
            wspush_result::InvalidArgument => "invalid argument\0",
            wspush_result::InvalidUtf8 => "text is not valid UTF-8\0",
            wspush_result::InvalidAddress => "invalid listen address (expected host:port)\0",
            wspush_result::BindFailed => "cannot bind the listening socket\0",
            wspush_result::InvalidUserId => "user ID must be 1 to 255 bytes without NUL\0",
            wspush_result::InvalidCloseCode => "invalid close code\0",
            wspush_result::InvalidCloseReason => "close reason must be at most 123 bytes of UTF-8\0",
            wspush_result::InvalidStatus => "HTTP status out of range\0",
            wspush_result::MessageTooLarge => "message too large\0",
            wspush_result::NotFound => "not found\0",
            wspush_result::Stopped => "server is stopped\0",
            wspush_result::Io => "I/O error while starting the engine\0",
            wspush_result::InCallback => "not allowed inside a callback of this server\0",
            wspush_result::Panic => "internal error (panic caught in wspush)\0",
            wspush_result::Unavailable => "Redis did not confirm in time or is unreachable\0",
        }
    }

    /// The code for a raw value received from C, if it is one.
    pub(crate) fn from_raw(value: u32) -> Option<wspush_result> {
        ALL_RESULTS.iter().copied().find(|r| *r as u32 == value)
    }
}

impl From<Error> for wspush_result {
    fn from(error: Error) -> wspush_result {
        match error {
            Error::InvalidConfig(_) => wspush_result::InvalidArgument,
            Error::InvalidAddress => wspush_result::InvalidAddress,
            Error::Bind(_) => wspush_result::BindFailed,
            Error::Io(_) => wspush_result::Io,
            Error::InvalidUserId => wspush_result::InvalidUserId,
            Error::InvalidCloseCode => wspush_result::InvalidCloseCode,
            Error::InvalidCloseReason => wspush_result::InvalidCloseReason,
            Error::InvalidStatus => wspush_result::InvalidStatus,
            Error::MessageTooLarge => wspush_result::MessageTooLarge,
            Error::NotFound => wspush_result::NotFound,
            Error::Stopped => wspush_result::Stopped,
            Error::Failed => wspush_result::Panic,
            Error::Unavailable => wspush_result::Unavailable,
            Error::WouldDeadlock => wspush_result::InCallback,
        }
    }
}

/// What an entry point returns when its body fails (NULL argument, bad value) or panics: the
/// code itself for `wspush_result`, NULL for pointers, nothing for `()`.
pub(crate) trait FfiReturn {
    fn on_failure(code: wspush_result) -> Self;
}

impl FfiReturn for wspush_result {
    fn on_failure(code: wspush_result) -> Self {
        code
    }
}

impl<T> FfiReturn for *const T {
    fn on_failure(_: wspush_result) -> Self {
        std::ptr::null()
    }
}

impl<T> FfiReturn for *mut T {
    fn on_failure(_: wspush_result) -> Self {
        std::ptr::null_mut()
    }
}

impl FfiReturn for () {
    fn on_failure(_: wspush_result) -> Self {}
}

/// The panic boundary around every entry point. `AssertUnwindSafe` is right here: after a panic
/// the only state the caller can observe is the engine's, which stays consistent (its locks are
/// parking_lot, which do not poison, and no entry point leaves half-built shared state).
pub(crate) fn ffi_boundary<R: FfiReturn>(body: impl FnOnce() -> Result<R, wspush_result>) -> R {
    match guarded(body) {
        Some(Ok(value)) => value,
        Some(Err(code)) => R::on_failure(code),
        None => R::on_failure(wspush_result::Panic),
    }
}

/// Converts an engine result for the `?` operator.
pub(crate) fn engine<T>(result: Result<T, Error>) -> Result<T, wspush_result> {
    result.map_err(wspush_result::from)
}

/// A required out-parameter, checked before any work is done so a NULL is reported without side
/// effects. Write it only when the call succeeds.
pub(crate) struct Out<T>(*mut T);

impl<T> Out<T> {
    pub(crate) fn new(ptr: *mut T) -> Result<Out<T>, wspush_result> {
        if ptr.is_null() {
            Err(wspush_result::NullArgument)
        } else {
            Ok(Out(ptr))
        }
    }

    /// # Safety
    /// The pointer given to `new` must be valid for writes of a `T` now.
    pub(crate) unsafe fn write(self, value: T) {
        // SAFETY: non-NULL (checked in `new`) and valid for writes per this function's contract.
        // `write` does not drop the old value: out-parameters may be uninitialised.
        unsafe { self.0.write(value) }
    }
}

/// A byte buffer argument: `(ptr, len)`; NULL with length 0 is the empty buffer.
///
/// The library cannot know how big the host's buffer really is, so `len` is checked against the
/// argument's documented maximum `max` before the pointer is touched: a longer one is refused
/// with `too_long` and nothing is read (a length of 2^40 over an 8-byte buffer must not be
/// followed past the buffer's end).
///
/// # Safety
/// A non-NULL `ptr` must be valid for reads of `len` bytes for `'a` when `len <= max`.
pub(crate) unsafe fn bytes<'a>(
    ptr: *const u8,
    len: usize,
    max: usize,
    too_long: wspush_result,
) -> Result<&'a [u8], wspush_result> {
    if ptr.is_null() {
        return if len == 0 { Ok(&[]) } else { Err(wspush_result::NullArgument) };
    }
    if len > max {
        return Err(too_long);
    }
    // A length past isize::MAX cannot describe a real buffer (and would be UB below).
    if len > isize::MAX as usize {
        return Err(wspush_result::InvalidArgument);
    }
    // SAFETY: non-NULL, `len <= max`, and valid for reads of `len` bytes per this function's
    // contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// A UTF-8 text argument: `(ptr, len)`, not NUL-terminated; NULL with length 0 is "". The
/// length is checked against `max` before any byte is read, as for [`bytes`].
///
/// # Safety
/// As for [`bytes`].
pub(crate) unsafe fn text<'a>(
    ptr: *const c_char,
    len: usize,
    max: usize,
    too_long: wspush_result,
) -> Result<&'a str, wspush_result> {
    // SAFETY: forwarded contract.
    let raw = unsafe { bytes(ptr.cast(), len, max, too_long) }?;
    std::str::from_utf8(raw).map_err(|_| wspush_result::InvalidUtf8)
}

/// For a host struct with a leading `size` field that only grows at the end (`wspush_callbacks`,
/// `wspush_stats_snapshot`): how many bytes from offset `start` both the host's version and ours
/// (`T`) hold, in whole fields of `field` bytes. NULL_ARGUMENT for NULL; INVALID_ARGUMENT when
/// the host's `size` does not even reach `required_end`.
///
/// # Safety
/// `ptr` must be NULL or have its first `usize` readable.
pub(crate) unsafe fn shared_prefix<T>(
    ptr: *const T,
    start: usize,
    required_end: usize,
    field: usize,
) -> Result<usize, wspush_result> {
    if ptr.is_null() {
        return Err(wspush_result::NullArgument);
    }
    // SAFETY: non-NULL and readable per this function's contract; the host's struct may be
    // unaligned.
    let host_size = unsafe { ptr.cast::<usize>().read_unaligned() };
    if host_size < required_end {
        return Err(wspush_result::InvalidArgument);
    }
    Ok((host_size.min(size_of::<T>()) - start) / field * field)
}

/// A `(pointer, length)` pair for handing borrowed bytes to C. Empty slices get a pointer to a
/// static byte rather than Rust's dangling non-NULL pointer, so a C host that looks is safe.
pub(crate) fn out_bytes(data: &[u8]) -> (*const u8, usize) {
    static EMPTY: u8 = 0;
    if data.is_empty() {
        (&EMPTY, 0)
    } else {
        (data.as_ptr(), data.len())
    }
}

/// As [`out_bytes`], for text.
pub(crate) fn out_text(text: &str) -> (*const c_char, usize) {
    let (ptr, len) = out_bytes(text.as_bytes());
    (ptr.cast(), len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_the_panic_code_or_null() {
        let code: wspush_result = ffi_boundary(|| panic!("bug"));
        assert_eq!(code, wspush_result::Panic);
        let pointer: *const u8 = ffi_boundary(|| panic!("bug"));
        assert!(pointer.is_null());
    }

    #[test]
    fn a_panic_whose_payload_panics_when_dropped_still_becomes_the_panic_code() {
        struct PanicsWhenDropped;
        impl Drop for PanicsWhenDropped {
            fn drop(&mut self) {
                panic!("payload drop");
            }
        }
        let code: wspush_result = ffi_boundary(|| std::panic::resume_unwind(Box::new(PanicsWhenDropped)));
        assert_eq!(code, wspush_result::Panic);
    }

    #[test]
    fn an_error_becomes_its_code_or_null() {
        let code: wspush_result = ffi_boundary(|| Err(wspush_result::NotFound));
        assert_eq!(code, wspush_result::NotFound);
        let pointer: *mut u8 = ffi_boundary(|| Err(wspush_result::NullArgument));
        assert!(pointer.is_null());
    }

    #[test]
    fn buffers_follow_the_null_and_length_rules() {
        // SAFETY: NULL pointers only; non-NULL ones point to live locals of the given length.
        unsafe {
            let long = wspush_result::InvalidArgument;
            assert_eq!(bytes(std::ptr::null(), 0, 8, long), Ok(&[][..]));
            assert_eq!(bytes(std::ptr::null(), 1, 8, long), Err(wspush_result::NullArgument));
            assert_eq!(text(b"h\xffi".as_ptr().cast(), 3, 8, long), Err(wspush_result::InvalidUtf8));
            assert_eq!(text(b"hi".as_ptr().cast(), 2, 8, long), Ok("hi"));
            assert_eq!(
                text(b"hi".as_ptr().cast(), 2, 1, wspush_result::InvalidAddress),
                Err(wspush_result::InvalidAddress)
            );
            // Refused on the length alone: the 2-byte buffer is never read as 2^40 bytes.
            assert_eq!(
                bytes(b"hi".as_ptr(), 1 << 40, 8, wspush_result::InvalidUserId),
                Err(wspush_result::InvalidUserId)
            );
        }
        assert!(!out_bytes(&[]).0.is_null());
    }

    #[test]
    fn result_codes_round_trip_and_are_described() {
        for (value, code) in ALL_RESULTS.iter().enumerate() {
            assert_eq!(*code as u32, value as u32, "codes are dense and in order");
            assert_eq!(wspush_result::from_raw(value as u32), Some(*code));
            assert!(code.text().len() > 1 && code.text().ends_with('\0'));
        }
        assert_eq!(wspush_result::from_raw(ALL_RESULTS.len() as u32), None);
    }
}
