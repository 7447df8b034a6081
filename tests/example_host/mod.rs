//! Shared by the C and C++ example tests: compiles a host program against include/wspush.h and
//! the libwspush.so cargo just built, runs it, reads its output lines, and talks to it with a real
//! WebSocket client.
#![allow(dead_code)] // each test crate uses its own subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

pub const WAIT: Duration = Duration::from_secs(10);

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// target/<profile>/, where cargo put libwspush.so for this build (the test binary lives in
/// target/<profile>/deps/).
pub fn profile_dir() -> PathBuf {
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

pub fn tmp_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// Compiles `source` with the project's include/ on the path, linking libwspush when `link`.
pub fn compile(compiler: &str, flags: &[&str], source: &Path, output: &Path, link: bool) {
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

/// A running example host: its stdin, and its stdout and stderr lines as they come.
pub struct Host {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Host {
    pub fn spawn(binary: &Path, listen: &str) -> Host {
        let mut command = Command::new(binary);
        command.arg(listen);
        Host::spawn_command(command)
    }

    /// Runs `command` (e.g. the host under valgrind) with piped stdio, as `spawn` does.
    pub fn spawn_command(mut command: Command) -> Host {
        let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
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

    /// Starts the host on a free port and returns it with that port (from its
    /// "listening on port N" line).
    pub fn start(binary: &Path) -> (Host, u16) {
        Host::port_of(Host::spawn(binary, "127.0.0.1:0"))
    }

    /// Waits for the host's "listening on port N" line.
    pub fn port_of(mut host: Host) -> (Host, u16) {
        let line = host.expect_line("listening on port ");
        let port = line["listening on port ".len()..].parse().unwrap();
        (host, port)
    }

    /// Waits for an output line starting with `prefix` and returns it.
    pub fn expect_line(&mut self, prefix: &str) -> String {
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

    pub fn write_stdin(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: plain kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, signal) }, 0);
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        self.wait_exit_within(WAIT)
    }

    pub fn wait_exit_within(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the host did not exit");
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

pub fn connect(port: u16, query: &str) -> Result<WebSocket<TcpStream>, tungstenite::Error> {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    tungstenite::client(format!("ws://127.0.0.1:{port}/ws?{query}"), stream).map(|(ws, _)| ws).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => e,
        tungstenite::HandshakeError::Interrupted(_) => panic!("blocking handshake interrupted"),
    })
}

pub fn read_text(ws: &mut WebSocket<TcpStream>) -> String {
    loop {
        match ws.read().unwrap() {
            Message::Text(text) => return text.as_str().to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

pub fn expect_going_away(ws: &mut WebSocket<TcpStream>) {
    match ws.read() {
        Ok(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected close 1001, got {other:?}"),
    }
}

pub fn rejected_status(result: Result<WebSocket<TcpStream>, tungstenite::Error>) -> u16 {
    match result {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("expected an HTTP rejection, got {e}"),
        Ok(_) => panic!("expected an HTTP rejection, the upgrade was accepted"),
    }
}
