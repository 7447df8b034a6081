//! Local users: their subscriptions and the order rule.
//!
//! A user is subscribed (SSUBSCRIBE on its channel, batched per round) while it has a local
//! connection, and unsubscribed `LINGER` after its last one closed. Per subscribed user the node
//! remembers the epoch and last offset it delivered (`known`): a message at or below it is a
//! duplicate and dropped, the next one is delivered, a jump is filled from the stream first
//! (newer messages held meanwhile). After a subscriber link was lost, each of its users is read
//! again from its last offset once resubscribed: what Redis still holds is delivered, and where
//! history was lost (Redis restarted without its data, or trimmed past us) the user's
//! `wspush.v1` connections are closed with 1012 so their clients resume and learn they did not
//! recover. A live connection never sees a silent gap.

use std::hash::BuildHasher;
use std::time::Instant;

use super::commands::{position_of, stream_position};
use super::state::{Greeter, Held, Read, ReadFor, UserState, ACTIVE, FILLING, NEEDS_FILL, REFILL, SUBSCRIBING};
use super::topology::slot_of;
use super::{Bridge, LINGER, SUBSCRIBERS_PER_SHARD};
use crate::codec::close;
use crate::conn_id;
use crate::handle::{Command, ResumeOutcome, ANY_USER};
use crate::history::{Epoch, Position, Stored};
use crate::keymap::UserKey;
use crate::redis::keys::{self, ChannelMessage, BROADCAST_CHANNEL};
use crate::redis::resp::Reply;
use crate::stats::bump;
use crate::subprotocol;
use crate::types::ConnId;

/// Channels per SSUBSCRIBE / SUNSUBSCRIBE command.
const SUBSCRIBE_BATCH: usize = 1000;

impl Bridge {
    /// The key a user's state is kept under (a keyed hash: the ID itself is not kept).
    pub(super) fn key(&self, user: &[u8]) -> UserKey {
        self.user_keys.hash_one(user)
    }

    /// The shard (Redis primary) serving `user`'s keys and channel: its hash slot's, in a
    /// cluster.
    pub(super) fn shard_of(&self, user: &[u8]) -> usize {
        match &self.slots {
            Some(table) => usize::from(table[usize::from(slot_of(&keys::channel(user)))]),
            None => 0,
        }
    }

    /// The subscriber link for `user`: one of its shard's, spread by the key.
    fn route_of(&self, user: &[u8], key: UserKey) -> usize {
        self.shard_of(user) * SUBSCRIBERS_PER_SHARD + (key >> 32) as usize % SUBSCRIBERS_PER_SHARD
    }

    /// Makes sure `user` is subscribed, or being subscribed (once the topology is known).
    fn ensure_user(&mut self, user: &[u8]) {
        let key = self.key(user);
        let route = self.route_of(user, key);
        let state = self.users.get_or_insert_default(key);
        if state.has(ACTIVE | SUBSCRIBING) {
            return;
        }
        state.set_route(route);
        if let Some(subscriber) = self.subscribers.get_mut(route).filter(|subscriber| subscriber.ready) {
            state.set(SUBSCRIBING, true);
            subscriber.to_subscribe.push(keys::channel(user));
        }
    }

    fn has_local_connections(&self, user: &[u8]) -> bool {
        self.shared.registry.for_each_conn(user, |_, _| {}) > 0
    }

    pub(super) fn presence(&mut self, user: Box<[u8]>, now: Instant) {
        if self.has_local_connections(&user) {
            self.ensure_user(&user);
        } else if self.users.contains_key(self.key(&user)) {
            self.leaving.push_back((now + LINGER, user));
        }
    }

    /// Unsubscribes users whose linger is over and who did not come back.
    pub(super) fn sweep_leaving(&mut self, now: Instant) {
        let mut to_unsubscribe: Vec<Vec<Vec<u8>>> = vec![Vec::new(); self.subscribers.len()];
        while self.leaving.front().is_some_and(|(due, _)| *due <= now) {
            let Some((_, user)) = self.leaving.pop_front() else { break };
            let key = self.key(&user);
            let Some(state) = self.users.get(key) else { continue };
            if self.has_local_connections(&user) {
                continue;
            }
            if state.has(SUBSCRIBING | FILLING) || self.greeters.contains_key(&user) {
                // Settle first: an unsubscribe crossing a pending subscribe would confuse whose
                // confirmation is whose.
                self.leaving.push_back((now + LINGER, user));
                continue;
            }
            let (route, subscribed) = (state.route(), state.has(ACTIVE));
            self.users.remove(key);
            self.held.remove(&user);
            if subscribed && self.subscribers.get(route).is_some_and(|subscriber| subscriber.ready) {
                to_unsubscribe[route].push(keys::channel(&user));
            }
        }
        let batch_size = self.subscribe_batch();
        for (link, channels) in to_unsubscribe.iter().enumerate() {
            for batch in channels.chunks(batch_size) {
                let mut args: Vec<&[u8]> = vec![b"SUNSUBSCRIBE"];
                args.extend(batch.iter().map(Vec::as_slice));
                self.subscribers[link].link.send_owing(&args, batch.len(), now);
            }
        }
    }

    /// Channels per SSUBSCRIBE / SUNSUBSCRIBE: a Redis Cluster wants one slot per command.
    fn subscribe_batch(&self) -> usize {
        if self.slots.is_some() {
            1
        } else {
            SUBSCRIBE_BATCH
        }
    }

    /// Sends this round's subscriptions, batched.
    pub(super) fn flush_subscriptions(&mut self, now: Instant) {
        let batch_size = self.subscribe_batch();
        for subscriber in &mut self.subscribers {
            let channels = std::mem::take(&mut subscriber.to_subscribe);
            for batch in channels.chunks(batch_size) {
                let mut args: Vec<&[u8]> = vec![b"SSUBSCRIBE"];
                args.extend(batch.iter().map(Vec::as_slice));
                subscriber.link.send_owing(&args, batch.len(), now);
            }
        }
    }

    /// A subscriber link started connecting: log in, then subscribe its users (sent once
    /// connected, in that order). The bridge keeps no user IDs, so the I/O threads name the
    /// users of their open connections again; those not subscribed are then.
    pub(super) fn subscriber_connecting(&mut self, i: usize, now: Instant) {
        let subscriber = &mut self.subscribers[i];
        subscriber.setup_left = Self::send_login(&self.url, &mut subscriber.link, now);
        subscriber.ready = true;
        if i == 0 {
            subscriber.link.send(&[b"SUBSCRIBE", BROADCAST_CHANNEL], now);
        }
        if self.users.values().any(|state| state.route() == i) {
            for thread in self.shared.threads.iter() {
                thread.push(Command::Census);
            }
        }
    }

    pub(super) fn subscriber_failed(&mut self, i: usize, why: &str, now: Instant) {
        let stopping = self.stopping;
        let Some(subscriber) = self.subscribers.get_mut(i) else { return };
        if subscriber.ready && subscriber.link.is_up() && !stopping {
            eprintln!("wspush: lost a Redis subscriber connection ({why}); reconnecting");
        }
        subscriber.link.drop_connection(self.poll.registry(), now);
        subscriber.ready = false;
        subscriber.setup_left = 0;
        subscriber.to_subscribe.clear();
        for state in self.users.values_mut().filter(|state| state.route() == i) {
            state.set(ACTIVE | SUBSCRIBING, false);
            let known = state.known().is_some();
            state.set(NEEDS_FILL, known);
        }
    }

    pub(super) fn on_subscriber_event(&mut self, i: usize, replies: &mut Vec<Reply>, now: Instant) {
        let Some(subscriber) = self.subscribers.get_mut(i) else { return };
        let result = subscriber.link.on_event(replies, now);
        let generation = self.generation;
        for reply in replies.drain(..) {
            if self.generation != generation {
                continue; // the links were remade: these replies are for the old ones
            }
            self.on_subscriber_reply(i, reply, now);
        }
        if let (Err(dead), true) = (result, self.generation == generation) {
            self.subscriber_failed(i, dead.0, now);
        }
    }

    fn on_subscriber_reply(&mut self, i: usize, reply: Reply, now: Instant) {
        let subscriber = &mut self.subscribers[i];
        if subscriber.setup_left > 0 {
            subscriber.link.answered();
            subscriber.setup_left -= 1;
            if let Reply::Error(error) = reply {
                eprintln!("wspush: Redis refused a subscriber's login: {}", String::from_utf8_lossy(&error));
                self.subscriber_failed(i, "login refused", now);
            }
            return;
        }
        let items = match reply {
            Reply::Array(Some(items)) => items,
            Reply::Error(error) if error.starts_with(b"MOVED ") => {
                // The channel's slot is served elsewhere now: once the topology is known again
                // every user is subscribed where it belongs.
                subscriber.link.answered();
                return self.refresh_topology(now);
            }
            Reply::Error(error) => {
                eprintln!("wspush: Redis refused a subscription: {}", String::from_utf8_lossy(&error));
                return self.subscriber_failed(i, "subscription refused", now);
            }
            // A connection subscribed to nothing (all its users left) is out of subscriber mode:
            // its PING is answered +PONG.
            _ => return subscriber.link.answered(),
        };
        match super::bytes_at(&items, 0) {
            Some(b"smessage") => {
                let (Some(channel), Some(data)) = (super::bytes_at(&items, 1), super::bytes_at(&items, 2)) else {
                    return;
                };
                let (Some(user), Some(message)) = (keys::user_of_channel(channel), ChannelMessage::parse(data)) else {
                    return;
                };
                self.on_user_message(&user, message, now);
            }
            Some(b"message") => {
                if let Some((kind, payload)) = super::bytes_at(&items, 2).and_then(keys::parse_broadcast) {
                    self.shared.broadcast_here(kind, payload);
                }
            }
            Some(b"ssubscribe") => {
                subscriber.link.answered();
                if let Some(user) = super::bytes_at(&items, 1).and_then(keys::user_of_channel) {
                    self.on_subscribed(&user, now);
                }
            }
            Some(b"sunsubscribe") => {
                let user = super::bytes_at(&items, 1).and_then(keys::user_of_channel);
                let subscribed =
                    user.is_some_and(|user| self.users.get(self.key(&user)).is_some_and(|s| s.has(ACTIVE)));
                if subscribed {
                    // Not asked for (a user is forgotten before its SUNSUBSCRIBE goes out): Redis
                    // Cluster moved the channel's slot to another primary.
                    self.refresh_topology(now);
                } else {
                    self.subscribers[i].link.answered();
                }
            }
            Some(b"subscribe" | b"unsubscribe" | b"pong") => subscriber.link.answered(),
            _ => {}
        }
    }

    fn on_subscribed(&mut self, user: &[u8], now: Instant) {
        let key = self.key(user);
        let Some(state) = self.users.get_mut(key) else { return };
        state.set(SUBSCRIBING, false);
        state.set(ACTIVE, true);
        if state.take(NEEDS_FILL) && !state.has(FILLING) {
            state.set(FILLING, true);
            let from = state.known().map(|(_, last)| last);
            self.fill(user, from, true, now);
        }
        self.greet_waiting(user, true, now);
    }

    /// Whether a raw connection of a user in `state` must wait for the node to learn the user's
    /// position: with history, a node that never delivered to the user would have nothing to
    /// catch it up from after a lost subscriber link (a `wspush.v1` welcome teaches it anyway).
    fn position_first(&self, state: UserState, read: bool) -> bool {
        !read && self.history.is_some() && state.known().is_none()
    }

    /// Lets go the connections waiting for `user`, once it is subscribed and no read of its
    /// stream is under way; first reads its position if a raw one needs it (`learn`).
    fn greet_waiting(&mut self, user: &[u8], learn: bool, now: Instant) {
        let Some(&state) = self.users.get(self.key(user)) else { return };
        if !state.has(ACTIVE) || state.has(FILLING) {
            return;
        }
        let waiting = self.greeters.get(user).map_or(&[][..], Vec::as_slice);
        if learn && waiting.iter().any(|greeter| self.position_first(state, greeter.read)) {
            return self.learn_position(user, now);
        }
        for greeter in self.greeters.remove(user).unwrap_or_default() {
            self.greet_now(user, greeter.conn, greeter.since, greeter.read, now);
        }
    }

    /// A connection of `user` opened here and waits for its user's subscription (and with
    /// `read`, its welcome from Redis).
    pub(super) fn greet(
        &mut self,
        conn: ConnId,
        user: Box<[u8]>,
        since: Option<Option<Position>>,
        read: bool,
        now: Instant,
    ) {
        self.ensure_user(&user);
        let state = self.users.get(self.key(&user)).copied().unwrap_or_default();
        if state.has(ACTIVE) && !self.position_first(state, read) {
            self.greet_now(&user, conn, since, read, now);
        } else {
            if state.has(ACTIVE) && !state.has(FILLING) {
                self.learn_position(&user, now);
            }
            self.greeters.entry(user).or_default().push(Greeter { conn, since, read, queued: now });
        }
    }

    /// Reads where `user`'s stream is; the messages that arrive meanwhile are held and, once the
    /// position is known, those after it are delivered (to connections still waiting for their
    /// 101, which are let go then).
    fn learn_position(&mut self, user: &[u8], now: Instant) {
        if let Some(state) = self.users.get_mut(self.key(user)) {
            state.set(FILLING, true);
        }
        self.issue_read(Read { user: user.into(), from: None, why: ReadFor::Position }, now);
    }

    /// The user's channel is subscribed: a waiting connection is let go (its upgrade answered),
    /// or its welcome read.
    fn greet_now(&mut self, user: &[u8], conn: ConnId, since: Option<Option<Position>>, read: bool, now: Instant) {
        if read {
            self.read_for_greeting(user, conn, since, now);
        } else {
            self.post(conn, Command::Welcome { conn, frames: Vec::new(), top: None, resume: ResumeOutcome::NotAsked });
        }
    }

    /// Reads from the older of the client's `since` and what this node delivered, so the same
    /// read also brings the node's other connections up to the top the welcome names.
    fn read_for_greeting(&mut self, user: &[u8], conn: ConnId, since: Option<Option<Position>>, now: Instant) {
        let known = self.users.get(self.key(user)).and_then(UserState::known);
        let asked = match since {
            Some(Some(Position { epoch: Epoch::Stream(epoch), offset })) => Some((epoch, offset)),
            _ => None,
        };
        let from = match (known, asked) {
            (Some((epoch, last)), Some((asked_epoch, offset))) if epoch == asked_epoch => Some(last.min(offset)),
            (Some((_, last)), _) => Some(last),
            (None, Some((_, offset))) => Some(offset),
            (None, None) => None,
        };
        self.issue_read(Read { user: user.into(), from, why: ReadFor::Greet { conn, since } }, now);
    }

    /// Connections that waited longer than the timeout for their user's subscription: one that
    /// needs its welcome from Redis is refused (1013); any other is let go, at most once, as
    /// while Redis is down.
    pub(super) fn expire_greeters(&mut self, now: Instant) {
        let timeout = self.timeout;
        let mut expired = Vec::new();
        self.greeters.retain(|_, list| {
            list.retain(|greeter| {
                let keep = now.duration_since(greeter.queued) < timeout;
                if !keep {
                    expired.push((greeter.conn, greeter.read));
                }
                keep
            });
            !list.is_empty()
        });
        for (conn, read) in expired {
            match read {
                true => self.refuse_greeting(conn),
                false => self.post(
                    conn,
                    Command::Welcome { conn, frames: Vec::new(), top: None, resume: ResumeOutcome::NotAsked },
                ),
            }
        }
    }

    /// A message from `user`'s channel, in channel order.
    fn on_user_message(&mut self, user: &[u8], message: ChannelMessage<'_>, now: Instant) {
        let key = self.key(user);
        let Some(state) = self.users.get_mut(key) else { return };
        let Some(Position { epoch: Epoch::Stream(epoch), offset }) = message.stream else {
            // History off: nothing to order by.
            return self.deliver(user, &message);
        };
        if state.has(FILLING) {
            return self.hold(user, key, &message);
        }
        let fill_from = match state.known() {
            None => None,
            Some((known_epoch, last)) if known_epoch == epoch && offset <= last => return, // already delivered
            Some((known_epoch, last)) if known_epoch == epoch && offset == last + 1 => None,
            Some((known_epoch, last)) if known_epoch == epoch => Some(last),
            Some(_) if offset == 1 => None, // a new stream: the old one expired while we were in sync
            Some(_) => Some(0),
        };
        match fill_from {
            None => {
                state.set_known(epoch, offset);
                self.deliver(user, &message);
            }
            Some(from) => {
                state.set(FILLING, true);
                self.hold(user, key, &message);
                self.fill(user, Some(from), false, now);
            }
        }
    }

    /// Keeps a message (the only copy the bridge makes of one) while the user's history is
    /// read; past the send-queue limit the held ones are dropped and read again after the fill.
    fn hold(&mut self, user: &[u8], key: UserKey, message: &ChannelMessage<'_>) {
        let queue = self.held.entry(user.into()).or_default();
        queue.bytes += message.payload.len();
        queue.messages.push(Held { stream: message.stream, kind: message.kind, payload: message.payload.into() });
        if queue.bytes > self.shared.config.max_queue_bytes {
            *queue = Default::default();
            if let Some(state) = self.users.get_mut(key) {
                state.set(REFILL, true);
            }
        }
    }

    /// Reads `user`'s stream after `from` to fill what this node has not delivered.
    fn fill(&mut self, user: &[u8], from: Option<u64>, after_outage: bool, now: Instant) {
        bump(&self.outbox.stats.fills_total, 1);
        self.issue_read(Read { user: user.into(), from, why: ReadFor::Fill { after_outage } }, now);
    }

    fn deliver(&mut self, user: &[u8], message: &ChannelMessage<'_>) {
        self.shared.queue_to_user(user, message.kind, message.payload, message.stream, &mut self.wakes);
    }

    /// A read of a user's stream came back.
    pub(super) fn on_read(&mut self, read: Read, reply: Reply, now: Instant) {
        let items = reply.into_array().unwrap_or_default();
        let position = position_of(&items);
        let entries = match (position, items.get(2)) {
            (Some((_, top)), Some(list)) => entries_of(list, top),
            _ => Vec::new(),
        };
        let Some((epoch, top)) = position else {
            eprintln!("wspush: unexpected reply to a stream read");
            if let ReadFor::Greet { conn, .. } = read.why {
                self.refuse_greeting(conn);
            } else if let Some(state) = self.users.get_mut(self.key(&read.user)) {
                state.set(FILLING, false);
                self.release_held(&read.user, now);
                // Without a position rather than not at all (another read could fail alike).
                self.greet_waiting(&read.user, false, now);
            }
            return;
        };
        match read.why {
            ReadFor::Fill { after_outage } => {
                self.catch_up(&read.user, (epoch, top), &entries, read.from, true, after_outage);
                self.fill_done(&read.user, now);
            }
            ReadFor::Position => {
                // Unless a welcome's read taught it meanwhile: then that one holds.
                if let Some(state) = self.users.get_mut(self.key(&read.user)).filter(|state| state.known().is_none()) {
                    state.set_known(epoch, top);
                }
                self.fill_done(&read.user, now);
            }
            ReadFor::Greet { conn, since } => {
                self.catch_up(&read.user, (epoch, top), &entries, read.from, false, false);
                self.welcome(conn, stream_position(epoch, top), since, &entries);
            }
        }
    }

    /// A fill or position read is over: the messages held meanwhile go through the order rule,
    /// and the connections that waited for it are let go.
    fn fill_done(&mut self, user: &[u8], now: Instant) {
        if let Some(state) = self.users.get_mut(self.key(user)) {
            state.set(FILLING, false);
        }
        self.release_held(user, now);
        self.greet_waiting(user, true, now);
    }

    /// Brings the user's connections here up to `top` with what the read brought, or, when
    /// that cannot be done without a gap and the read was meant to, resets them.
    fn catch_up(
        &mut self,
        user: &[u8],
        (epoch, top): (u64, u64),
        entries: &[Stored],
        from: Option<u64>,
        fill: bool,
        after_outage: bool,
    ) {
        let key = self.key(user);
        let Some(state) = self.users.get_mut(key) else { return };
        let Some((known_epoch, last)) = state.known() else {
            state.set_known(epoch, top);
            return;
        };
        let same_epoch = known_epoch == epoch;
        if same_epoch && top < last {
            // The stream went back in time: Redis restarted from a snapshot or an AOF that was
            // not fsynced per write. Offsets after `top` will be reused for other messages.
            state.set_known(epoch, top);
            return self.reset(user);
        }
        if same_epoch && top == last {
            return;
        }
        let base = if same_epoch { last } else { 0 };
        let newer = &entries[entries.partition_point(|entry| entry.offset <= base)..];
        let covered = from.is_some_and(|from| from <= base)
            && newer.len() as u64 == top - base
            && newer.iter().zip(base + 1..).all(|(entry, offset)| entry.offset == offset);
        let complete = covered && (same_epoch || !after_outage);
        if !complete && !fill {
            // A greeting's read that does not cover the jump: the channel brings those messages
            // (a loss among them is a jump the next message reveals).
            return;
        }
        state.set_known(epoch, top);
        if !complete {
            // The wspush.v1 connections are sent away first; raw ones (no offsets, nothing to
            // resume) get what the stream still has.
            self.reset(user);
        }
        for entry in newer {
            let stream = Some(stream_position(epoch, entry.offset));
            self.shared.queue_to_user(user, entry.kind, &entry.payload, stream, &mut self.wakes);
        }
    }

    /// Replays the messages held during a fill through the order rule.
    fn release_held(&mut self, user: &[u8], now: Instant) {
        for held in self.held.remove(user).unwrap_or_default().messages {
            let message = ChannelMessage { stream: held.stream, kind: held.kind, payload: &held.payload };
            self.on_user_message(user, message, now);
        }
        let key = self.key(user);
        let Some(state) = self.users.get_mut(key) else { return };
        if state.take(REFILL) && !state.has(FILLING) {
            state.set(FILLING, true);
            let from = state.known().map(|(_, last)| last);
            self.fill(user, from, false, now);
        }
    }

    /// History was lost under `user`'s `wspush.v1` connections here: they are closed so their
    /// clients resume and are told.
    fn reset(&mut self, user: &[u8]) {
        bump(&self.outbox.stats.resets_total, 1);
        eprintln!("wspush: history lost under a user's connections (Redis lost or trimmed it); closing them with 1012");
        let mut posts = Vec::new();
        self.shared.registry.for_each_conn(user, |conn, _| posts.push(conn));
        for conn in posts {
            self.post(conn, Command::Reset { conn });
        }
    }

    /// Sends a waiting `wspush.v1` connection its welcome: recovered when its `since` is in
    /// this epoch and everything after it is in `entries` and fits its queue.
    fn welcome(&mut self, conn: ConnId, top: Position, since: Option<Option<Position>>, entries: &[Stored]) {
        let (frames, resume) = match since {
            None => (vec![subprotocol::welcome(Some(top), false)], ResumeOutcome::NotAsked),
            Some(since) => {
                let replay =
                    since.filter(|since| since.epoch == top.epoch && since.offset <= top.offset).and_then(|since| {
                        let missed = &entries[entries.partition_point(|entry| entry.offset <= since.offset)..];
                        let complete = missed.len() as u64 == top.offset - since.offset
                            && missed.iter().zip(since.offset + 1..).all(|(entry, offset)| entry.offset == offset);
                        complete.then(|| subprotocol::replay(top, missed, self.shared.config.max_queue_bytes)).flatten()
                    });
                match replay {
                    Some(frames) => (frames, ResumeOutcome::Recovered),
                    None => (vec![subprotocol::welcome(Some(top), false)], ResumeOutcome::NotRecovered),
                }
            }
        };
        self.post(conn, Command::Welcome { conn, frames, top: Some(top), resume });
    }

    /// Redis could not be asked in time: the client is closed with 1013 (try again later) and
    /// reconnects with its `since`, rather than be welcomed at a position nobody checked.
    pub(super) fn refuse_greeting(&mut self, conn: ConnId) {
        let reason = "Redis unavailable".into();
        self.post(conn, Command::Close { conn, code: close::TRY_AGAIN_LATER, reason, user_check: ANY_USER });
    }

    fn post(&mut self, conn: ConnId, command: Command) {
        let (thread, _, _) = conn_id::split(conn);
        if let Some(owner) = self.shared.threads.get(thread) {
            if owner.enqueue(command) {
                self.wakes.add(thread);
            }
        }
    }
}

/// The history entries a read returned (`KIND PAYLOAD` each, the last one at offset `top`),
/// numbered; a malformed one ends the list there (what follows counts as missing).
fn entries_of(reply: &Reply, top: u64) -> Vec<Stored> {
    let Some(items) = reply.as_array() else { return Vec::new() };
    let Some(first) = (top + 1).checked_sub(items.len() as u64).filter(|&first| first >= 1) else { return Vec::new() };
    items
        .iter()
        .zip(first..)
        .map_while(|(item, offset)| {
            let (&kind, payload) = item.as_bytes()?.split_first()?;
            Some(Stored { offset, kind: keys::kind_of(kind)?, payload: payload.into() })
        })
        .collect()
}
