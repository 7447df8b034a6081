//! One I/O thread: its own epoll (`mio::Poll`), listener, slab of connections, timer wheel and
//! read scratch buffer. Other threads reach it only through its inbox of `Command`s.
//! - `accept.rs`: taking connections from the listener into the slab and out of it again;
//! - `dispatch.rs`: socket events and commands, routed to the connections they are for.

mod accept;
mod dispatch;

use std::io;
use std::net::TcpListener as StdTcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::codec::{close, Frame};
use crate::connection::{Conn, Context, State};
use crate::guard::guarded;
use crate::handle::{Command, ServerHandle, ENGINE_OF_THIS_THREAD, OWNING_IO_THREAD};
use crate::handler::Handler;
use crate::timer::{self, Entry, TimerWheel};
use crate::{slack, socket};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Connection tokens are slab slots offset past the two fixed tokens.
const FIRST_CONN_TOKEN: usize = 2;
/// One read buffer per thread, shared by all its connections.
const SCRATCH_BYTES: usize = 64 * 1024;
/// Socket events handled per round. Commands (publishes) wait for the end of a round, so the
/// round must stay short even when a reconnect storm makes every event a handshake.
const EVENTS_PER_ROUND: usize = 64;
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
            conns: Slab::new(),
            cx: Context {
                index: self.index as usize,
                shared: server.shared.clone(),
                server,
                handler,
                wheel,
                ticks,
                handshakes: 0,
                accept_pending: false,
                accept_after_close: false,
                again: Vec::new(),
                ip_keys: Vec::new(),
                partial_inputs: Vec::new(),
                awaiting_welcome: Default::default(),
            },
            poll: self.poll,
            listener: Some(self.listener),
            scratch: resident_buffer(SCRATCH_BYTES),
            last_v1: None,
            next_generation: 1,
            drain_deadline: None,
            next_housekeeping: Instant::now(),
            ip_sweeps: 0,
            next_partial_sweep: Instant::now(),
            reserve_fd: socket::reserve_descriptor(),
        };
        if guarded(|| io.event_loop()).is_none() {
            // A bug in the engine: this thread's state can't be trusted, and a server silently
            // missing a thread (its connections, its share of the listener) is worse than a
            // stopped one. Fail the server: calls return Failed (PANIC in C), the other threads
            // stop gracefully, and the host restarts it.
            eprintln!("wspush: I/O thread {} panicked; the server is stopping (calls now fail)", io.cx.index);
            io.cx.server.fail();
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
    /// Swapped with `Context::again` each round.
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

/// An I/O thread's state: the slab of connections apart from the context they work in, so that
/// one connection and the context can be borrowed at once.
pub(crate) struct IoThread {
    conns: Slab<Conn>,
    cx: Context,
    poll: Poll,
    listener: Option<TcpListener>,
    scratch: Box<[u8]>,
    /// The last message put in its `wspush.v1` form, (raw frame, v1 frame): the tabs of a user on
    /// this thread share one JSON frame. Cleared after each batch of commands.
    last_v1: Option<(Frame, Frame)>,
    next_generation: u32,
    drain_deadline: Option<Instant>,
    next_housekeeping: Instant,
    ip_sweeps: usize,
    next_partial_sweep: Instant,
    /// See `socket::reserve_descriptor`.
    reserve_fd: Option<std::os::fd::OwnedFd>,
}

impl IoThread {
    fn event_loop(&mut self) {
        let mut events = Events::with_capacity(EVENTS_PER_ROUND);
        let mut round = RoundBuffers::default();
        loop {
            let idle = self.cx.again.is_empty() && !self.can_accept() && !self.cx.me().has_commands();
            let timeout = if idle { self.cx.wheel.timeout().max(Duration::from_millis(1)) } else { Duration::ZERO };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    eprintln!("wspush: poll failed on I/O thread {}: {e}", self.cx.index);
                    return;
                }
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.cx.accept_pending = true,
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
            std::mem::swap(&mut round.again, &mut self.cx.again);
            for slot in round.again.drain(..) {
                self.on_readable(slot, true); // its earlier event may have carried a FIN
            }
            self.cx.me().take_inbox(&mut round.inbox);
            self.run_commands(&mut round.inbox, &mut round.broadcasts);
            if self.can_accept() {
                self.accept();
            }
            let now = self.cx.wheel.now();
            self.cx.wheel.expire(now, &mut round.due);
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

    fn on_timer(&mut self, entry: Entry, now: u32) {
        let (slot, epoch, generation) = timer::split(entry);
        // The connection this entry was for may be gone, or the entry replaced.
        let Some(conn) = self.conns.get_mut(slot).filter(|c| c.is_timer_entry(epoch, generation)) else { return };
        let step = conn.on_timer(&mut self.cx, slot, now);
        self.settle(slot, step);
    }

    /// Closes (1008) connections whose incomplete frame or message has passed `message_timeout`;
    /// forgets those that completed it.
    fn sweep_partial_inputs(&mut self) {
        if self.cx.partial_inputs.is_empty() {
            return;
        }
        let now = Instant::now();
        if now < self.next_partial_sweep {
            return;
        }
        self.next_partial_sweep = now + PARTIAL_SWEEP;
        let tick = self.cx.wheel.now();
        let mut i = 0;
        while i < self.cx.partial_inputs.len() {
            let (slot, generation) = self.cx.partial_inputs[i];
            let Some(conn) = self.conns.get_mut(slot).filter(|c| c.generation() == generation) else {
                self.cx.partial_inputs.swap_remove(i);
                continue;
            };
            match conn.partial_input_since() {
                Some(since) if tick >= since + self.cx.ticks.message => {
                    self.cx.partial_inputs.swap_remove(i);
                    let step = conn.message_timed_out(&mut self.cx, slot);
                    self.settle(slot, step);
                }
                Some(_) => i += 1,
                None => {
                    conn.untrack_partial_input();
                    self.cx.partial_inputs.swap_remove(i);
                }
            }
        }
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
        if let (Some(history), 0) = (&self.cx.shared.history, self.cx.index) {
            history.store().expire();
        }
        if let Some(limits) = &self.cx.shared.ip_limits {
            limits.sweep(self.ip_sweeps * self.cx.shared.threads.len() + self.cx.index);
            self.ip_sweeps = self.ip_sweeps.wrapping_add(1);
        }
        if self.conns.len() * 4 <= self.conns.capacity() {
            // Slots are connection IDs and epoll tokens, so only the vacant tail can go.
            self.conns.shrink_to_fit();
            // Slots past the slab's end hold no connection, hence nothing counted per address.
            self.cx.ip_keys.truncate(self.conns.capacity());
            slack::release_vec(&mut self.cx.ip_keys);
        }
        if self.conns.is_empty() {
            self.cx.wheel.clear();
        }
        slack::release_vec(&mut self.cx.again);
        slack::release_map(&mut self.cx.awaiting_welcome);
        round.release_slack();
    }

    fn begin_stop(&mut self) {
        if self.drain_deadline.is_some() {
            return;
        }
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.cx.accept_pending = false;
        let now = Instant::now();
        self.drain_deadline =
            Some(now.checked_add(self.cx.config().drain_timeout).unwrap_or(now + Duration::from_secs(86_400)));
        for slot in 0..self.conns.capacity() {
            let Some(conn) = self.conns.get_mut(slot) else { continue };
            match conn.state() {
                State::Open => {
                    let step = conn.start_close(&mut self.cx, slot, close::GOING_AWAY, "server shutting down");
                    self.settle(slot, step);
                }
                State::ProxyHeader | State::Handshake | State::Deciding => self.finish(slot, close::GOING_AWAY),
                State::Closing => {}
            }
        }
    }

    /// Closes whatever is left (drain deadline passed, or the loop ended), firing `on_close`.
    fn close_all(&mut self) {
        for slot in 0..self.conns.capacity() {
            if let Some(conn) = self.conns.get(slot) {
                let code = if conn.state() == State::Open { close::GOING_AWAY } else { conn.close_code() };
                self.finish(slot, code);
            }
        }
    }
}
