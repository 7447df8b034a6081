//! Property test of the output path: random interleavings of publish / broadcast / send / close
//! from two host threads and from callbacks, client pings, payloads from 0 B to 200 KiB, small
//! socket buffers on both sides, and clients that read fast, slowly or in bursts. For every case:
//! - a connection nobody closed receives exactly the messages addressed to it: from each origin
//!   (host thread or callback) all of them, in that origin's order, intact, nothing twice;
//! - a closed connection receives, from each origin, a prefix of that origin's messages (all of
//!   them up to the close from the closing origin), then the close frame, then nothing;
//! - the last ping a client sent is answered (earlier ones may be folded into it);
//! - every queue drains (`queued_bytes` returns to 0).
//!
//! `PROPTEST_CASES` sets the number of cases (default 48, about 10 s in all here).

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use proptest::prelude::*;
use wspush::{Config, ConnId, MessageKind, ServerHandle};

const CLIENTS: usize = 4;
/// Origins: host threads 0 and 1, and callbacks (on_message of the trigger connection).
const HOST_THREADS: u8 = 2;
const CALLBACK: u8 = HOST_THREADS;

#[derive(Clone, Copy, Debug)]
enum Action {
    Publish {
        client: usize,
        size: usize,
    },
    Broadcast {
        size: usize,
    },
    /// `count` small broadcasts back to back: more frames than one sendmsg gathers.
    Burst {
        count: u32,
        size: usize,
    },
    Send {
        client: usize,
        size: usize,
    },
    Close {
        client: usize,
    },
    /// The client sends a ping (not an origin's action: done by the driver, from the client).
    Ping {
        client: usize,
    },
}

#[derive(Clone, Copy, Debug)]
enum Reading {
    Fast,
    /// Sleeps this many ms between reads of 1 KiB.
    Slow(u64),
    /// Reads 16 times, then pauses this many ms.
    Bursts(u64),
}

#[derive(Clone, Debug)]
struct Case {
    io_threads: usize,
    server_sndbuf: usize,
    clients: Vec<(Reading, i32)>,
    /// (origin, action) in the order the driver hands them out.
    steps: Vec<(u8, Action)>,
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![6 => 0..200usize, 3 => 200..8_192usize, 1 => 8_192..=204_800usize]
}

fn action() -> impl Strategy<Value = Action> {
    let client = 0..CLIENTS;
    prop_oneof![
        4 => (client.clone(), size()).prop_map(|(client, size)| Action::Publish { client, size }),
        2 => size().prop_map(|size| Action::Broadcast { size }),
        1 => (65..160u32, 0..64usize).prop_map(|(count, size)| Action::Burst { count, size }),
        3 => (client.clone(), size()).prop_map(|(client, size)| Action::Send { client, size }),
        1 => client.clone().prop_map(|client| Action::Close { client }),
        2 => client.prop_map(|client| Action::Ping { client }),
    ]
}

fn reading() -> impl Strategy<Value = Reading> {
    prop_oneof![Just(Reading::Fast), (1..4u64).prop_map(Reading::Slow), (20..150u64).prop_map(Reading::Bursts)]
}

fn case() -> impl Strategy<Value = Case> {
    (
        1..=2usize,
        prop_oneof![Just(0usize), Just(4_096), Just(16_384)],
        proptest::collection::vec((reading(), prop_oneof![Just(2_048), Just(8_192), Just(65_536)]), CLIENTS),
        proptest::collection::vec((0..=CALLBACK, action()), 1..40),
    )
        .prop_map(|(io_threads, server_sndbuf, clients, steps)| Case { io_threads, server_sndbuf, clients, steps })
}

/// A message's identity is its origin and that origin's sequence number; the rest is filler
/// derived from both, so corruption or a mix-up of two frames is caught too.
fn payload(origin: u8, seq: u32, size: usize) -> Vec<u8> {
    let mut bytes = vec![origin];
    bytes.extend_from_slice(&seq.to_le_bytes());
    bytes.extend((0..size).map(|i| (i as u32).wrapping_mul(31).wrapping_add(seq) as u8 ^ origin));
    bytes
}

fn identify(bytes: &[u8]) -> Result<(u8, u32), String> {
    if bytes.len() < 5 {
        return Err(format!("message too short: {bytes:?}"));
    }
    let (origin, seq) = (bytes[0], u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]));
    if bytes[..] != payload(origin, seq, bytes.len() - 5)[..] {
        return Err(format!("message {origin}/{seq} corrupted"));
    }
    Ok((origin, seq))
}

/// What a client saw.
#[derive(Default, Debug)]
struct Seen {
    messages: Vec<(u8, u32)>,
    pongs: Vec<Vec<u8>>,
    close: Option<u16>,
    after_close: usize,
    /// What was wrong with the stream, if anything (the reader stops there).
    broken: Option<String>,
}

/// Reads frames from `stream` in the given manner until the connection ends or `stop` passes.
fn reader(mut stream: TcpStream, reading: Reading, seen: Arc<Mutex<Seen>>, stop: Instant) {
    stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut reads = 0u64;
    while Instant::now() < stop {
        let want = match reading {
            Reading::Slow(_) => 1024,
            _ => chunk.len(),
        };
        match stream.read(&mut chunk[..want]) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
        while let Some((frame, used)) = parse_frame(&buf) {
            buf.drain(..used);
            let mut seen = seen.lock().unwrap();
            if !frame.fin || frame.masked || frame.rsv != 0 {
                seen.broken = Some(format!("bad server frame {frame:?}"));
                return;
            }
            match frame.opcode {
                2 if seen.close.is_some() => seen.after_close += 1,
                2 => match identify(&frame.payload) {
                    Ok(id) => seen.messages.push(id),
                    Err(broken) => {
                        seen.broken = Some(broken);
                        return;
                    }
                },
                10 => seen.pongs.push(frame.payload),
                8 => {
                    seen.close = frame.close_code();
                    let _ = stream.write_all(&common::frame(0x88, &frame.payload));
                }
                9 => {}
                other => {
                    seen.broken = Some(format!("unexpected opcode {other}"));
                    return;
                }
            }
        }
        reads += 1;
        match reading {
            Reading::Fast => {}
            Reading::Slow(ms) => std::thread::sleep(Duration::from_millis(ms)),
            Reading::Bursts(ms) if reads.is_multiple_of(16) => std::thread::sleep(Duration::from_millis(ms)),
            Reading::Bursts(_) => {}
        }
    }
}

/// Carries out one origin's action.
fn perform(server: &ServerHandle, conns: &[ConnId], origin: u8, seq: u32, action: Action) {
    match action {
        Action::Publish { client, size } => {
            let _ = server.publish(format!("c{client}").as_bytes(), &payload(origin, seq, size), MessageKind::Binary);
        }
        Action::Broadcast { size } => {
            server.broadcast(&payload(origin, seq, size), MessageKind::Binary).unwrap();
        }
        Action::Burst { count, size } => {
            for k in 0..count {
                server.broadcast(&payload(origin, seq + k, size), MessageKind::Binary).unwrap();
            }
        }
        Action::Send { client, size } => {
            let _ = server.send(conns[client], &payload(origin, seq, size), MessageKind::Binary);
        }
        Action::Close { client } => {
            let _ = server.close(conns[client], 4000 + u16::from(origin), "");
        }
        Action::Ping { .. } => unreachable!("pings are sent by the clients"),
    }
}

fn connect(addr: SocketAddr, user: &str, rcvbuf: i32) -> TcpStream {
    let stream = connect_small_rcvbuf(addr, rcvbuf);
    let mut raw = Raw::from_stream(stream.try_clone().unwrap());
    raw.handshake(&format!("/ws?user={user}"), "");
    stream
}

fn run(case: &Case) -> Result<(), TestCaseError> {
    // The callback origin's actions, numbered by their place in this list; the trigger client
    // asks for each in turn with a text message holding its index.
    let callback_actions: Vec<Action> = case
        .steps
        .iter()
        .filter(|(origin, action)| *origin == CALLBACK && !matches!(action, Action::Ping { .. }))
        .map(|(_, action)| *action)
        .collect();
    let callback_actions = Arc::new(callback_actions);
    let conns: Arc<Mutex<Vec<ConnId>>> = Arc::new(Mutex::new(Vec::new()));
    let cfg = Config {
        threads: case.io_threads,
        max_queue_bytes: 64 << 20,
        max_message_size: 1024,
        socket_send_buffer: case.server_sndbuf,
        // A close started by the host gives up on a peer that has not read everything by then;
        // slow readers here must get to the close frame.
        close_timeout: Duration::from_secs(20),
        ..config()
    };
    let (actions, ids) = (callback_actions.clone(), conns.clone());
    let (server, mut events) = Harness::new(cfg)
        .on_message(move |server, _, _, _, text| {
            // "index seq": the callback action's place in its list, its first sequence number.
            let text = std::str::from_utf8(text).unwrap();
            let (index, seq) = text.split_once(' ').unwrap();
            let conns = ids.lock().unwrap().clone();
            perform(server, &conns, CALLBACK, seq.parse().unwrap(), actions[index.parse::<usize>().unwrap()]);
        })
        .start();
    let addr = server.local_addr();
    let deadline = Instant::now() + Duration::from_secs(45);

    let mut streams = Vec::new();
    let mut ids = Vec::new();
    for (i, (_, rcvbuf)) in case.clients.iter().enumerate() {
        streams.push(connect(addr, &format!("c{i}"), *rcvbuf));
        ids.push(events.opened(format!("c{i}").as_bytes()));
    }
    let mut trigger = Raw::from_stream(connect(addr, "trigger", 1 << 20));
    events.opened(b"trigger");
    *conns.lock().unwrap() = ids.clone();

    let seen: Vec<Arc<Mutex<Seen>>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let readers: Vec<_> = streams
        .iter()
        .zip(&case.clients)
        .zip(&seen)
        .map(|((stream, (reading, _)), seen)| {
            let (stream, reading, seen) = (stream.try_clone().unwrap(), *reading, seen.clone());
            std::thread::spawn(move || reader(stream, reading, seen, deadline))
        })
        .collect();
    // The trigger connection gets broadcasts too: drain them.
    let trigger_stream = trigger.stream.try_clone().unwrap();
    let trigger_reader = std::thread::spawn(move || reader(trigger_stream, Reading::Fast, Arc::default(), deadline));

    // Expected: per client, per origin, the sequence numbers in order; each close with the
    // number of that origin's messages to the client before it. Pings and callback triggers go
    // out from this thread while the host threads run.
    enum Drive {
        Ping(usize, Vec<u8>),
        Trigger(usize, u32),
    }
    let mut expected: Vec<HashMap<u8, Vec<u32>>> = vec![HashMap::new(); CLIENTS];
    let mut closes: Vec<Vec<(u8, usize)>> = vec![Vec::new(); CLIENTS];
    let mut last_ping: Vec<Option<Vec<u8>>> = vec![None; CLIENTS];
    let mut per_origin: Vec<Vec<(u32, Action)>> = vec![Vec::new(); usize::from(HOST_THREADS)];
    let mut drive = Vec::new();
    let mut triggers = 0;
    let mut seqs = [0u32; CALLBACK as usize + 1];
    for (step, (origin, action)) in case.steps.iter().enumerate() {
        if let Action::Ping { client } = action {
            let ping = format!("ping {step}").into_bytes();
            last_ping[*client] = Some(ping.clone());
            drive.push(Drive::Ping(*client, ping));
            continue;
        }
        let seq = seqs[usize::from(*origin)];
        let count = match action {
            Action::Burst { count, .. } => *count,
            _ => 1,
        };
        seqs[usize::from(*origin)] += count;
        let targets: Vec<usize> = match action {
            Action::Publish { client, .. } | Action::Send { client, .. } => vec![*client],
            Action::Broadcast { .. } | Action::Burst { .. } => (0..CLIENTS).collect(),
            Action::Close { client } => {
                closes[*client].push((*origin, expected[*client].get(origin).map_or(0, Vec::len)));
                vec![]
            }
            Action::Ping { .. } => unreachable!(),
        };
        for client in targets {
            expected[client].entry(*origin).or_default().extend(seq..seq + count);
        }
        if *origin == CALLBACK {
            drive.push(Drive::Trigger(triggers, seq));
            triggers += 1;
        } else {
            per_origin[usize::from(*origin)].push((seq, *action));
        }
    }
    let hosts: Vec<_> = per_origin
        .into_iter()
        .enumerate()
        .map(|(origin, actions)| {
            let server = server.handle();
            let conns = ids.clone();
            std::thread::spawn(move || {
                for (seq, action) in actions {
                    perform(&server, &conns, origin as u8, seq, action);
                }
            })
        })
        .collect();
    for step in drive {
        match step {
            Drive::Ping(client, ping) => {
                let mut stream = &streams[client];
                let _ = stream.write_all(&frame(0x89, &ping)); // fails once the client is closed
            }
            Drive::Trigger(index, seq) => trigger.send(&frame(0x81, format!("{index} {seq}").as_bytes())),
        }
    }
    for host in hosts {
        host.join().unwrap();
    }

    // Wait for every open client to have everything, and every closed one its close frame.
    let complete = |client: usize| {
        let seen = seen[client].lock().unwrap();
        if !closes[client].is_empty() {
            return seen.close.is_some();
        }
        let total: usize = expected[client].values().map(Vec::len).sum();
        seen.messages.len() >= total && last_ping[client].as_ref().is_none_or(|p| seen.pongs.last() == Some(p))
    };
    while !(0..CLIENTS).all(complete) {
        if Instant::now() > deadline {
            let status: Vec<String> = (0..CLIENTS)
                .map(|client| {
                    let seen = seen[client].lock().unwrap();
                    let missing: Vec<(u8, u32)> = expected[client]
                        .iter()
                        .flat_map(|(origin, seqs)| seqs.iter().map(move |seq| (*origin, *seq)))
                        .filter(|id| !seen.messages.contains(id))
                        .collect();
                    let pongs: Vec<String> = seen.pongs.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
                    format!(
                        "client {client} ({:?}): {} received, missing {missing:?}, closes {:?} close {:?}, pongs {pongs:?}, last ping {:?}, broken {:?}",
                        case.clients[client],
                        seen.messages.len(),
                        closes[client],
                        seen.close,
                        last_ping[client].as_ref().map(|p| String::from_utf8_lossy(p).into_owned()),
                        seen.broken,
                    )
                })
                .collect();
            return Err(TestCaseError::fail(format!(
                "clients did not get everything in time: {status:#?}\nserver: {:?}",
                server.stats()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Nothing more may come: give stragglers (duplicates) a moment to show.
    std::thread::sleep(Duration::from_millis(50));

    for client in 0..CLIENTS {
        let seen = seen[client].lock().unwrap();
        prop_assert_eq!(seen.after_close, 0, "client {} got data after the close frame", client);
        prop_assert!(seen.broken.is_none(), "client {client}: {:?}", seen.broken);
        let mut by_origin: HashMap<u8, Vec<u32>> = HashMap::new();
        for (origin, seq) in &seen.messages {
            by_origin.entry(*origin).or_default().push(*seq);
        }
        for origin in 0..=CALLBACK {
            let want = expected[client].get(&origin).cloned().unwrap_or_default();
            let got = by_origin.remove(&origin).unwrap_or_default();
            if closes[client].is_empty() {
                prop_assert_eq!(&got, &want, "client {} from origin {}", client, origin);
                continue;
            }
            prop_assert!(want.starts_with(&got), "client {client} from {origin}: {got:?} not a prefix of {want:?}");
            // The close that took effect is the one whose code arrived: everything its origin
            // sent to the client before it must have arrived.
            let closer = seen.close.and_then(|code| code.checked_sub(4000)).map(|o| o as u8);
            prop_assert!(
                closes[client].iter().any(|(o, _)| Some(*o) == closer),
                "client {client} close {:?}",
                seen.close
            );
            if closer == Some(origin) {
                let before = closes[client].iter().find(|(o, _)| *o == origin).map_or(0, |(_, n)| *n);
                prop_assert!(
                    got.len() >= before,
                    "client {client} lost messages sent before origin {origin} closed it"
                );
            }
        }
        prop_assert!(by_origin.is_empty(), "client {} got messages from nowhere: {:?}", client, by_origin);
    }
    let drained = Instant::now() + Duration::from_secs(10);
    while server.stats().queued_bytes != 0 {
        prop_assert!(Instant::now() < drained, "queues never drained: {:?}", server.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    for stream in &streams {
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
    let _ = trigger.stream.shutdown(std::net::Shutdown::Both);
    for reader in readers {
        reader.join().unwrap();
    }
    trigger_reader.join().unwrap();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(48),
        failure_persistence: None,
        max_shrink_iters: std::env::var("PROPTEST_MAX_SHRINK_ITERS").ok().and_then(|c| c.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_connection_gets_exactly_its_messages_in_order_and_queues_drain(case in case()) {
        run(&case)?;
    }
}
