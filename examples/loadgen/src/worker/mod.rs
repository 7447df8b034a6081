//! A worker process: holds up to 19,000 client WebSocket connections on one mio Poll and one
//! thread, and answers the coordinator's commands (protocol.rs) on stdin/stdout.
//!
//! Reads go through one shared scratch buffer. Modules: client (a connection's state), seq
//! (sequence checks), connection (the connection loop), codec (frames and the upgrade),
//! messages (what each server message means), socket (socket setup), soak (incarnations, churn),
//! v1 (the wspush.v1 subprotocol and the resume phase).

mod centrifugo;
mod client;
mod codec;
mod connection;
mod messages;
mod seq;
mod soak;
mod socket;
mod v1;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{self, BufRead, Write};
use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use serde::Serialize;

use crate::cli::Target;
use crate::hist::Histogram;
use crate::protocol::{to_line, Answer, Command, End, Incarnation, Stream};
use crate::sys::mono_ns;
use client::{Client, State};
use codec::echo_payload;

const WAKER: Token = Token(usize::MAX);
/// Largest upgrade response head.
const MAX_RESPONSE_HEAD: usize = 8 * 1024;
/// Poll timeout when nothing is scheduled: bounds how stale deadlines and echo stops can get.
const TICK: Duration = Duration::from_millis(50);

/// What a worker needs to know, all passed on its command line by the parent.
pub struct WorkerConfig {
    /// Global index of this worker's first connection; connection g belongs to user g / tabs.
    pub first: usize,
    pub count: usize,
    pub tabs: usize,
    /// The servers; connection g connects to targets[g % targets.len()] (its node).
    pub targets: Vec<Target>,
    /// Source addresses to bind (base, how many); connection g uses base + g % how-many.
    pub sources: Option<(Ipv4Addr, u32)>,
    /// Handshakes started per second by this worker; 0 = as fast as `max_inflight` allows.
    pub connect_rate: f64,
    pub max_inflight: usize,
    pub connect_timeout: Duration,
    pub seed: u64,
    /// Offer the wspush.v1 subprotocol (and require it in the 101).
    pub v1: bool,
    /// The server's protocol (--peer).
    pub peer: crate::peer::PeerOptions,
}

/// Counters reported to the coordinator; the field names are the report keys.
#[derive(Default, Serialize)]
struct Counters {
    pending: u64,
    inflight: u64,
    connected: u64,
    open: u64,
    refused: u64,
    timeout: u64,
    http: u64,
    /// Reset by the server (ECONNRESET/EPIPE) before any response could be read.
    reset: u64,
    other: u64,
    /// Soak: connections killed with an RST, reconnections started, connections closed by `leave`.
    killed: u64,
    reconnects: u64,
    left: u64,
    closed_by_peer: u64,
    protocol_errors: u64,
    warm: u64,
    probe_echoes: u64,
    unknown_msgs: u64,
    pub_recv: u64,
    pub_distinct: u64,
    pub_dup: u64,
    pub_reordered: u64,
    pub_expected: u64,
    bcast_recv: u64,
    bcast_distinct: u64,
    bcast_dup: u64,
    bcast_reordered: u64,
    bcast_expected: u64,
    echo_msgs: u64,
    echo_inflight: u64,
    echo_conns: u64,
    first_open_ns: u64,
    last_open_ns: u64,
    last_pub_ns: u64,
    last_bcast_ns: u64,
    echo_start_ns: u64,
    echo_end_ns: u64,
    /// wspush.v1: welcomes received; frames that were not a v1 JSON object; stream offsets that
    /// skipped ahead or came again; epoch changes seen on a connection.
    v1_welcomes: u64,
    v1_bad_frames: u64,
    offset_gaps: u64,
    offset_repeats: u64,
    epoch_changes: u64,
    /// Resume phase: connections dropped, clean closes still waiting for the server, clean
    /// closes given up on; connections reconnected with `since`, recovered or not per their
    /// welcome; resume messages (`r SEQ T`) received, distinct, duplicated, reordered, whose
    /// offset was not since + SEQ, received by a connection not resuming; connections that got
    /// every missed message; how many resume messages must arrive in all.
    dropped: u64,
    closing: u64,
    close_forced: u64,
    resume_clients: u64,
    resume_recovered: u64,
    resume_not_recovered: u64,
    resume_recv: u64,
    resume_distinct: u64,
    resume_dup: u64,
    resume_reordered: u64,
    offset_mismatch: u64,
    resume_unexpected: u64,
    resume_done: u64,
    resume_expected: u64,
    last_resume_ns: u64,
}

/// Per-worker state other than the clients, split out so a client and this can be borrowed
/// mutably at the same time.
struct Context {
    counters: Counters,
    http_statuses: BTreeMap<u16, u64>,
    notes_sent: BTreeSet<String>,
    rng: u64,
    pub_latency: Histogram,
    /// Publishes made through another node than the receiving connection's.
    pub_remote_latency: Histogram,
    bcast_latency: Histogram,
    echo_rtt: Histogram,
    /// Per-user publish counts for this worker's users (index = user - expected_first_user).
    expected_publishes: Vec<u32>,
    expected_first_user: usize,
    expected_broadcasts: u32,
    /// Soak mode on; per user (from `expected_first_user`) publishes sent and the send time of
    /// the last one; publishes sent less than `grace_ns` after an incarnation opened need not
    /// reach it.
    soak: bool,
    soak_expected: Vec<(u32, u64)>,
    grace_ns: u64,
    echo_until_ns: u64,
    frame: Vec<u8>,
    /// The worker speaks wspush.v1 (v1.rs).
    v1: bool,
    /// Resume phase: `r 1` .. `r resume_missed` are the replay; `r 1` .. `r resume_expected`
    /// must arrive in all; reconnect-to-last-replayed time per connection.
    resume_missed: u32,
    resume_expected: u32,
    resume_latency: Histogram,
    /// A peer protocol's state (worker/centrifugo.rs); None for wspushd.
    peer: Option<centrifugo::PeerState>,
}

impl Context {
    fn next_random(&mut self) -> u64 {
        // xorshift64*: plenty for frame masks.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Sends `text` to the parent once per distinct `kind`, so a failure storm stays readable.
    fn note_once(&mut self, kind: &str, text: &str) {
        if self.notes_sent.insert(kind.to_string()) {
            send(&Answer::Note { text: format!("{kind}: {text}") });
        }
    }
}

/// Writes one answer line to the coordinator.
fn send(answer: &Answer) {
    let line = to_line(answer);
    let mut out = io::stdout().lock();
    // A failed write means the parent is gone; the stdin reader will see EOF and stop us.
    let _ = out.write_all(line.as_bytes());
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

pub struct Worker {
    config: WorkerConfig,
    poll: Poll,
    clients: Vec<Client>,
    context: Context,
    scratch: Vec<u8>,
    /// Handshakes in start order with their deadlines (the first one expires first).
    deadlines: VecDeque<(usize, Instant)>,
    next_to_start: usize,
    /// Connections to start again (killed by `churn`, or all after `leave` + `reconnect`), as
    /// fast as `max_inflight` allows, once the initial sequence is done; true for a churn
    /// victim's reconnect (counted in `reconnects`).
    restart: VecDeque<(usize, bool)>,
    /// Soak: incarnations that ended since the last `leave`.
    finished: Vec<Incarnation>,
    connect_started: Option<Instant>,
    accept_key: String,
    key: String,
}

pub fn run(config: WorkerConfig) -> io::Result<()> {
    crate::sys::raise_fd_limit();
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (commands_tx, commands) = mpsc::channel::<Command>();
    // stdin is read on its own thread so the poll loop never blocks on the coordinator.
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let command = match serde_json::from_str::<Command>(&line) {
                Ok(command) => command,
                Err(e) => {
                    send(&Answer::Note { text: format!("unreadable command {line:?}: {e}") });
                    continue;
                }
            };
            if commands_tx.send(command).is_err() {
                return;
            }
            let _ = waker.wake();
        }
        let _ = commands_tx.send(Command::Quit);
        let _ = waker.wake();
    });

    // One key per worker: the server only checks its form, and the expected accept value is
    // then computed once instead of per connection.
    let key = tungstenite::handshake::client::generate_key();
    let accept_key = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut worker = Worker {
        clients: (0..config.count).map(|i| Client::new(((config.first + i) % config.targets.len()) as u16)).collect(),
        context: Context {
            counters: Counters { pending: config.count as u64, ..Counters::default() },
            http_statuses: BTreeMap::new(),
            notes_sent: BTreeSet::new(),
            rng: config.seed | 1,
            pub_latency: Histogram::default(),
            pub_remote_latency: Histogram::default(),
            bcast_latency: Histogram::default(),
            echo_rtt: Histogram::default(),
            expected_publishes: Vec::new(),
            expected_first_user: 0,
            expected_broadcasts: 0,
            soak: false,
            soak_expected: Vec::new(),
            grace_ns: 0,
            echo_until_ns: 0,
            frame: Vec::with_capacity(256),
            v1: config.v1,
            resume_missed: 0,
            resume_expected: 0,
            resume_latency: Histogram::default(),
            peer: centrifugo::PeerState::new(&config.peer),
        },
        config,
        poll,
        scratch: vec![0; 256 * 1024],
        deadlines: VecDeque::new(),
        next_to_start: 0,
        restart: VecDeque::new(),
        finished: Vec::new(),
        connect_started: None,
        accept_key,
        key,
    };
    worker.event_loop(&commands)
}

impl Worker {
    fn event_loop(&mut self, commands: &mpsc::Receiver<Command>) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.start_connections();
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                if event.token() != WAKER {
                    self.on_socket_event(event.token().0);
                }
            }
            while let Ok(command) = commands.try_recv() {
                if !self.on_command(command) {
                    return Ok(());
                }
            }
            self.expire_handshakes();
            self.stop_echo_if_due();
        }
    }

    /// Carries out one command; false on `quit`.
    fn on_command(&mut self, command: Command) -> bool {
        match command {
            Command::Connect => {
                self.connect_started.get_or_insert_with(Instant::now);
            }
            Command::Probe => {
                let probe: &[u8] = self.context.peer.as_ref().map_or(b"i", |peer| peer.probe());
                for index in 0..self.clients.len() {
                    if self.clients[index].state == State::Open {
                        self.send_text(index, probe);
                    }
                }
            }
            Command::ExpectPub { first_user, counts } => {
                self.context.expected_first_user = first_user;
                self.context.expected_publishes = counts;
                let expected: u64 = (0..self.clients.len())
                    .filter(|&index| self.clients[index].ever_open)
                    .map(|index| self.expected_publishes_of(index) as u64)
                    .sum();
                self.context.counters.pub_expected = expected;
                send(&Answer::Ok);
            }
            Command::ExpectBcast { count } => {
                self.context.expected_broadcasts = count;
                let opened = self.clients.iter().filter(|c| c.ever_open).count() as u64;
                self.context.counters.bcast_expected = opened * count as u64;
                send(&Answer::Ok);
            }
            Command::Echo { conns, millis } => self.start_echo(conns, millis),
            Command::Report => send(&Answer::Report { counters: self.report() }),
            Command::Final { stream } => {
                let (lost, unexpected) = self.final_tally(stream);
                send(&Answer::Final { lost, unexpected });
            }
            Command::Hist { stream, reset } => {
                let hist = match stream {
                    Stream::Pub => &mut self.context.pub_latency,
                    Stream::PubRemote => &mut self.context.pub_remote_latency,
                    Stream::Bcast => &mut self.context.bcast_latency,
                    Stream::Echo => &mut self.context.echo_rtt,
                    Stream::Resume => &mut self.context.resume_latency,
                };
                match hist.to_wire() {
                    Ok(histogram) => send(&Answer::Hist { histogram }),
                    // The coordinator then waits in vain and reports the note with its timeout.
                    Err(e) => send(&Answer::Note { text: format!("cannot send a histogram: {e}") }),
                }
                if reset {
                    *hist = Histogram::default();
                }
            }
            Command::SoakMode => self.context.soak = true,
            Command::Churn { fraction } => {
                let killed = self.churn(fraction) as u64;
                send(&Answer::Churned { killed });
            }
            Command::Leave => {
                let count = self.leave() as u64;
                send(&Answer::Left { count });
            }
            Command::Reconnect => {
                self.connect_started.get_or_insert_with(Instant::now);
                for index in 0..self.clients.len() {
                    if self.clients[index].state == State::Closed {
                        self.queue_restart(index, false);
                    }
                }
            }
            Command::ExpectSoak { grace_ns, first_user, users } => {
                self.context.grace_ns = grace_ns;
                self.context.expected_first_user = first_user;
                self.context.soak_expected = users;
                send(&Answer::Ok);
            }
            Command::Incarnations => {
                let live: Vec<Incarnation> = (0..self.clients.len())
                    .filter(|&i| self.clients[i].state == State::Open)
                    .map(|index| self.incarnation(index, End::Live))
                    .collect();
                let mut count = 0;
                for &incarnation in self.finished.iter().chain(&live) {
                    count += 1;
                    send(&Answer::Inc { incarnation });
                }
                send(&Answer::IncsEnd { count });
            }
            Command::Drop { rst } => {
                let count = self.drop_open(rst) as u64;
                send(&Answer::Dropped { count });
            }
            Command::Resume { missed } => self.resume(missed),
            Command::ExpectResume { count } => {
                self.expect_resume(count);
                send(&Answer::Ok);
            }
            Command::Quit => return false,
        }
        true
    }

    /// How many publishes connection `index`'s user was sent (per the last `expect_pub`).
    fn expected_publishes_of(&self, index: usize) -> u32 {
        let user = (self.config.first + index) / self.config.tabs;
        user.checked_sub(self.context.expected_first_user)
            .and_then(|i| self.context.expected_publishes.get(i))
            .copied()
            .unwrap_or(0)
    }

    /// (lost, unexpected) over every connection ever opened, per the last expectations.
    fn final_tally(&self, stream: Stream) -> (u64, u64) {
        if stream == Stream::Resume {
            return self.resume_tally();
        }
        let (mut lost, mut unexpected) = (0u64, 0u64);
        for (index, client) in self.clients.iter().enumerate().filter(|(_, c)| c.ever_open) {
            let (check, expected) = if stream == Stream::Pub {
                (&client.publishes, self.expected_publishes_of(index))
            } else {
                (&client.broadcasts, self.context.expected_broadcasts)
            };
            let (within, beyond) = check.tally(expected);
            lost += (expected - within) as u64;
            unexpected += beyond as u64;
        }
        (lost, unexpected)
    }

    /// The counters by name, plus `soak_behind` and `http_STATUS` per failed upgrade status.
    fn report(&self) -> BTreeMap<String, u64> {
        let mut report: BTreeMap<String, u64> = match serde_json::to_value(&self.context.counters) {
            Ok(serde_json::Value::Object(fields)) => {
                fields.into_iter().filter_map(|(key, value)| Some((key, value.as_u64()?))).collect()
            }
            _ => BTreeMap::new(),
        };
        report.insert("soak_behind".into(), self.soak_behind());
        if self.config.targets.len() > 1 {
            let mut open = vec![0u64; self.config.targets.len()];
            for client in self.clients.iter().filter(|c| c.state == State::Open) {
                open[client.node as usize] += 1;
            }
            for (node, n) in open.into_iter().enumerate() {
                report.insert(format!("open_node{node}"), n);
            }
        }
        for (status, n) in &self.context.http_statuses {
            report.insert(format!("http_{status}"), *n);
        }
        report
    }

    fn start_echo(&mut self, conns: usize, millis: u64) {
        let now = mono_ns();
        self.context.echo_until_ns = now + millis * 1_000_000;
        self.context.counters.echo_start_ns = now;
        self.context.counters.echo_end_ns = 0;
        let chosen: Vec<usize> =
            (0..self.clients.len()).filter(|&i| self.clients[i].state == State::Open).take(conns).collect();
        for index in chosen {
            self.clients[index].echo = true;
            self.context.counters.echo_conns += 1;
            self.context.counters.echo_inflight += 1;
            let payload = echo_payload(mono_ns());
            self.send_text(index, &payload);
        }
        if self.context.counters.echo_inflight == 0 {
            self.context.counters.echo_end_ns = mono_ns();
        }
    }

    /// Marks the echo phase finished once its time is up and every reply is in (clients stop
    /// sending by themselves; this only notices the end when no reply is due).
    fn stop_echo_if_due(&mut self) {
        let counters = &mut self.context.counters;
        if counters.echo_conns > 0 && counters.echo_inflight == 0 && counters.echo_end_ns == 0 {
            counters.echo_end_ns = mono_ns();
        }
    }
}
