//! A cluster of three nodes on one Redis, and what the tests say to it: publishes that must
//! succeed, waits for a node's subscription, and the `wspush.v1` frames
//! (bindings/js/PROTOCOL.md) a client reads.

use std::io;
use std::time::{Duration, Instant};

use tungstenite::Message;

use crate::common::{self, Ws, WAIT};
use crate::node::Node;
use crate::redis::{array_items, redis_available, Redis};

/// Redis (with or without AOF) and three nodes A, B, C on it, each started with `extra` flags.
/// None (after a loud message) when redis-server is missing and not required.
pub fn cluster(test: &str, aof: bool, extra: &[&str]) -> Option<(Redis, [Node; 3])> {
    if !redis_available(test) {
        return None;
    }
    let redis = Redis::start(aof);
    let url = redis.url();
    let nodes = ["A", "B", "C"].map(|name| Node::start(name, &url, extra));
    Some((redis, nodes))
}

// ---------------------------------------------------------------------------------- publishing

/// A successful publish's answer: `{"delivered":N,"offset":K}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// With Redis: how many nodes hold a connection of the user.
    pub delivered: u64,
    pub offset: u64,
}

fn parse_published(node: &Node, body: &str) -> Published {
    let json: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("node {}: publish answered {body:?} ({e})\n{}", node.name, node.logs()));
    let field = |name: &str| {
        json[name].as_u64().unwrap_or_else(|| panic!("node {}: no {name} in {body}\n{}", node.name, node.logs()))
    };
    Published { delivered: field("delivered"), offset: field("offset") }
}

/// POST /publish that must answer 200.
pub fn publish_ok(node: &Node, user: &str, body: &str) -> Published {
    let (status, answer) = node.publish(user, body);
    assert_eq!(status, 200, "node {}: publish to {user} answered {status} {answer}\n{}", node.name, node.logs());
    parse_published(node, &answer)
}

/// POST /publish, repeated while it answers 503 (Redis unreachable), until it answers 200 or
/// `within` passes. Every attempt must answer 200 or 503, each within 3 s.
pub fn publish_until_ok(node: &Node, user: &str, body: &str, within: Duration) -> Published {
    let deadline = Instant::now() + within;
    loop {
        let (status, answer) = timed_publish(node, user, body);
        match status {
            200 => return parse_published(node, &answer),
            503 if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                panic!("node {}: publish still answers {status} {answer} after {within:?}\n{}", node.name, node.logs())
            }
        }
    }
}

/// POST /publish, asserting it answers within 3 s (Redis timeout 1 s, plus slack for a loaded
/// machine); (status, body).
pub fn timed_publish(node: &Node, user: &str, body: &str) -> (u16, String) {
    let started = Instant::now();
    let answer = node.publish(user, body);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "node {}: publish took {took:?} ({answer:?})\n{}", node.name, node.logs());
    answer
}

// ------------------------------------------------------------------------------- subscriptions

/// Whether Redis channel `channel` is the one of `user`: the channel name, cut at the usual
/// separators, has the user ID as one piece ("wspush:u:alice", "{alice}", "alice"...).
///
/// ASSUMPTION about the implementation: one Redis Pub/Sub channel per user (what makes
/// `delivered` count the nodes holding the user: the PUBLISH reply), named after the user ID.
/// If the channel names hash or encode the ID, adapt this function; the panic in
/// `wait_subscribed` lists the channels it saw.
fn is_channel_of(channel: &str, user: &str) -> bool {
    channel.split([':', '{', '}', '/', '|', '.', ' ']).any(|piece| piece == user)
}

/// How many subscriptions (classic and sharded Pub/Sub) the channels of `user` have, and every
/// channel name seen; an error when Redis does not answer.
pub fn subscribers(redis: &Redis, user: &str) -> io::Result<(u64, Vec<String>)> {
    let timeout = Duration::from_secs(2);
    let mut total = 0;
    let mut seen = Vec::new();
    for (list, count) in [("CHANNELS", "NUMSUB"), ("SHARDCHANNELS", "SHARDNUMSUB")] {
        let reply = redis.try_command(&[b"PUBSUB", list.as_bytes()], timeout)?;
        if reply.starts_with('-') {
            continue; // a Redis without sharded Pub/Sub
        }
        for channel in array_items(&reply) {
            if is_channel_of(&channel, user) {
                let reply = redis.try_command(&[b"PUBSUB", count.as_bytes(), channel.as_bytes()], timeout)?;
                let items = array_items(&reply);
                total += items[1].parse::<u64>().expect("a subscriber count");
            }
            seen.push(channel);
        }
    }
    Ok((total, seen))
}

/// Waits (up to `within`) until exactly `nodes` nodes are subscribed to `user`'s channel: a node
/// subscribes when the user's first local connection opens (or after it reconnects to Redis),
/// and a publish before that does not reach it. Waiting on Redis itself leaves the user's stream
/// untouched, so the offsets the tests assert stay 1, 2, 3...
pub fn wait_subscribed(redis: &Redis, user: &str, nodes: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = subscribers(redis, user);
        if matches!(now, Ok((count, _)) if count == nodes) {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "after {within:?}, {user} has {now:?} Redis subscriptions (count, channels), not {nodes} \
                 (see is_channel_of in tests/cluster/harness.rs if the channels are named otherwise)"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ----------------------------------------------------------------------------------- wspush.v1

/// A `welcome` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub epoch: String,
    pub offset: u64,
    pub recovered: bool,
}

pub fn welcome(ws: &mut Ws) -> Welcome {
    let (epoch, offset, recovered) = common::welcome(ws);
    Welcome { epoch, offset, recovered }
}

/// A `message` frame with text data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Message {
    pub offset: Option<u64>,
    /// Present on offset 1 of a stream.
    pub epoch: Option<String>,
    pub data: String,
}

fn parse_message(text: &str) -> V1Message {
    let frame: serde_json::Value = serde_json::from_str(text).expect("a v1 frame is one JSON object");
    assert_eq!(frame["type"], "message", "{frame}");
    V1Message {
        offset: frame["offset"].as_u64(),
        epoch: frame.get("epoch").map(|epoch| epoch.as_str().expect("epoch is a string").to_owned()),
        data: frame["data"].as_str().unwrap_or_else(|| panic!("no text data: {frame}")).to_owned(),
    }
}

/// The next `message` frame (within 5 s).
pub fn message(ws: &mut Ws) -> V1Message {
    parse_message(&common::ws_text(ws))
}

/// Reads the messages of a user's stream with offsets `offsets` and data "{prefix}{offset}", in
/// order; returns the epoch carried by offset 1 if it was among them.
pub fn expect_stream(ws: &mut Ws, offsets: std::ops::RangeInclusive<u64>, prefix: &str) -> Option<String> {
    let mut epoch = None;
    for offset in offsets {
        let got = message(ws);
        assert_eq!((got.offset, got.data.as_str()), (Some(offset), format!("{prefix}{offset}").as_str()), "{got:?}");
        if offset == 1 {
            epoch = Some(got.epoch.expect("offset 1 names its epoch"));
        } else {
            assert_eq!(got.epoch, None, "only offset 1 carries an epoch: {got:?}");
        }
    }
    epoch
}

/// Asserts that nothing but pings and pongs arrives within `period`, and the connection stays
/// open.
pub fn assert_silent(ws: &mut Ws, period: Duration) {
    let deadline = Instant::now() + period;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        ws.get_ref().set_read_timeout(Some(left)).unwrap();
        match ws.read() {
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
            {
                break
            }
            other => panic!("expected nothing, got {other:?}"),
        }
    }
    ws.get_ref().set_read_timeout(Some(WAIT)).unwrap();
}

/// Sends a ping and waits for its pong: the connection is open and its node serves it.
pub fn ping_pong(ws: &mut Ws) {
    let payload = b"still there?".to_vec();
    ws.send(Message::Ping(payload.clone().into())).expect("send a ping");
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no pong within {WAIT:?}");
        match ws.read() {
            Ok(Message::Pong(got)) if got[..] == payload[..] => return,
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            other => panic!("expected the pong, got {other:?}"),
        }
    }
}

/// Reads until the server's close frame, up to `within`, and answers it; returns its code and
/// the data frames that came before it.
pub fn wait_close(ws: &mut Ws, within: Duration) -> (u16, Vec<String>) {
    let deadline = Instant::now() + within;
    let mut before = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no close frame within {within:?}; data frames before: {before:?}");
        ws.get_ref().set_read_timeout(Some(left)).unwrap();
        match ws.read() {
            Ok(Message::Close(Some(frame))) => {
                // Answer it (tungstenite queued the reply) so the server closes the connection now.
                let _ = ws.flush();
                return (u16::from(frame.code), before);
            }
            Ok(Message::Close(None)) => panic!("close frame without a code; data frames before: {before:?}"),
            Ok(Message::Text(text)) => before.push(text.as_str().to_owned()),
            Ok(other) if other.is_binary() => before.push(format!("{other:?}")),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
            {
                continue
            }
            Err(e) => panic!("the connection ended without a close frame ({e}); data frames before: {before:?}"),
        }
    }
}

/// Asserts that a connection to a killed node is gone: the next read fails instead of
/// delivering anything.
pub fn assert_ended(ws: &mut Ws) {
    loop {
        match ws.read() {
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(other) => panic!("a connection to a dead node delivered {other:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
            {
                panic!("a connection to a dead node is still open after {WAIT:?}")
            }
            Err(_) => return,
        }
    }
}
