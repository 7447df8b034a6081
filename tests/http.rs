//! The HTTP side of the engine: the upgrade handshake and its error statuses, plain HTTP,
//! Origin checks, connection limits and the handshake deadline.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use wspush::{Handler, HttpResponse, MessageKind, Server, UpgradeDecision};

/// Sends `request` on a fresh connection; returns the response, after checking the server then
/// closes the connection (every error response ends it).
fn respond(addr: std::net::SocketAddr, request: &str) -> RawResponse {
    let mut raw = Raw::connect(addr);
    raw.send(request.as_bytes());
    let response = raw.read_response();
    assert_eq!(response.header("connection"), Some("close"), "{response:?}");
    assert_eq!(raw.read_end(), End::Eof, "connection closed cleanly after the response");
    response
}

fn status(addr: std::net::SocketAddr, request: &str) -> u16 {
    respond(addr, request).status
}

#[test]
fn valid_upgrade_gets_101_with_the_accept_key() {
    let (server, mut events) = start(config());
    let mut raw = Raw::connect(server.local_addr());
    raw.send(upgrade_request("/ws?user=alice", "").as_bytes());
    let response = raw.read_response_head();
    assert_eq!(response.status, 101);
    assert_eq!(response.header("upgrade").map(str::to_ascii_lowercase).as_deref(), Some("websocket"));
    assert_eq!(response.header("connection").map(str::to_ascii_lowercase).as_deref(), Some("upgrade"));
    assert_eq!(response.header("sec-websocket-accept"), Some(ACCEPT));
    events.opened(b"alice");
}

#[test]
fn malformed_requests_get_400() {
    let (server, _events) = start(config());
    let addr = server.local_addr();
    assert_eq!(status(addr, "GARBAGE\r\n\r\n"), 400, "malformed request line");
    assert_eq!(status(addr, "GET /ws HTTP/1.1 extra\r\nHost: x\r\n\r\n"), 400, "malformed request line");
    let good = upgrade_request("/ws?user=a", "");
    assert_eq!(status(addr, &good.replace(KEY, "c2hvcnQ=")), 400, "key is not 16 bytes");
    assert_eq!(status(addr, &good.replace(KEY, "not base64 at all!!!!!==")), 400, "key is not base64");
    assert_eq!(status(addr, &good.replace(&format!("Sec-WebSocket-Key: {KEY}\r\n"), "")), 400, "no key");
    assert_eq!(status(addr, &good.replace("Connection: Upgrade\r\n", "")), 400, "no Connection header");
    assert_eq!(status(addr, &good.replace("Connection: Upgrade", "Connection: keep-alive")), 400, "no upgrade token");
    assert_eq!(status(addr, &good.replace("GET ", "POST ")), 400, "not GET");
    assert_eq!(status(addr, &good.replace("HTTP/1.1", "HTTP/1.0")), 400, "HTTP/1.0");
    assert_eq!(status(addr, &good.replace("Host: 127.0.0.1\r\n", "")), 400, "no Host");
    assert_eq!(server.stats().rejected_total, 10);
    assert_eq!(server.stats().upgrades_total, 0);
}

#[test]
fn connection_header_with_several_tokens_is_accepted() {
    let (server, mut events) = start(config());
    let request =
        upgrade_request("/ws?user=alice", "").replace("Connection: Upgrade", "Connection: keep-alive, Upgrade");
    let mut raw = Raw::connect(server.local_addr());
    raw.send(request.as_bytes());
    assert_eq!(raw.read_response_head().status, 101);
    events.opened(b"alice");
}

#[test]
fn wrong_path_gets_404() {
    let (server, _events) = start(config());
    let addr = server.local_addr();
    assert_eq!(status(addr, &upgrade_request("/other?user=a", "")), 404);
    assert_eq!(status(addr, &upgrade_request("/ws/extra", "")), 404);
    let mut cfg = config();
    cfg.path = "/push".into();
    let (custom, mut events) = start(cfg);
    assert_eq!(status(custom.local_addr(), &upgrade_request("/ws?user=a", "")), 404);
    let mut raw = Raw::upgrade(custom.local_addr(), "/push?user=a");
    events.opened(b"a");
    custom.publish(b"a", b"hi", MessageKind::Text).unwrap();
    assert_eq!(raw.next_frame().payload, b"hi");
}

#[test]
fn request_without_upgrade_gets_426() {
    let (server, _events) = start(config());
    let response = respond(server.local_addr(), "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(response.status, 426);
    assert_eq!(response.header("sec-websocket-version"), Some("13"));
    assert_eq!(response.header("upgrade"), Some("websocket"));
}

#[test]
fn unsupported_websocket_version_gets_426_naming_13() {
    let (server, _events) = start(config());
    let request = upgrade_request("/ws?user=a", "").replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    let response = respond(server.local_addr(), &request);
    assert_eq!(response.status, 426);
    assert_eq!(response.header("sec-websocket-version"), Some("13"));
}

#[test]
fn oversized_request_head_gets_431() {
    let mut cfg = config();
    cfg.max_header_bytes = 1024;
    let (server, mut events) = start(cfg);
    let addr = server.local_addr();
    let big_header = format!("X-Padding: {}\r\n", "a".repeat(1100));
    assert_eq!(status(addr, &upgrade_request("/ws?user=a", &big_header)), 431, "complete but too big");
    // Still incomplete when the limit is passed: answered without waiting for the end.
    let mut raw = Raw::connect(addr);
    raw.send(format!("GET /ws HTTP/1.1\r\nHost: x\r\n{big_header}").as_bytes());
    assert_eq!(raw.read_response().status, 431);
    // Within the limit is fine.
    let mut ok = Raw::connect(addr);
    ok.handshake("/ws?user=a", &format!("X-Padding: {}\r\n", "a".repeat(600)));
    events.opened(b"a");
}

#[test]
fn handler_without_on_upgrade_rejects_with_401() {
    struct NoUpgrade;
    impl Handler for NoUpgrade {}
    let server = Server::start(config(), NoUpgrade).unwrap();
    assert_eq!(status(server.local_addr(), &upgrade_request("/ws?user=a", "")), 401);
    assert_eq!(server.stats().connections, 0);
}

#[test]
fn handler_rejection_status_is_sent() {
    let (server, mut events) = Harness::new(config())
        .on_upgrade(|_, request| match request.query_param("token") {
            Some("good") => UpgradeDecision::Accept(b"alice".to_vec()),
            Some("bad") => UpgradeDecision::Reject(403),
            _ => UpgradeDecision::Reject(200), // out of range: the engine answers 500
        })
        .start();
    let addr = server.local_addr();
    assert_eq!(status(addr, &upgrade_request("/ws?token=bad", "")), 403);
    assert_eq!(status(addr, &upgrade_request("/ws?token=none", "")), 500);
    let _ok = Raw::upgrade(addr, "/ws?token=good");
    events.opened(b"alice");
    events.assert_none("another on_open", Duration::from_millis(20), |e| matches!(e, Event::Open { .. }));
}

#[test]
fn on_upgrade_sees_the_request() {
    let seen = Arc::new(Mutex::new(None));
    let record = seen.clone();
    let (server, _events) = Harness::new(config())
        .on_upgrade(move |_, r| {
            let headers: Vec<(String, Vec<u8>)> = r.headers().map(|(n, v)| (n.to_owned(), v.to_vec())).collect();
            *record.lock().unwrap() = Some((
                r.method().to_owned(),
                r.path().to_owned(),
                r.query().to_owned(),
                r.query_param("b").map(str::to_owned),
                r.header("x-MAIL-client").map(<[u8]>::to_vec),
                r.peer_addr(),
                headers.len(),
            ));
            UpgradeDecision::Accept(b"u".to_vec())
        })
        .start();
    let first = Raw::upgrade(server.local_addr(), "/ws?a=1&b=two%20words");
    let local = first.stream.local_addr().unwrap();
    let (method, path, query, b, client, peer, header_count) = seen.lock().unwrap().take().unwrap();
    assert_eq!(method, "GET");
    assert_eq!(path, "/ws");
    assert_eq!(query, "a=1&b=two%20words");
    assert_eq!(b.as_deref(), Some("two%20words"), "query values are not decoded");
    assert_eq!(client, None);
    assert_eq!(peer, Some(local));
    assert_eq!(header_count, 5);

    let mut raw = Raw::connect(server.local_addr());
    raw.handshake("/ws", "X-Mail-Client: web 2.1\r\n");
    let (.., client, _, _) = seen.lock().unwrap().take().unwrap();
    assert_eq!(client.as_deref(), Some(&b"web 2.1"[..]));
}

#[test]
fn on_http_serves_a_page() {
    let (server, _events) = Harness::new(config())
        .on_http(|_, request| {
            (request.path() == "/health").then(|| HttpResponse {
                status: 200,
                content_type: "application/json".into(),
                body: format!("{{\"method\":\"{}\"}}", request.method()).into_bytes(),
            })
        })
        .start();
    let addr = server.local_addr();
    let response = respond(addr, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.body, b"{\"method\":\"GET\"}");
    assert_eq!(status(addr, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n"), 426, "None: the default answer");
}

#[test]
fn a_panicking_on_http_gets_500() {
    let (server, _events) = Harness::new(config()).on_http(|_, _| panic!("host bug (expected by the test)")).start();
    assert_eq!(status(server.local_addr(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 500);
    let _ws = ws_connect(server.local_addr(), "alice");
}

#[test]
fn a_panicking_on_upgrade_gets_500() {
    let (server, mut events) = Harness::new(config())
        .on_upgrade(|server, request| {
            if request.query_param("boom").is_some() {
                panic!("host bug (expected by the test)");
            }
            user_from_query(server, request)
        })
        .start();
    assert_eq!(status(server.local_addr(), &upgrade_request("/ws?boom", "")), 500);
    let _ws = ws_connect(server.local_addr(), "alice");
    events.opened(b"alice");
}

#[test]
fn origin_allowlist() {
    let mut cfg = config();
    cfg.allowed_origins = vec!["https://mail.example".into(), "https://beta.mail.example".into()];
    let (server, mut events) = start(cfg);
    let addr = server.local_addr();
    assert_eq!(ws_try_connect_with(addr, "/ws?user=a", &[("Origin", "https://evil.example")]).err(), Some(403));
    assert_eq!(ws_try_connect_with(addr, "/ws?user=a", &[("Origin", "https://mail.example.evil")]).err(), Some(403));
    assert_eq!(ws_try_connect_with(addr, "/ws?user=a", &[("Origin", "null")]).err(), Some(403));
    let _allowed = ws_try_connect_with(addr, "/ws?user=a", &[("Origin", "https://beta.mail.example")]).unwrap();
    events.opened(b"a");
    let _case = ws_try_connect_with(addr, "/ws?user=b", &[("Origin", "HTTPS://Mail.Example")]).unwrap();
    events.opened(b"b");
    // Documented choice: no Origin means not a browser cross-site request; allowed.
    let _no_origin = ws_try_connect(addr, "/ws?user=c").unwrap();
    events.opened(b"c");
    assert_eq!(server.stats().rejected_total, 3);
}

#[test]
fn request_and_first_frames_in_one_packet() {
    let (server, mut events) = Harness::new(config())
        .on_message(|server, conn, _, kind, payload| server.send(conn, payload, kind).unwrap())
        .start();
    let mut raw = Raw::connect(server.local_addr());
    let mut bytes = upgrade_request("/ws?user=alice", "").into_bytes();
    bytes.extend_from_slice(&frame(0x81, b"first"));
    bytes.extend_from_slice(&frame(0x82, b"second"));
    raw.send(&bytes);
    assert_eq!(raw.read_response_head().status, 101);
    let conn = events.opened(b"alice");
    assert_eq!(events.message(conn), (MessageKind::Text, b"first".to_vec()));
    assert_eq!(events.message(conn), (MessageKind::Binary, b"second".to_vec()));
    assert_eq!(raw.next_frame().payload, b"first");
    assert_eq!(raw.next_frame().payload, b"second");
}

#[test]
fn request_split_into_single_bytes_is_reassembled() {
    let (server, mut events) = start(config());
    let mut raw = Raw::connect(server.local_addr());
    for byte in upgrade_request("/ws?user=alice", "").bytes() {
        raw.send(&[byte]);
    }
    assert_eq!(raw.read_response_head().status, 101);
    events.opened(b"alice");
}

#[test]
fn max_connections_answers_503() {
    let mut cfg = config();
    cfg.max_connections = 2;
    let (server, mut events) = start(cfg);
    let addr = server.local_addr();
    let _a = ws_connect(addr, "a");
    let b = ws_connect(addr, "b");
    events.opened(b"a");
    let b_id = events.opened(b"b");

    // A socket that has sent nothing yet.
    let mut raw = Raw::connect(addr);
    assert_eq!(raw.read_response().status, 503);
    assert_eq!(raw.read_end(), End::Eof);
    assert_eq!(server.stats().over_capacity_total, 1);
    assert_eq!(server.stats().connections, 2);

    // Room again once one leaves.
    drop(b);
    events.closed(b_id);
    let _c = ws_connect(addr, "c");
    events.opened(b"c");
}

#[test]
fn max_connections_503_reaches_a_client_that_already_sent_its_request() {
    let mut cfg = config();
    cfg.max_connections = 1;
    let (server, mut events) = start(cfg);
    let addr = server.local_addr();
    let _a = ws_connect(addr, "a");
    events.opened(b"a");
    for _ in 0..20 {
        // A browser sends its request at once; the 503 must not be lost to a reset.
        assert_eq!(ws_try_connect(addr, "/ws?user=b").err(), Some(503));
    }
}

#[test]
fn max_connections_per_user_answers_429() {
    let mut cfg = config();
    cfg.max_connections_per_user = 2;
    let (server, mut events) = start(cfg);
    let addr = server.local_addr();
    let first = ws_connect(addr, "alice");
    let _second = ws_connect(addr, "alice");
    let first_id = events.opened(b"alice");
    events.opened(b"alice");
    assert_eq!(ws_try_connect(addr, "/ws?user=alice").err(), Some(429));
    let _bob = ws_connect(addr, "bob");
    events.opened(b"bob");
    drop(first);
    events.closed(first_id);
    let _third = ws_connect(addr, "alice");
    events.opened(b"alice");
    assert_eq!(server.stats().rejected_total, 1);
}

#[test]
fn handshake_deadline_closes_a_stalled_request() {
    let mut cfg = config();
    cfg.handshake_timeout = Duration::from_millis(300);
    let (server, _events) = start(cfg);
    let mut raw = Raw::connect(server.local_addr());
    raw.send(b"GET /ws?user=a HTTP/1.1\r\n");
    let started = Instant::now();
    assert_eq!(raw.read_end(), End::Eof);
    assert!(started.elapsed() < Duration::from_secs(2), "closed after {:?}", started.elapsed());
    let s = server.stats();
    assert_eq!((s.timeouts_total, s.handshakes, s.connections), (1, 0, 0));
}

#[test]
fn handshake_deadline_counts_from_accept_not_from_the_last_byte() {
    let mut cfg = config();
    cfg.handshake_timeout = Duration::from_millis(300);
    let (server, _events) = start(cfg);
    let mut raw = Raw::connect(server.local_addr());
    let started = Instant::now();
    // One byte every 100 ms: the head is never complete within the deadline.
    let request = upgrade_request("/ws?user=a", "");
    for byte in request.bytes().take(20) {
        if raw.stream.write_all(&[byte]).is_err() {
            break;
        }
        if !raw.silent_for(Duration::from_millis(100)) {
            break;
        }
    }
    assert_eq!(raw.read_end(), End::Eof);
    assert!(started.elapsed() < Duration::from_millis(1500), "closed after {:?}", started.elapsed());
}

/// Storm control: with `max_handshakes_per_thread` 2, two stalled sockets occupy the thread's
/// handshake slots; three more clients that already sent valid requests wait in the backlog until
/// the stalled ones time out, and are then served.
#[test]
fn handshake_limit_defers_accepting_until_slots_free_up() {
    let mut cfg = config();
    cfg.max_handshakes_per_thread = 2;
    cfg.handshake_timeout = Duration::from_millis(600);
    let (server, mut events) = start(cfg);
    let addr = server.local_addr();
    let mut stalled: Vec<Raw> = (0..2).map(|_| Raw::connect(addr)).collect();
    stats_until(&server, "two handshakes", |s| s.handshakes == 2);

    let mut waiting: Vec<Raw> = (0..3)
        .map(|i| {
            let mut raw = Raw::connect(addr);
            raw.send(upgrade_request(&format!("/ws?user=w{i}"), "").as_bytes());
            raw
        })
        .collect();
    for raw in &mut waiting {
        assert!(raw.silent_for(Duration::from_millis(50)), "served while the handshake slots were full");
    }
    let s = server.stats();
    assert_eq!((s.accepted_total, s.handshakes), (2, 2), "{s:?}");

    for raw in &mut stalled {
        assert_eq!(raw.read_end(), End::Eof, "stalled handshake times out");
    }
    for raw in &mut waiting {
        assert_eq!(raw.read_response_head().status, 101);
    }
    for i in 0..3 {
        events.opened(format!("w{i}").as_bytes());
    }
    let s = server.stats();
    assert_eq!((s.accepted_total, s.upgrades_total, s.timeouts_total), (5, 3, 2));
}

/// CPU time (user + system, in clock ticks) the given thread of this process has used.
fn thread_cpu_ticks(tid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // Fields 14 and 15 of stat(5), counted from the state field (3).
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn paused_accepting_does_not_spin() {
    let io_thread = Arc::new(Mutex::new(0));
    let record = io_thread.clone();
    let mut cfg = config();
    cfg.max_handshakes_per_thread = 1;
    cfg.handshake_timeout = Duration::from_millis(1500);
    let (server, _events) = Harness::new(cfg)
        .on_http(move |_, _| {
            // SAFETY: gettid has no preconditions.
            *record.lock().unwrap() = unsafe { libc::gettid() };
            None
        })
        .start();
    let addr = server.local_addr();
    assert_eq!(status(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 426);
    let tid = *io_thread.lock().unwrap();

    let _stalled = Raw::connect(addr);
    stats_until(&server, "one handshake", |s| s.handshakes == 1);
    let _waiting = Raw::connect(addr); // left in the backlog: accepting is paused
    std::thread::sleep(Duration::from_millis(50));
    let before = thread_cpu_ticks(tid);
    std::thread::sleep(Duration::from_millis(700));
    let used = thread_cpu_ticks(tid) - before;
    // Sleeping in epoll uses ~0 ticks; a busy loop uses ~70 (at 100 Hz) even when sharing a core.
    assert!(used < 15, "the I/O thread used {used} ticks of CPU in 700 ms while waiting");
}
