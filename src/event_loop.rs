//! One I/O thread: its own epoll (`mio::Poll`), listener, slab of connections, timer wheel and
//! read scratch buffer. Other threads reach it only through its inbox of [`Command`]s.

use std::io;
use std::net::IpAddr;
use std::net::TcpListener as StdTcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::codec::{close, Frame};
use crate::config::Config;
use crate::conn_id::{self, MAX_SLOTS};
use crate::connection::{Conn, State, PARTIAL_TRACKED};
use crate::guard::guarded;
use crate::handle::{Command, ServerHandle, Shared, ThreadShared, ANY_USER, ENGINE_OF_THIS_THREAD, OWNING_IO_THREAD};
use crate::handler::Handler;
use crate::ip_limits::{self, IpKey};
use crate::registry::UserCheck;
use crate::types::ConnId;
use crate::stats::bump;
use crate::timer::{self, Entry, Ticks, TimerWheel};
use crate::{handshake, slack, socket};

/// This thread's counters, borrowing only the `shared` field (so a connection may stay borrowed).
macro_rules! stats {
    ($io:expr) => {
        &$io.shared.threads[$io.index].stats
    };
}
pub(crate) use stats;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Connection tokens are slab slots offset past the two fixed tokens.
pub(crate) const FIRST_CONN_TOKEN: usize = 2;
/// One read buffer per thread, shared by all its connections.
const SCRATCH_BYTES: usize = 64 * 1024;
/// Reads per connection per round before others get a turn.
pub(crate) const READS_PER_ROUND: usize = 16;
/// Socket events handled per round. Commands (publishes) wait for the end of a round, so the
/// round must stay short even when a reconnect storm makes every event a handshake.
const EVENTS_PER_ROUND: usize = 64;
/// Sockets accepted per round, for the same reason; the rest are taken in the next rounds.
const ACCEPTS_PER_ROUND: usize = 16;
/// How often the deadlines of incomplete frames and messages are checked.
const PARTIAL_SWEEP: Duration = Duration::from_millis(100);

/// What `Server::start` builds before the shared state exists.
pub(crate) struct IoThreadSetup {
    index: u8,
    poll: Poll,
    listener: TcpListener,
}

impl IoThreadSetup {
    pub(crate) fn new(index: u8, listener: StdTcpListener) -> io::Result<(IoThreadSetup, Waker)> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        Ok((IoThreadSetup { index, poll, listener }, waker))
    }

    pub(crate) fn index(&self) -> u8 {
        self.index
    }

    /// The thread body.
    pub(crate) fn run(self, server: ServerHandle, handler: Arc<dyn Handler>) {
        ENGINE_OF_THIS_THREAD.with(|engine| engine.set(Arc::as_ptr(&server.shared)));
        OWNING_IO_THREAD.with(|me| me.set(&server.shared.threads[usize::from(self.index)]));
        let (wheel, ticks) = TimerWheel::new(&server.shared.config);
        let mut io = IoThread {
            index: self.index as usize,
            shared: server.shared.clone(),
            server,
            handler,
            poll: self.poll,
            listener: Some(self.listener),
            conns: Slab::new(),
            wheel,
            ticks,
            scratch: resident_buffer(SCRATCH_BYTES),
            next_generation: 1,
            handshakes: 0,
            accept_pending: false,
            accept_after_close: false,
            again: Vec::new(),
            drain_deadline: None,
            ip_keys: Vec::new(),
            next_housekeeping: Instant::now(),
            ip_sweeps: 0,
            partial_inputs: Vec::new(),
            next_partial_sweep: Instant::now(),
            reserve_fd: socket::reserve_descriptor(),
        };
        if guarded(|| io.event_loop()).is_none() {
            // A bug in the engine: this thread's state can't be trusted, and a server silently
            // missing a thread (its connections, its share of the listener) is worse than a
            // stopped one. Fail the server: calls return Failed (PANIC in C), the other threads
            // stop gracefully, and the host restarts it.
            eprintln!("wspush: I/O thread {} panicked; the server is stopping (calls now fail)", io.index);
            io.server.fail();
        }
        io.close_all();
    }
}

/// A zeroed buffer whose pages are made resident now: the scratch buffer is part of the
/// server's fixed footprint, paid at start rather than showing up on the first connections.
fn resident_buffer(len: usize) -> Box<[u8]> {
    let mut buffer = vec![0u8; len].into_boxed_slice();
    for page in buffer.chunks_mut(4096) {
        // calloc'd pages may still be unmapped; a write the optimizer can't drop maps them.
        page[0] = std::hint::black_box(0);
    }
    buffer
}

/// The vectors a round works in, kept from round to round so a round allocates nothing.
#[derive(Default)]
struct RoundBuffers {
    inbox: Vec<Command>,
    due: Vec<Entry>,
    /// Swapped with `IoThread::again` each round.
    again: Vec<usize>,
    broadcasts: Vec<Frame>,
}

impl RoundBuffers {
    fn release_slack(&mut self) {
        slack::release_vec(&mut self.inbox);
        slack::release_vec(&mut self.due);
        slack::release_vec(&mut self.again);
        slack::release_vec(&mut self.broadcasts);
    }
}

pub(crate) struct IoThread {
    pub(crate) index: usize,
    pub(crate) shared: Arc<Shared>,
    pub(crate) server: ServerHandle,
    /// The host's callbacks.
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) poll: Poll,
    listener: Option<TcpListener>,
    pub(crate) conns: Slab<Conn>,
    pub(crate) wheel: TimerWheel,
    pub(crate) ticks: Ticks,
    pub(crate) scratch: Box<[u8]>,
    next_generation: u32,
    /// Connections of this thread not yet upgraded.
    pub(crate) handshakes: usize,
    /// The listener may hold connections we left there (handshake limit, out of descriptors).
    pub(crate) accept_pending: bool,
    /// Accepting failed for lack of descriptors: retry when a connection closes.
    pub(crate) accept_after_close: bool,
    /// Connections that still had input when their read budget ran out.
    pub(crate) again: Vec<usize>,
    drain_deadline: Option<Instant>,
    /// With per-address limits on: the address each slot's connection is counted under.
    pub(crate) ip_keys: Vec<IpKey>,
    next_housekeeping: Instant,
    ip_sweeps: usize,
    /// Connections holding an incomplete frame or message, as (slot, generation): each must
    /// complete within `message_timeout`. Flagged `PARTIAL_TRACKED` while listed.
    pub(crate) partial_inputs: Vec<(usize, u32)>,
    next_partial_sweep: Instant,
    /// See `socket::reserve_descriptor`.
    reserve_fd: Option<std::os::fd::OwnedFd>,
}

impl IoThread {
    pub(crate) fn me(&self) -> &ThreadShared {
        &self.shared.threads[self.index]
    }

    pub(crate) fn config(&self) -> &Config {
        &self.shared.config
    }

    fn event_loop(&mut self) {
        let mut events = Events::with_capacity(EVENTS_PER_ROUND);
        let mut round = RoundBuffers::default();
        loop {
            let idle = self.again.is_empty() && !self.can_accept() && !self.me().has_commands();
            let timeout = if idle { self.wheel.timeout().max(Duration::from_millis(1)) } else { Duration::ZERO };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    eprintln!("wspush: poll failed on I/O thread {}: {e}", self.index);
                    return;
                }
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_pending = true,
                    WAKER => {}
                    Token(token) => {
                        let slot = token - FIRST_CONN_TOKEN;
                        if event.is_writable() {
                            self.on_writable(slot);
                        }
                        let hangup = event.is_read_closed() || event.is_error();
                        if event.is_readable() || hangup {
                            self.on_readable(slot, hangup);
                        }
                    }
                }
            }
            std::mem::swap(&mut round.again, &mut self.again);
            for slot in round.again.drain(..) {
                self.on_readable(slot, true); // its earlier event may have carried a FIN
            }
            self.me().take_inbox(&mut round.inbox);
            self.run_commands(&mut round.inbox, &mut round.broadcasts);
            if self.can_accept() {
                self.accept();
            }
            let now = self.wheel.now();
            self.wheel.expire(now, &mut round.due);
            for entry in round.due.drain(..) {
                self.on_timer(entry, now);
            }
            self.sweep_partial_inputs();
            self.housekeeping(&mut round);
            if let Some(deadline) = self.drain_deadline {
                if self.conns.is_empty() || Instant::now() >= deadline {
                    return;
                }
            }
        }
    }

    /// Executes `commands` in order (draining it); back-to-back broadcasts reach each connection
    /// in one sendmsg.
    fn run_commands(&mut self, commands: &mut Vec<Command>, broadcasts: &mut Vec<Frame>) {
        let mut commands = commands.drain(..).peekable();
        while let Some(command) = commands.next() {
            if let Command::Broadcast { frame } = command {
                broadcasts.push(frame);
                while let Some(Command::Broadcast { .. }) = commands.peek() {
                    if let Some(Command::Broadcast { frame }) = commands.next() {
                        broadcasts.push(frame);
                    }
                }
                self.broadcast(broadcasts);
                broadcasts.clear();
            } else {
                self.execute(command);
            }
        }
    }

    /// Executes what callbacks on this thread queued so far, now rather than at the end of the
    /// round: before a connection closes because of input that followed a message, the host's
    /// answer to that message must go out first.
    pub(crate) fn run_queued_commands(&mut self) {
        if self.me().has_commands() {
            let (mut commands, mut broadcasts) = (Vec::new(), Vec::new());
            self.me().take_inbox(&mut commands);
            self.run_commands(&mut commands, &mut broadcasts);
        }
    }

    /// Closes (1008) connections whose incomplete frame or message has passed `message_timeout`;
    /// forgets those that completed it.
    fn sweep_partial_inputs(&mut self) {
        if self.partial_inputs.is_empty() {
            return;
        }
        let now = Instant::now();
        if now < self.next_partial_sweep {
            return;
        }
        self.next_partial_sweep = now + PARTIAL_SWEEP;
        let tick = self.wheel.now();
        let mut i = 0;
        while i < self.partial_inputs.len() {
            let (slot, generation) = self.partial_inputs[i];
            let Some(conn) = self.conns.get_mut(slot).filter(|c| c.generation == generation) else {
                self.partial_inputs.swap_remove(i);
                continue;
            };
            match conn.partial_input_since().filter(|_| conn.state == State::Open) {
                Some(since) if tick >= since + self.ticks.message => {
                    conn.flags &= !PARTIAL_TRACKED;
                    self.partial_inputs.swap_remove(i);
                    bump(&stats!(self).message_timeouts_total, 1);
                    let frame = crate::codec::close_frame(close::POLICY, "message not completed in time");
                    self.enter_closing(slot, close::POLICY, frame.as_bytes());
                }
                Some(_) => i += 1,
                None => {
                    conn.flags &= !PARTIAL_TRACKED;
                    self.partial_inputs.swap_remove(i);
                }
            }
        }
    }

    fn execute(&mut self, command: Command) {
        #[cfg(feature = "test-hooks")]
        crate::test_hooks::io_thread_point();
        match command {
            Command::Deliver { conn, frame, user_check } => {
                if let Some(slot) = self.lookup(conn, State::Open, user_check) {
                    self.queue_messages(slot, &[frame]);
                }
            }
            Command::Broadcast { frame } => self.broadcast(&[frame]),
            Command::Close { conn, code, reason, user_check } => {
                if let Some(slot) = self.lookup(conn, State::Open, user_check) {
                    self.start_close(slot, code, &reason);
                }
            }
            Command::Decide { conn, decision } => {
                if let Some(slot) = self.lookup(conn, State::Deciding, ANY_USER) {
                    self.decide(slot, decision);
                }
            }
            Command::Stop => self.begin_stop(),
        }
    }

    /// Sends `frames`, in order, to every open connection of this thread.
    fn broadcast(&mut self, frames: &[Frame]) {
        for slot in 0..self.conns.capacity() {
            if self.conns.get(slot).is_some_and(|c| c.state == State::Open) {
                self.queue_messages(slot, frames);
            }
        }
    }

    /// The slot of connection `id` if it is still alive, in `state`, and (unless `ANY_USER`)
    /// belongs to the user `user_check` was computed for.
    fn lookup(&self, id: ConnId, state: State, user_check: UserCheck) -> Option<usize> {
        let (thread, slot, generation) = conn_id::split(id);
        let conn = self.conns.get(slot)?;
        let alive = thread == self.index && conn.generation == generation && conn.state == state;
        let users_match =
            user_check == ANY_USER || conn.user().is_some_and(|user| self.shared.registry.check(user) == user_check);
        (alive && users_match).then_some(slot)
    }

    pub(crate) fn conn_id(&self, slot: usize) -> ConnId {
        conn_id::make(self.index, slot, self.conns[slot].generation)
    }

    /// The listener may hold connections and this thread may take them now. At the handshake
    /// limit (storm control) the rest wait in the kernel's backlog; `leave_handshake` resumes.
    fn can_accept(&self) -> bool {
        self.accept_pending && self.handshakes < self.config().max_handshakes_per_thread
    }

    fn accept(&mut self) {
        for _ in 0..ACCEPTS_PER_ROUND {
            if !self.can_accept() {
                return;
            }
            let Some(listener) = &self.listener else { return };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer.ip()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.accept_pending = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if socket::is_out_of_descriptors(&e) && self.refuse_with_reserve() => {}
                Err(_) => {
                    // Out of descriptors or memory: the listener stays readable (level state in
                    // the kernel), so stop for now and try again when the next socket closes
                    // or a new connection arrives, instead of spinning on the error.
                    self.accept_pending = false;
                    self.accept_after_close = true;
                    return;
                }
            }
        }
    }

    /// Out of descriptors: frees the reserve descriptor to take one waiting client, answers it
    /// 503 and closes it, then takes the reserve back. False when there is no reserve to use
    /// (another thread took the freed number first): then wait for a socket to close.
    fn refuse_with_reserve(&mut self) -> bool {
        let (Some(listener), Some(reserve)) = (&self.listener, self.reserve_fd.take()) else { return false };
        drop(reserve);
        let refused = match listener.accept() {
            Ok((stream, _)) => {
                bump(&stats!(self).accepted_total, 1);
                self.refuse_over_capacity(stream);
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.accept_pending = false;
                true
            }
            Err(_) => false,
        };
        self.reserve_fd = socket::reserve_descriptor();
        refused && self.reserve_fd.is_some()
    }

    /// Answers 503 to a socket the server has no room for and closes it.
    fn refuse_over_capacity(&mut self, mut stream: mio::net::TcpStream) {
        bump(&stats!(self).over_capacity_total, 1);
        let _ = socket::send(std::os::fd::AsRawFd::as_raw_fd(&stream), &handshake::error_response(503));
        // Read what request already arrived, so that closing sends FIN rather than a reset that
        // could destroy the answer before the client reads it.
        let _ = std::io::Read::read(&mut stream, &mut self.scratch);
    }

    fn admit(&mut self, mut stream: mio::net::TcpStream, peer: IpAddr) {
        bump(&stats!(self).accepted_total, 1);
        let total = self.shared.open_sockets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if total >= self.shared.max_connections || self.conns.vacant_key() >= MAX_SLOTS {
            self.shared.open_sockets.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            return self.refuse_over_capacity(stream);
        }
        let _ = stream.set_nodelay(true);
        let slot = self.conns.vacant_key();
        let token = Token(slot + FIRST_CONN_TOKEN);
        if self.poll.registry().register(&mut stream, token, Interest::READABLE | Interest::WRITABLE).is_err() {
            self.shared.open_sockets.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.checked_add(1).unwrap_or(1);
        let now = self.wheel.now();
        self.conns.insert(Conn::new(stream, generation, now));
        self.me().live.set(slot, generation);
        // From a trusted balancer the client's address comes with its PROXY header: counted
        // per address then (src/proxy_protocol.rs).
        if !self.expects_proxy_header(slot, peer) && !self.limit_address(slot, peer) {
            // Answered now, in a lingering close that holds no handshake slot: idle sockets
            // from one address, refused, must not keep other addresses' clients waiting. (Not
            // counted as a handshake yet; closing moves it straight out of that state.)
            bump(&stats!(self).rejected_total, 1);
            return self.enter_closing(slot, close::ABNORMAL, &handshake::error_response(429));
        }
        self.handshakes += 1;
        bump(&stats!(self).handshakes, 1);
        self.arm_timer(slot, now + self.ticks.handshake);
    }

    /// Counts the connection under its client's address; false (and counted in
    /// `ip_limited_total`) when that address is over a per-address limit.
    pub(crate) fn limit_address(&mut self, slot: usize, peer: IpAddr) -> bool {
        let Some(limits) = &self.shared.ip_limits else { return true };
        let key = ip_limits::key_of(peer);
        if self.ip_keys.len() <= slot {
            self.ip_keys.resize(slot + 1, ip_limits::NOT_COUNTED);
        }
        if limits.admit(key).is_err() {
            bump(&stats!(self).ip_limited_total, 1);
            return false;
        }
        self.ip_keys[slot] = key;
        true
    }

    /// Once a second: the per-address limits forget one shard's idle entries, and tables sized
    /// for a peak that has passed (a storm, everyone leaving) give their memory back, so a
    /// server's footprint follows its connections down as well as up.
    fn housekeeping(&mut self, round: &mut RoundBuffers) {
        let now = Instant::now();
        if now < self.next_housekeeping {
            return;
        }
        self.next_housekeeping = now + Duration::from_secs(1);
        if let Some(limits) = &self.shared.ip_limits {
            limits.sweep(self.ip_sweeps * self.shared.threads.len() + self.index);
            self.ip_sweeps = self.ip_sweeps.wrapping_add(1);
        }
        if self.conns.len() * 4 <= self.conns.capacity() {
            // Slots are connection IDs and epoll tokens, so only the vacant tail can go.
            self.conns.shrink_to_fit();
            // Slots past the slab's end hold no connection, hence nothing counted per address.
            self.ip_keys.truncate(self.conns.capacity());
            slack::release_vec(&mut self.ip_keys);
        }
        if self.conns.is_empty() {
            self.wheel.clear();
        }
        slack::release_vec(&mut self.again);
        round.release_slack();
    }

    /// Schedules the connection's timer entry for `deadline` (the one entry it has).
    pub(crate) fn arm_timer(&mut self, slot: usize, deadline: u32) {
        let conn = &self.conns[slot];
        let entry = timer::entry(slot, conn.timer_epoch(), conn.generation);
        self.wheel.schedule(entry, deadline);
    }

    /// Replaces the connection's timer entry with one for an earlier `deadline`: the old entry
    /// becomes stale and is dropped when it comes due, so there is still one entry per connection.
    pub(crate) fn rearm_timer(&mut self, slot: usize, deadline: u32) {
        self.conns[slot].next_timer_epoch();
        self.arm_timer(slot, deadline);
    }

    fn on_timer(&mut self, entry: Entry, now: u32) {
        let (slot, epoch, generation) = timer::split(entry);
        let Some(conn) = self.conns.get_mut(slot) else { return };
        if conn.generation != generation || conn.timer_epoch() != epoch {
            return; // the connection this entry was for is gone, or the entry was replaced
        }
        let since = conn.last_rx;
        let (deadline, fire) = match conn.state {
            State::ProxyHeader | State::Handshake | State::Deciding => {
                (since + self.ticks.handshake, TimerAction::Timeout)
            }
            State::Open if conn.pinged() => (since + self.ticks.idle, TimerAction::Timeout),
            State::Open => (since + self.ticks.ping, TimerAction::Ping),
            State::Closing => (since + self.ticks.close, TimerAction::Finish),
        };
        if now < deadline {
            self.arm_timer(slot, deadline);
            return;
        }
        match fire {
            TimerAction::Ping => {
                conn.set_pinged();
                bump(&stats!(self).pings_total, 1);
                self.send_control(slot, crate::codec::control(crate::codec::Opcode::Ping, b"").as_bytes());
                if self.conns.contains(slot) {
                    // Check back one ping interval from now, not only at the idle deadline: if
                    // the pong comes, the next ping is then due ping_interval after it, instead
                    // of going out late (at the idle deadline) with little time left to answer.
                    self.arm_timer(slot, (since + self.ticks.idle).min(now + self.ticks.ping));
                }
            }
            TimerAction::Timeout => {
                bump(&stats!(self).timeouts_total, 1);
                self.finish(slot, close::ABNORMAL);
            }
            TimerAction::Finish => {
                let code = self.conns[slot].close_code;
                self.finish(slot, code);
            }
        }
    }

    fn begin_stop(&mut self) {
        if self.drain_deadline.is_some() {
            return;
        }
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.accept_pending = false;
        let now = Instant::now();
        self.drain_deadline =
            Some(now.checked_add(self.config().drain_timeout).unwrap_or(now + Duration::from_secs(86_400)));
        for slot in 0..self.conns.capacity() {
            match self.conns.get(slot).map(|c| c.state) {
                Some(State::Open) => self.start_close(slot, close::GOING_AWAY, "server shutting down"),
                Some(State::ProxyHeader | State::Handshake | State::Deciding) => self.finish(slot, close::GOING_AWAY),
                _ => {}
            }
        }
    }

    /// Closes whatever is left (drain deadline passed, or the loop ended), firing `on_close`.
    fn close_all(&mut self) {
        for slot in 0..self.conns.capacity() {
            if let Some(conn) = self.conns.get(slot) {
                let code = if conn.state == State::Open { close::GOING_AWAY } else { conn.close_code };
                self.finish(slot, code);
            }
        }
    }
}

enum TimerAction {
    Ping,
    Timeout,
    Finish,
}
