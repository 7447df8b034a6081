//! Connection IDs and the lock-free table that says which are live.
//!
//! An ID packs `thread (8 bits) | slot (24 bits) | generation (32 bits)`: any thread can route a
//! command to the owning I/O thread and slab slot without a lookup. The generation comes from a
//! per-thread counter, so an ID is not handed out again until that thread has accepted 2^32 more
//! connections, and the live table (one atomic per slot) lets `send`/`close` answer NOT_FOUND for
//! a closed connection synchronously.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use crate::types::ConnId;

/// Slots per I/O thread: 2^24 (16.7 million connections per thread).
pub(crate) const MAX_SLOTS: usize = 1 << 24;
const CHUNK: usize = 4096;
const CHUNKS: usize = MAX_SLOTS / CHUNK;

pub(crate) fn make(thread: usize, slot: usize, generation: u32) -> ConnId {
    ((thread as u64) << 56) | ((slot as u64) << 32) | u64::from(generation)
}

/// (thread, slot, generation)
pub(crate) fn split(id: ConnId) -> (usize, usize, u32) {
    ((id >> 56) as usize, ((id >> 32) & 0xff_ffff) as usize, id as u32)
}

/// Per-thread map slot → generation of the connection living there (0 = none). Written only by the
/// owning I/O thread, read by any thread. Chunks are allocated as the slab grows and never moved.
pub(crate) struct LiveTable {
    chunks: Box<[OnceLock<Box<[AtomicU32]>>]>,
}

impl Default for LiveTable {
    fn default() -> Self {
        LiveTable { chunks: (0..CHUNKS).map(|_| OnceLock::new()).collect() }
    }
}

impl LiveTable {
    /// Allocates the first chunk now: every server with a connection needs it, so it belongs to
    /// the fixed footprint paid at start.
    pub(crate) fn with_first_chunk() -> Self {
        let table = LiveTable::default();
        table.clear(0);
        table
    }

    pub(crate) fn set(&self, slot: usize, generation: u32) {
        if let Some(chunk) = self.chunks.get(slot / CHUNK) {
            let chunk = chunk.get_or_init(|| (0..CHUNK).map(|_| AtomicU32::new(0)).collect());
            chunk[slot % CHUNK].store(generation, Ordering::Release);
        }
    }

    pub(crate) fn clear(&self, slot: usize) {
        self.set(slot, 0);
    }

    pub(crate) fn is_live(&self, slot: usize, generation: u32) -> bool {
        generation != 0
            && self
                .chunks
                .get(slot / CHUNK)
                .and_then(OnceLock::get)
                .is_some_and(|chunk| chunk[slot % CHUNK].load(Ordering::Acquire) == generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_stale_ids_are_not_live() {
        let id = make(3, 70_000, 42);
        assert_eq!(split(id), (3, 70_000, 42));
        let table = LiveTable::default();
        assert!(!table.is_live(70_000, 42));
        table.set(70_000, 42);
        assert!(table.is_live(70_000, 42));
        assert!(!table.is_live(70_000, 43), "a newer connection in the same slot has another ID");
        table.clear(70_000);
        assert!(!table.is_live(70_000, 42));
    }
}
