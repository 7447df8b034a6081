//! What history costs in memory, measured on the real engine with a counting allocator (every
//! byte the library asks the allocator for, live at the moment of reading):
//! - per idle connection, raw and `wspush.v1`, history off and on (target: <= 128 B user space);
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
    let config = Config {
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

fn idle_connections(n: usize) {
    println!("\nidle connections (n = {n}), library heap bytes per connection:");
    for (history, v1) in [(false, false), (true, false), (false, true), (true, true)] {
        let server = server(history);
        settle(&server, 0);
        let before = live();
        let clients = connect(&server, n, v1);
        settle(&server, n as u64);
        let per_connection = (live() - before) as f64 / n as f64;
        println!(
            "  history {:<3}  {:<9}  {per_connection:>6.1} B",
            if history { "on" } else { "off" },
            if v1 { "wspush.v1" } else { "raw" }
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
