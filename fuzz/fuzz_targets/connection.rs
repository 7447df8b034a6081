//! The whole connection state machine (handshake, frames, fragments, close) of a real server, fed
//! arbitrary bytes over loopback TCP in arbitrary chunkings.
//!
//! One `wspush::Server` (one I/O thread) runs for the whole process. Each input is:
//!   byte 0: flags — bit 0: send a valid upgrade request first (the fuzzer then only writes
//!           frames); bit 1: pause briefly between chunks so the server sees separate reads;
//!           bit 2: abortive close (RST) instead of half-close and read-to-EOF;
//!           bits 4-7: how many chunk-size bytes follow (0 = write the payload in one go).
//!   then that many chunk sizes (byte b = b + 1 bytes), used in turn until the payload is written;
//!   then the payload.
//! libfuzzer-sys aborts on any panic, on any thread, so a panicking I/O thread is a crash for the
//! input that caused it; the periodic probe also catches a server that stops serving silently.
#![no_main]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use wspush::{Config, ConnId, Handler, HttpResponse, MessageKind, Request, Server, ServerHandle, UpgradeDecision};

const FLAG_UPGRADE_FIRST: u8 = 1;
const FLAG_PACE: u8 = 2;
const FLAG_ABORT: u8 = 4;
/// Paced writes per input, at most: keeps an input under a few milliseconds.
const MAX_PACED_WRITES: usize = 32;
/// Inputs between two liveness probes.
const PROBE_EVERY: u64 = 64;
/// Every deadline here only catches a real hang: normal is microseconds, and a loaded 2-core CI
/// machine (this process's own libFuzzer, ASan, a parallel build) stalls for milliseconds, rarely a
/// second. The server's own timeouts (`SERVER_TIMEOUT`) are far above these deadlines, so a
/// connection the server forgot is still open when the deadline passes.
///
/// How long the server may take to answer the probe.
const DEADLINE: Duration = Duration::from_secs(20);
/// How long the server may take to close after the client's EOF.
const EOF_DEADLINE: Duration = Duration::from_secs(20);
/// The server's idle and handshake timeouts.
const SERVER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an abortively closed connection may take to leave the server's counts.
const SETTLE_DEADLINE: Duration = Duration::from_secs(20);

/// Open plus handshaking connections allowed when probing: the probe's own, plus slack for
/// abortively closed connections whose RST the I/O thread has not handled yet.
const MAX_LINGERING_CONNECTIONS: u64 = 16;

const UPGRADE: &[u8] = b"GET /ws?user=fuzz HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// Accepts `?user=<non-empty>`, echoes every message back on the same connection, and serves a
/// plain HTTP response shaped by the request (status and content type from the fuzzer) so the
/// host-response path, with its header-injection guard, is exercised too.
struct Echo;

impl Handler for Echo {
    fn on_upgrade(&self, _: &ServerHandle, request: &Request<'_>) -> UpgradeDecision {
        match request.query_param("user") {
            // Over-long IDs are passed on as-is: the engine must refuse them, not the host.
            Some(user) if !user.is_empty() => UpgradeDecision::Accept(user.as_bytes().to_vec()),
            _ => UpgradeDecision::Reject(401),
        }
    }

    fn on_message(&self, server: &ServerHandle, conn: ConnId, _: &[u8], kind: MessageKind, payload: &[u8]) {
        // The connection may already be closing; an error here is expected, not a finding.
        let _ = server.send(conn, payload, kind);
    }

    fn on_http(&self, _: &ServerHandle, request: &Request<'_>) -> Option<HttpResponse> {
        let status = request.query_param("status")?.parse().ok()?;
        let content_type = request.header("x-content-type").map(|v| String::from_utf8_lossy(v).into_owned());
        Some(HttpResponse {
            status,
            content_type: content_type.unwrap_or_else(|| "text/plain".into()),
            body: request.path().as_bytes().to_vec(),
        })
    }
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let server_timeout = SERVER_TIMEOUT;
        let config = Config {
            listen: "127.0.0.1:0".into(),
            threads: 1,
            // Small enough that inputs of a few KiB reach the 1009 paths (single and reassembled).
            max_message_size: 1024,
            max_header_bytes: 1024,
            max_queue_bytes: 64 * 1024,
            ping_interval: Duration::from_millis(500),
            idle_timeout: server_timeout,
            handshake_timeout: server_timeout,
            close_timeout: Duration::from_millis(200),
            drain_timeout: Duration::from_millis(200),
            ..Config::default()
        };
        Server::start(config, Echo).expect("start the fuzzed server")
    })
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to the fuzzed server");
    stream.set_nodelay(true).expect("nodelay");
    stream.set_read_timeout(Some(Duration::from_millis(50))).expect("read timeout");
    stream.set_write_timeout(Some(DEADLINE)).expect("write timeout");
    stream
}

/// Closes with RST instead of FIN: the server sees ECONNRESET, and no TIME_WAIT piles up.
fn abort(stream: TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: the fd is open (owned by `stream`), and `linger` is a valid, correctly sized
    // SO_LINGER value that outlives the call.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(stream);
}

/// Reads until the server closes (EOF or reset). Panics if it doesn't within `EOF_DEADLINE`: a
/// connection whose peer has gone must be torn down, whatever state it was in.
fn read_until_closed(stream: &mut TcpStream) {
    let deadline = EOF_DEADLINE;
    let started = Instant::now();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(_) => return, // reset: closed too
        }
        assert!(started.elapsed() < deadline, "server kept the connection open {deadline:?} after the client's EOF");
    }
}

/// Reads at least `want` bytes or panics after `DEADLINE`.
fn read_at_least(stream: &mut TcpStream, got: &mut Vec<u8>, want: impl Fn(&[u8]) -> bool, what: &str) {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    while !want(got) {
        match stream.read(&mut buf) {
            Ok(0) => panic!("server closed the probe connection while waiting for {what}; got {got:02x?}"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(e) => panic!("probe read failed waiting for {what}: {e}"),
        }
        assert!(started.elapsed() < DEADLINE, "server stopped serving: no {what} within {DEADLINE:?}");
    }
}

fn masked_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![first_byte, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// A fresh client must still get a full upgrade + echo + close round trip.
fn probe(addr: SocketAddr, round: u64) {
    let mut stream = connect(addr);
    let request = String::from_utf8_lossy(UPGRADE).replace("user=fuzz", "user=probe");
    stream.write_all(request.as_bytes()).expect("probe upgrade");
    let mut got = Vec::new();
    read_at_least(&mut stream, &mut got, |b| b.windows(4).any(|w| w == b"\r\n\r\n"), "the 101 response");
    assert!(got.starts_with(b"HTTP/1.1 101 "), "probe upgrade refused: {}", String::from_utf8_lossy(&got));
    let head_len = got.windows(4).position(|w| w == b"\r\n\r\n").expect("head end") + 4;
    got.drain(..head_len);

    let message = format!("probe {round}");
    stream.write_all(&masked_frame(0x81, message.as_bytes())).expect("probe message");
    let expected = [&[0x81, message.len() as u8][..], message.as_bytes()].concat();
    read_at_least(&mut stream, &mut got, |b| b.len() >= expected.len(), "the echo");
    assert_eq!(&got[..expected.len()], &expected[..], "probe echo");
    got.drain(..expected.len());

    stream.write_all(&masked_frame(0x88, &1000u16.to_be_bytes())).expect("probe close");
    read_at_least(&mut stream, &mut got, |b| b.len() >= 4, "the close reply");
    assert_eq!(&got[..4], &[0x88, 2, 0x03, 0xe8], "close reply echoes 1000");
    read_until_closed(&mut stream);
}

fn write_chunked(stream: &mut TcpStream, payload: &[u8], sizes: &[u8], pace: bool) -> std::io::Result<()> {
    if sizes.is_empty() {
        return stream.write_all(payload);
    }
    let mut rest = payload;
    for (writes, size) in sizes.iter().cycle().enumerate() {
        if rest.is_empty() {
            break;
        }
        let paced = pace && writes < MAX_PACED_WRITES;
        let take = if paced { (usize::from(*size) + 1).min(rest.len()) } else { rest.len() };
        stream.write_all(&rest[..take])?;
        rest = &rest[take..];
        if paced {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    static INPUTS: AtomicU64 = AtomicU64::new(0);
    let server = server();
    let addr = server.local_addr();
    let round = INPUTS.fetch_add(1, Ordering::Relaxed);

    let [flags, rest @ ..] = data else { return };
    let size_count = usize::from(flags >> 4).min(rest.len());
    let (sizes, payload) = rest.split_at(size_count);

    let mut stream = connect(addr);
    let mut written = Ok(());
    if flags & FLAG_UPGRADE_FIRST != 0 {
        written = stream.write_all(UPGRADE);
    }
    if written.is_ok() {
        // Unpaced chunk sizes still matter a little (separate segments); paced ones make the
        // server see the input cut at exactly these points most of the time.
        written = write_chunked(&mut stream, payload, sizes, flags & FLAG_PACE != 0);
    }
    // A write error means the server already closed on us (e.g. after an HTTP error): fine.
    let _ = written;
    if flags & FLAG_ABORT != 0 {
        abort(stream);
    } else {
        let _ = stream.shutdown(Shutdown::Write);
        read_until_closed(&mut stream);
    }

    assert!(!server.is_stopped(), "server stopped");
    if round % PROBE_EVERY == 0 {
        probe(addr, round);
        // Resets the I/O thread has not handled yet are slack, not a leak: wait for them.
        let started = Instant::now();
        loop {
            let stats = server.stats();
            if stats.connections + stats.handshakes <= MAX_LINGERING_CONNECTIONS {
                break;
            }
            assert!(started.elapsed() < SETTLE_DEADLINE, "connections leak: {stats:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
});
