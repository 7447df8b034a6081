//! The bridge's bookkeeping types: what each owed reply answers, what waits for the command
//! link, and what the node knows of each local user.

use std::time::Instant;

use crate::history::Position;
use crate::redis::Done;
use crate::types::{ConnId, MessageKind};

/// What a reply owed on the command link answers.
pub(super) enum Pending {
    /// AUTH, SELECT or the PING that opens a link without them.
    Login,
    LoadScript(Script),
    Ping,
    Publish { done: Option<Done>, bytes: usize },
    Broadcast { bytes: usize },
    Read(Read),
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
            Waiting::Publish { queued, .. } | Waiting::Broadcast { queued, .. } | Waiting::Read { queued, .. } => *queued,
        }
    }

    /// Whether it is dropped after the timeout (a fill of a user's gap is not: it waits for
    /// Redis however long that takes, holding the user's newer messages).
    pub(super) fn expires(&self) -> bool {
        !matches!(self, Waiting::Read { read: Read { why: ReadFor::Fill { .. }, .. }, .. })
    }
}

/// A subscribed user, as this node sees it (tens of bytes per online user, none per connection).
pub(super) struct UserState {
    pub(super) link: u8,
    /// The subscription is confirmed: messages published from now on reach this node.
    pub(super) active: bool,
    /// A read to fill a jump is under way: channel messages are held.
    pub(super) filling: bool,
    /// Resubscribed after its link was lost: read it again from `known` once active.
    pub(super) needs_fill: bool,
    /// Messages held during the fill were dropped (too many bytes): read again after it.
    pub(super) refill: bool,
    /// Epoch and last offset delivered here; None before the first message or read.
    pub(super) known: Option<(u64, u64)>,
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

/// A `wspush.v1` connection waiting for its user's subscription, then its welcome.
pub(super) struct Greeter {
    pub(super) conn: ConnId,
    pub(super) since: Option<Option<Position>>,
    pub(super) queued: Instant,
}

/// Why a stream is read.
pub(super) enum ReadFor {
    /// A `wspush.v1` connection's welcome and replay.
    Greet { conn: ConnId, since: Option<Option<Position>> },
    /// A jump in the user's offsets, or a resubscription after a lost link (`after_outage`:
    /// then an epoch change means history was lost, not just a stream that expired).
    Fill { after_outage: bool },
}
