//! C-ABI misuse that tests/ffi.rs does not already cover: user IDs at the length limits through
//! a real upgrade, listen addresses that only fail when resolved, stop racing stop, and free of a
//! server that was never stopped. Each misuse gets its documented result code and nothing else.

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
