//! External processes the tests start: wspushd (read until its "listening" line, its output kept
//! for failure messages) and HAProxy (from a generated config, until its frontends listen).

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A started wspushd: the child (the caller kills it), its two addresses, and its output so far.
pub struct Wspushd {
    pub child: Child,
    pub ws: SocketAddr,
    pub admin: SocketAddr,
    pub stdout: Arc<Mutex<String>>,
    pub stderr: Arc<Mutex<String>>,
}

/// Copies a pipe into a shared string (so the process never blocks on a full pipe), reporting
/// each line on `lines` as well.
fn collect(
    pipe: impl Read + Send + 'static,
    into: Arc<Mutex<String>>,
    lines: Option<mpsc::Sender<String>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            into.lock().unwrap().push_str(&format!("{line}\n"));
            if let Some(lines) = &lines {
                let _ = lines.send(line);
            }
        }
    })
}

/// Runs `command` (wspushd, directly or through a wrapper such as prlimit) with piped output
/// and waits up to 20 s for "wspushd listening on ws://ADDR/..., admin on http://ADDR"; panics
/// with its output, naming it `name`, if it exits or says nothing first.
pub fn spawn_wspushd(mut command: Command, name: &str) -> Wspushd {
    let mut child =
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start wspushd");
    let stdout = Arc::new(Mutex::new(String::new()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let (lines_tx, lines) = mpsc::channel();
    collect(child.stdout.take().unwrap(), Arc::clone(&stdout), Some(lines_tx));
    let stderr_reader = collect(child.stderr.take().unwrap(), Arc::clone(&stderr), None);
    let deadline = Instant::now() + Duration::from_secs(20);
    let listening = loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.starts_with("wspushd listening on ") => break line,
            Ok(_) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stdout closed: the process exited. Its stderr says why.
                let status = child.wait().expect("wait for wspushd");
                let _ = stderr_reader.join();
                panic!(
                    "{name}: wspushd exited ({status}) before listening; stderr:\n{}stdout:\n{}",
                    stderr.lock().unwrap(),
                    stdout.lock().unwrap()
                );
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{name}: no listening line within 20 s; stderr:\n{}", stderr.lock().unwrap());
            }
        }
    };
    let ws = listening.split("ws://").nth(1).and_then(|rest| rest.split('/').next()).unwrap();
    let admin = listening.split("http://").nth(1).unwrap().trim();
    Wspushd { child, ws: ws.parse().unwrap(), admin: admin.parse().unwrap(), stdout, stderr }
}

/// Whether the `haproxy` binary (Debian package haproxy) can run; when it can't, says so loudly
/// (naming `test`), or fails when WSPUSH_REQUIRE_HAPROXY=1 (CI sets it).
pub fn haproxy_available(test: &str) -> bool {
    if Command::new("haproxy").arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok() {
        return true;
    }
    let why = "haproxy is not installed (apt-get install haproxy)";
    if std::env::var("WSPUSH_REQUIRE_HAPROXY").as_deref() == Ok("1") {
        panic!("cannot run {test} ({why}) but WSPUSH_REQUIRE_HAPROXY=1");
    }
    eprintln!("\n*** SKIPPED {test}: {why}. CI sets WSPUSH_REQUIRE_HAPROXY=1. ***\n");
    false
}

/// Runs HAProxy in the foreground on `config` (written into `dir`) and waits until every port of
/// `frontends` accepts connections; panics with its stderr if it exits first.
pub fn spawn_haproxy(config: &str, dir: &std::path::Path, frontends: &[u16]) -> Child {
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new("haproxy")
        .arg("-db") // foreground
        .arg("-f")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start haproxy");
    let deadline = Instant::now() + Duration::from_secs(10);
    while frontends.iter().any(|&port| TcpStream::connect(("127.0.0.1", port)).is_err()) {
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
            panic!("haproxy exited ({status}): {stderr}");
        }
        assert!(Instant::now() < deadline, "haproxy is not listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}
