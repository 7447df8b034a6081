//! Runs the loadgen example against an in-process wspush server with a minimal admin HTTP API
//! (the wspushd contract: `POST /publish?user=U` and `POST /broadcast` → `200 {"delivered":N}`,
//! keep-alive), and checks that it reports what really happened: every message delivered when
//! the server is correct, and exact loss / duplicate / reorder counts when the admin side is
//! made to misbehave.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use wspush::{Config, ConnId, Handler, MessageKind, Request, Server, ServerHandle, UpgradeDecision};

struct StandIn {
    echo: bool,
}

impl Handler for StandIn {
    fn on_upgrade(&self, _: &ServerHandle, request: &Request<'_>) -> UpgradeDecision {
        match request.query_param("user") {
            Some(user) if !user.is_empty() => UpgradeDecision::Accept(user.as_bytes().to_vec()),
            _ => UpgradeDecision::Reject(401),
        }
    }

    fn on_message(&self, server: &ServerHandle, conn: ConnId, _: &[u8], kind: MessageKind, payload: &[u8]) {
        if self.echo {
            let _ = server.send(conn, payload, kind);
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
fn start_stand_in(echo: bool, faults: Faults) -> (Server, u16, u16) {
    let config = Config { listen: "127.0.0.1:0".into(), threads: 2, ..Config::default() };
    let server = Server::start(config, StandIn { echo }).unwrap();
    let ws_port = server.local_addr().port();
    let admin = Arc::new(Admin { server: server.handle(), faults, publishes: AtomicU64::new(0), held: Mutex::new(None) });
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

/// Builds the loadgen example with this test's profile and returns its path.
fn loadgen_binary() -> PathBuf {
    let test_exe = std::env::current_exe().unwrap();
    let profile_dir = test_exe.parent().and_then(|deps| deps.parent()).unwrap().to_path_buf();
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(other) => other.to_string(),
        None => "dev".to_string(),
    };
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--example", "loadgen", "--profile", &profile])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success(), "building the loadgen example failed");
    profile_dir.join("examples").join("loadgen")
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

fn run_loadgen(ws_port: u16, admin_port: u16, extra: &[&str]) -> (i32, String) {
    let output = Command::new(loadgen_binary())
        .args(["--url", &format!("ws://127.0.0.1:{ws_port}/ws"), "--admin", &format!("127.0.0.1:{admin_port}"), "--json"])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    eprintln!("loadgen stderr:\n{}", String::from_utf8_lossy(&output.stderr));
    eprintln!("loadgen stdout:\n{stdout}");
    (output.status.code().unwrap_or(-1), stdout)
}

#[test]
fn every_phase_at_500_connections_loses_nothing() {
    let (server, ws_port, admin_port) = start_stand_in(true, Faults::default());
    let pid = std::process::id().to_string();
    let (code, json) = run_loadgen(
        ws_port,
        admin_port,
        &[
            "--conns", "500", "--tabs", "2", "--phases", "connect,idle,publish,broadcast,echo",
            "--server-pid", &pid, "--settle-secs", "0.3", "--publish-rate", "400", "--publish-secs", "1.5",
            "--broadcasts", "5", "--echo-conns", "20", "--echo-secs", "0.5", "--drain-secs", "3",
        ],
    );
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
    assert_eq!(server.stats().connections, 0, "loadgen's workers must close their connections on exit");
}

#[test]
fn lost_duplicated_and_reordered_publishes_are_counted_and_fail_the_run() {
    let faults = Faults { drop: Some(5), duplicate: Some(9), delay: Some(13) };
    let (_server, ws_port, admin_port) = start_stand_in(false, faults);
    // Four users with one tab each and ~100 publishes: the held publish is followed by another
    // to the same user almost surely, making the delay a reorder rather than a loss.
    let (code, json) = run_loadgen(
        ws_port,
        admin_port,
        &["--conns", "4", "--phases", "publish", "--publish-rate", "100", "--publish-secs", "1", "--drain-secs", "1", "--admin-conns", "1"],
    );
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
    let (code, json) = run_loadgen(port, port, &["--conns", "50", "--phases", "connect"]);
    assert_eq!(code, 0, "connection failures are reported, not message anomalies");
    assert_eq!(number(&json, "connect", "opened"), 0.0);
    assert_eq!(number(&json, "connect", "failed_refused"), 50.0);
}
