//! The queue into the Redis bridge thread (src/cluster/): host threads put publishes there, I/O
//! threads resumes and users' arrivals and departures. Pushing never blocks on Redis: the bridge
//! pipelines what it finds, and answers each publish through its completion.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

use crate::error::Error;
use crate::history::Position;
use crate::stats::Stats;
use crate::types::{ConnId, MessageKind, Published};

/// Called once with a publish's outcome, on the bridge thread (see `ServerHandle::publish_async`).
pub(crate) type Done = Box<dyn FnOnce(Result<Published, Error>) + Send>;

pub(crate) enum Request {
    Publish {
        user: Box<[u8]>,
        kind: MessageKind,
        payload: Box<[u8]>,
        done: Option<Done>,
        queued: Instant,
    },
    Broadcast {
        kind: MessageKind,
        payload: Box<[u8]>,
        queued: Instant,
    },
    /// A connection opened and waits for the bridge: until its user's channel is subscribed
    /// here (so that nothing published after its upgrade can miss it), and with `read` (a
    /// `wspush.v1` connection with history) for its welcome and replay from Redis.
    Greet {
        conn: ConnId,
        user: Box<[u8]>,
        since: Option<Option<Position>>,
        read: bool,
    },
    /// The user's first local connection opened or its last closed: the bridge looks at the
    /// registry and subscribes or (after a linger) unsubscribes.
    Presence {
        user: Box<[u8]>,
    },
    Stop,
}

impl Request {
    fn bytes(&self) -> usize {
        match self {
            Request::Publish { user, payload, .. } => user.len() + payload.len(),
            Request::Broadcast { payload, .. } => payload.len(),
            _ => 0,
        }
    }
}

/// Payload bytes that may wait for Redis before publishes are refused at once (`Unavailable`):
/// a Redis that stalls must not grow the host without bound.
const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

/// What the bridge counts (it alone writes them; `ServerHandle::stats` reads them).
#[derive(Default)]
pub(crate) struct BridgeStats {
    pub(crate) connected: AtomicU64,
    pub(crate) subscribed_users: AtomicU64,
    pub(crate) publish_failures_total: AtomicU64,
    pub(crate) fills_total: AtomicU64,
    pub(crate) resets_total: AtomicU64,
}

impl BridgeStats {
    pub(crate) fn add_to(&self, stats: &mut Stats) {
        stats.redis_connected = self.connected.load(Ordering::Relaxed);
        stats.redis_subscribed_users = self.subscribed_users.load(Ordering::Relaxed);
        stats.redis_publish_failures_total = self.publish_failures_total.load(Ordering::Relaxed);
        stats.redis_fills_total = self.fills_total.load(Ordering::Relaxed);
        stats.redis_resets_total = self.resets_total.load(Ordering::Relaxed);
    }
}

pub(crate) struct Outbox {
    queue: Mutex<Vec<Request>>,
    waker: mio::Waker,
    /// Publish and broadcast bytes queued or awaiting Redis's answer.
    queued_bytes: AtomicUsize,
    /// Set by the bridge while Redis has been unreachable for longer than the timeout:
    /// publishes then fail at once instead of queueing for a timeout each.
    down: AtomicBool,
    pub(crate) stats: BridgeStats,
}

impl Outbox {
    pub(crate) fn new(waker: mio::Waker) -> Outbox {
        Outbox {
            queue: Mutex::new(Vec::new()),
            waker,
            queued_bytes: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            stats: BridgeStats::default(),
        }
    }

    /// Queues `request`, waking the bridge if its queue was empty.
    pub(crate) fn push(&self, request: Request) {
        let was_empty = {
            let mut queue = self.queue.lock();
            queue.push(request);
            queue.len() == 1
        };
        if was_empty {
            // Fails only when the bridge's poller is gone, i.e. it has stopped.
            let _ = self.waker.wake();
        }
    }

    /// Queues a publish or broadcast unless Redis is known down or too much already waits.
    pub(crate) fn push_message(&self, request: Request) -> Result<(), Error> {
        let bytes = request.bytes();
        if self.down.load(Ordering::Relaxed) {
            return Err(Error::Unavailable);
        }
        if self.queued_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes > MAX_QUEUED_BYTES {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return Err(Error::Unavailable);
        }
        self.push(request);
        Ok(())
    }

    /// A publish or broadcast of `bytes` is answered (or failed): it no longer counts.
    pub(crate) fn release(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub(crate) fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }

    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    pub(crate) fn take(&self, into: &mut Vec<Request>) {
        std::mem::swap(&mut *self.queue.lock(), into);
    }
}

/// The payload size a request was counted with (for `Outbox::release`).
pub(crate) fn counted_bytes(user: &[u8], payload: &[u8]) -> usize {
    user.len() + payload.len()
}
