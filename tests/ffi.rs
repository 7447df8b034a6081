//! The C ABI driven from Rust through the `wspush::ffi` extern functions, with callbacks written
//! as `extern "C"` functions and real WebSocket clients.
//!
//! Callbacks must not panic (a panic cannot unwind out of `extern "C"`), so checks made inside
//! them are recorded in the `Recorder` and asserted by the test afterwards.
//!
//! SAFETY, for every `unsafe` block calling a `wspush_*` function: each pointer passed is NULL
//! (on purpose, where a test says so) or points to a live local, literal or server/request of
//! the right type for the length given, as the header requires.

use std::ffi::{c_char, c_void, CStr};
use std::io::{Read, Write};
use std::mem::{offset_of, size_of};
use std::net::TcpStream;
use std::ptr::{null, null_mut};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tungstenite::{Message, WebSocket};
use wspush::ffi::*;

const WAIT: Duration = Duration::from_secs(5);
const OK: wspush_result = wspush_result::Ok;

// ------------------------------------------------------------------------------------ recorder

#[derive(Clone, Debug, PartialEq)]
enum Event {
    Upgrade {
        method: String,
        path: String,
        query: String,
        peer: String,
        origin: Option<Vec<u8>>,
        headers: usize,
        ticket: u64,
    },
    Deferred {
        ticket: u64,
        user: String,
    },
    Open {
        conn: u64,
        user: String,
    },
    Message {
        conn: u64,
        user: String,
        kind: wspush_message_kind,
        payload: Vec<u8>,
    },
    Close {
        conn: u64,
        user: String,
        code: u16,
    },
    Dropped {
        conn: u64,
        bytes: usize,
    },
    Http {
        path: String,
    },
    /// The result of a wspush call made from inside a callback.
    Called {
        what: &'static str,
        result: wspush_result,
    },
}

/// The callbacks' userdata: shared by all I/O threads.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
    changed: Condvar,
    failures: Mutex<Vec<String>>,
}

impl Recorder {
    fn push(&self, event: Event) {
        self.events.lock().unwrap().push(event);
        self.changed.notify_all();
    }

    fn check(&self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.failures.lock().unwrap().push(what());
        }
    }

    fn expect(&self, what: &str, got: wspush_result, want: wspush_result) {
        self.check(got == want, || format!("{what}: got {got:?}, want {want:?}"));
    }

    /// Waits until `find` matches the events so far.
    fn wait_for<T>(&self, what: &str, mut find: impl FnMut(&[Event]) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        let mut events = self.events.lock().unwrap();
        loop {
            if let Some(found) = find(&events) {
                return found;
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("timed out waiting for {what}; events: {events:?}"));
            events = self.changed.wait_timeout(events, left).unwrap().0;
        }
    }

    fn opened(&self, user: &str) -> u64 {
        self.wait_for(&format!("on_open of {user}"), |events| {
            events.iter().find_map(|e| match e {
                Event::Open { conn, user: u } if u == user => Some(*conn),
                _ => None,
            })
        })
    }

    fn snapshot(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    fn assert_no_failures(&self) {
        let failures = self.failures.lock().unwrap();
        assert!(failures.is_empty(), "checks inside callbacks failed: {failures:#?}");
    }
}

// ----------------------------------------------------------------------------------- callbacks

/// # Safety
/// `userdata` is the `Recorder` every test server is configured with.
unsafe fn recorder<'a>(userdata: *mut c_void) -> &'a Recorder {
    // SAFETY: the test owning the server keeps the Arc<Recorder> alive until after the free.
    unsafe { &*(userdata as *const Recorder) }
}

/// Copies bytes wspush lent to a callback or accessor.
fn string(ptr: *const u8, len: usize) -> String {
    // SAFETY: wspush hands out non-NULL pointers valid for `len` bytes during the call.
    String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(ptr, len) }).into_owned()
}

/// Calls an accessor that returns borrowed text and copies it.
fn text_out(call: impl FnOnce(*mut *const c_char, *mut usize) -> wspush_result) -> Result<String, wspush_result> {
    let (mut ptr, mut len) = (null(), 0usize);
    match call(&mut ptr, &mut len) {
        OK => Ok(string(ptr.cast(), len)),
        error => Err(error),
    }
}

fn bytes_out(call: impl FnOnce(*mut *const u8, *mut usize) -> wspush_result) -> Result<Vec<u8>, wspush_result> {
    let (mut ptr, mut len) = (null(), 0usize);
    match call(&mut ptr, &mut len) {
        // SAFETY: on success the accessor wrote a pointer valid for `len` bytes.
        OK => Ok(unsafe { std::slice::from_raw_parts(ptr, len) }.to_vec()),
        error => Err(error),
    }
}

fn query_param(request: *mut wspush_request, name: &str) -> Option<String> {
    text_out(|v, l| unsafe { wspush_request_query_param(request, name.as_ptr().cast(), name.len(), v, l) }).ok()
}

/// Accepts `?user=NAME`, defers when `&defer=1`, rejects with `&reject=STATUS`, and leaves the
/// request undecided (so 401) without a user. Also checks the request API's error cases.
unsafe extern "C" fn on_upgrade(userdata: *mut c_void, server: *const wspush_server, request: *mut wspush_request) {
    let rec = unsafe { recorder(userdata) };
    rec.check(!server.is_null(), || "on_upgrade got a NULL server".into());
    unsafe {
        let mut ticket = 0u64;
        rec.expect("request_ticket", wspush_request_ticket(request, &mut ticket), OK);
        let mut headers = 0usize;
        rec.expect("request_header_count", wspush_request_header_count(request, &mut headers), OK);
        let first = text_out(|v, l| wspush_request_header_at(request, 0, v, l, &mut null(), &mut 0));
        rec.check(first.as_deref() == Ok("Host"), || format!("first header: {first:?}"));
        rec.push(Event::Upgrade {
            method: text_out(|v, l| wspush_request_method(request, v, l)).unwrap_or_default(),
            path: text_out(|v, l| wspush_request_path(request, v, l)).unwrap_or_default(),
            query: text_out(|v, l| wspush_request_query(request, v, l)).unwrap_or_default(),
            peer: text_out(|v, l| wspush_request_peer(request, v, l)).unwrap_or_default(),
            origin: bytes_out(|v, l| wspush_request_header(request, "origin".as_ptr().cast(), 6, v, l)).ok(),
            headers,
            ticket,
        });

        // Error cases: none of them may change the decision.
        let mut len = 0usize;
        rec.expect("path, NULL value", wspush_request_path(request, null_mut(), &mut len), wspush_result::NullArgument);
        rec.expect(
            "path, NULL length",
            wspush_request_path(request, &mut null(), null_mut()),
            wspush_result::NullArgument,
        );
        rec.expect(
            "query_param, NULL name",
            wspush_request_query_param(request, null(), 4, &mut null(), &mut len),
            wspush_result::NullArgument,
        );
        rec.expect(
            "query_param, absent",
            wspush_request_query_param(request, "nope".as_ptr().cast(), 4, &mut null(), &mut len),
            wspush_result::NotFound,
        );
        rec.expect(
            "header, absent",
            wspush_request_header(request, "x-nope".as_ptr().cast(), 6, &mut null(), &mut len),
            wspush_result::NotFound,
        );
        rec.expect(
            "header_at, past the end",
            wspush_request_header_at(request, 999, &mut null(), &mut len, &mut null(), &mut len),
            wspush_result::NotFound,
        );
        rec.expect("header_count, NULL", wspush_request_header_count(request, null_mut()), wspush_result::NullArgument);
        rec.expect("ticket, NULL", wspush_request_ticket(request, null_mut()), wspush_result::NullArgument);
        rec.expect("defer, NULL ticket", wspush_request_defer(request, null_mut()), wspush_result::NullArgument);
        rec.expect("accept, NULL user", wspush_request_accept(request, null(), 3), wspush_result::NullArgument);
        rec.expect("accept, empty user", wspush_request_accept(request, null(), 0), wspush_result::InvalidUserId);
        let long_user = [b'u'; 256];
        rec.expect(
            "accept, 256-byte user",
            wspush_request_accept(request, long_user.as_ptr(), 256),
            wspush_result::InvalidUserId,
        );
        rec.expect("reject, status 200", wspush_request_reject(request, 200), wspush_result::InvalidStatus);
        rec.expect(
            "respond in on_upgrade",
            wspush_request_respond(request, 200, "text/plain".as_ptr().cast(), 10, null(), 0),
            wspush_result::InvalidArgument,
        );

        let Some(user) = query_param(request, "user") else { return };
        if let Some(status) = query_param(request, "reject") {
            rec.expect("reject", wspush_request_reject(request, status.parse().unwrap_or(500)), OK);
        } else if query_param(request, "defer").is_some() {
            let mut ticket = 0u64;
            rec.expect("defer", wspush_request_defer(request, &mut ticket), OK);
            rec.push(Event::Deferred { ticket, user });
        } else {
            rec.expect("accept", wspush_request_accept(request, user.as_ptr(), user.len()), OK);
        }
    }
}

unsafe extern "C" fn on_open(
    userdata: *mut c_void,
    _: *const wspush_server,
    conn: u64,
    user: *const u8,
    user_len: usize,
) {
    unsafe { recorder(userdata) }.push(Event::Open { conn, user: string(user, user_len) });
}

/// Acts on commands from clients, calling back into wspush from inside the callback.
unsafe extern "C" fn on_message(
    userdata: *mut c_void,
    server: *const wspush_server,
    conn: u64,
    user: *const u8,
    user_len: usize,
    kind: wspush_message_kind,
    payload: *const u8,
    payload_len: usize,
) {
    let rec = unsafe { recorder(userdata) };
    // SAFETY: the payload is lent for the call, `payload_len` bytes, never NULL.
    let payload = unsafe { std::slice::from_raw_parts(payload, payload_len) }.to_vec();
    rec.push(Event::Message { conn, user: string(user, user_len), kind, payload: payload.clone() });
    let (what, result) = unsafe {
        match payload.as_slice() {
            b"echo" => {
                let reply = b"echo: echo";
                (
                    "publish",
                    wspush_publish(
                        server,
                        user,
                        user_len,
                        reply.as_ptr(),
                        reply.len(),
                        WSPUSH_MESSAGE_KIND_TEXT,
                        null_mut(),
                    ),
                )
            }
            b"close" => ("close", wspush_close(server, conn, 4000, "bye".as_ptr().cast(), 3)),
            b"free" => ("free", wspush_server_free(server)),
            b"stop" => ("stop", wspush_server_stop(server)),
            _ => return,
        }
    };
    rec.push(Event::Called { what, result });
}

unsafe extern "C" fn on_close(
    userdata: *mut c_void,
    _: *const wspush_server,
    conn: u64,
    user: *const u8,
    user_len: usize,
    code: u16,
) {
    unsafe { recorder(userdata) }.push(Event::Close { conn, user: string(user, user_len), code });
}

unsafe extern "C" fn on_drop(
    userdata: *mut c_void,
    _: *const wspush_server,
    conn: u64,
    _: *const u8,
    _: usize,
    bytes: usize,
) {
    unsafe { recorder(userdata) }.push(Event::Dropped { conn, bytes });
}

/// Serves GET /status; leaves other paths to the default 426.
unsafe extern "C" fn on_http(userdata: *mut c_void, _: *const wspush_server, request: *mut wspush_request) {
    let rec = unsafe { recorder(userdata) };
    unsafe {
        let path = text_out(|v, l| wspush_request_path(request, v, l)).unwrap_or_default();
        rec.push(Event::Http { path: path.clone() });
        rec.expect("reject in on_http", wspush_request_reject(request, 403), wspush_result::InvalidArgument);
        rec.expect(
            "accept in on_http",
            wspush_request_accept(request, "u".as_ptr(), 1),
            wspush_result::InvalidArgument,
        );
        let injected = "text/plain\r\nSet-Cookie: x=1";
        rec.expect(
            "respond, CRLF in content type",
            wspush_request_respond(request, 200, injected.as_ptr().cast(), injected.len(), null(), 0),
            wspush_result::InvalidArgument,
        );
        rec.expect(
            "respond, status 99",
            wspush_request_respond(request, 99, "text/plain".as_ptr().cast(), 10, null(), 0),
            wspush_result::InvalidStatus,
        );
        if path == "/status" {
            let body = br#"{"ok":true}"#;
            let content_type = "application/json";
            rec.expect(
                "respond",
                wspush_request_respond(
                    request,
                    200,
                    content_type.as_ptr().cast(),
                    content_type.len(),
                    body.as_ptr(),
                    body.len(),
                ),
                OK,
            );
        }
    }
}

fn all_callbacks(rec: &Arc<Recorder>) -> wspush_callbacks {
    wspush_callbacks {
        size: size_of::<wspush_callbacks>(),
        userdata: Arc::as_ptr(rec) as *mut c_void,
        on_upgrade: Some(on_upgrade),
        on_open: Some(on_open),
        on_message: Some(on_message),
        on_close: Some(on_close),
        on_drop: Some(on_drop),
        on_http: Some(on_http),
    }
}

// -------------------------------------------------------------------------------------- server

/// A server pointer other threads may use (the C API makes these calls thread-safe).
#[derive(Clone, Copy)]
struct ServerPtr(*const wspush_server);
// SAFETY: the functions called through it are documented thread-safe.
unsafe impl Send for ServerPtr {}

struct TestServer {
    ptr: *const wspush_server,
    port: u16,
    rec: Arc<Recorder>,
}

impl TestServer {
    /// Starts a server on 127.0.0.1:0 with short timeouts and all callbacks; `configure` may
    /// change the configuration further.
    fn start(configure: impl FnOnce(*mut wspush_config, &Arc<Recorder>)) -> TestServer {
        let rec = Arc::new(Recorder::default());
        unsafe {
            let config = wspush_config_new();
            assert!(!config.is_null());
            let listen = "127.0.0.1:0";
            assert_eq!(wspush_config_set_listen(config, listen.as_ptr().cast(), listen.len()), OK);
            assert_eq!(wspush_config_set_threads(config, 2), OK);
            assert_eq!(wspush_config_set_ping_interval_ms(config, 1000), OK);
            assert_eq!(wspush_config_set_handshake_timeout_ms(config, 3000), OK);
            assert_eq!(wspush_config_set_drain_timeout_ms(config, 300), OK);
            assert_eq!(wspush_config_set_close_timeout_ms(config, 300), OK);
            assert_eq!(wspush_config_set_callbacks(config, &all_callbacks(&rec)), OK);
            configure(config, &rec);
            let mut ptr = null();
            assert_eq!(wspush_server_start(config, &mut ptr), OK);
            wspush_config_free(config);
            let mut port = 0u16;
            assert_eq!(wspush_server_local_port(ptr, &mut port), OK);
            assert_ne!(port, 0);
            TestServer { ptr, port, rec }
        }
    }

    fn publish(&self, user: &[u8], payload: &[u8], kind: wspush_message_kind) -> (wspush_result, usize) {
        let mut delivered = usize::MAX;
        let result = unsafe {
            wspush_publish(self.ptr, user.as_ptr(), user.len(), payload.as_ptr(), payload.len(), kind, &mut delivered)
        };
        (result, delivered)
    }

    /// `wspush_publish_with_offset` as text: (result, delivered, offset), `usize::MAX` and
    /// `u64::MAX` when the out-parameters were not written.
    fn publish_with_offset(&self, user: &[u8], payload: &[u8]) -> (wspush_result, usize, u64) {
        let (mut delivered, mut offset) = (usize::MAX, u64::MAX);
        let result = unsafe {
            wspush_publish_with_offset(
                self.ptr,
                user.as_ptr(),
                user.len(),
                payload.as_ptr(),
                payload.len(),
                WSPUSH_MESSAGE_KIND_TEXT,
                &mut delivered,
                &mut offset,
            )
        };
        (result, delivered, offset)
    }

    fn stats(&self) -> wspush_stats_snapshot {
        let mut stats = wspush_stats_snapshot { size: size_of::<wspush_stats_snapshot>(), ..Default::default() };
        assert_eq!(unsafe { wspush_stats(self.ptr, &mut stats) }, OK);
        stats
    }

    /// Stops and frees now (the recorder stays readable).
    fn free(&mut self) {
        assert_eq!(unsafe { wspush_server_free(self.ptr) }, OK);
        self.ptr = null();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Free before the recorder (the callbacks' userdata) goes away; NULL after `free()`.
        unsafe { wspush_server_free(self.ptr) };
    }
}

// -------------------------------------------------------------------------------------- client

type Client = WebSocket<TcpStream>;

fn connect(port: u16, query: &str) -> Result<Client, tungstenite::Error> {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let request =
        tungstenite::client::ClientRequestBuilder::new(format!("ws://127.0.0.1:{port}/ws?{query}").parse().unwrap())
            .with_header("Origin", "https://mail.example");
    tungstenite::client(request, stream).map(|(ws, _)| ws).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => e,
        tungstenite::HandshakeError::Interrupted(_) => unreachable!("blocking socket"),
    })
}

fn rejected_status(result: Result<Client, tungstenite::Error>) -> u16 {
    match result {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("expected an HTTP rejection, got {e}"),
        Ok(_) => panic!("expected an HTTP rejection, the upgrade was accepted"),
    }
}

fn read_data(client: &mut Client) -> Message {
    loop {
        match client.read().unwrap() {
            Message::Ping(_) | Message::Pong(_) => continue,
            other => return other,
        }
    }
}

fn read_text(client: &mut Client) -> String {
    match read_data(client) {
        Message::Text(text) => text.as_str().to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

fn read_close(client: &mut Client) -> (u16, String) {
    match read_data(client) {
        Message::Close(Some(frame)) => (u16::from(frame.code), frame.reason.as_str().to_string()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

fn http_get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

// ----------------------------------------------------------------------------------------- tests

#[test]
fn version_matches_the_crate() {
    let version = unsafe { CStr::from_ptr(wspush_version()) };
    assert_eq!(version.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

#[test]
fn result_codes_have_fixed_values_and_descriptions() {
    use wspush_result::*;
    let fixed = [
        (Ok, 0),
        (NullArgument, 1),
        (InvalidArgument, 2),
        (InvalidUtf8, 3),
        (InvalidAddress, 4),
        (BindFailed, 5),
        (InvalidUserId, 6),
        (InvalidCloseCode, 7),
        (InvalidCloseReason, 8),
        (InvalidStatus, 9),
        (MessageTooLarge, 10),
        (NotFound, 11),
        (Stopped, 12),
        (Io, 13),
        (InCallback, 14),
        (Panic, 15),
        (Unavailable, 16),
    ];
    assert_eq!(fixed.len(), ALL_RESULTS.len(), "a new code needs a fixed value here");
    let mut texts = std::collections::HashSet::new();
    for (code, value) in fixed {
        assert_eq!(code as u32, value, "{code:?} was renumbered");
        let text = unsafe { CStr::from_ptr(wspush_result_str(value)) }.to_str().unwrap();
        assert!(!text.is_empty() && text != "unknown result code", "{code:?}");
        assert!(texts.insert(text), "{code:?} shares its text");
    }
    let unknown = unsafe { CStr::from_ptr(wspush_result_str(9999)) };
    assert_eq!(unknown.to_str().unwrap(), "unknown result code");
}

#[test]
fn null_arguments_are_reported_not_dereferenced() {
    use wspush_result::NullArgument;
    let mut server = TestServer::start(|_, _| {});
    let s = server.ptr;
    let mut n = 0usize;
    let user = b"alice";
    unsafe {
        // Configuration.
        let c = null_mut();
        assert_eq!(wspush_config_set_listen(c, "a:1".as_ptr().cast(), 3), NullArgument);
        assert_eq!(wspush_config_set_path(c, "/ws".as_ptr().cast(), 3), NullArgument);
        assert_eq!(wspush_config_add_allowed_origin(c, "o".as_ptr().cast(), 1), NullArgument);
        assert_eq!(wspush_config_set_threads(c, 1), NullArgument);
        assert_eq!(wspush_config_set_max_connections(c, 1), NullArgument);
        assert_eq!(wspush_config_set_max_message_size(c, 1), NullArgument);
        assert_eq!(wspush_config_set_ping_interval_ms(c, 1), NullArgument);
        assert_eq!(wspush_config_set_idle_timeout_ms(c, 1), NullArgument);
        assert_eq!(wspush_config_set_handshake_timeout_ms(c, 1), NullArgument);
        assert_eq!(wspush_config_set_max_queue_bytes(c, 1), NullArgument);
        assert_eq!(wspush_config_set_max_header_bytes(c, 1024), NullArgument);
        assert_eq!(wspush_config_set_max_handshakes_per_thread(c, 1), NullArgument);
        assert_eq!(wspush_config_set_max_connections_per_user(c, 1), NullArgument);
        assert_eq!(wspush_config_set_drain_timeout_ms(c, 1), NullArgument);
        assert_eq!(wspush_config_set_close_timeout_ms(c, 1), NullArgument);
        assert_eq!(wspush_config_set_thread_stack_size(c, 1 << 20), NullArgument);
        assert_eq!(wspush_config_set_slow_consumer_policy(c, WSPUSH_SLOW_CONSUMER_DROP), NullArgument);
        let rec = Arc::new(Recorder::default());
        assert_eq!(wspush_config_set_callbacks(c, &all_callbacks(&rec)), NullArgument);
        let config = wspush_config_new();
        assert_eq!(wspush_config_set_callbacks(config, null()), NullArgument);
        assert_eq!(wspush_config_set_listen(config, null(), 3), NullArgument, "NULL buffer with a length");
        assert_eq!(wspush_config_set_path(config, null(), 3), NullArgument);
        assert_eq!(wspush_config_add_allowed_origin(config, null(), 1), NullArgument);
        assert_eq!(wspush_server_start(null(), &mut null()), NullArgument);
        assert_eq!(wspush_server_start(config, null_mut()), NullArgument);
        wspush_config_free(config);
        wspush_config_free(null_mut());

        // Server.
        assert_eq!(wspush_server_local_port(null(), &mut 0), NullArgument);
        assert_eq!(wspush_server_local_port(s, null_mut()), NullArgument);
        assert_eq!(wspush_server_stop(null()), NullArgument);
        assert_eq!(wspush_publish(null(), user.as_ptr(), 5, null(), 0, WSPUSH_MESSAGE_KIND_TEXT, &mut n), NullArgument);
        assert_eq!(wspush_publish(s, null(), 5, null(), 0, WSPUSH_MESSAGE_KIND_TEXT, &mut n), NullArgument);
        assert_eq!(wspush_publish(s, user.as_ptr(), 5, null(), 1, WSPUSH_MESSAGE_KIND_TEXT, &mut n), NullArgument);
        assert_eq!(wspush_broadcast(null(), null(), 0, WSPUSH_MESSAGE_KIND_TEXT, &mut n), NullArgument);
        assert_eq!(wspush_broadcast(s, null(), 1, WSPUSH_MESSAGE_KIND_TEXT, &mut n), NullArgument);
        assert_eq!(wspush_send(null(), 1, null(), 0, WSPUSH_MESSAGE_KIND_TEXT), NullArgument);
        assert_eq!(wspush_send(s, 1, null(), 1, WSPUSH_MESSAGE_KIND_TEXT), NullArgument);
        assert_eq!(wspush_close(null(), 1, 1000, null(), 0), NullArgument);
        assert_eq!(wspush_close(s, 1, 1000, null(), 2), NullArgument);
        assert_eq!(wspush_disconnect_user(null(), user.as_ptr(), 5, 1000, &mut n), NullArgument);
        assert_eq!(wspush_disconnect_user(s, null(), 5, 1000, &mut n), NullArgument);
        assert_eq!(wspush_upgrade_accept(null(), 1, user.as_ptr(), 5), NullArgument);
        assert_eq!(wspush_upgrade_accept(s, 1, null(), 5), NullArgument);
        assert_eq!(wspush_upgrade_reject(null(), 1, 403), NullArgument);
        assert_eq!(wspush_stats(null(), &mut wspush_stats_snapshot::default()), NullArgument);
        assert_eq!(wspush_stats(s, null_mut()), NullArgument);

        // Requests (outside a callback only NULL is a valid thing to pass; the on_upgrade
        // callback checks NULL out-parameters with a live request).
        let (mut p, mut pb, mut t) = (null(), null(), 0u64);
        assert_eq!(wspush_request_method(null(), &mut p, &mut n), NullArgument);
        assert_eq!(wspush_request_path(null(), &mut p, &mut n), NullArgument);
        assert_eq!(wspush_request_query(null(), &mut p, &mut n), NullArgument);
        assert_eq!(wspush_request_peer(null(), &mut p, &mut n), NullArgument);
        assert_eq!(wspush_request_query_param(null(), "user".as_ptr().cast(), 4, &mut p, &mut n), NullArgument);
        assert_eq!(wspush_request_header(null(), "host".as_ptr().cast(), 4, &mut pb, &mut n), NullArgument);
        assert_eq!(wspush_request_header_count(null(), &mut n), NullArgument);
        assert_eq!(wspush_request_header_at(null(), 0, &mut p, &mut n, &mut pb, &mut n), NullArgument);
        assert_eq!(wspush_request_ticket(null(), &mut t), NullArgument);
        assert_eq!(wspush_request_accept(null_mut(), user.as_ptr(), 5), NullArgument);
        assert_eq!(wspush_request_reject(null_mut(), 401), NullArgument);
        assert_eq!(wspush_request_defer(null_mut(), &mut t), NullArgument);
        assert_eq!(wspush_request_respond(null_mut(), 200, "a/b".as_ptr().cast(), 3, null(), 0), NullArgument);
    }
    // The optional count out-parameters may be NULL.
    let result = unsafe { wspush_publish(s, user.as_ptr(), 5, null(), 0, WSPUSH_MESSAGE_KIND_TEXT, null_mut()) };
    assert_eq!(result, OK);

    // A live request: on_upgrade checks NULL out-parameters and bad values there.
    let mut alice = connect(server.port, "user=alice").unwrap();
    server.rec.opened("alice");
    alice.send(Message::text("echo")).unwrap();
    assert_eq!(read_text(&mut alice), "echo: echo");
    server.rec.assert_no_failures();

    server.free();
    assert_eq!(unsafe { wspush_server_free(null()) }, OK, "free(NULL) is a no-op");
}

#[test]
fn invalid_configuration_values_are_refused_and_leave_the_old_value() {
    use wspush_result::{InvalidAddress, InvalidArgument, InvalidUtf8};
    unsafe {
        let c = wspush_config_new();
        let set_listen = |text: &[u8]| wspush_config_set_listen(c, text.as_ptr().cast(), text.len());
        assert_eq!(set_listen(b"nonsense"), InvalidAddress);
        assert_eq!(set_listen(b"127.0.0.1:99999"), InvalidAddress);
        assert_eq!(set_listen(b":80"), InvalidAddress);
        assert_eq!(set_listen(b""), InvalidAddress);
        assert_eq!(set_listen(b"127.0.0.1:\xff"), InvalidUtf8);
        assert_eq!(set_listen(b"[::1]:0"), OK);
        assert_eq!(wspush_config_set_path(c, "ws".as_ptr().cast(), 2), InvalidArgument, "path must start with /");
        assert_eq!(wspush_config_add_allowed_origin(c, null(), 0), InvalidArgument, "empty origin");
        assert_eq!(wspush_config_set_threads(c, 256), InvalidArgument);
        assert_eq!(wspush_config_set_max_connections(c, 0), InvalidArgument);
        assert_eq!(wspush_config_set_max_message_size(c, 0), InvalidArgument);
        assert_eq!(wspush_config_set_ping_interval_ms(c, 0), InvalidArgument);
        assert_eq!(wspush_config_set_idle_timeout_ms(c, 0), InvalidArgument);
        assert_eq!(wspush_config_set_handshake_timeout_ms(c, 0), InvalidArgument);
        assert_eq!(wspush_config_set_drain_timeout_ms(c, WSPUSH_MAX_TIMEOUT_MS + 1), InvalidArgument);
        assert_eq!(wspush_config_set_close_timeout_ms(c, u64::MAX), InvalidArgument);
        assert_eq!(wspush_config_set_max_header_bytes(c, 255), InvalidArgument);
        assert_eq!(wspush_config_set_max_handshakes_per_thread(c, 0), InvalidArgument);
        assert_eq!(wspush_config_set_slow_consumer_policy(c, 7), InvalidArgument);
        assert_eq!(wspush_config_set_thread_stack_size(c, 64 * 1024 - 1), InvalidArgument, "below 64 KiB");
        assert_eq!(wspush_config_set_thread_stack_size(c, 0), OK, "0 is the default");
        assert_eq!(wspush_config_set_thread_stack_size(c, 1 << 20), OK);
        let mut callbacks = wspush_callbacks { size: 0, ..all_callbacks(&Arc::new(Recorder::default())) };
        assert_eq!(wspush_config_set_callbacks(c, &callbacks), InvalidArgument, "size 0: forgot to set it");
        callbacks.size = offset_of!(wspush_callbacks, on_upgrade);
        assert_eq!(wspush_config_set_callbacks(c, &callbacks), OK, "size covering only size+userdata");
        // The refused values were not kept: the config still starts (on [::1] if available).
        let mut server = null();
        let result = wspush_server_start(c, &mut server);
        assert!(result == OK || result == wspush_result::BindFailed, "{result:?}");
        assert_eq!(wspush_server_free(server), OK);
        wspush_config_free(c);
    }
}

#[test]
fn start_reports_unresolvable_and_busy_addresses() {
    let first = TestServer::start(|_, _| {});
    unsafe {
        let c = wspush_config_new();
        let unresolvable = "no-such-host.invalid:0";
        assert_eq!(wspush_config_set_listen(c, unresolvable.as_ptr().cast(), unresolvable.len()), OK);
        let mut server = null();
        assert_eq!(wspush_server_start(c, &mut server), wspush_result::InvalidAddress);
        assert!(server.is_null(), "out-parameter untouched on failure");
        let busy = format!("127.0.0.1:{}", first.port);
        assert_eq!(wspush_config_set_listen(c, busy.as_ptr().cast(), busy.len()), OK);
        assert_eq!(wspush_server_start(c, &mut server), wspush_result::BindFailed);
        assert!(server.is_null());
        wspush_config_free(c);
    }
}

#[test]
fn user_ids_must_be_1_to_255_bytes() {
    let server = TestServer::start(|_, _| {});
    let s = server.ptr;
    let long = [b'x'; 256];
    assert_eq!(server.publish(b"", b"hi", WSPUSH_MESSAGE_KIND_TEXT).0, wspush_result::InvalidUserId);
    assert_eq!(server.publish(&long, b"hi", WSPUSH_MESSAGE_KIND_TEXT).0, wspush_result::InvalidUserId);
    assert_eq!(server.publish(&long[..255], b"hi", WSPUSH_MESSAGE_KIND_TEXT), (OK, 0));
    unsafe {
        assert_eq!(wspush_disconnect_user(s, null(), 0, 1000, null_mut()), wspush_result::InvalidUserId);
        assert_eq!(wspush_disconnect_user(s, long.as_ptr(), 256, 1000, null_mut()), wspush_result::InvalidUserId);
        assert_eq!(wspush_upgrade_accept(s, 1, null(), 0), wspush_result::InvalidUserId);
        assert_eq!(wspush_upgrade_accept(s, 1, long.as_ptr(), 256), wspush_result::InvalidUserId);
    }
    // And inside on_upgrade (checked there with a live request).
    let _client = connect(server.port, "user=alice").unwrap();
    server.rec.opened("alice");
    server.rec.assert_no_failures();
}

#[test]
fn publish_reaches_every_tab_of_the_user_and_nobody_else() {
    let server = TestServer::start(|_, _| {});
    let mut alice_tabs = [connect(server.port, "user=alice").unwrap(), connect(server.port, "user=alice").unwrap()];
    let mut bob = connect(server.port, "user=bob").unwrap();
    server.rec.wait_for("three on_open", |events| {
        (events.iter().filter(|e| matches!(e, Event::Open { .. })).count() == 3).then_some(())
    });

    assert_eq!(server.publish(b"alice", b"new mail for alice", WSPUSH_MESSAGE_KIND_TEXT), (OK, 2));
    for tab in &mut alice_tabs {
        assert_eq!(read_text(tab), "new mail for alice");
    }
    assert_eq!(server.publish(b"bob", &[0, 1, 2], WSPUSH_MESSAGE_KIND_BINARY), (OK, 1));
    // Bob's first message is his own: alice's publish never reached him.
    assert_eq!(read_data(&mut bob), Message::binary(vec![0u8, 1, 2]));
    assert_eq!(server.publish(b"carol", b"nobody", WSPUSH_MESSAGE_KIND_TEXT), (OK, 0));
    assert_eq!(server.publish(b"bob", b"x", 3).0, wspush_result::InvalidArgument, "unknown kind");

    let mut count = 0usize;
    let everyone = b"maintenance at noon";
    assert_eq!(
        unsafe {
            wspush_broadcast(server.ptr, everyone.as_ptr(), everyone.len(), WSPUSH_MESSAGE_KIND_TEXT, &mut count)
        },
        OK
    );
    assert_eq!(count, 3);
    for client in alice_tabs.iter_mut().chain([&mut bob]) {
        assert_eq!(read_text(client), "maintenance at noon");
    }

    let bob_conn = server.rec.opened("bob");
    assert_eq!(unsafe { wspush_send(server.ptr, bob_conn, "just bob".as_ptr(), 8, WSPUSH_MESSAGE_KIND_TEXT) }, OK);
    assert_eq!(read_text(&mut bob), "just bob");
    assert_eq!(
        unsafe { wspush_send(server.ptr, bob_conn ^ (1 << 40), null(), 0, WSPUSH_MESSAGE_KIND_TEXT) },
        wspush_result::NotFound
    );

    let stats = server.stats();
    assert_eq!((stats.connections, stats.users, stats.upgrades_total), (3, 2, 3));
    assert_eq!(stats.broadcasts_total, 1);
    // A host built against a header with only the first counter gets only that one.
    let mut old = wspush_stats_snapshot {
        size: offset_of!(wspush_stats_snapshot, handshakes),
        connections: u64::MAX,
        handshakes: u64::MAX,
        ..Default::default()
    };
    assert_eq!(unsafe { wspush_stats(server.ptr, &mut old) }, OK);
    assert_eq!((old.connections, old.handshakes), (3, u64::MAX));
    let mut too_small = wspush_stats_snapshot { size: size_of::<usize>(), ..Default::default() };
    assert_eq!(unsafe { wspush_stats(server.ptr, &mut too_small) }, wspush_result::InvalidArgument);

    let mut closed = 0usize;
    assert_eq!(unsafe { wspush_disconnect_user(server.ptr, b"alice".as_ptr(), 5, 4001, &mut closed) }, OK);
    assert_eq!(closed, 2);
    for tab in &mut alice_tabs {
        assert_eq!(read_close(tab).0, 4001);
    }
    assert_eq!(
        unsafe { wspush_disconnect_user(server.ptr, b"bob".as_ptr(), 3, 1005, null_mut()) },
        wspush_result::InvalidCloseCode
    );
    server.rec.assert_no_failures();
}

#[test]
fn the_request_accessors_see_the_upgrade_request() {
    let server = TestServer::start(|_, _| {});
    let client = connect(server.port, "user=alice&tab=2").unwrap();
    let local = client.get_ref().local_addr().unwrap();
    let upgrade =
        server.rec.wait_for("on_upgrade", |events| events.iter().find(|e| matches!(e, Event::Upgrade { .. })).cloned());
    let Event::Upgrade { method, path, query, peer, origin, headers, ticket } = upgrade else { unreachable!() };
    assert_eq!((method.as_str(), path.as_str(), query.as_str()), ("GET", "/ws", "user=alice&tab=2"));
    assert_eq!(peer, local.to_string());
    assert_eq!(origin.as_deref(), Some(&b"https://mail.example"[..]));
    assert!(headers >= 6, "Host, Connection, Upgrade, Version, Key, Origin: {headers}");
    assert_eq!(server.rec.opened("alice"), ticket, "the ticket becomes the connection ID");
    server.rec.assert_no_failures();
}

#[test]
fn deferred_upgrades_are_decided_from_another_thread() {
    let server = TestServer::start(|_, _| {});
    let (ptr, rec) = (ServerPtr(server.ptr), server.rec.clone());
    let decider = std::thread::spawn(move || {
        let ptr = ptr;
        let ticket_of = |user: &str| {
            rec.wait_for(&format!("deferral of {user}"), |events| {
                events.iter().find_map(|e| match e {
                    Event::Deferred { ticket, user: u } if u == user => Some(*ticket),
                    _ => None,
                })
            })
        };
        let carol = ticket_of("carol");
        let accepted = unsafe { wspush_upgrade_accept(ptr.0, carol, b"carol".as_ptr(), 5) };
        let dave = ticket_of("dave");
        let rejected = unsafe { wspush_upgrade_reject(ptr.0, dave, 403) };
        let again = unsafe { wspush_upgrade_reject(ptr.0, dave, 403) };
        (carol, accepted, rejected, again)
    });

    let mut carol = connect(server.port, "user=carol&defer=1").unwrap();
    assert_eq!(rejected_status(connect(server.port, "user=dave&defer=1")), 403);
    let (carol_ticket, accepted, rejected, decided_twice) = decider.join().unwrap();
    assert_eq!((accepted, rejected), (OK, OK));
    assert!(
        decided_twice == OK || decided_twice == wspush_result::NotFound,
        "a second decision is ignored or refused: {decided_twice:?}"
    );
    assert_eq!(server.rec.opened("carol"), carol_ticket);
    assert_eq!(server.publish(b"carol", b"hello carol", WSPUSH_MESSAGE_KIND_TEXT), (OK, 1));
    assert_eq!(read_text(&mut carol), "hello carol");

    unsafe {
        assert_eq!(wspush_upgrade_accept(server.ptr, 12345, b"x".as_ptr(), 1), wspush_result::NotFound);
        // A decision for a ticket no longer waiting changes nothing: carol stays connected.
        let late = wspush_upgrade_reject(server.ptr, carol_ticket, 403);
        assert!(late == OK || late == wspush_result::NotFound, "{late:?}");
        assert_eq!(wspush_upgrade_reject(server.ptr, carol_ticket, 200), wspush_result::InvalidStatus);
    }
    assert_eq!(server.publish(b"carol", b"still here", WSPUSH_MESSAGE_KIND_TEXT), (OK, 1));
    assert_eq!(read_text(&mut carol), "still here");
    // Without a user the callback decides nothing: 401. With reject=429, that status.
    assert_eq!(rejected_status(connect(server.port, "nouser=1")), 401);
    assert_eq!(rejected_status(connect(server.port, "user=erin&reject=429")), 429);
    server.rec.assert_no_failures();
}

#[test]
fn callbacks_may_publish_close_and_not_free_from_inside() {
    let server = TestServer::start(|_, _| {});
    let mut alice = connect(server.port, "user=alice").unwrap();
    let conn = server.rec.opened("alice");

    alice.send(Message::text("echo")).unwrap();
    assert_eq!(read_text(&mut alice), "echo: echo", "published from inside on_message");

    alice.send(Message::text("free")).unwrap();
    server.rec.wait_for("free inside a callback", |events| {
        events.iter().find_map(|e| match e {
            Event::Called { what: "free", result } => Some(*result),
            _ => None,
        })
    });
    let calls = server.rec.snapshot();
    assert!(calls.contains(&Event::Called { what: "free", result: wspush_result::InCallback }), "{calls:?}");
    alice.send(Message::text("echo")).unwrap();
    assert_eq!(read_text(&mut alice), "echo: echo", "the server still runs after the refused free");

    alice.send(Message::binary(vec![9u8; 3])).unwrap();
    alice.send(Message::text("close")).unwrap();
    assert_eq!(read_close(&mut alice), (4000, "bye".to_string()), "closed from inside on_message");
    let _ = alice.flush(); // tungstenite queues the close reply; this sends it
    let code = server.rec.wait_for("on_close", |events| {
        events.iter().find_map(|e| match e {
            Event::Close { conn: c, code, .. } if *c == conn => Some(*code),
            _ => None,
        })
    });
    assert_eq!(code, 4000);
    let events = server.rec.snapshot();
    assert!(events.contains(&Event::Message {
        conn,
        user: "alice".into(),
        kind: WSPUSH_MESSAGE_KIND_BINARY,
        payload: vec![9; 3]
    }));
    assert!(events.contains(&Event::Called { what: "publish", result: OK }));
    assert!(events.contains(&Event::Called { what: "close", result: OK }));
    server.rec.assert_no_failures();
}

#[test]
fn stop_closes_everyone_with_1001_then_calls_report_stopped() {
    let mut server = TestServer::start(|_, _| {});
    let s = server.ptr;
    let mut clients: Vec<Client> =
        ["alice", "alice", "bob"].iter().map(|u| connect(server.port, &format!("user={u}")).unwrap()).collect();
    let conns: Vec<u64> = server.rec.wait_for("three on_open", |events| {
        let conns: Vec<u64> =
            events.iter().filter_map(|e| if let Event::Open { conn, .. } = e { Some(*conn) } else { None }).collect();
        (conns.len() == 3).then_some(conns)
    });

    assert_eq!(unsafe { wspush_server_stop(s) }, OK);
    // stop returned: every on_close has already run, with 1001.
    let events = server.rec.snapshot();
    for conn in &conns {
        let codes: Vec<u16> = events
            .iter()
            .filter_map(
                |e| if let Event::Close { conn: c, code, .. } = e { (c == conn).then_some(*code) } else { None },
            )
            .collect();
        assert_eq!(codes, [1001], "conn {conn}: exactly one on_close, with 1001");
    }
    for client in &mut clients {
        assert_eq!(read_close(client).0, 1001);
    }

    use wspush_result::Stopped;
    let mut n = 0usize;
    unsafe {
        assert_eq!(server.publish(b"alice", b"late", WSPUSH_MESSAGE_KIND_TEXT).0, Stopped);
        assert_eq!(wspush_broadcast(s, null(), 0, WSPUSH_MESSAGE_KIND_TEXT, &mut n), Stopped);
        assert_eq!(wspush_send(s, conns[0], null(), 0, WSPUSH_MESSAGE_KIND_TEXT), Stopped);
        assert_eq!(wspush_close(s, conns[0], 1000, null(), 0), Stopped);
        assert_eq!(wspush_disconnect_user(s, b"bob".as_ptr(), 3, 1000, &mut n), Stopped);
        assert_eq!(wspush_upgrade_accept(s, conns[0], b"bob".as_ptr(), 3), Stopped);
        assert_eq!(wspush_upgrade_reject(s, conns[0], 403), Stopped);
        // Still answered after stop: the port, the final stats, a second stop.
        let mut port = 0u16;
        assert_eq!(wspush_server_local_port(s, &mut port), OK);
        assert_eq!(port, server.port);
        assert_eq!(server.stats().connections, 0);
        assert_eq!(wspush_server_stop(s), OK, "stop twice");
    }
    server.free(); // free after stop
    assert!(TcpStream::connect(("127.0.0.1", server.port)).is_err(), "the port is closed");
    server.rec.assert_no_failures();
}

#[test]
fn stop_from_inside_a_callback_only_starts_the_stop() {
    let mut server = TestServer::start(|_, _| {});
    let mut alice = connect(server.port, "user=alice").unwrap();
    server.rec.opened("alice");
    alice.send(Message::text("stop")).unwrap();
    assert_eq!(read_close(&mut alice).0, 1001);
    let calls = server.rec.wait_for("stop inside a callback", |events| {
        events.iter().find_map(|e| match e {
            Event::Called { what: "stop", result } => Some(*result),
            _ => None,
        })
    });
    assert_eq!(calls, OK);
    assert_eq!(server.publish(b"alice", b"late", WSPUSH_MESSAGE_KIND_TEXT).0, wspush_result::Stopped);
    server.free(); // joins the I/O threads the callback could not
    server.rec.assert_no_failures();
}

#[test]
fn on_http_serves_plain_requests_and_upgrades_need_on_upgrade() {
    let server = TestServer::start(|_, _| {});
    let response = http_get(server.port, "/status");
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert!(response.contains("Content-Type: application/json\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\n{\"ok\":true}"), "{response}");
    assert!(http_get(server.port, "/other").starts_with("HTTP/1.1 426 "), "not answered: default 426");
    server.rec.assert_no_failures();

    // A host with neither on_upgrade nor on_http: every upgrade 401, plain HTTP 426.
    let bare = TestServer::start(|config, rec| {
        let callbacks = wspush_callbacks { on_upgrade: None, on_http: None, ..all_callbacks(rec) };
        assert_eq!(unsafe { wspush_config_set_callbacks(config, &callbacks) }, OK);
    });
    assert_eq!(rejected_status(connect(bare.port, "user=alice")), 401);
    assert!(http_get(bare.port, "/status").starts_with("HTTP/1.1 426 "));
}

#[test]
fn callbacks_past_the_hosts_size_are_not_called() {
    // A host compiled when wspush_callbacks ended before on_message.
    let server = TestServer::start(|config, rec| {
        let callbacks = wspush_callbacks { size: offset_of!(wspush_callbacks, on_message), ..all_callbacks(rec) };
        assert_eq!(unsafe { wspush_config_set_callbacks(config, &callbacks) }, OK);
    });
    let mut alice = connect(server.port, "user=alice").unwrap();
    server.rec.opened("alice");
    alice.send(Message::text("echo")).unwrap();
    let deadline = Instant::now() + WAIT;
    while server.stats().messages_in_total == 0 {
        assert!(Instant::now() < deadline, "message never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    let events = server.rec.snapshot();
    assert!(
        !events.iter().any(|e| matches!(e, Event::Message { .. })),
        "on_message was past the host's size: {events:?}"
    );
}

#[test]
fn per_user_limit_and_allowed_origins_apply() {
    let server = TestServer::start(|config, _| unsafe {
        assert_eq!(wspush_config_set_max_connections_per_user(config, 1), OK);
        let origin = "https://mail.example";
        assert_eq!(wspush_config_add_allowed_origin(config, origin.as_ptr().cast(), origin.len()), OK);
    });
    let _first = connect(server.port, "user=alice").unwrap();
    server.rec.opened("alice");
    assert_eq!(rejected_status(connect(server.port, "user=alice")), 429);

    let stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let request = tungstenite::client::ClientRequestBuilder::new(
        format!("ws://127.0.0.1:{}/ws?user=bob", server.port).parse().unwrap(),
    )
    .with_header("Origin", "https://evil.example");
    match tungstenite::client(request, stream) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn slow_consumer_drop_policy_calls_on_drop() {
    let server = TestServer::start(|config, _| unsafe {
        assert_eq!(wspush_config_set_slow_consumer_policy(config, WSPUSH_SLOW_CONSUMER_DROP), OK);
        assert_eq!(wspush_config_set_max_queue_bytes(config, 40 * 1024), OK);
    });
    let _reads_nothing = connect(server.port, "user=alice").unwrap();
    let conn = server.rec.opened("alice");
    let chunk = vec![b'm'; 32 * 1024];
    // Far more than loopback socket buffers hold, so the queue overflows.
    for _ in 0..1000 {
        assert_eq!(server.publish(b"alice", &chunk, WSPUSH_MESSAGE_KIND_BINARY), (OK, 1));
    }
    let dropped = server.rec.wait_for("on_drop", |events| {
        events.iter().find_map(|e| match e {
            Event::Dropped { conn: c, bytes } if *c == conn => Some(*bytes),
            _ => None,
        })
    });
    assert!(dropped > chunk.len(), "the framed size of one message: {dropped}");
    let stats = server.stats();
    assert!(stats.dropped_total > 0 && stats.connections == 1, "{stats:?}");
    assert_eq!(
        server.publish(b"alice", &vec![0u8; 41 * 1024], WSPUSH_MESSAGE_KIND_BINARY).0,
        wspush_result::MessageTooLarge
    );
}

/// The counter list is written once (src/stats.rs); the C struct in the committed header and the
/// C table functions must say the same names in the same order, and the snapshot's values must
/// be the Rust snapshot's.
#[test]
fn the_c_stats_struct_and_table_follow_the_one_rust_table() {
    let header = include_str!("../include/wspush.h");
    let body = header
        .split_once("typedef struct wspush_stats_snapshot {")
        .and_then(|(_, rest)| rest.split_once("} wspush_stats_snapshot;"))
        .expect("the header declares wspush_stats_snapshot")
        .0;
    let c_fields: Vec<&str> = body
        .lines()
        .filter_map(|line| line.trim().strip_prefix("uint64_t "))
        .map(|field| field.trim_end_matches(';'))
        .collect();
    let rust_fields: Vec<&str> = wspush::Stats::FIELDS.iter().map(|f| f.name).collect();
    assert_eq!(c_fields, rust_fields, "include/wspush.h's wspush_stats_snapshot");

    assert_eq!(wspush_stats_field_count(), wspush::Stats::COUNT);
    for (index, field) in wspush::Stats::FIELDS.iter().enumerate() {
        let (mut name, mut help, mut kind) = (null(), null(), u32::MAX);
        assert_eq!(unsafe { wspush_stats_field(index, &mut name, &mut help, &mut kind) }, OK);
        // SAFETY: OK means both are static NUL-terminated strings.
        let (name, help) = unsafe { (CStr::from_ptr(name), CStr::from_ptr(help)) };
        assert_eq!(name.to_str(), Ok(field.name));
        assert_eq!(help.to_str(), Ok(field.help));
        let expected = if field.name.ends_with("_total") { WSPUSH_STAT_KIND_COUNTER } else { WSPUSH_STAT_KIND_GAUGE };
        assert_eq!(kind, expected, "{}", field.name);
    }
    let (mut name, mut help, mut kind) = (null(), null(), 7);
    let past_the_end = wspush::Stats::COUNT;
    assert_eq!(unsafe { wspush_stats_field(past_the_end, &mut name, &mut help, &mut kind) }, wspush_result::NotFound);
    assert!(name.is_null() && help.is_null() && kind == 7, "out-parameters untouched on failure");
    assert_eq!(unsafe { wspush_stats_field(0, null_mut(), &mut help, &mut kind) }, wspush_result::NullArgument);
}

// -------------------------------------------------------------------------------------- history

/// A server with history on, keeping `messages` per user, and `more` configuration.
fn history_server(messages: usize, more: impl FnOnce(*mut wspush_config)) -> TestServer {
    TestServer::start(|config, _| {
        assert_eq!(unsafe { wspush_config_set_history_max_messages(config, messages) }, OK);
        more(config);
    })
}

/// Connects offering the `wspush.v1` subprotocol, which the server must select.
fn connect_v1(port: u16, query: &str) -> Client {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let request =
        tungstenite::client::ClientRequestBuilder::new(format!("ws://127.0.0.1:{port}/ws?{query}").parse().unwrap())
            .with_sub_protocol("wspush.v1");
    let (client, response) = tungstenite::client(request, stream).expect("v1 upgrade accepted");
    let selected = response.headers().get("sec-websocket-protocol").map(|v| v.as_bytes().to_vec());
    assert_eq!(selected.as_deref(), Some(&b"wspush.v1"[..]), "the 101 selects wspush.v1");
    client
}

/// The next v1 frame, parsed.
fn read_json(client: &mut Client) -> serde_json::Value {
    let text = read_text(client);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Waits (up to 10 s: long enough for a 2 s history TTL and the once-a-second expiry) until the
/// stats satisfy `done`.
fn wait_for_stats(server: &TestServer, what: &str, done: impl Fn(&wspush_stats_snapshot) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = server.stats();
        if done(&stats) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {stats:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn publish_with_offset_numbers_each_users_stream_from_1_and_reports_0_with_history_off() {
    let off = TestServer::start(|_, _| {});
    assert_eq!(off.publish_with_offset(b"alice", b"a"), (OK, 0, 0), "history off (the default): offset 0");
    assert_eq!(off.publish_with_offset(b"alice", b"b"), (OK, 0, 0));
    let stats = off.stats();
    assert_eq!((stats.history_users, stats.history_messages, stats.history_bytes), (0, 0, 0));
    assert_eq!(stats.publishes_total, 2);
    drop(off);

    let server = history_server(2, |_| {});
    let offsets: Vec<u64> = (0..3).map(|_| server.publish_with_offset(b"alice", b"mail").2).collect();
    assert_eq!(offsets, [1, 2, 3], "alice's stream");
    assert_eq!(server.publish_with_offset(b"bob", b"mail"), (OK, 0, 1), "bob's stream is his own");
    // A raw (non-v1) client gets the payload as before, no JSON around it.
    let mut alice = connect(server.port, "user=alice").unwrap();
    server.rec.opened("alice");
    assert_eq!(server.publish_with_offset(b"alice", b"raw for alice"), (OK, 1, 4));
    assert_eq!(read_text(&mut alice), "raw for alice");
    // Both out-parameters are optional; the publish still takes its offset.
    let result = unsafe {
        let text = WSPUSH_MESSAGE_KIND_TEXT;
        wspush_publish_with_offset(server.ptr, b"alice".as_ptr(), 5, b"x".as_ptr(), 1, text, null_mut(), null_mut())
    };
    assert_eq!(result, OK);
    assert_eq!(read_text(&mut alice), "x");
    let mut delivered = usize::MAX;
    let result = unsafe {
        let text = WSPUSH_MESSAGE_KIND_TEXT;
        wspush_publish_with_offset(server.ptr, b"bob".as_ptr(), 3, b"y".as_ptr(), 1, text, &mut delivered, null_mut())
    };
    assert_eq!((result, delivered), (OK, 0));
    assert_eq!(server.publish_with_offset(b"alice", b"z").2, 6, "the NULL-offset publish took 5");
    assert_eq!(server.publish_with_offset(b"bob", b"z").2, 3);
    // wspush_publish numbers too: it is the same publish.
    assert_eq!(server.publish(b"bob", b"w", WSPUSH_MESSAGE_KIND_TEXT), (OK, 0));
    assert_eq!(server.publish_with_offset(b"bob", b"v").2, 5);

    let stats = server.stats();
    assert_eq!(stats.history_users, 2);
    assert_eq!(stats.history_messages, 4, "history_max_messages = 2 per user");
    assert!(stats.history_bytes >= 4, "payloads plus bookkeeping: {}", stats.history_bytes);
    assert_eq!(stats.publishes_total, 11);
    assert_eq!((stats.resumes_total, stats.recoveries_total, stats.recovery_failures_total), (0, 0, 0));
    server.rec.assert_no_failures();
}

#[test]
fn history_max_bytes_evicts_whole_streams_and_the_ttl_expires_them() {
    let server = history_server(10, |config| unsafe {
        assert_eq!(wspush_config_set_history_max_bytes(config, 1000), OK);
    });
    let big = [b'm'; 600];
    assert_eq!(server.publish_with_offset(b"alice", &big).2, 1);
    assert_eq!(server.publish_with_offset(b"alice", b"small").2, 2);
    assert_eq!(server.stats().history_users, 1);
    // Bob's message passes the byte cap: alice's stream, the least recently published, goes.
    assert_eq!(server.publish_with_offset(b"bob", &big).2, 1);
    let stats = server.stats();
    assert_eq!((stats.history_users, stats.history_messages), (1, 1), "{stats:?}");
    assert!(stats.history_bytes <= 1000, "{stats:?}");
    assert_eq!(server.publish_with_offset(b"alice", &big).2, 1, "a new epoch for alice, from 1");
    drop(server);

    let server = history_server(10, |config| unsafe {
        // 2 s: kept in whole seconds, so a stream goes 1-2 s after its last publish, never
        // between the two publishes below.
        assert_eq!(wspush_config_set_history_ttl_ms(config, 2000), OK);
    });
    assert_eq!(server.publish_with_offset(b"carol", b"one").2, 1);
    assert_eq!(server.publish_with_offset(b"carol", b"two").2, 2);
    assert_eq!(server.stats().history_users, 1);
    wait_for_stats(&server, "carol's stream to expire", |stats| stats.history_users == 0);
    assert_eq!(server.stats().history_messages, 0);
    assert_eq!(server.publish_with_offset(b"carol", b"three").2, 1, "expired: a new epoch, from 1");
}

#[test]
fn history_setters_refuse_invalid_values_and_keep_the_old_ones() {
    use wspush_result::InvalidArgument;
    unsafe {
        let c = wspush_config_new();
        assert_eq!(wspush_config_set_history_ttl_ms(c, 0), InvalidArgument);
        assert_eq!(wspush_config_set_history_ttl_ms(c, WSPUSH_MAX_TIMEOUT_MS + 1), InvalidArgument);
        assert_eq!(wspush_config_set_history_max_bytes(c, 0), InvalidArgument);
        // Refused whether history is on or off, set before or after.
        assert_eq!(wspush_config_set_history_max_messages(c, 3), OK);
        assert_eq!(wspush_config_set_history_ttl_ms(c, 0), InvalidArgument);
        assert_eq!(wspush_config_set_history_max_bytes(c, 0), InvalidArgument);
        assert_eq!(wspush_config_set_history_ttl_ms(c, WSPUSH_MAX_TIMEOUT_MS), OK, "the maximum itself");
        assert_eq!(wspush_config_set_history_ttl_ms(c, 1), OK, "rounded up to a second");
        assert_eq!(wspush_config_set_history_max_bytes(c, 1), OK);
        assert_eq!(wspush_config_set_history_max_messages(c, 0), OK, "off again");
        assert_eq!(wspush_config_set_history_max_messages(c, usize::MAX), OK);
        wspush_config_free(c);
    }
    // The refused values were not kept: history still works with the defaults.
    let server = history_server(3, |config| unsafe {
        assert_eq!(wspush_config_set_history_ttl_ms(config, 0), InvalidArgument);
        assert_eq!(wspush_config_set_history_max_bytes(config, 0), InvalidArgument);
    });
    assert_eq!(server.publish_with_offset(b"alice", b"a").2, 1);
    assert_eq!(server.publish_with_offset(b"alice", b"b").2, 2);
    assert_eq!(server.stats().history_messages, 2);
}

#[test]
fn a_wspush_v1_client_resumes_from_a_c_hosted_server_and_the_stats_count_it() {
    let server = history_server(100, |_| {});
    let mut alice = connect_v1(server.port, "user=alice");
    let conn = server.rec.opened("alice");
    let welcome = read_json(&mut alice);
    assert_eq!((welcome["type"].as_str(), welcome["offset"].as_u64()), (Some("welcome"), Some(0)), "{welcome}");
    assert_eq!(welcome["recovered"], false);
    assert_eq!(server.publish_with_offset(b"alice", b"first"), (OK, 1, 1));
    let first = read_json(&mut alice);
    assert_eq!((first["offset"].as_u64(), first["data"].as_str()), (Some(1), Some("first")), "{first}");
    let epoch = first["epoch"].as_str().expect("offset 1 carries the epoch").to_string();

    alice.close(None).unwrap();
    while alice.read().is_ok() {}
    server.rec.wait_for("alice's on_close", |events| {
        events.iter().any(|e| matches!(e, Event::Close { conn: c, .. } if *c == conn)).then_some(())
    });
    for (payload, offset) in [("two", 2), ("three", 3), ("four", 4)] {
        assert_eq!(server.publish_with_offset(b"alice", payload.as_bytes()), (OK, 0, offset), "alice is away");
    }

    let mut alice = connect_v1(server.port, &format!("user=alice&since={epoch}:1"));
    let welcome = read_json(&mut alice);
    assert_eq!(welcome["type"], "welcome");
    assert_eq!((welcome["epoch"].as_str(), welcome["offset"].as_u64()), (Some(epoch.as_str()), Some(4)));
    assert_eq!(welcome["recovered"], true);
    for (payload, offset) in [("two", 2), ("three", 3), ("four", 4)] {
        let message = read_json(&mut alice);
        assert_eq!(message["type"], "message");
        assert_eq!((message["offset"].as_u64(), message["data"].as_str()), (Some(offset), Some(payload)));
    }
    assert_eq!(server.publish_with_offset(b"alice", b"live").2, 5);
    assert_eq!(read_json(&mut alice)["offset"].as_u64(), Some(5), "live after the replay, nothing repeated");
    let stats = server.stats();
    assert_eq!((stats.resumes_total, stats.recoveries_total, stats.recovery_failures_total), (1, 1, 0));

    // Another epoch cannot be recovered: the client is told so and gets nothing replayed.
    let mut stale = connect_v1(server.port, "user=alice&since=00000000000000ab:2");
    let welcome = read_json(&mut stale);
    assert_eq!((welcome["recovered"].as_bool(), welcome["offset"].as_u64()), (Some(false), Some(5)));
    assert_eq!(server.publish_with_offset(b"alice", b"after").2, 6);
    assert_eq!(read_json(&mut stale)["offset"].as_u64(), Some(6), "no replay before the live message");
    let stats = server.stats();
    assert_eq!((stats.resumes_total, stats.recoveries_total, stats.recovery_failures_total), (2, 1, 1));
    assert_eq!((stats.history_users, stats.history_messages), (1, 6));
    server.rec.assert_no_failures();
}
