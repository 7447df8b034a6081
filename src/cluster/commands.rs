//! The command link: publishes, broadcasts and reads of users' streams, pipelined; each reply is
//! matched to its request by order. While the link is down (or logging in) work waits in
//! `waiting`, up to the timeout: then publishes fail with `Unavailable` and greetings are
//! refused, and the host never waits longer than that.

use std::time::Instant;

use super::state::{Pending, Read, ReadFor, Script, Waiting};
use super::Bridge;
use crate::error::Error;
use crate::guard::guarded;
use crate::history::Position;
use crate::redis::keys::{self, ChannelMessage, BROADCAST_CHANNEL, PUBLISH_SCRIPT, READ_SCRIPT};
use crate::redis::outbox::counted_bytes;
use crate::redis::resp::Reply;
use crate::redis::Done;
use crate::stats::bump;
use crate::types::Published;

impl Bridge {
    pub(super) fn on_command_event(&mut self, replies: &mut Vec<Reply>, now: Instant) {
        let result = self.command.on_event(replies, now);
        for reply in replies.drain(..) {
            self.on_command_reply(reply, now);
        }
        if let Err(dead) = result {
            self.command_failed(dead.0, now);
        }
    }

    /// A connect started: queue the login and the scripts (sent once connected).
    pub(super) fn command_connecting(&mut self, now: Instant) {
        self.setup_left = Self::send_login(&self.url, &mut self.command, now);
        for _ in 0..self.setup_left {
            self.pending.push_back(Pending::Login);
        }
        if self.history.is_some() {
            for (script, text) in [(Script::Publish, PUBLISH_SCRIPT), (Script::Read, READ_SCRIPT)] {
                self.command.send(&[b"SCRIPT", b"LOAD", text.as_bytes()], now);
                self.pending.push_back(Pending::LoadScript(script));
                self.setup_left += 1;
            }
        }
        if self.setup_left == 0 {
            self.command.send(&[b"PING"], now);
            self.pending.push_back(Pending::Login);
            self.setup_left = 1;
        }
    }

    fn on_command_reply(&mut self, reply: Reply, now: Instant) {
        self.command.answered();
        let Some(pending) = self.pending.pop_front() else {
            return self.command_failed("a reply nobody asked for", now);
        };
        match pending {
            Pending::Login => match reply {
                Reply::Error(error) => self.setup_refused("login", &error, now),
                _ => self.setup_step(now),
            },
            Pending::LoadScript(script) => match reply.as_bytes() {
                Some(sha) => {
                    let sha = sha.to_vec();
                    match script {
                        Script::Publish => self.publish_sha = sha,
                        Script::Read => self.read_sha = sha,
                    }
                    self.setup_step(now);
                }
                None => self.setup_refused("SCRIPT LOAD", &error_text(&reply), now),
            },
            Pending::Ping => {}
            Pending::Publish { done, bytes } => {
                self.outbox.release(bytes);
                match published(&reply) {
                    Some(outcome) => {
                        if let Some(done) = done {
                            guarded(|| done(Ok(outcome)));
                        }
                    }
                    None => {
                        eprintln!("wspush: Redis refused a publish: {}", String::from_utf8_lossy(&error_text(&reply)));
                        self.publish_failed(done);
                        self.reload_if_scripts_gone(&reply, now);
                    }
                }
            }
            Pending::Broadcast { bytes } => self.outbox.release(bytes),
            Pending::Read(read) => {
                self.reload_if_scripts_gone(&reply, now);
                self.on_read(read, reply, now);
            }
        }
    }

    /// Someone ran SCRIPT FLUSH (or Redis failed over to a replica without our scripts): make
    /// the link again, which loads them again.
    fn reload_if_scripts_gone(&mut self, reply: &Reply, now: Instant) {
        if matches!(reply, Reply::Error(text) if text.starts_with(b"NOSCRIPT")) {
            self.command_failed("scripts are gone from Redis", now);
        }
    }

    fn setup_refused(&mut self, what: &str, error: &[u8], now: Instant) {
        eprintln!("wspush: Redis refused {what}: {}", String::from_utf8_lossy(error));
        self.command_failed("setup refused", now);
    }

    fn setup_step(&mut self, now: Instant) {
        self.setup_left = self.setup_left.saturating_sub(1);
        if self.setup_left > 0 || self.command_ready {
            return;
        }
        self.command_ready = true;
        if self.down_since.take().is_some() {
            eprintln!("wspush: connected to Redis at {}", self.url.address);
        }
        self.outbox.set_down(false);
        let waiting: Vec<Waiting> = self.waiting.drain(..).collect();
        for item in waiting {
            self.send(item, now);
        }
    }

    /// Sends a publish or broadcast now, or queues it until the link is ready.
    pub(super) fn publish(&mut self, item: Waiting, now: Instant) {
        if self.command_ready {
            self.send(item, now);
        } else {
            self.waiting.push_back(item);
        }
    }

    pub(super) fn issue_read(&mut self, read: Read, now: Instant) {
        self.publish(Waiting::Read { read, queued: now }, now);
    }

    fn send(&mut self, item: Waiting, now: Instant) {
        match item {
            Waiting::Publish { user, kind, payload, done, .. } => {
                let channel = keys::channel(&user);
                let epoch = self.next_epoch();
                match &self.history {
                    Some(history) => {
                        let (meta, history_key) = (keys::meta(&user), keys::history(&user));
                        let kind = [keys::kind_byte(kind)];
                        self.command.send(
                            &[
                                b"EVALSHA",
                                &self.publish_sha,
                                b"2",
                                &meta,
                                &history_key,
                                &epoch,
                                &history.ttl_secs,
                                &kind,
                                &payload,
                                &history.max_messages,
                                &channel,
                            ],
                            now,
                        );
                    }
                    None => {
                        self.command.send(&[b"SPUBLISH", &channel, &ChannelMessage::unnumbered(kind, &payload)], now)
                    }
                }
                self.pending.push_back(Pending::Publish { done, bytes: counted_bytes(&user, &payload) });
            }
            Waiting::Broadcast { kind, payload, .. } => {
                self.command.send(&[b"PUBLISH", BROADCAST_CHANNEL, &keys::broadcast_message(kind, &payload)], now);
                self.pending.push_back(Pending::Broadcast { bytes: payload.len() });
            }
            Waiting::Read { read, .. } => {
                let epoch = self.next_epoch();
                let Some(history) = &self.history else { return };
                let (meta, history_key) = (keys::meta(&read.user), keys::history(&read.user));
                let from = read.from.map(|from| from.to_string().into_bytes()).unwrap_or_default();
                self.command.send(
                    &[b"EVALSHA", &self.read_sha, b"2", &meta, &history_key, &epoch, &history.ttl_secs, &from],
                    now,
                );
                self.pending.push_back(Pending::Read(read));
            }
        }
    }

    /// The command link is lost (or could not be made): what Redis owed is failed (publishes)
    /// or retried (fills), and the link reconnects after a backoff.
    pub(super) fn command_failed(&mut self, why: &str, now: Instant) {
        if self.command_ready && !self.stopping {
            eprintln!("wspush: lost Redis at {} ({why}); reconnecting", self.url.address);
        }
        self.command.drop_connection(self.poll.registry(), now);
        self.command_ready = false;
        self.setup_left = 0;
        if self.down_since.is_none() {
            self.down_since = Some(now);
        }
        let pending: Vec<Pending> = self.pending.drain(..).collect();
        for owed in pending {
            match owed {
                Pending::Publish { done, bytes } => {
                    self.outbox.release(bytes);
                    self.publish_failed(done);
                }
                Pending::Broadcast { bytes } => self.outbox.release(bytes),
                Pending::Read(read) => match read.why {
                    ReadFor::Fill { .. } => self.waiting.push_back(Waiting::Read { read, queued: now }),
                    ReadFor::Greet { conn, .. } => self.refuse_greeting(conn),
                },
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
