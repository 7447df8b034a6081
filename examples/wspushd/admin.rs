//! The admin HTTP API: a minimal HTTP/1.1 server on std::net with one thread per connection (the
//! backend keeps a few persistent connections, so threads are cheap here). Keep-alive, pipelining
//! (responses to requests already buffered are written together), Content-Length bodies,
//! `Expect: 100-continue`, capped head and body sizes, idle and per-request timeouts. The defences
//! against browsers and idle sockets are decided in guard.rs.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wspush::{is_valid_close_code, MessageKind, ServerHandle, Stats, MAX_USER_ID_LEN};

use crate::guard::{self, Activity, Admission, AllowedHosts, ConnectionTable, Refusal};
use crate::log::{ErrorClass, ErrorLog};

/// Largest request head (request line plus headers).
const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// Admin connections served at once (the API is for a few backends). A newcomer beyond it takes
/// the slot of a connection with no request in progress; when every one is busy, it gets 503.
const MAX_ADMIN_CONNECTIONS: usize = 256;
/// Likewise per client address (IPv6: per /64), so that one host cannot take every slot.
const MAX_ADMIN_CONNECTIONS_PER_PEER: usize = 32;
/// Time a new connection has to send the first byte of its first request: clients send at once,
/// and a socket that sends nothing holds a thread and a slot for nothing.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(2);
/// Time allowed to receive one whole request once its first byte arrived.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const READ_CHUNK: usize = 64 * 1024;

/// Settings and shared state of the admin server.
pub struct Admin {
    pub server: ServerHandle,
    pub max_body: usize,
    pub idle_timeout: Duration,
    /// Bearer token every request must carry, when set.
    pub token: Option<Vec<u8>>,
    /// Host names answered besides IP addresses and localhost.
    pub allowed_hosts: AllowedHosts,
    pub errors: Arc<ErrorLog>,
    pub requests_total: AtomicU64,
    pub client_errors_total: AtomicU64,
    /// Connections closed to make room for a newcomer.
    pub evicted_total: AtomicU64,
    /// The open connections, each with a clone of its socket to close it by.
    connections: ConnectionTable<TcpStream>,
}

impl Admin {
    pub fn new(
        server: ServerHandle,
        max_body: usize,
        idle_timeout: Duration,
        token: Option<Vec<u8>>,
        allowed_hosts: AllowedHosts,
        errors: Arc<ErrorLog>,
    ) -> Admin {
        Admin {
            server,
            max_body,
            idle_timeout,
            token,
            allowed_hosts,
            errors,
            requests_total: AtomicU64::new(0),
            client_errors_total: AtomicU64::new(0),
            evicted_total: AtomicU64::new(0),
            connections: ConnectionTable::new(MAX_ADMIN_CONNECTIONS, MAX_ADMIN_CONNECTIONS_PER_PEER),
        }
    }
}

/// Accepts admin connections forever, one thread each.
pub fn serve(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) => {
                admin.errors.report(ErrorClass::AdminAccept, &e.to_string());
                // Out of file descriptors and the like: back off instead of spinning.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        // The table keeps a clone to close the connection by when it must make room.
        let handle = match stream.try_clone() {
            Ok(handle) => handle,
            Err(e) => {
                admin.errors.report(ErrorClass::AdminAccept, &format!("cannot clone a socket: {e}"));
                continue;
            }
        };
        let id = match admin.connections.admit(peer.ip(), handle) {
            Admission::Admitted { id, evicted } => {
                if let Some(evicted) = evicted {
                    admin.evicted_total.fetch_add(1, Ordering::Relaxed);
                    admin.errors.report(
                        ErrorClass::AdminCrowded,
                        &format!(
                            "over {MAX_ADMIN_CONNECTIONS_PER_PEER} connections from one address or \
                             {MAX_ADMIN_CONNECTIONS} in all: closing the oldest without a request in progress"
                        ),
                    );
                    // Wakes its thread from its read with end-of-file; the thread then ends.
                    let _ = evicted.shutdown(Shutdown::Both);
                }
                id
            }
            Admission::Refused => {
                admin.errors.report(
                    ErrorClass::AdminCrowded,
                    &format!(
                        "{MAX_ADMIN_CONNECTIONS_PER_PEER} connections from one address or {MAX_ADMIN_CONNECTIONS} \
                         in all, every one with a request in progress: answering 503"
                    ),
                );
                let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = (&stream).write_all(&response(503, "text/plain", b"too many admin connections\n", true, &[]));
                continue;
            }
        };
        let conn_admin = Arc::clone(&admin);
        let spawned = std::thread::Builder::new().name("wspushd-admin".into()).spawn(move || {
            if let Err(e) = serve_connection(&stream, &conn_admin, id) {
                if !is_disconnect(&e) {
                    conn_admin.errors.report(ErrorClass::AdminIo, &e.to_string());
                }
            }
            conn_admin.connections.remove(id);
        });
        if let Err(e) = spawned {
            admin.connections.remove(id);
            admin.errors.report(ErrorClass::AdminAccept, &format!("cannot start a thread: {e}"));
        }
    }
}

/// Errors that just mean the peer went away or went quiet: not worth a log line.
fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    )
}

/// A parsed request head: what routing needs, copied out of the read buffer.
struct Head {
    method: String,
    target: String,
    head_len: usize,
    content_length: usize,
    binary: bool,
    keep_alive: bool,
    expect_continue: bool,
    /// The credentials of an `Authorization: Bearer` header.
    bearer: Option<Vec<u8>>,
    /// Why the request must not run whatever its token (a browser's, or for another host).
    refusal: Option<Refusal>,
}

/// Why a request can't be served; the connection is answered and then closed, since the rest of
/// the stream can't be trusted to be framed correctly.
struct Fatal {
    status: u16,
    reason: &'static str,
}

enum Parsed {
    Incomplete,
    Complete(Head),
    Invalid(Fatal),
}

fn parse_head(buf: &[u8], allowed_hosts: &AllowedHosts) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Parsed::Invalid(Fatal { status: 431, reason: "request head too large" })
        }
        Ok(httparse::Status::Partial) => return Parsed::Incomplete,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Invalid(Fatal { status: 431, reason: "too many headers" })
        }
        Err(_) => return Parsed::Invalid(Fatal { status: 400, reason: "malformed request" }),
    };
    if head_len > MAX_HEAD_BYTES {
        return Parsed::Invalid(Fatal { status: 431, reason: "request head too large" });
    }
    let (Some(method), Some(target), Some(version)) = (request.method, request.path, request.version) else {
        return Parsed::Invalid(Fatal { status: 400, reason: "malformed request" });
    };
    let mut head = Head {
        method: method.to_string(),
        target: target.to_string(),
        head_len,
        content_length: 0,
        binary: false,
        // HTTP/1.1 keeps the connection by default, HTTP/1.0 only when asked.
        keep_alive: version == 1,
        expect_continue: false,
        bearer: None,
        refusal: guard::check_request_source(
            version == 1,
            request.headers.iter().map(|header| (header.name, header.value)),
            allowed_hosts,
        )
        .err(),
    };
    let mut seen_length = false;
    for header in request.headers.iter() {
        let value = header.value.trim_ascii();
        if header.name.eq_ignore_ascii_case("content-length") {
            let length = std::str::from_utf8(value).ok().filter(|v| v.bytes().all(|b| b.is_ascii_digit()));
            let Some(length) = length.and_then(|v| v.parse::<usize>().ok()) else {
                return Parsed::Invalid(Fatal { status: 400, reason: "invalid Content-Length" });
            };
            // Differing duplicates are a request-smuggling vector.
            if seen_length && length != head.content_length {
                return Parsed::Invalid(Fatal { status: 400, reason: "conflicting Content-Length headers" });
            }
            seen_length = true;
            head.content_length = length;
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Invalid(Fatal {
                status: 411,
                reason: "send the body with Content-Length, not Transfer-Encoding",
            });
        } else if header.name.eq_ignore_ascii_case("content-type") {
            let media_type = value.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
            head.binary = media_type.eq_ignore_ascii_case(b"application/octet-stream");
        } else if header.name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    head.keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                    head.keep_alive = true;
                }
            }
        } else if header.name.eq_ignore_ascii_case("authorization") {
            let (scheme, credentials) = value.split_at_checked(7).unwrap_or_default();
            if scheme.eq_ignore_ascii_case(b"bearer ") {
                head.bearer = Some(credentials.trim_ascii().to_vec());
            }
        } else if header.name.eq_ignore_ascii_case("expect") {
            head.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    Parsed::Complete(head)
}

/// Serves requests on one connection until the peer closes, asks to close, errs or idles out.
fn serve_connection(mut stream: &TcpStream, admin: &Admin, id: u64) -> io::Result<()> {
    // Responses are small and written whole; don't let Nagle hold them back.
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let first_byte_timeout = FIRST_BYTE_TIMEOUT.min(admin.idle_timeout);
    let mut read_timeout = first_byte_timeout;
    stream.set_read_timeout(Some(read_timeout))?;
    // Whether a request was accepted on this connection (see Activity), and what the connection
    // table was last told.
    let mut proven = false;
    let mut activity = Activity::Unproven;
    let mut input: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut output: Vec<u8> = Vec::new();
    // When the request now in `input` started arriving (None while waiting between requests).
    let mut request_started: Option<Instant> = None;
    let mut continue_sent = false;
    loop {
        // Serve every complete request already buffered before reading again (pipelining).
        let mut served = 0;
        let keep_going = loop {
            match parse_head(&input[served..], &admin.allowed_hosts) {
                Parsed::Incomplete => break true,
                Parsed::Invalid(fatal) => {
                    admin.client_errors_total.fetch_add(1, Ordering::Relaxed);
                    admin.errors.report(ErrorClass::AdminBadRequest, &format!("{} {}", fatal.status, fatal.reason));
                    output.extend(error_response(fatal.status, fatal.reason, false));
                    break false;
                }
                Parsed::Complete(head) => {
                    if let Some(refusal) = head.refusal {
                        // Before the token and the body, like a 401: the connection ends here.
                        admin.client_errors_total.fetch_add(1, Ordering::Relaxed);
                        let what =
                            format!("{} {}: {} {}", head.method, path_of(&head.target), refusal.status, refusal.reason);
                        admin.errors.report(ErrorClass::AdminForeign, &what);
                        output.extend(error_response(refusal.status, refusal.reason, false));
                        break false;
                    }
                    if !authorized(admin, &head) {
                        // Before the body is read (and before any 100 Continue): a caller without
                        // the token cannot make us buffer anything. The connection ends here.
                        admin.client_errors_total.fetch_add(1, Ordering::Relaxed);
                        let what = format!("{} {}", head.method, path_of(&head.target));
                        admin.errors.report(ErrorClass::AdminUnauthorized, &what);
                        let body = b"missing or wrong bearer token\n";
                        let challenge = ["WWW-Authenticate: Bearer realm=\"wspushd-admin\""];
                        output.extend(response(401, "text/plain; charset=utf-8", body, true, &challenge));
                        break false;
                    }
                    if head.content_length > admin.max_body {
                        admin.client_errors_total.fetch_add(1, Ordering::Relaxed);
                        admin.errors.report(ErrorClass::AdminBadRequest, "413 request body too large");
                        output.extend(error_response(413, "request body too large", false));
                        break false;
                    }
                    if activity != Activity::Busy {
                        admin.connections.set_activity(id, Activity::Busy);
                        activity = Activity::Busy;
                    }
                    proven = true;
                    let total = head.head_len + head.content_length;
                    if input.len() - served < total {
                        if head.expect_continue && !continue_sent {
                            output.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                            continue_sent = true;
                        }
                        break true;
                    }
                    let body = &input[served + head.head_len..served + total];
                    let reply = handle(admin, &head, body);
                    if (400..500).contains(&reply.status) {
                        admin.client_errors_total.fetch_add(1, Ordering::Relaxed);
                        let reason = String::from_utf8_lossy(&reply.body);
                        admin
                            .errors
                            .report(ErrorClass::AdminBadRequest, &format!("{} {}", reply.status, reason.trim_end()));
                    }
                    admin.requests_total.fetch_add(1, Ordering::Relaxed);
                    let mut bytes =
                        response(reply.status, reply.content_type, &reply.body, !head.keep_alive, reply.extra_headers);
                    if head.method == "HEAD" {
                        // Same headers (Content-Length included) as GET, without the body.
                        bytes.truncate(bytes.len() - reply.body.len());
                    }
                    output.extend(bytes);
                    served += total;
                    continue_sent = false;
                    if !head.keep_alive {
                        break false;
                    }
                }
            }
        };
        if served > 0 {
            input.drain(..served);
            request_started = None;
        }
        if !output.is_empty() {
            stream.write_all(&output)?;
            output.clear();
        }
        if !keep_going {
            linger_close(stream);
            return Ok(());
        }

        // Wait for more input: the first-byte deadline before any request, the idle timeout
        // between requests, a deadline within one.
        let wanted_activity = match (proven, input.is_empty()) {
            (false, _) => Activity::Unproven,
            (true, true) => Activity::Idle,
            (true, false) => Activity::Busy,
        };
        if wanted_activity != activity {
            admin.connections.set_activity(id, wanted_activity);
            activity = wanted_activity;
        }
        let wanted_timeout = if input.is_empty() {
            request_started = None;
            if proven {
                admin.idle_timeout
            } else {
                first_byte_timeout
            }
        } else {
            let started = *request_started.get_or_insert_with(Instant::now);
            match REQUEST_TIMEOUT.checked_sub(started.elapsed()) {
                Some(left) if !left.is_zero() => left,
                _ => {
                    stream.write_all(&error_response(408, "request not received in time", false))?;
                    linger_close(stream);
                    return Ok(());
                }
            }
        };
        if wanted_timeout != read_timeout {
            stream.set_read_timeout(Some(wanted_timeout))?;
            read_timeout = wanted_timeout;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => input.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if !input.is_empty() {
                    let _ = stream.write_all(&error_response(408, "request not received in time", false));
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

/// Ends a connection without losing the response just written: closing a socket that still has
/// unread input makes the kernel send RST, which can discard the response before the client reads
/// it (e.g. a 413 while the client is still sending the body). So: send FIN, then read and discard
/// what the client still sends, for a bounded time and amount.
fn linger_close(mut stream: &TcpStream) {
    const LINGER_TIME: Duration = Duration::from_secs(2);
    const LINGER_BYTES: usize = 4 * 1024 * 1024;
    if stream.shutdown(std::net::Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER_TIME;
    let mut discarded = 0;
    let mut sink = [0u8; 8192];
    while discarded < LINGER_BYTES {
        let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else { return };
        if stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => discarded += n,
        }
    }
}

/// A response to one request, before serialization.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    extra_headers: &'static [&'static str],
}

impl Reply {
    fn json(body: String) -> Reply {
        Reply { status: 200, content_type: "application/json", body: body.into_bytes(), extra_headers: &[] }
    }

    fn error(status: u16, reason: &str) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{reason}\n").into_bytes(),
            extra_headers: &[],
        }
    }
}

/// Compares without an early exit, so response timing does not reveal how much of a guess
/// was right (the length is not secret).
fn same_token(expected: &[u8], given: &[u8]) -> bool {
    let difference = expected.iter().zip(given).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(difference) == 0 && expected.len() == given.len()
}

/// Whether the request carries the admin token (always, when none is configured).
fn authorized(admin: &Admin, head: &Head) -> bool {
    match &admin.token {
        None => true,
        Some(token) => head.bearer.as_deref().is_some_and(|given| same_token(token, given)),
    }
}

/// Routes one complete request.
fn handle(admin: &Admin, head: &Head, body: &[u8]) -> Reply {
    let (path, query) = head.target.split_once('?').unwrap_or((&head.target, ""));
    let (allowed, allow_header): (&[&str], &'static [&'static str]) = match path {
        "/publish" | "/broadcast" | "/disconnect" => (&["POST"], &["Allow: POST"]),
        "/stats" | "/metrics" | "/healthz" => (&["GET", "HEAD"], &["Allow: GET, HEAD"]),
        _ => return Reply::error(404, "unknown path"),
    };
    if !allowed.contains(&head.method.as_str()) {
        let mut reply = Reply::error(405, &format!("method {} not allowed; use {}", head.method, allowed[0]));
        reply.extra_headers = allow_header;
        return reply;
    }
    let params = match parse_query(query) {
        Ok(params) => params,
        Err(reason) => return Reply::error(400, reason),
    };
    let param = |name: &str| params.iter().find(|(key, _)| key == name.as_bytes()).map(|(_, value)| value.as_slice());
    let server = &admin.server;
    match path {
        "/publish" | "/broadcast" => {
            let kind = if head.binary { MessageKind::Binary } else { MessageKind::Text };
            if kind == MessageKind::Text && std::str::from_utf8(body).is_err() {
                return Reply::error(
                    400,
                    "text payload is not UTF-8 (send binary with Content-Type: application/octet-stream)",
                );
            }
            let result = if path == "/publish" {
                let user = match user_param(param("user")) {
                    Ok(user) => user,
                    Err(reply) => return reply,
                };
                server.publish(user, body, kind)
            } else {
                server.broadcast(body, kind)
            };
            match result {
                Ok(delivered) => Reply::json(format!("{{\"delivered\":{delivered}}}")),
                Err(e) => engine_error(e),
            }
        }
        "/disconnect" => {
            let user = match user_param(param("user")) {
                Ok(user) => user,
                Err(reply) => return reply,
            };
            let code = match param("code") {
                None => 1000,
                Some(code) => match std::str::from_utf8(code).ok().and_then(|c| c.parse::<u16>().ok()) {
                    Some(code) if is_valid_close_code(code) => code,
                    _ => return Reply::error(400, "invalid close code (use 1000-1003, 1007-1014 or 3000-4999)"),
                },
            };
            match server.disconnect_user(user, code) {
                Ok(count) => Reply::json(format!("{{\"disconnected\":{count}}}")),
                Err(e) => engine_error(e),
            }
        }
        "/stats" => Reply::json(stats_json(&server.stats())),
        "/metrics" => Reply {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: metrics_text(&server.stats(), admin).into_bytes(),
            extra_headers: &[],
        },
        "/healthz" if server.is_stopped() => Reply::error(503, "stopping"),
        "/healthz" => {
            Reply { status: 200, content_type: "text/plain; charset=utf-8", body: b"ok".to_vec(), extra_headers: &[] }
        }
        _ => Reply::error(404, "unknown path"),
    }
}

/// The path of a request target, for logs: the query may hold user IDs.
fn path_of(target: &str) -> &str {
    target.split_once('?').map_or(target, |(path, _)| path)
}

fn user_param(user: Option<&[u8]>) -> Result<&[u8], Reply> {
    match user {
        None | Some([]) => Err(Reply::error(400, "missing user parameter")),
        Some(user) if user.len() > MAX_USER_ID_LEN => Err(Reply::error(400, "user must be 1 to 255 bytes")),
        Some(user) => Ok(user),
    }
}

fn engine_error(e: wspush::Error) -> Reply {
    match e {
        wspush::Error::Stopped => Reply::error(503, "server is stopping"),
        wspush::Error::MessageTooLarge => Reply::error(413, "message too large"),
        wspush::Error::InvalidUserId => Reply::error(400, "user must be 1 to 255 bytes"),
        wspush::Error::InvalidCloseCode => Reply::error(400, "invalid close code"),
        other => Reply::error(500, &other.to_string()),
    }
}

/// A URL-decoded query parameter: (key, value).
type QueryParam = (Vec<u8>, Vec<u8>);

/// Splits a query string into URL-decoded parameters.
pub fn parse_query(query: &str) -> Result<Vec<QueryParam>, &'static str> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((url_decode(key)?, url_decode(value)?))
        })
        .collect()
}

/// Decodes `%XX` escapes and `+` (space), as browsers and URL libraries encode query values.
pub fn url_decode(text: &str) -> Result<Vec<u8>, &'static str> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or("malformed percent-encoding in query")?;
                let decoded = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .filter(|_| hex.iter().all(u8::is_ascii_hexdigit))
                    .ok_or("malformed percent-encoding in query")?;
                out.push(decoded);
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    Ok(out)
}

/// Name, value, Prometheus type and help text of one engine counter.
type StatField = (&'static str, u64, &'static str, &'static str);

/// Every engine counter; one list feeds both /stats and /metrics.
fn stats_fields(s: &Stats) -> [StatField; 23] {
    [
        ("connections", s.connections, "gauge", "Open (upgraded) WebSocket connections."),
        ("handshakes", s.handshakes, "gauge", "Connections accepted but not yet upgraded."),
        ("users", s.users, "gauge", "Distinct users with at least one open connection."),
        ("accepted_total", s.accepted_total, "counter", "Sockets accepted."),
        ("upgrades_total", s.upgrades_total, "counter", "Successful WebSocket upgrades."),
        ("rejected_total", s.rejected_total, "counter", "Requests answered with an HTTP error."),
        (
            "over_capacity_total",
            s.over_capacity_total,
            "counter",
            "Sockets answered 503 because max connections was reached.",
        ),
        ("messages_in_total", s.messages_in_total, "counter", "Messages received from clients."),
        (
            "messages_out_total",
            s.messages_out_total,
            "counter",
            "Messages handed to sockets, one per recipient connection.",
        ),
        ("bytes_out_total", s.bytes_out_total, "counter", "Bytes written to sockets, frame headers included."),
        ("publishes_total", s.publishes_total, "counter", "Publish calls."),
        ("broadcasts_total", s.broadcasts_total, "counter", "Broadcast calls."),
        ("dropped_total", s.dropped_total, "counter", "Messages dropped for slow consumers (policy drop)."),
        (
            "slow_consumer_closes_total",
            s.slow_consumer_closes_total,
            "counter",
            "Connections closed with 1008 as slow consumers (policy close).",
        ),
        ("protocol_errors_total", s.protocol_errors_total, "counter", "Connections closed for a protocol violation."),
        (
            "timeouts_total",
            s.timeouts_total,
            "counter",
            "Connections closed by the handshake deadline or the idle timeout.",
        ),
        ("pings_total", s.pings_total, "counter", "Heartbeat pings sent."),
        ("ip_limited_total", s.ip_limited_total, "counter", "Sockets answered 429 by a per-IP limit."),
        ("queued_bytes", s.queued_bytes, "gauge", "Bytes queued for connections, not yet taken by their sockets."),
        (
            "partial_input_bytes",
            s.partial_input_bytes,
            "gauge",
            "Bytes held for incomplete client frames and messages.",
        ),
        (
            "message_timeouts_total",
            s.message_timeouts_total,
            "counter",
            "Connections closed with 1008: a started frame or message not completed in time.",
        ),
        (
            "partial_input_refusals_total",
            s.partial_input_refusals_total,
            "counter",
            "Connections closed with 1013: the cap on incomplete input was reached.",
        ),
        ("max_connections", s.max_connections, "gauge", "The connection cap in force (lowered to RLIMIT_NOFILE)."),
    ]
}

pub fn stats_json(stats: &Stats) -> String {
    let mut json = String::from("{");
    for (index, (name, value, _, _)) in stats_fields(stats).iter().enumerate() {
        let comma = if index == 0 { "" } else { "," };
        let _ = write!(json, "{comma}\"{name}\":{value}");
    }
    json.push('}');
    json
}

fn metrics_text(stats: &Stats, admin: &Admin) -> String {
    let mut text = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = write!(text, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n");
    };
    for (name, value, kind, help) in stats_fields(stats) {
        metric(&format!("wspush_{name}"), kind, help, value);
    }
    let requests = admin.requests_total.load(Ordering::Relaxed);
    let client_errors = admin.client_errors_total.load(Ordering::Relaxed);
    metric("wspushd_admin_requests_total", "counter", "Admin API requests answered.", requests);
    metric(
        "wspushd_admin_client_errors_total",
        "counter",
        "Admin API requests answered with a 4xx status.",
        client_errors,
    );
    metric(
        "wspushd_admin_evicted_total",
        "counter",
        "Admin connections without a request in progress closed to make room for a new one.",
        admin.evicted_total.load(Ordering::Relaxed),
    );
    text
}

fn error_response(status: u16, reason: &str, keep_alive: bool) -> Vec<u8> {
    response(status, "text/plain; charset=utf-8", format!("{reason}\n").as_bytes(), !keep_alive, &[])
}

fn response(status: u16, content_type: &str, body: &[u8], close: bool, extra_headers: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        reason_phrase(status),
        body.len()
    );
    for header in extra_headers {
        let _ = write!(out, "{header}\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_decoding_handles_escapes_plus_and_garbage() {
        assert_eq!(url_decode("a%20b").unwrap(), b"a b");
        assert_eq!(url_decode("a+b%2Bc").unwrap(), b"a b+c");
        assert_eq!(url_decode("%e2%9c%93").unwrap(), "✓".as_bytes());
        assert!(url_decode("%zz").is_err());
        assert!(url_decode("%4").is_err());
        assert!(url_decode("%+1").is_err());
        assert_eq!(
            parse_query("user=a%20b&&code=4000").unwrap(),
            [(b"user".to_vec(), b"a b".to_vec()), (b"code".to_vec(), b"4000".to_vec())]
        );
    }

    fn parse(buf: &[u8]) -> Parsed {
        parse_head(buf, &AllowedHosts::default())
    }

    #[test]
    fn head_parsing_reads_framing_and_connection_options() {
        let Parsed::Complete(head) = parse(b"POST /publish?user=a HTTP/1.1\r\nContent-Length: 5\r\nContent-Type: application/octet-stream; x=y\r\n\r\nhello") else {
            panic!("not parsed")
        };
        assert_eq!((head.content_length, head.binary, head.keep_alive), (5, true, true));
        let Parsed::Complete(head) = parse(b"GET / HTTP/1.0\r\n\r\n") else { panic!("not parsed") };
        assert!(!head.keep_alive);
        let Parsed::Complete(head) = parse(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n") else {
            panic!("not parsed")
        };
        assert!(!head.keep_alive);
        assert!(matches!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n"), Parsed::Incomplete));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            Parsed::Invalid(Fatal { status: 400, .. })
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Parsed::Invalid(Fatal { status: 400, .. })
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Parsed::Invalid(Fatal { status: 411, .. })
        ));
        assert!(matches!(parse(&[b'A'; MAX_HEAD_BYTES + 1]), Parsed::Invalid(Fatal { status: 400 | 431, .. })));
        // A well-framed request that must not run is parsed whole, with the reason it must not:
        // the caller answers it and ends the connection.
        let Parsed::Complete(head) =
            parse(b"POST /broadcast HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 1\r\n\r\nx")
        else {
            panic!("not parsed")
        };
        assert_eq!((head.content_length, head.refusal.map(|r| r.status)), (1, Some(421)));
        let Parsed::Complete(head) = parse(b"GET /stats HTTP/1.1\r\nHost: localhost\r\n\r\n") else {
            panic!("not parsed")
        };
        assert_eq!(head.refusal, None);
    }
}
