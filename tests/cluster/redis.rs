//! A private `redis-server` for one test: a free 127.0.0.1 port, its own temporary directory, and
//! the faults the cluster tests inject (SIGKILL and restart on the same port, SIGSTOP/SIGCONT).
//! Commands go over a raw TCP socket in RESP, so the harness needs no client library (nor
//! redis-cli).
//!
//! Needs the `redis-server` binary (Debian package redis-server). Without it the tests are
//! skipped with a loud message, unless WSPUSH_REQUIRE_REDIS=1 (CI sets it), where they fail.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long starting (or restarting) Redis may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether redis-server can run; when it can't, says so loudly (naming `test`), or fails when
/// WSPUSH_REQUIRE_REDIS=1.
pub fn redis_available(test: &str) -> bool {
    let runs = Command::new("redis-server").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if runs.is_ok_and(|status| status.success()) {
        return true;
    }
    let why = "redis-server is not installed (apt-get install redis-server)";
    if std::env::var("WSPUSH_REQUIRE_REDIS").as_deref() == Ok("1") {
        panic!("cannot run {test} ({why}) but WSPUSH_REQUIRE_REDIS=1");
    }
    eprintln!("\n*** SKIPPED {test}: {why}. CI sets WSPUSH_REQUIRE_REDIS=1. ***\n");
    false
}

/// A free TCP port on 127.0.0.1 (free when this returns; good enough for a test).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running redis-server, killed (and its directory removed) when dropped.
pub struct Redis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    aof: bool,
    /// More arguments (Redis Cluster mode).
    extra: Vec<String>,
    /// Redis logs to stdout (`--logfile ""`); kept for failure messages, across restarts.
    log: Arc<Mutex<String>>,
}

impl Redis {
    /// Starts Redis with append-only-file persistence (`appendfsync always`: every acknowledged
    /// write survives a SIGKILL) or with no persistence at all.
    pub fn start(aof: bool) -> Redis {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("wspush-cluster-redis-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the Redis directory");
        let mut redis = Redis { child: None, port: free_port(), dir, aof, extra: Vec::new(), log: Arc::default() };
        redis.spawn();
        redis
    }

    /// Starts a Redis Cluster node (no slots yet: see [`start_cluster`]), without persistence.
    fn start_cluster_node() -> Redis {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("wspush-redis-cluster-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the Redis directory");
        // The cluster bus port is chosen too: port + 10000 may be taken.
        let extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port"]
            .iter()
            .map(|arg| arg.to_string())
            .chain([free_port().to_string()])
            .collect();
        let mut redis = Redis { child: None, port: free_port(), dir, aof: false, extra, log: Arc::default() };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "Redis is already running");
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        command.args(["--port", &port, "--bind", "127.0.0.1", "--dir"]).arg(&self.dir).args([
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
            "--logfile",
            "",
        ]);
        if self.aof {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        command.args(&self.extra);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start redis-server");
        for pipe in
            [Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stderr.take().unwrap())]
        {
            let log = Arc::clone(&self.log);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    log.lock().unwrap().push_str(&format!("{line}\n"));
                }
            });
        }
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(reply) = self.try_command(&[b"PING"], Duration::from_millis(500)) {
                assert_eq!(reply, "+PONG\r\n", "PING");
                // With AOF, Redis answers PING while it is still loading the file (other commands
                // get -LOADING): wait until it serves data.
                match self.try_command(&[b"DBSIZE"], Duration::from_millis(500)) {
                    Ok(reply) if reply.starts_with(':') => return,
                    _ => {}
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("redis-server exited ({status}); log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "redis-server does not answer PING on {}; log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// "redis://127.0.0.1:PORT"
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its private directory (the AOF lives there).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Everything Redis logged so far (all incarnations).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The redis-server process ID.
    pub fn pid(&self) -> libc::pid_t {
        self.child.as_ref().expect("Redis is running").id() as libc::pid_t
    }

    /// SIGKILL, and wait until the process is gone (its port is closed then).
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("Redis is running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts Redis again after [`kill9`](Self::kill9): same port, same directory, same
    /// persistence; returns once it serves data (with AOF, what it had acknowledged is back).
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// SIGSTOP: the port stays open (connections succeed, the kernel queues what clients send)
    /// but nothing is answered.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on the PID of our own child, which has not been waited for (so the PID
        // is not reused).
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({signal}): {}", io::Error::last_os_error());
    }

    /// Runs one command (`args[0]` is its name) on a fresh connection; returns the raw RESP
    /// reply (e.g. ":3\r\n" for DBSIZE). Panics if Redis does not answer within 5 s.
    pub fn command(&self, args: &[&[u8]]) -> String {
        self.try_command(args, Duration::from_secs(5)).unwrap_or_else(|e| {
            panic!("Redis command {:?}: {e}; log:\n{}", String::from_utf8_lossy(args[0]), self.log())
        })
    }

    /// Like [`command`](Self::command), reporting a timeout or a refused connection as an error.
    pub fn try_command(&self, args: &[&[u8]], timeout: Duration) -> io::Result<String> {
        let addr = ([127, 0, 0, 1], self.port).into();
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.write_all(&encode_command(args))?;
        let deadline = Instant::now() + timeout;
        let mut reply = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        while reply_len(&reply).is_none() {
            if Instant::now() >= deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no complete reply"));
            }
            match stream.read(&mut chunk)? {
                0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "Redis closed the connection")),
                n => reply.extend_from_slice(&chunk[..n]),
            }
        }
        Ok(String::from_utf8_lossy(&reply).into_owned())
    }

    /// The integer of an integer reply (e.g. DBSIZE, PUBLISH).
    pub fn integer(&self, args: &[&[u8]]) -> i64 {
        let reply = self.command(args);
        reply
            .strip_prefix(':')
            .and_then(|rest| rest.trim_end().parse().ok())
            .unwrap_or_else(|| panic!("{:?} answered {reply:?}, not an integer", String::from_utf8_lossy(args[0])))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL works on a stopped process too
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- redis-server log (port {}):\n{}", self.port, self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A command as a RESP array of bulk strings.
pub fn encode_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The length of the complete RESP2 value at the start of `buf`, or None while incomplete.
pub fn reply_len(buf: &[u8]) -> Option<usize> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[1..line_end]).ok()?;
    let after = line_end + 2;
    match buf.first()? {
        b'+' | b'-' | b':' => Some(after),
        b'$' => {
            let len: i64 = line.parse().ok()?;
            if len < 0 {
                return Some(after);
            }
            let end = after + len as usize + 2;
            (buf.len() >= end).then_some(end)
        }
        b'*' => {
            let count: i64 = line.parse().ok()?;
            let mut at = after;
            for _ in 0..count.max(0) {
                at += reply_len(&buf[at..])?;
            }
            Some(at)
        }
        other => panic!("not a RESP reply: starts with {:?}", *other as char),
    }
}

/// The bulk strings of an array reply (e.g. PUBSUB CHANNELS), integers as their text.
pub fn array_items(reply: &str) -> Vec<String> {
    let bytes = reply.as_bytes();
    assert!(reply.starts_with('*'), "not an array reply: {reply:?}");
    let header_end = reply.find("\r\n").unwrap() + 2;
    let count: usize = reply[1..header_end - 2].parse().unwrap();
    let mut items = Vec::with_capacity(count);
    let mut at = header_end;
    for _ in 0..count {
        let len = reply_len(&bytes[at..]).expect("a complete array");
        let item = &reply[at..at + len];
        let first_line_end = item.find("\r\n").unwrap();
        items.push(match &item[..1] {
            "$" => item[first_line_end + 2..item.len() - 2].to_owned(),
            _ => item[1..first_line_end].to_owned(),
        });
        at += len;
    }
    items
}

/// Starts `primaries` Redis Cluster nodes and makes them one cluster sharing the 16,384 slots in
/// as many ranges, once every node says `cluster_state:ok`.
pub fn start_cluster(primaries: usize) -> Vec<Redis> {
    let nodes: Vec<Redis> = (0..primaries).map(|_| Redis::start_cluster_node()).collect();
    let addresses: Vec<String> = nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)).collect();
    let output = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&addresses)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("run redis-cli --cluster create");
    assert!(output.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&output.stdout));
    let deadline = Instant::now() + START_TIMEOUT;
    for node in &nodes {
        while !node.command(&[b"CLUSTER", b"INFO"]).contains("cluster_state:ok") {
            assert!(Instant::now() < deadline, "the cluster does not come up; log:\n{}", node.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    nodes
}
