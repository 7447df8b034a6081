//! RFC 6455 conformance suite, one module per area of the RFC. Every case is written once as a
//! function of the server's address and run against two targets (see `conformance_cases!`):
//!
//! * `library::…` — a `wspush::Server` started in-process whose handler echoes every message back
//!   with `send` (users come from `?user=`);
//! * `daemon::…` — the `wspushd` daemon binary in `--demo --echo` mode.
//!
//! Clients are raw TCP sockets sending hand-made masked frames; every case asserts the exact bytes
//! (or the exact close code) the server must answer with. After every close the test also asserts
//! that the server closes the TCP connection promptly. Every read has a timeout, so a server bug
//! fails a case instead of hanging it.
//!
//! Where the RFC (or the IANA close-code registry) and the engine could disagree, the cases follow
//! the RFC/registry; they are not `#[ignore]`d.

mod common;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{close_payload, frame, unmasked_frame, Harness, Raw};

/// How long a case waits for an answer the server must send before failing.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// How long the server may take to close TCP once both close frames have been exchanged.
const TCP_CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How long "nothing arrives" is watched for.
const SILENCE: Duration = Duration::from_millis(100);

/// The largest message both targets accept (engine default; wspushd's default is the same).
const MAX_MESSAGE: usize = 64 * 1024;

// ------------------------------------------------------------------------------------ targets

/// The in-process library server: echoes every message to its sender. Started once and shared by
/// every `library::` case (each case uses its own connection).
fn library_addr() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let (server, events) = Harness::new(common::config())
            .on_message(|server, conn, _, kind, payload| {
                // Fails only when the connection is already closing, which some cases cause.
                let _ = server.send(conn, payload, kind);
            })
            .start();
        // Nobody reads the recorded events; dropping the receiver makes recording a no-op.
        drop(events);
        let addr = server.local_addr();
        // The server must outlive every case: it lives until the test process exits.
        std::mem::forget(server);
        addr
    })
}

/// Builds the wspushd daemon with this test's profile and target dir (as tests/daemon.rs does).
fn daemon_binary() -> PathBuf {
    common::build_workspace_binary("wspushd")
}

/// `wspushd --demo --echo`, started once and shared by every `daemon::` case.
///
/// The daemon is spawned from a thread that lives as long as the test process (it keeps draining
/// the daemon's output), and is spawned with `PR_SET_PDEATHSIG`, so it is killed when the test
/// process exits however that happens: no daemon outlives the suite.
fn daemon_addr() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let binary = daemon_binary();
        let stderr_text = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let stderr_for_thread = Arc::clone(&stderr_text);
        std::thread::spawn(move || {
            use std::os::unix::process::CommandExt;
            let mut command = Command::new(binary);
            command
                .args(["--demo", "--echo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
                .args(["--threads", "1"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            // SAFETY: runs in the forked child before exec; prctl is async-signal-safe and touches
            // no memory of the parent.
            unsafe {
                command.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let mut child = command.spawn().expect("start wspushd");
            let stderr = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    stderr_for_thread.lock().unwrap().push_str(&format!("{line}\n"));
                }
            });
            let mut addr_tx = Some(addr_tx);
            for line in BufReader::new(child.stdout.take().unwrap()).lines() {
                let Ok(line) = line else { break };
                // "wspushd listening on ws://127.0.0.1:PORT/ws, admin on http://127.0.0.1:PORT"
                if let Some(rest) = line.strip_prefix("wspushd listening on ws://") {
                    let ws: SocketAddr = rest.split('/').next().unwrap().parse().expect("ws address");
                    if let Some(tx) = addr_tx.take() {
                        let _ = tx.send(ws);
                    }
                }
            }
            // stdout closed: the daemon is gone; reap it.
            let _ = child.wait();
        });
        addr_rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("wspushd printed no listening line; stderr: {}", stderr_text.lock().unwrap()))
    })
}

/// Instantiates every case for both targets: `library::<area>::<case>` and
/// `daemon::<area>::<case>`.
macro_rules! conformance_cases {
    ($($area:ident { $($case:ident => $run:expr,)* })*) => {
        mod library {
            $(mod $area {
                $(#[test]
                fn $case() {
                    ($run)(crate::library_addr());
                })*
            })*
        }
        mod daemon {
            $(mod $area {
                $(#[test]
                fn $case() {
                    ($run)(crate::daemon_addr());
                })*
            })*
        }
    };
}

// ------------------------------------------------------------------------------------- client

/// An upgraded raw connection that reads the server's bytes exactly as sent.
struct Client {
    stream: TcpStream,
}

impl Client {
    fn open(addr: SocketAddr) -> Client {
        // The server sends nothing after the 101 until we do, so Raw has nothing buffered.
        let raw = Raw::upgrade(addr, "/ws?user=conformance");
        raw.stream.set_read_timeout(Some(ANSWER_WAIT)).unwrap();
        raw.stream.set_nodelay(true).unwrap();
        Client { stream: raw.stream }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Sends one masked frame; `first` is FIN/RSV/opcode.
    fn send_frame(&mut self, first: u8, payload: &[u8]) {
        self.send(&frame(first, payload));
    }

    fn read_exact(&mut self, n: usize, what: &str) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        let mut got = 0;
        while got < n {
            match self.stream.read(&mut buf[got..]) {
                Ok(0) => panic!("connection closed after {got} of {n} bytes of {what}: {:?}", &buf[..got]),
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    panic!("timed out after {got} of {n} bytes of {what}: {:?}", &buf[..got.min(64)])
                }
                Err(e) => panic!("reading {what}: {e}"),
            }
        }
        buf
    }

    /// The next bytes must be exactly `expected`.
    fn expect_bytes(&mut self, expected: &[u8], what: &str) {
        let got = self.read_exact(expected.len(), what);
        if got != expected {
            let at = got.iter().zip(expected).position(|(a, b)| a != b).unwrap_or(0);
            let show = |b: &[u8]| b[at..(at + 16).min(b.len())].to_vec();
            panic!(
                "{what}: bytes differ from offset {at} of {}: got {:?}.., expected {:?}.. (first bytes got {:?}, expected {:?})",
                expected.len(),
                show(&got),
                show(expected),
                &got[..got.len().min(12)],
                &expected[..expected.len().min(12)]
            );
        }
    }

    /// Reads one server frame: (first header byte, payload). Asserts it is unmasked and uses the
    /// minimal length encoding (RFC 6455 §5.2).
    fn read_frame(&mut self, what: &str) -> (u8, Vec<u8>) {
        let head = self.read_exact(2, what);
        assert_eq!(head[1] & 0x80, 0, "{what}: server frames must not be masked: {head:?}");
        let len = match head[1] & 0x7f {
            126 => {
                let n = u16::from_be_bytes(self.read_exact(2, what).try_into().unwrap()) as usize;
                assert!(n >= 126, "{what}: length {n} not minimally encoded");
                n
            }
            127 => {
                let n = u64::from_be_bytes(self.read_exact(8, what).try_into().unwrap());
                assert!(n > 0xffff && n >> 63 == 0, "{what}: length {n} not minimally encoded");
                n as usize
            }
            n => n as usize,
        };
        (head[0], self.read_exact(len, what))
    }

    /// The server fails the connection with `code`: its close frame (FIN, unmasked, that code, a
    /// UTF-8 reason), then — once we answer with our close — the end of the TCP stream.
    fn expect_failed(&mut self, code: u16) {
        let (first, payload) = self.read_frame("the server's close frame");
        assert_eq!(
            first, 0x88,
            "expected a final close frame with code {code}, got first byte {first:#04x}, payload {payload:?}"
        );
        assert!(payload.len() >= 2, "close frame without a code (expected {code}): {payload:?}");
        let got = u16::from_be_bytes([payload[0], payload[1]]);
        assert_eq!(got, code, "close code (reason {:?})", String::from_utf8_lossy(&payload[2..]));
        assert!(payload.len() <= 125, "control frame longer than 125 bytes");
        assert!(std::str::from_utf8(&payload[2..]).is_ok(), "close reason must be UTF-8: {payload:?}");
        // Answer the close (RFC 6455 §5.5.1). The server may already have closed the socket after
        // its close frame, so a failed write is not an error here.
        let _ = self.stream.write_all(&frame(0x88, &code.to_be_bytes()));
        self.expect_tcp_closed();
    }

    /// The server closes the TCP connection (read returns 0) within `TCP_CLOSE_WAIT`, without
    /// sending anything more.
    fn expect_tcp_closed(&mut self) {
        let deadline = Instant::now() + TCP_CLOSE_WAIT;
        let mut extra = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => extra.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    panic!("the server did not close TCP within {TCP_CLOSE_WAIT:?} after the close handshake")
                }
                Err(e) => panic!("expected an orderly TCP close (read returning 0), got {e}"),
            }
        }
        assert!(extra.is_empty(), "bytes after the close frame: {:?}", &extra[..extra.len().min(32)]);
        self.stream.set_read_timeout(Some(ANSWER_WAIT)).unwrap();
    }

    /// Nothing arrives for `SILENCE` (and the connection stays open).
    fn expect_silence(&mut self, what: &str) {
        self.stream.set_read_timeout(Some(SILENCE)).unwrap();
        let mut byte = [0u8; 16];
        match self.stream.peek(&mut byte) {
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Ok(0) => panic!("{what}: the server closed the connection"),
            Ok(n) => panic!("{what}: unexpected bytes {:?}", &byte[..n]),
            Err(e) => panic!("{what}: {e}"),
        }
        self.stream.set_read_timeout(Some(ANSWER_WAIT)).unwrap();
    }
}

/// A deterministic payload of `len` bytes.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

/// The exact bytes of an unmasked server frame (FIN set), minimal length encoding.
fn server_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    unmasked_frame(first, payload)
}

// ------------------------------------------------------------------------------------- areas

/// §5.2 base framing: length encodings, masking, message size.
mod framing {
    use super::*;

    /// A binary message of `len` bytes is echoed with exactly `header` then the payload.
    pub fn binary_echo(addr: SocketAddr, len: usize, header: &[u8]) {
        let mut client = Client::open(addr);
        let payload = pattern(len);
        client.send_frame(0x82, &payload);
        client.expect_bytes(header, &format!("header of the {len}-byte echo"));
        client.expect_bytes(&payload, &format!("payload of the {len}-byte echo"));
        client.expect_silence("after the echo");
    }

    pub fn text_echo(addr: SocketAddr) {
        let mut client = Client::open(addr);
        client.send_frame(0x81, b"Hello");
        client.expect_bytes(&[0x81, 0x05, b'H', b'e', b'l', b'l', b'o'], "text echo");
    }

    /// Two frames in one TCP segment are two messages, echoed in order.
    pub fn pipelined_frames(addr: SocketAddr) {
        let mut client = Client::open(addr);
        let mut both = frame(0x81, b"one");
        both.extend_from_slice(&frame(0x82, b"two"));
        client.send(&both);
        client.expect_bytes(&[0x81, 3, b'o', b'n', b'e', 0x82, 3, b't', b'w', b'o'], "two echoes");
    }

    /// A frame split into single-byte writes is still one message.
    pub fn frame_trickled_bytewise(addr: SocketAddr) {
        let mut client = Client::open(addr);
        for byte in frame(0x81, b"slow") {
            client.send(&[byte]);
        }
        client.expect_bytes(&[0x81, 4, b's', b'l', b'o', b'w'], "echo of a trickled frame");
    }

    /// §5.1: a client frame without the mask bit fails the connection with 1002.
    pub fn unmasked_text(addr: SocketAddr) {
        let mut client = Client::open(addr);
        client.send(&unmasked_frame(0x81, b"hi"));
        client.expect_failed(1002);
    }

    pub fn unmasked_empty_binary(addr: SocketAddr) {
        let mut client = Client::open(addr);
        client.send(&unmasked_frame(0x82, b""));
        client.expect_failed(1002);
    }

    /// §5.2: "the most significant bit MUST be 0" in a 64-bit length: a framing error (1002),
    /// whatever the size limit.
    pub fn length_with_msb_set(addr: SocketAddr) {
        let mut client = Client::open(addr);
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 63 | 5).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        client.send(&header);
        client.expect_failed(1002);
    }
}

/// §5.5.2/§5.5.3 ping and pong.
mod ping_pong {
    use super::*;

    pub fn ping_echoed_in_pong(addr: SocketAddr, len: usize) {
        let mut client = Client::open(addr);
        let payload = pattern(len);
        client.send_frame(0x89, &payload);
        client.expect_bytes(&server_frame(0x8a, &payload), &format!("pong to a {len}-byte ping"));
        client.expect_silence("after the pong");
    }

    /// §5.5: control frames carry at most 125 bytes.
    pub fn ping_of_126_bytes(addr: SocketAddr) {
        let mut client = Client::open(addr);
        client.send_frame(0x89, &pattern(126));
        client.expect_failed(1002);
    }

    /// §5.5.3: an unsolicited pong needs no answer; the connection goes on.
    pub fn unsolicited_pong_ignored(addr: SocketAddr) {
        let mut client = Client::open(addr);
        client.send_frame(0x8a, b"unsolicited");
        client.send_frame(0x81, b"after");
        client.expect_bytes(&[0x81, 5, b'a', b'f', b't', b'e', b'r'], "the echo right after an unsolicited pong");
    }
}

/// §5.2 reserved bits and opcodes: without a negotiated extension they fail the connection.
mod reserved {
    use super::*;

    /// A text frame with reserved bits `rsv` (0x40, 0x20 or 0x10) set.
    pub fn rsv_bit(addr: SocketAddr, rsv: u8) {
        let mut client = Client::open(addr);
        client.send_frame(0x81 | rsv, b"rsv");
        client.expect_failed(1002);
    }

    pub fn opcode(addr: SocketAddr, opcode: u8) {
        let mut client = Client::open(addr);
        client.send_frame(0x80 | opcode, b"op");
        client.expect_failed(1002);
    }
}

/// §5.4 fragmentation.
mod fragmentation {
    use super::*;

    pub fn text_in_three_fragments(addr: SocketAddr) {
        let mut client = Client::open(addr);
        client.send_frame(0x01, b"Hel");
        client.send_frame(0x00, b"lo, ");
        client.send_frame(0x80, b"world");
        client.expect_bytes(&server_frame(0x81, b"Hello, world"), "the reassembled message");
        client.expect_silence("after the message");
    }

    pub fn binary_in_fragments_with_empty_ones(addr: SocketAddr) {
        let mut client = Client::open(addr);
        client.send_frame(0x02, b"");
        client.send_frame(0x00, &[1, 2, 3]);
        client.send_frame(0x00, b"");
        client.send_frame(0x80, &[4]);
        client.expect_bytes(&[0x82, 4, 1, 2, 3, 4], "the reassembled binary message");
    }

    /// §5.4: control frames may be injected between fragments; the pong is sent while the message
    /// is still incomplete, the message only after its final fragment.
    pub fn ping_between_fragments(addr: SocketAddr) {
        let mut client = Client::open(addr);
        client.send_frame(0x01, b"frag");
        client.send_frame(0x89, b"ping");
        client.expect_bytes(&[0x8a, 4, b'p', b'i', b'n', b'g'], "the pong in the middle of a message");
        client.expect_silence("before the final fragment");
        client.send_frame(0x80, b"ment");
        client.expect_bytes(&server_frame(0x81, b"fragment"), "the message after the pong");
    }

    /// The same, all frames in one write: the pong still comes first.
    pub fn ping_between_fragments_in_one_write(addr: SocketAddr) {
        let mut client = Client::open(addr);
        let mut bytes = frame(0x01, b"ab");
        bytes.extend_from_slice(&frame(0x89, b"p"));
        bytes.extend_from_slice(&frame(0x80, b"cd"));
        client.send(&bytes);
        client.expect_bytes(&[0x8a, 1, b'p', 0x81, 4, b'a', b'b', b'c', b'd'], "pong, then the message");
    }

    pub fn continuation_without_start(addr: SocketAddr) {
        let mut client = Client::open(addr);
        client.send_frame(0x80, b"orphan");
        client.expect_failed(1002);
    }

    pub fn continuation_after_final_frame(addr: SocketAddr) {
        let mut client = Client::open(addr);
        client.send_frame(0x81, b"done");
        client.expect_bytes(&[0x81, 4, b'd', b'o', b'n', b'e'], "echo of the complete message");
        client.send_frame(0x80, b"late");
        client.expect_failed(1002);
    }

    /// A new data frame (`first`) inside a fragmented message.
    pub fn new_message_inside_fragmented(addr: SocketAddr, first: u8) {
        let mut client = Client::open(addr);
        client.send_frame(0x01, b"start");
        client.send_frame(first, b"intruder");
        client.expect_failed(1002);
    }

    /// §5.5: control frames must not be fragmented.
    pub fn fragmented_ping(addr: SocketAddr) {
        let mut client = Client::open(addr);
        client.send_frame(0x09, b"half");
        client.expect_failed(1002);
    }
}

/// §5.6/§8.1 text must be valid UTF-8, else 1007.
mod utf8 {
    use super::*;

    pub fn valid_multibyte_echoed(addr: SocketAddr) {
        let text = "aé€😀 κόσμε \u{10FFFF}\u{FEFF}";
        let mut client = Client::open(addr);
        client.send_frame(0x81, text.as_bytes());
        client.expect_bytes(&server_frame(0x81, text.as_bytes()), "the multibyte text echo");
    }

    /// A single text frame containing `bytes` (after a valid "ok").
    pub fn invalid(addr: SocketAddr, bytes: &[u8]) {
        let mut client = Client::open(addr);
        let mut payload = b"ok".to_vec();
        payload.extend_from_slice(bytes);
        client.send_frame(0x81, &payload);
        client.expect_failed(1007);
    }

    /// The same bytes in the final fragment of a fragmented message.
    pub fn invalid_in_final_fragment(addr: SocketAddr) {
        let mut client = Client::open(addr);
        client.send_frame(0x01, b"ok");
        client.send_frame(0x80, &[0xed, 0xa0, 0x80]);
        client.expect_failed(1007);
    }

    /// "€" (e2 82 ac) split over three fragments is valid.
    pub fn code_point_split_across_fragments(addr: SocketAddr) {
        let mut client = Client::open(addr);
        client.send_frame(0x01, &[b'x', 0xe2]);
        client.send_frame(0x00, &[0x82]);
        client.send_frame(0x80, &[0xac]);
        client.expect_bytes(&[0x81, 4, b'x', 0xe2, 0x82, 0xac], "the reassembled text");
    }

    /// A message ending in the middle of a code point is invalid.
    pub fn truncated_at_message_end(addr: SocketAddr) {
        let mut client = Client::open(addr);
        client.send_frame(0x01, &[b'x', 0xe2]);
        client.send_frame(0x80, &[0x82]);
        client.expect_failed(1007);
    }

    /// Fail fast: the first fragment's invalid byte is enough; the final one is never sent.
    pub fn fail_fast_on_first_fragment(addr: SocketAddr) {
        let mut client = Client::open(addr);
        client.send_frame(0x01, &[b'a', 0xff, b'b']);
        client.expect_failed(1007);
    }
}

/// §5.5.1, §7.1.5, §7.4 the close handshake and close codes.
mod close {
    use super::*;

    /// A close with a valid `code` and no reason is answered with exactly that code, then TCP
    /// is closed.
    pub fn valid_code_echoed(addr: SocketAddr, code: u16) {
        let mut client = Client::open(addr);
        client.send_frame(0x88, &code.to_be_bytes());
        let [hi, lo] = code.to_be_bytes();
        client.expect_bytes(&[0x88, 0x02, hi, lo], &format!("the close reply to {code}"));
        client.expect_tcp_closed();
    }

    /// A reason is allowed; the reply carries the same code (its own reason, if any, is UTF-8).
    pub fn code_with_reason_echoed(addr: SocketAddr) {
        let mut client = Client::open(addr);
        client.send_frame(0x88, &close_payload(1000, "done, thanks ✓"));
        let (first, payload) = client.read_frame("the close reply");
        assert_eq!(first, 0x88);
        assert_eq!(&payload[..2], &1000u16.to_be_bytes(), "close reply {payload:?}");
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
        client.expect_tcp_closed();
    }

    /// The longest legal close payload (2 + 123 bytes).
    pub fn reason_of_123_bytes(addr: SocketAddr) {
        let mut client = Client::open(addr);
        client.send_frame(0x88, &close_payload(1001, &"r".repeat(123)));
        let (first, payload) = client.read_frame("the close reply");
        assert_eq!(first, 0x88);
        assert_eq!(&payload[..2], &1001u16.to_be_bytes(), "close reply {payload:?}");
        client.expect_tcp_closed();
    }

    /// A close payload of 126 bytes is an oversized control frame.
    pub fn payload_of_126_bytes(addr: SocketAddr) {
        let mut client = Client::open(addr);
        client.send_frame(0x88, &close_payload(1000, &"r".repeat(124)));
        client.expect_failed(1002);
    }

    pub fn invalid_code(addr: SocketAddr, code: u16) {
        let mut client = Client::open(addr);
        client.send_frame(0x88, &code.to_be_bytes());
        client.expect_failed(1002);
    }

    pub fn one_byte_payload(addr: SocketAddr) {
        let mut client = Client::open(addr);
        client.send_frame(0x88, &[0x03]);
        client.expect_failed(1002);
    }

    /// An empty close (no status) is answered with an empty close.
    pub fn empty_close_echoed(addr: SocketAddr) {
        let mut client = Client::open(addr);
        client.send_frame(0x88, b"");
        client.expect_bytes(&[0x88, 0x00], "the empty close reply");
        client.expect_tcp_closed();
    }

    pub fn reason_invalid_utf8(addr: SocketAddr) {
        let mut client = Client::open(addr);
        let mut payload = close_payload(1000, "bad");
        payload
            .extend_from_slice(&[0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80]);
        client.send_frame(0x88, &payload);
        client.expect_failed(1007);
    }

    /// §1.4/§5.5.1: after the close frame no more data frames are processed: a message sent
    /// behind the close (same write) is not echoed.
    pub fn data_after_close_ignored(addr: SocketAddr) {
        let mut client = Client::open(addr);
        let mut bytes = frame(0x88, &1000u16.to_be_bytes());
        bytes.extend_from_slice(&frame(0x81, b"too late"));
        bytes.extend_from_slice(&frame(0x89, b"late ping"));
        client.send(&bytes);
        client.expect_bytes(&[0x88, 0x02, 0x03, 0xe8], "the close reply");
        client.expect_tcp_closed();
    }
}

/// §10.4 limits: message and frame size caps (`max_message_size`, 64 KiB here) → 1009.
mod limits {
    use super::*;

    pub fn message_of_max_size_echoed(addr: SocketAddr) {
        let mut client = Client::open(addr);
        let payload = pattern(MAX_MESSAGE);
        client.send_frame(0x82, &payload);
        client.expect_bytes(&[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0], "header of the 65536-byte echo");
        client.expect_bytes(&payload, "payload of the 65536-byte echo");
    }

    /// One byte over the cap, sent whole.
    pub fn frame_one_byte_over(addr: SocketAddr) {
        let mut client = Client::open(addr);
        client.send_frame(0x82, &pattern(MAX_MESSAGE + 1));
        client.expect_failed(1009);
    }

    /// Only the header of an oversized frame: 1009 comes without waiting for the payload.
    pub fn oversized_header_fails_before_payload(addr: SocketAddr, len: u64) {
        let mut client = Client::open(addr);
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&len.to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        client.send(&header);
        client.expect_failed(1009);
    }

    /// Fragments that sum to exactly the cap are fine.
    pub fn fragments_summing_to_max_echoed(addr: SocketAddr) {
        let mut client = Client::open(addr);
        let payload = pattern(MAX_MESSAGE);
        let (a, b) = payload.split_at(40_000);
        client.send_frame(0x02, a);
        client.send_frame(0x80, b);
        client.expect_bytes(&[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0], "header of the reassembled echo");
        client.expect_bytes(&payload, "payload of the reassembled echo");
    }

    /// Fragments, each under the cap, summing to more than it.
    pub fn fragments_summing_over_max(addr: SocketAddr) {
        let mut client = Client::open(addr);
        client.send_frame(0x02, &pattern(40_000));
        client.send_frame(0x00, &pattern(20_000));
        client.send_frame(0x80, &pattern(5_537));
        client.expect_failed(1009);
    }
}

conformance_cases! {
    framing {
        length_0 => |a| crate::framing::binary_echo(a, 0, &[0x82, 0x00]),
        length_125 => |a| crate::framing::binary_echo(a, 125, &[0x82, 125]),
        length_126 => |a| crate::framing::binary_echo(a, 126, &[0x82, 126, 0x00, 0x7e]),
        length_65535 => |a| crate::framing::binary_echo(a, 65535, &[0x82, 126, 0xff, 0xff]),
        length_65536 => |a| crate::framing::binary_echo(a, 65536, &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        text_echo => crate::framing::text_echo,
        pipelined_frames => crate::framing::pipelined_frames,
        frame_trickled_bytewise => crate::framing::frame_trickled_bytewise,
        unmasked_text_fails_1002 => crate::framing::unmasked_text,
        unmasked_empty_binary_fails_1002 => crate::framing::unmasked_empty_binary,
        length_with_msb_set_fails_1002 => crate::framing::length_with_msb_set,
    }
    ping_pong {
        ping_0_bytes_echoed => |a| crate::ping_pong::ping_echoed_in_pong(a, 0),
        ping_125_bytes_echoed => |a| crate::ping_pong::ping_echoed_in_pong(a, 125),
        ping_126_bytes_fails_1002 => crate::ping_pong::ping_of_126_bytes,
        unsolicited_pong_ignored => crate::ping_pong::unsolicited_pong_ignored,
    }
    reserved {
        rsv1_fails_1002 => |a| crate::reserved::rsv_bit(a, 0x40),
        rsv2_fails_1002 => |a| crate::reserved::rsv_bit(a, 0x20),
        rsv3_fails_1002 => |a| crate::reserved::rsv_bit(a, 0x10),
        opcode_3_fails_1002 => |a| crate::reserved::opcode(a, 3),
        opcode_4_fails_1002 => |a| crate::reserved::opcode(a, 4),
        opcode_5_fails_1002 => |a| crate::reserved::opcode(a, 5),
        opcode_6_fails_1002 => |a| crate::reserved::opcode(a, 6),
        opcode_7_fails_1002 => |a| crate::reserved::opcode(a, 7),
        opcode_11_fails_1002 => |a| crate::reserved::opcode(a, 11),
        opcode_12_fails_1002 => |a| crate::reserved::opcode(a, 12),
        opcode_13_fails_1002 => |a| crate::reserved::opcode(a, 13),
        opcode_14_fails_1002 => |a| crate::reserved::opcode(a, 14),
        opcode_15_fails_1002 => |a| crate::reserved::opcode(a, 15),
    }
    fragmentation {
        text_in_three_fragments => crate::fragmentation::text_in_three_fragments,
        binary_in_fragments_with_empty_ones => crate::fragmentation::binary_in_fragments_with_empty_ones,
        ping_between_fragments => crate::fragmentation::ping_between_fragments,
        ping_between_fragments_in_one_write => crate::fragmentation::ping_between_fragments_in_one_write,
        continuation_without_start_fails_1002 => crate::fragmentation::continuation_without_start,
        continuation_after_final_frame_fails_1002 => crate::fragmentation::continuation_after_final_frame,
        text_inside_fragmented_fails_1002 => |a| crate::fragmentation::new_message_inside_fragmented(a, 0x81),
        binary_inside_fragmented_fails_1002 => |a| crate::fragmentation::new_message_inside_fragmented(a, 0x82),
        fragmented_ping_fails_1002 => crate::fragmentation::fragmented_ping,
    }
    utf8 {
        valid_multibyte_echoed => crate::utf8::valid_multibyte_echoed,
        byte_ff_fails_1007 => |a| crate::utf8::invalid(a, &[0xff]),
        lone_continuation_fails_1007 => |a| crate::utf8::invalid(a, &[0x80]),
        overlong_fails_1007 => |a| crate::utf8::invalid(a, &[0xc0, 0xaf]),
        surrogate_fails_1007 => |a| crate::utf8::invalid(a, &[0xed, 0xa0, 0x80]),
        above_10ffff_fails_1007 => |a| crate::utf8::invalid(a, &[0xf4, 0x90, 0x80, 0x80]),
        invalid_in_final_fragment_fails_1007 => crate::utf8::invalid_in_final_fragment,
        code_point_split_across_fragments => crate::utf8::code_point_split_across_fragments,
        truncated_at_message_end_fails_1007 => crate::utf8::truncated_at_message_end,
        fail_fast_on_first_fragment => crate::utf8::fail_fast_on_first_fragment,
    }
    close {
        code_1000_echoed => |a| crate::close::valid_code_echoed(a, 1000),
        code_1001_echoed => |a| crate::close::valid_code_echoed(a, 1001),
        code_1002_echoed => |a| crate::close::valid_code_echoed(a, 1002),
        code_1003_echoed => |a| crate::close::valid_code_echoed(a, 1003),
        code_1007_echoed => |a| crate::close::valid_code_echoed(a, 1007),
        code_1008_echoed => |a| crate::close::valid_code_echoed(a, 1008),
        code_1009_echoed => |a| crate::close::valid_code_echoed(a, 1009),
        code_1010_echoed => |a| crate::close::valid_code_echoed(a, 1010),
        code_1011_echoed => |a| crate::close::valid_code_echoed(a, 1011),
        // 1012-1014 are registered with IANA (Service Restart, Try Again Later, Bad Gateway).
        code_1012_echoed => |a| crate::close::valid_code_echoed(a, 1012),
        code_1013_echoed => |a| crate::close::valid_code_echoed(a, 1013),
        code_1014_echoed => |a| crate::close::valid_code_echoed(a, 1014),
        code_3000_echoed => |a| crate::close::valid_code_echoed(a, 3000),
        code_3999_echoed => |a| crate::close::valid_code_echoed(a, 3999),
        code_4000_echoed => |a| crate::close::valid_code_echoed(a, 4000),
        code_4999_echoed => |a| crate::close::valid_code_echoed(a, 4999),
        code_with_reason_echoed => crate::close::code_with_reason_echoed,
        reason_of_123_bytes => crate::close::reason_of_123_bytes,
        payload_of_126_bytes_fails_1002 => crate::close::payload_of_126_bytes,
        code_0_fails_1002 => |a| crate::close::invalid_code(a, 0),
        code_999_fails_1002 => |a| crate::close::invalid_code(a, 999),
        code_1004_fails_1002 => |a| crate::close::invalid_code(a, 1004),
        code_1005_fails_1002 => |a| crate::close::invalid_code(a, 1005),
        code_1006_fails_1002 => |a| crate::close::invalid_code(a, 1006),
        code_1015_fails_1002 => |a| crate::close::invalid_code(a, 1015),
        code_1016_fails_1002 => |a| crate::close::invalid_code(a, 1016),
        code_2999_fails_1002 => |a| crate::close::invalid_code(a, 2999),
        code_5000_fails_1002 => |a| crate::close::invalid_code(a, 5000),
        code_65535_fails_1002 => |a| crate::close::invalid_code(a, 65535),
        one_byte_payload_fails_1002 => crate::close::one_byte_payload,
        empty_close_echoed => crate::close::empty_close_echoed,
        reason_invalid_utf8_fails_1007 => crate::close::reason_invalid_utf8,
        data_after_close_ignored => crate::close::data_after_close_ignored,
    }
    limits {
        message_of_max_size_echoed => crate::limits::message_of_max_size_echoed,
        frame_one_byte_over_fails_1009 => crate::limits::frame_one_byte_over,
        oversized_header_fails_1009_before_payload => |a| crate::limits::oversized_header_fails_before_payload(a, 65537),
        huge_header_fails_1009_before_payload => |a| crate::limits::oversized_header_fails_before_payload(a, 1 << 40),
        fragments_summing_to_max_echoed => crate::limits::fragments_summing_to_max_echoed,
        fragments_summing_over_max_fails_1009 => crate::limits::fragments_summing_over_max,
    }
}
