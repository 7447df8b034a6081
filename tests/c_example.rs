//! The C surface as a C host sees it: builds examples/c/push_server.c with gcc against
//! include/wspush.h and the libwspush.so cargo just built, runs it, and talks to it with a real
//! WebSocket client. Also checks the header under g++ and that C and Rust agree on struct layout.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// The C compiler flags the example must build with.
const C_FLAGS: &[&str] = &["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"];
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

fn tmp_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

fn compile(compiler: &str, flags: &[&str], source: &Path, output: &Path, link: bool) {
    let lib_dir = profile_dir();
    let mut command = Command::new(compiler);
    command.args(flags).arg("-I").arg(repo().join("include")).arg(source).arg("-o").arg(output);
    if link {
        command.arg("-L").arg(&lib_dir).arg("-lwspush").arg(format!("-Wl,-rpath,{}", lib_dir.display()));
    }
    let result = command.output().unwrap();
    assert!(
        result.status.success(),
        "{compiler} failed on {}:\n{}",
        source.display(),
        String::from_utf8_lossy(&result.stderr)
    );
}

/// Builds the example once per test run.
fn example_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let output = tmp_dir().join("push_server");
        compile("gcc", C_FLAGS, &repo().join("examples/c/push_server.c"), &output, true);
        output
    })
}

/// The running example: its stdin, and its stdout lines as they come.
struct Host {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    port: u16,
}

impl Host {
    fn start() -> Host {
        let mut child = Command::new(example_binary())
            .arg("127.0.0.1:0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut host = Host { child, stdin, lines, port: 0 };
        let line = host.expect_line("listening on port ");
        host.port = line["listening on port ".len()..].parse().unwrap();
        host
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

    fn publish_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
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

fn rejected_status(result: Result<WebSocket<TcpStream>, tungstenite::Error>) -> u16 {
    match result {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("expected an HTTP rejection, got {e}"),
        Ok(_) => panic!("expected an HTTP rejection, the upgrade was accepted"),
    }
}

#[test]
fn example_host_authenticates_welcomes_publishes_and_stops_on_sigterm() {
    let mut host = Host::start();
    let port = host.port;

    let mut alice = connect(port, "user=alice&token=alice-secret").unwrap();
    assert_eq!(read_text(&mut alice), "welcome alice", "welcome pushed from inside on_open");
    host.expect_line("open conn=");

    assert_eq!(rejected_status(connect(port, "user=alice&token=wrong")), 401);
    assert_eq!(rejected_status(connect(port, "token=alice-secret")), 401);

    host.publish_line("alice\tyou have 3 new messages\n");
    assert_eq!(read_text(&mut alice), "you have 3 new messages");
    assert_eq!(host.expect_line("publish user=alice"), "publish user=alice result=ok delivered=1");
    host.publish_line("bob\tnobody home\n");
    assert_eq!(host.expect_line("publish user=bob"), "publish user=bob result=ok delivered=0");

    alice.send(Message::text("read receipt 42")).unwrap();
    let line = host.expect_line("message conn=");
    assert!(line.ends_with("user=alice text=read receipt 42"), "{line}");

    let mut health = TcpStream::connect(("127.0.0.1", port)).unwrap();
    health.set_read_timeout(Some(WAIT)).unwrap();
    health.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    health.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert!(response.contains("Content-Type: text/plain\r\n") && response.ends_with("\r\n\r\nok\n"), "{response}");

    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(host.child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    match alice.read() {
        Ok(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected close 1001, got {other:?}"),
    }
    let line = host.expect_line("close conn=");
    assert!(line.ends_with("user=alice code=1001"), "{line}");
    host.expect_line("stopped: 1 opened, 1 messages in");
    assert_eq!(host.wait_exit().code(), Some(0));
}

#[test]
fn example_host_exits_cleanly_when_stdin_ends() {
    let mut host = Host::start();
    let mut bob = connect(host.port, "user=bob&token=bob-secret").unwrap();
    assert_eq!(read_text(&mut bob), "welcome bob");
    drop(host.stdin.take());
    host.expect_line("stopping");
    assert_eq!(host.wait_exit().code(), Some(0));
}

#[test]
fn header_compiles_as_cpp17() {
    let source = tmp_dir().join("header_check.cpp");
    std::fs::write(
        &source,
        "#include \"wspush.h\"\n\
         #include <cstring>\n\
         int main() {\n\
             wspush_callbacks callbacks{};\n\
             callbacks.size = sizeof callbacks;\n\
             wspush_config *config = wspush_config_new();\n\
             wspush_result result = wspush_config_set_callbacks(config, &callbacks);\n\
             wspush_config_free(config);\n\
             return result == WSPUSH_RESULT_OK && std::strlen(wspush_version()) > 0 ? 0 : 1;\n\
         }\n",
    )
    .unwrap();
    let output = tmp_dir().join("header_check_cpp");
    compile("g++", &["-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic"], &source, &output, true);
    let status = Command::new(&output).status().unwrap();
    assert!(status.success(), "C++ program using the header failed: {status}");
}

/// C and Rust must agree on the layout of every struct the host fills or reads.
#[test]
fn c_and_rust_agree_on_struct_layout() {
    use std::mem::{offset_of, size_of};
    use wspush::ffi::{wspush_callbacks, wspush_stats_snapshot};

    let source = tmp_dir().join("layout_check.c");
    std::fs::write(
        &source,
        "#include <stdio.h>\n#include \"wspush.h\"\n\
         int main(void) {\n\
             printf(\"%zu %zu %zu %zu %zu\\n\", sizeof(wspush_callbacks),\n\
                    offsetof(wspush_callbacks, on_upgrade), offsetof(wspush_callbacks, on_http),\n\
                    sizeof(wspush_stats_snapshot), offsetof(wspush_stats_snapshot, pings_total));\n\
             return 0;\n\
         }\n",
    )
    .unwrap();
    let output = tmp_dir().join("layout_check");
    compile("gcc", C_FLAGS, &source, &output, false);
    let printed = Command::new(&output).output().unwrap();
    let expected = format!(
        "{} {} {} {} {}\n",
        size_of::<wspush_callbacks>(),
        offset_of!(wspush_callbacks, on_upgrade),
        offset_of!(wspush_callbacks, on_http),
        size_of::<wspush_stats_snapshot>(),
        offset_of!(wspush_stats_snapshot, pings_total),
    );
    assert_eq!(String::from_utf8_lossy(&printed.stdout), expected);
}
