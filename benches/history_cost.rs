//! What history costs in memory, measured on the real engine with a counting allocator (every
//! byte the library asks the allocator for, live at the moment of reading):
//! - per idle connection, raw and `wspush.v1`, history off and on (target: <= 128 B user space),
//!   and with Redis (several nodes; when `redis-server` is installed): there each connection here
//!   is its own user, so the node's per-online-user state (its subscription and last offset) is
//!   in the figure;
//! - per stored message beyond its payload (target: <= 48 B), for several payload sizes.
//!
//! Publish time with history off and on: benches/hot_paths.rs, group `publish`.
//!
//! `cargo bench --bench history_cost` (prints a table; asserts nothing: numbers, not verdicts).
//! Connections: WSPUSH_BENCH_CONNECTIONS (default 8,000: two descriptors each stay under the
//! 20,000-descriptor limit).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use wspush::{Config, ConnId, Handler, MessageKind, Request, Server, ServerHandle, UpgradeDecision};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.load(Relaxed)
}

/// Resident set size in bytes (what the allocator's headers and rounding cost shows here).
fn rss() -> isize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: isize = statm.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as isize
}

/// Accepts `?user=...`.
struct ByQuery;

impl Handler for ByQuery {
    fn on_upgrade(&self, _: &ServerHandle, request: &Request<'_>) -> UpgradeDecision {
        let user = request.query_param("user").unwrap_or("nobody");
        UpgradeDecision::Accept(user.as_bytes().to_vec())
    }
    fn on_message(&self, _: &ServerHandle, _: ConnId, _: &[u8], _: MessageKind, _: &[u8]) {}
}

fn server(history: bool) -> Server {
    server_with(history, None)
}

fn server_with(history: bool, redis_url: Option<String>) -> Server {
    let config = Config {
        redis_url,
        listen: "127.0.0.1:0".into(),
        threads: 1,
        max_connections: 19_000,
        history_max_messages: if history { 100 } else { 0 },
        history_max_bytes: 4 << 30, // room for every message stored here: nothing evicted
        ..Config::default()
    };
    Server::start(config, ByQuery).expect("server starts")
}

/// Opens `n` connections (each its own user) and reads each 101 and, for v1, its welcome.
fn connect(server: &Server, n: usize, v1: bool) -> Vec<TcpStream> {
    let protocol = if v1 { "Sec-WebSocket-Protocol: wspush.v1\r\n" } else { "" };
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let mut stream = TcpStream::connect(server.local_addr()).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let request = format!(
            "GET /ws?user=user{i:07} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n"
        );
        stream.write_all(request.as_bytes()).expect("send upgrade");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("read 101");
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        if v1 {
            let mut header = [0u8; 2];
            stream.read_exact(&mut header).expect("welcome header");
            let mut welcome = vec![0u8; usize::from(header[1] & 0x7f)];
            stream.read_exact(&mut welcome).expect("welcome");
        }
        clients.push(stream);
    }
    clients
}

fn settle(server: &Server, connections: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.stats().connections != connections && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(1200)); // housekeeping gives slack back once a second
}

/// A throwaway redis-server on a free port, if one is installed.
struct RedisProcess(std::process::Child, String);

impl RedisProcess {
    fn start() -> Option<RedisProcess> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no", "--logfile", "/dev/null"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(RedisProcess(child, format!("redis://127.0.0.1:{port}")))
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn idle_connections(n: usize) {
    println!("\nidle connections (n = {n}, one user each), library heap bytes per connection:");
    let redis = RedisProcess::start();
    if redis.is_none() {
        println!("  (redis-server not installed: the Redis rows are skipped)");
    }
    let mut runs = vec![(false, false, None), (true, false, None), (false, true, None), (true, true, None)];
    if let Some(redis) = &redis {
        runs.push((true, false, Some(redis.1.clone())));
        runs.push((true, true, Some(redis.1.clone())));
    }
    for (history, v1, redis_url) in runs {
        let with_redis = redis_url.is_some();
        let server = server_with(history, redis_url);
        settle(&server, 0);
        let before = live();
        let clients = connect(&server, n, v1);
        settle(&server, n as u64);
        if with_redis {
            let deadline = Instant::now() + Duration::from_secs(10);
            while server.stats().redis_subscribed_users != n as u64 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let per_connection = (live() - before) as f64 / n as f64;
        println!(
            "  history {:<3}  {:<9}  {:<10} {per_connection:>6.1} B",
            if history { "on" } else { "off" },
            if v1 { "wspush.v1" } else { "raw" },
            if with_redis { "with Redis" } else { "" }
        );
        drop(clients);
        drop(server);
    }
}

fn stored_messages() {
    let (users, per_user) = (10_000usize, 100usize);
    println!("\nstored messages ({users} offline users x {per_user}), heap bytes beyond the payload:");
    for payload_len in [16usize, 100, 1000] {
        let server = server(true);
        let payload = vec![b'x'; payload_len];
        let (before, rss_before) = (live(), rss());
        for _ in 0..per_user {
            for user in 0..users {
                server.publish(format!("user{user:07}").as_bytes(), &payload, MessageKind::Text).expect("publish");
            }
        }
        let stats = server.stats();
        assert_eq!(stats.history_messages as usize, users * per_user);
        let heap = (live() - before) as f64;
        let messages = (users * per_user) as f64;
        let per_message = heap / messages - payload_len as f64;
        let resident = (rss() - rss_before) as f64 / messages - payload_len as f64;
        let charged = stats.history_bytes as f64 / messages - payload_len as f64;
        println!(
            "  payload {payload_len:>5} B: heap {per_message:>5.1} B, resident {resident:>5.1} B per message \
             (streams included); history_bytes charges {charged:>5.1} B"
        );
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing and wants it quick.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let n = std::env::var("WSPUSH_BENCH_CONNECTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(8_000);
    idle_connections(n);
    stored_messages();
}
