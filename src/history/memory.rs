//! The in-memory history store: one stream per user who was published to, in one table under
//! one lock (every operation is a few pointer moves and one copy of the payload).
//!
//! Costs, what `history_bytes` charges: a stored message is its payload plus a 24-byte entry
//! plus the allocator's header; a stream is a [`Stream`] plus its user ID plus its index entry.
//! The user ID is kept once: the index maps a keyed 64-bit hash of it to the stream, and
//! streams whose IDs hash alike are chained.
//!
//! Limits: at most `max_messages` per stream (the oldest go first); a message older than the
//! TTL is dropped, and a stream whose newest message has expired is dropped whole; past
//! `max_bytes` whole streams go, least recently published first. Dropping a stream ends its
//! epoch: the next publish to that user starts a new one at offset 1.

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::time::Instant;

use parking_lot::Mutex;
use slab::Slab;

use super::position::{random_u64, Epoch, Position};
use super::store::{HistoryGauges, HistoryStore, Limits, Stored, Unrecoverable};
use crate::keymap::KeyMap;
use crate::registry::UserId;
use crate::types::MessageKind;

/// "No stream" in the chain links.
const NIL: u32 = u32::MAX;
/// What the allocator adds to each allocation (glibc: an 8-byte header, 16-byte granules).
const ALLOCATION_OVERHEAD: usize = 16;

struct Entry {
    payload: Box<[u8]>,
    /// Seconds since the store started.
    at: u32,
    binary: bool,
}

struct Stream {
    /// Inline when short (most IDs): comparing it costs no extra memory access.
    user: UserId,
    epoch: u64,
    /// The store's `losses` when the stream was created (see `Epoch::NoStream`).
    born_losses: u64,
    /// Offset of `entries[0]`; top + 1 when `entries` is empty.
    first: u64,
    entries: VecDeque<Entry>,
    last_publish: u32,
    /// Number of the last publish to this stream: its current place in `Inner::order`.
    last_seq: u32,
    /// The next stream whose user ID has the same hash.
    chain: u32,
}

impl Stream {
    fn top(&self) -> u64 {
        self.first + self.entries.len() as u64 - 1
    }

    fn position(&self) -> Position {
        Position { epoch: Epoch::Stream(self.epoch), offset: self.top() }
    }
}

fn message_cost(payload_len: usize) -> u64 {
    (payload_len + std::mem::size_of::<Entry>() + ALLOCATION_OVERHEAD) as u64
}

fn stream_cost(user_len: usize) -> u64 {
    // The index entry: its key and its value, padded (the table's spare room, 14-43%, is not
    // charged).
    const INDEX_ENTRY: usize = 16;
    // Its places in the publish order: one current, up to two outdated (see `Inner::touch`).
    const ORDER_ENTRIES: usize = 3 * std::mem::size_of::<(u32, u32)>();
    let user_on_heap = if UserId::is_inline(user_len) { 0 } else { user_len + ALLOCATION_OVERHEAD };
    (std::mem::size_of::<Stream>() + user_on_heap + INDEX_ENTRY + ORDER_ENTRIES) as u64
}

/// Outdated places the publish order may hold beyond two per stream before it is compacted.
const ORDER_SLACK: usize = 1024;

#[derive(Default)]
struct Inner {
    index: KeyMap<u32>,
    streams: Slab<Stream>,
    /// Streams in publish order, least recent first, as (slot, publish number). Publishing
    /// appends the stream's new place and leaves the old one to be skipped: no other stream is
    /// touched (a linked list would visit both neighbours, two cache misses per publish).
    order: VecDeque<(u32, u32)>,
    next_seq: u32,
    /// Streams dropped (evicted or expired) since the store started.
    losses: u64,
    messages: u64,
    bytes: u64,
}

pub(crate) struct MemoryStore {
    inner: Mutex<Inner>,
    limits: Limits,
    ttl_secs: u32,
    keys: RandomState,
    /// This store's incarnation, in the epochs of users without a stream.
    id: u64,
    started: Instant,
}

impl MemoryStore {
    pub(crate) fn new(limits: Limits) -> MemoryStore {
        // Whole seconds, rounded up: an entry lives at least the TTL.
        let ttl_secs = limits.ttl.as_secs().saturating_add(u64::from(limits.ttl.subsec_nanos() > 0)).max(1);
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            limits,
            ttl_secs: u32::try_from(ttl_secs).unwrap_or(u32::MAX),
            keys: RandomState::new(),
            id: random_u64(),
            started: Instant::now(),
        }
    }

    fn now(&self) -> u32 {
        u32::try_from(self.started.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    fn hash(&self, user: &[u8]) -> u64 {
        self.keys.hash_one(user)
    }

    /// Locks the table with what has expired by now dropped.
    fn lock(&self) -> (parking_lot::MutexGuard<'_, Inner>, u32) {
        let now = self.now();
        let mut inner = self.inner.lock();
        inner.expire_streams(now, self.ttl_secs, |user| self.hash(user));
        (inner, now)
    }
}

impl Inner {
    fn find(&self, hash: u64, user: &[u8]) -> Option<u32> {
        let mut slot = *self.index.get(hash)?;
        while slot != NIL {
            let stream = &self.streams[slot as usize];
            if *stream.user == *user {
                return Some(slot);
            }
            slot = stream.chain;
        }
        None
    }

    fn create(&mut self, hash: u64, user: &[u8]) -> u32 {
        let chain = self.index.get(hash).copied().unwrap_or(NIL);
        let stream = Stream {
            user: UserId::new(user),
            epoch: random_u64(),
            born_losses: self.losses,
            first: 1,
            entries: VecDeque::new(),
            last_publish: 0,
            last_seq: 0,
            chain,
        };
        let slot = self.streams.insert(stream) as u32;
        self.index.insert(hash, slot);
        self.bytes += stream_cost(user.len());
        slot
    }

    /// Makes `slot` the most recently published stream.
    fn touch(&mut self, slot: u32) {
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        self.streams[slot as usize].last_seq = seq;
        self.order.push_back((slot, seq));
        if self.order.len() > 2 * self.streams.len() + ORDER_SLACK {
            // Every outdated place goes, so none lives long enough for its number to come round
            // again (2^32 publishes).
            let streams = &self.streams;
            self.order.retain(|&(slot, seq)| streams.get(slot as usize).is_some_and(|s| s.last_seq == seq));
            if self.order.capacity() > 4 * self.order.len() + ORDER_SLACK {
                self.order.shrink_to(2 * self.order.len() + ORDER_SLACK);
            }
        }
    }

    /// The least recently published stream, skipping outdated places.
    fn least_recent(&mut self) -> Option<u32> {
        while let Some(&(slot, seq)) = self.order.front() {
            if self.streams.get(slot as usize).is_some_and(|s| s.last_seq == seq) {
                return Some(slot);
            }
            self.order.pop_front();
        }
        None
    }

    /// Drops a stream whole: its epoch ends.
    fn drop_stream(&mut self, slot: u32, hash: u64) {
        let stream = self.streams.remove(slot as usize);
        if self.index.get(hash) == Some(&slot) {
            match stream.chain {
                NIL => {
                    self.index.remove(hash);
                }
                next => {
                    self.index.insert(hash, next);
                }
            }
        } else if let Some(mut at) = self.index.get(hash).copied() {
            while at != NIL {
                let next = self.streams[at as usize].chain;
                if next == slot {
                    self.streams[at as usize].chain = stream.chain;
                    break;
                }
                at = next;
            }
        }
        let payload: u64 = stream.entries.iter().map(|e| message_cost(e.payload.len())).sum();
        self.messages -= stream.entries.len() as u64;
        self.bytes -= payload + stream_cost(stream.user.len());
        self.losses += 1;
        self.index.release_slack();
    }

    fn pop_oldest_message(&mut self, slot: u32) {
        let stream = &mut self.streams[slot as usize];
        if let Some(entry) = stream.entries.pop_front() {
            stream.first += 1;
            self.messages -= 1;
            self.bytes -= message_cost(entry.payload.len());
        }
    }

    /// Drops every stream whose newest message has expired; they are the least recently
    /// published, at the old end of the order.
    fn expire_streams(&mut self, now: u32, ttl_secs: u32, hash: impl Fn(&[u8]) -> u64) {
        while let Some(oldest) = self.least_recent() {
            let stream = &self.streams[oldest as usize];
            if now.saturating_sub(stream.last_publish) < ttl_secs {
                break;
            }
            let key = hash(&stream.user);
            self.drop_stream(oldest, key);
        }
    }

    /// Drops a stream's messages older than the TTL.
    fn expire_messages(&mut self, slot: u32, now: u32, ttl_secs: u32) {
        while self.streams[slot as usize].entries.front().is_some_and(|e| now.saturating_sub(e.at) >= ttl_secs) {
            self.pop_oldest_message(slot);
        }
    }
}

impl HistoryStore for MemoryStore {
    fn append(&self, user: &[u8], kind: MessageKind, payload: &[u8]) -> Position {
        let hash = self.hash(user);
        let (mut inner, now) = self.lock();
        let inner = &mut *inner;
        let slot = inner.find(hash, user).unwrap_or_else(|| inner.create(hash, user));
        inner.touch(slot);
        inner.expire_messages(slot, now, self.ttl_secs);
        while inner.streams[slot as usize].entries.len() >= self.limits.max_messages.max(1) {
            inner.pop_oldest_message(slot);
        }
        let entry = Entry { payload: payload.into(), at: now, binary: kind == MessageKind::Binary };
        let stream = &mut inner.streams[slot as usize];
        if stream.entries.len() == stream.entries.capacity() {
            // Doubling, but never past the cap: a user at the cap holds no empty entries.
            let room = self.limits.max_messages.saturating_sub(stream.entries.len());
            stream.entries.reserve_exact(stream.entries.len().max(4).min(room.max(1)));
        }
        stream.entries.push_back(entry);
        stream.last_publish = now;
        inner.messages += 1;
        inner.bytes += message_cost(payload.len());
        // Over the byte cap: whole streams go, least recently published first; a stream that is
        // over it alone keeps its newest message.
        let cap = self.limits.max_bytes as u64;
        while inner.bytes > cap {
            let Some(oldest) = inner.least_recent().filter(|&oldest| oldest != slot) else { break };
            let key = self.hash(&inner.streams[oldest as usize].user);
            inner.drop_stream(oldest, key);
        }
        while inner.bytes > cap && inner.streams[slot as usize].entries.len() > 1 {
            inner.pop_oldest_message(slot);
        }
        inner.streams[slot as usize].position()
    }

    fn top(&self, user: &[u8]) -> Position {
        let hash = self.hash(user);
        let (inner, _) = self.lock();
        match inner.find(hash, user) {
            Some(slot) => inner.streams[slot as usize].position(),
            None => Position { epoch: Epoch::NoStream { store: self.id, losses: inner.losses }, offset: 0 },
        }
    }

    fn read_since(
        &self,
        user: &[u8],
        since: Position,
        max_bytes: usize,
        out: &mut Vec<Stored>,
    ) -> Result<Position, Unrecoverable> {
        let hash = self.hash(user);
        let (mut inner, now) = self.lock();
        let Some(slot) = inner.find(hash, user) else {
            // Nothing published since a client was told "no stream": nothing missed.
            let unchanged = Epoch::NoStream { store: self.id, losses: inner.losses };
            let nothing_missed = since == Position { epoch: unchanged, offset: 0 };
            return if nothing_missed { Ok(since) } else { Err(Unrecoverable::Gap) };
        };
        let stream = &inner.streams[slot as usize];
        let continues = match since.epoch {
            Epoch::Stream(epoch) => epoch == stream.epoch,
            // Created after the client was told "no stream", with no stream lost in between.
            Epoch::NoStream { store, losses } => store == self.id && losses == stream.born_losses && since.offset == 0,
        };
        if !continues || since.offset > stream.top() {
            return Err(Unrecoverable::Gap);
        }
        inner.expire_messages(slot, now, self.ttl_secs);
        let stream = &inner.streams[slot as usize];
        if since.offset + 1 < stream.first {
            return Err(Unrecoverable::Gap); // trimmed or expired past it
        }
        let missed = stream.entries.range((since.offset + 1 - stream.first) as usize..);
        if missed.clone().map(|e| e.payload.len()).sum::<usize>() > max_bytes {
            return Err(Unrecoverable::TooLarge);
        }
        out.extend(missed.zip(since.offset + 1..).map(|(entry, offset)| Stored {
            offset,
            kind: if entry.binary { MessageKind::Binary } else { MessageKind::Text },
            payload: entry.payload.clone(),
        }));
        Ok(stream.position())
    }

    fn expire(&self) {
        drop(self.lock());
    }

    fn gauges(&self) -> HistoryGauges {
        let inner = self.inner.lock();
        HistoryGauges { users: inner.streams.len() as u64, messages: inner.messages, bytes: inner.bytes }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn store(max_messages: usize, max_bytes: usize) -> MemoryStore {
        MemoryStore::new(Limits { max_messages, ttl: Duration::from_secs(600), max_bytes })
    }

    fn read(store: &MemoryStore, user: &[u8], since: Position) -> Result<Vec<u64>, Unrecoverable> {
        let mut out = Vec::new();
        store.read_since(user, since, usize::MAX, &mut out)?;
        Ok(out.iter().map(|m| m.offset).collect())
    }

    #[test]
    fn offsets_count_per_user_from_one_and_resume_replays_what_follows() {
        let store = store(100, 1 << 20);
        let before = store.top(b"alice");
        assert_eq!(before.offset, 0);
        for i in 1..=5u64 {
            assert_eq!(store.append(b"alice", MessageKind::Text, format!("m{i}").as_bytes()).offset, i);
        }
        assert_eq!(store.append(b"bob", MessageKind::Binary, b"\x00").offset, 1);
        let top = store.top(b"alice");
        assert_eq!(top.offset, 5);
        let mut out = Vec::new();
        let at = Position { epoch: top.epoch, offset: 3 };
        assert_eq!(store.read_since(b"alice", at, usize::MAX, &mut out), Ok(top));
        assert_eq!(
            out,
            vec![
                Stored { offset: 4, kind: MessageKind::Text, payload: (*b"m4").into() },
                Stored { offset: 5, kind: MessageKind::Text, payload: (*b"m5").into() },
            ]
        );
        assert_eq!(read(&store, b"alice", top), Ok(vec![]));
        // A client that joined before alice's first message resumes from the start.
        assert_eq!(read(&store, b"alice", before), Ok(vec![1, 2, 3, 4, 5]));
        assert_eq!(read(&store, b"bob", Position { epoch: top.epoch, offset: 0 }), Err(Unrecoverable::Gap));
        assert_eq!(read(&store, b"alice", Position { epoch: top.epoch, offset: 6 }), Err(Unrecoverable::Gap));
        assert_eq!(store.gauges().users, 2);
        assert_eq!(store.gauges().messages, 6);
    }

    #[test]
    fn trimming_past_since_refuses_recovery() {
        let store = store(3, 1 << 20);
        for _ in 0..5 {
            store.append(b"u", MessageKind::Text, b"x");
        }
        let epoch = store.top(b"u").epoch;
        assert_eq!(read(&store, b"u", Position { epoch, offset: 2 }), Ok(vec![3, 4, 5]));
        assert_eq!(read(&store, b"u", Position { epoch, offset: 1 }), Err(Unrecoverable::Gap));
        assert_eq!(store.gauges().messages, 3);
    }

    #[test]
    fn the_byte_cap_evicts_least_recently_published_streams_and_ends_their_epoch() {
        let per_stream = stream_cost(1) + message_cost(100);
        let store = store(100, (per_stream * 3) as usize);
        let joined_a = store.top(b"a");
        let a = store.append(b"a", MessageKind::Text, &[b'x'; 100]);
        store.append(b"b", MessageKind::Text, &[b'x'; 100]);
        store.append(b"c", MessageKind::Text, &[b'x'; 100]);
        assert_eq!(store.gauges().users, 3);
        store.append(b"d", MessageKind::Text, &[b'x'; 100]); // "a" is the least recently published
        assert_eq!(store.gauges().users, 3);
        assert!(store.gauges().bytes <= per_stream * 3);
        assert_eq!(read(&store, b"a", a), Err(Unrecoverable::Gap));
        assert_eq!(read(&store, b"a", joined_a), Err(Unrecoverable::Gap));
        let again = store.append(b"a", MessageKind::Text, b"y");
        assert_eq!(again.offset, 1);
        assert_ne!(again.epoch, a.epoch);
        // A client at offset 0 of the new epoch (it saw the epoch in message 1) gets message 1.
        assert_eq!(read(&store, b"a", Position { epoch: again.epoch, offset: 0 }), Ok(vec![1]));
    }

    #[test]
    fn the_publish_order_stays_compact_and_knows_the_least_recent_stream() {
        let store = store(2, usize::MAX);
        for round in 0..10_000u32 {
            store.append(format!("u{}", round % 3).as_bytes(), MessageKind::Text, b"x");
        }
        store.append(b"u1", MessageKind::Text, b"x");
        store.append(b"u0", MessageKind::Text, b"x");
        let mut inner = store.inner.lock();
        assert!(inner.order.len() <= 2 * 3 + ORDER_SLACK, "{}", inner.order.len());
        let least = inner.least_recent().expect("three streams");
        assert_eq!(&*inner.streams[least as usize].user, b"u2");
    }

    #[test]
    fn a_replay_larger_than_allowed_is_refused() {
        let store = store(100, 1 << 20);
        for _ in 0..4 {
            store.append(b"u", MessageKind::Text, &[b'x'; 10]);
        }
        let epoch = store.top(b"u").epoch;
        let mut out = Vec::new();
        let since = Position { epoch, offset: 0 };
        assert_eq!(store.read_since(b"u", since, 39, &mut out), Err(Unrecoverable::TooLarge));
        assert!(out.is_empty());
        assert_eq!(store.read_since(b"u", since, 40, &mut out).map(|p| p.offset), Ok(4));
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn colliding_hashes_keep_users_apart() {
        // Force every user into one chain by giving the store a constant hash.
        let mut inner = Inner::default();
        let users: Vec<Vec<u8>> = (0..5).map(|i| format!("user{i}").into_bytes()).collect();
        let slots: Vec<u32> = users.iter().map(|u| inner.create(7, u)).collect();
        for (user, &slot) in users.iter().zip(&slots) {
            assert_eq!(inner.find(7, user), Some(slot));
        }
        inner.drop_stream(slots[2], 7);
        inner.drop_stream(slots[4], 7);
        assert_eq!(inner.find(7, &users[2]), None);
        assert_eq!(inner.find(7, &users[4]), None);
        for i in [0, 1, 3] {
            assert_eq!(inner.find(7, &users[i]), Some(slots[i]));
        }
        assert_eq!(inner.losses, 2);
        assert_eq!(inner.bytes, 3 * stream_cost(5));
    }

    #[test]
    fn expired_streams_go_whole_at_the_ttl() {
        let store = MemoryStore::new(Limits { max_messages: 10, ttl: Duration::from_millis(1), max_bytes: 1 << 20 });
        let first = store.append(b"u", MessageKind::Text, b"x");
        std::thread::sleep(Duration::from_millis(1100)); // the TTL rounds up to one second
        store.expire();
        assert_eq!(store.gauges(), HistoryGauges::default());
        assert_eq!(read(&store, b"u", first), Err(Unrecoverable::Gap));
        assert_ne!(store.append(b"u", MessageKind::Text, b"y").epoch, first.epoch);
    }

    #[test]
    fn a_stored_message_costs_at_most_48_bytes_beyond_its_payload() {
        assert_eq!(std::mem::size_of::<Entry>(), 24);
        assert!(message_cost(0) <= 48);
    }
}
