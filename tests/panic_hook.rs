//! A bug in wspush must never take the host down: a panic inside a C-ABI call comes back as
//! WSPUSH_RESULT_PANIC with no effect on the running server. Needs `--features test-hooks`
//! (tests/run-all.sh runs it), which adds the hook that makes the engine panic on request.

use std::ffi::c_void;
use std::net::TcpStream;
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tungstenite::{Message, WebSocket};
use wspush::ffi::*;
use wspush::test_hooks::panic_in_next_ffi_call;

const OK: wspush_result = wspush_result::Ok;
const PANIC: wspush_result = wspush_result::Panic;
const WAIT: Duration = Duration::from_secs(5);

/// The I/O-thread hook is process-wide: tests that run commands must not overlap with it armed.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What the callbacks saw (userdata).
#[derive(Default)]
struct Counts {
    opened: AtomicUsize,
    closed: AtomicUsize,
}

/// Accepts every upgrade as user "alice".
unsafe extern "C" fn on_upgrade(_: *mut c_void, _: *const wspush_server, request: *mut wspush_request) {
    // SAFETY: the request is live for this callback.
    unsafe { wspush_request_accept(request, b"alice".as_ptr(), 5) };
}

unsafe extern "C" fn on_open(userdata: *mut c_void, _: *const wspush_server, _: u64, _: *const u8, _: usize) {
    // SAFETY: userdata is the test's `Counts`, alive until the server is freed.
    unsafe { &*userdata.cast::<Counts>() }.opened.fetch_add(1, Ordering::SeqCst);
}

unsafe extern "C" fn on_close(userdata: *mut c_void, _: *const wspush_server, _: u64, _: *const u8, _: usize, _: u16) {
    // SAFETY: as in on_open.
    unsafe { &*userdata.cast::<Counts>() }.closed.fetch_add(1, Ordering::SeqCst);
}

fn start(counts: &Counts) -> (*const wspush_server, u16) {
    let callbacks = wspush_callbacks {
        size: size_of::<wspush_callbacks>(),
        userdata: (counts as *const Counts).cast_mut().cast(),
        on_upgrade: Some(on_upgrade),
        on_open: Some(on_open),
        on_message: None,
        on_close: Some(on_close),
        on_drop: None,
        on_http: None,
    };
    // SAFETY: a fresh configuration, valid pointers and lengths, freed once.
    unsafe {
        let config = wspush_config_new();
        let listen = "127.0.0.1:0";
        assert_eq!(wspush_config_set_listen(config, listen.as_ptr().cast(), listen.len()), OK);
        assert_eq!(wspush_config_set_threads(config, 1), OK);
        assert_eq!(wspush_config_set_drain_timeout_ms(config, 300), OK);
        assert_eq!(wspush_config_set_callbacks(config, &callbacks), OK);
        let mut server = null();
        assert_eq!(wspush_server_start(config, &mut server), OK);
        wspush_config_free(config);
        let mut port = 0;
        assert_eq!(wspush_server_local_port(server, &mut port), OK);
        (server, port)
    }
}

fn publish(server: *const wspush_server, payload: &str) -> (wspush_result, usize) {
    let mut delivered = usize::MAX;
    // SAFETY: a live server; buffers valid for their lengths.
    let result = unsafe {
        wspush_publish(
            server,
            b"alice".as_ptr(),
            5,
            payload.as_ptr(),
            payload.len(),
            WSPUSH_MESSAGE_KIND_TEXT,
            &mut delivered,
        )
    };
    (result, delivered)
}

fn next_text(client: &mut WebSocket<TcpStream>) -> String {
    loop {
        match client.read().expect("read") {
            Message::Text(text) => return text.as_str().to_owned(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// A client (accepted as "alice"), returned once the host has seen it open.
fn connect_alice(port: u16, counts: &Counts) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (alice, _) = tungstenite::client(format!("ws://127.0.0.1:{port}/ws"), stream).unwrap();
    let deadline = Instant::now() + WAIT;
    while counts.opened.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "on_open never came");
        std::thread::sleep(Duration::from_millis(5));
    }
    alice
}

#[test]
fn a_panic_inside_a_call_returns_panic_and_leaves_the_server_working() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let counts = Counts::default();
    let (server, port) = start(&counts);
    let mut alice = connect_alice(port, &counts);

    // A panic in publish: PANIC, the out-parameter untouched, nothing sent.
    panic_in_next_ffi_call();
    assert_eq!(publish(server, "lost"), (PANIC, usize::MAX));
    assert_eq!(publish(server, "after the panic"), (OK, 1), "the server still publishes");
    assert_eq!(next_text(&mut alice), "after the panic", "the panicked call had no effect");

    // The same for calls with other return shapes and for stop: the server keeps running.
    let mut stats = wspush_stats_snapshot { size: size_of::<wspush_stats_snapshot>(), ..Default::default() };
    let mut port_out = 0u16;
    // SAFETY: a live server and valid out-parameters.
    unsafe {
        panic_in_next_ffi_call();
        assert_eq!(wspush_stats(server, &mut stats), PANIC);
        assert_eq!(stats.connections, 0, "out-parameter untouched");
        panic_in_next_ffi_call();
        assert_eq!(wspush_server_local_port(server, &mut port_out), PANIC);
        assert_eq!(port_out, 0);
        panic_in_next_ffi_call();
        assert_eq!(wspush_broadcast(server, null(), 0, WSPUSH_MESSAGE_KIND_TEXT, null_mut()), PANIC);
        panic_in_next_ffi_call();
        assert_eq!(wspush_server_stop(server), PANIC);
        assert_eq!(wspush_stats(server, &mut stats), OK);
        assert_eq!(stats.connections, 1, "stop panicked before stopping anything: {stats:?}");
    }
    assert_eq!(publish(server, "still here"), (OK, 1));
    assert_eq!(next_text(&mut alice), "still here");

    // The hook fires once: the reference the panicking calls borrowed was neither dropped nor
    // leaked, so free stops the server normally (a dropped reference would crash here; a
    // leaked one is caught by the ASan/valgrind runs).
    // SAFETY: the live server, freed once.
    assert_eq!(unsafe { wspush_server_free(server) }, OK);
    assert_eq!(counts.closed.load(Ordering::SeqCst), 1, "on_close once, during free");
    match alice.read() {
        Ok(Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
}

#[test]
fn a_panic_on_an_io_thread_fails_the_server_and_the_host_lives() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let counts = Counts::default();
    let (server, port) = start(&counts);
    let mut alice = connect_alice(port, &counts);

    // The publish is queued (OK), then the I/O thread panics while executing it.
    wspush::test_hooks::panic_in_next_io_command();
    assert_eq!(publish(server, "never sent"), (OK, 1));
    // The server has failed itself: calls say PANIC instead of pretending to deliver.
    let deadline = Instant::now() + WAIT;
    while publish(server, "probe").0 != PANIC {
        assert!(Instant::now() < deadline, "the server never reported its failure");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(publish(server, "after").0, PANIC);
    // The connection was torn down with on_close, and the client is not left hanging.
    let deadline = Instant::now() + WAIT;
    while counts.closed.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "on_close never came");
        std::thread::sleep(Duration::from_millis(5));
    }
    match alice.read() {
        Err(tungstenite::Error::Io(e))
            if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
        {
            panic!("the client's socket was left open")
        }
        Ok(message) if !message.is_close() => panic!("unexpected {message:?}"),
        _ => {} // reset, end of stream or a close frame
    }
    // stop joins the threads and free releases the server; the host process is still here.
    // SAFETY: the live server, freed once.
    unsafe {
        assert_eq!(wspush_server_stop(server), OK);
        assert_eq!(wspush_server_free(server), OK);
    }
    assert_eq!(counts.closed.load(Ordering::SeqCst), 1, "on_close exactly once");
}
