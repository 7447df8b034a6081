//! The bridge's bookkeeping types: what each owed reply answers, what waits for the command
//! link, and what the node knows of each local user.

use std::time::Instant;

use crate::history::Position;
use crate::redis::Done;
use crate::types::{ConnId, MessageKind};

/// What a reply owed on a command link answers.
pub(super) enum Pending {
    /// AUTH, SELECT or the PING that opens a link without them.
    Login,
    LoadScript(Script),
    /// CLUSTER SLOTS: which primary serves which slot (an error from a Redis that is no cluster).
    Topology,
    Ping,
    /// A publish, broadcast or read, kept whole so that one answered MOVED can be sent again.
    Work(Waiting),
}

pub(super) enum Script {
    Publish,
    Read,
}

/// A read of `user`'s stream: its epoch and top, and the entries after `from` (None: top only).
pub(super) struct Read {
    pub(super) user: Box<[u8]>,
    pub(super) from: Option<u64>,
    pub(super) why: ReadFor,
}

/// Work waiting for the command link.
pub(super) enum Waiting {
    Publish { user: Box<[u8]>, kind: MessageKind, payload: Box<[u8]>, done: Option<Done>, queued: Instant },
    Broadcast { kind: MessageKind, payload: Box<[u8]>, queued: Instant },
    Read { read: Read, queued: Instant },
}

impl Waiting {
    pub(super) fn queued(&self) -> Instant {
        match self {
            Waiting::Publish { queued, .. } | Waiting::Broadcast { queued, .. } | Waiting::Read { queued, .. } => {
                *queued
            }
        }
    }

    /// Whether it is dropped after the timeout (a fill of a user's gap is not: it waits for
    /// Redis however long that takes, holding the user's newer messages).
    pub(super) fn expires(&self) -> bool {
        !matches!(self, Waiting::Read { read: Read { why: ReadFor::Fill { .. } | ReadFor::Position, .. }, .. })
    }
}

/// A subscribed user, as this node sees it: 16 bytes plus the map's 8-byte key (a keyed hash of
/// the user ID; the ID itself is not kept: messages, greetings and departures carry it, and
/// after a lost link the I/O threads name their users again), 27-31 bytes with the table's spare
/// room. Nothing per connection.
#[derive(Clone, Copy, Default)]
pub(super) struct UserState {
    epoch: u64,
    /// The last offset delivered (low 48 bits), the subscriber link it is on (next 8) and the
    /// flags below (high 8).
    word: u64,
}

const OFFSET_MASK: u64 = (1 << 48) - 1;
const ROUTE_SHIFT: u32 = 48;
/// SSUBSCRIBE sent, not yet confirmed.
pub(super) const SUBSCRIBING: u64 = 1 << 56;
/// The subscription is confirmed: messages published from now on reach this node.
pub(super) const ACTIVE: u64 = 1 << 57;
/// A read to fill a jump is under way: channel messages are held.
pub(super) const FILLING: u64 = 1 << 58;
/// Resubscribed after its link was lost: read it again from `known` once active.
pub(super) const NEEDS_FILL: u64 = 1 << 59;
/// Messages held during the fill were dropped (too many bytes): read again after it.
pub(super) const REFILL: u64 = 1 << 60;
/// `epoch` and the offset are set.
const KNOWN: u64 = 1 << 61;

impl UserState {
    pub(super) fn has(&self, flag: u64) -> bool {
        self.word & flag != 0
    }

    pub(super) fn set(&mut self, flag: u64, on: bool) {
        if on {
            self.word |= flag;
        } else {
            self.word &= !flag;
        }
    }

    /// Clears `flag`, returning whether it was set.
    pub(super) fn take(&mut self, flag: u64) -> bool {
        let was = self.has(flag);
        self.set(flag, false);
        was
    }

    /// Epoch and last offset delivered here; None before the first message or read.
    pub(super) fn known(&self) -> Option<(u64, u64)> {
        self.has(KNOWN).then_some((self.epoch, self.word & OFFSET_MASK))
    }

    pub(super) fn set_known(&mut self, epoch: u64, last: u64) {
        self.epoch = epoch;
        // Offsets past 2^48 would take 2^48 publishes to one user.
        self.word = (self.word & !OFFSET_MASK) | (last & OFFSET_MASK) | KNOWN;
    }

    /// The subscriber link (index into `Bridge::subscribers`) the user's channel is on.
    pub(super) fn route(&self) -> usize {
        ((self.word >> ROUTE_SHIFT) & 0xff) as usize
    }

    pub(super) fn set_route(&mut self, route: usize) {
        self.word = (self.word & !(0xff << ROUTE_SHIFT)) | (((route as u64) & 0xff) << ROUTE_SHIFT);
    }
}

/// A channel message held while its user's stream is read.
pub(super) struct Held {
    pub(super) stream: Option<Position>,
    pub(super) kind: MessageKind,
    pub(super) payload: Box<[u8]>,
}

/// A user's held messages; past the send-queue limit they are dropped and read again from the
/// stream instead (they are all there).
#[derive(Default)]
pub(super) struct HeldQueue {
    pub(super) messages: Vec<Held>,
    pub(super) bytes: usize,
}

/// A connection waiting for its user's subscription, then (`read`) its welcome from Redis.
pub(super) struct Greeter {
    pub(super) conn: ConnId,
    pub(super) since: Option<Option<Position>>,
    pub(super) read: bool,
    pub(super) queued: Instant,
}

/// Why a stream is read.
pub(super) enum ReadFor {
    /// A `wspush.v1` connection's welcome and replay.
    Greet { conn: ConnId, since: Option<Option<Position>> },
    /// A jump in the user's offsets, or a resubscription after a lost link (`after_outage`:
    /// then an epoch change means history was lost, not just a stream that expired).
    Fill { after_outage: bool },
    /// A user's raw connections wait for the node to learn where its stream is, so that a lost
    /// subscriber link can be caught up from there (channel messages are held meanwhile).
    Position,
}
