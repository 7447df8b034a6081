//! Per-user history and the `wspush.v1` subprotocol over real sockets (bindings/js/PROTOCOL.md):
//! the welcome, offsets, resume with `since`, what cannot be recovered, raw clients unchanged,
//! and publishes racing reconnects. The deterministic races (a publish held inside the resume,
//! a resume held inside a publish) are in tests/history_race.rs.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::*;
use wspush::{Config, MessageKind, Server, UpgradeDecision};

fn history_config() -> Config {
    Config { history_max_messages: 100, ..config() }
}

fn publish(server: &Server, user: &str, text: &str) -> u64 {
    let published = server.publish_with_offset(user.as_bytes(), text.as_bytes(), MessageKind::Text).unwrap();
    published.offset.expect("history is on")
}

#[test]
fn a_v1_client_is_welcomed_then_gets_json_messages_with_offsets() {
    let (server, _events) = start(history_config());
    let mut ws = v1_connect(&server, "alice", None);
    let (epoch, offset, recovered) = welcome(&mut ws);
    assert_eq!((offset, recovered), (0, false), "alice has no stream yet");
    assert!(epoch.starts_with('n'), "a placeholder epoch for a user without a stream: {epoch}");

    assert_eq!(publish(&server, "alice", "one \"quoted\"\n"), 1);
    let first = next_json(&mut ws);
    assert_eq!(first["offset"], 1);
    assert_eq!(first["data"], "one \"quoted\"\n");
    let stream_epoch = first["epoch"].as_str().expect("offset 1 names its epoch").to_owned();
    assert_eq!(stream_epoch.len(), 16);

    let binary = server.publish_with_offset(b"alice", &[0, 159, 255], MessageKind::Binary).unwrap();
    assert_eq!((binary.delivered, binary.offset), (1, Some(2)));
    let second = next_json(&mut ws);
    assert_eq!((second["offset"].as_u64(), second["data_base64"].as_str()), (Some(2), Some("AJ//")));
    assert!(second.get("epoch").is_none(), "only offset 1 carries the epoch: {second}");
    assert_eq!(publish(&server, "bob", "other user"), 1, "offsets are per user");

    // Not part of the user's stream: same shape, no offset.
    server.broadcast(b"to everyone", MessageKind::Text).unwrap();
    assert_eq!(v1_message(&mut ws), (None, "to everyone".into()));
    let stats = server.stats();
    assert_eq!((stats.history_users, stats.history_messages), (2, 3));
    assert!(stats.history_bytes >= 3 * 24, "{stats:?}");
}

#[test]
fn a_raw_client_gets_raw_frames_with_history_on() {
    let (server, _events) = start(history_config());
    let mut raw = Raw::upgrade(server.local_addr(), "/ws?user=carol");
    publish(&server, "carol", "plain");
    let frame = raw.next_frame();
    assert_eq!((frame.opcode, frame.payload.as_slice()), (1, &b"plain"[..]), "no welcome, no JSON");
}

#[test]
fn the_101_selects_the_subprotocol_only_when_offered() {
    let (server, _events) = start(history_config());
    let offered = |extra: &str| {
        let mut raw = Raw::connect(server.local_addr());
        raw.send(upgrade_request("/ws?user=u", extra).as_bytes());
        let response = raw.read_response_head();
        assert_eq!(response.status, 101);
        response.header("sec-websocket-protocol").map(str::to_owned)
    };
    assert_eq!(offered(""), None);
    assert_eq!(offered("Sec-WebSocket-Protocol: chat, wspush.v1\r\n").as_deref(), Some("wspush.v1"));
    assert_eq!(offered("Sec-WebSocket-Protocol: chat\r\n"), None);
    assert_eq!(offered("Sec-WebSocket-Protocol: wspush.v2\r\n"), None);
}

#[test]
fn a_reconnecting_client_gets_what_it_missed_once_in_order_then_live_messages() {
    let (server, _events) = start(history_config());
    let mut ws = v1_connect(&server, "dave", None);
    welcome(&mut ws);
    publish(&server, "dave", "m1");
    let first = next_json(&mut ws);
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    drop(ws);
    eventually("dave's connection is gone", || server.stats().connections == 0);
    for i in 2..=4 {
        let published = server.publish_with_offset(b"dave", format!("m{i}").as_bytes(), MessageKind::Text).unwrap();
        assert_eq!(published.delivered, 0, "offsets are assigned while the user is away");
        assert_eq!(published.offset, Some(i));
    }
    let mut ws = v1_connect(&server, "dave", Some(&format!("{epoch}:1")));
    assert_eq!(welcome(&mut ws), (epoch.clone(), 4, true));
    for i in 2..=4 {
        assert_eq!(v1_message(&mut ws), (Some(i), format!("m{i}")));
    }
    publish(&server, "dave", "m5");
    assert_eq!(v1_message(&mut ws), (Some(5), "m5".into()));
    let stats = server.stats();
    assert_eq!((stats.resumes_total, stats.recoveries_total, stats.recovery_failures_total), (1, 1, 0));
}

#[test]
fn a_client_that_joined_before_the_first_message_resumes_from_its_placeholder() {
    let (server, _events) = start(history_config());
    let mut ws = v1_connect(&server, "erin", None);
    let (placeholder, offset, _) = welcome(&mut ws);
    drop(ws);
    publish(&server, "erin", "first");
    publish(&server, "erin", "second");
    let mut ws = v1_connect(&server, "erin", Some(&format!("{placeholder}:{offset}")));
    let (epoch, top, recovered) = welcome(&mut ws);
    assert_eq!((top, recovered), (2, true));
    assert_ne!(epoch, placeholder, "the welcome names the stream's own epoch");
    assert_eq!(v1_message(&mut ws), (Some(1), "first".into()));
    assert_eq!(v1_message(&mut ws), (Some(2), "second".into()));
}

#[test]
fn what_cannot_be_recovered_is_said_and_nothing_is_replayed() {
    let (server, _events) = start(Config { history_max_messages: 3, ..history_config() });
    for i in 1..=5 {
        publish(&server, "frank", &format!("m{i}"));
    }
    let mut ws = v1_connect(&server, "frank", None);
    let (epoch, top, _) = welcome(&mut ws);
    assert_eq!(top, 5);
    drop(ws);
    let refused = [
        format!("{epoch}:1"),             // trimmed: 2 is gone
        format!("{epoch}:99"),            // never handed out
        "00000000000000ff:1".to_string(), // another epoch
        "garbage".to_string(),
    ];
    let mut top = 5;
    for since in &refused {
        let mut ws = v1_connect(&server, "frank", Some(since));
        assert_eq!(welcome(&mut ws), (epoch.clone(), top, false), "since={since}");
        top = publish(&server, "frank", "live");
        assert_eq!(v1_message(&mut ws), (Some(top), "live".into()), "nothing replayed after since={since}");
    }
    let mut ws = v1_connect(&server, "frank", Some(&format!("{epoch}:{}", top - 2)));
    assert_eq!(welcome(&mut ws), (epoch, top, true), "within the window");
    assert_eq!(v1_message(&mut ws), (Some(top - 1), "live".into()));
    assert_eq!(v1_message(&mut ws), (Some(top), "live".into()));
    let stats = server.stats();
    assert_eq!((stats.resumes_total, stats.recoveries_total, stats.recovery_failures_total), (5, 1, 4));
}

/// A replay must fit in the connection's send queue as JSON, or the client would be closed as a
/// slow consumer and come back for the same replay, forever.
#[test]
fn a_replay_larger_than_the_send_queue_is_not_attempted() {
    let config = Config { max_queue_bytes: 64 * 1024, ..history_config() };
    let (server, _events) = start(config);
    let resume_after = |user: &str, payloads: &[String]| {
        let mut ws = v1_connect(&server, user, None);
        welcome(&mut ws);
        publish(&server, user, "m1");
        let epoch = next_json(&mut ws)["epoch"].as_str().unwrap().to_owned();
        drop(ws);
        for payload in payloads {
            publish(&server, user, payload);
        }
        let mut ws = v1_connect(&server, user, Some(&format!("{epoch}:1")));
        welcome(&mut ws).2
    };
    let big = "x".repeat(20 * 1024);
    assert!(resume_after("gina", &vec![big.clone(); 3]), "60 KiB of replay fits a 64 KiB queue");
    assert!(!resume_after("gino", &vec![big; 4]), "80 KiB does not");
    // 12 KiB of payload, 72 KiB as JSON (each control character escaped as \u00XX).
    assert!(!resume_after("gigi", &["\u{1}".repeat(12 * 1024)]), "what counts is the JSON");
}

#[test]
fn a_restarted_server_says_history_was_lost() {
    let (server, _events) = start(history_config());
    publish(&server, "hugo", "before");
    let mut ws = v1_connect(&server, "hugo", None);
    let (epoch, top, _) = welcome(&mut ws);
    drop(ws);
    drop(server);
    let (server, _events) = start(history_config());
    let mut ws = v1_connect(&server, "hugo", Some(&format!("{epoch}:{top}")));
    let (new_epoch, offset, recovered) = welcome(&mut ws);
    assert!(!recovered);
    assert_eq!(offset, 0);
    assert_ne!(new_epoch, epoch);
}

#[test]
fn every_tab_of_a_user_gets_the_same_offsets() {
    let (server, _events) = start(history_config());
    let mut tabs: Vec<Ws> = (0..3).map(|_| v1_connect(&server, "ida", None)).collect();
    for tab in &mut tabs {
        welcome(tab);
    }
    assert_eq!(server.publish_with_offset(b"ida", b"hello", MessageKind::Text).unwrap().delivered, 3);
    for tab in &mut tabs {
        assert_eq!(v1_message(tab), (Some(1), "hello".into()));
    }
}

#[test]
fn send_to_one_v1_connection_has_no_offset() {
    let (server, mut events) = start(history_config());
    let mut ws = v1_connect(&server, "jack", None);
    welcome(&mut ws);
    let conn = events.opened(b"jack");
    server.send(conn, b"just you", MessageKind::Text).unwrap();
    assert_eq!(v1_message(&mut ws), (None, "just you".into()));
}

#[test]
fn with_history_off_v1_clients_get_an_empty_welcome_and_no_offsets() {
    let (server, _events) = start(config());
    let mut ws = v1_connect(&server, "kate", Some("00000000000000aa:3"));
    assert_eq!(welcome(&mut ws), (String::new(), 0, false));
    let published = server.publish_with_offset(b"kate", b"hi", MessageKind::Text).unwrap();
    assert_eq!((published.delivered, published.offset), (1, None));
    assert_eq!(v1_message(&mut ws), (None, "hi".into()));
    assert_eq!(server.stats().history_users, 0);
}

#[test]
fn deferred_and_token_authenticated_upgrades_resume_too() {
    let secret = b"0123456789abcdef0123456789abcdef".to_vec();
    let config = Config { jwt_hs256_secret: Some(secret.clone().into()), ..history_config() };
    let (tickets_tx, tickets) = mpsc::channel();
    let tickets_tx = std::sync::Mutex::new(tickets_tx);
    let (server, _events) = Harness::new(config)
        .on_upgrade(move |_, request| match request.verified_user() {
            Some(user) => {
                tickets_tx.lock().unwrap().send((request.ticket(), user.to_vec())).unwrap();
                UpgradeDecision::Defer
            }
            None => UpgradeDecision::Reject(401),
        })
        .start();
    let handle = server.handle();
    let decider = std::thread::spawn(move || {
        for _ in 0..2 {
            let (ticket, user) = tickets.recv_timeout(WAIT).unwrap();
            handle.accept_upgrade(ticket, &user).unwrap();
        }
    });
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 60;
    let token = sign_jwt(r#"{"alg":"HS256","typ":"JWT"}"#, &format!(r#"{{"sub":"liam","exp":{exp}}}"#), &secret);
    let connect = |since: Option<&str>| {
        let mut target = format!("/ws?token={token}");
        if let Some(since) = since {
            target.push_str(&format!("&since={since}"));
        }
        ws_try_connect_with(server.local_addr(), &target, &[("Sec-WebSocket-Protocol", "wspush.v1")]).unwrap()
    };
    let mut ws = connect(None);
    welcome(&mut ws);
    publish(&server, "liam", "a");
    let epoch = next_json(&mut ws)["epoch"].as_str().unwrap().to_owned();
    drop(ws);
    publish(&server, "liam", "b");
    let mut ws = connect(Some(&format!("{epoch}:1")));
    assert_eq!(welcome(&mut ws), (epoch, 2, true));
    assert_eq!(v1_message(&mut ws), (Some(2), "b".into()));
    drop(ws);
    drop(server);
    decider.join().unwrap();
}

/// Live messages to one user published from several threads at once reach the connection in
/// offset order: the offset is assigned and the message queued under one lock.
#[test]
fn concurrent_publishers_deliver_in_offset_order() {
    let (server, _events) = start(Config { threads: 2, ..history_config() });
    let mut ws = v1_connect(&server, "mia", None);
    welcome(&mut ws);
    let per_thread = 500;
    let publishers: Vec<_> = (0..4)
        .map(|t| {
            let handle = server.handle();
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    handle.publish(b"mia", format!("{t}-{i}").as_bytes(), MessageKind::Text).unwrap();
                }
            })
        })
        .collect();
    for offset in 1..=4 * per_thread {
        assert_eq!(v1_message(&mut ws).0, Some(offset));
    }
    for publisher in publishers {
        publisher.join().unwrap();
    }
}

/// A client that drops and resumes over and over while a publisher runs flat out sees every
/// message exactly once, in order, across all its connections.
#[test]
fn reconnects_under_a_steady_publish_lose_and_repeat_nothing() {
    // A history deep enough that a slow round on a loaded machine can't outrun it.
    let (server, _events) = start(Config { threads: 2, history_max_messages: 100_000, ..history_config() });
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (handle, stop) = (server.handle(), stop.clone());
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                sent += 1;
                handle.publish(b"noah", sent.to_string().as_bytes(), MessageKind::Text).unwrap();
                if sent.is_multiple_of(4) {
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
            sent
        })
    };
    let mut position: Option<(String, u64)> = None;
    let mut seen = 0u64;
    for round in 0..40 {
        let since = position.as_ref().map(|(epoch, offset)| format!("{epoch}:{offset}"));
        let mut ws = v1_connect(&server, "noah", since.as_deref());
        let (epoch, top, recovered) = welcome(&mut ws);
        match &position {
            Some((resumed, _)) => {
                assert!(recovered, "round {round}");
                assert_eq!(&epoch, resumed);
            }
            None => seen = top, // whatever came before the first connection is not ours
        }
        let epoch = position.as_ref().map_or(epoch, |(epoch, _)| epoch.clone());
        for _ in 0..(5 + round % 7) {
            let frame = next_json(&mut ws);
            if let Some(e) = frame.get("epoch") {
                assert_eq!(seen, 0, "a new epoch only at the start");
                position = Some((e.as_str().unwrap().to_owned(), 0));
            }
            let offset = frame["offset"].as_u64().expect("a stream message");
            assert_eq!(offset, seen + 1, "round {round}: no gap, no repeat");
            assert_eq!(frame["data"], offset.to_string());
            seen = offset;
        }
        let epoch = position.as_ref().map_or(epoch, |(epoch, _)| epoch.clone());
        position = Some((epoch, seen));
        drop(ws); // the socket closes without a close frame
    }
    stop.store(true, Ordering::Relaxed);
    assert!(publisher.join().unwrap() >= seen);
}

/// A flood of publishes to ever new users (a backend bug, or every user at once after an outage)
/// keeps history within its byte cap: the least recently published users' streams go, and their
/// clients are told so when they resume, while recent users still recover.
#[test]
fn history_stays_within_its_byte_cap_under_a_flood_of_users() {
    let cap = 256 * 1024;
    let (server, _events) = start(Config { history_max_bytes: cap, ..history_config() });
    let mut ws = v1_connect(&server, "early", None);
    welcome(&mut ws);
    publish(&server, "early", "first");
    let epoch = next_json(&mut ws)["epoch"].as_str().unwrap().to_owned();
    drop(ws);
    let payload = "x".repeat(200);
    for user in 0..20_000 {
        publish(&server, &format!("flood{user}"), &payload);
        if user % 1000 == 0 {
            assert!(server.stats().history_bytes <= cap as u64, "{:?}", server.stats());
        }
    }
    let stats = server.stats();
    assert!(stats.history_bytes <= cap as u64 && stats.history_users < 2_000, "{stats:?}");
    let mut ws = v1_connect(&server, "early", Some(&format!("{epoch}:1")));
    assert!(!welcome(&mut ws).2, "early's stream was evicted: not recovered");
    let last = publish(&server, "flood19999", "again");
    let mut ws = v1_connect(&server, "flood19999", Some(&format!("{}:1", stream_epoch(&server, "flood19999"))));
    assert_eq!(welcome(&mut ws).1, last);
    assert_eq!(v1_message(&mut ws), (Some(2), "again".into()));
}

/// The epoch of `user`'s stream, as a fresh connection's welcome says.
fn stream_epoch(server: &Server, user: &str) -> String {
    let mut ws = v1_connect(server, user, None);
    welcome(&mut ws).0
}

/// Clients that resume far back and never read hold at most their send queue each: replays are
/// bounded like any output, and the server keeps serving everyone else.
#[test]
fn resuming_clients_that_never_read_hold_only_their_send_queues() {
    let max_queue_bytes = 256 * 1024;
    // A small server send buffer, so replays back up in the engine rather than in the kernel.
    let config = Config { max_queue_bytes, socket_send_buffer: 4096, ..history_config() };
    let (server, _events) = start(config);
    let mut ws = v1_connect(&server, "hoarder", None);
    welcome(&mut ws);
    publish(&server, "hoarder", "m1");
    let epoch = next_json(&mut ws)["epoch"].as_str().unwrap().to_owned();
    drop(ws);
    let chunk = "y".repeat(2300);
    for _ in 0..99 {
        publish(&server, "hoarder", &chunk); // ~225 KiB of replay from offset 0, under the cap
    }
    let since = format!("{epoch}%3A0");
    let silent: Vec<Raw> = (0..50)
        .map(|_| {
            let mut raw = Raw::connect(server.local_addr());
            raw.send(
                upgrade_request(&format!("/ws?user=hoarder&since={since}"), "Sec-WebSocket-Protocol: wspush.v1\r\n")
                    .as_bytes(),
            );
            raw
        })
        .collect();
    let stats = stats_until(&server, "all 50 resumed", |s| s.recoveries_total == 50);
    assert!(stats.queued_bytes > 0, "the replays must back up in the engine for this test: {stats:?}");
    assert!(stats.queued_bytes <= 50 * max_queue_bytes as u64, "{stats:?}");
    // Everyone else is served at once.
    let mut other = v1_connect(&server, "bystander", None);
    welcome(&mut other);
    publish(&server, "bystander", "still served");
    assert_eq!(v1_message(&mut other), (Some(1), "still served".into()));
    drop(silent);
}
