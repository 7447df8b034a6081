//! End-to-end tests of the wspushd daemon (examples/wspushd): they build it, start it on ports 0/0, and drive
//! it the way a backend (admin HTTP API) and browsers (WebSocket) would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

mod common;

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

// ------------------------------------------------------------------------------------- harness

/// Builds the daemon with the profile (and target dir) this test was built with, once.
fn daemon_binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| common::build_workspace_binary("wspushd"))
}

/// A running daemon, killed when dropped.
struct Daemon {
    child: Child,
    ws: SocketAddr,
    admin: SocketAddr,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Daemon {
    /// The daemon process's thread count.
    fn threads(&self) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("daemon status");
        let line = status.lines().find_map(|line| line.strip_prefix("Threads:")).expect("Threads line");
        line.trim().parse().expect("thread count")
    }

    /// In demo mode.
    fn start(extra_args: &[&str]) -> Daemon {
        Daemon::start_with_auth(&["--demo"], extra_args)
    }

    fn start_with_auth(auth_args: &[&str], extra_args: &[&str]) -> Daemon {
        Daemon::start_command(Command::new(daemon_binary()), auth_args, extra_args)
    }

    /// `command` runs the daemon (directly, or through a wrapper such as prlimit).
    fn start_command(mut command: Command, auth_args: &[&str], extra_args: &[&str]) -> Daemon {
        command
            .args(auth_args)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--threads", "2"])
            .args(["--drain-timeout-ms", "1000"])
            .args(extra_args);
        let common::processes::Wspushd { child, ws, admin, stdout, stderr } =
            common::processes::spawn_wspushd(command, "wspushd");
        Daemon { child, ws, admin, stdout, stderr }
    }

    fn connect(&self, query: &str) -> WebSocket<TcpStream> {
        let stream = TcpStream::connect(self.ws).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (ws, _) = tungstenite::client(format!("ws://{}/ws?{query}", self.ws), stream).expect("upgrade");
        ws
    }

    fn admin(&self) -> Http {
        Http::connect(self.admin)
    }

    /// One request on a fresh admin connection.
    fn request(&self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        self.admin().request(method, target, headers, body)
    }

    fn post(&self, target: &str, body: &str) -> Response {
        self.request("POST", target, &[], body.as_bytes())
    }

    fn get(&self, target: &str) -> Response {
        self.request("GET", target, &[], b"")
    }

    /// Waits until the daemon's stdout (read by a collector thread) contains `text`.
    fn wait_for_stdout(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.stdout.lock().unwrap().contains(text) {
            assert!(Instant::now() < deadline, "{text:?} not in stdout: {}", self.stdout.lock().unwrap());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "daemon did not exit; stdout: {}", self.stdout.lock().unwrap());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A persistent HTTP/1.1 client connection to the admin API.
struct Http {
    reader: BufReader<TcpStream>,
}

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

impl Http {
    fn connect(addr: SocketAddr) -> Http {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Http { reader: BufReader::new(stream) }
    }

    fn write(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).unwrap();
    }

    fn send(&mut self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) {
        // The address connected to, as curl and HTTP libraries send it (the admin API checks it).
        let host = self.reader.get_ref().peer_addr().unwrap();
        let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n", body.len());
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        self.write(&bytes);
    }

    fn request(&mut self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        self.send(method, target, headers, body);
        self.read_response()
    }

    fn read_response(&mut self) -> Response {
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).unwrap();
        let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            panic!("bad status line {status_line:?}");
        });
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        let length = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        Response { status, headers, body }
    }

    /// Whether the server closed the connection (EOF) within the read timeout.
    fn is_closed_by_server(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.reader.read(&mut byte), Ok(0))
    }
}

fn read_text(ws: &mut WebSocket<TcpStream>) -> String {
    match ws.read().expect("message") {
        Message::Text(text) => text.as_str().to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Asserts no message arrives for `ws` within a short wait.
fn assert_nothing_arrives(ws: &mut WebSocket<TcpStream>) {
    ws.get_ref().set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    match ws.read() {
        Err(tungstenite::Error::Io(e))
            if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
        other => panic!("expected nothing, got {other:?}"),
    }
    ws.get_ref().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
}

/// Reads until the close frame and returns its code.
fn read_close_code(ws: &mut WebSocket<TcpStream>) -> CloseCode {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => return frame.code,
            Ok(Message::Close(None)) => panic!("close frame without code"),
            Ok(_) => continue,
            Err(e) => panic!("connection ended without a close frame: {e}"),
        }
    }
}

// ------------------------------------------------------------------------------------- pushing

#[test]
fn publish_reaches_every_tab_of_that_user_and_nobody_else() {
    let daemon = Daemon::start(&[]);
    let mut alice_tabs = [daemon.connect("user=alice"), daemon.connect("user=alice")];
    let mut bob = daemon.connect("user=bob");

    let response = daemon.post("/publish?user=alice", "You have new mail");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), r#"{"delivered":2,"offset":1}"#);
    assert_eq!(response.header("content-type"), Some("application/json"));
    for tab in alice_tabs.iter_mut() {
        assert_eq!(read_text(tab), "You have new mail");
    }
    assert_nothing_arrives(&mut bob);

    assert_eq!(daemon.post("/publish?user=bob", "for bob").text(), r#"{"delivered":1,"offset":1}"#);
    assert_eq!(read_text(&mut bob), "for bob");
    assert_eq!(daemon.post("/publish?user=carol", "nobody home").text(), r#"{"delivered":0,"offset":1}"#);
}

#[test]
fn user_ids_are_url_decoded_on_both_sides() {
    let daemon = Daemon::start(&[]);
    let mut spaced = daemon.connect("user=a%20b");
    let mut plus = daemon.connect("user=c%2Bd");
    assert_eq!(daemon.post("/publish?user=a+b", "one").text(), r#"{"delivered":1,"offset":1}"#);
    assert_eq!(read_text(&mut spaced), "one");
    assert_eq!(daemon.post("/publish?user=c%2bd", "two").text(), r#"{"delivered":1,"offset":1}"#);
    assert_eq!(read_text(&mut plus), "two");
}

#[test]
fn octet_stream_publishes_binary_frames_and_anything_else_text() {
    let daemon = Daemon::start(&[]);
    let mut alice = daemon.connect("user=alice");
    let payload = [0u8, 159, 146, 150, 255];
    let response =
        daemon.request("POST", "/publish?user=alice", &[("Content-Type", "application/octet-stream")], &payload);
    assert_eq!(response.text(), r#"{"delivered":1,"offset":1}"#);
    assert_eq!(alice.read().unwrap(), Message::Binary(payload.to_vec().into()));

    let response = daemon.request("POST", "/publish?user=alice", &[("Content-Type", "application/json")], b"{\"n\":1}");
    assert_eq!(response.text(), r#"{"delivered":1,"offset":2}"#);
    assert_eq!(alice.read().unwrap(), Message::Text("{\"n\":1}".into()));
}

#[test]
fn broadcast_reaches_every_connection() {
    let daemon = Daemon::start(&[]);
    let mut clients = [daemon.connect("user=alice"), daemon.connect("user=alice"), daemon.connect("user=bob")];
    let response = daemon.post("/broadcast", "maintenance at noon");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), r#"{"delivered":3}"#);
    for client in clients.iter_mut() {
        assert_eq!(read_text(client), "maintenance at noon");
    }
    let response = daemon.request("POST", "/broadcast", &[("Content-Type", "application/octet-stream")], b"\x01\x02");
    assert_eq!(response.text(), r#"{"delivered":3}"#);
    for client in clients.iter_mut() {
        assert_eq!(client.read().unwrap(), Message::Binary(vec![1u8, 2].into()));
    }
}

#[test]
fn disconnect_closes_that_users_connections_with_the_code() {
    let daemon = Daemon::start(&[]);
    let mut alice_tabs = [daemon.connect("user=alice"), daemon.connect("user=alice")];
    let mut bob = daemon.connect("user=bob");
    let response = daemon.post("/disconnect?user=alice&code=4001", "");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), r#"{"disconnected":2}"#);
    for tab in alice_tabs.iter_mut() {
        assert_eq!(read_close_code(tab), CloseCode::from(4001));
    }
    // Bob is untouched; without a code, the close is a normal 1000.
    assert_eq!(daemon.post("/publish?user=bob", "still here").text(), r#"{"delivered":1,"offset":1}"#);
    assert_eq!(read_text(&mut bob), "still here");
    assert_eq!(daemon.post("/disconnect?user=bob", "").text(), r#"{"disconnected":1}"#);
    assert_eq!(read_close_code(&mut bob), CloseCode::Normal);
    assert_eq!(daemon.post("/disconnect?user=nobody", "").text(), r#"{"disconnected":0}"#);
}

#[test]
fn echo_mode_sends_each_message_back_with_its_kind() {
    let daemon = Daemon::start(&["--echo"]);
    let mut client = daemon.connect("user=tester");
    client.send(Message::text("ping?")).unwrap();
    assert_eq!(read_text(&mut client), "ping?");
    client.send(Message::binary(vec![7u8, 8, 9])).unwrap();
    assert_eq!(client.read().unwrap(), Message::Binary(vec![7u8, 8, 9].into()));
}

#[test]
fn without_echo_client_messages_are_not_sent_back() {
    let daemon = Daemon::start(&[]);
    let mut client = daemon.connect("user=tester");
    client.send(Message::text("hello?")).unwrap();
    assert_nothing_arrives(&mut client);
}

// ------------------------------------------------------------------------------------- observing

#[test]
fn stats_and_metrics_report_the_engine_counters() {
    let daemon = Daemon::start(&[]);
    let mut alice = daemon.connect("user=alice");
    daemon.post("/publish?user=alice", "one");
    daemon.post("/broadcast", "two");
    assert_eq!(read_text(&mut alice), "one");
    assert_eq!(read_text(&mut alice), "two");

    // Counters are bumped right after the write that the client may already have read.
    let deadline = Instant::now() + Duration::from_secs(5);
    let stats = loop {
        let stats = daemon.get("/stats");
        if stats.text().contains(r#""messages_out_total":2"#) || Instant::now() > deadline {
            break stats;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(stats.status, 200);
    assert_eq!(stats.header("content-type"), Some("application/json"));
    let json = stats.text();
    for expected in [
        r#""connections":1"#,
        r#""users":1"#,
        r#""upgrades_total":1"#,
        r#""publishes_total":1"#,
        r#""broadcasts_total":1"#,
        r#""messages_out_total":2"#,
    ] {
        assert!(json.contains(expected), "{expected} missing in {json}");
    }
    for field in [
        "handshakes",
        "accepted_total",
        "rejected_total",
        "over_capacity_total",
        "messages_in_total",
        "bytes_out_total",
        "dropped_total",
        "slow_consumer_closes_total",
        "protocol_errors_total",
        "timeouts_total",
        "pings_total",
        "ip_limited_total",
    ] {
        assert!(json.contains(&format!("\"{field}\":")), "{field} missing in {json}");
    }
    assert!(json.starts_with('{') && json.ends_with('}'));

    let metrics = daemon.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics.header("content-type").unwrap().starts_with("text/plain"));
    let text = metrics.text();
    for expected in [
        "# TYPE wspush_connections gauge\nwspush_connections 1\n",
        "# TYPE wspush_publishes_total counter\nwspush_publishes_total 1\n",
        "# TYPE wspush_broadcasts_total counter\nwspush_broadcasts_total 1\n",
        "# TYPE wspush_messages_out_total counter\nwspush_messages_out_total 2\n",
    ] {
        assert!(text.contains(expected), "{expected:?} missing in {text}");
    }
    // Exposition format: every sample has HELP and TYPE lines, counters end in _total.
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let (name, value) = line.split_once(' ').unwrap();
        assert!(value.parse::<u64>().is_ok(), "bad sample {line:?}");
        assert!(text.contains(&format!("# HELP {name} ")), "no HELP for {name}");
        let kind = if text.contains(&format!("# TYPE {name} counter\n")) { "counter" } else { "gauge" };
        assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "no TYPE for {name}");
        assert_eq!(kind == "counter", name.ends_with("_total"), "{name} is a {kind}");
    }
}

#[test]
fn healthz_answers_ok() {
    let daemon = Daemon::start(&[]);
    let response = daemon.get("/healthz");
    assert_eq!((response.status, response.text()), (200, "ok"));
}

// ------------------------------------------------------------------------------------- bad input

#[test]
fn admin_answers_bad_requests_with_a_status_and_a_reason() {
    let daemon = Daemon::start(&["--max-message-size", "1024", "--max-queue-bytes", "1024"]);
    let long_user = format!("/publish?user={}", "u".repeat(256));
    let cases: Vec<(Response, u16)> = vec![
        (daemon.get("/nope"), 404),
        (daemon.post("/", ""), 404),
        (daemon.get("/publish?user=alice"), 405),
        (daemon.post("/stats", ""), 405),
        (daemon.post("/publish", "x"), 400),
        (daemon.post("/publish?user=", "x"), 400),
        (daemon.post("/publish?user=%zz", "x"), 400),
        (daemon.post(&long_user, "x"), 400),
        (daemon.post("/disconnect", ""), 400),
        (daemon.post("/disconnect?user=alice&code=999", ""), 400),
        (daemon.post("/disconnect?user=alice&code=1005", ""), 400),
        (daemon.post("/disconnect?user=alice&code=abc", ""), 400),
        (daemon.request("POST", "/publish?user=alice", &[], &[0xff, 0xfe]), 400),
        (daemon.post("/publish?user=alice", &"x".repeat(1025)), 413),
        (daemon.request("POST", "/publish?user=alice", &[("Transfer-Encoding", "chunked")], b""), 411),
    ];
    for (index, (response, status)) in cases.iter().enumerate() {
        assert_eq!(response.status, *status, "case {index}: {response:?}");
        let reason = response.text();
        assert!(reason.ends_with('\n') && reason.trim().lines().count() == 1, "case {index}: reason {reason:?}");
    }
    assert_eq!(cases[2].0.header("allow"), Some("POST"));
    // The largest allowed body still goes through.
    assert_eq!(daemon.post("/publish?user=alice", &"x".repeat(1024)).status, 200);

    // Garbage that is not HTTP at all.
    let mut http = daemon.admin();
    http.write(b"NOT HTTP AT ALL\r\n\r\n");
    assert_eq!(http.read_response().status, 400);
    assert!(http.is_closed_by_server());
}

#[test]
fn an_oversized_body_gets_413_even_while_it_is_still_being_sent() {
    let daemon = Daemon::start(&["--max-message-size", "1024", "--max-queue-bytes", "1024"]);
    let mut http = daemon.admin();
    let body = vec![b'x'; 2 * 1024 * 1024];
    let writer = http.reader.get_ref().try_clone().unwrap();
    // The server answers after the head, long before the body is through; it must not reset the
    // connection (losing its answer) because the rest of the body is still arriving.
    let admin = daemon.admin;
    let sender = std::thread::spawn(move || {
        let mut writer = writer;
        let head =
            format!("POST /publish?user=alice HTTP/1.1\r\nHost: {admin}\r\nContent-Length: {}\r\n\r\n", body.len());
        writer.write_all(head.as_bytes()).and_then(|_| writer.write_all(&body))
    });
    let response = http.read_response();
    assert_eq!(response.status, 413);
    assert_eq!(response.text(), "request body too large\n");
    assert_eq!(response.header("connection"), Some("close"));
    assert!(sender.join().unwrap().is_ok(), "the server reset the connection while the body was sent");
}

#[test]
fn oversized_request_heads_are_refused() {
    let daemon = Daemon::start(&[]);
    let mut http = daemon.admin();
    let huge = "x".repeat(20 * 1024);
    http.write(format!("GET /stats HTTP/1.1\r\nX-Filler: {huge}\r\n\r\n").as_bytes());
    assert_eq!(http.read_response().status, 431);
    assert!(http.is_closed_by_server());
}

// ------------------------------------------------------------------------------------- connections

#[test]
fn keep_alive_serves_a_thousand_publishes_on_one_connection() {
    let daemon = Daemon::start(&[]);
    let mut alice = daemon.connect("user=alice");
    let mut http = daemon.admin();
    for n in 0..1000 {
        let response = http.request("POST", "/publish?user=alice", &[], format!("message {n}").as_bytes());
        assert_eq!(response.status, 200, "request {n}");
        assert_eq!(response.text(), format!(r#"{{"delivered":1,"offset":{}}}"#, n + 1), "request {n}");
        assert_eq!(response.header("connection"), None);
    }
    for n in 0..1000 {
        assert_eq!(read_text(&mut alice), format!("message {n}"));
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let daemon = Daemon::start(&[]);
    let _alice = daemon.connect("user=alice");
    let mut http = daemon.admin();
    let mut batch = Vec::new();
    for n in 0..50 {
        let target = if n % 2 == 0 { "/publish?user=alice" } else { "/publish?user=nobody" };
        let host = daemon.admin;
        batch.extend_from_slice(
            format!("POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1\r\n\r\nx").as_bytes(),
        );
    }
    batch.extend_from_slice(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", daemon.admin).as_bytes());
    http.write(&batch);
    for n in 0..50 {
        let (delivered, offset) = if n % 2 == 0 { (1, n / 2 + 1) } else { (0, n / 2 + 1) };
        let expected = format!(r#"{{"delivered":{delivered},"offset":{offset}}}"#);
        assert_eq!(http.read_response().text(), expected, "response {n}");
    }
    assert_eq!(http.read_response().text(), "ok");
}

#[test]
fn connection_close_and_http_1_0_end_the_connection_after_the_response() {
    let daemon = Daemon::start(&[]);
    let mut http = daemon.admin();
    let response = http.request("GET", "/healthz", &[("Connection", "close")], b"");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(http.is_closed_by_server());

    let mut http = daemon.admin();
    http.write(b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(http.read_response().status, 200);
    assert!(http.is_closed_by_server());
}

#[test]
fn expect_100_continue_gets_an_interim_response() {
    let daemon = Daemon::start(&[]);
    let mut http = daemon.admin();
    let head = format!(
        "POST /broadcast HTTP/1.1\r\nHost: {}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        daemon.admin
    );
    http.write(head.as_bytes());
    assert_eq!(http.read_response().status, 100);
    http.write(b"hello");
    let response = http.read_response();
    assert_eq!((response.status, response.text()), (200, r#"{"delivered":0}"#));
}

#[test]
fn idle_admin_connections_are_closed() {
    let daemon = Daemon::start(&["--admin-idle-timeout-ms", "200"]);
    let mut http = daemon.admin();
    assert_eq!(http.request("GET", "/healthz", &[], b"").status, 200);
    let started = Instant::now();
    assert!(http.is_closed_by_server());
    assert!(started.elapsed() < Duration::from_secs(5));
}

// ------------------------------------------------------------------------------------- public port

#[test]
fn public_port_serves_the_demo_page_and_426_on_the_websocket_path() {
    let daemon = Daemon::start(&[]);
    let page = Http::connect(daemon.ws).request("GET", "/", &[], b"");
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    let html = page.text();
    for expected in
        ["id=\"state\"", "id=\"notifications\"", "\"notification\"", "from \"./wspush.js\"", "\"path\": \"/ws\""]
    {
        assert!(html.contains(expected), "{expected} missing from the demo page");
    }
    assert!(html.contains(&format!("\"admin\": \"http://{}\"", daemon.admin)));
    // The browser client the page imports (bindings/js/wspush.js).
    let client = Http::connect(daemon.ws).request("GET", "/wspush.js", &[], b"");
    assert_eq!(client.status, 200);
    assert_eq!(client.header("content-type"), Some("text/javascript; charset=utf-8"));
    assert!(client.text().contains("new this.#WebSocket(resumeUrl(target, since), PROTOCOL)"));

    assert_eq!(Http::connect(daemon.ws).request("GET", "/ws", &[], b"").status, 426);
    assert_eq!(Http::connect(daemon.ws).request("GET", "/nope", &[], b"").status, 404);
}

#[test]
fn demo_upgrade_without_a_user_is_refused() {
    let daemon = Daemon::start(&[]);
    for query in ["", "user=", "user=%zz"] {
        let stream = TcpStream::connect(daemon.ws).unwrap();
        match tungstenite::client(format!("ws://{}/ws?{query}", daemon.ws), stream) {
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                assert_eq!(response.status(), 400, "query {query:?}")
            }
            other => panic!("query {query:?}: expected 400, got {:?}", other.map(|_| ())),
        }
    }
}

// ------------------------------------------------------------------------------------- security

/// A file holding `content` in a fresh temporary directory, removed when dropped.
struct SecretFile(PathBuf);

impl SecretFile {
    fn new(name: &str, content: &[u8]) -> SecretFile {
        let dir = std::env::temp_dir().join(format!("wspushd-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        SecretFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

const JWT_SECRET: &[u8] = b"the daemon's HS256 secret, 32+ bytes";

fn token_for(sub: &str) -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 60;
    common::sign_jwt(r#"{"alg":"HS256","typ":"JWT"}"#, &format!(r#"{{"sub":"{sub}","exp":{exp}}}"#), JWT_SECRET)
}

/// The status and body a WebSocket upgrade for `target` gets.
fn upgrade_status(addr: SocketAddr, target: &str) -> (u16, String) {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    match tungstenite::client(format!("ws://{addr}{target}"), stream) {
        Ok(_) => (101, String::new()),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            let body = response.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            (response.status().as_u16(), body)
        }
        Err(e) => panic!("{target}: {e}"),
    }
}

#[test]
fn jwt_mode_lets_in_the_subject_of_a_valid_token_and_nobody_else() {
    let secret = SecretFile::new("jwt", &[JWT_SECRET, b"\n"].concat());
    let daemon = Daemon::start_with_auth(&["--jwt-secret-file", secret.path()], &[]);
    let mut alice = daemon.connect(&format!("token={}", token_for("alice")));
    let response = daemon.post("/publish?user=alice", "for alice");
    assert_eq!((response.status, response.text()), (200, r#"{"delivered":1,"offset":1}"#));
    assert_eq!(read_text(&mut alice), "for alice");

    for target in ["/ws?user=alice", "/ws?token=abc.def.ghi", "/ws"] {
        assert_eq!(upgrade_status(daemon.ws, target), (401, "invalid token\n".to_string()), "{target}");
    }
    // The demo page is a demo-mode feature only.
    assert_eq!(Http::connect(daemon.ws).request("GET", "/", &[], b"").status, 404);
    daemon.wait_for_stdout("mode JWT (HS256)");
}

#[test]
fn a_jwt_secret_that_is_too_short_or_combined_with_demo_is_a_usage_error() {
    let short = SecretFile::new("short", b"not 32 bytes");
    let output = run_to_exit(&["--jwt-secret-file", short.path(), "--listen", "127.0.0.1:0"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("at least 32"));
    let good = SecretFile::new("good", JWT_SECRET);
    let output = run_to_exit(&["--demo", "--jwt-secret-file", good.path()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("exclude each other"));
}

#[test]
fn with_an_admin_token_every_admin_request_needs_it() {
    let token = SecretFile::new("admin", b"s3cret-admin-token-0123456789\n");
    let daemon = Daemon::start(&["--admin-token-file", token.path()]);
    let mut refused = daemon.admin();
    let response = refused.request("POST", "/broadcast", &[], b"x");
    assert_eq!(response.status, 401);
    assert_eq!(response.header("www-authenticate"), Some("Bearer realm=\"wspushd-admin\""));
    assert!(refused.is_closed_by_server(), "an unauthorized caller gets nothing more on that connection");
    for header in
        ["Bearer wrong-token-0123456789", "Basic s3cret-admin-token-0123456789", "Bearer s3cret-admin-token-012345678"]
    {
        let response = daemon.request("GET", "/stats", &[("Authorization", header)], b"");
        assert_eq!(response.status, 401, "{header}");
    }
    assert_eq!(daemon.get("/healthz").status, 401);
    let good = [("Authorization", "Bearer s3cret-admin-token-0123456789")];
    assert_eq!(daemon.request("GET", "/healthz", &good, b"").status, 200);
    let mut ws = daemon.connect("user=bob");
    let mut admin = daemon.admin();
    // Keep-alive works for an authorized caller: two requests on one connection.
    assert_eq!(admin.request("POST", "/publish?user=bob", &good, b"one").text(), r#"{"delivered":1,"offset":1}"#);
    assert_eq!(admin.request("POST", "/publish?user=bob", &good, b"two").text(), r#"{"delivered":1,"offset":2}"#);
    assert_eq!((read_text(&mut ws), read_text(&mut ws)), ("one".to_string(), "two".to_string()));
}

#[test]
fn per_ip_limits_are_on_by_default_and_answer_429() {
    let daemon = Daemon::start(&["--max-connections-per-ip", "2"]);
    let _a = daemon.connect("user=a");
    let _b = daemon.connect("user=b");
    assert_eq!(upgrade_status(daemon.ws, "/ws?user=c").0, 429);
    assert!(daemon.get("/stats").text().contains(r#""ip_limited_total":1"#));
    // The handshake rate limit is on without any flag: a burst past 100/s from one address is
    // refused (the connection cap of 2 is lifted for this part).
    let daemon = Daemon::start(&[]);
    let statuses: Vec<u16> = (0..150).map(|i| upgrade_status(daemon.ws, &format!("/ws?user=u{i}")).0).collect();
    assert!(statuses.contains(&429), "no 429 in a burst of 150 handshakes: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 101 || *s == 429), "{statuses:?}");
}

// ------------------------------------------------------------------------------------- hostile clients

/// Sends `request` (raw bytes: head and body) on a fresh admin connection; returns the response
/// and whether the server closed the connection after it.
fn raw_admin_request(daemon: &Daemon, request: &str) -> (Response, bool) {
    let mut http = daemon.admin();
    http.write(request.as_bytes());
    let response = http.read_response();
    (response, http.is_closed_by_server())
}

#[test]
fn cross_site_browser_requests_to_the_admin_api_are_refused() {
    let daemon = Daemon::start(&[]);
    let mut alice = daemon.connect("user=alice");
    let own_origin = format!("http://{}", daemon.admin);
    // What a page on another origin gets through with fetch(url, {mode: "no-cors", method: "POST"})
    // (a CORS simple request: no preflight), and what a rebound or sandboxed page sends.
    let refused: [&[(&str, &str)]; 6] = [
        &[("Origin", "https://evil.example"), ("Sec-Fetch-Site", "cross-site")],
        &[("Origin", "https://evil.example")],
        &[("Origin", "null")],
        &[("Origin", &own_origin)],
        &[("Sec-Fetch-Site", "cross-site")],
        &[("Sec-Fetch-Site", "same-site")],
    ];
    for headers in refused {
        for (method, target) in [("POST", "/broadcast"), ("POST", "/publish?user=alice"), ("GET", "/stats")] {
            let mut http = daemon.admin();
            let response = http.request(method, target, headers, b"forged");
            assert_eq!(response.status, 403, "{method} {target} {headers:?}");
            assert!(http.is_closed_by_server(), "{method} {target} {headers:?}");
        }
    }
    assert_nothing_arrives(&mut alice);
    // curl and backends send neither header; a browser sends `none` when the user typed the URL.
    let allowed: [&[(&str, &str)]; 3] = [&[], &[("Sec-Fetch-Site", "none")], &[("Sec-Fetch-Site", "same-origin")]];
    for (offset, headers) in (1..).zip(allowed) {
        let response = daemon.request("POST", "/publish?user=alice", headers, b"from the backend");
        let expected = format!(r#"{{"delivered":1,"offset":{offset}}}"#);
        assert_eq!((response.status, response.text()), (200, expected.as_str()), "{headers:?}");
        assert_eq!(read_text(&mut alice), "from the backend");
    }
    let metrics = daemon.get("/metrics");
    assert!(metrics.text().contains("\nwspushd_admin_client_errors_total 18\n"), "{}", metrics.text());
}

#[test]
fn admin_requests_naming_a_foreign_host_are_refused() {
    let daemon = Daemon::start(&["--admin-allowed-host", "push-admin.internal"]);
    let mut alice = daemon.connect("user=alice");
    let port = daemon.admin.port();
    let publish = |host_lines: &str| {
        let request = format!("POST /publish?user=alice HTTP/1.1\r\n{host_lines}Content-Length: 2\r\n\r\nhi");
        raw_admin_request(&daemon, &request)
    };
    // DNS rebinding: the attacker's name first resolved to the attacker's server, then to
    // 127.0.0.1; the browser, still on the attacker's origin, names it in Host.
    for host in [
        "rebind.evil.example".to_string(),
        format!("rebind.evil.example:{port}"),
        "localhost.evil.example".into(),
        "127.0.0.1.nip.io".into(),
        "push-admin.internal.evil.example".into(),
    ] {
        let (response, closed) = publish(&format!("Host: {host}\r\n"));
        assert_eq!(response.status, 421, "{host}: {response:?}");
        assert!(closed, "{host}");
    }
    let stats = raw_admin_request(&daemon, "GET /stats HTTP/1.1\r\nHost: rebind.evil.example\r\n\r\n").0;
    assert_eq!(stats.status, 421);
    // HTTP/1.1 requires exactly one valid Host (RFC 9112, section 3.2).
    for host_lines in
        ["", "Host: localhost\r\nHost: localhost\r\n", "Host: \r\n", "Host: a b\r\n", "Host: me@localhost\r\n"]
    {
        let (response, closed) = publish(host_lines);
        assert_eq!(response.status, 400, "{host_lines:?}: {response:?}");
        assert!(closed, "{host_lines:?}");
    }
    assert_nothing_arrives(&mut alice);

    // The admin address, loopback names and addresses (any port: a tunnel may forward another),
    // and the names given with --admin-allowed-host.
    for host in [
        daemon.admin.to_string(),
        "127.0.0.1".into(),
        "localhost".into(),
        format!("LocalHost:{port}"),
        "localhost:9999".into(),
        format!("[::1]:{port}"),
        "push-admin.internal".into(),
        format!("Push-Admin.Internal:{port}"),
    ] {
        let (response, _) = publish(&format!("Host: {host}\r\nConnection: close\r\n"));
        assert_eq!(response.status, 200, "{host}: {response:?}");
        assert_eq!(read_text(&mut alice), "hi");
    }
    // HTTP/1.0 has no Host requirement (and no browser speaks it).
    assert_eq!(raw_admin_request(&daemon, "GET /healthz HTTP/1.0\r\n\r\n").0.status, 200);
}

#[test]
fn idle_sockets_cannot_lock_the_backend_out_of_the_admin_api() {
    let token = SecretFile::new("idle", b"s3cret-admin-token-0123456789\n");
    let daemon = Daemon::start(&["--admin-token-file", token.path()]);
    let mut alice = daemon.connect("user=alice");
    let auth = [("Authorization", "Bearer s3cret-admin-token-0123456789")];
    // The backend's persistent connection, in use before the attack.
    let mut backend = daemon.admin();
    assert_eq!(backend.request("POST", "/publish?user=alice", &auth, b"before").status, 200);
    assert_eq!(read_text(&mut alice), "before");

    let threads_before = daemon.threads();
    // More sockets than the daemon serves at once (256), from the backend's own address, none
    // of which ever sends a byte.
    let idle: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(daemon.admin).unwrap()).collect();
    let attack_opened = Instant::now();
    let started = Instant::now();
    let response = daemon.request("POST", "/publish?user=alice", &auth, b"during");
    let took = started.elapsed();
    assert_eq!((response.status, response.text()), (200, r#"{"delivered":1,"offset":2}"#));
    assert!(took < Duration::from_secs(3), "a new authorised connection waited {took:?}");
    assert_eq!(read_text(&mut alice), "during");
    // The idle persistent connection was not pushed out by the newcomers.
    assert_eq!(backend.request("POST", "/publish?user=alice", &auth, b"still").status, 200);
    assert_eq!(read_text(&mut alice), "still");
    // Admin connections are served by a fixed set of threads: the crowd started none.
    assert_eq!(daemon.threads(), threads_before, "threads before the crowd, and during it");

    // One address holds at most 32 admin connections: the others were closed at once (the
    // publish above was accepted after all of them) ...
    let closed = |mut socket: &TcpStream| {
        let mut byte = [0u8; 1];
        match socket.read(&mut byte) {
            Ok(read) => read == 0,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    };
    for socket in &idle {
        socket.set_nonblocking(true).unwrap();
    }
    let closed_at_once = idle.iter().filter(|socket| closed(socket)).count();
    assert!(closed_at_once >= 300 - 32, "only {closed_at_once} of 300 idle sockets closed at once");
    // ... and the rest once they have sent nothing for the first-byte deadline (2 s).
    for socket in &idle {
        socket.set_nonblocking(false).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(closed(socket), "an idle socket was still open after {:?}", attack_opened.elapsed());
    }
    assert!(attack_opened.elapsed() < Duration::from_secs(5), "idle sockets held {:?}", attack_opened.elapsed());
    let metrics = daemon.request("GET", "/metrics", &auth, b"");
    let evicted = metrics.text().lines().find_map(|line| line.strip_prefix("wspushd_admin_evicted_total "));
    let evicted: u64 = evicted.and_then(|count| count.parse().ok()).unwrap_or_else(|| panic!("{}", metrics.text()));
    assert!((300 - 32..=300).contains(&evicted), "{evicted} connections evicted");
}

/// Runs the daemon with `args`, expecting it to exit by itself within 10 s.
fn run_expecting_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(daemon_binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wspushd");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("wspushd {args:?} kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status.code(), stderr)
}

#[test]
fn echo_refuses_a_message_size_it_could_not_echo() {
    // The echo of a message that does not fit the send queue cannot be sent: it used to vanish,
    // the client waiting until its idle timeout for an answer.
    let ports = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    let args = [&["--demo", "--echo", "--max-message-size", "2048", "--max-queue-bytes", "1024"][..], &ports].concat();
    let (code, stderr) = run_expecting_exit(&args);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--echo") && stderr.contains("--max-queue-bytes") && stderr.contains("2052"), "{stderr}");
    // A 1021-byte message is framed with a 4-byte header: 1025 bytes, one more than the queue.
    let args = [&["--demo", "--echo", "--max-message-size", "1021", "--max-queue-bytes", "1024"][..], &ports].concat();
    assert_eq!(run_expecting_exit(&args).0, Some(2));
    // The largest size that fits is echoed in full.
    let daemon = Daemon::start(&["--echo", "--max-message-size", "1020", "--max-queue-bytes", "1024"]);
    let mut client = daemon.connect("user=tester");
    let message = "e".repeat(1020);
    client.send(Message::text(message.clone())).unwrap();
    assert_eq!(read_text(&mut client), message);
}

// ------------------------------------------------------------------------------------- process

fn run_to_exit(args: &[&str]) -> Output {
    Command::new(daemon_binary()).args(args).stdin(Stdio::null()).output().expect("run wspushd")
}

#[test]
fn starting_without_an_auth_mode_is_a_usage_error() {
    let output = run_to_exit(&["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no authentication mode") && stderr.contains("--demo"), "{stderr}");
}

#[test]
fn unknown_options_and_bad_values_are_usage_errors() {
    for (args, reason) in [
        (&["--demo", "--bogus"][..], "unknown option '--bogus'"),
        (&["--demo", "--threads", "many"], "--threads takes a non-negative integer, got 'many'"),
        (&["--demo", "--slow-consumer", "maybe"], "'maybe'"),
        (&["--demo", "--listen"], "--listen needs a value"),
    ] {
        let output = run_to_exit(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
        assert!(stderr.contains("USAGE"), "{args:?}: no usage in {stderr}");
    }
}

#[test]
fn help_documents_every_option() {
    let output = run_to_exit(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for option in [
        "--listen",
        "--path",
        "--admin-listen",
        "--demo",
        "--echo",
        "--threads",
        "--max-connections",
        "--max-connections-per-user",
        "--max-message-size",
        "--max-queue-bytes",
        "--slow-consumer",
        "--ping-interval-ms",
        "--idle-timeout-ms",
        "--handshake-timeout-ms",
        "--drain-timeout-ms",
        "--allowed-origin",
        "--admin-idle-timeout-ms",
        "--admin-token-file",
        "--admin-allowed-host",
        "--jwt-secret-file",
        "--jwt-leeway-ms",
        "--max-connections-per-ip",
        "--max-handshakes-per-ip-per-sec",
        "--max-pending-handshakes-per-ip",
        "--message-timeout-ms",
        "--max-partial-input-bytes",
        "POST /publish",
        "POST /broadcast",
        "POST /disconnect",
        "GET  /stats",
        "GET  /metrics",
        "GET  /healthz",
    ] {
        assert!(help.contains(option), "--help does not mention {option}");
    }
}

#[test]
fn listen_failure_is_a_runtime_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let output = run_to_exit(&["--demo", "--listen", "127.0.0.1:0", "--admin-listen", &port]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot listen on admin address"));
}

#[test]
fn demo_mode_warns_loudly() {
    let daemon = Daemon::start(&[]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !daemon.stderr.lock().unwrap().contains("WARNING: DEMO MODE, NO AUTHENTICATION") {
        assert!(Instant::now() < deadline, "no demo warning on stderr");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigterm_closes_clients_with_1001_and_exits_0() {
    let mut daemon = Daemon::start(&[]);
    let mut clients = [daemon.connect("user=alice"), daemon.connect("user=bob")];
    let pid = daemon.child.id() as libc::pid_t;
    // SAFETY: kill(2) with a valid signal number on the child we started and have not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    for client in clients.iter_mut() {
        assert_eq!(read_close_code(client), CloseCode::Away);
    }
    let status = daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    daemon.wait_for_stdout("stopping on SIGTERM: closing 2 connections with 1001");
    daemon.wait_for_stdout("wspushd stopped in ");
}

#[test]
fn sigint_also_stops_gracefully() {
    let mut daemon = Daemon::start(&[]);
    let mut client = daemon.connect("user=alice");
    // SAFETY: kill(2) with a valid signal number on the child we started and have not reaped.
    assert_eq!(unsafe { libc::kill(daemon.child.id() as libc::pid_t, libc::SIGINT) }, 0);
    assert_eq!(read_close_code(&mut client), CloseCode::Away);
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn a_signal_delivered_twice_still_stops_gracefully() {
    // GNU timeout, for one, signals both the child and its process group.
    let mut daemon = Daemon::start(&[]);
    let mut client = daemon.connect("user=alice");
    let pid = daemon.child.id() as libc::pid_t;
    for _ in 0..2 {
        // SAFETY: kill(2) with a valid signal number on the child we started and have not reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    }
    assert_eq!(read_close_code(&mut client), CloseCode::Away);
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

/// Out of descriptors (RLIMIT_NOFILE 256 here): the daemon caps its connections below the limit,
/// so clients past the cap are answered 503 at once rather than left unanswered in the backlog,
/// and the admin API (which shares the process's descriptors) still answers /stats.
#[test]
fn with_few_descriptors_clients_past_the_cap_get_503_and_stats_still_answer() {
    let mut prlimit = Command::new("prlimit");
    prlimit.args(["--nofile=256:256", "--"]).arg(daemon_binary());
    let daemon = Daemon::start_command(prlimit, &["--demo"], &common::NO_PER_IP_LIMITS);
    let said = Instant::now() + Duration::from_secs(5);
    while !daemon.stderr.lock().unwrap().contains("capped to") {
        assert!(Instant::now() < said, "the cap is said at start: {}", daemon.stderr.lock().unwrap());
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = daemon.get("/stats");
    assert_eq!(stats.status, 200);
    let cap: usize = stats
        .text()
        .split("\"max_connections\":")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .expect("max_connections in /stats");
    assert!(cap > 0 && cap + 64 <= 256, "cap {cap}");
    let mut open = Vec::new();
    for i in 0..cap {
        open.push(daemon.connect(&format!("user=u{i}")));
    }
    let started = Instant::now();
    for _ in 0..20 {
        let (status, _) = upgrade_status(daemon.ws, "/ws?user=late");
        assert_eq!(status, 503);
    }
    assert!(started.elapsed() < Duration::from_secs(5), "20 refusals took {:?}", started.elapsed());
    let stats = daemon.get("/stats");
    assert_eq!(stats.status, 200, "the admin API still answers at the cap");
    assert!(stats.text().contains("\"over_capacity_total\":20"), "{}", stats.text());
    drop(open);
}
