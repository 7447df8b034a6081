//! One TCP connection to Redis, driven by the bridge's poller: connect (non-blocking), write what
//! was queued, read and parse replies, and notice a Redis that stopped answering. What each
//! reply means is the bridge's business; the link only counts the replies it is owed, with when
//! each was asked for, so a silent Redis is caught after the timeout even with nothing else to do.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::redis::resp::{self, Reply};
use crate::slack;

/// Reconnect delays grow from this to `MAX_BACKOFF` while Redis stays unreachable.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Bytes read per call.
const READ_CHUNK: usize = 64 * 1024;
/// Buffer room a link keeps between bursts until the next housekeeping.
const KEPT_BUFFER: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Not connected; try again at `retry_at`.
    Down { retry_at: Instant },
    /// TCP connect in progress (since `since`).
    Connecting { since: Instant },
    /// Connected: commands flow.
    Up,
}

/// Why a link was dropped.
#[derive(Debug)]
pub(super) struct Dead(pub(super) &'static str);

pub(super) struct Link {
    token: Token,
    stream: Option<TcpStream>,
    phase: Phase,
    out: Vec<u8>,
    written: usize,
    input: Vec<u8>,
    /// When each reply still owed was asked for, oldest first.
    owed: VecDeque<Instant>,
    last_rx: Instant,
    backoff: Duration,
}

impl Link {
    pub(super) fn new(token: Token, now: Instant) -> Link {
        Link {
            token,
            stream: None,
            phase: Phase::Down { retry_at: now },
            out: Vec::new(),
            written: 0,
            input: Vec::new(),
            owed: VecDeque::new(),
            last_rx: now,
            backoff: MIN_BACKOFF,
        }
    }

    pub(super) fn is_up(&self) -> bool {
        self.phase == Phase::Up
    }

    /// Starts connecting if the link is down and its retry time has come.
    pub(super) fn maybe_connect(&mut self, registry: &Registry, address: &str, now: Instant) -> Result<bool, Dead> {
        match self.phase {
            Phase::Down { retry_at } if now >= retry_at => {}
            _ => return Ok(false),
        }
        // Resolved at every attempt: the name may point elsewhere after a failover.
        let address =
            address.to_socket_addrs().ok().and_then(|mut addrs| addrs.next()).ok_or(Dead("cannot resolve"))?;
        let mut stream = TcpStream::connect(address).map_err(|_| Dead("cannot connect"))?;
        registry
            .register(&mut stream, self.token, Interest::READABLE | Interest::WRITABLE)
            .map_err(|_| Dead("cannot poll"))?;
        let _ = stream.set_nodelay(true);
        self.stream = Some(stream);
        self.phase = Phase::Connecting { since: now };
        self.last_rx = now;
        Ok(true)
    }

    /// Queues a command whose reply Redis will owe.
    pub(super) fn send(&mut self, args: &[&[u8]], now: Instant) {
        resp::encode_command(&mut self.out, args);
        self.owed.push_back(now);
    }

    /// Queues a command answered by `replies` replies (SSUBSCRIBE with that many channels).
    pub(super) fn send_owing(&mut self, args: &[&[u8]], replies: usize, now: Instant) {
        resp::encode_command(&mut self.out, args);
        self.owed.extend(std::iter::repeat_n(now, replies));
    }

    /// One owed reply arrived.
    pub(super) fn answered(&mut self) {
        self.owed.pop_front();
    }

    /// Writes what is queued, as far as the socket takes it.
    pub(super) fn flush(&mut self) -> Result<(), Dead> {
        if self.phase != Phase::Up {
            return Ok(());
        }
        let Some(stream) = self.stream.as_mut() else { return Ok(()) };
        while self.written < self.out.len() {
            match stream.write(&self.out[self.written..]) {
                Ok(0) => return Err(Dead("connection closed")),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Dead("write failed")),
            }
        }
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
            // A reconnect storm's subscriptions and reads are not kept as idle capacity.
            self.out.shrink_to(KEPT_BUFFER);
        }
        Ok(())
    }

    /// Frees the buffers if they are drained.
    pub(super) fn release_buffers(&mut self) {
        slack::release_vec(&mut self.out);
        slack::release_vec(&mut self.input);
    }

    /// A poll event for this link: finishes a connect, reads and parses replies into `replies`.
    pub(super) fn on_event(&mut self, replies: &mut Vec<Reply>, now: Instant) -> Result<(), Dead> {
        let Some(stream) = self.stream.as_mut() else { return Ok(()) };
        if let Phase::Connecting { .. } = self.phase {
            match stream.take_error() {
                Ok(None) => {}
                _ => return Err(Dead("connect failed")),
            }
            match stream.peer_addr() {
                Ok(_) => {
                    self.phase = Phase::Up;
                    self.backoff = MIN_BACKOFF;
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(_) => return Err(Dead("connect failed")),
            }
        }
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => return Err(Dead("Redis closed the connection")),
                Ok(n) => {
                    self.input.extend_from_slice(&chunk[..n]);
                    self.last_rx = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Dead("read failed")),
            }
        }
        let mut used = 0;
        while let Some((reply, n)) = resp::parse(&self.input[used..]).map_err(|_| Dead("not RESP"))? {
            replies.push(reply);
            used += n;
        }
        self.input.drain(..used);
        self.input.shrink_to(KEPT_BUFFER.max(self.input.len()));
        self.flush()
    }

    /// Whether Redis is overdue: an owed reply or the connect older than `timeout`.
    pub(super) fn check_overdue(&self, now: Instant, timeout: Duration) -> Result<(), Dead> {
        let asked = match self.phase {
            Phase::Connecting { since } => Some(since),
            Phase::Up => self.owed.front().copied(),
            Phase::Down { .. } => None,
        };
        match asked {
            Some(at) if now.duration_since(at) > timeout => Err(Dead("Redis did not answer in time")),
            _ => Ok(()),
        }
    }

    /// An idle link should be pinged: nothing owed and nothing heard for half the timeout.
    pub(super) fn wants_ping(&self, now: Instant, timeout: Duration) -> bool {
        self.phase == Phase::Up && self.owed.is_empty() && now.duration_since(self.last_rx) >= timeout / 2
    }

    /// Drops the connection; the next attempt is after a growing backoff.
    pub(super) fn drop_connection(&mut self, registry: &Registry, now: Instant) {
        if let Some(mut stream) = self.stream.take() {
            let _ = registry.deregister(&mut stream);
        }
        self.phase = Phase::Down { retry_at: now + self.backoff };
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.out.clear();
        self.written = 0;
        self.input.clear();
        self.owed.clear();
    }

    /// When the bridge must next look at this link without an event (retry, timeout, ping).
    pub(super) fn next_deadline(&self, timeout: Duration) -> Option<Instant> {
        match self.phase {
            Phase::Down { retry_at } => Some(retry_at),
            Phase::Connecting { since } => Some(since + timeout),
            Phase::Up => Some(match self.owed.front() {
                Some(&asked) => asked + timeout,
                None => self.last_rx + timeout / 2,
            }),
        }
    }
}
