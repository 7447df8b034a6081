//! `wspush_request`: the view of an HTTP request that `on_upgrade` and `on_http` get, and how
//! they answer it.

use std::cell::{Cell, OnceCell};
use std::ffi::c_char;

use super::boundary::{bytes, ffi_boundary, out_bytes, out_text, text, wspush_result, Out};
use super::handle::{borrow, Castable};
use super::types::{WSPUSH_MAX_ARG_LEN, WSPUSH_MAX_USER_ID_LEN};
use crate::server::check_user_id;
use crate::{HttpResponse, Request, UpgradeDecision};

/// An HTTP request seen by `on_upgrade` or `on_http`. Borrowed: valid only until that callback
/// returns, and so is every pointer the accessors hand out (none is NUL-terminated; use the
/// length, e.g. `printf("%.*s", (int)len, ptr)`). Use it only on the callback's own thread; to
/// decide elsewhere, defer and pass the ticket.
pub struct wspush_request {
    _opaque: [u8; 0],
}

// The view's real lifetime is the callback's; the handle's contract (valid only during the
// callback) is what keeps borrows inside it.
impl Castable for wspush_request {
    type RustType = RequestView<'static>;
}

/// Which callback the request was given to: it decides which answers are allowed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    Upgrade,
    Http,
}

/// What the callback answered.
#[derive(Default)]
enum Answer {
    #[default]
    None,
    Upgrade(UpgradeDecision),
    Http(HttpResponse),
}

/// The Rust side of a `wspush_request`: lives on the I/O thread's stack for the callback.
pub(crate) struct RequestView<'a> {
    request: &'a Request<'a>,
    purpose: Purpose,
    answer: Cell<Answer>,
    /// "ip:port", formatted on first use.
    peer_text: OnceCell<Option<String>>,
    /// Largest response body `wspush_request_respond` takes: the server's max_queue_bytes.
    max_body: usize,
}

impl<'a> RequestView<'a> {
    pub(crate) fn new(request: &'a Request<'a>, purpose: Purpose, max_body: usize) -> RequestView<'a> {
        RequestView { request, purpose, answer: Cell::new(Answer::None), peer_text: OnceCell::new(), max_body }
    }

    /// The pointer handed to C. Only shared access ever happens through it (answers go through
    /// the `Cell`), so deriving it from `&self` is sound.
    pub(crate) fn as_c(&self) -> *mut wspush_request {
        (self as *const RequestView<'a>).cast_mut().cast()
    }

    /// The upgrade decision; an `on_upgrade` that decided nothing rejects with 401.
    pub(crate) fn into_decision(self) -> UpgradeDecision {
        match self.answer.into_inner() {
            Answer::Upgrade(decision) => decision,
            _ => UpgradeDecision::Reject(401),
        }
    }

    /// The response to a plain HTTP request, if the callback gave one.
    pub(crate) fn into_response(self) -> Option<HttpResponse> {
        match self.answer.into_inner() {
            Answer::Http(response) => Some(response),
            _ => None,
        }
    }

    fn answer(&self, purpose: Purpose, answer: Answer) -> Result<wspush_result, wspush_result> {
        if self.purpose != purpose {
            return Err(wspush_result::InvalidArgument);
        }
        self.answer.set(answer);
        Ok(wspush_result::Ok)
    }
}

/// Borrows the view behind a `wspush_request` pointer.
///
/// # Safety
/// `request` must be NULL or the pointer passed to a callback that is still running.
unsafe fn view<'a>(request: *const wspush_request) -> Result<&'a RequestView<'a>, wspush_result> {
    // SAFETY: such a pointer was made by `RequestView::as_c` and the view outlives the callback.
    unsafe { borrow(request) }
}

/// Writes borrowed text to a pair of out-parameters.
///
/// # Safety
/// Both out-parameters must be valid for writes.
unsafe fn write_text(value: &str, ptr_out: Out<*const c_char>, len_out: Out<usize>) -> wspush_result {
    let (ptr, len) = out_text(value);
    // SAFETY: forwarded contract.
    unsafe {
        ptr_out.write(ptr);
        len_out.write(len);
    }
    wspush_result::Ok
}

/// As `write_text`, for bytes.
///
/// # Safety
/// Both out-parameters must be valid for writes.
unsafe fn write_bytes(value: &[u8], ptr_out: Out<*const u8>, len_out: Out<usize>) -> wspush_result {
    let (ptr, len) = out_bytes(value);
    // SAFETY: forwarded contract.
    unsafe {
        ptr_out.write(ptr);
        len_out.write(len);
    }
    wspush_result::Ok
}

/// The body of the accessors that return one borrowed text of the request.
///
/// # Safety
/// `request` must be NULL or the request of a running callback; the out-parameters must be NULL
/// or valid for writes.
unsafe fn text_of_request(
    request: *const wspush_request,
    value: *mut *const c_char,
    value_len: *mut usize,
    getter: for<'x> fn(&'x RequestView<'x>) -> Option<&'x str>,
) -> wspush_result {
    ffi_boundary(|| {
        // SAFETY: per this function's contract.
        let view = unsafe { view(request) }?;
        let (value, value_len) = (Out::new(value)?, Out::new(value_len)?);
        let found = getter(view).ok_or(wspush_result::NotFound)?;
        // SAFETY: checked non-NULL, valid per the contract.
        Ok(unsafe { write_text(found, value, value_len) })
    })
}

/// The request method, e.g. "GET".
///
/// # Safety
/// `request` must be NULL or the request of a running callback; `value` and `value_len` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn wspush_request_method(
    request: *const wspush_request,
    value: *mut *const c_char,
    value_len: *mut usize,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe { text_of_request(request, value, value_len, |v| Some(v.request.method())) }
}

/// The path of the request target without the query string, e.g. "/ws".
///
/// # Safety
/// `request` must be NULL or the request of a running callback; `value` and `value_len` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn wspush_request_path(
    request: *const wspush_request,
    value: *mut *const c_char,
    value_len: *mut usize,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe { text_of_request(request, value, value_len, |v| Some(v.request.path())) }
}

/// The raw query string after '?' (not percent-decoded); empty (length 0) when there is none.
///
/// # Safety
/// `request` must be NULL or the request of a running callback; `value` and `value_len` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn wspush_request_query(
    request: *const wspush_request,
    value: *mut *const c_char,
    value_len: *mut usize,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe { text_of_request(request, value, value_len, |v| Some(v.request.query())) }
}

/// The client's address as text, "ip:port" ("[v6]:port" for IPv6): the socket's peer, or, from
/// a trusted load balancer with `wspush_config_set_proxy_protocol`, the address its PROXY header
/// gave. NOT_FOUND when the socket no longer has one.
///
/// # Safety
/// `request` must be NULL or the request of a running callback; `value` and `value_len` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn wspush_request_peer(
    request: *const wspush_request,
    value: *mut *const c_char,
    value_len: *mut usize,
) -> wspush_result {
    // SAFETY: forwarded contract.
    unsafe {
        text_of_request(request, value, value_len, |v| {
            v.peer_text.get_or_init(|| v.request.peer_addr().map(|a| a.to_string())).as_deref()
        })
    }
}

/// The value of the first query parameter called `name` (`name_len` bytes, UTF-8), as sent
/// (not percent-decoded); a parameter without '=' has the empty value. NOT_FOUND if absent;
/// INVALID_ARGUMENT when `name_len` passes WSPUSH_MAX_ARG_LEN (checked before reading).
///
/// # Safety
/// `request` must be NULL or the request of a running callback; `name` must be NULL or point to
/// `name_len` readable bytes; the out-parameters must be NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn wspush_request_query_param(
    request: *const wspush_request,
    name: *const c_char,
    name_len: usize,
    value: *mut *const c_char,
    value_len: *mut usize,
) -> wspush_result {
    ffi_boundary(|| {
        // SAFETY: per this function's contract.
        let view = unsafe { view(request) }?;
        let (value, value_len) = (Out::new(value)?, Out::new(value_len)?);
        // SAFETY: per this function's contract.
        let name = unsafe { text(name, name_len, WSPUSH_MAX_ARG_LEN, wspush_result::InvalidArgument) }?;
        let found = view.request.query_param(name).ok_or(wspush_result::NotFound)?;
        // SAFETY: checked non-NULL, valid per the contract.
        Ok(unsafe { write_text(found, value, value_len) })
    })
}

/// The value (raw bytes) of the first header called `name` (case-insensitive). NOT_FOUND if
/// absent; INVALID_ARGUMENT when `name_len` passes WSPUSH_MAX_ARG_LEN (checked before reading).
///
/// # Safety
/// As for `wspush_request_query_param`.
#[no_mangle]
pub unsafe extern "C" fn wspush_request_header(
    request: *const wspush_request,
    name: *const c_char,
    name_len: usize,
    value: *mut *const u8,
    value_len: *mut usize,
) -> wspush_result {
    ffi_boundary(|| {
        // SAFETY: per this function's contract.
        let view = unsafe { view(request) }?;
        let (value, value_len) = (Out::new(value)?, Out::new(value_len)?);
        // SAFETY: per this function's contract.
        let name = unsafe { text(name, name_len, WSPUSH_MAX_ARG_LEN, wspush_result::InvalidArgument) }?;
        let found = view.request.header(name).ok_or(wspush_result::NotFound)?;
        // SAFETY: checked non-NULL, valid per the contract.
        Ok(unsafe { write_bytes(found, value, value_len) })
    })
}

/// How many headers the request has (for `wspush_request_header_at`).
///
/// # Safety
/// `request` must be NULL or the request of a running callback; `count` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn wspush_request_header_count(
    request: *const wspush_request,
    count: *mut usize,
) -> wspush_result {
    ffi_boundary(|| {
        // SAFETY: per this function's contract.
        let view = unsafe { view(request) }?;
        let count = Out::new(count)?;
        // SAFETY: checked non-NULL, valid per the contract.
        unsafe { count.write(view.request.headers().count()) };
        Ok(wspush_result::Ok)
    })
}

/// The header at `index` (0-based, in the order received): its name and raw value. NOT_FOUND
/// when `index` is not below the header count.
///
/// # Safety
/// `request` must be NULL or the request of a running callback; the out-parameters must be NULL
/// or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn wspush_request_header_at(
    request: *const wspush_request,
    index: usize,
    name: *mut *const c_char,
    name_len: *mut usize,
    value: *mut *const u8,
    value_len: *mut usize,
) -> wspush_result {
    ffi_boundary(|| {
        // SAFETY: per this function's contract.
        let view = unsafe { view(request) }?;
        let (name, name_len) = (Out::new(name)?, Out::new(name_len)?);
        let (value, value_len) = (Out::new(value)?, Out::new(value_len)?);
        let (found_name, found_value) = view.request.headers().nth(index).ok_or(wspush_result::NotFound)?;
        // SAFETY: checked non-NULL, valid per the contract.
        unsafe {
            write_text(found_name, name, name_len);
            write_bytes(found_value, value, value_len);
        }
        Ok(wspush_result::Ok)
    })
}

/// The ticket of this pending upgrade: pass it to `wspush_upgrade_accept`/`_reject` after
/// deferring. It becomes the connection's ID once accepted.
///
/// # Safety
/// `request` must be NULL or the request of a running callback; `ticket` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn wspush_request_ticket(request: *const wspush_request, ticket: *mut u64) -> wspush_result {
    ffi_boundary(|| {
        // SAFETY: per this function's contract.
        let view = unsafe { view(request) }?;
        let ticket = Out::new(ticket)?;
        // SAFETY: checked non-NULL, valid per the contract.
        unsafe { ticket.write(view.request.ticket()) };
        Ok(wspush_result::Ok)
    })
}

/// The user ID (`sub` claim) of the valid JSON Web Token this request carries (see
/// `wspush_config_set_jwt_hs256_secret`), borrowed for the callback. NOT_FOUND without a
/// configured secret, without a token, or when the token is invalid.
///
/// # Safety
/// `request` must be NULL or the request of a running callback; the out-parameters NULL or
/// valid for writes.
#[no_mangle]
pub unsafe extern "C" fn wspush_request_verified_user(
    request: *const wspush_request,
    user: *mut *const u8,
    user_len: *mut usize,
) -> wspush_result {
    ffi_boundary(|| {
        // SAFETY: per this function's contract.
        let view = unsafe { view(request) }?;
        let (user, user_len) = (Out::new(user)?, Out::new(user_len)?);
        let found = view.request.verified_user().ok_or(wspush_result::NotFound)?;
        // SAFETY: checked non-NULL, valid per the contract.
        Ok(unsafe { write_bytes(found, user, user_len) })
    })
}

/// In `on_upgrade`: accept the connection as `user` (1-255 bytes, no NUL byte, copied).
/// INVALID_USER_ID for another length or a NUL (the decision is then unchanged); INVALID_ARGUMENT in `on_http`. The last
/// accept/reject/defer call of the callback wins.
///
/// # Safety
/// `request` must be NULL or the request of a running callback; `user` NULL or `user_len`
/// readable bytes.
#[no_mangle]
pub unsafe extern "C" fn wspush_request_accept(
    request: *mut wspush_request,
    user: *const u8,
    user_len: usize,
) -> wspush_result {
    ffi_boundary(|| {
        // SAFETY: per this function's contract.
        let view = unsafe { view(request) }?;
        // SAFETY: per this function's contract.
        let user = unsafe { bytes(user, user_len, WSPUSH_MAX_USER_ID_LEN, wspush_result::InvalidUserId) }?;
        check_user_id(user).map_err(wspush_result::from)?;
        view.answer(Purpose::Upgrade, Answer::Upgrade(UpgradeDecision::Accept(user.to_vec())))
    })
}

/// In `on_upgrade`: refuse with HTTP `status` (400-599, else INVALID_STATUS) and close.
///
/// # Safety
/// `request` must be NULL or the request of a running callback.
#[no_mangle]
pub unsafe extern "C" fn wspush_request_reject(request: *mut wspush_request, status: u16) -> wspush_result {
    ffi_boundary(|| {
        // SAFETY: per this function's contract.
        let view = unsafe { view(request) }?;
        if !(400..=599).contains(&status) {
            return Err(wspush_result::InvalidStatus);
        }
        view.answer(Purpose::Upgrade, Answer::Upgrade(UpgradeDecision::Reject(status)))
    })
}

/// In `on_upgrade`: decide later, from any thread, with `wspush_upgrade_accept(server, ticket,
/// ...)` or `wspush_upgrade_reject`. `*ticket` receives the ticket. The handshake timeout still
/// applies: undecided requests are closed when it passes.
///
/// # Safety
/// `request` must be NULL or the request of a running callback; `ticket` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn wspush_request_defer(request: *mut wspush_request, ticket: *mut u64) -> wspush_result {
    ffi_boundary(|| {
        // SAFETY: per this function's contract.
        let view = unsafe { view(request) }?;
        let ticket = Out::new(ticket)?;
        let answered = view.answer(Purpose::Upgrade, Answer::Upgrade(UpgradeDecision::Defer))?;
        // SAFETY: checked non-NULL, valid per the contract.
        unsafe { ticket.write(view.request.ticket()) };
        Ok(answered)
    })
}

/// In `on_http`: answer with `status` (200-599, else INVALID_STATUS), a Content-Type (printable
/// ASCII, 1 to WSPUSH_MAX_ARG_LEN bytes, else INVALID_ARGUMENT) and a body (at most
/// max_queue_bytes, else MESSAGE_TOO_LARGE); all copied. INVALID_ARGUMENT in `on_upgrade`.
///
/// # Safety
/// `request` must be NULL or the request of a running callback; `content_type` and `body` NULL
/// or readable for their lengths.
#[no_mangle]
pub unsafe extern "C" fn wspush_request_respond(
    request: *mut wspush_request,
    status: u16,
    content_type: *const c_char,
    content_type_len: usize,
    body: *const u8,
    body_len: usize,
) -> wspush_result {
    ffi_boundary(|| {
        // SAFETY: per this function's contract.
        let view = unsafe { view(request) }?;
        // SAFETY: per this function's contract.
        let content_type =
            unsafe { text(content_type, content_type_len, WSPUSH_MAX_ARG_LEN, wspush_result::InvalidArgument) }?;
        // SAFETY: per this function's contract.
        let body = unsafe { bytes(body, body_len, view.max_body, wspush_result::MessageTooLarge) }?;
        if !(200..=599).contains(&status) {
            return Err(wspush_result::InvalidStatus);
        }
        // The value goes into the response head verbatim: no CR/LF (header injection), no
        // control characters.
        if content_type.is_empty() || !content_type.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) {
            return Err(wspush_result::InvalidArgument);
        }
        let response = HttpResponse { status, content_type: content_type.to_string(), body: body.to_vec() };
        view.answer(Purpose::Http, Answer::Http(response))
    })
}
