//! Dead and slow peers: heartbeat pings, the idle timeout, the close timeout and the
//! slow-consumer policies.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use wspush::{MessageKind, SlowConsumerPolicy};

#[test]
fn silent_peer_is_closed_by_the_idle_timeout_while_a_live_one_stays() {
    let mut cfg = config();
    cfg.ping_interval = Duration::from_millis(100);
    cfg.idle_timeout = Duration::from_millis(400);
    let (server, mut events) = start(cfg);
    let addr = server.local_addr();

    // Answers pings: tungstenite replies with a pong whenever it reads one.
    let mut live = ws_connect(addr, "live");
    let live_id = events.opened(b"live");
    let live_reader = std::thread::spawn(move || {
        let mut pings = 0;
        loop {
            match live.read().expect("the live connection stays open") {
                Message::Ping(payload) => {
                    assert!(payload.is_empty());
                    pings += 1;
                }
                Message::Text(text) if text.as_str() == "still here?" => return (pings, live),
                other => panic!("unexpected {other:?}"),
            }
        }
    });

    // Never reads, never answers.
    let started = Instant::now();
    let mut silent = Raw::upgrade(addr, "/ws?user=silent");
    let silent_id = events.opened(b"silent");
    assert_eq!(events.closed(silent_id), 1006);
    let lifetime = started.elapsed();
    assert!(lifetime >= Duration::from_millis(300), "closed after {lifetime:?}, before the idle timeout");
    // What it was sent: heartbeat pings, then the connection simply ends.
    let mut pings = 0;
    while let Some(frame) = silent.read_frame() {
        assert_eq!((frame.opcode, frame.payload.len()), (9, 0), "{frame:?}");
        pings += 1;
    }
    assert!(pings >= 1);

    // Three idle timeouts later the answering client is still there.
    std::thread::sleep(Duration::from_millis(1200).saturating_sub(started.elapsed()));
    assert_eq!(server.publish(b"live", b"still here?", MessageKind::Text).unwrap(), 1);
    let (pings, _live) = live_reader.join().unwrap();
    assert!(pings >= 3, "pinged repeatedly, got {pings}");
    events.assert_none(
        "on_close of the live connection",
        Duration::ZERO,
        |e| matches!(e, Event::Close { conn, .. } if *conn == live_id),
    );
    let s = server.stats();
    assert_eq!((s.timeouts_total, s.connections), (1, 1));
    assert!(s.pings_total >= 4, "{s:?}");
}

#[test]
fn a_peer_sending_data_is_not_pinged() {
    let mut cfg = config();
    cfg.ping_interval = Duration::from_millis(200);
    cfg.idle_timeout = Duration::from_millis(600);
    cfg.handshake_timeout = Duration::from_millis(200);
    let (server, mut events) = start(cfg);
    let mut raw = Raw::upgrade(server.local_addr(), "/ws?user=chatty");
    events.opened(b"chatty");
    for _ in 0..8 {
        raw.send_frame(0x81, b"typing");
        assert!(raw.silent_for(Duration::from_millis(80)), "no ping while the peer talks");
    }
    assert_eq!(server.stats().pings_total, 0);
    // Once it falls silent, it is pinged.
    let ping = raw.read_frame().expect("a ping");
    assert_eq!((ping.opcode, ping.payload.len()), (9, 0));
    events.assert_none("on_close", Duration::ZERO, |e| matches!(e, Event::Close { .. }));
}

#[test]
fn an_answering_peer_is_pinged_every_ping_interval_not_at_the_idle_deadline() {
    let mut cfg = config();
    cfg.ping_interval = Duration::from_millis(200);
    cfg.idle_timeout = Duration::from_millis(2000);
    let (server, mut events) = start(cfg);
    let mut raw = Raw::upgrade(server.local_addr(), "/ws?user=steady");
    let conn = events.opened(b"steady");
    // Answer each ping at once and measure the silence before the next one.
    let mut answered = Instant::now();
    let mut silences = Vec::new();
    for _ in 0..6 {
        let ping = raw.read_frame().expect("a ping");
        assert_eq!(ping.opcode, 9);
        silences.push(answered.elapsed());
        raw.send_frame(0x8a, &ping.payload);
        answered = Instant::now();
    }
    // Each ping comes one interval (plus timer granularity) after the last pong; before the
    // fix every other one waited until idle - ping = 1.8 s.
    assert!(silences.iter().all(|s| *s < Duration::from_millis(1000)), "silences before pings: {silences:?}");
    events.assert_none("on_close", Duration::ZERO, |e| matches!(e, Event::Close { conn: c, .. } if *c == conn));
}

#[test]
fn first_ping_is_not_delayed_by_a_long_handshake_timeout() {
    let mut cfg = config();
    cfg.ping_interval = Duration::from_millis(100);
    cfg.idle_timeout = Duration::from_millis(400);
    cfg.handshake_timeout = Duration::from_secs(10);
    let (server, mut events) = start(cfg);
    let started = Instant::now();
    let mut raw = Raw::upgrade(server.local_addr(), "/ws?user=quiet");
    let conn = events.opened(b"quiet");
    let ping = raw.read_frame().expect("a ping");
    assert_eq!(ping.opcode, 9);
    assert!(started.elapsed() < Duration::from_secs(2), "first ping after {:?}", started.elapsed());
    // And a peer that never answers is gone well before the handshake timeout.
    assert_eq!(events.closed(conn), 1006);
    assert!(started.elapsed() < Duration::from_secs(3), "closed after {:?}", started.elapsed());
}

#[test]
fn close_timeout_ends_a_close_handshake_the_peer_never_answers() {
    let mut cfg = config();
    cfg.close_timeout = Duration::from_millis(200);
    let (server, mut events) = start(cfg);
    let mut raw = Raw::upgrade(server.local_addr(), "/ws?user=deaf");
    let conn = events.opened(b"deaf");
    server.close(conn, 4002, "reauthenticate").unwrap();
    // The peer neither answers nor closes; the server gives up after close_timeout.
    assert_eq!(events.closed(conn), 4002);
    let frame = raw.next_frame();
    assert_eq!(frame.close_code(), Some(4002));
    assert_eq!(&frame.payload[2..], b"reauthenticate");
    assert_eq!(raw.read_end(), End::Eof);
    assert_eq!(server.stats().connections, 0);
}

const CHUNK: usize = 32 * 1024;
const ROUNDS: usize = 160; // 5 MiB per connection

fn tagged(round: usize) -> Vec<u8> {
    let mut payload = vec![(round % 256) as u8; CHUNK];
    payload[..4].copy_from_slice(&(round as u32).to_le_bytes());
    payload
}

fn tag(payload: &[u8]) -> usize {
    u32::from_le_bytes(payload[..4].try_into().unwrap()) as usize
}

/// A reading client of user "fast" that acknowledges each message (so the publisher can pace
/// itself to it: it must never look slow).
fn fast_reader(addr: std::net::SocketAddr) -> (mpsc::Receiver<usize>, std::thread::JoinHandle<Ws>) {
    let mut ws = ws_connect(addr, "fast");
    let (acks, acked) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for round in 0..ROUNDS {
            let message = ws_binary(&mut ws);
            assert_eq!(message, tagged(round), "the fast client gets every message, in order");
            acks.send(round).unwrap();
        }
        ws // kept open by the caller
    });
    (acked, reader)
}

/// Publishes ROUNDS big messages to "slow" and "fast", one round per acknowledgement from fast.
fn publish_rounds(server: &wspush::Server, acked: &mpsc::Receiver<usize>) {
    for round in 0..ROUNDS {
        let payload = tagged(round);
        server.publish(b"slow", &payload, MessageKind::Binary).unwrap();
        assert_eq!(server.publish(b"fast", &payload, MessageKind::Binary).unwrap(), 1);
        assert_eq!(acked.recv_timeout(WAIT).expect("fast client keeps receiving"), round);
    }
}

#[test]
fn slow_consumer_is_closed_with_1008_and_others_keep_receiving() {
    let mut cfg = config();
    cfg.max_queue_bytes = 64 * 1024;
    cfg.close_timeout = Duration::from_millis(300);
    let (server, mut events) = start(cfg);
    let addr = server.local_addr();
    let mut slow = Raw::from_stream(connect_small_rcvbuf(addr, 4096));
    slow.handshake("/ws?user=slow", "");
    let slow_id = events.opened(b"slow");
    let (acked, reader) = fast_reader(addr);
    let fast_id = events.opened(b"fast");

    publish_rounds(&server, &acked);
    let _fast = reader.join().unwrap();
    assert_eq!(events.closed(slow_id), 1008);
    assert_eq!(server.publish(b"slow", b"gone", MessageKind::Text).unwrap(), 0);
    events.assert_none(
        "on_close of the fast client",
        Duration::ZERO,
        |e| matches!(e, Event::Close { conn, .. } if *conn == fast_id),
    );
    let s = server.stats();
    assert_eq!((s.slow_consumer_closes_total, s.dropped_total, s.connections), (1, 0, 1));
    drop(slow);
}

#[test]
fn slow_consumer_with_drop_policy_stays_open_and_loses_only_what_overflowed() {
    let mut cfg = config();
    cfg.max_queue_bytes = 64 * 1024;
    cfg.slow_consumer = SlowConsumerPolicy::Drop;
    let (server, mut events) = start(cfg);
    let addr = server.local_addr();
    let mut slow = Raw::from_stream(connect_small_rcvbuf(addr, 4096));
    slow.handshake("/ws?user=slow", "");
    let slow_id = events.opened(b"slow");
    let (acked, reader) = fast_reader(addr);
    events.opened(b"fast");

    publish_rounds(&server, &acked);
    let _fast = reader.join().unwrap();
    let s = server.stats();
    assert!(s.dropped_total > 0, "{s:?}");
    assert_eq!((s.slow_consumer_closes_total, s.connections), (0, 2));
    let drops: Vec<usize> = events
        .collect_for(Duration::from_millis(50))
        .into_iter()
        .filter_map(|e| match e {
            Event::Drop { conn, user, bytes } => {
                assert_eq!((conn, user.as_slice()), (slow_id, &b"slow"[..]));
                Some(bytes)
            }
            Event::Close { .. } => panic!("nothing was closed: {e:?}"),
            _ => None,
        })
        .collect();
    assert_eq!(drops.len() as u64, s.dropped_total);
    assert!(drops.iter().all(|&bytes| bytes == CHUNK + 4), "frame size of the dropped message: {drops:?}");

    // The slow client catches up: whole messages in order, then new ones get through again.
    let (frames_tx, frames) = mpsc::channel();
    let slow_reader = std::thread::spawn(move || loop {
        let frame = slow.next_frame();
        let last = frame.payload == b"caught up";
        frames_tx.send(frame).unwrap();
        if last {
            return;
        }
    });
    let mut received = Vec::new();
    let give_up = Instant::now() + WAIT;
    'outer: loop {
        server.publish(b"slow", b"caught up", MessageKind::Text).unwrap();
        let deadline = Instant::now() + Duration::from_millis(200);
        while let Ok(frame) = frames.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if frame.payload == b"caught up" {
                break 'outer;
            }
            assert_eq!(frame.opcode, 2);
            received.push(tag(&frame.payload));
            assert_eq!(frame.payload, tagged(*received.last().unwrap()), "a message arrived whole");
        }
        assert!(Instant::now() < give_up, "the caught-up message never arrived");
    }
    slow_reader.join().unwrap();
    assert!(received.windows(2).all(|w| w[0] < w[1]), "in order, no duplicates: {received:?}");
    assert_eq!(received.len() + drops.len(), ROUNDS, "each message was delivered or reported dropped");
}

/// A peer's last bytes and its FIN can arrive together, while the I/O thread is busy: the
/// connection must still be seen to end at once, not when the idle timeout fires.
#[test]
fn data_and_fin_arriving_together_end_the_connection_at_once() {
    let (server, mut events) = Harness::new(config())
        .on_message(|_, _, _, _, payload| {
            if payload == b"stall" {
                std::thread::sleep(Duration::from_millis(300)); // keeps the only I/O thread busy
            }
        })
        .start();
    let addr = server.local_addr();
    let mut staller = ws_connect(addr, "staller");
    events.opened(b"staller");
    let mut leaver = ws_connect(addr, "leaver");
    let leaver_id = events.opened(b"leaver");

    staller.send(tungstenite::Message::text("stall")).unwrap();
    std::thread::sleep(Duration::from_millis(50)); // the I/O thread is now asleep in on_message
    let socket = leaver.get_mut();
    std::io::Write::write_all(socket, &[0x81]).unwrap(); // the first byte of a frame...
    socket.shutdown(std::net::Shutdown::Write).unwrap(); // ...and the FIN, queued together

    let started = Instant::now();
    assert_eq!(events.closed(leaver_id), 1006);
    assert!(started.elapsed() < Duration::from_secs(3), "the FIN was only noticed by a timeout");
}
