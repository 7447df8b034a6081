//! The two races between a resuming `wspush.v1` connection and a publish to its user, made to
//! happen (test hooks hold one side at the worst moment while the other runs), not hoped for:
//! the message must arrive exactly once, in order, either in the replay or live.
//!
//! Without the user's order lock (src/history/mod.rs) both would deliver a duplicate: the
//! message would be both in the history read by the resume and queued live to the new
//! connection. Run with `cargo test --features test-hooks --test history_race`.

mod common;

use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::*;
use wspush::test_hooks::{clear_race_hook, set_race_hook, RacePoint};
use wspush::{Config, MessageKind, Server};

/// Both tests set the process-wide hook: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How long the held side must stay blocked to show that it really waits for the other.
const HELD: Duration = Duration::from_millis(150);

/// A server with history, and `user` left behind at offset 1 (epoch returned).
fn user_away_at_offset_1(user: &str) -> (Server, Events, String) {
    let (server, events) = start(Config { history_max_messages: 100, ..config() });
    let mut ws = v1_connect(&server, user, None);
    welcome(&mut ws);
    server.publish(user.as_bytes(), b"m1", MessageKind::Text).unwrap();
    let epoch = next_json(&mut ws)["epoch"].as_str().expect("epoch on offset 1").to_owned();
    drop(ws);
    eventually("the first connection is gone", || server.stats().connections == 0);
    (server, events, epoch)
}

#[test]
fn a_publish_during_a_resume_is_delivered_live_not_replayed_too() {
    let _serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (server, _events, epoch) = user_away_at_offset_1("olga");
    server.publish(b"olga", b"m2", MessageKind::Text).unwrap();

    // While the resuming connection is registered but has not read the history, a publish
    // of m3 starts; it must wait for the resume to finish reading.
    let (publish_done_tx, publish_done) = mpsc::channel();
    let publish_done = Arc::new(std::sync::Mutex::new(publish_done));
    let handle = server.handle();
    let (held_tx, held) = mpsc::channel();
    let done = publish_done.clone();
    set_race_hook(move |point| {
        if point != RacePoint::ResumeRegistered {
            return;
        }
        let (handle, done_tx) = (handle.clone(), publish_done_tx.clone());
        std::thread::spawn(move || {
            let published = handle.publish_with_offset(b"olga", b"m3", MessageKind::Text).unwrap();
            let _ = done_tx.send(published);
        });
        let _ = held_tx.send(done.lock().unwrap().recv_timeout(HELD).is_err());
    });
    let mut ws = v1_connect(&server, "olga", Some(&format!("{epoch}:1")));
    clear_race_hook();
    let waited = held.recv_timeout(WAIT).expect("the hook ran");
    assert!(waited, "the publish must wait while the resume reads the history");
    let published = publish_done.lock().unwrap().recv_timeout(WAIT).expect("the publish completes after the resume");
    assert_eq!((published.delivered, published.offset), (1, Some(3)), "m3 went out live");

    assert_eq!(welcome(&mut ws), (epoch, 2, true));
    assert_eq!(v1_message(&mut ws), (Some(2), "m2".into()));
    assert_eq!(v1_message(&mut ws), (Some(3), "m3".into()));
    server.publish(b"olga", b"m4", MessageKind::Text).unwrap();
    assert_eq!(v1_message(&mut ws), (Some(4), "m4".into()), "m3 came once");
}

#[test]
fn a_resume_during_a_publish_replays_it_and_gets_no_live_copy() {
    let _serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (server, _events, epoch) = user_away_at_offset_1("pete");

    // A publish of m2 has its offset and has not handed it to connections yet when the
    // client comes back.
    let (appended_tx, appended) = mpsc::channel();
    let (release_tx, release) = mpsc::channel::<()>();
    let release = std::sync::Mutex::new(release);
    set_race_hook(move |point| {
        if point == RacePoint::PublishAppended {
            let _ = appended_tx.send(());
            let _ = release.lock().unwrap().recv_timeout(WAIT);
        }
    });
    let publisher = {
        let handle = server.handle();
        std::thread::spawn(move || handle.publish_with_offset(b"pete", b"m2", MessageKind::Text).unwrap())
    };
    appended.recv_timeout(WAIT).expect("the publish reached its hand-off");
    let (connected_tx, connected) = mpsc::channel();
    let client = {
        let handle = server.handle();
        let since = format!("{epoch}:1");
        std::thread::spawn(move || {
            let ws = v1_connect(&handle, "pete", Some(&since));
            let _ = connected_tx.send(());
            ws
        })
    };
    assert!(connected.recv_timeout(HELD).is_err(), "the resume must wait for the publish to hand off");
    release_tx.send(()).unwrap();
    let published = publisher.join().unwrap();
    clear_race_hook();
    assert_eq!((published.delivered, published.offset), (0, Some(2)), "m2 was not queued live");
    let mut ws = client.join().unwrap();

    assert_eq!(welcome(&mut ws), (epoch, 2, true));
    assert_eq!(v1_message(&mut ws), (Some(2), "m2".into()));
    server.publish(b"pete", b"m3", MessageKind::Text).unwrap();
    assert_eq!(v1_message(&mut ws), (Some(3), "m3".into()), "m2 came once");
}
