//! The public face of the engine: [`Server`] (owns the I/O threads) and [`ServerHandle`] (a cheap,
//! cloneable, thread-safe handle for publishing and control, also passed to every callback).
//!
//! Everything here runs on the caller's thread and never touches a socket: work for a connection
//! is queued to the I/O thread that owns it, which is woken through its `mio::Waker`.

use std::cell::Cell;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use crate::codec::{self, Frame, Opcode};
use crate::config::Config;
use crate::conn_id::{self, LiveTable};
use crate::error::Error;
use crate::event_loop::{Command, IoThreadSetup, ANY_USER};
use crate::handler::{ConnId, Handler, MessageKind};
use crate::ip_limits::IpLimits;
use crate::jwt::JwtVerifier;
use crate::registry::Registry;
use crate::stats::{Stats, ThreadStats};
use crate::{socket, MAX_USER_ID_LEN};

const RUNNING: u8 = 0;
const STOPPING: u8 = 1;
/// An I/O thread panicked (an engine bug): the server stops and calls return `Error::Failed`.
const FAILED: u8 = 2;

/// State shared by the handle(s) and the I/O threads.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) handler: Box<dyn Handler>,
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
}

/// The part of an I/O thread that other threads talk to.
pub(crate) struct ThreadShared {
    inbox: Mutex<Vec<Command>>,
    waker: mio::Waker,
    pub(crate) live: LiveTable,
    pub(crate) stats: ThreadStats,
}

impl ThreadShared {
    /// Queues a command and wakes the thread if its inbox was empty (one wake per batch).
    pub(crate) fn push(&self, command: Command) {
        let was_empty = {
            let mut inbox = self.inbox.lock();
            inbox.push(command);
            inbox.len() == 1
        };
        // The owning thread drains its inbox after every round of events, so a command it queues
        // to itself (a callback answering its own connection) needs no wake-up syscall.
        let from_owner = OWNING_IO_THREAD.with(|current| std::ptr::eq(current.get(), self));
        if was_empty && !from_owner {
            // A failed wake means the poller is gone, i.e. the thread has exited; nothing to do.
            let _ = self.waker.wake();
        }
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

/// A running server: owns the I/O threads and stops them (gracefully) when dropped.
/// Dereferences to [`ServerHandle`] for publishing and control.
pub struct Server {
    handle: ServerHandle,
    stop_on_drop: bool,
}

impl Server {
    /// Binds the listening socket(s) and starts the I/O threads.
    pub fn start(config: Config, handler: impl Handler) -> Result<Server, Error> {
        Self::start_boxed(config, Box::new(handler))
    }

    /// Like [`Server::start`] with an already boxed handler.
    pub fn start_boxed(config: Config, handler: Box<dyn Handler>) -> Result<Server, Error> {
        config.validate().map_err(Error::InvalidConfig)?;
        let addr =
            config.listen.to_socket_addrs().map_err(|_| Error::InvalidAddress)?.next().ok_or(Error::InvalidAddress)?;
        let thread_count = config.io_threads();
        let buffers = socket::BufferSizes { send: config.socket_send_buffer, recv: config.socket_recv_buffer };
        let listeners = socket::bind_listeners(addr, thread_count, buffers).map_err(Error::Bind)?;
        let local_addr = listeners[0].local_addr().map_err(Error::Bind)?;
        let max_connections = connection_cap(config.max_connections, thread_count);
        // Room for every connection plus each thread's poller, waker and reserve, before any storm.
        if let Some(newest) = listeners.last() {
            socket::reserve_descriptors(newest.as_raw_fd(), max_connections.saturating_add(3 * thread_count));
        }

        let mut loops = Vec::with_capacity(thread_count);
        let mut thread_shared = Vec::with_capacity(thread_count);
        for (index, listener) in listeners.into_iter().enumerate() {
            let (io, waker) = IoThreadSetup::new(index as u8, listener).map_err(Error::Io)?;
            loops.push(io);
            thread_shared.push(ThreadShared {
                inbox: Mutex::new(Vec::new()),
                waker,
                live: LiveTable::with_first_chunk(),
                stats: ThreadStats::default(),
            });
        }
        let shared = Arc::new(Shared {
            handler,
            local_addr,
            threads: thread_shared.into_boxed_slice(),
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
            config,
        });
        let handle = ServerHandle { shared };
        // Own the handle before spawning so a failed spawn still stops the threads already running.
        let server = Server { handle: handle.clone(), stop_on_drop: true };
        for io in loops {
            let thread_handle = handle.clone();
            let join = std::thread::Builder::new()
                .name(format!("wspush-io-{}", io.index()))
                .stack_size(handle.shared.config.io_thread_stack_size())
                .spawn(move || io.run(thread_handle))
                .map_err(Error::Io)?;
            handle.shared.joins.lock().push(join);
        }
        Ok(server)
    }

    /// A cloneable handle for other threads.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Gives up ownership without stopping: the server runs until `ServerHandle::stop`.
    pub fn into_handle(mut self) -> ServerHandle {
        self.stop_on_drop = false;
        self.handle.clone()
    }
}

impl std::ops::Deref for Server {
    type Target = ServerHandle;
    fn deref(&self) -> &ServerHandle {
        &self.handle
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.stop_on_drop {
            self.handle.stop();
        }
    }
}

/// Descriptors left to the host process when the connection cap is derived from RLIMIT_NOFILE.
const HOST_DESCRIPTORS: usize = 64;

/// `wanted`, lowered to what RLIMIT_NOFILE leaves once the host keeps some descriptors and each
/// I/O thread has its poller, waker and reserve: a cap the process cannot reach would leave
/// clients past it waiting in the backlog, unanswered, instead of getting 503. Said on stderr
/// when it happens, and in `Stats::max_connections`.
fn connection_cap(wanted: usize, threads: usize) -> usize {
    let Some(left) = socket::descriptors_left() else { return wanted };
    let allowed = left.saturating_sub(HOST_DESCRIPTORS + 3 * threads).max(1);
    if wanted > allowed {
        eprintln!(
            "wspush: max_connections {wanted} is more than the open-files limit allows; capped to {allowed} \
             (raise RLIMIT_NOFILE, e.g. ulimit -n or LimitNOFILE=, for more)"
        );
    }
    wanted.min(allowed)
}

/// The one rule for user IDs, wherever they come from (host, JWT `sub`): 1 to 255 bytes and no
/// NUL byte. NUL is refused because C hosts commonly treat an ID as a C string: "ali\0ce" would
/// be logged, compared or published to as "ali", another user.
pub(crate) fn check_user_id(user: &[u8]) -> Result<(), Error> {
    if user.is_empty() || user.len() > MAX_USER_ID_LEN || user.contains(&0) {
        Err(Error::InvalidUserId)
    } else {
        Ok(())
    }
}

impl ServerHandle {
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
        check_user_id(user)?;
        self.check_payload(payload)?;
        self.ensure_running()?;
        self.shared.publishes.fetch_add(1, Ordering::Relaxed);
        let mut frame: Option<Frame> = None;
        let delivered = self.shared.registry.for_each_conn(user, |conn, user_check| {
            let (thread, _, _) = conn_id::split(conn);
            let frame = frame.get_or_insert_with(|| codec::encode(Opcode::from(kind), payload)).clone();
            self.shared.threads[thread].push(Command::Deliver { conn, frame, user_check });
        });
        Ok(delivered)
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
        owner.push(Command::Deliver { conn, frame: codec::encode(Opcode::from(kind), payload), user_check: ANY_USER });
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
        self.decide(ticket, crate::UpgradeDecision::Accept(user.to_vec()))
    }

    /// Completes a deferred upgrade by answering HTTP `status` (400-599) and closing.
    pub fn reject_upgrade(&self, ticket: ConnId, status: u16) -> Result<(), Error> {
        if !(400..=599).contains(&status) {
            return Err(Error::InvalidStatus);
        }
        self.decide(ticket, crate::UpgradeDecision::Reject(status))
    }

    fn decide(&self, ticket: ConnId, decision: crate::UpgradeDecision) -> Result<(), Error> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_1_to_255_bytes_without_nul() {
        assert!(check_user_id(b"a").is_ok());
        assert!(check_user_id(&[b'u'; MAX_USER_ID_LEN]).is_ok());
        assert!(check_user_id(b"").is_err());
        assert!(check_user_id(&[b'u'; MAX_USER_ID_LEN + 1]).is_err());
        for with_nul in [&b"ali\0ce"[..], b"\0", b"alice\0"] {
            assert!(matches!(check_user_id(with_nul), Err(Error::InvalidUserId)), "{with_nul:?}");
        }
    }
}
