//! Out of descriptors: a client that arrives when the process cannot open one more descriptor is
//! still answered (503, through the I/O thread's reserve descriptor) instead of waiting in the
//! backlog with no answer, and the server serves again once descriptors are free. Its own test
//! binary: it fills this process's descriptor table, which would break tests running beside it.

mod common;

use std::fs::File;
use std::time::{Duration, Instant};

use common::*;

fn open_files_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct it is given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
    limit.rlim_cur
}

#[test]
fn with_no_descriptor_left_a_new_client_gets_503_and_the_server_recovers() {
    let (server, mut events) = start(config());
    let limit = open_files_limit();
    let cap = server.stats().max_connections;
    assert!(cap > 0 && cap + 64 <= limit, "max_connections {cap} is capped below RLIMIT_NOFILE {limit}");
    let addr = server.local_addr();

    // Take every descriptor left, then give exactly one back for the client's socket.
    let mut fillers = Vec::new();
    while let Ok(file) = File::open("/dev/null") {
        fillers.push(file);
        assert!(fillers.len() < 1 << 20, "RLIMIT_NOFILE never reached");
    }
    fillers.pop();
    let started = Instant::now();
    let mut raw = Raw::connect(addr);
    raw.send(upgrade_request("/ws?user=late", "").as_bytes());
    let response = raw.read_response();
    assert_eq!(response.status, 503, "{response:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "answered after {:?}", started.elapsed());
    drop(raw);
    stats_until(&server, "the refusal counted", |s| s.over_capacity_total == 1);

    drop(fillers);
    let mut ws = ws_connect(addr, "alice");
    events.opened(b"alice");
    server.publish(b"alice", b"back", wspush::MessageKind::Text).unwrap();
    assert_eq!(ws_text(&mut ws), "back");
}
