//! The command links (one per Redis primary): publishes, broadcasts and reads of users'
//! histories, pipelined; each reply is matched to its request by order. While a link is down
//! (or logging in), or before the topology is known, work waits in `waiting`, up to the
//! timeout: then publishes fail with `Unavailable` and greetings are refused, and the host never
//! waits longer than that. A request answered MOVED (a Redis Cluster slot moved) is sent again
//! once CLUSTER SLOTS tells where.

use std::time::Instant;

use super::state::{Pending, Read, ReadFor, Script, Waiting};
use super::topology::parse_cluster_slots;
use super::{Bridge, Subscriber, MAX_SHARDS, SUBSCRIBERS_PER_SHARD};
use crate::error::Error;
use crate::guard::guarded;
use crate::handle::Command;
use crate::history::Position;
use crate::redis::keys::{self, ChannelMessage, BROADCAST_CHANNEL, PUBLISH_SCRIPT, READ_SCRIPT};
use crate::redis::outbox::counted_bytes;
use crate::redis::resp::Reply;
use crate::redis::Done;
use crate::stats::bump;
use crate::types::Published;

impl Bridge {
    pub(super) fn on_command_event(&mut self, shard: usize, replies: &mut Vec<Reply>, now: Instant) {
        let Some(command) = self.commands.get_mut(shard) else { return };
        let result = command.link.on_event(replies, now);
        let generation = self.generation;
        for reply in replies.drain(..) {
            if self.generation != generation {
                continue; // the links were remade: these replies are for the old ones
            }
            self.on_command_reply(shard, reply, now);
        }
        if let (Err(dead), true) = (result, self.generation == generation) {
            self.command_failed(shard, dead.0, now);
        }
    }

    /// A connect started: queue the login, the first CLUSTER SLOTS and the scripts (sent once
    /// connected).
    pub(super) fn command_connecting(&mut self, shard: usize, now: Instant) {
        let command = &mut self.commands[shard];
        let logins = Self::send_login(&self.url, &mut command.link, now);
        let mut setup: Vec<Pending> = (0..logins).map(|_| Pending::Login).collect();
        if !self.topology_known {
            command.link.send(&[b"CLUSTER", b"SLOTS"], now);
            setup.push(Pending::Topology);
        }
        if self.history.is_some() {
            for (script, text) in [(Script::Publish, PUBLISH_SCRIPT), (Script::Read, READ_SCRIPT)] {
                command.link.send(&[b"SCRIPT", b"LOAD", text.as_bytes()], now);
                setup.push(Pending::LoadScript(script));
            }
        }
        if setup.is_empty() {
            command.link.send(&[b"PING"], now);
            setup.push(Pending::Login);
        }
        command.setup_left = setup.len();
        command.pending.extend(setup);
    }

    fn on_command_reply(&mut self, shard: usize, reply: Reply, now: Instant) {
        let command = &mut self.commands[shard];
        command.link.answered();
        let Some(pending) = command.pending.pop_front() else {
            return self.command_failed(shard, "a reply nobody asked for", now);
        };
        match pending {
            Pending::Login => match reply {
                Reply::Error(error) => self.setup_refused(shard, "login", &error, now),
                _ => self.setup_step(shard, now),
            },
            Pending::LoadScript(script) => match reply.as_bytes() {
                Some(sha) => {
                    let sha = sha.to_vec();
                    match script {
                        Script::Publish => self.publish_sha = sha,
                        Script::Read => self.read_sha = sha,
                    }
                    self.setup_step(shard, now);
                }
                None => self.setup_refused(shard, "SCRIPT LOAD", &error_text(&reply), now),
            },
            Pending::Topology => self.on_topology(shard, &reply, now),
            Pending::Ping => {}
            Pending::Work(item) if is_moved(&reply) => {
                // Not run: the slot is served elsewhere. Sent again once the topology is known.
                self.waiting.push_back(item);
                self.refresh_topology(now);
            }
            Pending::Work(Waiting::Publish { user, payload, done, .. }) => {
                self.outbox.release(counted_bytes(&user, &payload));
                match published(&reply) {
                    Some(outcome) => {
                        if let Some(done) = done {
                            guarded(|| done(Ok(outcome)));
                        }
                    }
                    None => {
                        eprintln!("wspush: Redis refused a publish: {}", String::from_utf8_lossy(&error_text(&reply)));
                        self.publish_failed(done);
                        self.reload_if_scripts_gone(shard, &reply, now);
                    }
                }
            }
            Pending::Work(Waiting::Broadcast { payload, .. }) => self.outbox.release(payload.len()),
            Pending::Work(Waiting::Read { read, .. }) => {
                self.reload_if_scripts_gone(shard, &reply, now);
                self.on_read(read, reply, now);
            }
        }
    }

    /// CLUSTER SLOTS answered: a Redis without cluster support says so (one shard, the URL's);
    /// a cluster's table remakes the links if it changed.
    fn on_topology(&mut self, shard: usize, reply: &Reply, now: Instant) {
        let in_setup = !self.commands[shard].ready;
        self.refreshing = false;
        match parse_cluster_slots(reply) {
            Some((addresses, table)) if addresses.len() <= MAX_SHARDS => {
                if self.slots.as_deref() != Some(&table[..]) || self.addresses != addresses {
                    eprintln!("wspush: Redis Cluster with {} primaries: {}", addresses.len(), addresses.join(", "));
                    return self.rebuild(addresses, Some(table), now);
                }
            }
            Some((addresses, _)) => {
                eprintln!("wspush: a Redis Cluster of {} primaries is more than {MAX_SHARDS}", addresses.len());
                return self.command_failed(shard, "too many primaries", now);
            }
            None if matches!(reply, Reply::Error(text) if text.windows(15).any(|w| w == b"cluster support")) => {
                if !self.topology_known {
                    self.topology_known = true;
                    self.subscribers = (0..SUBSCRIBERS_PER_SHARD).map(|i| Subscriber::new(i, now)).collect();
                    for thread in self.shared.threads.iter() {
                        thread.push(Command::Census);
                    }
                }
            }
            None => {
                eprintln!(
                    "wspush: unexpected answer to CLUSTER SLOTS: {}",
                    String::from_utf8_lossy(&error_text(reply))
                );
                return self.command_failed(shard, "no topology", now);
            }
        }
        if in_setup {
            self.setup_step(shard, now);
        }
    }

    /// Asks a ready primary where the slots are now (after a MOVED), once at a time.
    pub(super) fn refresh_topology(&mut self, now: Instant) {
        if self.refreshing || self.slots.is_none() {
            return;
        }
        if let Some(command) = self.commands.iter_mut().find(|command| command.ready) {
            command.link.send(&[b"CLUSTER", b"SLOTS"], now);
            command.pending.push_back(Pending::Topology);
            self.refreshing = true;
        }
    }

    /// Someone ran SCRIPT FLUSH (or Redis failed over to a replica without our scripts): make
    /// the link again, which loads them again.
    fn reload_if_scripts_gone(&mut self, shard: usize, reply: &Reply, now: Instant) {
        if matches!(reply, Reply::Error(text) if text.starts_with(b"NOSCRIPT")) {
            self.command_failed(shard, "scripts are gone from Redis", now);
        }
    }

    fn setup_refused(&mut self, shard: usize, what: &str, error: &[u8], now: Instant) {
        eprintln!("wspush: Redis at {} refused {what}: {}", self.addresses[shard], String::from_utf8_lossy(error));
        self.command_failed(shard, "setup refused", now);
    }

    fn setup_step(&mut self, shard: usize, now: Instant) {
        let command = &mut self.commands[shard];
        command.setup_left = command.setup_left.saturating_sub(1);
        if command.setup_left > 0 || command.ready {
            return;
        }
        command.ready = true;
        if self.down_since.take().is_some() {
            eprintln!("wspush: connected to Redis at {}", self.addresses[shard]);
        }
        self.outbox.set_down(false);
        self.dispatch_waiting(now);
    }

    /// The shard whose ready command link can take `item` now, if any.
    fn ready_shard_for(&self, item: &Waiting) -> Option<usize> {
        if !self.topology_known || self.refreshing {
            return None;
        }
        let shard = match item {
            Waiting::Publish { user, .. } | Waiting::Read { read: Read { user, .. }, .. } => self.shard_of(user),
            // Broadcast channels are plain pub/sub: any primary spreads them cluster-wide.
            Waiting::Broadcast { .. } => self.commands.iter().position(|command| command.ready)?,
        };
        self.commands.get(shard).filter(|command| command.ready).map(|_| shard)
    }

    /// Sends what waited and can go now, keeping the rest in order.
    fn dispatch_waiting(&mut self, now: Instant) {
        let waiting = std::mem::take(&mut self.waiting);
        for item in waiting {
            match self.ready_shard_for(&item) {
                Some(shard) => self.send(shard, item, now),
                None => self.waiting.push_back(item),
            }
        }
    }

    /// Sends a publish, broadcast or read now, or queues it until its shard is ready.
    pub(super) fn publish(&mut self, item: Waiting, now: Instant) {
        match self.ready_shard_for(&item) {
            Some(shard) => self.send(shard, item, now),
            None => self.waiting.push_back(item),
        }
    }

    pub(super) fn issue_read(&mut self, read: Read, now: Instant) {
        self.publish(Waiting::Read { read, queued: now }, now);
    }

    fn send(&mut self, shard: usize, item: Waiting, now: Instant) {
        let epoch = self.next_epoch();
        let link = &mut self.commands[shard].link;
        match &item {
            Waiting::Publish { user, kind, payload, .. } => {
                let channel = keys::channel(user);
                match &self.history {
                    Some(history) => {
                        let (meta, history_key) = (keys::meta(user), keys::history(user));
                        let kind = [keys::kind_byte(*kind)];
                        link.send(
                            &[
                                b"EVALSHA",
                                &self.publish_sha,
                                b"2",
                                &meta,
                                &history_key,
                                &epoch,
                                &history.ttl_secs,
                                &kind,
                                payload,
                                &history.max_messages,
                                &channel,
                            ],
                            now,
                        );
                    }
                    None => link.send(&[b"SPUBLISH", &channel, &ChannelMessage::unnumbered(*kind, payload)], now),
                }
            }
            Waiting::Broadcast { kind, payload, .. } => {
                link.send(&[b"PUBLISH", BROADCAST_CHANNEL, &keys::broadcast_message(*kind, payload)], now);
            }
            Waiting::Read { read, .. } => {
                let Some(history) = &self.history else { return };
                let (meta, history_key) = (keys::meta(&read.user), keys::history(&read.user));
                let from = read.from.map(|from| from.to_string().into_bytes()).unwrap_or_default();
                link.send(
                    &[b"EVALSHA", &self.read_sha, b"2", &meta, &history_key, &epoch, &history.ttl_secs, &from],
                    now,
                );
            }
        }
        self.commands[shard].pending.push_back(Pending::Work(item));
    }

    /// A command link is lost (or could not be made): what Redis owed on it is failed
    /// (publishes: they may have run) or retried (fills), and the link reconnects after a backoff.
    pub(super) fn command_failed(&mut self, shard: usize, why: &str, now: Instant) {
        let Some(command) = self.commands.get_mut(shard) else { return };
        if command.ready && !self.stopping {
            eprintln!("wspush: lost Redis at {} ({why}); reconnecting", self.addresses[shard]);
        }
        command.link.drop_connection(self.poll.registry(), now);
        command.ready = false;
        command.setup_left = 0;
        let pending: Vec<Pending> = command.pending.drain(..).collect();
        if self.down_since.is_none() && !self.commands.iter().any(|command| command.ready) {
            self.down_since = Some(now);
        }
        for owed in pending {
            match owed {
                Pending::Work(Waiting::Publish { user, payload, done, .. }) => {
                    self.outbox.release(counted_bytes(&user, &payload));
                    self.publish_failed(done);
                }
                Pending::Work(Waiting::Broadcast { payload, .. }) => self.outbox.release(payload.len()),
                Pending::Work(Waiting::Read { read, .. }) => match read.why {
                    ReadFor::Fill { .. } | ReadFor::Position => {
                        self.waiting.push_back(Waiting::Read { read, queued: now })
                    }
                    ReadFor::Greet { conn, .. } => self.refuse_greeting(conn),
                },
                Pending::Topology => self.refreshing = false,
                Pending::Login | Pending::LoadScript(_) | Pending::Ping => {}
            }
        }
    }

    /// Fails what waited for the link longer than the timeout.
    pub(super) fn expire_waiting(&mut self, now: Instant) {
        let timeout = self.timeout;
        let overdue = |item: &Waiting| item.expires() && now.duration_since(item.queued()) >= timeout;
        if self.waiting.iter().any(overdue) {
            let (expired, kept): (Vec<Waiting>, Vec<Waiting>) = self.waiting.drain(..).partition(overdue);
            self.waiting = kept.into();
            for item in expired {
                self.give_up(item);
            }
        }
        self.expire_greeters(now);
    }

    fn publish_failed(&mut self, done: Option<Done>) {
        bump(&self.outbox.stats.publish_failures_total, 1);
        if let Some(done) = done {
            guarded(|| done(Err(Error::Unavailable)));
        }
    }

    /// Answers work that will not be sent.
    pub(super) fn give_up(&mut self, item: Waiting) {
        match item {
            Waiting::Publish { user, payload, done, .. } => {
                self.outbox.release(counted_bytes(&user, &payload));
                self.publish_failed(done);
            }
            Waiting::Broadcast { payload, .. } => self.outbox.release(payload.len()),
            Waiting::Read { read, .. } => {
                if let ReadFor::Greet { conn, .. } = read.why {
                    self.refuse_greeting(conn);
                }
            }
        }
    }
}

/// A publish's outcome from its reply: `{epoch, offset, nodes}` from the script, or the node
/// count from SPUBLISH (history off).
fn published(reply: &Reply) -> Option<Published> {
    match reply {
        Reply::Int(nodes) => Some(Published { delivered: usize::try_from(*nodes).ok()?, offset: None }),
        Reply::Array(Some(items)) => {
            let offset = items.get(1)?.as_int()?;
            let nodes = items.get(2)?.as_int()?;
            Some(Published { delivered: usize::try_from(nodes).ok()?, offset: Some(u64::try_from(offset).ok()?) })
        }
        _ => None,
    }
}

/// Whether Redis Cluster answered that the key's slot is served by another primary.
fn is_moved(reply: &Reply) -> bool {
    matches!(reply, Reply::Error(text) if text.starts_with(b"MOVED ") || text.starts_with(b"ASK "))
}

fn error_text(reply: &Reply) -> Vec<u8> {
    match reply {
        Reply::Error(text) => text.clone(),
        other => format!("unexpected reply {other:?}").into_bytes(),
    }
}

/// The position a read reply reports: `{epoch, top, ...}`.
pub(super) fn position_of(items: &[Reply]) -> Option<(u64, u64)> {
    let epoch = keys::parse_epoch(super::bytes_at(items, 0)?)?;
    let top = u64::try_from(items.get(1)?.as_int()?).ok()?;
    Some((epoch, top))
}

pub(super) fn stream_position(epoch: u64, offset: u64) -> Position {
    Position { epoch: crate::history::Epoch::Stream(epoch), offset }
}
