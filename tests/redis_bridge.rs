//! The Redis bridge from inside one process, where a test can do what no well-behaved node does:
//! write into a user's stream behind the nodes' backs (a jump the next message reveals), trim
//! past what a node delivered, or point a server at a "Redis" that answers garbage or nothing.
//! The three-node behaviour through wspushd is tests/cluster.rs.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use wspush::{Config, Error, MessageKind, Published, Server, ServerHandle};

mod common;
// Shared with tests/cluster.rs, which uses the parts this file does not.
#[allow(dead_code)]
#[path = "cluster/redis.rs"]
mod redis_process;

use common::*;
use redis_process::{redis_available, Redis};

const TIMEOUT: Duration = Duration::from_millis(500);

fn node(redis_url: &str, history: usize) -> (Server, Events) {
    start(Config {
        redis_url: Some(redis_url.to_string()),
        redis_timeout: TIMEOUT,
        history_max_messages: history,
        ..config()
    })
}

/// Waits until `user`'s channel has `nodes` subscribers in Redis.
fn wait_subscribed(redis: &Redis, user: &str, nodes: i64) {
    let channel = format!("wspush:{{u:{user}}}:c");
    eventually(&format!("{nodes} node(s) subscribed to {user}"), || {
        let reply = redis.command(&[b"PUBSUB", b"SHARDNUMSUB", channel.as_bytes()]);
        reply.trim_end().ends_with(&format!(":{nodes}"))
    });
}

fn publish_wait(server: &ServerHandle, user: &str, text: &str) -> Published {
    server.publish_wait(user.as_bytes(), text.as_bytes(), MessageKind::Text, Duration::from_secs(2)).expect("publish")
}

#[test]
fn a_jump_in_offsets_is_filled_from_the_stream_before_the_next_message() {
    if !redis_available("a_jump_in_offsets_is_filled...") {
        return;
    }
    let redis = Redis::start(false);
    let (a, _) = node(&redis.url(), 100);
    let (b, _) = node(&redis.url(), 100);
    let mut tab = v1_connect(&b, "alice", None);
    welcome(&mut tab);
    wait_subscribed(&redis, "alice", 1);
    assert_eq!(publish_wait(&a, "alice", "one"), Published { delivered: 1, offset: Some(1) });
    assert_eq!(v1_message(&mut tab), (Some(1), "one".into()));

    // Offset 2 goes into the history without reaching any channel: node B has no idea.
    redis.command(&[b"HINCRBY", b"wspush:{u:alice}:m", b"o", b"1"]);
    redis.command(&[b"RPUSH", b"wspush:{u:alice}:h", b"thidden"]);
    assert_eq!(publish_wait(&a, "alice", "three"), Published { delivered: 1, offset: Some(3) });

    assert_eq!(v1_message(&mut tab), (Some(2), "hidden".into()), "the jump is filled first");
    assert_eq!(v1_message(&mut tab), (Some(3), "three".into()));
    assert_eq!(b.stats().redis_fills_total, 1);

    // A copy of offset 3 arriving again (a replayed channel message) is dropped.
    let epoch = redis.command(&[b"HGET", b"wspush:{u:alice}:m", b"e"]);
    let epoch = epoch.lines().nth(1).expect("the epoch").to_string();
    let copy = format!("{epoch}:3:t:three again");
    redis.command(&[b"SPUBLISH", b"wspush:{u:alice}:c", copy.as_bytes()]);
    assert_eq!(publish_wait(&a, "alice", "four"), Published { delivered: 1, offset: Some(4) });
    assert_eq!(v1_message(&mut tab), (Some(4), "four".into()), "the copy never reaches the client");
}

#[test]
fn a_jump_the_stream_no_longer_holds_closes_v1_connections_with_1012_never_a_silent_gap() {
    if !redis_available("a_jump_the_stream_no_longer_holds...") {
        return;
    }
    let redis = Redis::start(false);
    let (a, _) = node(&redis.url(), 2);
    let (b, _) = node(&redis.url(), 2);
    let mut v1 = v1_connect(&b, "alice", None);
    welcome(&mut v1);
    let mut raw = ws_connect(b.local_addr(), "alice");
    wait_subscribed(&redis, "alice", 1);
    assert_eq!(publish_wait(&a, "alice", "one").offset, Some(1));
    assert_eq!(v1_message(&mut v1), (Some(1), "one".into()));
    assert_eq!(ws_text(&mut raw), "one");

    // Offsets 2-4 appended behind the nodes' backs; with 2 kept per user, 2 is trimmed away.
    for _ in 2..=4 {
        redis.command(&[b"HINCRBY", b"wspush:{u:alice}:m", b"o", b"1"]);
        redis.command(&[b"RPUSH", b"wspush:{u:alice}:h", b"tgone"]);
        redis.command(&[b"LTRIM", b"wspush:{u:alice}:h", b"-2", b"-1"]);
    }
    assert_eq!(publish_wait(&a, "alice", "five").offset, Some(5));

    let (code, _) = ws_close_frame(&mut v1);
    assert_eq!(code, 1012, "the v1 client is sent away to resume and be told");
    // A raw connection has no offsets to resume from: it gets what the stream still holds.
    assert_eq!([ws_text(&mut raw), ws_text(&mut raw)], ["gone", "five"]);
    assert_eq!(b.stats().redis_resets_total, 1);

    let epoch = redis.command(&[b"HGET", b"wspush:{u:alice}:m", b"e"]);
    let epoch = epoch.lines().nth(1).expect("the epoch").to_string();
    let mut resumed = v1_connect(&b, "alice", Some(&format!("{epoch}:1")));
    assert_eq!(welcome(&mut resumed), (epoch, 5, false), "2 is gone: not recovered");
}

/// A "Redis" that accepts connections and then misbehaves: `answer` is what it writes after
/// each read (None: nothing, ever).
fn fake_redis(answer: Option<&'static [u8]>) -> (String, mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    let (connected, connections) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = connected.send(());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    if let Some(answer) = answer {
                        if stream.write_all(answer).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, connections)
}

fn assert_publishes_fail_in_bounded_time_and_the_server_serves_on(url: &str) {
    let (server, mut events) = node(url, 100);
    let started = Instant::now();
    let outcome = server.publish_wait(b"alice", b"x", MessageKind::Text, Duration::from_secs(10));
    assert!(matches!(outcome, Err(Error::Unavailable)), "{outcome:?}");
    assert!(started.elapsed() < TIMEOUT * 4, "failed after {:?}", started.elapsed());
    // Once Redis has been unusable for longer than the timeout, publishes fail at once.
    std::thread::sleep(TIMEOUT);
    let started = Instant::now();
    assert!(matches!(server.publish(b"alice", b"x", MessageKind::Text), Err(Error::Unavailable)));
    let (answered, done) = mpsc::channel();
    let refused = server.publish_async(b"alice", b"x", MessageKind::Text, move |outcome| {
        let _ = answered.send(outcome);
    });
    assert!(matches!(refused, Err(Error::Unavailable)), "{refused:?}");
    assert!(done.try_recv().is_err(), "a refused publish_async never calls back");
    assert!(started.elapsed() < Duration::from_millis(50));

    // WebSocket clients are served all along: a raw one opens and gets broadcasts made here...
    let mut raw = ws_connect(server.local_addr(), "bob");
    events.opened(b"bob");
    // ...and a wspush.v1 one, whose welcome needs Redis, is asked to come back later.
    let mut v1 = v1_connect(&server, "carol", None);
    let (code, _) = ws_close_frame(&mut v1);
    assert_eq!(code, 1013, "try again later");
    assert_eq!(server.stats().redis_connected, 0);
    assert!(server.stats().redis_publish_failures_total >= 1);
    drop(raw.close(None));
}

#[test]
fn a_redis_that_answers_garbage_costs_the_connection_not_the_server() {
    let (url, connections) = fake_redis(Some(b"?this is not RESP\r\n$-7\r\n"));
    assert_publishes_fail_in_bounded_time_and_the_server_serves_on(&url);
    assert!(connections.try_iter().count() >= 2, "the bridge keeps reconnecting");
}

#[test]
fn a_redis_that_never_answers_fails_publishes_after_the_timeout() {
    let (url, _) = fake_redis(None);
    assert_publishes_fail_in_bounded_time_and_the_server_serves_on(&url);
}

#[test]
fn a_redis_that_is_not_there_fails_publishes_after_the_timeout() {
    let port = redis_process::free_port();
    assert_publishes_fail_in_bounded_time_and_the_server_serves_on(&format!("redis://127.0.0.1:{port}"));
}

#[test]
fn completions_run_once_and_a_waiting_publish_inside_one_is_refused_not_deadlocked() {
    if !redis_available("completions_run_once...") {
        return;
    }
    let redis = Redis::start(false);
    let (a, _) = node(&redis.url(), 100);
    let (answered, answers) = mpsc::channel();
    let handle = a.handle();
    a.publish_async(b"alice", b"first", MessageKind::Text, move |outcome| {
        let inner = handle.publish_wait(b"alice", b"inner", MessageKind::Text, Duration::from_secs(1));
        let _ = answered.send((outcome, inner));
    })
    .unwrap();
    let (outcome, inner) = answers.recv_timeout(Duration::from_secs(5)).expect("the completion ran");
    assert_eq!(outcome.unwrap(), Published { delivered: 0, offset: Some(1) });
    assert!(matches!(inner, Err(Error::WouldDeadlock)), "{inner:?}");
    assert!(answers.recv_timeout(Duration::from_millis(200)).is_err(), "exactly once");
    // Publishes from a completion that do not wait are fine; stop from one does not hang.
    let (stopped, stop_seen) = mpsc::channel();
    let handle = a.handle();
    a.publish_async(b"alice", b"second", MessageKind::Text, move |_| {
        let _ = handle.publish(b"alice", b"third", MessageKind::Text);
        handle.stop();
        let _ = stopped.send(());
    })
    .unwrap();
    stop_seen.recv_timeout(Duration::from_secs(5)).expect("stop from a completion returns");
}

#[test]
fn a_stream_that_went_back_in_time_across_a_lost_connection_closes_v1_connections_with_1012() {
    if !redis_available("a_stream_that_went_back_in_time...") {
        return;
    }
    let redis = Redis::start(false);
    let (a, _) = node(&redis.url(), 100);
    let mut tab = v1_connect(&a, "alice", None);
    welcome(&mut tab);
    wait_subscribed(&redis, "alice", 1);
    for (offset, text) in [(1, "one"), (2, "two"), (3, "three")] {
        assert_eq!(publish_wait(&a, "alice", text).offset, Some(offset));
        assert_eq!(v1_message(&mut tab), (Some(offset), text.into()));
    }
    // What a restart from an older snapshot looks like: 2 and 3 are gone, the epoch is the same,
    // and the subscriber connections were lost.
    redis.command(&[b"HSET", b"wspush:{u:alice}:m", b"o", b"1"]);
    redis.command(&[b"LTRIM", b"wspush:{u:alice}:h", b"0", b"0"]);
    redis.command(&[b"CLIENT", b"KILL", b"TYPE", b"pubsub"]);

    let (code, _) = ws_close_frame(&mut tab);
    assert_eq!(code, 1012, "offsets 2 and 3 will be reused: the client must not keep its position");
    assert_eq!(a.stats().redis_resets_total, 1);
}

#[test]
fn a_raw_connection_gets_what_was_published_while_its_node_was_unsubscribed_even_before_any_message() {
    if !redis_available("a_raw_connection_gets_what_was_published_while...") {
        return;
    }
    let redis = Redis::start(false);
    let (a, _) = node(&redis.url(), 100);
    let (b, _) = node(&redis.url(), 100);
    // Carol has only a raw connection, on B, and nothing was ever delivered to her there.
    let mut tab = ws_connect(b.local_addr(), "carol");
    wait_subscribed(&redis, "carol", 1);
    // Published while B's subscriber connections are down: into her stream, through no channel.
    redis.command(&[b"HINCRBY", b"wspush:{u:carol}:m", b"o", b"1"]);
    redis.command(&[b"RPUSH", b"wspush:{u:carol}:h", b"tmissed"]);
    redis.command(&[b"CLIENT", b"KILL", b"TYPE", b"pubsub"]);
    assert_eq!(ws_text(&mut tab), "missed", "caught up from where the node learned her stream was");
    wait_subscribed(&redis, "carol", 1);
    assert_eq!(publish_wait(&a, "carol", "next").offset, Some(2));
    assert_eq!(ws_text(&mut tab), "next", "then live, in order, nothing twice");
}

#[test]
fn scripts_flushed_from_redis_are_loaded_again() {
    if !redis_available("scripts_flushed_from_redis...") {
        return;
    }
    let redis = Redis::start(false);
    let (a, _) = node(&redis.url(), 100);
    assert_eq!(publish_wait(&a, "alice", "one").offset, Some(1));
    redis.command(&[b"SCRIPT", b"FLUSH"]);
    let refused = a.publish_wait(b"alice", b"two", MessageKind::Text, Duration::from_secs(2));
    assert!(matches!(refused, Err(Error::Unavailable)), "{refused:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let published = loop {
        match a.publish_wait(b"alice", b"two", MessageKind::Text, Duration::from_secs(2)) {
            Ok(published) => break published,
            Err(e) => assert!(Instant::now() < deadline, "still failing: {e:?}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(published.offset, Some(2));
}

/// The IDs of the clients connected to Redis, from CLIENT LIST (the asking one included).
fn client_ids(redis: &Redis) -> Vec<String> {
    let list = redis.command(&[b"CLIENT", b"LIST"]);
    let mut ids: Vec<String> =
        list.split_whitespace().filter(|field| field.starts_with("id=")).map(str::to_owned).collect();
    ids.sort();
    ids
}

#[test]
fn idle_links_stay_up_with_and_without_subscriptions() {
    if !redis_available("idle_links_stay_up...") {
        return;
    }
    let redis = Redis::start(false);
    let (a, _) = node(&redis.url(), 100);
    eventually("the node is connected", || a.stats().redis_connected == 1);
    // A user comes and goes: its link ends up subscribed to nothing again.
    let raw = ws_connect(a.local_addr(), "alice");
    wait_subscribed(&redis, "alice", 1);
    drop(raw);
    wait_subscribed(&redis, "alice", 0);
    let before = client_ids(&redis);
    // Several keepalive rounds (a ping every half timeout when idle).
    std::thread::sleep(TIMEOUT * 4);
    assert_eq!(a.stats().redis_connected, 1);
    let after = client_ids(&redis);
    // The harness's own command connection is new each time; the node's are the same ones.
    let kept = before.iter().filter(|id| after.contains(id)).count();
    assert!(kept >= 3, "the node's three connections were remade: before {before:?}, after {after:?}");
}

#[test]
fn a_redis_cluster_of_three_primaries_carries_users_of_every_slot() {
    if !redis_available("a_redis_cluster_of_three_primaries...") {
        return;
    }
    let primaries = redis_process::start_cluster(3);
    // Each node is pointed at a different primary: it finds the others itself.
    let (a, _) = node(&primaries[0].url(), 100);
    let (b, _) = node(&primaries[1].url(), 100);
    let users: Vec<String> = (0..12).map(|i| format!("user{i}")).collect();
    let owners: std::collections::HashSet<String> = users
        .iter()
        .map(|user| {
            let key = format!("wspush:{{u:{user}}}:h");
            primaries[0].command(&[b"CLUSTER", b"KEYSLOT", key.as_bytes()])
        })
        .map(|slot| {
            let slot: u32 = slot.trim_start_matches(':').trim().parse().unwrap();
            (slot * 3 / 16384).to_string() // start_cluster splits the slots in three ranges
        })
        .collect();
    assert_eq!(owners.len(), 3, "the users' slots span the three primaries");

    let mut tabs: Vec<Ws> = users.iter().map(|user| v1_connect(&b, user, None)).collect();
    let epochs: Vec<String> = tabs.iter_mut().map(|tab| welcome(tab).0).collect();
    for user in &users {
        let channel = format!("wspush:{{u:{user}}}:c");
        eventually(&format!("{user} subscribed"), || {
            let subscribed = primaries
                .iter()
                .map(|primary| primary.command(&[b"PUBSUB", b"SHARDNUMSUB", channel.as_bytes()]))
                .filter(|reply| reply.trim_end().ends_with(":1"))
                .count();
            subscribed == 1
        });
    }
    for (user, tab) in users.iter().zip(&mut tabs) {
        assert_eq!(publish_wait(&a, user, "one"), Published { delivered: 1, offset: Some(1) }, "{user}");
        assert_eq!(v1_message(tab), (Some(1), "one".into()));
    }

    // Resume on the other node, against the same primaries.
    let (user, epoch) = (&users[5], &epochs[5]);
    drop(tabs.remove(5));
    for text in ["two", "three"] {
        publish_wait(&b, user, text);
    }
    let mut resumed = v1_connect(&a, user, Some(&format!("{epoch}:1")));
    assert_eq!(welcome(&mut resumed), (epoch.clone(), 3, true));
    assert_eq!(v1_message(&mut resumed), (Some(2), "two".into()));
    assert_eq!(v1_message(&mut resumed), (Some(3), "three".into()));
    // Broadcasts reach every node's connections.
    a.broadcast(b"everyone", MessageKind::Text).unwrap();
    let broadcast = next_json(&mut tabs[0]);
    assert_eq!(broadcast["data"], "everyone", "{broadcast}");
    assert_eq!(a.stats().redis_connected, 1);
}

/// Moves the slot of `user`'s keys to another primary, keys and all, as `redis-cli --cluster
/// reshard` does (CLUSTER SETSLOT IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE everywhere).
fn move_slot_of(user: &str, primaries: &[Redis]) {
    let key = format!("wspush:{{u:{user}}}:h");
    let slot = primaries[0].command(&[b"CLUSTER", b"KEYSLOT", key.as_bytes()]);
    let slot = slot.trim_start_matches(':').trim().to_string();
    let ids: Vec<String> = primaries
        .iter()
        .map(|p| redis_process::array_items(&format!("*1\r\n{}", p.command(&[b"CLUSTER", b"MYID"])))[0].clone())
        .collect();
    let owner = primaries
        .iter()
        .position(|p| p.command(&[b"CLUSTER", b"COUNTKEYSINSLOT", slot.as_bytes()]) != ":0\r\n")
        .expect("the slot holds the user's keys");
    let target = (owner + 1) % primaries.len();
    let (source, destination) = (&primaries[owner], &primaries[target]);
    destination.command(&[b"CLUSTER", b"SETSLOT", slot.as_bytes(), b"IMPORTING", ids[owner].as_bytes()]);
    source.command(&[b"CLUSTER", b"SETSLOT", slot.as_bytes(), b"MIGRATING", ids[target].as_bytes()]);
    let keys = redis_process::array_items(&source.command(&[b"CLUSTER", b"GETKEYSINSLOT", slot.as_bytes(), b"100"]));
    for key in keys {
        let port = destination.port().to_string();
        let reply = source.command(&[b"MIGRATE", b"127.0.0.1", port.as_bytes(), key.as_bytes(), b"0", b"5000"]);
        assert_eq!(reply, "+OK\r\n", "MIGRATE {key}");
    }
    for primary in primaries {
        primary.command(&[b"CLUSTER", b"SETSLOT", slot.as_bytes(), b"NODE", ids[target].as_bytes()]);
    }
}

#[test]
fn a_slot_moved_between_primaries_is_followed_by_publishers_and_subscribers() {
    if !redis_available("a_slot_moved_between_primaries...") {
        return;
    }
    let primaries = redis_process::start_cluster(3);
    let (a, _) = node(&primaries[0].url(), 100);
    let (b, _) = node(&primaries[0].url(), 100);
    let mut tab = v1_connect(&b, "alice", None);
    let (epoch, _, _) = welcome(&mut tab);
    eventually("alice subscribed", || {
        a.publish_wait(b"bob", b"-", MessageKind::Text, TIMEOUT).is_ok() && {
            let channel = b"wspush:{u:alice}:c";
            primaries.iter().any(|p| p.command(&[b"PUBSUB", b"SHARDNUMSUB", channel]).trim_end().ends_with(":1"))
        }
    });
    assert_eq!(publish_wait(&a, "alice", "one"), Published { delivered: 1, offset: Some(1) });
    assert_eq!(v1_message(&mut tab), (Some(1), "one".into()));

    move_slot_of("alice", &primaries);
    // A's next publish is answered MOVED and sent again to the new primary; B, whose subscription
    // Redis dropped with the slot, subscribes there and catches up from the history.
    let published = publish_wait(&a, "alice", "two");
    assert_eq!(published.offset, Some(2), "the history moved with the slot: same epoch, next offset");
    assert_eq!(v1_message(&mut tab), (Some(2), "two".into()));
    assert_eq!(publish_wait(&a, "alice", "three"), Published { delivered: 1, offset: Some(3) });
    assert_eq!(v1_message(&mut tab), (Some(3), "three".into()));
    let mut resumed = v1_connect(&a, "alice", Some(&format!("{epoch}:1")));
    assert_eq!(welcome(&mut resumed), (epoch, 3, true));
}

#[test]
fn a_raw_connection_gets_everything_published_after_its_upgrade_also_on_a_fresh_node() {
    if !redis_available("a_raw_connection_gets_everything_published_after_its_upgrade...") {
        return;
    }
    let redis = Redis::start(false);
    let (a, _) = node(&redis.url(), 100);
    let (b, _) = node(&redis.url(), 100);
    eventually("both nodes connected", || a.stats().redis_connected == 1 && b.stats().redis_connected == 1);
    // Every user's first connection on B, from 4 threads at once, each published to through A
    // the moment its 101 arrives: B subscribes to a user's channel only when the user arrives,
    // and answers the upgrade once it has, so none of these publishes may miss its connection.
    let b_addr = b.local_addr();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let a = a.handle();
            std::thread::spawn(move || {
                let mut clients = Vec::new();
                for i in 0..75 {
                    let user = format!("fresh{t}-{i}");
                    let raw = ws_connect(b_addr, &user);
                    a.publish(user.as_bytes(), b"right after the 101", MessageKind::Text).expect("queued");
                    clients.push((user, raw));
                }
                clients
            })
        })
        .collect();
    for thread in threads {
        for (user, mut raw) in thread.join().unwrap() {
            assert_eq!(ws_text(&mut raw), "right after the 101", "{user}");
        }
    }
    // Nodes without history: a wspush.v1 connection is welcomed locally, after the same wait.
    let (c, _) = node(&redis.url(), 0);
    let (d, _) = node(&redis.url(), 0);
    let mut v1 = v1_connect(&c, "plain-v1", None);
    let frame = next_json(&mut v1);
    assert_eq!((frame["type"].as_str(), frame["epoch"].as_str()), (Some("welcome"), Some("")), "{frame}");
    d.publish(b"plain-v1", b"v1 too", MessageKind::Text).unwrap();
    assert_eq!(v1_message(&mut v1), (None, "v1 too".into()));
}

#[test]
fn what_a_connection_waiting_for_its_upgrade_is_sent_is_bounded_by_its_queue() {
    if !redis_available("what_a_connection_waiting_for_its_upgrade...") {
        return;
    }
    let redis = Redis::start(false);
    // A long Redis timeout: with Redis paused the node keeps waiting for the subscription
    // instead of giving up on Redis, so the connection's 101 stays pending.
    let (server, mut events) = start(Config {
        redis_url: Some(redis.url()),
        redis_timeout: Duration::from_secs(20),
        max_queue_bytes: 4096,
        ..config()
    });
    eventually("the node is connected", || server.stats().redis_connected == 1);
    redis.pause();
    let mut raw = Raw::connect(server.local_addr());
    raw.send(upgrade_request("/ws?user=mallory", "").as_bytes());
    let conn = events.opened(b"mallory"); // registered; its 101 waits for the subscription
                                          // The host (or publishes) keep sending to it: held, up to the send queue's limit, then the
                                          // upgrade is refused instead of holding more.
    for _ in 0..8 {
        let _ = server.send(conn, &[b'x'; 1024], MessageKind::Binary);
    }
    let response = raw.read_response_head();
    assert_eq!(response.status, 503, "{response:?}");
    events.closed(conn);
    redis.resume();
}
