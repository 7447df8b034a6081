//! A connection's life, set up and torn down side by side: admission (PROXY header expected,
//! per-address limits), the upgrade's outcome (open, reject, a deferred decision), the close
//! handshake, the teardown, and the one timer entry that watches each state.

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;

use super::{AwaitingWelcome, Conn, Context, Gone, State, Step, CLOSE_RECEIVED, EPOCH_SHIFT, PINGED, V1, WRITE_SHUT};
use crate::codec::{self, close, Frame, Opcode};
use crate::conn_id::MAX_SLOTS;
use crate::guard::guarded;
use crate::handshake;
use crate::history::Position;
use crate::ip_limits::{self, NOT_COUNTED};
use crate::redis::Request;
use crate::registry::UserId;
use crate::request::UpgradeDecision;
use crate::stats::{bump, drop_by};
use crate::subprotocol::{self, Negotiated};
use crate::timer::{self, Entry};
use crate::types::check_user_id;

impl Context {
    /// Counts a newly accepted socket against `max_connections` (and the slab's slot limit);
    /// false, and not counted, when there is no room for it.
    pub(crate) fn reserve_socket(&self, next_slot: usize) -> bool {
        let total = self.shared.open_sockets.fetch_add(1, Relaxed);
        if total >= self.shared.max_connections || next_slot >= MAX_SLOTS {
            self.release_socket();
            return false;
        }
        true
    }

    /// A socket counted by `reserve_socket` is closed.
    pub(crate) fn release_socket(&self) {
        self.shared.open_sockets.fetch_sub(1, Relaxed);
    }

    /// Counts the connection in `slot` under its client's address; false (and counted in
    /// `ip_limited_total`) when that address is over a per-address limit.
    pub(super) fn limit_address(&mut self, slot: usize, peer: IpAddr) -> bool {
        let Some(limits) = &self.shared.ip_limits else { return true };
        let key = ip_limits::key_of(peer);
        if self.ip_keys.len() <= slot {
            self.ip_keys.resize(slot + 1, NOT_COUNTED);
        }
        if limits.admit(key).is_err() {
            bump(&self.stats().ip_limited_total, 1);
            return false;
        }
        self.ip_keys[slot] = key;
        true
    }
}

/// A `wspush.v1` connection's first frames: the welcome, then what it missed if it resumes (with
/// history on, under the user's order lock).
fn greeting(cx: &Context, user: &[u8], since: Option<Option<Position>>) -> Vec<Frame> {
    let Some(history) = &cx.shared.history else {
        return vec![subprotocol::welcome(None, false)];
    };
    let store = history.store();
    let Some(since) = since else {
        return vec![subprotocol::welcome(Some(store.top(user)), false)];
    };
    bump(&cx.stats().resumes_total, 1);
    let max_queue = cx.config().max_queue_bytes;
    let mut missed = Vec::new();
    let replay = since
        .and_then(|since| store.read_since(user, since, max_queue, &mut missed).ok())
        .and_then(|top| subprotocol::replay(top, &missed, max_queue));
    match replay {
        Some(frames) => {
            bump(&cx.stats().recoveries_total, 1);
            frames
        }
        None => {
            bump(&cx.stats().recovery_failures_total, 1);
            vec![subprotocol::welcome(Some(store.top(user)), false)]
        }
    }
}

enum TimerAction {
    Ping,
    Timeout,
    Finish,
}

impl Conn {
    /// Sets up a connection just accepted from `peer` (counted by `reserve_socket`, in its slab
    /// slot and live table): it waits for its PROXY header or its request head, under the
    /// handshake deadline. An address over its limits is answered 429 at once.
    pub(crate) fn admit(&mut self, cx: &mut Context, slot: usize, peer: IpAddr) -> Step {
        // From a trusted balancer the client's address comes with its PROXY header: counted
        // per address then (src/proxy_protocol.rs).
        if !self.expects_proxy_header(cx, peer) && !cx.limit_address(slot, peer) {
            // Answered now, in a lingering close that holds no handshake slot: idle sockets
            // from one address, refused, must not keep other addresses' clients waiting. (Not
            // counted as a handshake yet; closing moves it straight out of that state.)
            bump(&cx.stats().rejected_total, 1);
            return self.enter_closing(cx, slot, close::ABNORMAL, &handshake::error_response(429));
        }
        cx.handshakes += 1;
        bump(&cx.stats().handshakes, 1);
        self.arm_timer(cx, slot, self.last_rx + cx.ticks.handshake); // last_rx is the accept tick
        Ok(())
    }

    /// Tears the connection down once it is out of its slab slot: closes its socket, gives back
    /// what it was counted in and, if it was opened, unregisters it and fires `on_close` once.
    pub(crate) fn finish(mut self, cx: &mut Context, slot: usize, code: u16) {
        self.leave_handshake(cx, slot);
        self.drop_input(cx);
        let id = cx.conn_id(slot, self.generation);
        if let Some(spill) = &self.spill {
            drop_by(&cx.stats().queued_bytes, spill.queued_bytes as u64);
        }
        cx.me().live.clear(slot);
        if let Some(key) = cx.ip_keys.get_mut(slot).map(|k| std::mem::replace(k, NOT_COUNTED)) {
            if let (Some(limits), true) = (&cx.shared.ip_limits, key != NOT_COUNTED) {
                limits.release(key);
            }
        }
        cx.release_socket();
        if self.state == State::Open {
            self.leave_open(cx, slot);
        }
        drop(self.stream); // closing the descriptor also removes it from epoll
        if std::mem::take(&mut cx.accept_after_close) {
            cx.accept_pending = true; // a descriptor is free again
        }
        if let Some(user) = self.user {
            let (handler, server) = (&cx.handler, &cx.server);
            guarded(|| handler.on_close(server, id, &user, code));
        }
    }

    /// Whether a connection accepted from `peer` must open with a PROXY header. If so it is put
    /// in `State::ProxyHeader` and its per-address admission waits for the header's address.
    fn expects_proxy_header(&mut self, cx: &Context, peer: IpAddr) -> bool {
        let config = cx.config();
        if !config.proxy_protocol || !config.trusted_proxies.iter().any(|net| net.contains(peer)) {
            return false;
        }
        self.state = State::ProxyHeader;
        true
    }

    /// The upgrade is accepted as `user`: registers the connection and answers 101. A `wspush.v1`
    /// connection then gets its welcome and, when it resumes, what it missed.
    pub(super) fn open(
        &mut self,
        cx: &mut Context,
        slot: usize,
        user: &[u8],
        accept_key: &str,
        negotiated: Negotiated,
    ) -> Step {
        if check_user_id(user).is_err() {
            return self.reject(cx, slot, 500);
        }
        let id = cx.conn_id(slot, self.generation);
        // Registered and read under the user's order lock: each publish is then either in the
        // replay or delivered live, never both nor neither (src/history/mod.rs).
        let order = cx.shared.history.as_ref().filter(|_| negotiated.v1).map(|history| history.order_lock(user));
        let Ok(first) = cx.shared.registry.add(user, id, cx.config().max_connections_per_user) else {
            drop(order);
            return self.reject(cx, slot, 429);
        };
        #[cfg(feature = "test-hooks")]
        if order.is_some() {
            crate::test_hooks::race_point(crate::test_hooks::RacePoint::ResumeRegistered);
        }
        // With Redis, the connection waits for the bridge (src/cluster/users.rs) until its
        // user's channel is subscribed here, so that nothing published after its upgrade misses
        // it; what is published meanwhile waits for it here. A wspush.v1 one with history gets its
        // welcome (and replay) from Redis after its 101; any other gets its 101 then.
        let redis = cx.shared.redis.as_ref();
        let greeted_by_bridge = negotiated.v1 && redis.is_some() && cx.config().history_max_messages > 0;
        let mut greeting = (negotiated.v1 && !greeted_by_bridge).then(|| greeting(cx, user, negotiated.since));
        drop(order);
        let subprotocol = negotiated.v1.then_some(subprotocol::NAME);
        let mut upgrade = Some(handshake::switching_protocols(accept_key, subprotocol));
        if let Some(redis) = redis {
            if first {
                redis.push(Request::Presence { user: user.into() });
            }
            // While Redis is known to be unreachable a connection that needs nothing from it is
            // upgraded at once (delivery is at most once then anyway).
            if greeted_by_bridge || !redis.is_down() {
                let waiting_upgrade = (!greeted_by_bridge)
                    .then(|| (upgrade.take().unwrap_or_default(), greeting.take().unwrap_or_default()));
                let awaiting = AwaitingWelcome {
                    generation: self.generation,
                    held: Vec::new(),
                    bytes: 0,
                    upgrade: waiting_upgrade,
                };
                cx.awaiting_welcome.insert(slot, awaiting);
                redis.push(Request::Greet {
                    conn: id,
                    user: user.into(),
                    since: negotiated.since,
                    read: greeted_by_bridge,
                });
            }
        }
        self.leave_handshake(cx, slot);
        let now = cx.wheel.now();
        let handshake_deadline = self.last_rx + cx.ticks.handshake; // last_rx is the accept tick here
        self.state = State::Open;
        self.last_rx = now;
        self.user = Some(UserId::new(user));
        // The pending entry is due at the handshake deadline and recomputes then; replace it
        // only when the first ping is due sooner (a second entry per connection costs memory).
        let first_ping = now + cx.ticks.ping;
        if first_ping < handshake_deadline {
            self.rearm_timer(cx, slot, first_ping);
        }
        bump(&cx.stats().upgrades_total, 1);
        bump(&cx.stats().connections, 1);
        if let Some(upgrade) = upgrade {
            self.send_control(cx, slot, &upgrade)?;
        }
        if negotiated.v1 {
            self.flags |= V1;
        }
        if let Some(frames) = greeting {
            self.queue_messages(cx, slot, &frames)?;
        }
        let (handler, server) = (&cx.handler, &cx.server);
        guarded(|| handler.on_open(server, id, user));
        Ok(())
    }

    /// Applies the host's deferred decision; `Ok(false)` while it stays deferred. Input that
    /// arrived meanwhile is the loop's to resume.
    pub(crate) fn decide(&mut self, cx: &mut Context, slot: usize, decision: UpgradeDecision) -> Result<bool, Gone> {
        let spill = self.spill();
        let (key, negotiated) = (spill.accept_key.take().unwrap_or_default(), std::mem::take(&mut spill.negotiated));
        match decision {
            UpgradeDecision::Accept(user) => self.open(cx, slot, &user, &key, negotiated)?,
            UpgradeDecision::Reject(status) => self.reject(cx, slot, status)?,
            UpgradeDecision::Defer => {
                let spill = self.spill();
                spill.accept_key = Some(key);
                spill.negotiated = negotiated;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Refuses the request with HTTP `status` (outside 400-599: 500), then closes.
    pub(super) fn reject(&mut self, cx: &mut Context, slot: usize, status: u16) -> Step {
        self.reject_with(cx, slot, handshake::refusal(status, false))
    }

    /// Answers a request we won't upgrade with `response`, then closes.
    pub(super) fn reject_with(&mut self, cx: &mut Context, slot: usize, response: Vec<u8>) -> Step {
        bump(&cx.stats().rejected_total, 1);
        self.leave_handshake(cx, slot);
        self.enter_closing(cx, slot, close::ABNORMAL, &response)
    }

    /// Gives back the handshake slot (this thread's, and the client address's) of a connection
    /// that has not been upgraded; nothing for one that has.
    pub(super) fn leave_handshake(&self, cx: &mut Context, slot: usize) {
        if matches!(self.state, State::ProxyHeader | State::Handshake | State::Deciding) {
            if let (Some(limits), Some(&key)) = (&cx.shared.ip_limits, cx.ip_keys.get(slot)) {
                if key != NOT_COUNTED {
                    limits.handshake_done(key);
                }
            }
            cx.handshakes -= 1;
            drop_by(&cx.stats().handshakes, 1);
            if cx.handshakes + 1 == cx.config().max_handshakes_per_thread {
                cx.accept_pending = true; // accepting had paused at the limit: resume
            }
        }
    }

    /// Leaving the open state (closing, or ended without a close handshake): from now on
    /// publishes, counts and gauges see the connection as gone; `on_close` still fires when the
    /// socket is finally closed.
    fn leave_open(&self, cx: &mut Context, slot: usize) {
        if let Some(user) = &self.user {
            let last = cx.shared.registry.remove(user, cx.conn_id(slot, self.generation));
            if let (true, Some(redis)) = (last, &cx.shared.redis) {
                redis.push(Request::Presence { user: user.to_vec().into() });
            }
        }
        cx.awaiting_welcome.remove(&slot);
        drop_by(&cx.stats().connections, 1);
    }

    /// Starts the close handshake from our side (host close, stop, ...). A connection whose 101
    /// still waits for the Redis bridge was never upgraded: it is answered 503 instead.
    pub(crate) fn start_close(&mut self, cx: &mut Context, slot: usize, code: u16, reason: &str) -> Step {
        if self.awaits_upgrade(cx, slot) {
            cx.awaiting_welcome.remove(&slot);
            return self.enter_closing(cx, slot, code, &handshake::error_response(503));
        }
        self.enter_closing(cx, slot, code, codec::close_frame(code, reason).as_bytes())
    }

    /// Whether the connection's 101 waits for the Redis bridge (see `AwaitingWelcome`).
    pub(crate) fn awaits_upgrade(&self, cx: &Context, slot: usize) -> bool {
        cx.awaiting_welcome
            .get(&slot)
            .is_some_and(|awaiting| awaiting.generation == self.generation && awaiting.upgrade.is_some())
    }

    /// Answers a waiting upgrade (the 101 and what follows it at once), when it waits.
    pub(crate) fn answer_waiting_upgrade(
        &mut self,
        cx: &mut Context,
        slot: usize,
        upgrade: Option<(Vec<u8>, Vec<Frame>)>,
    ) -> Step {
        let Some((response, greeting)) = upgrade else { return Ok(()) };
        self.send_control(cx, slot, &response)?;
        self.queue_messages(cx, slot, &greeting)
    }

    /// Sends our last bytes, then waits (bounded by close_timeout) for the peer to close.
    pub(super) fn enter_closing(&mut self, cx: &mut Context, slot: usize, code: u16, last_bytes: &[u8]) -> Step {
        if self.state == State::Closing {
            return Ok(());
        }
        let now = cx.wheel.now();
        let was_open = self.state == State::Open;
        self.state = State::Closing;
        self.close_code = code;
        self.last_rx = now;
        if was_open {
            self.leave_open(cx, slot);
        }
        self.drop_input(cx);
        self.rearm_timer(cx, slot, now + cx.ticks.close);
        self.send_control(cx, slot, last_bytes)?;
        self.progress_close()
    }

    /// Moves a closing connection on once its output is flushed: when both close frames have
    /// been exchanged the close handshake is complete and the socket is closed (RFC 6455
    /// §7.1.1); otherwise FIN is sent and the socket closed when the peer's close frame or FIN
    /// arrives (waiting, rather than closing at once, keeps our last bytes from being lost to a
    /// reset).
    pub(super) fn progress_close(&mut self) -> Step {
        if self.state != State::Closing || self.has_queued_output() {
            return Ok(());
        }
        if self.flags & CLOSE_RECEIVED != 0 {
            return Err(self.gone());
        }
        if self.flags & WRITE_SHUT == 0 {
            self.flags |= WRITE_SHUT;
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }

    fn timer_epoch(&self) -> u8 {
        self.flags >> EPOCH_SHIFT
    }

    /// Whether the wheel entry carrying `epoch` and `generation` is this connection's current one.
    pub(crate) fn is_timer_entry(&self, epoch: u8, generation: u32) -> bool {
        self.generation == generation && self.timer_epoch() == epoch
    }

    /// Schedules the connection's timer entry for `deadline` (the one entry it has).
    fn arm_timer(&self, cx: &mut Context, slot: usize, deadline: u32) {
        let entry: Entry = timer::entry(slot, self.timer_epoch(), self.generation);
        cx.wheel.schedule(entry, deadline);
    }

    /// Replaces the connection's timer entry with one for an earlier `deadline`: the old entry
    /// becomes stale and is dropped when it comes due, so there is still one entry per connection.
    fn rearm_timer(&mut self, cx: &mut Context, slot: usize, deadline: u32) {
        let epoch = self.timer_epoch().wrapping_add(1) & (u8::MAX >> EPOCH_SHIFT);
        self.flags = (self.flags & ((1 << EPOCH_SHIFT) - 1)) | (epoch << EPOCH_SHIFT);
        self.arm_timer(cx, slot, deadline);
    }

    /// The connection's timer entry came due at tick `now`: the deadline of its state is
    /// recomputed from its last input, and it pings, times out or is finished, or the entry
    /// moves to that deadline.
    pub(crate) fn on_timer(&mut self, cx: &mut Context, slot: usize, now: u32) -> Step {
        let since = self.last_rx;
        let (deadline, fire) = match self.state {
            State::ProxyHeader | State::Handshake | State::Deciding => {
                (since + cx.ticks.handshake, TimerAction::Timeout)
            }
            State::Open if self.flags & PINGED != 0 => (since + cx.ticks.idle, TimerAction::Timeout),
            State::Open => (since + cx.ticks.ping, TimerAction::Ping),
            State::Closing => (since + cx.ticks.close, TimerAction::Finish),
        };
        if now < deadline {
            self.arm_timer(cx, slot, deadline);
            return Ok(());
        }
        match fire {
            TimerAction::Ping if self.awaits_upgrade(cx, slot) => {
                // No frame before the 101: look again in a ping interval.
                self.arm_timer(cx, slot, now + cx.ticks.ping);
                Ok(())
            }
            TimerAction::Ping => {
                self.flags |= PINGED;
                bump(&cx.stats().pings_total, 1);
                self.send_control(cx, slot, codec::control(Opcode::Ping, b"").as_bytes())?;
                // Check back one ping interval from now, not only at the idle deadline: if the
                // pong comes, the next ping is then due ping_interval after it, instead of going
                // out late (at the idle deadline) with little time left to answer.
                self.arm_timer(cx, slot, (since + cx.ticks.idle).min(now + cx.ticks.ping));
                Ok(())
            }
            TimerAction::Timeout => {
                bump(&cx.stats().timeouts_total, 1);
                Err(Gone(close::ABNORMAL))
            }
            TimerAction::Finish => Err(self.gone()),
        }
    }
}
