//! A worker process: holds up to 19,000 client WebSocket connections on one mio Poll and one
//! thread, and answers the parent's line commands on stdin/stdout.
//!
//! Clients are cheap: a connection is a socket plus two empty Vecs and two sequence checkers
//! (~150 bytes). Reads go through one shared scratch buffer; a connection keeps bytes only while
//! a frame is incomplete or the socket would not take a whole frame.
//!
//! Commands (one line each, answered with one line unless noted):
//! `connect` (no answer: poll with `report`), `probe` (no answer), `expect_pub FIRST_USER C...`,
//! `expect_bcast M`, `echo CONNS MILLIS` (no answer), `report`, `final pub|bcast`,
//! `hist pub|bcast|echo [reset]`, `quit`. Unsolicited `note TEXT` lines carry first-of-a-kind
//! errors.
//!
//! Soak commands: `soak_mode` (no answer; publish numbers are then checked per incarnation, see
//! below), `churn FRACTION` (kill that share of the open connections with an RST and reconnect
//! them; answers `churned K`), `leave` (close every connection; answers `left K`), `reconnect`
//! (start every closed connection again; no answer), `expect_soak GRACE_NS FIRST_USER C:T...`
//! (per user: publishes sent and the send time of the last; answers `ok`), `incarnations`
//! (answers one `inc USER OPENED_NS END FIRST LAST DISTINCT` line per incarnation, then
//! `incs_end COUNT`).
//!
//! An incarnation is one connection of a client slot, from its 101 to its end; a reconnect
//! starts a new one. In soak mode each incarnation's publish numbers must run strictly
//! consecutively from the first it received: duplicates, reorders and holes are counted here,
//! and the parent judges the rest (what each incarnation had to receive) from the records.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{self, BufRead, Cursor, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use crate::hist::Histogram;
use crate::sys::mono_ns;

const WAKER: Token = Token(usize::MAX);
/// Largest frame accepted from the server; the tool's own messages are tiny.
const MAX_FRAME: u64 = 1 << 20;
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
    pub target: SocketAddrV4,
    pub host_header: String,
    pub path: String,
    /// Source addresses to bind (base, how many); connection g uses base + g % how-many.
    pub sources: Option<(Ipv4Addr, u32)>,
    /// Handshakes started per second by this worker; 0 = as fast as `max_inflight` allows.
    pub connect_rate: f64,
    pub max_inflight: usize,
    pub connect_timeout: Duration,
    pub seed: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    NotStarted,
    Connecting,
    Handshaking,
    Open,
    Closed,
}

/// Tracks one stream of sequence numbers 1, 2, 3, ... exactly: duplicates, late arrivals
/// (reordering) and gaps, with no allocation while the stream arrives in order.
#[derive(Default)]
pub struct SeqCheck {
    /// Every number 1..=prefix has been seen.
    prefix: u32,
    /// Highest number seen.
    max_seen: u32,
    /// Numbers above `prefix + 1` seen before the gap under them filled (only after an anomaly).
    /// Boxed: 8 bytes per connection instead of 24 for something almost never used.
    #[allow(clippy::box_collection)]
    above: Option<Box<BTreeSet<u32>>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// First sighting; `late` when a higher number had already arrived (reordered).
    New {
        late: bool,
    },
    Duplicate,
}

impl SeqCheck {
    /// Distinct numbers seen.
    pub fn distinct(&self) -> u32 {
        self.prefix + self.above.as_ref().map_or(0, |above| above.len() as u32)
    }

    pub fn max_seen(&self) -> u32 {
        self.max_seen
    }

    pub fn record(&mut self, seq: u32) -> Seen {
        if seq == 0 || seq <= self.prefix {
            return Seen::Duplicate;
        }
        if seq == self.prefix + 1 && self.above.is_none() {
            self.prefix = seq;
            self.max_seen = seq;
            return Seen::New { late: false };
        }
        let above = self.above.get_or_insert_with(Box::default);
        if !above.insert(seq) {
            return Seen::Duplicate;
        }
        let late = seq < self.max_seen;
        self.max_seen = self.max_seen.max(seq);
        while above.first() == Some(&(self.prefix + 1)) {
            above.pop_first();
            self.prefix += 1;
        }
        if above.is_empty() {
            self.above = None;
        }
        Seen::New { late }
    }

    /// (distinct numbers seen in 1..=expected, distinct numbers seen above expected)
    pub fn tally(&self, expected: u32) -> (u32, u32) {
        let mut within = self.prefix.min(expected);
        let mut beyond = self.prefix.saturating_sub(expected);
        if let Some(above) = &self.above {
            for &seq in above.iter() {
                if seq <= expected {
                    within += 1;
                } else {
                    beyond += 1;
                }
            }
        }
        (within, beyond)
    }
}

struct Client {
    stream: Option<TcpStream>,
    state: State,
    /// Part of an incoming frame (or upgrade response) not complete yet; usually empty.
    inbuf: Vec<u8>,
    /// Bytes the socket did not take yet; usually empty.
    outbuf: Vec<u8>,
    /// A fragmented message being reassembled (the server is not expected to fragment); boxed
    /// to keep the per-connection struct small.
    #[allow(clippy::box_collection)]
    fragments: Option<Box<Vec<u8>>>,
    publishes: SeqCheck,
    broadcasts: SeqCheck,
    ever_open: bool,
    /// Soak mode: when this incarnation's 101 was read, and the first publish number it got
    /// (0 = none yet); `publishes` then counts relative to that number (first = 1).
    opened_ns: u64,
    first_pub: u32,
    warm: bool,
    /// Takes part in the echo phase (one message in flight).
    echo: bool,
}

impl Client {
    fn new() -> Client {
        Client {
            stream: None,
            state: State::NotStarted,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            fragments: None,
            publishes: SeqCheck::default(),
            broadcasts: SeqCheck::default(),
            ever_open: false,
            opened_ns: 0,
            first_pub: 0,
            warm: false,
            echo: false,
        }
    }
}

/// Counters reported to the parent; names are the report keys.
#[derive(Default)]
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
}

/// Why a connection attempt failed.
#[derive(Clone, Copy)]
enum Failure {
    Refused,
    Timeout,
    Http(u16),
    Reset,
    Other,
}

/// How an incarnation ended (still open when the records were asked for: `Live`).
#[derive(Clone, Copy)]
enum End {
    Live,
    Killed,
    ServerClosed,
}

impl End {
    fn name(self) -> &'static str {
        match self {
            End::Live => "live",
            End::Killed => "killed",
            End::ServerClosed => "server_closed",
        }
    }
}

/// What one incarnation received, for the parent's check.
struct Incarnation {
    user: usize,
    opened_ns: u64,
    end: End,
    /// First and highest publish number received (0, 0 when none), distinct numbers received.
    first: u32,
    last: u32,
    distinct: u32,
}

/// Per-worker state other than the clients, split out so a client and this can be borrowed
/// mutably at the same time.
struct Context {
    counters: Counters,
    http_statuses: BTreeMap<u16, u64>,
    notes_sent: BTreeSet<String>,
    rng: u64,
    pub_latency: Histogram,
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
            send_line(&format!("note {kind}: {text}"));
        }
    }
}

fn send_line(line: &str) {
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
    let (commands_tx, commands) = mpsc::channel::<String>();
    // stdin is read on its own thread so the poll loop never blocks on the parent.
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if commands_tx.send(line).is_err() {
                return;
            }
            let _ = waker.wake();
        }
        let _ = commands_tx.send("quit".to_string());
        let _ = waker.wake();
    });

    // One key per worker: the server only checks its form, and the expected accept value is
    // then computed once instead of per connection.
    let key = tungstenite::handshake::client::generate_key();
    let accept_key = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut worker = Worker {
        clients: (0..config.count).map(|_| Client::new()).collect(),
        context: Context {
            counters: Counters { pending: config.count as u64, ..Counters::default() },
            http_statuses: BTreeMap::new(),
            notes_sent: BTreeSet::new(),
            rng: config.seed | 1,
            pub_latency: Histogram::default(),
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
    fn event_loop(&mut self, commands: &mpsc::Receiver<String>) -> io::Result<()> {
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
                if !self.on_command(&command) {
                    return Ok(());
                }
            }
            self.expire_handshakes();
            self.stop_echo_if_due();
        }
    }

    /// Starts as many connections as the rate and in-flight limits allow; returns how long the
    /// poll may sleep.
    fn start_connections(&mut self) -> Duration {
        let Some(started_at) = self.connect_started else { return TICK };
        let mut sleep = TICK;
        while (self.context.counters.inflight as usize) < self.config.max_inflight {
            if self.next_to_start >= self.clients.len() {
                let Some((index, churned)) = self.restart.pop_front() else { break };
                self.context.counters.pending -= 1;
                self.context.counters.reconnects += u64::from(churned);
                self.start_one(index);
                continue;
            }
            if self.config.connect_rate > 0.0 {
                let due = started_at + Duration::from_secs_f64(self.next_to_start as f64 / self.config.connect_rate);
                let now = Instant::now();
                if due > now {
                    sleep = sleep.min(due - now);
                    break;
                }
            }
            let index = self.next_to_start;
            self.next_to_start += 1;
            self.context.counters.pending -= 1;
            self.start_one(index);
        }
        sleep
    }

    fn start_one(&mut self, index: usize) {
        let global = self.config.first + index;
        let source = self
            .config
            .sources
            .map(|(base, count)| Ipv4Addr::from(u32::from(base).wrapping_add((global % count as usize) as u32)));
        self.context.counters.inflight += 1;
        let client = &mut self.clients[index];
        client.state = State::Connecting;
        match open_client_socket(self.config.target, source) {
            Ok(mut stream) => {
                if let Err(e) =
                    self.poll.registry().register(&mut stream, Token(index), Interest::READABLE | Interest::WRITABLE)
                {
                    self.fail(index, classify(&e), &e.to_string());
                    return;
                }
                client.stream = Some(stream);
                self.deadlines.push_back((index, Instant::now() + self.config.connect_timeout));
            }
            Err(e) => {
                let text = match source {
                    Some(ip) => format!("{e} (source {ip})"),
                    None => e.to_string(),
                };
                self.fail(index, classify(&e), &text);
            }
        }
    }

    /// Ends a connection attempt that never opened.
    fn fail(&mut self, index: usize, failure: Failure, text: &str) {
        let counters = &mut self.context.counters;
        counters.inflight -= 1;
        let kind = match failure {
            Failure::Refused => {
                counters.refused += 1;
                "refused"
            }
            Failure::Timeout => {
                counters.timeout += 1;
                "timeout"
            }
            Failure::Http(status) => {
                counters.http += 1;
                *self.context.http_statuses.entry(status).or_default() += 1;
                "http"
            }
            Failure::Reset => {
                counters.reset += 1;
                "reset"
            }
            Failure::Other => {
                counters.other += 1;
                "other"
            }
        };
        self.context.note_once(kind, text);
        self.drop_socket(index);
    }

    fn drop_socket(&mut self, index: usize) {
        let client = &mut self.clients[index];
        if let Some(mut stream) = client.stream.take() {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        client.state = State::Closed;
        client.inbuf = Vec::new();
        client.outbuf = Vec::new();
        client.fragments = None;
    }

    /// Ends an opened connection (the server closed it, or it broke).
    fn lose(&mut self, index: usize, text: &str) {
        if self.clients[index].state != State::Open {
            return;
        }
        if self.context.soak {
            let record = self.incarnation(index, End::ServerClosed);
            self.finished.push(record);
        }
        let counters = &mut self.context.counters;
        counters.open -= 1;
        counters.closed_by_peer += 1;
        if self.clients[index].echo {
            self.clients[index].echo = false;
            counters.echo_inflight -= 1;
        }
        self.context.note_once("closed", text);
        self.drop_socket(index);
    }

    fn expire_handshakes(&mut self) {
        let now = Instant::now();
        while let Some(&(index, deadline)) = self.deadlines.front() {
            let state = self.clients[index].state;
            if state == State::Connecting || state == State::Handshaking {
                if deadline > now {
                    break;
                }
                let stage = if state == State::Connecting { "TCP connect" } else { "upgrade response" };
                self.fail(index, Failure::Timeout, &format!("no {stage} within {:?}", self.config.connect_timeout));
            }
            self.deadlines.pop_front();
        }
    }

    fn on_socket_event(&mut self, index: usize) {
        let Some(client) = self.clients.get(index) else { return };
        match client.state {
            State::Connecting => self.on_connecting(index),
            State::Handshaking | State::Open => {
                self.flush(index);
                self.read_ready(index);
            }
            State::NotStarted | State::Closed => {}
        }
    }

    fn on_connecting(&mut self, index: usize) {
        let Some(stream) = self.clients[index].stream.as_ref() else { return };
        match stream.take_error() {
            Ok(Some(e)) | Err(e) => return self.fail_after_error(index, classify(&e), &e.to_string()),
            Ok(None) => {}
        }
        match stream.peer_addr() {
            Ok(_) => {}
            // Not connected yet: a spurious event; wait for the next one.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
            Err(e) => return self.fail(index, classify(&e), &e.to_string()),
        }
        let user = (self.config.first + index) / self.config.tabs;
        let separator = if self.config.path.contains('?') { '&' } else { '?' };
        let request = format!(
            "GET {}{separator}user=u{user} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            self.config.path, self.config.host_header, self.key
        );
        self.clients[index].state = State::Handshaking;
        self.write_bytes(index, request.as_bytes());
        if self.clients[index].state == State::Handshaking {
            self.read_ready(index);
        }
    }

    /// Writes `bytes` now or queues what the socket does not take.
    fn write_bytes(&mut self, index: usize, bytes: &[u8]) {
        let client = &mut self.clients[index];
        let Some(stream) = client.stream.as_mut() else { return };
        if !client.outbuf.is_empty() {
            client.outbuf.extend_from_slice(bytes);
            return;
        }
        let mut written = 0;
        while written < bytes.len() {
            match stream.write(&bytes[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.broken(index, classify(&e), &format!("write: {e}")),
            }
        }
        if written < bytes.len() {
            client.outbuf.extend_from_slice(&bytes[written..]);
        }
    }

    fn flush(&mut self, index: usize) {
        let client = &mut self.clients[index];
        let Some(stream) = client.stream.as_mut() else { return };
        while !client.outbuf.is_empty() {
            match stream.write(&client.outbuf) {
                Ok(n) => {
                    client.outbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.broken(index, classify(&e), &format!("write: {e}")),
            }
        }
        client.outbuf = Vec::new();
    }

    /// A socket error or EOF: a failed attempt while handshaking, a lost connection once open.
    fn broken(&mut self, index: usize, failure: Failure, text: &str) {
        match self.clients[index].state {
            State::Connecting | State::Handshaking => self.fail_after_error(index, failure, text),
            State::Open => self.lose(index, text),
            State::NotStarted | State::Closed => {}
        }
    }

    fn read_ready(&mut self, index: usize) {
        loop {
            let client = &mut self.clients[index];
            let Some(stream) = client.stream.as_mut() else { return };
            let n = match stream.read(&mut self.scratch) {
                Ok(0) => {
                    let stage = if client.state == State::Handshaking { "during upgrade" } else { "" };
                    return self.broken(index, Failure::Other, &format!("server closed the connection {stage}"));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.broken(index, classify(&e), &format!("read: {e}")),
            };
            let outcome = if client.inbuf.is_empty() && client.state == State::Open {
                let (consumed, outcome) = process_frames(&self.scratch[..n], client, &mut self.context);
                if outcome.is_ok() {
                    client.inbuf.extend_from_slice(&self.scratch[consumed..n]);
                }
                outcome
            } else {
                client.inbuf.extend_from_slice(&self.scratch[..n]);
                self.process_buffered(index)
            };
            if let Err(action) = outcome {
                return self.finish(index, action);
            }
            if self.clients[index].state == State::Closed {
                return;
            }
            // A full scratch read means more may be waiting; otherwise the socket is drained.
            if n < self.scratch.len() {
                return;
            }
        }
    }

    fn process_buffered(&mut self, index: usize) -> Result<(), Stop> {
        let client = &mut self.clients[index];
        if client.state == State::Handshaking {
            let Some(head_end) = crate::admin::find(&client.inbuf, b"\r\n\r\n").map(|p| p + 4) else {
                if client.inbuf.len() > MAX_RESPONSE_HEAD {
                    return Err(Stop::Failed(Failure::Other, "upgrade response head too long".into()));
                }
                return Ok(());
            };
            check_upgrade_response(&client.inbuf[..head_end], &self.accept_key).map_err(|(f, t)| Stop::Failed(f, t))?;
            client.inbuf.drain(..head_end);
            client.state = State::Open;
            client.ever_open = true;
            let now = mono_ns();
            if self.context.soak {
                client.opened_ns = now;
                client.first_pub = 0;
                client.publishes = SeqCheck::default();
            }
            let counters = &mut self.context.counters;
            counters.inflight -= 1;
            counters.connected += 1;
            counters.open += 1;
            if counters.first_open_ns == 0 {
                counters.first_open_ns = now;
            }
            counters.last_open_ns = now;
        }
        if client.inbuf.is_empty() {
            return Ok(());
        }
        let buffered = std::mem::take(&mut client.inbuf);
        let (consumed, outcome) = process_frames(&buffered, client, &mut self.context);
        client.inbuf = buffered;
        client.inbuf.drain(..consumed);
        if client.inbuf.is_empty() && client.inbuf.capacity() > 4096 {
            client.inbuf = Vec::new();
        }
        outcome
    }

    fn finish(&mut self, index: usize, stop: Stop) {
        match stop {
            Stop::Failed(failure, text) => self.fail(index, failure, &text),
            Stop::ServerClosed(text) => {
                // Our close reply was queued by process_frames; give it one chance to go out.
                self.flush(index);
                self.lose(index, &text)
            }
            Stop::ProtocolError(text) => {
                self.context.counters.protocol_errors += 1;
                self.lose(index, &format!("protocol error: {text}"))
            }
            Stop::WriteFailed(text) => self.broken(index, Failure::Other, &text),
        }
    }

    fn on_command(&mut self, line: &str) -> bool {
        let mut words = line.split_whitespace();
        match words.next().unwrap_or("") {
            "connect" => {
                self.connect_started.get_or_insert_with(Instant::now);
            }
            "probe" => {
                for index in 0..self.clients.len() {
                    if self.clients[index].state == State::Open {
                        self.send_text(index, b"i");
                    }
                }
            }
            "expect_pub" => {
                self.context.expected_first_user = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                self.context.expected_publishes = words.map(|w| w.parse().unwrap_or(0)).collect();
                let expected: u64 = (0..self.clients.len())
                    .filter(|&index| self.clients[index].ever_open)
                    .map(|index| self.expected_publishes_of(index) as u64)
                    .sum();
                self.context.counters.pub_expected = expected;
                send_line("ok");
            }
            "expect_bcast" => {
                let count: u32 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                self.context.expected_broadcasts = count;
                let opened = self.clients.iter().filter(|c| c.ever_open).count() as u64;
                self.context.counters.bcast_expected = opened * count as u64;
                send_line("ok");
            }
            "echo" => {
                let conns: usize = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                let millis: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                self.start_echo(conns, millis);
            }
            "report" => send_line(&self.report()),
            "final" => {
                let which = words.next().unwrap_or("");
                send_line(&format!("final {which} {}", self.final_tally(which)));
            }
            "hist" => {
                let which = words.next().unwrap_or("");
                let hist = match which {
                    "pub" => &mut self.context.pub_latency,
                    "bcast" => &mut self.context.bcast_latency,
                    _ => &mut self.context.echo_rtt,
                };
                send_line(&format!("hist {which} {}", hist.encode()));
                if words.next() == Some("reset") {
                    *hist = Histogram::default();
                }
            }
            "soak_mode" => self.context.soak = true,
            "churn" => {
                let fraction: f64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0.0);
                let killed = self.churn(fraction);
                send_line(&format!("churned {killed}"));
            }
            "leave" => {
                let left = self.leave();
                send_line(&format!("left {left}"));
            }
            "reconnect" => {
                self.connect_started.get_or_insert_with(Instant::now);
                for index in 0..self.clients.len() {
                    if self.clients[index].state == State::Closed {
                        self.queue_restart(index, false);
                    }
                }
            }
            "expect_soak" => {
                self.context.grace_ns = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                self.context.expected_first_user = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                self.context.soak_expected = words
                    .map(|w| {
                        let (count, last) = w.split_once(':').unwrap_or((w, "0"));
                        (count.parse().unwrap_or(0), last.parse().unwrap_or(0))
                    })
                    .collect();
                send_line("ok");
            }
            "incarnations" => {
                let live: Vec<Incarnation> = (0..self.clients.len())
                    .filter(|&i| self.clients[i].state == State::Open)
                    .map(|index| self.incarnation(index, End::Live))
                    .collect();
                let mut count = 0;
                for record in self.finished.iter().chain(&live) {
                    count += 1;
                    send_line(&format!(
                        "inc {} {} {} {} {} {}",
                        record.user,
                        record.opened_ns,
                        record.end.name(),
                        record.first,
                        record.last,
                        record.distinct
                    ));
                }
                send_line(&format!("incs_end {count}"));
            }
            "quit" => return false,
            other => send_line(&format!("note unknown command {other:?}")),
        }
        true
    }

    fn incarnation(&self, index: usize, end: End) -> Incarnation {
        let client = &self.clients[index];
        let (first, last, distinct) = if client.first_pub == 0 {
            (0, 0, 0)
        } else {
            let seen = &client.publishes;
            (client.first_pub, client.first_pub + seen.max_seen().max(1) - 1, seen.distinct())
        };
        Incarnation {
            user: (self.config.first + index) / self.config.tabs,
            opened_ns: client.opened_ns,
            end,
            first,
            last,
            distinct,
        }
    }

    fn queue_restart(&mut self, index: usize, churned: bool) {
        self.restart.push_back((index, churned));
        self.context.counters.pending += 1;
    }

    /// Kills `fraction` of the open connections, chosen at random, with an RST (SO_LINGER 0,
    /// then close) and queues them to reconnect at once. Returns how many were killed.
    fn churn(&mut self, fraction: f64) -> usize {
        let mut open: Vec<usize> = (0..self.clients.len()).filter(|&i| self.clients[i].state == State::Open).collect();
        let count = ((open.len() as f64 * fraction).round() as usize).min(open.len());
        for i in 0..count {
            let j = i + (self.context.next_random() % (open.len() - i) as u64) as usize;
            open.swap(i, j);
        }
        for &index in &open[..count] {
            if self.context.soak {
                let record = self.incarnation(index, End::Killed);
                self.finished.push(record);
            }
            if let Some(stream) = self.clients[index].stream.as_ref() {
                let linger = libc::linger { l_onoff: 1, l_linger: 0 };
                // SAFETY: the fd is an open socket owned by `stream`; `linger` is a valid
                // struct of the given size that outlives the call.
                let rc = unsafe {
                    libc::setsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(stream),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&linger as *const libc::linger).cast(),
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    )
                };
                if rc != 0 {
                    // The close below then ends with a FIN instead of an RST: say so.
                    let error = io::Error::last_os_error().to_string();
                    self.context.note_once("linger", &format!("SO_LINGER failed, closing with FIN: {error}"));
                }
            }
            let counters = &mut self.context.counters;
            counters.open -= 1;
            counters.killed += 1;
            if self.clients[index].echo {
                self.clients[index].echo = false;
                counters.echo_inflight -= 1;
            }
            self.drop_socket(index);
            self.queue_restart(index, true);
        }
        count
    }

    /// Closes every connection (a plain close: FIN) and forgets pending starts and finished
    /// incarnations. Returns how many connections were open or opening.
    fn leave(&mut self) -> usize {
        self.finished.clear();
        let counters = &mut self.context.counters;
        counters.pending -= self.restart.len() as u64;
        self.restart.clear();
        counters.pending -= (self.clients.len() - self.next_to_start) as u64;
        self.next_to_start = self.clients.len();
        let mut left = 0;
        for index in 0..self.clients.len() {
            let counters = &mut self.context.counters;
            match self.clients[index].state {
                State::Open => counters.open -= 1,
                State::Connecting | State::Handshaking => counters.inflight -= 1,
                State::NotStarted | State::Closed => continue,
            }
            if self.clients[index].echo {
                self.clients[index].echo = false;
                counters.echo_inflight -= 1;
            }
            counters.left += 1;
            left += 1;
            self.drop_socket(index);
        }
        left
    }

    /// Live incarnations still missing a publish they must get: the last one sent to their user
    /// went out at least `grace_ns` after they opened, and they have not received up to it.
    fn soak_behind(&self) -> u64 {
        if self.context.soak_expected.is_empty() {
            return 0;
        }
        let mut behind = 0;
        for (index, client) in self.clients.iter().enumerate().filter(|(_, c)| c.state == State::Open) {
            let user = (self.config.first + index) / self.config.tabs;
            let Some(&(count, last_ns)) =
                user.checked_sub(self.context.expected_first_user).and_then(|i| self.context.soak_expected.get(i))
            else {
                continue;
            };
            if count == 0 || last_ns < client.opened_ns + self.context.grace_ns {
                continue;
            }
            let record = self.incarnation(index, End::Live);
            if record.first == 0 || record.last < count || record.last - record.first + 1 > record.distinct {
                behind += 1;
            }
        }
        behind
    }

    /// The attempt broke (reset, write error) before the upgrade completed. A server refusing us
    /// may have answered first and then closed (a 503 and an RST for our unread request): read
    /// what arrived so the refusal is counted by its status rather than as a reset.
    fn fail_after_error(&mut self, index: usize, failure: Failure, text: &str) {
        let client = &mut self.clients[index];
        if let Some(stream) = client.stream.as_mut() {
            while client.inbuf.len() <= MAX_RESPONSE_HEAD {
                match stream.read(&mut self.scratch) {
                    Ok(0) => break,
                    Ok(n) => client.inbuf.extend_from_slice(&self.scratch[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        let head = String::from_utf8_lossy(&client.inbuf[..client.inbuf.len().min(MAX_RESPONSE_HEAD)]).into_owned();
        let status =
            head.strip_prefix("HTTP/1.").and_then(|rest| rest.get(2..5)).and_then(|code| code.parse::<u16>().ok());
        match status {
            Some(status) => self.fail(index, Failure::Http(status), &format!("upgrade answered {status}, then {text}")),
            None => self.fail(index, failure, text),
        }
    }

    /// How many publishes connection `index`'s user was sent (per the last `expect_pub`).
    fn expected_publishes_of(&self, index: usize) -> u32 {
        let user = (self.config.first + index) / self.config.tabs;
        user.checked_sub(self.context.expected_first_user)
            .and_then(|i| self.context.expected_publishes.get(i))
            .copied()
            .unwrap_or(0)
    }

    fn final_tally(&self, which: &str) -> String {
        let (mut lost, mut unexpected) = (0u64, 0u64);
        for (index, client) in self.clients.iter().enumerate().filter(|(_, c)| c.ever_open) {
            let (check, expected) = if which == "pub" {
                (&client.publishes, self.expected_publishes_of(index))
            } else {
                (&client.broadcasts, self.context.expected_broadcasts)
            };
            let (within, beyond) = check.tally(expected);
            lost += (expected - within) as u64;
            unexpected += beyond as u64;
        }
        format!("lost={lost} unexpected={unexpected}")
    }

    fn report(&self) -> String {
        let c = &self.context.counters;
        let mut line = format!(
            "report pending={} inflight={} connected={} open={} refused={} timeout={} http={} reset={} other={} \
             killed={} reconnects={} left={} soak_behind={} \
             closed_by_peer={} protocol_errors={} warm={} probe_echoes={} unknown_msgs={} \
             pub_recv={} pub_distinct={} pub_dup={} pub_reordered={} pub_expected={} \
             bcast_recv={} bcast_distinct={} bcast_dup={} bcast_reordered={} bcast_expected={} \
             echo_msgs={} echo_inflight={} echo_conns={} first_open_ns={} last_open_ns={} last_pub_ns={} \
             last_bcast_ns={} echo_start_ns={} echo_end_ns={}",
            c.pending,
            c.inflight,
            c.connected,
            c.open,
            c.refused,
            c.timeout,
            c.http,
            c.reset,
            c.other,
            c.killed,
            c.reconnects,
            c.left,
            self.soak_behind(),
            c.closed_by_peer,
            c.protocol_errors,
            c.warm,
            c.probe_echoes,
            c.unknown_msgs,
            c.pub_recv,
            c.pub_distinct,
            c.pub_dup,
            c.pub_reordered,
            c.pub_expected,
            c.bcast_recv,
            c.bcast_distinct,
            c.bcast_dup,
            c.bcast_reordered,
            c.bcast_expected,
            c.echo_msgs,
            c.echo_inflight,
            c.echo_conns,
            c.first_open_ns,
            c.last_open_ns,
            c.last_pub_ns,
            c.last_bcast_ns,
            c.echo_start_ns,
            c.echo_end_ns,
        );
        for (status, n) in &self.context.http_statuses {
            line.push_str(&format!(" http_{status}={n}"));
        }
        line
    }

    fn send_text(&mut self, index: usize, payload: &[u8]) {
        let mask = self.context.next_random() as u32;
        encode_masked(&mut self.context.frame, OpCode::Data(Data::Text), payload, mask.to_ne_bytes());
        let frame = std::mem::take(&mut self.context.frame);
        self.write_bytes(index, &frame);
        self.context.frame = frame;
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

/// How a connection must end, decided while parsing its input.
enum Stop {
    Failed(Failure, String),
    ServerClosed(String),
    ProtocolError(String),
    WriteFailed(String),
}

fn classify(e: &io::Error) -> Failure {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => Failure::Refused,
        Some(libc::ETIMEDOUT) => Failure::Timeout,
        Some(libc::ECONNRESET | libc::EPIPE) => Failure::Reset,
        _ => Failure::Other,
    }
}

fn check_upgrade_response(head: &[u8], accept_key: &str) -> Result<(), (Failure, String)> {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| (Failure::Other, format!("bad status line {status_line:?}")))?;
    if status != 101 {
        return Err((Failure::Http(status), format!("upgrade answered {status_line:?}")));
    }
    let accept = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|(_, value)| value.trim().to_string());
    match accept {
        Some(value) if value == accept_key => Ok(()),
        other => Err((Failure::Other, format!("bad Sec-WebSocket-Accept {other:?}"))),
    }
}

/// Masked client frame into `out` (cleared first).
fn encode_masked(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], mask: [u8; 4]) {
    out.clear();
    let header = FrameHeader { is_final: true, opcode, mask: Some(mask), ..FrameHeader::default() };
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, out);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, byte) in out[start..].iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// A 20-byte echo message: 'e', the send time as 16 hex digits, padding.
fn echo_payload(now_ns: u64) -> [u8; 20] {
    let mut payload = *b"e0000000000000000   ";
    let hex = format!("{now_ns:016x}");
    payload[1..17].copy_from_slice(hex.as_bytes());
    payload
}

/// Parses every complete frame in `data`. Returns bytes consumed, and Err when the connection
/// must end.
fn process_frames(data: &[u8], client: &mut Client, context: &mut Context) -> (usize, Result<(), Stop>) {
    let mut pos = 0;
    while pos < data.len() {
        let mut cursor = Cursor::new(&data[pos..]);
        let (header, length) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => break,
            Err(e) => return (pos, Err(Stop::ProtocolError(e.to_string()))),
        };
        if length > MAX_FRAME {
            return (pos, Err(Stop::ProtocolError(format!("{length}-byte frame"))));
        }
        if header.mask.is_some() {
            return (pos, Err(Stop::ProtocolError("server sent a masked frame".into())));
        }
        let payload_start = pos + cursor.position() as usize;
        let payload_end = payload_start + length as usize;
        if payload_end > data.len() {
            break;
        }
        let payload = &data[payload_start..payload_end];
        pos = payload_end;
        let outcome = match header.opcode {
            OpCode::Data(Data::Text | Data::Binary) if header.is_final => {
                if client.fragments.is_some() {
                    Err(Stop::ProtocolError("new message inside a fragmented one".into()))
                } else {
                    on_message(payload, client, context)
                }
            }
            OpCode::Data(Data::Text | Data::Binary) => {
                client.fragments = Some(Box::new(payload.to_vec()));
                Ok(())
            }
            OpCode::Data(Data::Continue) => match client.fragments.as_mut() {
                Some(message) => {
                    message.extend_from_slice(payload);
                    if header.is_final {
                        let message = client.fragments.take().map(|b| *b).unwrap_or_default();
                        on_message(&message, client, context)
                    } else {
                        Ok(())
                    }
                }
                None => Err(Stop::ProtocolError("continuation without a message".into())),
            },
            OpCode::Control(Control::Ping) => reply(client, context, Control::Pong, payload),
            OpCode::Control(Control::Pong) => Ok(()),
            OpCode::Control(Control::Close) => {
                let code = if payload.len() >= 2 { u16::from_be_bytes([payload[0], payload[1]]) } else { 1005 };
                let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or(&[])).into_owned();
                let echo_code = if payload.len() >= 2 { &payload[..2] } else { &[][..] };
                match reply(client, context, Control::Close, echo_code) {
                    Ok(()) => Err(Stop::ServerClosed(format!("server closed with {code} {reason:?}"))),
                    Err(e) => Err(e),
                }
            }
            OpCode::Data(Data::Reserved(op)) | OpCode::Control(Control::Reserved(op)) => {
                Err(Stop::ProtocolError(format!("reserved opcode {op}")))
            }
        };
        if let Err(stop) = outcome {
            return (pos, Err(stop));
        }
    }
    (pos, Ok(()))
}

/// Queues a control frame (pong or close reply). Clients never hold more than a few bytes, so
/// an unflushed remainder goes to the client's outbuf and is sent on the next writable event.
fn reply(client: &mut Client, context: &mut Context, control: Control, payload: &[u8]) -> Result<(), Stop> {
    let mask = context.next_random() as u32;
    encode_masked(&mut context.frame, OpCode::Control(control), payload, mask.to_ne_bytes());
    write_frame(client, &context.frame)
}

fn write_frame(client: &mut Client, frame: &[u8]) -> Result<(), Stop> {
    let Some(stream) = client.stream.as_mut() else { return Ok(()) };
    if !client.outbuf.is_empty() {
        client.outbuf.extend_from_slice(frame);
        return Ok(());
    }
    let mut written = 0;
    while written < frame.len() {
        match stream.write(&frame[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Stop::WriteFailed(format!("write: {e}"))),
        }
    }
    client.outbuf.extend_from_slice(&frame[written..]);
    Ok(())
}

/// Splits "X <number> <number>" into the two numbers.
fn two_numbers(payload: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(payload.get(2..)?).ok()?;
    let mut words = text.split_ascii_whitespace();
    Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
}

/// One complete message from the server. The first byte says what it is (the parent writes
/// every payload): `p SEQ T` publish, `b INDEX T` broadcast, `w T` idle warm-up broadcast,
/// `e...` echo reply, `i` echo of our own idle probe.
fn on_message(payload: &[u8], client: &mut Client, context: &mut Context) -> Result<(), Stop> {
    let now = mono_ns();
    let counters = &mut context.counters;
    match payload.first() {
        Some(b'p') if context.soak => {
            let Some((seq, sent_ns)) = two_numbers(payload) else {
                counters.unknown_msgs += 1;
                return Ok(());
            };
            counters.pub_recv += 1;
            counters.last_pub_ns = now;
            let seq = seq.clamp(1, u32::MAX as u64) as u32;
            if client.first_pub == 0 {
                client.first_pub = seq;
            }
            if seq < client.first_pub {
                // Below the first number this incarnation got: it arrived after a higher one.
                counters.pub_reordered += 1;
                return Ok(());
            }
            match client.publishes.record(seq - client.first_pub + 1) {
                Seen::New { late } => {
                    counters.pub_distinct += 1;
                    counters.pub_reordered += late as u64;
                    context.pub_latency.record(now.saturating_sub(sent_ns));
                }
                Seen::Duplicate => counters.pub_dup += 1,
            }
        }
        Some(b'p') => {
            let Some((seq, sent_ns)) = two_numbers(payload) else {
                counters.unknown_msgs += 1;
                return Ok(());
            };
            counters.pub_recv += 1;
            counters.last_pub_ns = now;
            match client.publishes.record(seq.min(u32::MAX as u64) as u32) {
                Seen::New { late } => {
                    counters.pub_distinct += 1;
                    counters.pub_reordered += late as u64;
                    context.pub_latency.record(now.saturating_sub(sent_ns));
                }
                Seen::Duplicate => counters.pub_dup += 1,
            }
        }
        Some(b'b') => {
            let Some((index, sent_ns)) = two_numbers(payload) else {
                counters.unknown_msgs += 1;
                return Ok(());
            };
            counters.bcast_recv += 1;
            counters.last_bcast_ns = now;
            match client.broadcasts.record(index.min(u32::MAX as u64) as u32) {
                Seen::New { late } => {
                    counters.bcast_distinct += 1;
                    counters.bcast_reordered += late as u64;
                    context.bcast_latency.record(now.saturating_sub(sent_ns));
                }
                Seen::Duplicate => counters.bcast_dup += 1,
            }
        }
        Some(b'w') => {
            if !client.warm {
                client.warm = true;
                counters.warm += 1;
            }
        }
        Some(b'e') if client.echo => {
            let sent_ns = std::str::from_utf8(payload.get(1..17).unwrap_or(&[]))
                .ok()
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                .unwrap_or(now);
            context.echo_rtt.record(now.saturating_sub(sent_ns));
            counters.echo_msgs += 1;
            if now < context.echo_until_ns {
                let payload = echo_payload(mono_ns());
                let mask = context.next_random() as u32;
                encode_masked(&mut context.frame, OpCode::Data(Data::Text), &payload, mask.to_ne_bytes());
                return write_frame(client, &context.frame);
            }
            client.echo = false;
            counters.echo_inflight -= 1;
        }
        Some(b'i') => counters.probe_echoes += 1,
        _ => counters.unknown_msgs += 1,
    }
    Ok(())
}

/// A non-blocking client socket, optionally bound to `source` first, with the connect started.
/// IP_BIND_ADDRESS_NO_PORT defers the port choice to connect(), so each source address gets its
/// own ~28k ephemeral ports towards the target instead of bind() reserving ports globally.
fn open_client_socket(target: SocketAddrV4, source: Option<Ipv4Addr>) -> io::Result<TcpStream> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    if let Some(source) = source {
        set_int_option(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
        let address = sockaddr_in(SocketAddrV4::new(source, 0));
        // SAFETY: `address` is a valid sockaddr_in that outlives the call; the length matches.
        let rc = unsafe {
            libc::bind(
                fd,
                (&address as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let address = sockaddr_in(target);
    // SAFETY: as for bind above.
    let rc = unsafe {
        libc::connect(
            fd,
            (&address as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(TcpStream::from_std(std::net::TcpStream::from(owned)))
}

fn sockaddr_in(address: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: address.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(address.ip().octets()) },
        sin_zero: [0; 8],
    }
}

fn set_int_option(fd: libc::c_int, level: libc::c_int, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is an open socket; the value points to a live c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_check_classifies_duplicates_reorders_and_gaps() {
        let mut check = SeqCheck::default();
        assert_eq!(check.record(1), Seen::New { late: false });
        assert_eq!(check.record(3), Seen::New { late: false });
        assert_eq!(check.record(2), Seen::New { late: true });
        assert_eq!(check.record(2), Seen::Duplicate);
        assert_eq!(check.record(6), Seen::New { late: false });
        assert_eq!(check.tally(5), (3, 1)); // 4 and 5 missing, 6 unexpected
        assert_eq!(check.tally(6), (4, 0));
    }
}
