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
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::codec::{self, Frame, Opcode};
use crate::config::Config;
use crate::conn_id::{self, LiveTable};
use crate::error::Error;
use crate::history::{History, Limits, Position};
use crate::ip_limits::IpLimits;
use crate::jwt::JwtVerifier;
use crate::redis::{Outbox, Request};
use crate::registry::{Registry, UserCheck};
use crate::request::UpgradeDecision;
use crate::stats::{Stats, ThreadStats};
use crate::types::{check_user_id, ConnId, MessageKind, Published};

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
    /// With Redis: a `wspush.v1` connection's welcome (and replay), which it waited for; what
    /// was published to it meanwhile follows unless `top` already covers it.
    Welcome { conn: ConnId, frames: Vec<Frame>, top: Option<Position>, resume: ResumeOutcome },
    /// With Redis: history was lost under this `wspush.v1` connection (Redis lost its data, or
    /// the stream was trimmed past what this node had delivered): it is closed with 1012 so the
    /// client resumes and is told `recovered: false`. Ignored while it waits for its welcome
    /// (that welcome will say so) and by connections without `wspush.v1`.
    Reset { conn: ConnId },
    /// With Redis: name the users of this thread's open connections to the bridge again (it
    /// lost a subscriber connection and keeps no user IDs).
    Census,
    /// Graceful stop.
    Stop,
}

/// What became of a `wspush.v1` connection's `since` (counted in `Stats` by its I/O thread).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResumeOutcome {
    /// It sent no `since`.
    NotAsked,
    Recovered,
    NotRecovered,
}

/// I/O threads (at most 255) owed a wake-up.
#[derive(Default)]
pub(crate) struct Wakes([u64; 4]);

impl Wakes {
    pub(crate) fn add(&mut self, thread: usize) {
        self.0[thread / 64] |= 1 << (thread % 64);
    }

    pub(crate) fn wake(&self, threads: &[ThreadShared]) {
        for (thread, shared) in threads.iter().enumerate() {
            if self.0[thread / 64] & (1 << (thread % 64)) != 0 {
                shared.wake();
            }
        }
    }
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
    /// Per-user history, when `config.history_max_messages` > 0 (and no Redis: then Redis
    /// keeps it).
    pub(crate) history: Option<History>,
    /// The queue into the Redis bridge thread, when `config.redis_url` is set.
    pub(crate) redis: Option<Arc<Outbox>>,
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
        redis: Option<Arc<Outbox>>,
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
            history: (config.history_max_messages > 0 && redis.is_none()).then(|| {
                History::in_memory(Limits {
                    max_messages: config.history_max_messages,
                    ttl: config.history_ttl,
                    max_bytes: config.history_max_bytes,
                })
            }),
            redis,
            config,
        }
    }

    /// Queues a message to every connection of `user` on this node; `stream` is its position in
    /// the user's stream. Threads to wake are added to `wakes`, for the caller to wake once its
    /// locks are released. Returns how many connections it was queued to.
    pub(crate) fn queue_to_user(
        &self,
        user: &[u8],
        kind: MessageKind,
        payload: &[u8],
        stream: Option<Position>,
        wakes: &mut Wakes,
    ) -> usize {
        let mut frame: Option<Frame> = None;
        self.registry.for_each_conn(user, |conn, user_check| {
            let (thread, _, _) = conn_id::split(conn);
            let frame = frame.get_or_insert_with(|| codec::encode(Opcode::from(kind), payload)).clone();
            if self.threads[thread].enqueue(Command::Deliver { conn, frame, stream, user_check }) {
                wakes.add(thread);
            }
        })
    }

    /// Queues a broadcast to every connection of this node; returns how many were open.
    pub(crate) fn broadcast_here(&self, kind: MessageKind, payload: &[u8]) -> usize {
        let frame = codec::encode(Opcode::from(kind), payload);
        let mut count = 0;
        for thread in self.threads.iter() {
            count += thread.stats.connections.load(Ordering::Relaxed) as usize;
            thread.push(Command::Broadcast { frame: frame.clone() });
        }
        count
    }
}

thread_local! {
    /// The server whose I/O thread this is (null elsewhere): lets `stop()` avoid joining itself.
    pub(crate) static ENGINE_OF_THIS_THREAD: Cell<*const Shared> = const { Cell::new(std::ptr::null()) };
    /// The server whose Redis bridge thread this is (null elsewhere): a waiting publish there
    /// would wait for itself.
    pub(crate) static BRIDGE_OF_THIS_THREAD: Cell<*const Shared> = const { Cell::new(std::ptr::null()) };
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
    ///
    /// With Redis (`Config::redis_url`) the message is queued for Redis and this returns at
    /// once, before the offset or the receiving nodes are known (`Published { delivered: 0,
    /// offset: None }`); use [`publish_wait`](Self::publish_wait) or
    /// [`publish_async`](Self::publish_async) to learn them. `Err(Unavailable)` when Redis is
    /// known to be unreachable.
    pub fn publish_with_offset(&self, user: &[u8], payload: &[u8], kind: MessageKind) -> Result<Published, Error> {
        self.check_publish(user, payload)?;
        match &self.shared.redis {
            Some(redis) => {
                redis.push_message(Request::Publish {
                    user: user.into(),
                    kind,
                    payload: payload.into(),
                    done: None,
                    queued: Instant::now(),
                })?;
                Ok(Published { delivered: 0, offset: None })
            }
            None => Ok(self.publish_here(user, payload, kind)),
        }
    }

    /// Publishes and calls `done` once with the outcome: the offset and, with Redis, the number
    /// of nodes that received it (see [`Published`]). Without Redis `done` runs before this
    /// returns, on the calling thread; with Redis it runs on the engine's Redis thread once
    /// Redis answers, or with `Err(Unavailable)` after `Config::redis_timeout`. `done` may call
    /// anything but [`publish_wait`](Self::publish_wait) (which would wait for its own thread).
    /// An `Err` returned here means `done` will not be called.
    pub fn publish_async(
        &self,
        user: &[u8],
        payload: &[u8],
        kind: MessageKind,
        done: impl FnOnce(Result<Published, Error>) + Send + 'static,
    ) -> Result<(), Error> {
        self.check_publish(user, payload)?;
        match &self.shared.redis {
            Some(redis) => redis.push_message(Request::Publish {
                user: user.into(),
                kind,
                payload: payload.into(),
                done: Some(Box::new(done)),
                queued: Instant::now(),
            }),
            None => {
                let published = self.publish_here(user, payload, kind);
                done(Ok(published));
                Ok(())
            }
        }
    }

    /// Publishes and waits (at most `timeout`, and never longer than Redis's own timeout) for
    /// the outcome: the offset and, with Redis, the number of nodes that received it.
    /// `Err(Unavailable)` if Redis did not confirm in time (the message may still be applied).
    /// Without Redis it is `publish_with_offset`. Blocks the calling thread: call it from host
    /// threads, not from callbacks (from a publish completion it returns `Err(WouldDeadlock)`).
    pub fn publish_wait(
        &self,
        user: &[u8],
        payload: &[u8],
        kind: MessageKind,
        timeout: Duration,
    ) -> Result<Published, Error> {
        if self.shared.redis.is_none() {
            return self.publish_with_offset(user, payload, kind);
        }
        if BRIDGE_OF_THIS_THREAD.with(|bridge| std::ptr::eq(bridge.get(), &*self.shared)) {
            return Err(Error::WouldDeadlock);
        }
        let slot = Arc::new((Mutex::new(None), Condvar::new()));
        let answer = Arc::clone(&slot);
        self.publish_async(user, payload, kind, move |outcome| {
            *answer.0.lock() = Some(outcome);
            answer.1.notify_one();
        })?;
        let deadline = Instant::now() + timeout;
        let mut outcome = slot.0.lock();
        while outcome.is_none() {
            if slot.1.wait_until(&mut outcome, deadline).timed_out() {
                break;
            }
        }
        outcome.take().unwrap_or(Err(Error::Unavailable))
    }

    fn check_publish(&self, user: &[u8], payload: &[u8]) -> Result<(), Error> {
        check_user_id(user)?;
        self.check_payload(payload)?;
        self.ensure_running()?;
        self.shared.publishes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// A publish on this node alone (no Redis): appended to the in-process history, if on, and
    /// queued to the user's connections under the user's order lock.
    fn publish_here(&self, user: &[u8], payload: &[u8], kind: MessageKind) -> Published {
        let history = self.shared.history.as_ref();
        // Held until the message is queued to every connection: see src/history/mod.rs.
        let order = history.map(|history| history.order_lock(user));
        let stream = history.map(|history| history.store().append(user, kind, payload));
        #[cfg(feature = "test-hooks")]
        if stream.is_some() {
            crate::test_hooks::race_point(crate::test_hooks::RacePoint::PublishAppended);
        }
        let mut wakes = Wakes::default();
        let delivered = self.shared.queue_to_user(user, kind, payload, stream, &mut wakes);
        // Outside the locks: a publisher preempted in the wake-up syscall holds up nobody.
        drop(order);
        wakes.wake(&self.shared.threads);
        Published { delivered, offset: stream.map(|position| position.offset) }
    }

    /// Sends `payload` to every open connection. Returns how many connections were open (with
    /// Redis: on this node; the broadcast reaches every node's connections through Redis).
    pub fn broadcast(&self, payload: &[u8], kind: MessageKind) -> Result<usize, Error> {
        self.check_payload(payload)?;
        self.ensure_running()?;
        self.shared.broadcasts.fetch_add(1, Ordering::Relaxed);
        if let Some(redis) = &self.shared.redis {
            redis.push_message(Request::Broadcast { kind, payload: payload.into(), queued: Instant::now() })?;
            return Ok(self.shared.threads.iter().map(|t| t.stats.connections.load(Ordering::Relaxed) as usize).sum());
        }
        Ok(self.shared.broadcast_here(kind, payload))
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
        if let Some(redis) = &self.shared.redis {
            redis.stats.add_to(&mut stats);
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
            if let Some(redis) = &self.shared.redis {
                redis.push(Request::Stop);
            }
        }
        let on_engine_thread = ENGINE_OF_THIS_THREAD.with(|engine| std::ptr::eq(engine.get(), &*self.shared))
            || BRIDGE_OF_THIS_THREAD.with(|bridge| std::ptr::eq(bridge.get(), &*self.shared));
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
