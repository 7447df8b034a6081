//! Shared helpers for the integration tests: a recording handler whose decisions each test can
//! override, a tungstenite client, and raw TCP helpers that send hand-made bytes and read raw
//! HTTP responses and frames. Every read has a timeout so an engine bug fails a test instead of
//! hanging it.

#![allow(dead_code)] // each test binary uses a different subset

pub mod processes;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

pub use tungstenite::Message;
use wspush::{
    Config, ConnId, Handler, HttpResponse, MessageKind, Request, Server, ServerHandle, Stats, UpgradeDecision,
};

/// How long a test waits for something that should happen promptly before failing.
pub const WAIT: Duration = Duration::from_secs(5);

/// The RFC 6455 example key and its accept value.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// wspushd flags that turn its per-address limits off: load tools and tests that open hundreds of
/// connections from one address at once would be refused 429 otherwise.
pub const NO_PER_IP_LIMITS: [&str; 6] =
    ["--max-connections-per-ip", "0", "--max-handshakes-per-ip-per-sec", "0", "--max-pending-handshakes-per-ip", "0"];

/// A config for tests: ephemeral port, one I/O thread, short close and drain timeouts so that
/// dropping a server at the end of a test never waits long.
pub fn config() -> Config {
    Config {
        listen: "127.0.0.1:0".into(),
        threads: 1,
        close_timeout: Duration::from_millis(500),
        drain_timeout: Duration::from_secs(1),
        ..Config::default()
    }
}

// ------------------------------------------------------------------------------------ handler

/// A callback as the handler saw it (owned copies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Open { conn: ConnId, user: Vec<u8> },
    Message { conn: ConnId, user: Vec<u8>, kind: MessageKind, payload: Vec<u8> },
    Close { conn: ConnId, user: Vec<u8>, code: u16 },
    Drop { conn: ConnId, user: Vec<u8>, bytes: usize },
}

type UpgradeFn = dyn Fn(&ServerHandle, &Request<'_>) -> UpgradeDecision + Send + Sync;
type MessageFn = dyn Fn(&ServerHandle, ConnId, &[u8], MessageKind, &[u8]) + Send + Sync;
type HttpFn = dyn Fn(&ServerHandle, &Request<'_>) -> Option<HttpResponse> + Send + Sync;

/// Records every callback into a channel; upgrade, message and HTTP behaviour are pluggable.
/// By default an upgrade is accepted as the `user` query parameter (401 without one).
pub struct TestHandler {
    events: Sender<Event>,
    upgrade: Box<UpgradeFn>,
    message: Option<Box<MessageFn>>,
    http: Option<Box<HttpFn>>,
}

/// Accept as `?user=...`, reject 401 without it.
pub fn user_from_query(_: &ServerHandle, request: &Request<'_>) -> UpgradeDecision {
    match request.query_param("user") {
        Some(user) if !user.is_empty() => UpgradeDecision::Accept(user.as_bytes().to_vec()),
        _ => UpgradeDecision::Reject(401),
    }
}

impl Handler for TestHandler {
    fn on_upgrade(&self, server: &ServerHandle, request: &Request<'_>) -> UpgradeDecision {
        (self.upgrade)(server, request)
    }
    fn on_open(&self, _: &ServerHandle, conn: ConnId, user: &[u8]) {
        let _ = self.events.send(Event::Open { conn, user: user.to_vec() });
    }
    fn on_message(&self, server: &ServerHandle, conn: ConnId, user: &[u8], kind: MessageKind, payload: &[u8]) {
        let _ = self.events.send(Event::Message { conn, user: user.to_vec(), kind, payload: payload.to_vec() });
        if let Some(message) = &self.message {
            message(server, conn, user, kind, payload);
        }
    }
    fn on_close(&self, _: &ServerHandle, conn: ConnId, user: &[u8], code: u16) {
        let _ = self.events.send(Event::Close { conn, user: user.to_vec(), code });
    }
    fn on_drop(&self, _: &ServerHandle, conn: ConnId, user: &[u8], dropped_bytes: usize) {
        let _ = self.events.send(Event::Drop { conn, user: user.to_vec(), bytes: dropped_bytes });
    }
    fn on_http(&self, server: &ServerHandle, request: &Request<'_>) -> Option<HttpResponse> {
        self.http.as_ref().and_then(|http| http(server, request))
    }
}

/// Builds a server with a [`TestHandler`].
pub struct Harness {
    config: Config,
    upgrade: Box<UpgradeFn>,
    message: Option<Box<MessageFn>>,
    http: Option<Box<HttpFn>>,
}

impl Harness {
    pub fn new(config: Config) -> Harness {
        Harness { config, upgrade: Box::new(user_from_query), message: None, http: None }
    }

    pub fn on_upgrade(
        mut self,
        f: impl Fn(&ServerHandle, &Request<'_>) -> UpgradeDecision + Send + Sync + 'static,
    ) -> Self {
        self.upgrade = Box::new(f);
        self
    }

    pub fn on_message(
        mut self,
        f: impl Fn(&ServerHandle, ConnId, &[u8], MessageKind, &[u8]) + Send + Sync + 'static,
    ) -> Self {
        self.message = Some(Box::new(f));
        self
    }

    pub fn on_http(
        mut self,
        f: impl Fn(&ServerHandle, &Request<'_>) -> Option<HttpResponse> + Send + Sync + 'static,
    ) -> Self {
        self.http = Some(Box::new(f));
        self
    }

    pub fn start(self) -> (Server, Events) {
        let (tx, rx) = mpsc::channel();
        let handler = TestHandler { events: tx, upgrade: self.upgrade, message: self.message, http: self.http };
        let server = Server::start(self.config, handler).expect("server starts");
        (server, Events { rx, backlog: Vec::new() })
    }
}

/// Starts a server with the default test handler.
pub fn start(config: Config) -> (Server, Events) {
    Harness::new(config).start()
}

/// The receiving end of a [`TestHandler`]: waits for particular events, keeping the others.
pub struct Events {
    rx: Receiver<Event>,
    backlog: Vec<Event>,
}

impl Events {
    /// The first event (in arrival order) matching `pred`, waiting up to `WAIT`.
    pub fn wait(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(event) if pred(&event) => return event,
                Ok(event) => self.backlog.push(event),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("timed out waiting for {what}; other events: {:?}", self.backlog)
                }
                Err(RecvTimeoutError::Disconnected) => panic!("handler dropped while waiting for {what}"),
            }
        }
    }

    /// The next on_open of `user`; returns its connection ID.
    pub fn opened(&mut self, user: &[u8]) -> ConnId {
        match self.wait("on_open", |e| matches!(e, Event::Open { user: u, .. } if u == user)) {
            Event::Open { conn, .. } => conn,
            _ => unreachable!(),
        }
    }

    /// The on_close code of `conn`.
    pub fn closed(&mut self, conn: ConnId) -> u16 {
        match self.wait("on_close", |e| matches!(e, Event::Close { conn: c, .. } if *c == conn)) {
            Event::Close { code, .. } => code,
            _ => unreachable!(),
        }
    }

    /// The next on_message of `conn`.
    pub fn message(&mut self, conn: ConnId) -> (MessageKind, Vec<u8>) {
        match self.wait("on_message", |e| matches!(e, Event::Message { conn: c, .. } if *c == conn)) {
            Event::Message { kind, payload, .. } => (kind, payload),
            _ => unreachable!(),
        }
    }

    /// Every event received within `settle` from now (plus the backlog), consuming them.
    pub fn collect_for(&mut self, settle: Duration) -> Vec<Event> {
        let deadline = Instant::now() + settle;
        let mut out = std::mem::take(&mut self.backlog);
        while let Ok(event) = self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            out.push(event);
        }
        out
    }

    /// Asserts that no event matching `pred` arrives within `period` (others are kept).
    pub fn assert_none(&mut self, what: &str, period: Duration, pred: impl Fn(&Event) -> bool) {
        let deadline = Instant::now() + period;
        assert!(!self.backlog.iter().any(&pred), "unexpected {what}: {:?}", self.backlog);
        while let Ok(event) = self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            assert!(!pred(&event), "unexpected {what}: {event:?}");
            self.backlog.push(event);
        }
    }
}

/// Polls `cond` until it holds (up to `WAIT`); for gauges that the I/O threads update after
/// the client-visible effect.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until `f(stats)` holds; returns the stats that satisfied it.
pub fn stats_until(server: &ServerHandle, what: &str, f: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = server.stats();
        if f(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; stats: {stats:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ------------------------------------------------------------------------------ tungstenite

pub type Ws = tungstenite::WebSocket<TcpStream>;

fn tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Opens a WebSocket to `target` (path and query) with extra request headers; `Err(status)`
/// when the server answers with an HTTP error.
pub fn ws_try_connect_with(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Result<Ws, u16> {
    use tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}{target}").into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            tungstenite::http::HeaderValue::from_str(value).unwrap(),
        );
    }
    match tungstenite::client(request, tcp(addr)) {
        Ok((ws, response)) => {
            assert_eq!(response.status().as_u16(), 101);
            Ok(ws)
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(response.status().as_u16())
        }
        Err(tungstenite::HandshakeError::Failure(e)) => panic!("handshake failed: {e}"),
        Err(tungstenite::HandshakeError::Interrupted(_)) => panic!("handshake timed out"),
    }
}

pub fn ws_try_connect(addr: SocketAddr, target: &str) -> Result<Ws, u16> {
    ws_try_connect_with(addr, target, &[])
}

/// The profile directory this test binary was built into (<target-dir>/<profile-dir>) and the
/// profile's name, so helper builds match it (`cargo test --release` drives release binaries).
fn build_profile() -> (std::path::PathBuf, String) {
    // The test executable lives in <target-dir>/<profile-dir>/deps/.
    let test_exe = std::env::current_exe().expect("test executable path");
    let profile_dir = test_exe.parent().and_then(|deps| deps.parent()).expect("profile dir").to_path_buf();
    let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(other) => other.to_string(),
    };
    (profile_dir, profile)
}

/// `cargo build --quiet` with this test binary's profile and target dir, plus `args`.
fn cargo_build(args: &[&str]) -> std::process::ExitStatus {
    let (profile_dir, profile) = build_profile();
    let target_dir = profile_dir.parent().expect("target dir");
    std::process::Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--profile", &profile, "--target-dir"])
        .arg(target_dir)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build")
}

/// Builds the binary of the workspace package `package` (e.g. loadgen, a crate of its own under
/// examples/) likewise and returns the binary's path.
pub fn build_workspace_binary(package: &str) -> std::path::PathBuf {
    assert!(cargo_build(&["-p", package, "--bin", package]).success(), "cargo build of {package} failed");
    build_profile().0.join(package)
}

/// Signs a JSON Web Token (HS256) over the given header and claims JSON, as an issuer would.
pub fn sign_jwt(header: &str, claims: &str, secret: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let b64 = |bytes: &[u8]| data_encoding::BASE64URL_NOPAD.encode(bytes);
    let signing_input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret).unwrap();
    mac.update(signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&mac.finalize().into_bytes()))
}

/// Opens a WebSocket as `user` (query parameter of the default handler).
pub fn ws_connect(addr: SocketAddr, user: &str) -> Ws {
    ws_try_connect(addr, &format!("/ws?user={user}")).unwrap_or_else(|status| panic!("upgrade rejected: {status}"))
}

/// The next data or close message (pings and pongs are answered by tungstenite and skipped).
pub fn ws_next(ws: &mut Ws) -> Message {
    loop {
        match ws.read() {
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(message) => return message,
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

pub fn ws_text(ws: &mut Ws) -> String {
    match ws_next(ws) {
        Message::Text(text) => text.as_str().to_owned(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

pub fn ws_binary(ws: &mut Ws) -> Vec<u8> {
    match ws_next(ws) {
        Message::Binary(data) => data.to_vec(),
        other => panic!("expected a binary message, got {other:?}"),
    }
}

/// Reads the server's close frame: (code, reason).
pub fn ws_close_frame(ws: &mut Ws) -> (u16, String) {
    match ws_next(ws) {
        Message::Close(Some(frame)) => (u16::from(frame.code), frame.reason.as_str().to_owned()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// After the close handshake: the next read reports the connection closed.
pub fn ws_expect_end(ws: &mut Ws) {
    loop {
        match ws.read() {
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(other) => panic!("expected the end of the connection, got {other:?}"),
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => return,
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("expected a clean end, got {e}"),
        }
    }
}

// --------------------------------------------------------------------------------- wspush.v1

/// A `wspush.v1` client as `user`, resuming from `since` if given.
pub fn v1_connect(server: &ServerHandle, user: &str, since: Option<&str>) -> Ws {
    let target = match since {
        Some(since) => format!("/ws?user={user}&since={}", since.replace(':', "%3A")),
        None => format!("/ws?user={user}"),
    };
    ws_try_connect_with(server.local_addr(), &target, &[("Sec-WebSocket-Protocol", "wspush.v1")])
        .unwrap_or_else(|status| panic!("upgrade refused: {status}"))
}

pub fn next_json(ws: &mut Ws) -> serde_json::Value {
    serde_json::from_str(&ws_text(ws)).expect("a v1 frame is one JSON object")
}

/// The welcome: (epoch, offset, recovered).
pub fn welcome(ws: &mut Ws) -> (String, u64, bool) {
    let frame = next_json(ws);
    assert_eq!(frame["type"], "welcome", "{frame}");
    let epoch = frame["epoch"].as_str().expect("epoch").to_owned();
    (epoch, frame["offset"].as_u64().expect("offset"), frame["recovered"].as_bool().expect("recovered"))
}

/// The next message: (offset, text).
pub fn v1_message(ws: &mut Ws) -> (Option<u64>, String) {
    let frame = next_json(ws);
    assert_eq!(frame["type"], "message", "{frame}");
    (frame["offset"].as_u64(), frame["data"].as_str().expect("text data").to_owned())
}

// ------------------------------------------------------------------------------------- raw

/// A hand-made upgrade request for `target` with optional extra header lines ("Name: value\r\n").
pub fn upgrade_request(target: &str, extra: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
    )
}

/// A masked client frame: `first` is FIN/RSV/opcode, e.g. 0x81 for a final text frame.
pub fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    encode_frame(first, payload, Some([0x37, 0xfa, 0x21, 0x3d]))
}

/// An unmasked frame (what a server sends; illegal from a client).
pub fn unmasked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    encode_frame(first, payload, None)
}

fn encode_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(mask) => {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A close frame payload: code then reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    payload
}

/// A frame as received from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The code of a close frame (None for an empty one).
    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, 8, "not a close frame: {self:?}");
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// A parsed HTTP response head plus its body (by Content-Length).
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// How a read of a closing connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Orderly FIN.
    Eof,
    /// RST.
    Reset,
}

/// A TCP client that sends exactly the bytes it is given and parses what comes back.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        Raw::from_stream(tcp(addr))
    }

    pub fn from_stream(stream: TcpStream) -> Raw {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Raw { stream, buf: Vec::new() }
    }

    /// Connects and completes a WebSocket upgrade for `target`, asserting the 101.
    pub fn upgrade(addr: SocketAddr, target: &str) -> Raw {
        let mut raw = Raw::connect(addr);
        raw.handshake(target, "");
        raw
    }

    /// Sends an upgrade request on this socket and asserts the 101 response.
    pub fn handshake(&mut self, target: &str, extra: &str) {
        self.send(upgrade_request(target, extra).as_bytes());
        let response = self.read_response_head();
        assert_eq!(response.status, 101, "upgrade refused: {response:?}");
        assert_eq!(response.header("sec-websocket-accept"), Some(ACCEPT));
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Reads more bytes into the buffer; 0 means the peer closed. Panics on timeout.
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    panic!("timed out reading from the server (buffered: {:?})", String::from_utf8_lossy(&self.buf))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads an HTTP response head (and nothing after it).
    pub fn read_response_head(&mut self) -> RawResponse {
        let end = loop {
            if let Some(pos) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            let n = self.fill().expect("read response");
            assert!(n > 0, "connection closed before a response; got {:?}", String::from_utf8_lossy(&self.buf));
        };
        let head: Vec<u8> = self.buf.drain(..end).collect();
        let head = String::from_utf8(head).expect("ASCII response head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(parts.next(), Some("HTTP/1.1"), "status line {status_line:?}");
        let status = parts.next().and_then(|s| s.parse().ok()).expect("status code");
        let headers = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').expect("header line");
                (n.trim().to_owned(), v.trim().to_owned())
            })
            .collect();
        RawResponse { status, headers, body: Vec::new() }
    }

    /// Reads a complete HTTP response including its Content-Length body.
    pub fn read_response(&mut self) -> RawResponse {
        let mut response = self.read_response_head();
        let len: usize = response.header("content-length").map_or(0, |v| v.parse().expect("Content-Length"));
        while self.buf.len() < len {
            assert!(self.fill().expect("read body") > 0, "connection closed inside the body");
        }
        response.body = self.buf.drain(..len).collect();
        response
    }

    /// Sends `request` and reads the complete response.
    pub fn request(addr: SocketAddr, request: &str) -> RawResponse {
        let mut raw = Raw::connect(addr);
        raw.send(request.as_bytes());
        raw.read_response()
    }

    /// The next frame, or None when the server closed the connection.
    pub fn read_frame(&mut self) -> Option<RawFrame> {
        loop {
            if let Some((frame, len)) = parse_frame(&self.buf) {
                self.buf.drain(..len);
                return Some(frame);
            }
            match self.fill() {
                Ok(0) => {
                    assert!(self.buf.is_empty(), "connection closed inside a frame: {:?}", self.buf);
                    return None;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// The next frame other than a ping; panics if the connection ends first.
    pub fn next_frame(&mut self) -> RawFrame {
        loop {
            let frame = self.read_frame().expect("a frame before the connection closed");
            assert!(!frame.masked, "server frames must not be masked");
            if frame.opcode != 9 {
                return frame;
            }
        }
    }

    /// Expects the server's close frame with `code`, then the end of the TCP stream.
    pub fn expect_close(&mut self, code: u16) -> RawFrame {
        let frame = self.next_frame();
        assert_eq!(frame.opcode, 8, "expected a close frame, got {frame:?}");
        assert_eq!(frame.close_code(), Some(code), "close frame {frame:?}");
        assert!(frame.fin);
        assert_eq!(self.read_end(), End::Eof, "the server closes TCP after its close frame");
        frame
    }

    /// Reads (and discards) until the server closes the connection; reports how.
    pub fn read_end(&mut self) -> End {
        loop {
            self.buf.clear();
            match self.fill() {
                Ok(0) => return End::Eof,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return End::Reset,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// Whether nothing at all arrives within `period` (and the connection stays open).
    pub fn silent_for(&mut self, period: Duration) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        self.stream.set_read_timeout(Some(period)).unwrap();
        let mut byte = [0u8; 1];
        let silent = match self.stream.peek(&mut byte) {
            Err(e) => matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut),
            Ok(_) => false,
        };
        self.stream.set_read_timeout(Some(WAIT)).unwrap();
        silent
    }

    pub fn send_frame(&mut self, first: u8, payload: &[u8]) {
        self.send(&frame(first, payload));
    }
}

/// Parses one server frame at the start of `buf`: (frame, bytes used), or None if incomplete.
pub fn parse_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let masked = buf[1] & 0x80 != 0;
    let (len, mut pos) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    let mask = if masked {
        if buf.len() < pos + 4 {
            return None;
        }
        pos += 4;
        Some([buf[pos - 4], buf[pos - 3], buf[pos - 2], buf[pos - 1]])
    } else {
        None
    };
    if buf.len() < pos + len {
        return None;
    }
    let mut payload = buf[pos..pos + len].to_vec();
    if let Some(mask) = mask {
        payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= mask[i % 4]);
    }
    let frame = RawFrame { fin: buf[0] & 0x80 != 0, rsv: (buf[0] >> 4) & 7, opcode: buf[0] & 0x0f, masked, payload };
    Some((frame, pos + len))
}

/// A TCP connection whose receive buffer is made small before connecting (so the advertised
/// window stays small and the server's writes back up quickly).
pub fn connect_small_rcvbuf(addr: SocketAddr, bytes: i32) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = addr else { panic!("IPv4 only") };
    // SAFETY: plain socket(2); the descriptor is checked and then owned by the TcpStream below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
    // SAFETY: `fd` is an open socket we own and nothing else refers to.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    // SAFETY: the option value points to a live c_int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUF: {}", io::Error::last_os_error());
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
        sin_zero: [0; 8],
    };
    // SAFETY: `sin` is a valid sockaddr_in of the length given, alive during the call.
    let rc = unsafe {
        libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "connect: {}", io::Error::last_os_error());
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

/// A TCP connection to `addr` from the loopback source address `source` (e.g. 127.0.0.2), so a
/// test can play several client hosts.
pub fn connect_from(addr: SocketAddr, source: std::net::Ipv4Addr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = addr else { panic!("IPv4 only") };
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(ip.octets()) },
        sin_zero: [0; 8],
    };
    // SAFETY: plain socket(2); the descriptor is checked and then owned by the TcpStream below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
    // SAFETY: `fd` is an open socket we own and nothing else refers to.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let local = sockaddr(source, 0);
    // SAFETY: `local` is a valid sockaddr_in of the length given, alive during the call.
    let rc = unsafe { libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) };
    assert_eq!(rc, 0, "bind {source}: {}", io::Error::last_os_error());
    let remote = sockaddr(*v4.ip(), v4.port());
    // SAFETY: as above.
    let rc = unsafe { libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) };
    assert_eq!(rc, 0, "connect: {}", io::Error::last_os_error());
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    stream
}

/// This process's anonymous resident memory (RssAnon), in bytes.
pub fn rss_anon() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("RssAnon:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssAnon line");
    kib * 1024
}
