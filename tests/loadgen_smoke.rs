//! Runs loadgen (the workspace crate examples/loadgen) against the wspushd example daemon (all phases, 500 connections; a
//! short churn soak; a short connection storm; the resume phase) and against an in-process wspush server whose
//! minimal admin HTTP API (the wspushd contract: `POST /publish?user=U` and `POST /broadcast` →
//! `200 {"delivered":N}`, `GET /stats`, keep-alive) can be made to misbehave, and checks that
//! loadgen reports what really happened: every message delivered by a correct server, exact
//! loss / duplicate / reorder counts and a failing exit status otherwise.

mod common;

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
        if target == "/stats" {
            let stats = self.server.stats();
            return (200, format!("{{\"connections\":{},\"handshakes\":{}}}", stats.connections, stats.handshakes));
        }
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

/// Builds the wspushd daemon (its own workspace package) once, with this test's profile and
/// target dir; returns its path.
fn daemon_binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| common::build_workspace_binary("wspushd"))
}

/// Builds loadgen once, likewise, and returns its path.
fn loadgen() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| common::build_workspace_binary("loadgen"))
}

/// The wspushd daemon in demo + echo mode on ports 0/0; killed when dropped.
struct Daemon {
    child: Child,
    ws_port: u16,
    admin_port: u16,
    /// Everything the daemon wrote to stderr so far (also echoed to the test's stderr).
    stderr: Arc<Mutex<String>>,
}

impl Daemon {
    fn start() -> Daemon {
        Daemon::start_with(&[])
    }

    fn start_with(extra_args: &[&str]) -> Daemon {
        let mut child = Command::new(daemon_binary())
            .args(["--demo", "--echo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--threads", "2"])
            // Frequent pings: loadgen's clients must answer them or be closed as idle.
            .args(["--ping-interval-ms", "200", "--idle-timeout-ms", "2000"])
            // loadgen opens hundreds of connections from one address at once.
            .args(common::NO_PER_IP_LIMITS)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (collected, pipe) = (Arc::clone(&stderr), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("wspushd: {line}");
                collected.lock().unwrap().push_str(&(line + "\n"));
            }
        });
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
        Daemon { ws_port: port_after("ws://"), admin_port: port_after("http://"), child, stderr }
    }

    /// Still running, and never reported a panic.
    fn assert_healthy(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "wspushd exited");
        let stderr = self.stderr.lock().unwrap();
        assert!(!stderr.contains("panicked"), "wspushd reported a panic:\n{stderr}");
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
    let output = Command::new(loadgen())
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
fn resume_phase_recovers_every_missed_message_after_an_rst_and_a_clean_close() {
    // wspushd keeps history by default; 200 wspush.v1 clients each miss 5 publishes, then a live
    // one. Two runs against one daemon: the second resumes streams that already exist.
    let mut daemon = Daemon::start();
    let pid = daemon.child.id();
    for drop in ["rst", "close"] {
        let args = format!("--phases resume --clients 200 --missed 5 --drop {drop} --server-pid {pid} --drain-secs 3");
        let (code, json) = run_loadgen(daemon.ws_port, daemon.admin_port, &args);
        assert_eq!(code, 0, "loadgen reported anomalies or failed ({drop})");
        for key in ["clients", "dropped", "resumed", "recovered", "recovered_all_missed", "server_recoveries"] {
            assert_eq!(number(&json, "resume", key), 200.0, "{drop}: resume {key}");
        }
        for key in [
            "lost",
            "duplicated",
            "reordered",
            "unexpected",
            "offset_gaps",
            "offset_repeats",
            "offset_mismatch",
            "not_recovered",
            "reconnects_failed",
            "closed_by_server",
            "close_forced",
            "server_recovery_failures",
            "delivered_while_away",
        ] {
            assert_eq!(number(&json, "resume", key), 0.0, "{drop}: resume {key}");
        }
        // 5 missed + 1 live each.
        assert_eq!(number(&json, "resume", "received"), 1200.0, "{drop}");
        assert_eq!(number(&json, "resume", "expected"), 1200.0, "{drop}");
        assert!(number(&json, "resume", "recover_max_ns") > 0.0);
        assert!(number(&json, "resume", "history_messages") >= 1000.0);
    }
    daemon.assert_healthy();
}

#[test]
fn resume_phase_fails_when_the_server_keeps_no_history() {
    let daemon = Daemon::start_with(&["--history-messages", "0"]);
    let args = "--phases resume --clients 20 --missed 2 --drain-secs 1";
    let (code, json) = run_loadgen(daemon.ws_port, daemon.admin_port, args);
    assert_eq!(code, 1, "an unrecoverable resume must fail the run");
    assert_eq!(number(&json, "resume", "not_recovered"), 20.0);
    assert_eq!(number(&json, "resume", "lost"), 40.0, "the two missed messages of each client");
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

#[test]
fn churn_soak_loses_nothing_on_live_connections_and_gives_back_every_fd() {
    // History off: the memory check looks for what churn leaks, and a history filling up to its
    // caps (7,500 messages here) is growth by design (benches/history_cost.rs measures it).
    let mut daemon = Daemon::start_with(&["--history-messages", "0"]);
    let pid = daemon.child.id();
    // 1,000 connections, 500 publishes/s for 15 s, 10% killed with an RST every 3 s (5 churns),
    // pings every 200 ms throughout.
    let args = format!(
        "--phases soak --server-pid {pid} --conns 1000 --publish-rate 500 --soak-secs 15 --churn-secs 3 \
         --churn-fraction 0.1 --warmup-secs 3 --drain-secs 3 {SMALL_SCALE_MEMORY_CHECK}"
    );
    let (code, json) = run_loadgen(daemon.ws_port, daemon.admin_port, &args);
    assert_eq!(code, 0, "loadgen reported anomalies or failed");
    for phase in ["soak_warmup", "soak"] {
        for key in ["lost", "duplicated", "reordered", "unexpected", "connect_failures", "closed_by_server"] {
            assert_eq!(number(&json, phase, key), 0.0, "{phase} {key}");
        }
        assert!(number(&json, phase, "expected") > 0.0, "{phase}: nothing had to be delivered");
        assert!(number(&json, phase, "delivered") >= number(&json, phase, "expected"));
        assert_eq!(number(&json, phase, "reconnects"), number(&json, phase, "killed"));
    }
    assert_eq!(number(&json, "soak_warmup", "killed"), 100.0);
    assert_eq!(number(&json, "soak", "killed"), 500.0);
    assert_eq!(number(&json, "soak", "incarnations"), 1500.0);
    assert_eq!(number(&json, "soak", "live_incarnations"), 1000.0);
    assert!(number(&json, "soak", "published") > 5000.0);
    assert_eq!(number(&json, "soak", "fds_after"), number(&json, "soak", "fds_before"), "the server kept descriptors");
    assert_eq!(number(&json, "soak", "fds_warm"), number(&json, "soak", "fds_before"));
    daemon.assert_healthy();
}

/// At 1,000 connections wspushd's RssAnon is about 1.7 MiB, so 1% would be 17 KiB, within what
/// moves between two samples at this size (-1.9% to +2.4% in five runs here). 10% still catches a
/// leak of ~110 bytes per connection incarnation; the fds must come back exactly. The settle time
/// covers jemalloc's one-second purge (examples/wspushd/src/main.rs). The long run at 15,000 connections,
/// judged at 1%, is in the soak note.
const SMALL_SCALE_MEMORY_CHECK: &str = "--settle-secs 2 --rss-tolerance-pct 10";

#[test]
fn connection_storm_is_answered_101_or_503_within_the_limits() {
    // 100 receivers + 2,000 storm clients against 1,500 connections at most, and at most 100
    // handshakes in progress per I/O thread (2 threads).
    let mut daemon = Daemon::start_with(&["--max-connections", "1500", "--max-handshakes-per-thread", "100"]);
    let pid = daemon.child.id();
    let args = format!(
        "--phases storm --server-pid {pid} --conns 2000 --storm-receivers 100 --publish-rate 200 \
         --storm-max-connections 1500 --storm-max-handshakes 200 --stats-interval-ms 5 --drain-secs 3"
    );
    let (code, json) = run_loadgen(daemon.ws_port, daemon.admin_port, &args);
    assert_eq!(code, 0, "loadgen reported anomalies or failed");
    let opened = number(&json, "storm", "opened");
    let refused = number(&json, "storm", "http_503");
    assert!(refused > 0.0, "max-connections was never reached");
    assert!(opened <= 1400.0, "{opened} storm clients opened next to 100 receivers with a limit of 1500");
    assert_eq!(opened + refused, 2000.0, "a storm client got neither 101 nor 503");
    assert_eq!(number(&json, "storm", "server_over_capacity"), refused, "every 503 the server sent arrived");
    for key in ["unanswered", "reset", "timeout", "other", "http_other", "lost", "duplicated", "reordered"] {
        assert_eq!(number(&json, "storm", key), 0.0, "storm {key}");
    }
    assert!(number(&json, "storm", "stats_samples") > 0.0);
    assert!(number(&json, "storm", "peak_open_plus_handshaking") <= 1500.0);
    assert!(number(&json, "storm", "peak_handshaking") <= 200.0);
    for key in ["healthz_ok", "round_trip_ok", "server_alive", "connections_limit_ok", "handshake_limit_ok"] {
        assert_eq!(number(&json, "storm", key), 1.0, "storm {key}");
    }
    assert!(number(&json, "storm", "published") > 0.0);
    daemon.assert_healthy();
}

#[test]
fn soak_counts_each_lost_duplicated_and_reordered_publish_on_a_live_connection() {
    let faults = Faults { drop: Some(5), duplicate: Some(9), delay: Some(13) };
    let (_server, ws_port, admin_port) = start_stand_in(faults);
    // No churn: every incarnation is live and must get every publish. The faults hit the warm-up.
    let pid = std::process::id();
    let args = format!(
        "--phases soak --server-pid {pid} --conns 4 --publish-rate 100 --warmup-secs 1 --soak-secs 1 \
         --churn-fraction 0 --settle-secs 0 --drain-secs 3 --admin-conns 1"
    );
    let (code, json) = run_loadgen(ws_port, admin_port, &args);
    assert_eq!(code, 1, "anomalies must make the exit status non-zero");
    assert_eq!(number(&json, "soak_warmup", "lost"), 1.0);
    assert_eq!(number(&json, "soak_warmup", "duplicated"), 1.0);
    assert_eq!(number(&json, "soak_warmup", "reordered"), 1.0);
    assert_eq!(number(&json, "soak", "lost"), 0.0);
}
