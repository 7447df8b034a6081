//! One wspushd process of a cluster ("node"): started in demo mode (the user is `?user=`) with
//! `--redis URL --redis-timeout-ms 1000`, on ports 0/0, its output kept for failure messages; plus
//! a small HTTP client for its admin API.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::common::processes::{spawn_wspushd, Wspushd};
use crate::common::{self, Ws, NO_PER_IP_LIMITS};

/// How long an admin request may take before the test fails (well above the 1 s Redis timeout,
/// so a slow answer is measured, not a read error).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The release wspushd (the profile and target dir this test was built with), built once.
fn wspushd() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| common::build_workspace_binary("wspushd"))
}

/// A running wspushd, SIGKILLed when dropped.
pub struct Node {
    pub name: String,
    child: Option<Child>,
    pub ws: SocketAddr,
    pub admin: SocketAddr,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Node {
    /// Starts a node on `redis_url` with `extra` flags (later flags override earlier ones: the
    /// per-address limits are off unless `extra` sets them).
    pub fn start(name: &str, redis_url: &str, extra: &[&str]) -> Node {
        let redis = ["--redis", redis_url, "--redis-timeout-ms", "1000"];
        Node::spawn(name, &[&redis[..], extra].concat())
    }

    /// Starts a node with `args` after the common ones (demo mode, ports 0/0, two I/O threads,
    /// per-address limits off): no Redis unless `args` names one.
    pub fn spawn(name: &str, args: &[&str]) -> Node {
        let mut command = Command::new(wspushd());
        command
            .args(["--demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--threads", "2"])
            .args(["--drain-timeout-ms", "500"])
            .args(NO_PER_IP_LIMITS)
            .args(args);
        let Wspushd { child, ws, admin, stdout, stderr } = spawn_wspushd(command, &format!("node {name}"));
        Node { name: name.to_owned(), child: Some(child), ws, admin, stdout, stderr }
    }

    /// The wspushd process ID (tests/loadgen_cluster.rs passes it to loadgen's --server-pid).
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the node is running").id()
    }

    /// The node's output so far, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "---- node {} stdout:\n{}---- node {} stderr:\n{}",
            self.name,
            self.stdout.lock().unwrap(),
            self.name,
            self.stderr.lock().unwrap()
        )
    }

    /// A `wspush.v1` client as `user`, resuming from `since` ("EPOCH:OFFSET") if given.
    pub fn connect_v1(&self, user: &str, since: Option<&str>) -> Ws {
        let target = match since {
            Some(since) => format!("/ws?user={user}&since={}", since.replace(':', "%3A")),
            None => format!("/ws?user={user}"),
        };
        common::ws_try_connect_with(self.ws, &target, &[("Sec-WebSocket-Protocol", "wspush.v1")]).unwrap_or_else(
            |status| panic!("node {}: v1 upgrade of {user} refused: {status}\n{}", self.name, self.logs()),
        )
    }

    /// A client without a subprotocol (raw frames).
    pub fn connect_raw(&self, user: &str) -> Ws {
        common::ws_try_connect(self.ws, &format!("/ws?user={user}"))
            .unwrap_or_else(|status| panic!("node {}: upgrade of {user} refused: {status}\n{}", self.name, self.logs()))
    }

    /// POST /publish?user=USER; (status, body).
    pub fn publish(&self, user: &str, body: &str) -> (u16, String) {
        self.request("POST", &format!("/publish?user={user}"), body)
    }

    /// POST /broadcast; (status, body).
    pub fn broadcast(&self, body: &str) -> (u16, String) {
        self.request("POST", "/broadcast", body)
    }

    /// GET `target`; (status, body).
    pub fn get(&self, target: &str) -> (u16, String) {
        self.request("GET", target, "")
    }

    /// The `connections` gauge of GET /stats.
    pub fn connections(&self) -> u64 {
        let (status, body) = self.get("/stats");
        assert_eq!(status, 200, "node {}: /stats: {body}", self.name);
        let stats: serde_json::Value = serde_json::from_str(&body).expect("/stats is JSON");
        stats["connections"].as_u64().unwrap_or_else(|| panic!("no connections in {body}"))
    }

    /// One request on a fresh admin connection; (status, body). Panics with the node's output if
    /// the node does not answer within 10 s.
    pub fn request(&self, method: &str, target: &str, body: &str) -> (u16, String) {
        http(self.admin, method, target, body)
            .unwrap_or_else(|e| panic!("node {}: {method} {target} failed: {e}\n{}", self.name, self.logs()))
    }

    /// SIGKILL, and wait until the process is gone.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("node is running");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// One HTTP/1.1 request with a Content-Length body; reads the response by its Content-Length.
fn http(addr: SocketAddr, method: &str, target: &str, body: &str) -> std::io::Result<(u16, String)> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let mut reader = BufReader::new(stream);
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    reader.get_mut().write_all(request.as_bytes())?;
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok());
    let Some(status) = status else {
        return Err(std::io::Error::other(format!("bad status line {status_line:?}")));
    };
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().map_err(std::io::Error::other)?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
