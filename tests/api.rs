//! The Rust API as a host uses it: routing publishes to users, callbacks, deferred upgrades,
//! connection IDs, stop, stats and argument validation.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::*;
use wspush::{Error, MessageKind, UpgradeDecision, MAX_USER_ID_LEN};

#[test]
fn publish_reaches_every_tab_of_the_user_and_nobody_else() {
    let (server, mut events) = start(config());
    let addr = server.local_addr();
    let mut tab1 = ws_connect(addr, "alice");
    let mut tab2 = ws_connect(addr, "alice");
    let mut bob = ws_connect(addr, "bob");
    events.opened(b"alice");
    events.opened(b"alice");
    events.opened(b"bob");

    assert_eq!(server.publish(b"alice", b"{\"new_mail\":1}", MessageKind::Text).unwrap(), 2);
    assert_eq!(ws_text(&mut tab1), "{\"new_mail\":1}");
    assert_eq!(ws_text(&mut tab2), "{\"new_mail\":1}");

    // Bob got nothing: the next thing he sees is his own message.
    assert_eq!(server.publish(b"bob", b"for bob", MessageKind::Text).unwrap(), 1);
    assert_eq!(ws_text(&mut bob), "for bob");

    assert_eq!(server.publish(b"nobody", b"lost", MessageKind::Text).unwrap(), 0);
}

#[test]
fn binary_and_text_arrive_as_sent() {
    let (server, mut events) = start(config());
    let mut ws = ws_connect(server.local_addr(), "alice");
    events.opened(b"alice");
    let binary = [0u8, 159, 146, 150, 255];
    assert_eq!(server.publish(b"alice", &binary, MessageKind::Binary).unwrap(), 1);
    assert_eq!(server.publish(b"alice", "héllo".as_bytes(), MessageKind::Text).unwrap(), 1);
    assert_eq!(server.publish(b"alice", b"", MessageKind::Binary).unwrap(), 1);
    assert_eq!(ws_binary(&mut ws), binary);
    assert_eq!(ws_text(&mut ws), "héllo");
    assert_eq!(ws_binary(&mut ws), b"");
}

#[test]
fn broadcast_reaches_every_connection_and_returns_the_count() {
    let mut cfg = config();
    cfg.threads = 2;
    let (server, mut events) = start(cfg);
    let addr = server.local_addr();
    let mut clients: Vec<Ws> = ["a", "b", "b", "c"].iter().map(|u| ws_connect(addr, u)).collect();
    for user in [&b"a"[..], b"b", b"b", b"c"] {
        events.opened(user);
    }
    assert_eq!(server.broadcast(b"maintenance at 5", MessageKind::Text).unwrap(), 4);
    for ws in &mut clients {
        assert_eq!(ws_text(ws), "maintenance at 5");
    }
    assert_eq!(server.stats().broadcasts_total, 1);
}

#[test]
fn send_and_close_from_inside_on_message() {
    let (server, mut events) = Harness::new(config())
        .on_message(|server, conn, user, kind, payload| match payload {
            b"bye" => server.close(conn, 4000, "bye").unwrap(),
            b"all" => {
                server.publish(user, b"to all tabs", MessageKind::Text).unwrap();
            }
            _ => server.send(conn, payload, kind).unwrap(),
        })
        .start();
    let addr = server.local_addr();
    let mut ws = ws_connect(addr, "alice");
    let mut other_tab = ws_connect(addr, "alice");
    let conn = events.opened(b"alice");
    events.opened(b"alice");

    ws.send(Message::text("echo me")).unwrap();
    assert_eq!(ws_text(&mut ws), "echo me");
    ws.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    assert_eq!(ws_binary(&mut ws), [1, 2, 3]);
    assert_eq!(events.message(conn), (MessageKind::Text, b"echo me".to_vec()));

    ws.send(Message::text("all")).unwrap();
    assert_eq!(ws_text(&mut ws), "to all tabs");
    assert_eq!(ws_text(&mut other_tab), "to all tabs");

    ws.send(Message::text("bye")).unwrap();
    assert_eq!(ws_close_frame(&mut ws), (4000, "bye".to_owned()));
    ws_expect_end(&mut ws);
    drop(ws);
    assert_eq!(events.closed(conn), 4000);
}

#[test]
fn host_close_and_disconnect_user() {
    let (server, mut events) = start(config());
    let addr = server.local_addr();
    let mut a1 = ws_connect(addr, "alice");
    let mut a2 = ws_connect(addr, "alice");
    let mut bob = ws_connect(addr, "bob");
    let (c1, c2) = (events.opened(b"alice"), events.opened(b"alice"));
    let cb = events.opened(b"bob");

    assert!(matches!(server.close(cb, 1005, ""), Err(Error::InvalidCloseCode)));
    assert!(matches!(server.close(cb, 4000, &"x".repeat(124)), Err(Error::InvalidCloseReason)));
    assert!(matches!(server.disconnect_user(b"alice", 1006), Err(Error::InvalidCloseCode)));

    assert_eq!(server.disconnect_user(b"alice", 4001).unwrap(), 2);
    assert_eq!(ws_close_frame(&mut a1).0, 4001);
    assert_eq!(ws_close_frame(&mut a2).0, 4001);
    ws_expect_end(&mut a1);
    ws_expect_end(&mut a2);
    drop((a1, a2));
    assert_eq!(events.closed(c1), 4001);
    assert_eq!(events.closed(c2), 4001);
    assert_eq!(server.disconnect_user(b"alice", 4001).unwrap(), 0);

    server.close(cb, 1000, "done").unwrap();
    assert_eq!(ws_close_frame(&mut bob), (1000, "done".to_owned()));
    ws_expect_end(&mut bob);
    drop(bob);
    assert_eq!(events.closed(cb), 1000);
}

/// Defers every upgrade, handing the ticket to the test over a channel.
fn deferring_server(cfg: wspush::Config) -> (wspush::Server, Events, mpsc::Receiver<u64>) {
    let (tickets_tx, tickets) = mpsc::channel();
    let tickets_tx = std::sync::Mutex::new(tickets_tx);
    let (server, events) = Harness::new(cfg)
        .on_upgrade(move |_, request| {
            tickets_tx.lock().unwrap().send(request.ticket()).unwrap();
            UpgradeDecision::Defer
        })
        .start();
    (server, events, tickets)
}

#[test]
fn deferred_upgrade_accepted_from_another_thread() {
    let (server, mut events, tickets) = deferring_server(config());
    let handle = server.handle();
    let decider = std::thread::spawn(move || {
        let ticket = tickets.recv_timeout(WAIT).unwrap();
        // The decision is asynchronous: the client must still be waiting for its 101 here.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(handle.stats().handshakes, 1);
        handle.accept_upgrade(ticket, b"carol").unwrap();
        ticket
    });
    let mut ws = ws_connect(server.local_addr(), "ignored");
    let ticket = decider.join().unwrap();
    assert_eq!(events.opened(b"carol"), ticket, "the ticket becomes the connection ID");
    assert_eq!(server.publish(b"carol", b"welcome", MessageKind::Text).unwrap(), 1);
    assert_eq!(ws_text(&mut ws), "welcome");
}

#[test]
fn frames_sent_before_a_deferred_decision_are_processed_after_it() {
    let (server, mut events, tickets) = deferring_server(config());
    let mut raw = Raw::connect(server.local_addr());
    let mut bytes = upgrade_request("/ws", "").into_bytes();
    bytes.extend(frame(0x81, b"early bird"));
    raw.send(&bytes);
    let ticket = tickets.recv_timeout(WAIT).unwrap();
    assert!(raw.silent_for(Duration::from_millis(30)), "no answer before the decision");
    assert_eq!(server.publish(b"dave", b"too early", MessageKind::Text).unwrap(), 0, "not registered yet");
    server.accept_upgrade(ticket, b"dave").unwrap();
    assert_eq!(raw.read_response_head().status, 101);
    assert_eq!(events.opened(b"dave"), ticket);
    assert_eq!(events.message(ticket), (MessageKind::Text, b"early bird".to_vec()));
}

#[test]
fn deferred_upgrade_rejected_from_another_thread() {
    let (server, mut events, tickets) = deferring_server(config());
    let handle = server.handle();
    let decider = std::thread::spawn(move || {
        let ticket = tickets.recv_timeout(WAIT).unwrap();
        assert!(matches!(handle.reject_upgrade(ticket, 200), Err(Error::InvalidStatus)));
        handle.reject_upgrade(ticket, 403).unwrap();
    });
    assert_eq!(ws_try_connect(server.local_addr(), "/ws").err(), Some(403));
    decider.join().unwrap();
    assert_eq!(stats_until(&server, "rejection counted", |s| s.rejected_total == 1).upgrades_total, 0);
    events.assert_none("on_open", Duration::from_millis(50), |e| matches!(e, Event::Open { .. }));
}

#[test]
fn deferred_ticket_of_a_closed_connection_is_not_found() {
    let (server, _events, tickets) = deferring_server(config());
    let mut raw = Raw::connect(server.local_addr());
    raw.send(upgrade_request("/ws", "").as_bytes());
    let ticket = tickets.recv_timeout(WAIT).unwrap();
    drop(raw);
    stats_until(&server, "the dropped handshake to be cleaned up", |s| s.handshakes == 0);
    assert!(matches!(server.accept_upgrade(ticket, b"carol"), Err(Error::NotFound)));
    assert!(matches!(server.reject_upgrade(ticket, 403), Err(Error::NotFound)));
}

#[test]
fn deferred_decision_past_the_handshake_deadline_closes_the_connection() {
    let mut cfg = config();
    cfg.handshake_timeout = Duration::from_millis(300);
    let (server, mut events, tickets) = deferring_server(cfg);
    let mut raw = Raw::connect(server.local_addr());
    raw.send(upgrade_request("/ws", "").as_bytes());
    let ticket = tickets.recv_timeout(WAIT).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(raw.read_end(), End::Eof, "closed without any response");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(matches!(server.accept_upgrade(ticket, b"late"), Err(Error::NotFound)));
    assert_eq!(server.stats().timeouts_total, 1);
    assert_eq!(server.stats().handshakes, 0);
    events.assert_none("on_open", Duration::from_millis(50), |e| matches!(e, Event::Open { .. }));
}

#[test]
fn stale_connection_id_is_not_found_even_after_its_slot_is_reused() {
    let (server, mut events) = start(config());
    let addr = server.local_addr();
    let mut first = ws_connect(addr, "alice");
    let old = events.opened(b"alice");
    first.close(None).unwrap();
    assert_eq!(ws_next(&mut first), Message::Close(None), "an empty close is echoed empty");
    ws_expect_end(&mut first);
    drop(first);
    assert_eq!(events.closed(old), 1005, "an empty close frame is reported as 1005");

    // One I/O thread and no other connection: the new one takes the freed slot.
    let mut second = ws_connect(addr, "alice");
    let new = events.opened(b"alice");
    assert_ne!(old, new);
    assert!(matches!(server.send(old, b"for the old one", MessageKind::Text), Err(Error::NotFound)));
    assert!(matches!(server.close(old, 1000, ""), Err(Error::NotFound)));
    server.send(new, b"for the new one", MessageKind::Text).unwrap();
    assert_eq!(ws_text(&mut second), "for the new one", "nothing addressed to the old ID arrived");
}

#[test]
fn stop_sends_going_away_to_every_client_and_fires_on_close() {
    let mut cfg = config();
    cfg.threads = 2;
    cfg.drain_timeout = Duration::from_secs(3);
    let (server, mut events) = start(cfg);
    let addr = server.local_addr();
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let mut ws = ws_connect(addr, &format!("user{}", i % 2));
            std::thread::spawn(move || {
                let close = ws_close_frame(&mut ws);
                ws_expect_end(&mut ws);
                close.0
            })
        })
        .collect();
    let mut conns: Vec<_> = (0..4).map(|i| events.opened(format!("user{}", i % 2).as_bytes())).collect();
    let handle = server.handle();

    handle.stop();
    for reader in readers {
        assert_eq!(reader.join().unwrap(), 1001);
    }
    // stop() returned: every on_close has already run.
    let mut closed: Vec<_> = events
        .collect_for(Duration::ZERO)
        .into_iter()
        .filter_map(|e| match e {
            Event::Close { conn, code, .. } => Some((conn, code)),
            _ => None,
        })
        .collect();
    closed.sort();
    conns.sort();
    assert_eq!(closed, conns.iter().map(|&c| (c, 1001)).collect::<Vec<_>>());

    handle.stop(); // harmless
    assert!(handle.is_stopped());
    assert!(matches!(handle.publish(b"user0", b"x", MessageKind::Text), Err(Error::Stopped)));
    assert!(matches!(handle.broadcast(b"x", MessageKind::Text), Err(Error::Stopped)));
    assert!(matches!(handle.send(conns[0], b"x", MessageKind::Text), Err(Error::Stopped)));
    assert!(matches!(handle.close(conns[0], 1000, ""), Err(Error::Stopped)));
    assert!(matches!(handle.disconnect_user(b"user0", 1000), Err(Error::Stopped)));
    assert!(matches!(handle.accept_upgrade(conns[0], b"user0"), Err(Error::Stopped)));
    assert!(matches!(handle.reject_upgrade(conns[0], 403), Err(Error::Stopped)));
    assert_eq!(handle.stats().connections, 0);
    assert_eq!(handle.stats().users, 0);
    // The listener is gone.
    assert!(std::net::TcpStream::connect(addr).is_err());
    drop(server); // drop after stop is harmless too
}

#[test]
fn dropping_the_server_stops_it() {
    let (server, mut events) = start(config());
    let handle = server.handle();
    let mut ws = ws_connect(server.local_addr(), "alice");
    let conn = events.opened(b"alice");
    let reader = std::thread::spawn(move || {
        let close = ws_close_frame(&mut ws);
        ws_expect_end(&mut ws);
        close
    });
    drop(server);
    assert_eq!(reader.join().unwrap().0, 1001);
    assert_eq!(events.closed(conn), 1001);
    assert!(handle.is_stopped());
    assert!(matches!(handle.publish(b"alice", b"x", MessageKind::Text), Err(Error::Stopped)));
}

#[test]
fn stop_from_inside_a_callback_does_not_deadlock() {
    let (server, mut events) = Harness::new(config()).on_message(|server, _, _, _, _| server.stop()).start();
    let mut ws = ws_connect(server.local_addr(), "alice");
    let conn = events.opened(b"alice");
    ws.send(Message::text("stop please")).unwrap();
    assert_eq!(ws_close_frame(&mut ws).0, 1001);
    ws_expect_end(&mut ws);
    drop(ws);
    assert_eq!(events.closed(conn), 1001);
    assert!(server.is_stopped());
}

#[test]
fn stats_gauges_and_counters_follow_the_traffic() {
    let (server, mut events) = Harness::new(config()).on_message(|_, _, _, _, _| {}).start();
    let addr = server.local_addr();
    let s = server.stats();
    assert_eq!((s.connections, s.users, s.accepted_total, s.upgrades_total), (0, 0, 0, 0));

    let mut a1 = ws_connect(addr, "alice");
    let mut a2 = ws_connect(addr, "alice");
    let mut bob = ws_connect(addr, "bob");
    let a1_id = events.opened(b"alice");
    events.opened(b"alice");
    events.opened(b"bob");
    let s = server.stats();
    assert_eq!((s.connections, s.users, s.handshakes), (3, 2, 0));
    assert_eq!((s.accepted_total, s.upgrades_total, s.rejected_total), (3, 3, 0));

    assert_eq!(Raw::request(addr, &upgrade_request("/elsewhere", "")).status, 404);
    assert_eq!(ws_try_connect(addr, "/ws").err(), Some(401), "no user: the test handler rejects");
    let s = stats_until(&server, "rejections counted", |s| s.rejected_total == 2);
    assert_eq!((s.accepted_total, s.upgrades_total, s.connections), (5, 3, 3));

    server.publish(b"alice", b"one", MessageKind::Text).unwrap();
    server.broadcast(b"all", MessageKind::Text).unwrap();
    for ws in [&mut a1, &mut a2] {
        assert_eq!(ws_text(ws), "one");
        assert_eq!(ws_text(ws), "all");
    }
    assert_eq!(ws_text(&mut bob), "all");
    let s = server.stats();
    assert_eq!((s.publishes_total, s.broadcasts_total, s.messages_out_total), (1, 1, 5));
    assert!(s.bytes_out_total >= 5 * (2 + 3), "{s:?}");

    a1.send(Message::text("hi")).unwrap();
    a1.send(Message::binary(vec![1u8])).unwrap();
    events.message(a1_id);
    events.message(a1_id);
    assert_eq!(server.stats().messages_in_total, 2);

    let mut bad = Raw::upgrade(addr, "/ws?user=mallory");
    bad.send(&unmasked_frame(0x81, b"x"));
    bad.expect_close(1002);
    assert_eq!(server.stats().protocol_errors_total, 1);
    drop(bad);

    drop((a1, a2, bob));
    let s = stats_until(&server, "all closed", |s| s.connections == 0);
    assert_eq!(s.users, 0);
    assert_eq!((s.accepted_total, s.upgrades_total), (6, 4));
    assert_eq!((s.dropped_total, s.slow_consumer_closes_total, s.over_capacity_total, s.timeouts_total), (0, 0, 0, 0));
}

#[test]
fn user_ids_are_validated() {
    let (server, _events) = Harness::new(config())
        .on_upgrade(|_, request| match request.query_param("user") {
            Some("empty") => UpgradeDecision::Accept(Vec::new()),
            Some("long") => UpgradeDecision::Accept(vec![b'x'; MAX_USER_ID_LEN + 1]),
            Some("max") => UpgradeDecision::Accept(vec![b'x'; MAX_USER_ID_LEN]),
            _ => UpgradeDecision::Reject(401),
        })
        .start();
    let addr = server.local_addr();
    let too_long = vec![b'u'; 256];
    assert!(matches!(server.publish(b"", b"x", MessageKind::Text), Err(Error::InvalidUserId)));
    assert!(matches!(server.publish(&too_long, b"x", MessageKind::Text), Err(Error::InvalidUserId)));
    assert_eq!(server.publish(&too_long[..255], b"x", MessageKind::Text).unwrap(), 0);
    assert!(matches!(server.disconnect_user(b"", 1000), Err(Error::InvalidUserId)));
    assert!(matches!(server.accept_upgrade(1, b""), Err(Error::InvalidUserId)));
    assert!(matches!(server.accept_upgrade(1, &too_long), Err(Error::InvalidUserId)));

    assert_eq!(ws_try_connect(addr, "/ws?user=empty").err(), Some(500));
    assert_eq!(ws_try_connect(addr, "/ws?user=long").err(), Some(500));
    let mut ws = ws_try_connect(addr, "/ws?user=max").expect("a 255-byte user is fine");
    assert_eq!(server.publish(&vec![b'x'; MAX_USER_ID_LEN], b"hi", MessageKind::Text).unwrap(), 1);
    assert_eq!(ws_text(&mut ws), "hi");
}

#[test]
fn oversized_payloads_are_refused() {
    let mut cfg = config();
    cfg.max_queue_bytes = 1000; // the cap on what one connection may have waiting
    let (server, mut events) = start(cfg);
    let mut ws = ws_connect(server.local_addr(), "a");
    let conn = events.opened(b"a");
    let too_big = vec![7u8; 1001];
    assert!(matches!(server.publish(b"a", &too_big, MessageKind::Binary), Err(Error::MessageTooLarge)));
    assert!(matches!(server.broadcast(&too_big, MessageKind::Binary), Err(Error::MessageTooLarge)));
    assert!(matches!(server.send(conn, &too_big, MessageKind::Binary), Err(Error::MessageTooLarge)));
    assert_eq!(server.publish(b"a", &too_big[..1000], MessageKind::Binary).unwrap(), 1);
    assert_eq!(ws_binary(&mut ws), too_big[..1000]);
    assert_eq!(server.stats().publishes_total, 1, "refused publishes are not counted");
}

#[test]
fn a_panicking_callback_does_not_take_the_engine_down() {
    let (server, mut events) = Harness::new(config())
        .on_message(|server, conn, _, kind, payload| {
            if payload == b"panic" {
                panic!("host bug (expected by the test)");
            }
            server.send(conn, payload, kind).unwrap();
        })
        .start();
    let addr = server.local_addr();
    let mut victim = ws_connect(addr, "alice");
    let mut other = ws_connect(addr, "bob");
    events.opened(b"alice");
    events.opened(b"bob");

    victim.send(Message::text("panic")).unwrap();
    other.send(Message::text("still there?")).unwrap();
    assert_eq!(ws_text(&mut other), "still there?");
    victim.send(Message::text("and me?")).unwrap();
    assert_eq!(ws_text(&mut victim), "and me?");
    assert_eq!(server.publish(b"alice", b"push", MessageKind::Text).unwrap(), 1);
    assert_eq!(ws_text(&mut victim), "push");
    // New connections are still served.
    let mut late = ws_connect(addr, "carol");
    late.send(Message::text("hello")).unwrap();
    assert_eq!(ws_text(&mut late), "hello");
}

/// 8 publisher threads × 10,000 sequenced messages to 50 users holding 1-3 connections each, on 2
/// I/O threads. Every connection must get exactly the messages for its user, each once, and in
/// each publisher's order.
#[test]
fn concurrent_publishers_deliver_everything_once_and_in_order() {
    const PUBLISHERS: usize = 8;
    const PER_PUBLISHER: usize = 10_000;
    const USERS: usize = 50;
    let mut cfg = config();
    cfg.threads = 2;
    cfg.max_queue_bytes = 16 << 20; // no slow-consumer close even if a reader thread lags
    let (server, _events) = start(cfg);
    let addr = server.local_addr();

    let mut readers = Vec::new();
    for user in 0..USERS {
        for _ in 0..(user % 3) + 1 {
            let mut raw = Raw::upgrade(addr, &format!("/ws?user=u{user}"));
            readers.push(std::thread::spawn(move || {
                // next[p]: the next sequence expected from publisher p (they step by USERS).
                let mut next: Vec<usize> = vec![user; PUBLISHERS];
                loop {
                    let frame = raw.next_frame();
                    assert_eq!(frame.opcode, 2, "{frame:?}");
                    if frame.payload == b"end" {
                        break;
                    }
                    let publisher = frame.payload[0] as usize;
                    let seq = u32::from_le_bytes(frame.payload[1..5].try_into().unwrap()) as usize;
                    assert_eq!(
                        seq, next[publisher],
                        "user {user} publisher {publisher}: missing, duplicate or reordered"
                    );
                    next[publisher] += USERS;
                }
                for (publisher, next) in next.into_iter().enumerate() {
                    assert!(next >= PER_PUBLISHER, "user {user} missed the end of publisher {publisher}: {next}");
                }
            }));
        }
    }
    let connections = readers.len();
    assert_eq!(server.stats().connections as usize, connections);

    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let handle = server.handle();
            std::thread::spawn(move || {
                let mut delivered = 0;
                for seq in 0..PER_PUBLISHER {
                    let mut payload = vec![p as u8];
                    payload.extend_from_slice(&(seq as u32).to_le_bytes());
                    let user = format!("u{}", seq % USERS);
                    delivered += handle.publish(user.as_bytes(), &payload, MessageKind::Binary).unwrap();
                }
                delivered
            })
        })
        .collect();
    let delivered: usize = publishers.into_iter().map(|p| p.join().unwrap()).sum();
    assert_eq!(delivered, PUBLISHERS * PER_PUBLISHER * connections / USERS);
    for user in 0..USERS {
        server.publish(format!("u{user}").as_bytes(), b"end", MessageKind::Binary).unwrap();
    }
    for reader in readers {
        reader.join().unwrap();
    }
    let s = server.stats();
    assert_eq!(s.slow_consumer_closes_total, 0);
    assert_eq!(s.dropped_total, 0);
    assert_eq!(s.messages_out_total as usize, delivered + connections);
}

/// Sets its flag when the engine lets go of the handler.
struct DropFlag(std::sync::Arc<std::sync::atomic::AtomicBool>);
impl wspush::Handler for DropFlag {}
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn the_handler_is_released_once_the_server_and_every_handle_are_gone() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let dropped = Arc::new(AtomicBool::new(false));
    let server = wspush::Server::start(config(), DropFlag(dropped.clone())).unwrap();
    drop(server);
    assert!(dropped.load(Ordering::SeqCst), "dropping the Server stops it and frees everything");

    let dropped = Arc::new(AtomicBool::new(false));
    let handle = wspush::Server::start(config(), DropFlag(dropped.clone())).unwrap().into_handle();
    assert!(!handle.is_stopped(), "into_handle keeps the server running");
    let second = handle.clone();
    handle.stop();
    drop(handle);
    assert!(!dropped.load(Ordering::SeqCst), "a handle is still held");
    drop(second);
    assert!(dropped.load(Ordering::SeqCst), "the last handle frees the server state");
}

#[test]
fn a_close_we_start_completes_when_the_client_answers_it_even_if_it_keeps_the_socket_open() {
    let mut cfg = config();
    cfg.close_timeout = Duration::from_secs(20);
    cfg.drain_timeout = Duration::from_secs(20);
    let (server, mut events) = start(cfg);
    let mut ws = ws_connect(server.local_addr(), "alice");
    let conn = events.opened(b"alice");

    server.close(conn, 4001, "bye").unwrap();
    // tungstenite queues its answer when it reads the close frame and sends it on flush; the
    // client keeps its socket open.
    assert_eq!(ws_close_frame(&mut ws), (4001, "bye".to_owned()));
    let _ = ws.flush();
    let started = std::time::Instant::now();
    assert_eq!(events.closed(conn), 4001);
    assert!(started.elapsed() < Duration::from_secs(5), "on_close waited for the close timeout");

    // The same through stop(): it returns once every client has answered, not after the timeout.
    let mut ws = ws_connect(server.local_addr(), "bob");
    events.opened(b"bob");
    let client = std::thread::spawn(move || {
        let frame = ws_close_frame(&mut ws);
        let _ = ws.flush();
        (frame, ws)
    });
    let started = std::time::Instant::now();
    server.stop();
    assert!(started.elapsed() < Duration::from_secs(5), "stop waited for the close timeout");
    let ((code, _), _still_open) = client.join().unwrap();
    assert_eq!(code, 1001);
}

/// Uses about `depth` × 64 KiB of stack, like a host callback that recurses deeply.
fn deep_stack(depth: usize) -> u8 {
    let mut frame = [depth as u8; 64 * 1024];
    std::hint::black_box(&mut frame);
    if depth == 0 {
        frame[0]
    } else {
        deep_stack(depth - 1).wrapping_add(frame[depth])
    }
}

#[test]
fn callbacks_get_8_mib_stacks_by_default() {
    // 4 MiB of stack in a callback: past Rust's 2 MiB thread default (which aborted the process
    // with a stack overflow), within the 8 MiB of an ordinary glibc thread.
    let (server, mut events) = Harness::new(config())
        .on_message(|server, conn, _user, kind, _payload| {
            let sum = deep_stack(64);
            server.send(conn, format!("survived {}", sum != 1).as_bytes(), kind).unwrap();
        })
        .start();
    let mut ws = ws_connect(server.local_addr(), "alice");
    events.opened(b"alice");
    ws.send(tungstenite::Message::text("recurse")).unwrap();
    assert!(ws_text(&mut ws).starts_with("survived"));
}

#[test]
fn the_smallest_thread_stack_size_serves_connections_and_smaller_is_refused() {
    let mut cfg = config();
    cfg.thread_stack_size = wspush::MIN_THREAD_STACK_SIZE - 1;
    assert!(matches!(wspush::Server::start(cfg.clone(), DropFlag(Default::default())), Err(Error::InvalidConfig(_))));
    cfg.thread_stack_size = wspush::MIN_THREAD_STACK_SIZE;
    let (server, mut events) = start(cfg);
    let mut ws = ws_connect(server.local_addr(), "alice");
    events.opened(b"alice");
    assert_eq!(server.publish(b"alice", b"small stacks", MessageKind::Text).unwrap(), 1);
    assert_eq!(ws_text(&mut ws), "small stacks");
}
