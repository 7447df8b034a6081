//! What a history store offers (see the module docs of `history`): the narrow interface a shared
//! store (Redis) can implement too, and the values it passes.

use std::time::Duration;

use super::position::Position;
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
