//! Per-user history: every publish to a user gets the next offset of that user's stream, and a
//! `wspush.v1` client that reconnects with `since=EPOCH:OFFSET` is sent what it missed.
//!
//! - `position.rs`: [`Epoch`] and [`Position`], what a client is told and sends back.
//! - `store.rs`: the narrow [`HistoryStore`] interface a shared store (Redis) can implement too.
//! - `memory.rs`: the in-memory store (the default), behind that interface.
//!
//! [`History`] adds the one rule the engine needs on top of a store: a publish's append and its
//! hand-off to the user's connections happen under the user's order lock, and so do a resuming
//! connection's registration and its read of the history. A publish is therefore either wholly
//! before a resume (in its replay, not delivered live) or wholly after it (delivered live, not
//! replayed): no gap and no duplicate, and live messages reach every connection in offset order.

mod memory;
mod position;
mod store;

use parking_lot::{Mutex, MutexGuard};

pub(crate) use memory::MemoryStore;
pub(crate) use position::random_u64;
pub use position::{Epoch, Position};
pub(crate) use store::{HistoryStore, Limits, Stored};

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
