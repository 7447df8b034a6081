//! Per-user history: every publish to a user gets the next offset of that user's stream, and a
//! `wspush.v1` client that reconnects with `since=EPOCH:OFFSET` is sent what it missed.
//!
//! - `position.rs`: [`Epoch`] and [`Position`], what a client is told and sends back.
//! - `memory.rs`: the in-memory store (the default), behind the narrow [`HistoryStore`] interface
//!   a shared store (Redis) can implement too.
//!
//! [`History`] adds the one rule the engine needs on top of a store: a publish's append and its
//! hand-off to the user's connections happen under the user's order lock, and so do a resuming
//! connection's registration and its read of the history. A publish is therefore either wholly
//! before a resume (in its replay, not delivered live) or wholly after it (delivered live, not
//! replayed): no gap and no duplicate, and live messages reach every connection in offset order.

mod memory;
mod position;

use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};

pub(crate) use memory::MemoryStore;
pub use position::{Epoch, Position};

use crate::types::MessageKind;

/// A message held in a user's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stored {
    pub(crate) offset: u64,
    pub(crate) kind: MessageKind,
    pub(crate) payload: Box<[u8]>,
}

/// Why a resume cannot be honoured: the client is told `recovered: false` and resets.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unrecoverable {
    /// Other epoch (restart, eviction, expiry), trimmed past `since`, or a `since` never handed out.
    Gap,
    /// What was missed is more than the connection may have queued.
    TooLarge,
}

/// Gauges of what a store holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct HistoryGauges {
    pub(crate) users: u64,
    pub(crate) messages: u64,
    pub(crate) bytes: u64,
}

/// Where users' streams are kept. Narrow on purpose: this is what a shared store must offer.
pub(crate) trait HistoryStore: Send + Sync {
    /// Appends a message to `user`'s stream (creating it, in a new epoch, if there is none) and
    /// returns its position.
    fn append(&self, user: &[u8], kind: MessageKind, payload: &[u8]) -> Position;
    /// The top of `user`'s stream: the last offset handed out (0 and a placeholder epoch for a
    /// user without a stream).
    fn top(&self, user: &[u8]) -> Position;
    /// Everything after `since`, oldest first, into `out`, and the top; refused unless all of it
    /// is still held and it fits in `max_bytes` of payload.
    fn read_since(
        &self,
        user: &[u8],
        since: Position,
        max_bytes: usize,
        out: &mut Vec<Stored>,
    ) -> Result<Position, Unrecoverable>;
    /// Drops what has expired (called about once a second).
    fn expire(&self);
    fn gauges(&self) -> HistoryGauges;
}

/// History limits (all three apply; see `Config::history_max_messages`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) max_messages: usize,
    pub(crate) ttl: Duration,
    pub(crate) max_bytes: usize,
}

/// Order locks: enough that publishers of different users rarely meet.
const ORDER_LOCKS: usize = 64;

/// A store plus the per-user ordering rule (see the module docs).
pub(crate) struct History {
    store: Box<dyn HistoryStore>,
    order: Box<[Mutex<()>]>,
    keys: std::hash::RandomState,
}

impl History {
    pub(crate) fn new(store: Box<dyn HistoryStore>) -> History {
        History { store, order: (0..ORDER_LOCKS).map(|_| Mutex::new(())).collect(), keys: Default::default() }
    }

    pub(crate) fn in_memory(limits: Limits) -> History {
        History::new(Box::new(MemoryStore::new(limits)))
    }

    /// Held across a publish's append and hand-off, and across a resume's registration and read.
    pub(crate) fn order_lock(&self, user: &[u8]) -> MutexGuard<'_, ()> {
        use std::hash::BuildHasher;
        self.order[self.keys.hash_one(user) as usize % ORDER_LOCKS].lock()
    }

    pub(crate) fn store(&self) -> &dyn HistoryStore {
        &*self.store
    }
}

/// 64 random bits from the kernel (epochs must not repeat across restarts); falls back to a
/// randomly keyed hash of the time if getrandom(2) is unavailable.
pub(crate) fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: the buffer is valid for writes of its length; getrandom writes at most that many.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got == bytes.len() as isize {
        return u64::from_ne_bytes(bytes);
    }
    use std::hash::BuildHasher;
    std::hash::RandomState::new().hash_one(std::time::SystemTime::now())
}
