//! The C ABI as a C++ host sees it: builds examples/cpp/push_server.cpp (with its RAII wrapper
//! examples/cpp/wspush.hpp) with g++ -std=c++17 against the unchanged include/wspush.h and the
//! libwspush.so cargo just built, runs it, and talks to it with a real WebSocket client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// The flags the example must build with: a host's usual strict warning set.
const CXX_FLAGS: &[&str] = &["-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic"];
const WAIT: Duration = Duration::from_secs(10);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// target/<profile>/, where cargo put libwspush.so for this build (the test binary lives in
/// target/<profile>/deps/).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let so = dir.join("libwspush.so");
    let rlib = dir.join("libwspush.rlib");
    assert!(so.exists(), "{} missing: the cdylib should be built with the tests", so.display());
    // One rustc run writes the rlib the tests link and the .so: an older .so is stale.
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).unwrap();
    if rlib.exists() {
        let lag = modified(&rlib).duration_since(modified(&so)).unwrap_or_default();
        assert!(lag < Duration::from_secs(5), "{} is older than the rlib: stale", so.display());
    }
    dir
}

/// Builds the example once per test run.
fn example_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let lib_dir = profile_dir();
        let output = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("push_server_cpp");
        let result = Command::new("g++")
            .args(CXX_FLAGS)
            .arg("-I")
            .arg(repo().join("include"))
            .arg(repo().join("examples/cpp/push_server.cpp"))
            .arg("-o")
            .arg(&output)
            .arg("-L")
            .arg(&lib_dir)
            .arg("-lwspush")
            .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
            .output()
            .unwrap();
        assert!(result.status.success(), "g++ failed:\n{}", String::from_utf8_lossy(&result.stderr));
        output
    })
}

/// The running example: its stdin, and its stdout lines as they come.
struct Host {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Host {
    fn spawn(listen: &str) -> Host {
        let mut child = Command::new(example_binary())
            .arg(listen)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (sender, lines) = channel();
        // stdout and stderr both feed the line channel, so a test can wait for either.
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for stream in [Box::new(stdout) as Box<dyn Read + Send>, Box::new(stderr)] {
            let sender = sender.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stdin = child.stdin.take();
        Host { child, stdin, lines }
    }

    /// Starts the example on a free port and returns it with that port.
    fn start() -> (Host, u16) {
        let mut host = Host::spawn("127.0.0.1:0");
        let line = host.expect_line("listening on port ");
        let port = line["listening on port ".len()..].parse().unwrap();
        (host, port)
    }

    /// Waits for an output line starting with `prefix` and returns it.
    fn expect_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!("no line starting with {prefix:?}; got {seen:?}");
    }

    fn write_stdin(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: plain kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, signal) }, 0);
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "push_server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Only matters when a test failed half-way: don't leave the process behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn connect(port: u16, query: &str) -> Result<WebSocket<TcpStream>, tungstenite::Error> {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    tungstenite::client(format!("ws://127.0.0.1:{port}/ws?{query}"), stream).map(|(ws, _)| ws).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => e,
        tungstenite::HandshakeError::Interrupted(_) => panic!("blocking handshake interrupted"),
    })
}

fn read_text(ws: &mut WebSocket<TcpStream>) -> String {
    loop {
        match ws.read().unwrap() {
            Message::Text(text) => return text.as_str().to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

fn expect_going_away(ws: &mut WebSocket<TcpStream>) {
    match ws.read() {
        Ok(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected close 1001, got {other:?}"),
    }
}

fn rejected_status(result: Result<WebSocket<TcpStream>, tungstenite::Error>) -> u16 {
    match result {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("expected an HTTP rejection, got {e}"),
        Ok(_) => panic!("expected an HTTP rejection, the upgrade was accepted"),
    }
}

#[test]
fn cpp_host_authenticates_welcomes_publishes_and_stops_on_sigterm() {
    let (mut host, port) = Host::start();

    let mut alice_tab1 = connect(port, "user=alice&token=alice-secret").unwrap();
    assert_eq!(read_text(&mut alice_tab1), "welcome alice", "welcome sent from inside on_open");
    let mut alice_tab2 = connect(port, "user=alice&token=alice-secret").unwrap();
    assert_eq!(read_text(&mut alice_tab2), "welcome alice");
    // Each tab is welcomed once: the welcome goes to the new connection, not to the user.
    host.expect_line("open conn=");
    host.expect_line("open conn=");

    assert_eq!(rejected_status(connect(port, "user=alice&token=bob-secret")), 401);
    assert_eq!(rejected_status(connect(port, "token=alice-secret")), 401);
    assert!(host.expect_line("reject ").ends_with("bad token for alice"));

    host.write_stdin("alice\tyou have 3 new messages\n");
    assert_eq!(read_text(&mut alice_tab1), "you have 3 new messages");
    assert_eq!(read_text(&mut alice_tab2), "you have 3 new messages");
    assert_eq!(host.expect_line("publish user=alice"), "publish user=alice delivered=2");
    // A line split across writes is published once whole; an unknown user reaches nobody.
    host.write_stdin("bob\tnobody ");
    host.write_stdin("home\r\n");
    assert_eq!(host.expect_line("publish user=bob"), "publish user=bob delivered=0");
    host.write_stdin("\tempty user\n");
    // WSPUSH_RESULT_INVALID_USER_ID, reported through the wrapper's std::error_code.
    assert!(host.expect_line("publish user= ").starts_with("publish user= failed: wspush:6 ("));

    alice_tab2.send(Message::text("read receipt 42")).unwrap();
    let line = host.expect_line("message conn=");
    assert!(line.ends_with("user=alice text=read receipt 42"), "{line}");

    let mut health = TcpStream::connect(("127.0.0.1", port)).unwrap();
    health.set_read_timeout(Some(WAIT)).unwrap();
    health.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    health.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert!(response.ends_with("\r\n\r\nok\n"), "{response}");

    host.signal(libc::SIGTERM);
    expect_going_away(&mut alice_tab1);
    expect_going_away(&mut alice_tab2);
    host.expect_line("signal Terminated");
    assert!(host.expect_line("close conn=").ends_with("user=alice code=1001"));
    assert!(host.expect_line("close conn=").ends_with("user=alice code=1001"));
    host.expect_line("stopped: 2 opened, 1 messages in");
    assert_eq!(host.wait_exit().code(), Some(0));
}

#[test]
fn cpp_host_stops_on_sigint() {
    let (mut host, port) = Host::start();
    let mut bob = connect(port, "user=bob&token=bob-secret").unwrap();
    assert_eq!(read_text(&mut bob), "welcome bob");
    host.signal(libc::SIGINT);
    expect_going_away(&mut bob);
    host.expect_line("signal Interrupt");
    assert_eq!(host.wait_exit().code(), Some(0));
}

#[test]
fn cpp_host_exits_cleanly_when_stdin_ends() {
    let (mut host, port) = Host::start();
    let mut bob = connect(port, "user=bob&token=bob-secret").unwrap();
    assert_eq!(read_text(&mut bob), "welcome bob");
    drop(host.stdin.take());
    expect_going_away(&mut bob);
    host.expect_line("stopping");
    host.expect_line("stopped: 1 opened, 0 messages in");
    assert_eq!(host.wait_exit().code(), Some(0));
}

/// A start failure surfaces as the wrapper's exception, with the engine's description.
#[test]
fn cpp_host_reports_a_busy_port_and_exits_1() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut host = Host::spawn(&format!("127.0.0.1:{port}"));
    // WSPUSH_RESULT_BIND_FAILED, thrown by PushServer::start as wspush::Error.
    assert!(host.expect_line("push_server: start: ").ends_with("[wspush:5]"));
    host.expect_line("push_server: is another process listening on ");
    assert_eq!(host.wait_exit().code(), Some(1));
}
