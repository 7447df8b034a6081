//! Runs the loadgen example against the wspushd example daemon (all phases, 500 connections) and
//! against an in-process wspush server whose minimal admin HTTP API (the wspushd contract:
//! `POST /publish?user=U` and `POST /broadcast` → `200 {"delivered":N}`, keep-alive) can be made
//! to misbehave, and checks that loadgen reports what really happened: every message delivered
//! by a correct server, exact loss / duplicate / reorder counts and a failing exit status
//! otherwise.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use wspush::{Config, Handler, MessageKind, Request, Server, ServerHandle, UpgradeDecision};

struct StandIn;

impl Handler for StandIn {
    fn on_upgrade(&self, _: &ServerHandle, request: &Request<'_>) -> UpgradeDecision {
        match request.query_param("user") {
            Some(user) if !user.is_empty() => UpgradeDecision::Accept(user.as_bytes().to_vec()),
            _ => UpgradeDecision::Reject(401),
        }
    }
}

/// Publish numbers (1-based, counted over all publish requests) at which the admin API lies.
#[derive(Clone, Copy, Default)]
struct Faults {
    /// Answer 200 without publishing.
    drop: Option<u64>,
    /// Publish twice.
    duplicate: Option<u64>,
    /// Hold the payload back and publish it right after the next publish to the same user.
    delay: Option<u64>,
}

struct Admin {
    server: ServerHandle,
    faults: Faults,
    publishes: AtomicU64,
    held: Mutex<Option<(String, Vec<u8>)>>,
}

impl Admin {
    fn handle(&self, target: &str, body: &[u8]) -> (u16, String) {
        let delivered = if target == "/broadcast" {
            self.server.broadcast(body, MessageKind::Text).unwrap()
        } else if let Some(user) = target.strip_prefix("/publish?user=") {
            let n = self.publishes.fetch_add(1, Ordering::SeqCst) + 1;
            let publish = |payload: &[u8]| self.server.publish(user.as_bytes(), payload, MessageKind::Text).unwrap();
            if self.faults.drop == Some(n) {
                1
            } else if self.faults.duplicate == Some(n) {
                publish(body);
                publish(body)
            } else if self.faults.delay == Some(n) {
                *self.held.lock().unwrap() = Some((user.to_string(), body.to_vec()));
                1
            } else {
                let delivered = publish(body);
                let mut held = self.held.lock().unwrap();
                if held.as_ref().is_some_and(|(held_user, _)| held_user == user) {
                    let (_, payload) = held.take().unwrap();
                    publish(&payload);
                }
                delivered
            }
        } else {
            return (404, "not found".into());
        };
        (200, format!("{{\"delivered\":{delivered}}}"))
    }

    /// One keep-alive HTTP/1.1 connection: requests with Content-Length bodies, answered in order.
    fn serve(&self, stream: TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        loop {
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                return;
            }
            let target = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut length = 0;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 {
                    return;
                }
                if header.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap();
                    }
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            let (status, text) = self.handle(&target, &body);
            let response = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            );
            if writer.write_all(response.as_bytes()).is_err() {
                return;
            }
        }
    }
}

/// A wspush server on 127.0.0.1:0 plus the admin API on another port. The server stops when the
/// returned `Server` is dropped; the admin threads end with the test process.
fn start_stand_in(faults: Faults) -> (Server, u16, u16) {
    let config = Config { listen: "127.0.0.1:0".into(), threads: 2, ..Config::default() };
    let server = Server::start(config, StandIn).unwrap();
    let ws_port = server.local_addr().port();
    let admin =
        Arc::new(Admin { server: server.handle(), faults, publishes: AtomicU64::new(0), held: Mutex::new(None) });
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let _ = stream.set_nodelay(true);
            let admin = Arc::clone(&admin);
            std::thread::spawn(move || admin.serve(stream));
        }
    });
    (server, ws_port, admin_port)
}

/// Builds the loadgen and wspushd examples once, with this test's profile and target dir, and
/// returns the directory holding them.
fn examples_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // The test executable lives in <target-dir>/<profile-dir>/deps/.
        let test_exe = std::env::current_exe().unwrap();
        let profile_dir = test_exe.parent().and_then(|deps| deps.parent()).unwrap().to_path_buf();
        let target_dir = profile_dir.parent().unwrap();
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_string(),
            Some(other) => other.to_string(),
        };
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--example", "loadgen", "--example", "wspushd", "--profile", &profile])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success(), "building the loadgen and wspushd examples failed");
        profile_dir.join("examples")
    })
}

/// The wspushd daemon in demo + echo mode on ports 0/0; killed when dropped.
struct Daemon {
    child: Child,
    ws_port: u16,
    admin_port: u16,
}

impl Daemon {
    fn start() -> Daemon {
        let mut child = Command::new(examples_dir().join("wspushd"))
            .args(["--demo", "--echo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--threads", "2"])
            // Frequent pings: loadgen's clients must answer them or be closed as idle.
            .args(["--ping-interval-ms", "200", "--idle-timeout-ms", "2000"])
            // loadgen opens hundreds of connections from one address at once.
            .args(["--max-connections-per-ip", "0", "--max-handshakes-per-ip-per-sec", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let (lines_tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        // Keeps draining stdout so the daemon never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        // "wspushd listening on ws://127.0.0.1:PORT/ws, admin on http://127.0.0.1:PORT"
        let listening = loop {
            let line = lines.recv_timeout(Duration::from_secs(20)).expect("wspushd did not report its ports");
            if line.starts_with("wspushd listening on ") {
                break line;
            }
        };
        let port_after = |scheme: &str| -> u16 {
            let rest = listening.split(scheme).nth(1).unwrap();
            let authority = rest.split(['/', ',']).next().unwrap().trim();
            authority.rsplit(':').next().unwrap().parse().unwrap()
        };
        Daemon { ws_port: port_after("ws://"), admin_port: port_after("http://"), child }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The number at `"key":` inside the top-level object `"section":{...}` of loadgen's JSON.
fn number(json: &str, section: &str, key: &str) -> f64 {
    let start = json.find(&format!("\"{section}\":{{")).unwrap_or_else(|| panic!("no section {section} in {json}"));
    let object = &json[start..];
    let object = &object[..object.find('}').unwrap()];
    let at = object.find(&format!("\"{key}\":")).unwrap_or_else(|| panic!("no {section}.{key} in {json}"));
    let value: String = object[at + key.len() + 3..].chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    value.parse().unwrap_or_else(|_| panic!("{section}.{key} is not a number in {json}"))
}

/// Runs loadgen with `--json` and the whitespace-separated `args`; returns (exit code, stdout).
fn run_loadgen(ws_port: u16, admin_port: u16, args: &str) -> (i32, String) {
    let output = Command::new(examples_dir().join("loadgen"))
        .args([
            "--url",
            &format!("ws://127.0.0.1:{ws_port}/ws"),
            "--admin",
            &format!("127.0.0.1:{admin_port}"),
            "--json",
        ])
        .args(args.split_whitespace())
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    eprintln!("loadgen stderr:\n{}", String::from_utf8_lossy(&output.stderr));
    eprintln!("loadgen stdout:\n{stdout}");
    (output.status.code().unwrap_or(-1), stdout)
}

#[test]
fn every_phase_at_500_connections_against_wspushd_loses_nothing() {
    let daemon = Daemon::start();
    let pid = daemon.child.id();
    // The run lasts longer than the idle timeout, so clients that ignored pings would be closed.
    let args = format!(
        "--conns 500 --tabs 2 --phases connect,idle,publish,broadcast,echo --server-pid {pid} --settle-secs 1 \
         --publish-rate 400 --publish-secs 1.5 --broadcasts 5 --echo-conns 20 --echo-secs 0.5 --drain-secs 3"
    );
    let (code, json) = run_loadgen(daemon.ws_port, daemon.admin_port, &args);
    assert_eq!(code, 0, "loadgen reported anomalies or failed");
    assert_eq!(number(&json, "connect", "opened"), 500.0);
    assert_eq!(number(&json, "idle", "warm"), 500.0);
    assert!(number(&json, "idle", "server_bytes_per_conn").is_finite());
    let expected = number(&json, "publish", "expected");
    assert!(expected > 0.0);
    assert_eq!(number(&json, "publish", "received"), expected);
    for key in ["lost", "duplicated", "reordered", "unexpected"] {
        assert_eq!(number(&json, "publish", key), 0.0, "publish {key}");
        assert_eq!(number(&json, "broadcast", key), 0.0, "broadcast {key}");
    }
    // Each publish goes to both tabs of its user.
    assert_eq!(number(&json, "publish", "server_delivered"), expected);
    assert_eq!(number(&json, "broadcast", "received"), 5.0 * 500.0);
    assert!(number(&json, "echo", "messages") > 0.0);
    assert_eq!(number(&json, "echo", "conns"), 20.0);
    assert!(number(&json, "echo", "server_cpu_secs") > 0.0);
    for phase in ["idle", "publish", "broadcast"] {
        assert_eq!(number(&json, phase, "closed_by_server"), 0.0, "{phase}: server closed connections");
    }
}

#[test]
fn lost_duplicated_and_reordered_publishes_are_counted_and_fail_the_run() {
    let faults = Faults { drop: Some(5), duplicate: Some(9), delay: Some(13) };
    let (_server, ws_port, admin_port) = start_stand_in(faults);
    // Four users with one tab each and ~100 publishes: the held publish is followed by another
    // to the same user almost surely, making the delay a reorder rather than a loss.
    let args = "--conns 4 --phases publish --publish-rate 100 --publish-secs 1 --drain-secs 1 --admin-conns 1";
    let (code, json) = run_loadgen(ws_port, admin_port, args);
    assert_eq!(code, 1, "anomalies must make the exit status non-zero");
    assert_eq!(number(&json, "publish", "lost"), 1.0);
    assert_eq!(number(&json, "publish", "duplicated"), 1.0);
    assert_eq!(number(&json, "publish", "reordered"), 1.0);
    assert!(json.contains("\"anomalies\":3,"), "{json}");
}

#[test]
fn refused_connections_are_reported_by_kind() {
    // A port nobody listens on: bind, read the port, close.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (code, json) = run_loadgen(port, port, "--conns 50 --phases connect");
    assert_eq!(code, 0, "connection failures are reported, not message anomalies");
    assert_eq!(number(&json, "connect", "opened"), 0.0);
    assert_eq!(number(&json, "connect", "failed_refused"), 50.0);
}
