//! Socket events and commands, routed to the connection they are for. Consuming input can stop
//! for the host's queued answers (its commands may touch any connection of this thread), which
//! the loop runs before the connection goes on.

use std::sync::Arc;

use super::IoThread;
use crate::codec::{close, Frame};
use crate::conn_id;
use crate::connection::{Interrupt, Received, State};
use crate::handle::{Command, ResumeOutcome, ANY_USER};
use crate::history::Position;
use crate::redis::Request;
use crate::registry::UserCheck;
use crate::request::UpgradeDecision;
use crate::stats::bump;
use crate::subprotocol;
use crate::types::ConnId;

/// Reads per connection per round before others get a turn.
const READS_PER_ROUND: usize = 16;

impl IoThread {
    pub(super) fn on_writable(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else { return };
        let step = conn.on_writable(&mut self.cx, slot);
        self.settle(slot, step);
    }

    /// Reads what the socket has. `until_drained`: keep reading past a short read, until the
    /// socket says WouldBlock or end of stream; needed when the event also reported the peer's
    /// FIN (epoll is edge-triggered: data and FIN that arrived together make one event, and the
    /// end of stream is only seen by the read after the data).
    pub(super) fn on_readable(&mut self, slot: usize, until_drained: bool) {
        for _ in 0..READS_PER_ROUND {
            let Some(conn) = self.conns.get_mut(slot) else { return };
            match conn.receive(&self.cx, &mut self.scratch) {
                Ok(Received::Bytes(n)) => {
                    self.process_input(slot, n);
                    if n < self.scratch.len() && !until_drained {
                        return; // short read: the socket is drained, epoll reports the next data
                    }
                }
                Ok(Received::Discarded | Received::Retry) => {}
                Ok(Received::Nothing) => return,
                Err(gone) => return self.settle(slot, Err(gone)),
            }
        }
        self.cx.again.push(slot);
    }

    /// Consumes `n` fresh bytes in the scratch buffer, keeping any unconsumed tail.
    fn process_input(&mut self, slot: usize, n: usize) {
        let mut scratch = std::mem::take(&mut self.scratch);
        let pending = self.conns.get_mut(slot).map(|c| c.take_input()).unwrap_or_default();
        if pending.is_empty() {
            let used = self.consume(slot, &mut scratch[..n]);
            if let Some(conn) = self.conns.get_mut(slot) {
                conn.keep_copy(&self.cx, &scratch[used..n]);
            }
        } else {
            let mut input = pending;
            // Exactly: a buffer sized to its frame takes the rest of that frame without growing.
            input.reserve_exact(n);
            input.extend_from_slice(&scratch[..n]);
            self.consume_kept(slot, input);
        }
        self.scratch = scratch;
        self.input_settled(slot);
    }

    /// Feeds bytes kept from earlier reads to the connection and keeps what it leaves.
    fn consume_kept(&mut self, slot: usize, mut input: Vec<u8>) {
        let used = self.consume(slot, &mut input);
        if let Some(conn) = self.conns.get_mut(slot) {
            conn.keep_rest_of(&self.cx, input, used);
        }
    }

    fn input_settled(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else { return };
        let step = conn.input_settled(&mut self.cx, slot);
        self.settle(slot, step);
    }

    /// Feeds `buf` to the connection; returns how many bytes it consumed.
    fn consume(&mut self, slot: usize, buf: &mut [u8]) -> usize {
        let mut pos = 0;
        loop {
            let Some(conn) = self.conns.get_mut(slot) else { return buf.len() };
            let (used, interrupt) = conn.consume(&mut self.cx, slot, &mut buf[pos..]);
            pos += used;
            match interrupt {
                None => return pos,
                Some(Interrupt::PeerClose(code)) => self.on_peer_close(slot, code),
                Some(Interrupt::Fail(code)) => {
                    self.fail(slot, code);
                    return buf.len();
                }
                Some(Interrupt::Gone(gone)) => {
                    self.settle(slot, Err(gone));
                    return buf.len();
                }
            }
        }
    }

    /// The peer's close frame arrived: what the host sent in answer to earlier messages goes out
    /// before our close.
    fn on_peer_close(&mut self, slot: usize, code: u16) {
        self.run_queued_commands();
        let Some(conn) = self.conns.get_mut(slot).filter(|c| c.state() == State::Open) else { return };
        let step = conn.close_on_peer_request(&mut self.cx, slot, code);
        self.settle(slot, step);
    }

    /// Fails the connection for a protocol violation (RFC 6455 §7.1.7), after anything the host
    /// sent in answer to the messages before it.
    fn fail(&mut self, slot: usize, code: u16) {
        self.run_queued_commands();
        let Some(conn) = self.conns.get_mut(slot).filter(|c| c.state() != State::Closing) else { return };
        let step = conn.fail(&mut self.cx, slot, code);
        self.settle(slot, step);
    }

    /// Applies the host's deferred decision and resumes any input that arrived meanwhile.
    fn decide(&mut self, slot: usize, decision: UpgradeDecision) {
        let Some(conn) = self.conns.get_mut(slot) else { return };
        match conn.decide(&mut self.cx, slot, decision) {
            Ok(true) => {}
            Ok(false) => return,
            Err(gone) => return self.settle(slot, Err(gone)),
        }
        // Frames the client sent while we were deciding: what is left of them is incomplete
        // input like any other (counted, and under the message deadline).
        let kept = self.conns.get_mut(slot).map(|c| c.take_input()).unwrap_or_default();
        self.consume_kept(slot, kept);
        self.input_settled(slot);
    }

    /// Executes `commands` in order (draining it); back-to-back broadcasts reach each connection
    /// in one sendmsg.
    pub(super) fn run_commands(&mut self, commands: &mut Vec<Command>, broadcasts: &mut Vec<Frame>) {
        let mut commands = commands.drain(..).peekable();
        while let Some(command) = commands.next() {
            if let Command::Broadcast { frame } = command {
                broadcasts.push(frame);
                while let Some(Command::Broadcast { .. }) = commands.peek() {
                    if let Some(Command::Broadcast { frame }) = commands.next() {
                        broadcasts.push(frame);
                    }
                }
                self.broadcast(broadcasts);
                broadcasts.clear();
            } else {
                self.execute(command);
            }
        }
        self.last_v1 = None; // holds no message past its batch
    }

    /// Executes what callbacks on this thread queued so far, now rather than at the end of the
    /// round: before a connection closes because of input that followed a message, the host's
    /// answer to that message must go out first.
    fn run_queued_commands(&mut self) {
        if self.cx.me().has_commands() {
            let (mut commands, mut broadcasts) = (Vec::new(), Vec::new());
            self.cx.me().take_inbox(&mut commands);
            self.run_commands(&mut commands, &mut broadcasts);
        }
    }

    fn execute(&mut self, command: Command) {
        #[cfg(feature = "test-hooks")]
        crate::test_hooks::io_thread_point();
        match command {
            Command::Deliver { conn, frame, stream, user_check } => {
                if let Some(slot) = self.lookup(conn, State::Open, user_check) {
                    if self.hold_for_welcome(slot, &frame, stream) {
                        return;
                    }
                    let frame = match self.conns[slot].speaks_v1() {
                        true => self.v1_form(&frame, stream),
                        false => frame,
                    };
                    self.queue_messages(slot, &[frame]);
                }
            }
            Command::Broadcast { frame } => self.broadcast(&[frame]),
            Command::Close { conn, code, reason, user_check } => {
                if let Some(slot) = self.lookup(conn, State::Open, user_check) {
                    let step = self.conns[slot].start_close(&mut self.cx, slot, code, &reason);
                    self.settle(slot, step);
                }
            }
            Command::Welcome { conn, frames, top, resume } => {
                if let Some(slot) = self.lookup(conn, State::Open, ANY_USER) {
                    self.welcome(slot, frames, top, resume);
                }
            }
            Command::Reset { conn } => {
                let waiting = |slot| self.cx.awaiting_welcome.contains_key(&slot);
                if let Some(slot) = self.lookup(conn, State::Open, ANY_USER).filter(|&slot| !waiting(slot)) {
                    if self.conns[slot].speaks_v1() {
                        let step =
                            self.conns[slot].start_close(&mut self.cx, slot, close::SERVICE_RESTART, "history lost");
                        self.settle(slot, step);
                    }
                }
            }
            Command::Decide { conn, decision } => {
                if let Some(slot) = self.lookup(conn, State::Deciding, ANY_USER) {
                    self.decide(slot, decision);
                }
            }
            Command::Census => self.census(),
            Command::Stop => self.begin_stop(),
        }
    }

    /// The `wspush.v1` form of the message `raw`, made once for all its recipients on this
    /// thread (a publish queues them one after another).
    fn v1_form(&mut self, raw: &Frame, stream: Option<Position>) -> Frame {
        match &self.last_v1 {
            Some((last_raw, v1)) if Arc::ptr_eq(last_raw, raw) => v1.clone(),
            _ => {
                let v1 = subprotocol::message_from_frame(raw, stream);
                self.last_v1 = Some((raw.clone(), v1.clone()));
                v1
            }
        }
    }

    /// Keeps a message for a connection still waiting for its welcome (with Redis); true if
    /// kept. Past the connection's queue limit it is closed instead (1013): it would be as a
    /// slow consumer once welcomed.
    fn hold_for_welcome(&mut self, slot: usize, frame: &Frame, stream: Option<Position>) -> bool {
        let generation = self.conns[slot].generation();
        let Some(awaiting) = self.cx.awaiting_welcome.get_mut(&slot).filter(|a| a.generation == generation) else {
            return false;
        };
        awaiting.bytes += frame.len();
        awaiting.held.push((frame.clone(), stream));
        if awaiting.bytes > self.cx.config().max_queue_bytes {
            // Closing drops the entry (and answers 503 if the 101 had not gone out yet).
            let step =
                self.conns[slot].start_close(&mut self.cx, slot, close::TRY_AGAIN_LATER, "too much before welcome");
            self.settle(slot, step);
        }
        true
    }

    /// Sends a waiting connection its welcome, then what was held for it that the welcome's
    /// top does not already cover.
    fn welcome(&mut self, slot: usize, mut frames: Vec<Frame>, top: Option<Position>, resume: ResumeOutcome) {
        let Some(awaiting) = self.cx.awaiting_welcome.remove(&slot) else { return };
        let step = self.conns[slot].answer_waiting_upgrade(&mut self.cx, slot, awaiting.upgrade);
        if step.is_err() {
            return self.settle(slot, step);
        }
        let stats = self.cx.stats();
        match resume {
            ResumeOutcome::NotAsked => {}
            ResumeOutcome::Recovered => {
                bump(&stats.resumes_total, 1);
                bump(&stats.recoveries_total, 1);
            }
            ResumeOutcome::NotRecovered => {
                bump(&stats.resumes_total, 1);
                bump(&stats.recovery_failures_total, 1);
            }
        }
        let v1 = self.conns[slot].speaks_v1();
        for (frame, stream) in awaiting.held {
            let newer = match (stream, top) {
                (Some(stream), Some(top)) => stream.epoch == top.epoch && stream.offset > top.offset,
                _ => true, // broadcasts and sends: not in any stream
            };
            if newer {
                frames.push(if v1 { subprotocol::message_from_frame(&frame, stream) } else { frame });
            }
        }
        self.queue_messages(slot, &frames);
    }

    fn queue_messages(&mut self, slot: usize, frames: &[Frame]) {
        let step = self.conns[slot].queue_messages(&mut self.cx, slot, frames);
        self.settle(slot, step);
    }

    /// Sends `frames`, in order, to every open connection of this thread (in their `wspush.v1`
    /// form, made once, to those that speak it).
    fn broadcast(&mut self, frames: &[Frame]) {
        let mut v1_frames: Vec<Frame> = Vec::new();
        for slot in 0..self.conns.capacity() {
            match self.conns.get(slot) {
                Some(conn) if conn.state() == State::Open && self.cx.awaiting_welcome.contains_key(&slot) => {
                    for frame in frames {
                        self.hold_for_welcome(slot, frame, None);
                    }
                }
                Some(conn) if conn.state() == State::Open && conn.speaks_v1() => {
                    if v1_frames.is_empty() {
                        v1_frames = frames.iter().map(|frame| subprotocol::message_from_frame(frame, None)).collect();
                    }
                    self.queue_messages(slot, &v1_frames);
                }
                Some(conn) if conn.state() == State::Open => self.queue_messages(slot, frames),
                _ => {}
            }
        }
    }

    /// Tells the Redis bridge the user of every open connection here.
    fn census(&self) {
        let Some(redis) = &self.cx.shared.redis else { return };
        for slot in 0..self.conns.capacity() {
            if let Some(user) =
                self.conns.get(slot).filter(|conn| conn.state() == State::Open).and_then(|conn| conn.user())
            {
                redis.push(Request::Presence { user: user.into() });
            }
        }
    }

    /// The slot of connection `id` if it is still alive, in `state`, and (unless `ANY_USER`)
    /// belongs to the user `user_check` was computed for.
    fn lookup(&self, id: ConnId, state: State, user_check: UserCheck) -> Option<usize> {
        let (thread, slot, generation) = conn_id::split(id);
        let conn = self.conns.get(slot)?;
        let alive = thread == self.cx.index && conn.generation() == generation && conn.state() == state;
        let users_match =
            user_check == ANY_USER || conn.user().is_some_and(|user| self.cx.shared.registry.check(user) == user_check);
        (alive && users_match).then_some(slot)
    }
}
