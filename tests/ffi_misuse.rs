//! C-ABI misuse that tests/ffi.rs does not already cover: (pointer, length) arguments whose
//! length passes the documented maximum (refused before reading: the buffers end at a guard
//! page), user IDs with a NUL byte, user IDs at the length limits through a real upgrade, listen
//! addresses that only fail when resolved, stop racing stop, and free of a server that was never
//! stopped. Each misuse gets its documented result code and nothing else.

use std::ffi::c_void;
use std::net::TcpStream;
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tungstenite::{Message, WebSocket};
use wspush::ffi::*;

const OK: wspush_result = wspush_result::Ok;
const WAIT: Duration = Duration::from_secs(5);

/// What the callbacks saw (userdata).
#[derive(Default)]
struct Seen {
    /// wspush_request_accept's result for each upgrade.
    accept_results: Mutex<Vec<wspush_result>>,
    opened: AtomicUsize,
    /// Close codes, one per on_close.
    closes: Mutex<Vec<u16>>,
}

/// SAFETY (for the callbacks): userdata is the test's `Seen`, alive until the server is freed.
unsafe fn seen<'a>(userdata: *mut c_void) -> &'a Seen {
    unsafe { &*userdata.cast::<Seen>() }
}

/// Accepts the upgrade as the `user` query parameter, whatever its length (the library judges
/// it); a refused ID leaves the request undecided, which answers 401.
unsafe extern "C" fn on_upgrade(userdata: *mut c_void, _: *const wspush_server, request: *mut wspush_request) {
    let (mut user, mut len) = (null(), 0usize);
    // SAFETY: the request is live during the callback; out-parameters are locals.
    unsafe {
        let found = wspush_request_query_param(request, "user".as_ptr().cast(), 4, &mut user, &mut len);
        let result = if found == OK { wspush_request_accept(request, user.cast(), len) } else { found };
        seen(userdata).accept_results.lock().unwrap().push(result);
    }
}

unsafe extern "C" fn on_open(userdata: *mut c_void, _: *const wspush_server, _: u64, _: *const u8, _: usize) {
    unsafe { seen(userdata) }.opened.fetch_add(1, Ordering::SeqCst);
}

unsafe extern "C" fn on_close(
    userdata: *mut c_void,
    _: *const wspush_server,
    _: u64,
    _: *const u8,
    _: usize,
    code: u16,
) {
    unsafe { seen(userdata) }.closes.lock().unwrap().push(code);
}

fn callbacks(seen: &Seen) -> wspush_callbacks {
    wspush_callbacks {
        size: size_of::<wspush_callbacks>(),
        userdata: (seen as *const Seen).cast_mut().cast(),
        on_upgrade: Some(on_upgrade),
        on_open: Some(on_open),
        on_message: None,
        on_close: Some(on_close),
        on_drop: None,
        on_http: None,
    }
}

/// A configuration listening on `listen` with two I/O threads and short drain/close timeouts.
fn config(listen: &str, seen: &Seen) -> *mut wspush_config {
    // SAFETY: a fresh configuration and valid buffers.
    unsafe {
        let config = wspush_config_new();
        assert_eq!(wspush_config_set_listen(config, listen.as_ptr().cast(), listen.len()), OK);
        assert_eq!(wspush_config_set_threads(config, 2), OK);
        assert_eq!(wspush_config_set_drain_timeout_ms(config, 300), OK);
        assert_eq!(wspush_config_set_close_timeout_ms(config, 300), OK);
        assert_eq!(wspush_config_set_callbacks(config, &callbacks(seen)), OK);
        config
    }
}

fn start(seen: &Seen) -> (*const wspush_server, u16) {
    let config = config("127.0.0.1:0", seen);
    let mut server = null();
    let mut port = 0;
    // SAFETY: a live configuration, freed once; out-parameters are locals.
    unsafe {
        assert_eq!(wspush_server_start(config, &mut server), OK);
        wspush_config_free(config);
        assert_eq!(wspush_server_local_port(server, &mut port), OK);
    }
    (server, port)
}

type Client = WebSocket<TcpStream>;

fn connect(port: u16, user: &str) -> Result<Client, u16> {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    match tungstenite::client(format!("ws://127.0.0.1:{port}/ws?user={user}"), stream) {
        Ok((client, _)) => Ok(client),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("handshake failed: {e}"),
    }
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn publish(server: *const wspush_server, user: &[u8], payload: &[u8]) -> (wspush_result, usize) {
    let mut delivered = usize::MAX;
    // SAFETY: a live server; buffers valid for their lengths.
    let result = unsafe {
        wspush_publish(
            server,
            user.as_ptr(),
            user.len(),
            payload.as_ptr(),
            payload.len(),
            WSPUSH_MESSAGE_KIND_TEXT,
            &mut delivered,
        )
    };
    (result, delivered)
}

#[test]
fn user_ids_of_255_bytes_work_end_to_end_and_256_or_0_are_refused_in_on_upgrade() {
    let seen = Seen::default();
    let (server, port) = start(&seen);

    let longest = "u".repeat(255);
    let mut client = connect(port, &longest).expect("a 255-byte user ID is accepted");
    wait_until("on_open", || seen.opened.load(Ordering::SeqCst) == 1);
    assert_eq!(publish(server, longest.as_bytes(), b"to the longest ID"), (OK, 1));
    match client.read().unwrap() {
        Message::Text(text) => assert_eq!(text.as_str(), "to the longest ID"),
        other => panic!("expected text, got {other:?}"),
    }

    assert_eq!(connect(port, &"u".repeat(256)).err(), Some(401), "a 256-byte ID: accept refused, so undecided");
    assert_eq!(connect(port, "").err(), Some(401), "an empty ID: accept refused, so undecided");
    let results = seen.accept_results.lock().unwrap().clone();
    assert_eq!(results, [OK, wspush_result::InvalidUserId, wspush_result::InvalidUserId]);
    assert_eq!(seen.opened.load(Ordering::SeqCst), 1, "the refused IDs never opened");

    // SAFETY: the live server, freed once.
    assert_eq!(unsafe { wspush_server_free(server) }, OK);
}

#[test]
fn listen_addresses_that_only_fail_when_resolved_are_invalid_address_at_start() {
    let seen = Seen::default();
    for address in ["999.1.1.1:0", "256.0.0.1:8080", "[::zz]:0", "no-such-host.invalid:1"] {
        let config = config(address, &seen);
        let mut server = null();
        // SAFETY: a live configuration, freed once; the out-parameter is a local.
        unsafe {
            assert_eq!(wspush_server_start(config, &mut server), wspush_result::InvalidAddress, "{address}");
            wspush_config_free(config);
        }
        assert!(server.is_null(), "{address}: out-parameter written on failure");
    }
    // Refused already by set_listen: not host:port at all.
    // SAFETY: a fresh configuration and valid buffers.
    unsafe {
        let config = wspush_config_new();
        for address in ["127.0.0.1", "127.0.0.1:-1", "127.0.0.1:0x50"] {
            let result = wspush_config_set_listen(config, address.as_ptr().cast(), address.len());
            assert_eq!(result, wspush_result::InvalidAddress, "{address:?}");
        }
        wspush_config_free(config);
    }
}

#[test]
fn stop_from_many_threads_at_once_then_free_each_return_ok() {
    let seen = Seen::default();
    let (server, port) = start(&seen);
    let mut clients: Vec<Client> = (0..4).map(|i| connect(port, &format!("user{i}")).unwrap()).collect();
    wait_until("four on_open", || seen.opened.load(Ordering::SeqCst) == 4);

    let address = server as usize; // raw pointers are not Send; the server is thread-safe
    let stoppers: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                // SAFETY: the server stays live until every stopper has been joined.
                unsafe { wspush_server_stop(address as *const wspush_server) }
            })
        })
        .collect();
    for stopper in stoppers {
        assert_eq!(stopper.join().unwrap(), OK);
    }
    // SAFETY: the live server.
    assert_eq!(unsafe { wspush_server_stop(server) }, OK, "and once more");
    assert_eq!(publish(server, b"user0", b"late"), (wspush_result::Stopped, usize::MAX));
    // Argument errors are still reported first: the host learns of its own bug.
    assert_eq!(publish(server, b"", b"late"), (wspush_result::InvalidUserId, usize::MAX));
    // SAFETY: the live server; a NULL user with a length is the misuse under test.
    let null_user = unsafe { wspush_publish(server, null(), 5, null(), 0, WSPUSH_MESSAGE_KIND_TEXT, null_mut()) };
    assert_eq!(null_user, wspush_result::NullArgument);
    // SAFETY: the live server.
    assert_eq!(unsafe { wspush_close(server, 1, 999, null(), 0) }, wspush_result::InvalidCloseCode);
    // SAFETY: the live server, freed once.
    assert_eq!(unsafe { wspush_server_free(server) }, OK);
    assert_eq!(*seen.closes.lock().unwrap(), [1001; 4], "on_close once per connection, with 1001");
    for client in &mut clients {
        match client.read() {
            Ok(Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1001),
            other => panic!("expected close 1001, got {other:?}"),
        }
    }
}

#[test]
fn free_without_stop_stops_first_and_calls_on_close_before_returning() {
    let seen = Seen::default();
    let (server, port) = start(&seen);
    let _clients: Vec<Client> = (0..3).map(|i| connect(port, &format!("user{i}")).unwrap()).collect();
    wait_until("three on_open", || seen.opened.load(Ordering::SeqCst) == 3);
    // SAFETY: the live server, freed once, never stopped.
    assert_eq!(unsafe { wspush_server_free(server) }, OK);
    // free returned: no callback runs any more, so everything is already recorded.
    assert_eq!(*seen.closes.lock().unwrap(), [1001; 3]);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "the port is closed");
    // SAFETY: NULL is always allowed.
    assert_eq!(unsafe { wspush_server_free(null()) }, OK, "free(NULL) stays a no-op");
    unsafe { wspush_config_free(null_mut()) };
}

/// Bytes that end exactly where a PROT_NONE guard page begins: reading one byte past them
/// crashes the test. The library cannot know a C buffer's real size, so a length beyond an
/// argument's documented maximum must be refused on the length alone; a call that followed it
/// would read into the guard page and die with SIGSEGV instead of returning.
struct GuardedBytes {
    map: *mut c_void,
    map_len: usize,
    data: *const u8,
}

impl GuardedBytes {
    fn new(content: &[u8]) -> GuardedBytes {
        // SAFETY: sysconf, then an anonymous private mapping of two fresh pages whose second page
        // is made inaccessible; `content` is copied into the end of the first page.
        unsafe {
            let page = usize::try_from(libc::sysconf(libc::_SC_PAGESIZE)).unwrap();
            assert!(content.len() <= page);
            let map_len = 2 * page;
            let map = libc::mmap(
                null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(map, libc::MAP_FAILED);
            assert_eq!(libc::mprotect(map.cast::<u8>().add(page).cast(), page, libc::PROT_NONE), 0);
            let data = map.cast::<u8>().add(page - content.len());
            std::ptr::copy_nonoverlapping(content.as_ptr(), data, content.len());
            GuardedBytes { map, map_len, data }
        }
    }
}

impl Drop for GuardedBytes {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

/// A length no real buffer here has: 2^40.
const HUGE: usize = 1 << 40;

#[test]
fn config_lengths_beyond_their_maximum_are_refused_without_reading_the_buffer() {
    let guarded = GuardedBytes::new(b"8 bytes!");
    let (p, c) = (guarded.data, guarded.data.cast::<std::ffi::c_char>());
    // SAFETY: a fresh configuration; every buffer is 8 readable bytes followed by a guard page,
    // passed with lengths the library must refuse before reading.
    unsafe {
        let config = wspush_config_new();
        assert_eq!(wspush_config_set_listen(config, c, HUGE), wspush_result::InvalidAddress);
        assert_eq!(wspush_config_set_listen(config, c, WSPUSH_MAX_ADDRESS_LEN + 1), wspush_result::InvalidAddress);
        assert_eq!(wspush_config_set_path(config, c, HUGE), wspush_result::InvalidArgument);
        assert_eq!(wspush_config_add_allowed_origin(config, c, HUGE), wspush_result::InvalidArgument);
        assert_eq!(wspush_config_set_jwt_hs256_secret(config, p, HUGE), wspush_result::InvalidArgument);
        assert_eq!(wspush_config_add_trusted_proxy(config, c, HUGE), wspush_result::InvalidAddress);
        assert_eq!(
            wspush_config_set_jwt_hs256_secret(config, p, WSPUSH_MAX_ARG_LEN + 1),
            wspush_result::InvalidArgument
        );
        // The maximum itself is accepted (and read): the limit is not off by one.
        let secret = vec![7u8; WSPUSH_MAX_ARG_LEN];
        assert_eq!(wspush_config_set_jwt_hs256_secret(config, secret.as_ptr(), secret.len()), OK);
        let listen = format!("{}:1", "a".repeat(WSPUSH_MAX_ADDRESS_LEN - 2));
        assert_eq!(wspush_config_set_listen(config, listen.as_ptr().cast(), listen.len()), OK);
        wspush_config_free(config);
    }
}

#[test]
fn server_call_lengths_beyond_their_maximum_are_refused_without_reading_the_buffer() {
    let seen = Seen::default();
    let (server, _) = start(&seen);
    let guarded = GuardedBytes::new(b"8 bytes!");
    let (p, c) = (guarded.data, guarded.data.cast::<std::ffi::c_char>());
    let text = WSPUSH_MESSAGE_KIND_TEXT;
    // SAFETY: the live server; buffers as in the test above.
    unsafe {
        // The case: a reason length of 2^40 over an 8-byte buffer.
        assert_eq!(wspush_close(server, 1, 1000, c, HUGE), wspush_result::InvalidCloseReason);
        assert_eq!(
            wspush_close(server, 1, 1000, c, WSPUSH_MAX_CLOSE_REASON_LEN + 1),
            wspush_result::InvalidCloseReason
        );
        assert_eq!(wspush_publish(server, p, HUGE, b"x".as_ptr(), 1, text, null_mut()), wspush_result::InvalidUserId);
        assert_eq!(wspush_publish(server, b"u".as_ptr(), 1, p, HUGE, text, null_mut()), wspush_result::MessageTooLarge);
        let (mut delivered, mut offset) = (usize::MAX, u64::MAX);
        assert_eq!(
            wspush_publish_with_offset(server, p, HUGE, b"x".as_ptr(), 1, text, &mut delivered, &mut offset),
            wspush_result::InvalidUserId
        );
        assert_eq!(
            wspush_publish_with_offset(server, b"u".as_ptr(), 1, p, HUGE, text, &mut delivered, &mut offset),
            wspush_result::MessageTooLarge
        );
        assert_eq!((delivered, offset), (usize::MAX, u64::MAX), "out-parameters untouched on failure");
        assert_eq!(wspush_broadcast(server, p, HUGE, text, null_mut()), wspush_result::MessageTooLarge);
        assert_eq!(wspush_send(server, 1, p, HUGE, text), wspush_result::MessageTooLarge);
        assert_eq!(wspush_disconnect_user(server, p, HUGE, 1000, null_mut()), wspush_result::InvalidUserId);
        assert_eq!(wspush_upgrade_accept(server, 1, p, HUGE), wspush_result::InvalidUserId);
        assert_eq!(wspush_server_free(server), OK);
    }
}

/// What the probing callbacks below got back, in call order.
#[derive(Default)]
struct Probe {
    /// Address of the guarded 8 bytes.
    guarded: usize,
    results: Mutex<Vec<(&'static str, wspush_result)>>,
}

/// Calls every request function that takes a (pointer, length) with a huge length over the
/// guarded buffer, then accepts as "bob" (after trying a user ID with a NUL inside).
unsafe extern "C" fn probe_upgrade(userdata: *mut c_void, _: *const wspush_server, request: *mut wspush_request) {
    // SAFETY: userdata is the test's Probe, alive until the server is freed; the request is
    // live during the callback; out-parameters are locals.
    unsafe {
        let probe = &*userdata.cast::<Probe>();
        let (p, c) = (probe.guarded as *const u8, probe.guarded as *const std::ffi::c_char);
        let (mut value, mut value_len) = (null(), 0usize);
        let (mut bytes, mut bytes_len) = (null(), 0usize);
        let results = [
            ("query_param", wspush_request_query_param(request, c, HUGE, &mut value, &mut value_len)),
            ("header", wspush_request_header(request, c, HUGE, &mut bytes, &mut bytes_len)),
            ("accept huge", wspush_request_accept(request, p, HUGE)),
            ("accept NUL", wspush_request_accept(request, b"ali\0ce".as_ptr(), 6)),
            ("accept bob", wspush_request_accept(request, b"bob".as_ptr(), 3)),
        ];
        probe.results.lock().unwrap().extend(results);
    }
}

unsafe extern "C" fn probe_http(userdata: *mut c_void, _: *const wspush_server, request: *mut wspush_request) {
    // SAFETY: as in probe_upgrade.
    unsafe {
        let probe = &*userdata.cast::<Probe>();
        let (p, c) = (probe.guarded as *const u8, probe.guarded as *const std::ffi::c_char);
        let plain = "text/plain";
        let results = [
            ("respond content type", wspush_request_respond(request, 200, c, HUGE, b"hi".as_ptr(), 2)),
            ("respond body", wspush_request_respond(request, 200, plain.as_ptr().cast(), plain.len(), p, HUGE)),
            ("respond", wspush_request_respond(request, 200, plain.as_ptr().cast(), plain.len(), b"hi".as_ptr(), 2)),
        ];
        probe.results.lock().unwrap().extend(results);
    }
}

#[test]
fn request_call_lengths_beyond_their_maximum_are_refused_without_reading_the_buffer() {
    let guarded = GuardedBytes::new(b"8 bytes!");
    let probe = Probe { guarded: guarded.data as usize, ..Probe::default() };
    let callbacks = wspush_callbacks {
        size: size_of::<wspush_callbacks>(),
        userdata: (&probe as *const Probe).cast_mut().cast(),
        on_upgrade: Some(probe_upgrade),
        on_open: None,
        on_message: None,
        on_close: None,
        on_drop: None,
        on_http: Some(probe_http),
    };
    let (mut server, mut port) = (null(), 0u16);
    // SAFETY: a fresh configuration, freed once; out-parameters are locals.
    unsafe {
        let config = wspush_config_new();
        assert_eq!(wspush_config_set_listen(config, "127.0.0.1:0".as_ptr().cast(), 11), OK);
        assert_eq!(wspush_config_set_threads(config, 1), OK);
        assert_eq!(wspush_config_set_callbacks(config, &callbacks), OK);
        assert_eq!(wspush_server_start(config, &mut server), OK);
        wspush_config_free(config);
        assert_eq!(wspush_server_local_port(server, &mut port), OK);
    }
    let client = connect(port, "ignored").expect("accepted as bob");
    drop(client);
    let mut http = TcpStream::connect(("127.0.0.1", port)).unwrap();
    http.set_read_timeout(Some(WAIT)).unwrap();
    std::io::Write::write_all(&mut http, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    let _ = std::io::Read::read_to_string(&mut http, &mut response);
    assert!(response.starts_with("HTTP/1.1 200") && response.ends_with("hi"), "{response:?}");
    // SAFETY: the live server, freed once.
    assert_eq!(unsafe { wspush_server_free(server) }, OK);
    let results = probe.results.lock().unwrap().clone();
    assert_eq!(
        results,
        [
            ("query_param", wspush_result::InvalidArgument),
            ("header", wspush_result::InvalidArgument),
            ("accept huge", wspush_result::InvalidUserId),
            ("accept NUL", wspush_result::InvalidUserId),
            ("accept bob", OK),
            ("respond content type", wspush_result::InvalidArgument),
            ("respond body", wspush_result::MessageTooLarge),
            ("respond", OK),
        ]
    );
}

#[test]
fn user_ids_with_a_nul_byte_are_refused_everywhere() {
    let seen = Seen::default();
    let (server, _) = start(&seen);
    // A C host reading "ali\0ce" as a C string sees "ali": another user.
    let user = b"ali\0ce";
    assert_eq!(publish(server, user, b"x"), (wspush_result::InvalidUserId, usize::MAX));
    // SAFETY: the live server; buffers valid for their lengths.
    unsafe {
        assert_eq!(wspush_disconnect_user(server, user.as_ptr(), 6, 1000, null_mut()), wspush_result::InvalidUserId);
        assert_eq!(wspush_upgrade_accept(server, 1, user.as_ptr(), 6), wspush_result::InvalidUserId);
        assert_eq!(wspush_upgrade_accept(server, 1, c"".as_ptr().cast(), 1), wspush_result::InvalidUserId);
        assert_eq!(wspush_server_free(server), OK);
    }
}

#[test]
fn proxy_protocol_needs_a_trusted_proxy_and_bad_networks_are_invalid_address() {
    // SAFETY: a fresh configuration and valid buffers.
    unsafe {
        let config = wspush_config_new();
        // Enabling before any proxy is trusted would make every peer untrusted: refused, and
        // the configuration keeps the previous value.
        assert_eq!(wspush_config_set_proxy_protocol(config, true), wspush_result::InvalidArgument);
        for bad in ["", "10.0.0.0/33", "host.example", "10.0.0.0/8 "] {
            let result = wspush_config_add_trusted_proxy(config, bad.as_ptr().cast(), bad.len());
            assert_eq!(result, wspush_result::InvalidAddress, "{bad:?}");
        }
        for good in ["10.0.0.0/8", "127.0.0.1", "fd00::/8"] {
            assert_eq!(wspush_config_add_trusted_proxy(config, good.as_ptr().cast(), good.len()), OK, "{good}");
        }
        assert_eq!(wspush_config_set_proxy_protocol(config, true), OK);
        assert_eq!(wspush_config_set_proxy_protocol(config, false), OK);
        wspush_config_free(config);
    }
}

/// `wspush_publish_with_offset` with the offset out-parameters of a test: (result, delivered,
/// offset), the sentinels `usize::MAX` and `u64::MAX` when they were not written.
fn publish_with_offset(
    server: *const wspush_server,
    user: *const u8,
    user_len: usize,
    payload: *const u8,
    payload_len: usize,
    kind: wspush_message_kind,
) -> (wspush_result, usize, u64) {
    let (mut delivered, mut offset) = (usize::MAX, u64::MAX);
    // SAFETY: `server` is NULL or live and the buffers NULL or valid for their lengths (each
    // caller says which); the out-parameters are locals.
    let result = unsafe {
        wspush_publish_with_offset(server, user, user_len, payload, payload_len, kind, &mut delivered, &mut offset)
    };
    (result, delivered, offset)
}

#[test]
fn history_calls_refuse_null_and_invalid_arguments_and_write_nothing_on_failure() {
    use wspush_result::{InvalidArgument, InvalidUserId, MessageTooLarge, NullArgument, Stopped};
    // SAFETY: NULL configurations on purpose, then a fresh one freed once.
    unsafe {
        assert_eq!(wspush_config_set_history_max_messages(null_mut(), 10), NullArgument);
        assert_eq!(wspush_config_set_history_ttl_ms(null_mut(), 1000), NullArgument);
        assert_eq!(wspush_config_set_history_max_bytes(null_mut(), 1 << 20), NullArgument);
        let config = wspush_config_new();
        assert_eq!(wspush_config_set_history_ttl_ms(config, 0), InvalidArgument);
        assert_eq!(wspush_config_set_history_ttl_ms(config, u64::MAX), InvalidArgument);
        assert_eq!(wspush_config_set_history_max_bytes(config, 0), InvalidArgument);
        wspush_config_free(config);
    }

    let seen = Seen::default();
    let config = config("127.0.0.1:0", &seen);
    let mut server = null();
    // SAFETY: a live configuration, freed once; the out-parameter is a local.
    unsafe {
        assert_eq!(wspush_config_set_history_max_messages(config, 10), OK);
        assert_eq!(wspush_config_set_max_queue_bytes(config, 64), OK);
        assert_eq!(wspush_server_start(config, &mut server), OK);
        wspush_config_free(config);
    }
    let (user, text) = (b"alice".as_ptr(), WSPUSH_MESSAGE_KIND_TEXT);
    let untouched = (usize::MAX, u64::MAX);
    let refused = |call: (wspush_result, usize, u64)| (call.0, (call.1, call.2));
    assert_eq!(refused(publish_with_offset(null(), user, 5, null(), 0, text)), (NullArgument, untouched));
    assert_eq!(refused(publish_with_offset(server, null(), 5, null(), 0, text)), (NullArgument, untouched));
    assert_eq!(refused(publish_with_offset(server, user, 5, null(), 1, text)), (NullArgument, untouched));
    assert_eq!(refused(publish_with_offset(server, null(), 0, null(), 0, text)), (InvalidUserId, untouched));
    let nul = b"ali\0ce";
    assert_eq!(refused(publish_with_offset(server, nul.as_ptr(), 6, null(), 0, text)), (InvalidUserId, untouched));
    let long = [b'u'; 256];
    assert_eq!(refused(publish_with_offset(server, long.as_ptr(), 256, null(), 0, text)), (InvalidUserId, untouched));
    assert_eq!(refused(publish_with_offset(server, user, 5, null(), 0, 3)), (InvalidArgument, untouched), "kind");
    let big = [b'm'; 65];
    assert_eq!(refused(publish_with_offset(server, user, 5, big.as_ptr(), 65, text)), (MessageTooLarge, untouched));
    // None of the refused calls took an offset; the 255-byte maximum is a user like any other.
    assert_eq!(publish_with_offset(server, user, 5, null(), 0, text), (OK, 0, 1));
    assert_eq!(publish_with_offset(server, long.as_ptr(), 255, big.as_ptr(), 64, text), (OK, 0, 1));
    assert_eq!(publish_with_offset(server, user, 5, null(), 0, text), (OK, 0, 2));

    // SAFETY: the live server; stopped, then freed once.
    assert_eq!(unsafe { wspush_server_stop(server) }, OK);
    assert_eq!(refused(publish_with_offset(server, user, 5, null(), 0, text)), (Stopped, untouched));
    assert_eq!(
        refused(publish_with_offset(server, null(), 5, null(), 0, text)),
        (NullArgument, untouched),
        "argument errors first"
    );
    // SAFETY: as above.
    assert_eq!(unsafe { wspush_server_free(server) }, OK);
}
