//! The engine's footprint follows its connections down as well as up: after a crowd connects,
//! receives a broadcast and leaves, the heap the engine holds is back where it was before (its
//! connection slab, user registry, timer wheel and work lists shrink; see src/slack.rs). Measured
//! with glibc's own count of bytes in use, so allocator caching does not blur it. Its own test
//! binary: other tests allocating on other threads would.

#![cfg(all(target_os = "linux", target_env = "gnu"))]

mod common;

use std::time::Duration;

use common::{stats_until, user_from_query, Raw};
use wspush::{Config, Handler, MessageKind, Request, Server, ServerHandle, UpgradeDecision};

struct ByQuery;

impl Handler for ByQuery {
    fn on_upgrade(&self, server: &ServerHandle, request: &Request<'_>) -> UpgradeDecision {
        user_from_query(server, request)
    }
}

/// Heap bytes in use in this process, as malloc counts them.
fn heap_in_use() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let info = unsafe { libc::mallinfo2() };
    info.uordblks + info.hblkhd
}

/// Opens `n` upgraded connections (users c0, c1, ...), broadcasts one message to them, reads it
/// on each, closes them all and waits until the server has none left.
fn crowd_comes_and_goes(server: &Server, n: usize) {
    let addr = server.local_addr();
    let mut clients: Vec<Raw> = (0..n).map(|i| Raw::upgrade(addr, &format!("/ws?user=c{i}"))).collect();
    stats_until(&server.handle(), "the crowd open", |s| s.connections == n as u64);
    assert_eq!(server.broadcast(b"all of you", MessageKind::Text).unwrap(), n);
    for client in &mut clients {
        assert_eq!(client.read_frame().expect("the broadcast").payload, b"all of you");
    }
    drop(clients);
    stats_until(&server.handle(), "the crowd gone", |s| s.connections == 0 && s.handshakes == 0);
}

#[test]
fn after_a_crowd_leaves_the_engine_holds_no_more_heap_than_before_it_came() {
    let config = Config { threads: 2, ..common::config() };
    let server = Server::start(config, ByQuery).unwrap();
    // First a few connections, so that what is made once per server (the first chunk of each
    // thread's connection table and the like) is already there.
    crowd_comes_and_goes(&server, 8);
    // The I/O threads give memory back in their once-a-second housekeeping.
    let settle = Duration::from_millis(2500);
    std::thread::sleep(settle);
    let before = heap_in_use();

    // While open, 3,000 connections hold about 300 KB of engine tables.
    crowd_comes_and_goes(&server, 3_000);
    std::thread::sleep(settle);
    // Slack for malloc's per-thread caches (tcache: up to 7 freed chunks per size class and
    // thread), which it counts as in use: 20-45 KB here. Without them (GLIBC_TUNABLES=
    // glibc.malloc.tcache_count=0) the heap comes back to the byte.
    const SLACK: usize = 64 * 1024;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut after = heap_in_use();
    while after > before + SLACK && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        after = heap_in_use();
    }
    eprintln!("heap in use: {before} bytes before the crowd, {after} after it left");
    assert!(after <= before + SLACK, "the engine kept {} bytes after the crowd left", after - before);
}
