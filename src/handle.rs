//! The cheap cross-thread side of the engine: [`ServerHandle`] (cloneable, thread-safe, passed to
//! every callback), the state it shares with the I/O threads, and the [`Command`]s it queues to
//! them.
//!
//! The handle's methods run on the caller's thread and never touch a socket: work for a connection
//! is queued to the I/O thread that owns it, which is woken through its `mio::Waker`.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use crate::codec::{self, Frame, Opcode};
use crate::config::Config;
use crate::conn_id::{self, LiveTable};
use crate::error::Error;
use crate::history::{History, Limits, Position};
use crate::ip_limits::IpLimits;
use crate::jwt::JwtVerifier;
use crate::registry::{Registry, UserCheck};
use crate::request::UpgradeDecision;
use crate::stats::{Stats, ThreadStats};
use crate::types::{check_user_id, ConnId, MessageKind};

/// Work queued to an I/O thread by other threads (and by callbacks on this one).
pub(crate) enum Command {
    /// Queue a framed message to one connection (publish, send); `stream` is its position in the
    /// user's stream (publish with history on), which `wspush.v1` connections are told.
    Deliver { conn: ConnId, frame: Frame, stream: Option<Position>, user_check: UserCheck },
    /// Queue a framed message to every open connection of this thread.
    Broadcast { frame: Frame },
    /// Start the close handshake.
    Close { conn: ConnId, code: u16, reason: Box<str>, user_check: UserCheck },
    /// The host's late answer to a deferred upgrade.
    Decide { conn: ConnId, decision: UpgradeDecision },
    /// Graceful stop.
    Stop,
}

/// I/O threads (at most 255) owed a wake-up.
#[derive(Default)]
struct Wakes([u64; 4]);

impl Wakes {
    fn add(&mut self, thread: usize) {
        self.0[thread / 64] |= 1 << (thread % 64);
    }

    fn wake(&self, threads: &[ThreadShared]) {
        for (thread, shared) in threads.iter().enumerate() {
            if self.0[thread / 64] & (1 << (thread % 64)) != 0 {
                shared.wake();
            }
        }
    }
}

/// What [`ServerHandle::publish_with_offset`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// Connections the message was queued to.
    pub delivered: usize,
    /// Its offset in the user's stream; `None` with history off.
    pub offset: Option<u64>,
}

/// `user_check` of commands addressed by connection ID rather than by user.
pub(crate) const ANY_USER: UserCheck = 0;

const RUNNING: u8 = 0;
const STOPPING: u8 = 1;
/// An I/O thread panicked (an engine bug): the server stops and calls return `Error::Failed`.
const FAILED: u8 = 2;

/// State shared by the handle(s) and the I/O threads.
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// Keeps the host's handler (the `Arc<dyn Handler>` the I/O threads call) alive as long as
    /// any handle, as it always has been. Typed by its auto traits only: the `Handler` trait
    /// takes a `ServerHandle`, so naming it here would make this module and `handler` import
    /// each other.
    _handler: Box<dyn Send + Sync>,
    pub(crate) local_addr: SocketAddr,
    pub(crate) threads: Box<[ThreadShared]>,
    pub(crate) registry: Registry,
    state: AtomicU8,
    joins: Mutex<Vec<JoinHandle<()>>>,
    publishes: AtomicU64,
    broadcasts: AtomicU64,
    /// Accepted sockets not yet closed (handshaking, open or closing), for `max_connections`.
    pub(crate) open_sockets: AtomicUsize,
    /// Built-in token authentication, when `Config::jwt_hs256_secret` is set.
    pub(crate) jwt: Option<JwtVerifier>,
    /// Per-client-address limits, when configured.
    pub(crate) ip_limits: Option<IpLimits>,
    /// Bytes all connections hold for incomplete frames and messages.
    pub(crate) partial_input_bytes: AtomicUsize,
    /// `config.max_connections`, capped to what RLIMIT_NOFILE allows.
    pub(crate) max_connections: usize,
    /// Per-user history, when `config.history_max_messages` > 0.
    pub(crate) history: Option<History>,
}

/// The part of an I/O thread that other threads talk to.
pub(crate) struct ThreadShared {
    inbox: Mutex<Vec<Command>>,
    waker: mio::Waker,
    pub(crate) live: LiveTable,
    pub(crate) stats: ThreadStats,
}

impl ThreadShared {
    pub(crate) fn new(waker: mio::Waker) -> ThreadShared {
        ThreadShared {
            inbox: Mutex::new(Vec::new()),
            waker,
            live: LiveTable::with_first_chunk(),
            stats: ThreadStats::default(),
        }
    }

    /// Queues a command and wakes the thread if its inbox was empty (one wake per batch).
    pub(crate) fn push(&self, command: Command) {
        if self.enqueue(command) {
            self.wake();
        }
    }

    /// Queues a command; true when the thread must then be woken (`wake`): its inbox was empty
    /// and the caller is not the thread itself. Lets a caller holding a lock wake after
    /// releasing it, so the wake-up syscall does not lengthen the lock's hold.
    pub(crate) fn enqueue(&self, command: Command) -> bool {
        let was_empty = {
            let mut inbox = self.inbox.lock();
            inbox.push(command);
            inbox.len() == 1
        };
        // The owning thread drains its inbox after every round of events, so a command it queues
        // to itself (a callback answering its own connection) needs no wake-up syscall.
        was_empty && !OWNING_IO_THREAD.with(|current| std::ptr::eq(current.get(), self))
    }

    pub(crate) fn wake(&self) {
        // A failed wake means the poller is gone, i.e. the thread has exited; nothing to do.
        let _ = self.waker.wake();
    }

    /// Whether commands are waiting (the owning thread queues to itself without a wake-up).
    pub(crate) fn has_commands(&self) -> bool {
        !self.inbox.lock().is_empty()
    }

    /// Moves every queued command into `batch` (which the I/O thread reuses between rounds).
    pub(crate) fn take_inbox(&self, batch: &mut Vec<Command>) {
        std::mem::swap(&mut *self.inbox.lock(), batch);
    }
}

impl Shared {
    /// `handler` is only kept alive here (see `_handler`); `threads` are the I/O threads' shared
    /// parts, in thread order.
    pub(crate) fn new(
        config: Config,
        handler: Box<dyn Send + Sync>,
        local_addr: SocketAddr,
        threads: Box<[ThreadShared]>,
        max_connections: usize,
    ) -> Shared {
        Shared {
            _handler: handler,
            local_addr,
            threads,
            registry: Registry::new(),
            state: AtomicU8::new(RUNNING),
            joins: Mutex::new(Vec::new()),
            publishes: AtomicU64::new(0),
            broadcasts: AtomicU64::new(0),
            open_sockets: AtomicUsize::new(0),
            jwt: config.jwt_hs256_secret.as_ref().map(|secret| JwtVerifier::new(secret.expose(), config.jwt_leeway)),
            ip_limits: IpLimits::new(&config),
            partial_input_bytes: AtomicUsize::new(0),
            max_connections,
            history: (config.history_max_messages > 0).then(|| {
                History::in_memory(Limits {
                    max_messages: config.history_max_messages,
                    ttl: config.history_ttl,
                    max_bytes: config.history_max_bytes,
                })
            }),
            config,
        }
    }
}

thread_local! {
    /// The server whose I/O thread this is (null elsewhere): lets `stop()` avoid joining itself.
    pub(crate) static ENGINE_OF_THIS_THREAD: Cell<*const Shared> = const { Cell::new(std::ptr::null()) };
    /// This I/O thread's own `ThreadShared` (null elsewhere).
    pub(crate) static OWNING_IO_THREAD: Cell<*const ThreadShared> = const { Cell::new(std::ptr::null()) };
}

/// A cloneable handle to a running server. All methods are thread-safe, never block on I/O, and
/// may be called from inside callbacks.
#[derive(Clone)]
pub struct ServerHandle {
    pub(crate) shared: Arc<Shared>,
}

impl ServerHandle {
    /// Hands a started I/O thread to `stop`, which joins it.
    pub(crate) fn add_thread(&self, join: JoinHandle<()>) {
        self.shared.joins.lock().push(join);
    }

    fn ensure_running(&self) -> Result<(), Error> {
        match self.shared.state.load(Ordering::Acquire) {
            RUNNING => Ok(()),
            FAILED => Err(Error::Failed),
            _ => Err(Error::Stopped),
        }
    }

    /// Called by an I/O thread that panicked: marks the server failed and asks every thread to
    /// stop (the one calling is already leaving its loop).
    pub(crate) fn fail(&self) {
        if self.shared.state.compare_exchange(RUNNING, FAILED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            for thread in self.shared.threads.iter() {
                thread.push(Command::Stop);
            }
        }
    }

    fn thread_of(&self, conn: ConnId) -> Option<&ThreadShared> {
        let (thread, slot, generation) = conn_id::split(conn);
        let owner = self.shared.threads.get(thread)?;
        owner.live.is_live(slot, generation).then_some(owner)
    }

    fn check_payload(&self, payload: &[u8]) -> Result<(), Error> {
        if payload.len() > self.shared.config.max_queue_bytes {
            Err(Error::MessageTooLarge)
        } else {
            Ok(())
        }
    }

    /// The address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Sends `payload` to every open connection of `user`. Returns how many connections it was
    /// queued to (0 when the user has none). The payload is framed once and shared.
    pub fn publish(&self, user: &[u8], payload: &[u8], kind: MessageKind) -> Result<usize, Error> {
        self.publish_with_offset(user, payload, kind).map(|published| published.delivered)
    }

    /// [`publish`](Self::publish), also telling the offset the message got in the user's stream
    /// when history is on (`Config::history_max_messages`). The offset is assigned whether or
    /// not the user has a connection: a client that reconnects with `since` gets it then.
    pub fn publish_with_offset(&self, user: &[u8], payload: &[u8], kind: MessageKind) -> Result<Published, Error> {
        check_user_id(user)?;
        self.check_payload(payload)?;
        self.ensure_running()?;
        self.shared.publishes.fetch_add(1, Ordering::Relaxed);
        let history = self.shared.history.as_ref();
        // Held until the message is queued to every connection: see src/history/mod.rs.
        let order = history.map(|history| history.order_lock(user));
        let stream = history.map(|history| history.store().append(user, kind, payload));
        #[cfg(feature = "test-hooks")]
        if stream.is_some() {
            crate::test_hooks::race_point(crate::test_hooks::RacePoint::PublishAppended);
        }
        let mut frame: Option<Frame> = None;
        let mut wakes = Wakes::default();
        let delivered = self.shared.registry.for_each_conn(user, |conn, user_check| {
            let (thread, _, _) = conn_id::split(conn);
            let frame = frame.get_or_insert_with(|| codec::encode(Opcode::from(kind), payload)).clone();
            if self.shared.threads[thread].enqueue(Command::Deliver { conn, frame, stream, user_check }) {
                wakes.add(thread);
            }
        });
        // Outside the locks: a publisher preempted in the wake-up syscall holds up nobody.
        drop(order);
        wakes.wake(&self.shared.threads);
        Ok(Published { delivered, offset: stream.map(|position| position.offset) })
    }

    /// Sends `payload` to every open connection. Returns how many connections were open.
    pub fn broadcast(&self, payload: &[u8], kind: MessageKind) -> Result<usize, Error> {
        self.check_payload(payload)?;
        self.ensure_running()?;
        self.shared.broadcasts.fetch_add(1, Ordering::Relaxed);
        let frame = codec::encode(Opcode::from(kind), payload);
        let mut count = 0;
        for thread in self.shared.threads.iter() {
            count += thread.stats.connections.load(Ordering::Relaxed) as usize;
            thread.push(Command::Broadcast { frame: frame.clone() });
        }
        Ok(count)
    }

    /// Sends `payload` to one connection. `Err(NotFound)` when it is not open (IDs of closed
    /// connections are never reused, so a stale ID can't reach a new connection).
    pub fn send(&self, conn: ConnId, payload: &[u8], kind: MessageKind) -> Result<(), Error> {
        self.check_payload(payload)?;
        self.ensure_running()?;
        let owner = self.thread_of(conn).ok_or(Error::NotFound)?;
        let frame = codec::encode(Opcode::from(kind), payload);
        owner.push(Command::Deliver { conn, frame, stream: None, user_check: ANY_USER });
        Ok(())
    }

    /// Starts the close handshake on one connection with `code` and a UTF-8 `reason` (≤ 123 bytes).
    pub fn close(&self, conn: ConnId, code: u16, reason: &str) -> Result<(), Error> {
        if !codec::is_valid_close_code(code) {
            return Err(Error::InvalidCloseCode);
        }
        if reason.len() > codec::MAX_CLOSE_REASON {
            return Err(Error::InvalidCloseReason);
        }
        self.ensure_running()?;
        let owner = self.thread_of(conn).ok_or(Error::NotFound)?;
        owner.push(Command::Close { conn, code, reason: reason.into(), user_check: ANY_USER });
        Ok(())
    }

    /// Closes every connection of `user` with `code`. Returns how many were asked to close.
    pub fn disconnect_user(&self, user: &[u8], code: u16) -> Result<usize, Error> {
        check_user_id(user)?;
        if !codec::is_valid_close_code(code) {
            return Err(Error::InvalidCloseCode);
        }
        self.ensure_running()?;
        Ok(self.shared.registry.for_each_conn(user, |conn, user_check| {
            let (thread, _, _) = conn_id::split(conn);
            self.shared.threads[thread].push(Command::Close { conn, code, reason: Box::default(), user_check });
        }))
    }

    /// Completes a deferred upgrade (see `UpgradeDecision::Defer`) by accepting it as `user`.
    pub fn accept_upgrade(&self, ticket: ConnId, user: &[u8]) -> Result<(), Error> {
        check_user_id(user)?;
        self.decide(ticket, UpgradeDecision::Accept(user.to_vec()))
    }

    /// Completes a deferred upgrade by answering HTTP `status` (400-599) and closing.
    pub fn reject_upgrade(&self, ticket: ConnId, status: u16) -> Result<(), Error> {
        if !(400..=599).contains(&status) {
            return Err(Error::InvalidStatus);
        }
        self.decide(ticket, UpgradeDecision::Reject(status))
    }

    fn decide(&self, ticket: ConnId, decision: UpgradeDecision) -> Result<(), Error> {
        self.ensure_running()?;
        let owner = self.thread_of(ticket).ok_or(Error::NotFound)?;
        owner.push(Command::Decide { conn: ticket, decision });
        Ok(())
    }

    /// A snapshot of gauges and counters.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        for thread in self.shared.threads.iter() {
            thread.stats.add_to(&mut stats);
        }
        stats.users = self.shared.registry.user_count() as u64;
        stats.publishes_total = self.shared.publishes.load(Ordering::Relaxed);
        stats.broadcasts_total = self.shared.broadcasts.load(Ordering::Relaxed);
        stats.partial_input_bytes = self.shared.partial_input_bytes.load(Ordering::Relaxed) as u64;
        stats.max_connections = self.shared.max_connections as u64;
        if let Some(history) = &self.shared.history {
            let gauges = history.store().gauges();
            stats.history_users = gauges.users;
            stats.history_messages = gauges.messages;
            stats.history_bytes = gauges.bytes;
        }
        stats
    }

    /// Graceful stop: stop accepting, send 1001 to every connection, flush for up to
    /// `drain_timeout`, fire `on_close` for every open connection, join the I/O threads.
    /// Calling it again is harmless. Called from inside a callback it only starts the stop (an
    /// I/O thread cannot join itself); the threads finish on their own.
    pub fn stop(&self) {
        if self.shared.state.compare_exchange(RUNNING, STOPPING, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            for thread in self.shared.threads.iter() {
                thread.push(Command::Stop);
            }
        }
        let on_engine_thread = ENGINE_OF_THIS_THREAD.with(|engine| std::ptr::eq(engine.get(), &*self.shared));
        if on_engine_thread {
            return;
        }
        // Joining under the lock makes a concurrent second stop() wait for the same threads.
        let mut joins = self.shared.joins.lock();
        for join in joins.drain(..) {
            // A thread that panicked has already torn down its connections; nothing more to do.
            let _ = join.join();
        }
    }

    /// Whether `stop` has been called (or the server failed: see `Error::Failed`).
    pub fn is_stopped(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) != RUNNING
    }
}
