//! Scale-out through Redis (issue 16): several wspushd processes ("nodes") started with
//! `--redis redis://127.0.0.1:PORT` share one Redis, so a publish on any node reaches the user's
//! connections on every node, a client resumes (`wspush.v1`, `since=EPOCH:OFFSET`) on any node,
//! and the nodes ride out a node crash, a Redis restart (with and without persistence) and a
//! Redis that stops answering. Each test starts its own redis-server and three nodes A, B, C.
//!
//! With Redis, the admin API's `delivered` counts the NODES that hold a connection of the user
//! (the PUBLISH reply), not connections. A node subscribes to a user's channel when the user's
//! first local connection opens; the tests wait for that in Redis (`wait_subscribed`) before a
//! publish that must reach it, which keeps the user's stream untouched (this assumes one channel
//! per user, named after the user ID: see `is_channel_of` in cluster/harness.rs).
//!
//! The first three tests check the harnesses themselves and need no `--redis`: the Redis process
//! harness, the node harness with the wspush.v1 helpers (one wspushd without Redis), and HAProxy
//! in front of three wspushd without Redis.
//!
//! Needs redis-server (skipped with a message without it, unless WSPUSH_REQUIRE_REDIS=1) and, for
//! the last test, haproxy (likewise, WSPUSH_REQUIRE_HAPROXY=1).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

mod common;
#[path = "cluster/haproxy.rs"]
mod haproxy;
#[path = "cluster/harness.rs"]
mod harness;
#[path = "cluster/node.rs"]
mod node;
// Shared with tests/redis_bridge.rs, which also starts Redis Cluster nodes.
#[allow(dead_code)]
#[path = "cluster/redis.rs"]
mod redis;

use common::{ws_text, WAIT};
use haproxy::{haproxy_available, upgrade_via, Haproxy};
use harness::*;
use node::Node;
use redis::{redis_available, Redis};

/// How long a node may take to (re)subscribe, or to reconnect to a restarted Redis.
const SUBSCRIBE: Duration = Duration::from_secs(2);
const RECONNECT: Duration = Duration::from_secs(10);
/// A node unsubscribes a user 1 s after the user's last local connection there closed.
const UNSUBSCRIBE: Duration = Duration::from_secs(4);
/// How long the tests watch for something that must not arrive.
const QUIET: Duration = Duration::from_millis(300);

// ------------------------------------------------------------------------------- the harness

#[test]
fn the_redis_harness_keeps_data_with_aof_loses_it_without_and_pauses() {
    if !redis_available("the_redis_harness_keeps_data_with_aof_loses_it_without_and_pauses") {
        return;
    }
    let mut durable = Redis::start(true);
    let port = durable.port();
    assert!(durable.url().ends_with(&format!("127.0.0.1:{port}")), "{}", durable.url());
    assert!(durable.command(&[b"INFO", b"persistence"]).contains("aof_enabled:1"));
    assert_eq!(durable.command(&[b"SET", b"k", b"kept"]), "+OK\r\n");
    durable.kill9();
    assert!(durable.try_command(&[b"PING"], Duration::from_secs(1)).is_err(), "Redis is dead");
    durable.restart();
    assert_eq!(durable.port(), port, "same port after a restart");
    assert_eq!(durable.command(&[b"GET", b"k"]), "$4\r\nkept\r\n", "the AOF brought the key back");
    assert_eq!(durable.integer(&[b"DBSIZE"]), 1);

    let mut volatile = Redis::start(false);
    assert!(volatile.command(&[b"INFO", b"persistence"]).contains("aof_enabled:0"));
    volatile.command(&[b"SET", b"k", b"gone"]);
    volatile.kill9();
    volatile.restart();
    assert_eq!(volatile.command(&[b"GET", b"k"]), "$-1\r\n", "no persistence: restarted empty");
    assert_eq!(volatile.integer(&[b"DBSIZE"]), 0);

    // Paused: connections are accepted but nothing is answered, until SIGCONT.
    volatile.pause();
    let started = Instant::now();
    assert!(volatile.try_command(&[b"PING"], Duration::from_millis(300)).is_err(), "a paused Redis answered");
    assert!(started.elapsed() < Duration::from_secs(2));
    volatile.resume();
    assert_eq!(volatile.command(&[b"PING"]), "+PONG\r\n");

    // The subscription count `wait_subscribed` relies on: a subscriber holding alice's channel.
    assert_eq!(subscribers(&volatile, "alice").unwrap().0, 0);
    let mut subscriber = std::net::TcpStream::connect(("127.0.0.1", volatile.port())).unwrap();
    std::io::Write::write_all(&mut subscriber, &redis::encode_command(&[b"SUBSCRIBE", b"test:u:alice"])).unwrap();
    wait_subscribed(&volatile, "alice", 1, SUBSCRIBE);
    let (count, channels) = subscribers(&volatile, "alic").unwrap();
    assert_eq!((count, channels), (0, vec!["test:u:alice".to_owned()]), "a prefix of the ID is not the ID");
    assert_eq!(volatile.integer(&[b"PUBLISH", b"test:u:alice", b"x"]), 1);
    // And a sharded subscription (SSUBSCRIBE) counts the same.
    let mut sharded = std::net::TcpStream::connect(("127.0.0.1", volatile.port())).unwrap();
    std::io::Write::write_all(&mut sharded, &redis::encode_command(&[b"SSUBSCRIBE", b"{bob}"])).unwrap();
    wait_subscribed(&volatile, "bob", 1, SUBSCRIBE);
    drop(subscriber);
    wait_subscribed(&volatile, "alice", 0, SUBSCRIBE);

    // Dropping kills the process and removes its directory.
    let (vport, dir) = (volatile.port(), volatile.dir().to_path_buf());
    assert!(dir.is_dir());
    drop(volatile);
    assert!(std::net::TcpStream::connect(("127.0.0.1", vport)).is_err(), "dropped Redis still listens");
    assert!(!dir.exists(), "dropped Redis left {}", dir.display());
    assert!(durable.dir().is_dir(), "the other Redis keeps its directory");
}

/// The node harness and the wspush.v1 helpers against one wspushd without Redis (no new flags
/// needed): what the cluster tests read is read correctly, and what must fail does.
#[test]
fn the_node_harness_and_v1_helpers_read_a_single_node() {
    let mut node = Node::spawn("solo", &[]);
    let mut tab = node.connect_v1("alice", None);
    let joined = welcome(&mut tab);
    assert_eq!((joined.offset, joined.recovered), (0, false));
    let mut raw = node.connect_raw("alice");
    let mut bob = node.connect_raw("bob");
    for offset in 1..=3 {
        let published = publish_ok(&node, "alice", &format!("m{offset}"));
        assert_eq!(published, Published { delivered: 2, offset }, "without Redis: connections");
    }
    let epoch = expect_stream(&mut tab, 1..=3, "m").unwrap();
    assert_eq!([ws_text(&mut raw), ws_text(&mut raw), ws_text(&mut raw)], ["m1", "m2", "m3"]);
    assert_silent(&mut bob, QUIET);
    ping_pong(&mut tab);
    let mut again = node.connect_v1("alice", Some(&format!("{epoch}:1")));
    assert_eq!(welcome(&mut again), Welcome { epoch, offset: 3, recovered: true });
    expect_stream(&mut again, 2..=3, "m");
    assert_eq!(node.get("/healthz").0, 200);
    assert_eq!(node.connections(), 4);
    assert_eq!(node.broadcast("to all").0, 200);
    for (ws, v1) in [(&mut tab, true), (&mut raw, false), (&mut again, true), (&mut bob, false)] {
        assert_eq!(next_broadcast(ws, v1, WAIT).as_deref(), Some("to all"));
    }
    assert_eq!(next_broadcast(&mut bob, false, QUIET), None);

    let (status, body) = node.request("POST", "/disconnect?user=alice&code=1012", "");
    assert_eq!((status, body.as_str()), (200, r#"{"disconnected":3}"#));
    assert_eq!(wait_close(&mut tab, Duration::from_secs(5)), (1012, vec![]));
    node.kill9();
    assert_ended(&mut bob);
}

/// The HAProxy harness with three nodes without Redis: round robin puts three consecutive
/// connections on three different nodes, the other frontend on node A only, with the clients'
/// addresses in PROXY v2 headers.
#[test]
fn the_haproxy_harness_spreads_round_robin_and_pins_the_first_node_frontend() {
    if !haproxy_available("the_haproxy_harness_spreads_round_robin_and_pins_the_first_node_frontend") {
        return;
    }
    let flags = ["--proxy-protocol", "--trusted-proxy", "127.0.0.1", "--max-connections-per-ip", "1"];
    let nodes = ["A", "B", "C"].map(|name| Node::spawn(name, &flags));
    let haproxy = Haproxy::start(&nodes.each_ref().map(|node| node.ws));
    let mut clients: Vec<_> = (11..=13)
        .map(|host| upgrade_via(haproxy.round_robin, Ipv4Addr::new(127, 0, 0, host), "carol").expect("via HAProxy"))
        .collect();
    assert_eq!(connections_once_settled(&nodes, 3), [1, 1, 1]);
    // Without Redis each node reaches its own client only.
    for node in &nodes {
        assert_eq!(publish_ok(node, "carol", &node.name).delivered, 1);
    }
    let mut got: Vec<String> = clients.iter_mut().map(ws_text).collect();
    got.sort();
    assert_eq!(got, ["A", "B", "C"]);

    let from = |host| Ipv4Addr::new(127, 0, 0, host);
    let first = upgrade_via(haproxy.first_node, from(2), "dave").expect("first from 127.0.0.2");
    assert_eq!(upgrade_via(haproxy.first_node, from(2), "dave").err(), Some(429));
    let other = upgrade_via(haproxy.first_node, from(3), "erin").expect("127.0.0.3");
    assert_eq!(connections_once_settled(&nodes, 5), [3, 1, 1]);
    drop((first, other, clients, haproxy));
}

/// Each node's /stats connection count, once they add up to `total` (up to 5 s).
fn connections_once_settled(nodes: &[Node; 3], total: u64) -> [u64; 3] {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let per_node = nodes.each_ref().map(|node| node.connections());
        if per_node.iter().sum::<u64>() == total || Instant::now() > deadline {
            return per_node;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------- across the nodes

#[test]
fn a_publish_on_one_node_reaches_the_users_connections_on_the_others() {
    let Some((redis, [a, b, c])) = cluster("a_publish_on_one_node_reaches...", false, &[]) else { return };
    let mut v1 = b.connect_v1("alice", None);
    let joined = welcome(&mut v1);
    assert_eq!((joined.offset, joined.recovered), (0, false), "{joined:?}");
    assert!(!joined.epoch.is_empty(), "history is on: the welcome names an epoch");
    let mut raw = c.connect_raw("alice");
    let mut second_on_b = b.connect_raw("alice");
    let mut bob = a.connect_raw("bob");
    wait_subscribed(&redis, "alice", 2, SUBSCRIBE);

    // delivered: the two nodes holding alice (B and C), not her three connections, and not A
    // where the publish came in.
    assert_eq!(publish_ok(&a, "alice", "m1"), Published { delivered: 2, offset: 1 });
    // The stream's epoch, carried by offset 1 (the welcome's may have been a placeholder).
    let epoch = expect_stream(&mut v1, 1..=1, "m").unwrap();
    assert!(!epoch.is_empty());
    assert_eq!(ws_text(&mut raw), "m1", "a raw client gets the payload as is");
    for offset in 2..=3 {
        assert_eq!(publish_ok(&a, "alice", &format!("m{offset}")), Published { delivered: 2, offset });
    }
    expect_stream(&mut v1, 2..=3, "m");
    assert_eq!((ws_text(&mut raw), ws_text(&mut raw)), ("m2".into(), "m3".into()));
    let on_b: Vec<String> = (0..3).map(|_| ws_text(&mut second_on_b)).collect();
    assert_eq!(on_b, ["m1", "m2", "m3"]);
    assert_silent(&mut bob, QUIET);
    assert_silent(&mut v1, QUIET);
}

#[test]
fn a_client_resumes_on_another_node_with_what_it_missed_then_live_messages() {
    let Some((redis, [a, b, c])) = cluster("a_client_resumes_on_another_node...", false, &[]) else { return };
    let mut tab = a.connect_v1("alice", None);
    welcome(&mut tab);
    wait_subscribed(&redis, "alice", 1, SUBSCRIBE);
    for offset in 1..=3 {
        assert_eq!(publish_ok(&a, "alice", &format!("m{offset}")).offset, offset);
    }
    let epoch = expect_stream(&mut tab, 1..=3, "m").unwrap();
    drop(tab);
    wait_subscribed(&redis, "alice", 0, UNSUBSCRIBE); // A unsubscribes when her last connection closes

    for offset in 4..=5 {
        let published = publish_ok(&b, "alice", &format!("m{offset}"));
        assert_eq!(published, Published { delivered: 0, offset }, "offsets go on while she is away");
    }
    let mut tab = c.connect_v1("alice", Some(&format!("{epoch}:3")));
    assert_eq!(welcome(&mut tab), Welcome { epoch: epoch.clone(), offset: 5, recovered: true });
    expect_stream(&mut tab, 4..=5, "m");

    wait_subscribed(&redis, "alice", 1, SUBSCRIBE); // C
    assert_eq!(publish_ok(&a, "alice", "m6"), Published { delivered: 1, offset: 6 });
    expect_stream(&mut tab, 6..=6, "m");
    assert_silent(&mut tab, QUIET);
}

#[test]
fn when_a_node_is_killed_its_clients_resume_elsewhere_and_lose_nothing() {
    let Some((redis, [mut a, b, c])) = cluster("when_a_node_is_killed...", false, &[]) else { return };
    let mut on_a = a.connect_v1("alice", None);
    let mut on_b = b.connect_v1("alice", None);
    welcome(&mut on_a);
    welcome(&mut on_b);
    wait_subscribed(&redis, "alice", 2, SUBSCRIBE);
    assert_eq!(publish_ok(&c, "alice", "m1"), Published { delivered: 2, offset: 1 });
    let epoch = expect_stream(&mut on_a, 1..=1, "m").unwrap();
    assert_eq!(expect_stream(&mut on_b, 1..=1, "m").unwrap(), epoch);

    a.kill9();
    assert_ended(&mut on_a);
    // Redis drops the dead node's subscription when its socket closes.
    wait_subscribed(&redis, "alice", 1, SUBSCRIBE);
    for offset in 2..=3 {
        assert_eq!(publish_ok(&b, "alice", &format!("m{offset}")), Published { delivered: 1, offset });
    }
    expect_stream(&mut on_b, 2..=3, "m");

    // The tab that was on A comes back on C from where it was.
    let mut on_c = c.connect_v1("alice", Some(&format!("{epoch}:1")));
    assert_eq!(welcome(&mut on_c), Welcome { epoch: epoch.clone(), offset: 3, recovered: true });
    expect_stream(&mut on_c, 2..=3, "m");
    wait_subscribed(&redis, "alice", 2, SUBSCRIBE);
    assert_eq!(publish_ok(&b, "alice", "m4"), Published { delivered: 2, offset: 4 });
    expect_stream(&mut on_b, 4..=4, "m");
    expect_stream(&mut on_c, 4..=4, "m");
    assert_silent(&mut on_b, QUIET);
    assert_silent(&mut on_c, QUIET);
}

// ------------------------------------------------------------------------------- Redis faults

#[test]
fn a_redis_restart_with_aof_keeps_the_streams_and_the_connections() {
    let Some((mut redis, [a, b, _c])) = cluster("a_redis_restart_with_aof...", true, &[]) else { return };
    let mut tab = a.connect_v1("alice", None);
    welcome(&mut tab);
    wait_subscribed(&redis, "alice", 1, SUBSCRIBE);
    for offset in 1..=3 {
        publish_ok(&a, "alice", &format!("m{offset}"));
    }
    let epoch = expect_stream(&mut tab, 1..=3, "m").unwrap();

    redis.kill9();
    for _ in 0..2 {
        let (status, body) = timed_publish(&a, "alice", "while Redis is down");
        assert_eq!(status, 503, "publish with Redis down: {body}\n{}", a.logs());
    }
    ping_pong(&mut tab); // the connection stays open, its node serves it

    redis.restart();
    wait_subscribed(&redis, "alice", 1, RECONNECT); // A subscribed again
    assert_eq!(publish_until_ok(&a, "alice", "m4", RECONNECT), Published { delivered: 1, offset: 4 });
    let next = message(&mut tab);
    assert_eq!((next.offset, next.data.as_str()), (Some(4), "m4"), "{next:?}");
    assert!(next.epoch.is_none() || next.epoch.as_deref() == Some(&epoch), "same epoch: {next:?}, was {epoch}");

    let mut second = b.connect_v1("alice", Some(&format!("{epoch}:3")));
    assert_eq!(welcome(&mut second), Welcome { epoch, offset: 4, recovered: true });
    expect_stream(&mut second, 4..=4, "m");
    assert_silent(&mut tab, QUIET);
}

#[test]
fn a_redis_restart_without_aof_makes_clients_resume_into_a_new_epoch() {
    let Some((mut redis, [a, b, _c])) = cluster("a_redis_restart_without_aof...", false, &[]) else { return };
    let mut tab = a.connect_v1("alice", None);
    welcome(&mut tab);
    wait_subscribed(&redis, "alice", 1, SUBSCRIBE);
    for offset in 1..=3 {
        publish_ok(&a, "alice", &format!("m{offset}"));
    }
    let old_epoch = expect_stream(&mut tab, 1..=3, "m").unwrap();

    redis.kill9();
    redis.restart(); // empty: alice's stream is gone
                     // A sees that the stream behind alice's position is gone and sends her away to resume
                     // (1012 Service Restart), with nothing in between: never offset 4 of the old epoch.
    let (code, before) = wait_close(&mut tab, RECONNECT);
    assert_eq!(code, 1012, "close code\n{}", a.logs());
    assert!(before.is_empty(), "frames before the close: {before:?}");
    drop(tab);

    let mut tab = b.connect_v1("alice", Some(&format!("{old_epoch}:3")));
    let resumed = welcome(&mut tab);
    assert!(!resumed.recovered, "nothing to recover from an emptied Redis: {resumed:?}");
    assert_ne!(resumed.epoch, old_epoch, "a new epoch: the client must reset");

    wait_subscribed(&redis, "alice", 1, UNSUBSCRIBE); // B only: A unsubscribes once she left it
    assert_eq!(publish_until_ok(&a, "alice", "fresh", RECONNECT), Published { delivered: 1, offset: 1 });
    let first = message(&mut tab);
    assert_eq!((first.offset, first.data.as_str()), (Some(1), "fresh"), "{first:?}");
    let epoch = first.epoch.expect("offset 1 names its epoch");
    assert_ne!(epoch, old_epoch);
    // The welcome's epoch is the stream's, unless it was a placeholder (offset 0: no stream yet).
    assert!(epoch == resumed.epoch || resumed.offset == 0, "{epoch} after welcome {resumed:?}");
    assert_silent(&mut tab, QUIET);
}

#[test]
fn a_paused_redis_fails_publishes_in_bounded_time_and_blocks_nothing_else() {
    let Some((redis, [a, b, _c])) = cluster("a_paused_redis_fails_publishes...", false, &[]) else { return };
    let mut tab = a.connect_v1("alice", None);
    let mut other = b.connect_raw("bob");
    welcome(&mut tab);
    wait_subscribed(&redis, "alice", 1, SUBSCRIBE);
    for offset in 1..=3 {
        publish_ok(&a, "alice", &format!("m{offset}"));
    }
    expect_stream(&mut tab, 1..=3, "m");

    redis.pause();
    for _ in 0..2 {
        let (status, body) = timed_publish(&a, "alice", "while Redis is paused");
        assert_eq!(status, 503, "publish with Redis paused: {body}\n{}", a.logs());
    }
    // While a publish waits on Redis, the node's other work goes on.
    std::thread::scope(|scope| {
        let waiting = scope.spawn(|| timed_publish(&a, "alice", "while Redis is paused"));
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        let (status, body) = a.get("/healthz");
        let took = started.elapsed();
        assert_eq!(status, 200, "{body}");
        assert!(took < Duration::from_millis(500), "/healthz took {took:?} while a publish waits on Redis");
        assert_eq!(waiting.join().unwrap().0, 503);
    });
    ping_pong(&mut tab);
    ping_pong(&mut other);

    redis.resume();
    wait_subscribed(&redis, "alice", 1, RECONNECT);
    let published = publish_until_ok(&a, "alice", "after", RECONNECT);
    assert_eq!(published.delivered, 1);
    // Redis runs the commands it had queued when it wakes up, so a publish that answered 503 may
    // still have been appended (and delivered). Whatever arrives continues the stream: offsets 4,
    // 5, ... with no gap and no duplicate, up to the publish that answered 200.
    let mut expected = 4;
    loop {
        let got = message(&mut tab);
        assert_eq!(got.offset, Some(expected), "{got:?} (published: {published:?})");
        if got.data == "after" {
            break;
        }
        assert_eq!(got.data, "while Redis is paused", "{got:?}");
        expected += 1;
    }
    assert_eq!(expected, published.offset);
    assert_silent(&mut tab, QUIET);
}

// ---------------------------------------------------------------------------- broadcast, proxy

#[test]
fn a_broadcast_on_one_node_reaches_connections_on_every_node() {
    let Some((redis, [a, b, c])) = cluster("a_broadcast_on_one_node...", false, &[]) else { return };
    let mut alice = a.connect_v1("alice", None);
    let mut bob = b.connect_raw("bob");
    let mut carol = c.connect_v1("carol", None);
    welcome(&mut alice);
    welcome(&mut carol);
    // A node may subscribe to broadcasts just after it starts listening: broadcast warm-ups
    // until each client got one (a broadcast has no offsets, so extra ones are harmless).
    let mut clients = [(&mut alice, true), (&mut bob, false), (&mut carol, true)];
    let mut warm = [false; 3];
    let deadline = Instant::now() + Duration::from_secs(5);
    while warm.contains(&false) {
        assert!(Instant::now() < deadline, "broadcast warm-ups reached {warm:?} (alice on A, bob on B, carol on C)");
        let (status, body) = a.broadcast("warm-up");
        assert_eq!(status, 200, "{body}\n{}", a.logs());
        for ((ws, v1), warm) in clients.iter_mut().zip(warm.iter_mut()) {
            if let Some(got) = next_broadcast(ws, *v1, Duration::from_millis(100)) {
                assert_eq!(got, "warm-up");
                *warm = true;
            }
        }
    }
    let (status, body) = a.broadcast("maintenance at noon");
    assert_eq!(status, 200, "{body}");
    for (ws, v1) in clients.iter_mut() {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match next_broadcast(ws, *v1, left).expect("the broadcast within 5 s").as_str() {
                "warm-up" => continue,
                got => break assert_eq!(got, "maintenance at noon"),
            }
        }
    }

    // Streams are unaffected: alice's first message is still offset 1.
    wait_subscribed(&redis, "alice", 1, SUBSCRIBE);
    assert_eq!(publish_ok(&c, "alice", "m1"), Published { delivered: 1, offset: 1 });
    expect_stream(&mut alice, 1..=1, "m");
    for ws in [&mut alice, &mut bob, &mut carol] {
        assert_silent(ws, QUIET);
    }
}

/// The next broadcast's text within `within` (None if none came): a raw text frame, or for a v1
/// client a message frame without offset or epoch (a broadcast is part of no stream).
fn next_broadcast(ws: &mut common::Ws, v1: bool, within: Duration) -> Option<String> {
    ws.get_ref().set_read_timeout(Some(within.max(Duration::from_millis(1)))).unwrap();
    let read = ws.read();
    ws.get_ref().set_read_timeout(Some(WAIT)).unwrap();
    let text = match read {
        Ok(tungstenite::Message::Text(text)) => text.as_str().to_owned(),
        Err(tungstenite::Error::Io(e))
            if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
        {
            return None
        }
        other => panic!("expected a broadcast, got {other:?}"),
    };
    if !v1 {
        return Some(text);
    }
    let frame: serde_json::Value = serde_json::from_str(&text).expect("a v1 frame is JSON");
    assert_eq!(frame["type"], "message", "{frame}");
    assert!(frame.get("offset").is_none() && frame.get("epoch").is_none(), "a broadcast with a position: {frame}");
    Some(frame["data"].as_str().unwrap_or_else(|| panic!("no text data: {frame}")).to_owned())
}

#[test]
fn behind_haproxy_a_publish_reaches_every_node_and_proxy_headers_carry_client_addresses() {
    let test = "behind_haproxy...";
    if !haproxy_available(test) {
        return;
    }
    let flags = ["--proxy-protocol", "--trusted-proxy", "127.0.0.1", "--max-connections-per-ip", "1"];
    let Some((redis, nodes)) = cluster(test, false, &flags) else { return };
    let haproxy = Haproxy::start(&nodes.each_ref().map(|node| node.ws));

    // Three clients of carol, from three client addresses (one connection each is the limit),
    // through the round-robin frontend: three consecutive connections, three different nodes.
    let mut carols: Vec<_> = (11..=13)
        .map(|host| {
            upgrade_via(haproxy.round_robin, Ipv4Addr::new(127, 0, 0, host), "carol").expect("carol via HAProxy")
        })
        .collect();
    let per_node = connections_once_settled(&nodes, 3);
    assert_eq!(per_node.iter().sum::<u64>(), 3, "connections per node: {per_node:?}");
    let holding = per_node.iter().filter(|&&n| n > 0).count() as u64;
    assert!(holding >= 2, "round robin put carol on one node only: {per_node:?}");
    wait_subscribed(&redis, "carol", holding, SUBSCRIBE);
    let published = publish_ok(&nodes[0], "carol", "for every tab");
    assert_eq!(published.delivered, holding, "{per_node:?}");
    for carol in carols.iter_mut() {
        assert_eq!(ws_text(carol), "for every tab");
    }

    // The PROXY header, not HAProxy's own address, is what the per-address limit counts. Round
    // robin cannot say which node a connection lands on, so this goes through the frontend that
    // forwards to node A only: deterministic. 127.0.0.2's second connection is refused there,
    // 127.0.0.3 (a client of its own) is accepted, although all come from HAProxy at 127.0.0.1.
    let (first_host, second_host) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    let first = upgrade_via(haproxy.first_node, first_host, "dave").expect("first from 127.0.0.2");
    assert_eq!(upgrade_via(haproxy.first_node, first_host, "dave").err(), Some(429), "second from 127.0.0.2");
    let other = upgrade_via(haproxy.first_node, second_host, "erin").expect("127.0.0.3 is another client");
    drop((first, other, carols, haproxy));
}
