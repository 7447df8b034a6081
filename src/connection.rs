//! The connection state machine: handshake → open → closing, input parsing into frames and
//! messages, and output with a per-connection queue that exists only while bytes wait.
//!
//! An idle open connection is a [`Conn`] of 48 bytes: the socket, its generation, the tick of its
//! last input, state, flags, close code, its user ID (inline when ≤ 22 bytes) and one
//! `Option<Box<Spill>>` that stays `None` unless input or output is actually pending.
//!
//! What a client can make the engine hold for it is bounded whatever it sends or fails to read:
//! input ≤ one frame (sized to that frame) plus a reassembly ≤ `max_message_size`, and a started
//! frame or message must complete within `message_timeout`; output ≤ `max_queue_bytes` plus the
//! control frames (one pong however many pings, one close); a connection whose output is at the
//! cap is not read from until it drains.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use mio::net::TcpStream;

use crate::codec::{self, close, Decoded, DecoderState, Frame, Opcode};
use crate::config::SlowConsumerPolicy;
use crate::conn_id;
use crate::event_loop::{stats, IoThread, READS_PER_ROUND};
use crate::guard::guarded;
use crate::handshake::{self, Head, MAX_HEADERS};
use crate::proxy_protocol;
use crate::registry::UserId;
use crate::request::UpgradeDecision;
use crate::stats::{bump, drop_by};
use crate::types::{check_user_id, MessageKind};
use crate::{ip_limits, socket};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// From a trusted load balancer: reading the PROXY protocol header (src/proxy_protocol.rs).
    ProxyHeader,
    /// Reading the HTTP request head.
    Handshake,
    /// Waiting for the host's deferred upgrade decision.
    Deciding,
    /// Upgraded: frames flow.
    Open,
    /// Our last bytes (close frame or HTTP error) are queued; input is discarded until the peer
    /// closes or the close timeout passes. Holds no handshake slot (a lingering close).
    Closing,
}

const PINGED: u8 = 1;
const WRITE_SHUT: u8 = 2;
/// The peer's close frame has arrived: once ours is flushed the close handshake is complete.
const CLOSE_RECEIVED: u8 = 4;
/// Output reached `max_queue_bytes`: input is left in the kernel until the output drains to half.
const INPUT_PAUSED: u8 = 8;
/// The connection is on its thread's list of partial inputs whose deadline is watched.
pub(crate) const PARTIAL_TRACKED: u8 = 16;
/// The upper 3 bits of `flags` number the connection's current timer entry (see `rearm_timer`).
const EPOCH_SHIFT: u8 = 5;

/// Frames gathered into one sendmsg.
const MAX_IOVECS: usize = 64;

pub(crate) struct Conn {
    stream: TcpStream,
    pub(crate) generation: u32,
    /// Tick of the last input (or of accept, or of the start of closing).
    pub(crate) last_rx: u32,
    pub(crate) state: State,
    pub(crate) flags: u8,
    /// Code reported to `on_close`.
    pub(crate) close_code: u16,
    user: Option<UserId>,
    spill: Option<Box<Spill>>,
}

/// Whatever a connection holds only while bytes are in flight.
#[derive(Default)]
struct Spill {
    /// Received bytes not consumed yet: part of a request head or of a frame (sized to the
    /// frame once its header is in).
    input: Vec<u8>,
    /// Reassembly of a fragmented message, progress through a partly arrived frame.
    decoder: DecoderState,
    /// Tick at which the current incomplete frame or message began (`message_timeout`).
    input_since: u32,
    /// Bytes of incomplete input counted in the server's `partial_input_bytes`.
    held: usize,
    /// Frames the socket has not taken yet; the front one may be partly sent.
    queue: VecDeque<Frame>,
    front_sent: usize,
    queued_bytes: usize,
    /// Where in `queue` a pong waits that has not started to go out: a newer ping replaces it.
    pong_at: Option<usize>,
    /// Sec-WebSocket-Accept for a deferred upgrade.
    accept_key: Option<Box<str>>,
    /// The client's address from a PROXY header, until the request head is parsed.
    client_addr: Option<SocketAddr>,
}

impl Spill {
    fn is_empty(&self) -> bool {
        self.input.is_empty()
            && self.decoder.is_idle()
            && self.held == 0
            && self.queue.is_empty()
            && self.accept_key.is_none()
            && self.client_addr.is_none()
    }

    /// Adds a frame to the output; returns its size for the queued-bytes gauge.
    fn push(&mut self, frame: Frame) -> usize {
        let len = frame.len();
        self.queued_bytes += len;
        self.queue.push_back(frame);
        len
    }

    /// Accounts for `written` bytes taken by the socket from the front of the queue.
    fn sent(&mut self, mut written: usize) {
        self.queued_bytes = self.queued_bytes.saturating_sub(written);
        while let Some(front) = self.queue.front() {
            let remaining = front.len() - self.front_sent;
            if written < remaining {
                self.front_sent += written;
                return;
            }
            written -= remaining;
            self.front_sent = 0;
            self.queue.pop_front();
            self.pong_at = self.pong_at.and_then(|at| at.checked_sub(1));
        }
    }

    /// Drops queued frames past the first `keep`; returns the bytes dropped.
    fn truncate(&mut self, keep: usize) -> usize {
        let before = self.queued_bytes;
        self.queue.truncate(keep);
        if self.queue.is_empty() {
            self.front_sent = 0;
        }
        self.queued_bytes = self.queue.iter().map(|f| f.len()).sum::<usize>() - self.front_sent;
        self.pong_at = self.pong_at.filter(|&at| at < self.queue.len());
        before - self.queued_bytes
    }

    /// Fills `slices` with the queued bytes in order; returns how many slices are used.
    fn gather<'a>(&'a self, slices: &mut [IoSlice<'a>; MAX_IOVECS]) -> usize {
        let mut count = 0;
        for (i, frame) in self.queue.iter().take(MAX_IOVECS).enumerate() {
            slices[i] = IoSlice::new(if i == 0 { &frame[self.front_sent..] } else { &frame[..] });
            count += 1;
        }
        count
    }
}

impl Conn {
    pub(crate) fn new(stream: TcpStream, generation: u32, now: u32) -> Conn {
        Conn {
            stream,
            generation,
            last_rx: now,
            state: State::Handshake,
            flags: 0,
            close_code: close::ABNORMAL,
            user: None,
            spill: None,
        }
    }

    pub(crate) fn user(&self) -> Option<&[u8]> {
        self.user.as_deref()
    }

    pub(crate) fn timer_epoch(&self) -> u8 {
        self.flags >> EPOCH_SHIFT
    }

    /// Invalidates the pending timer entry: entries carrying an older epoch are dropped.
    pub(crate) fn next_timer_epoch(&mut self) -> u8 {
        let epoch = self.timer_epoch().wrapping_add(1) & (u8::MAX >> EPOCH_SHIFT);
        self.flags = (self.flags & ((1 << EPOCH_SHIFT) - 1)) | (epoch << EPOCH_SHIFT);
        epoch
    }

    pub(crate) fn pinged(&self) -> bool {
        self.flags & PINGED != 0
    }

    pub(crate) fn set_pinged(&mut self) {
        self.flags |= PINGED;
    }

    fn spill(&mut self) -> &mut Spill {
        self.spill.get_or_insert_with(Box::default)
    }

    /// Frees the spill once nothing is pending: idle connections own no buffer.
    fn release_spill(&mut self) {
        if self.spill.as_ref().is_some_and(|s| s.is_empty()) {
            self.spill = None;
        }
    }

    /// The socket's peer: the client, or the load balancer in front of it.
    pub(crate) fn socket_peer(&self) -> Option<SocketAddr> {
        self.stream.peer_addr().ok()
    }

    /// Records the client's address a PROXY header gave, for the request head that follows.
    pub(crate) fn set_client_addr(&mut self, addr: SocketAddr) {
        self.spill().client_addr = Some(addr);
    }

    fn has_queued_output(&self) -> bool {
        self.spill.as_ref().is_some_and(|s| !s.queue.is_empty())
    }

    fn queued_bytes(&self) -> usize {
        self.spill.as_ref().map_or(0, |s| s.queued_bytes)
    }

    /// When the incomplete frame or message this connection holds began, if it holds one.
    pub(crate) fn partial_input_since(&self) -> Option<u32> {
        self.spill.as_ref().filter(|s| s.held > 0).map(|s| s.input_since)
    }
}

/// Writes `frames` (the first from byte `skip`) in one call.
fn write_frames(fd: RawFd, frames: &[Frame], skip: usize) -> io::Result<usize> {
    match frames {
        [frame] => socket::send(fd, &frame[skip..]),
        _ => {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let count = frames.len().min(MAX_IOVECS);
            for (i, (slice, frame)) in slices.iter_mut().zip(frames).enumerate() {
                *slice = IoSlice::new(if i == 0 { &frame[skip..] } else { frame });
            }
            socket::send_vectored(fd, &slices[..count])
        }
    }
}

impl IoThread {
    // ---------------------------------------------------------------- input

    /// Reads what the socket has. `until_drained`: keep reading past a short read, until the
    /// socket says WouldBlock or end of stream; needed when the event also reported the peer's
    /// FIN (epoll is edge-triggered: data and FIN that arrived together make one event, and the
    /// end of stream is only seen by the read after the data).
    pub(crate) fn on_readable(&mut self, slot: usize, until_drained: bool) {
        for _ in 0..READS_PER_ROUND {
            let max_queue = self.config().max_queue_bytes;
            let Some(conn) = self.conns.get_mut(slot) else { return };
            if conn.state == State::Open && conn.queued_bytes() >= max_queue {
                conn.flags |= INPUT_PAUSED;
            }
            if conn.flags & INPUT_PAUSED != 0 {
                // Backpressure: a client that sends (pings, requests the host answers) but
                // does not read can't make us queue more; its input waits in the kernel until
                // the output drains (`flush` resumes reading).
                return;
            }
            let read = conn.stream.read(&mut self.scratch);
            match read {
                Ok(0) => return self.on_peer_gone(slot),
                Ok(n) => {
                    match conn.state {
                        // After an HTTP error, or once the peer's close frame is in, the rest
                        // is discarded until the peer closes; a WebSocket peer's reply to our
                        // close frame is looked for.
                        State::Closing if conn.user.is_none() || conn.flags & CLOSE_RECEIVED != 0 => continue,
                        State::Closing => {}
                        // Only an open connection's input counts as life: a handshake that
                        // trickles bytes (slowloris) must not push its deadline back.
                        State::Open => {
                            conn.last_rx = self.wheel.now();
                            conn.flags &= !PINGED;
                        }
                        State::ProxyHeader | State::Handshake | State::Deciding => {}
                    }
                    self.process_input(slot, n);
                    if n < self.scratch.len() && !until_drained {
                        return; // short read: the socket is drained, epoll reports the next data
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.on_peer_gone(slot),
            }
        }
        self.again.push(slot);
    }

    /// The peer closed or reset the connection.
    fn on_peer_gone(&mut self, slot: usize) {
        let code = self.conns[slot].close_code;
        self.finish(slot, code);
    }

    /// Consumes `n` fresh bytes in the scratch buffer, keeping any unconsumed tail in the spill.
    fn process_input(&mut self, slot: usize, n: usize) {
        let mut scratch = std::mem::take(&mut self.scratch);
        let pending = self.conns[slot].spill.as_mut().map(|s| std::mem::take(&mut s.input)).unwrap_or_default();
        if pending.is_empty() {
            let used = self.consume(slot, &mut scratch[..n]);
            self.keep_copy(slot, &scratch[used..n]);
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

    /// Feeds bytes kept from earlier reads to the state machine and keeps what it leaves.
    fn consume_kept(&mut self, slot: usize, mut input: Vec<u8>) {
        let used = self.consume(slot, &mut input);
        let need = self.input_need(slot, &input[used..]);
        if used == 0 && input.capacity() <= need {
            // Still the frame this buffer was sized for: keep it as it is.
            input.reserve_exact(need - input.len());
            if let Some(conn) = self.conns.get_mut(slot).filter(|_| !input.is_empty()) {
                conn.spill().input = input;
            }
        } else {
            // Not kept to hold a few leftover bytes in the room of what was consumed.
            self.keep_copy(slot, &input[used..]);
        }
    }

    /// Keeps `rest`, the unconsumed input, in a buffer sized to what it will become.
    fn keep_copy(&mut self, slot: usize, rest: &[u8]) {
        if rest.is_empty() {
            return;
        }
        let mut kept = Vec::with_capacity(self.input_need(slot, rest));
        kept.extend_from_slice(rest);
        if let Some(conn) = self.conns.get_mut(slot) {
            conn.spill().input = kept;
        }
    }

    /// How large the kept input `rest` will grow before it can be consumed: the whole frame
    /// once its header is in (bounded by the message-size cap), else the bytes themselves.
    fn input_need(&self, slot: usize, rest: &[u8]) -> usize {
        let framed = self.conns.get(slot).is_some_and(|c| matches!(c.state, State::Open | State::Closing));
        match codec::parse_header(rest, self.config().max_message_size) {
            Ok(Some(info)) if framed => (info.header_len + info.payload_len).max(rest.len()),
            _ => rest.len(),
        }
    }

    /// After input was consumed: counts what the connection now holds for an incomplete frame or
    /// message in the server's `partial_input_bytes` (past `max_partial_input_bytes`, the
    /// connection that grew it is refused with 1013), starts the message deadline when such
    /// input begins, and frees the spill when nothing is pending.
    fn input_settled(&mut self, slot: usize) {
        let max_total = self.config().max_partial_input_bytes;
        let Some(conn) = self.conns.get_mut(slot) else { return };
        let held = match (conn.state, conn.spill.as_deref()) {
            (State::Open, Some(spill)) => spill.input.capacity() + spill.decoder.held_bytes(),
            _ => 0,
        };
        let before = conn.spill.as_ref().map_or(0, |s| s.held);
        let mut over = false;
        if held > before {
            let total = self.shared.partial_input_bytes.fetch_add(held - before, Relaxed) + (held - before);
            over = total > max_total;
            let spill = conn.spill();
            spill.held = held;
            if before == 0 {
                spill.input_since = self.wheel.now();
                if conn.flags & PARTIAL_TRACKED == 0 {
                    conn.flags |= PARTIAL_TRACKED;
                    self.partial_inputs.push((slot, conn.generation));
                }
            }
        } else if held < before {
            self.shared.partial_input_bytes.fetch_sub(before - held, Relaxed);
            conn.spill().held = held;
        }
        conn.release_spill();
        if over {
            bump(&stats!(self).partial_input_refusals_total, 1);
            let frame = codec::close_frame(close::TRY_AGAIN_LATER, "server busy: too much incomplete input");
            self.enter_closing(slot, close::TRY_AGAIN_LATER, frame.as_bytes());
        }
    }

    /// Drops whatever input the connection holds (closing: the rest is discarded).
    fn drop_input(&mut self, slot: usize) {
        let Some(spill) = self.conns.get_mut(slot).and_then(|c| c.spill.as_mut()) else { return };
        spill.input = Vec::new();
        spill.decoder = DecoderState::default();
        spill.accept_key = None;
        self.shared.partial_input_bytes.fetch_sub(std::mem::take(&mut spill.held), Relaxed);
    }

    /// Feeds `buf` to the state machine; returns how many bytes it consumed.
    fn consume(&mut self, slot: usize, buf: &mut [u8]) -> usize {
        let mut pos = 0;
        loop {
            let Some(conn) = self.conns.get(slot) else { return buf.len() };
            match conn.state {
                State::ProxyHeader => match self.proxy_header(slot, &buf[pos..]) {
                    Some(used) => pos += used,
                    None => return pos,
                },
                State::Handshake => match self.handshake(slot, &buf[pos..]) {
                    Some(used) => pos += used,
                    None => return pos,
                },
                State::Deciding => {
                    if buf.len() - pos > self.config().max_header_bytes {
                        self.finish(slot, close::ABNORMAL);
                        return buf.len();
                    }
                    return pos;
                }
                State::Closing => {
                    // Only the peer's close frame matters now; anything unparsable is dropped.
                    let max = self.config().max_message_size;
                    let info = match codec::parse_header(&buf[pos..], max) {
                        Ok(Some(info)) => info,
                        Ok(None) => return pos,
                        Err(_) => return buf.len(),
                    };
                    let end = pos + info.header_len + info.payload_len;
                    if end > buf.len() {
                        return pos;
                    }
                    pos = end;
                    if info.opcode == Opcode::Close {
                        self.conns[slot].flags |= CLOSE_RECEIVED;
                        self.progress_close(slot);
                        return buf.len();
                    }
                }
                State::Open => {
                    let max = self.config().max_message_size;
                    // The decoder state is lent to the decoder and put back before the frame is
                    // acted on, so that failing or closing (which drop it) see it in place.
                    let conn = &mut self.conns[slot];
                    let mut decoder = conn.spill.as_mut().map(|s| std::mem::take(&mut s.decoder)).unwrap_or_default();
                    let (used, decoded) = codec::decode_next(&mut buf[pos..], &mut decoder, max);
                    if !decoder.is_idle() {
                        conn.spill().decoder = decoder;
                    }
                    pos += used;
                    match decoded {
                        Decoded::Incomplete => return pos,
                        Decoded::Fail(code) => {
                            self.fail(slot, code);
                            return buf.len();
                        }
                        frame => self.on_frame(slot, frame),
                    }
                }
            }
        }
    }

    /// Acts on one decoded client frame (validated by the codec: only what the peer may send).
    fn on_frame(&mut self, slot: usize, frame: Decoded<'_>) {
        match frame {
            Decoded::Message(kind, payload) => self.deliver(slot, kind, &payload),
            Decoded::Ping(payload) => self.send_pong(slot, payload),
            Decoded::Pong(_) | Decoded::Fragment | Decoded::Incomplete => {}
            Decoded::Close(code) => {
                // What the host sent in answer to earlier messages goes out before our close.
                self.run_queued_commands();
                if self.conns.get(slot).is_none_or(|c| c.state != State::Open) {
                    return;
                }
                // Echo the peer's code (an empty close is answered with an empty one).
                let reply = if code == close::NO_STATUS {
                    codec::control(Opcode::Close, b"")
                } else {
                    codec::control(Opcode::Close, &code.to_be_bytes())
                };
                self.conns[slot].flags |= CLOSE_RECEIVED;
                self.enter_closing(slot, code, reply.as_bytes());
            }
            Decoded::Fail(code) => self.fail(slot, code),
        }
    }

    fn deliver(&mut self, slot: usize, kind: MessageKind, payload: &[u8]) {
        bump(&stats!(self).messages_in_total, 1);
        let id = self.conn_id(slot);
        let Some(user) = &self.conns[slot].user else { return };
        let (handler, server) = (&*self.handler, &self.server);
        guarded(|| handler.on_message(server, id, user, kind, payload));
    }

    /// Fails the connection for a protocol violation (RFC 6455 §7.1.7), after anything the host
    /// sent in answer to the messages before it.
    pub(crate) fn fail(&mut self, slot: usize, code: u16) {
        self.run_queued_commands();
        if self.conns.get(slot).is_none_or(|c| c.state == State::Closing) {
            return;
        }
        bump(&stats!(self).protocol_errors_total, 1);
        let reason = match code {
            close::TOO_BIG => "message too big",
            close::INVALID_PAYLOAD => "invalid UTF-8",
            _ => "protocol error",
        };
        self.enter_closing(slot, code, codec::close_frame(code, reason).as_bytes());
    }

    // ---------------------------------------------------------------- handshake

    /// Whether a connection accepted from `peer` must open with a PROXY header. If so it is put
    /// in `State::ProxyHeader` and its per-address admission waits for the header's address.
    pub(crate) fn expects_proxy_header(&mut self, slot: usize, peer: IpAddr) -> bool {
        let config = self.config();
        if !config.proxy_protocol || !config.trusted_proxies.iter().any(|net| net.contains(peer)) {
            return false;
        }
        self.conns[slot].state = State::ProxyHeader;
        true
    }

    /// Handles the PROXY header at the start of `buf`; `None` while it is incomplete. Once it
    /// is in, the client's address is kept for the request, the connection is counted under it,
    /// and the HTTP handshake continues with the bytes after it.
    pub(crate) fn proxy_header(&mut self, slot: usize, buf: &[u8]) -> Option<usize> {
        match proxy_protocol::parse(buf) {
            proxy_protocol::Parsed::Incomplete => None,
            proxy_protocol::Parsed::Invalid => {
                self.reject(slot, 400);
                Some(buf.len())
            }
            proxy_protocol::Parsed::Header { len, source } => {
                let conn = &mut self.conns[slot];
                conn.state = State::Handshake;
                // No address in the header (health check): count the balancer's own.
                let counted = source.or_else(|| conn.socket_peer());
                if counted.is_some_and(|client| !self.limit_address(slot, client.ip())) {
                    self.reject(slot, 429); // answered now, as a refusal at accept
                    return Some(buf.len());
                }
                if let Some(source) = source {
                    self.conns[slot].set_client_addr(source);
                }
                Some(len)
            }
        }
    }


    /// Handles the request head at the start of `buf`; `None` while it is incomplete.
    fn handshake(&mut self, slot: usize, buf: &[u8]) -> Option<usize> {
        let ticket = self.conn_id(slot);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let conn = &self.conns[slot];
        // Behind a trusted load balancer the client is who its PROXY header says.
        let client = conn.spill.as_ref().and_then(|s| s.client_addr);
        let head =
            handshake::parse(buf, &mut headers, &self.shared.config, ticket, || client.or_else(|| conn.socket_peer()));
        if !matches!(head, Head::Incomplete) {
            if let Some(spill) = self.conns[slot].spill.as_mut() {
                spill.client_addr = None; // the request has it now
            }
        }
        let (handler, server) = (&*self.handler, &self.server);
        match head {
            Head::Incomplete => None,
            Head::Reject(status) => {
                self.reject(slot, status);
                Some(buf.len())
            }
            Head::Plain { request } => {
                let response = guarded(|| handler.on_http(server, &request));
                let bytes = match response {
                    Some(Some(response)) => handshake::host_response(&response),
                    Some(None) => handshake::error_response(426),
                    None => handshake::error_response(500),
                };
                self.leave_handshake(slot);
                self.enter_closing(slot, close::ABNORMAL, &bytes);
                Some(buf.len())
            }
            Head::Upgrade { len, mut request, accept_key } => {
                let invalid_token = handshake::check_token(&mut request, self.shared.jwt.as_ref());
                let decision = guarded(|| handler.on_upgrade(server, &request)).unwrap_or(UpgradeDecision::Reject(500));
                match decision {
                    UpgradeDecision::Accept(user) => self.open(slot, &user, &accept_key),
                    UpgradeDecision::Reject(status) => self.reject_with(slot, handshake::refusal(status, invalid_token)),
                    UpgradeDecision::Defer => {
                        let conn = &mut self.conns[slot];
                        conn.state = State::Deciding;
                        conn.spill().accept_key = Some(accept_key.into());
                    }
                }
                Some(len)
            }
        }
    }

    /// Applies the host's deferred decision and resumes any input that arrived meanwhile.
    pub(crate) fn decide(&mut self, slot: usize, decision: UpgradeDecision) {
        let key = self.conns[slot].spill.as_mut().and_then(|s| s.accept_key.take()).unwrap_or_default();
        match decision {
            UpgradeDecision::Accept(user) => self.open(slot, &user, &key),
            UpgradeDecision::Reject(status) => self.reject(slot, status),
            UpgradeDecision::Defer => {
                self.conns[slot].spill().accept_key = Some(key);
                return;
            }
        }
        // Frames the client sent while we were deciding: what is left of them is incomplete
        // input like any other (counted, and under the message deadline).
        let kept = self.conns.get_mut(slot).and_then(|c| c.spill.as_mut()).map(|s| std::mem::take(&mut s.input));
        self.consume_kept(slot, kept.unwrap_or_default());
        self.input_settled(slot);
    }

    fn leave_handshake(&mut self, slot: usize) {
        if matches!(self.conns[slot].state, State::ProxyHeader | State::Handshake | State::Deciding) {
            if let (Some(limits), Some(&key)) = (&self.shared.ip_limits, self.ip_keys.get(slot)) {
                if key != ip_limits::NOT_COUNTED {
                    limits.handshake_done(key);
                }
            }
            self.handshakes -= 1;
            drop_by(&stats!(self).handshakes, 1);
            if self.handshakes + 1 == self.config().max_handshakes_per_thread {
                self.accept_pending = true; // accepting had paused at the limit: resume
            }
        }
    }

    pub(crate) fn reject(&mut self, slot: usize, status: u16) {
        self.reject_with(slot, handshake::refusal(status, false));
    }

    /// Answers a request we won't upgrade with `response`, then closes.
    fn reject_with(&mut self, slot: usize, response: Vec<u8>) {
        bump(&stats!(self).rejected_total, 1);
        self.leave_handshake(slot);
        self.enter_closing(slot, close::ABNORMAL, &response);
    }

    fn open(&mut self, slot: usize, user: &[u8], accept_key: &str) {
        if check_user_id(user).is_err() {
            return self.reject(slot, 500);
        }
        let id = self.conn_id(slot);
        let limit = self.config().max_connections_per_user;
        if self.shared.registry.add(user, id, limit).is_err() {
            return self.reject(slot, 429);
        }
        self.leave_handshake(slot);
        let now = self.wheel.now();
        let conn = &mut self.conns[slot];
        let handshake_deadline = conn.last_rx + self.ticks.handshake; // last_rx is the accept tick here
        conn.state = State::Open;
        conn.last_rx = now;
        conn.user = Some(UserId::new(user));
        // The pending entry is due at the handshake deadline and recomputes then; replace it
        // only when the first ping is due sooner (a second entry per connection costs memory).
        let first_ping = now + self.ticks.ping;
        if first_ping < handshake_deadline {
            self.rearm_timer(slot, first_ping);
        }
        bump(&stats!(self).upgrades_total, 1);
        bump(&stats!(self).connections, 1);
        self.send_control(slot, &handshake::switching_protocols(accept_key));
        if self.conns.contains(slot) {
            let (handler, server) = (&*self.handler, &self.server);
            guarded(|| handler.on_open(server, id, user));
        }
    }

    // ---------------------------------------------------------------- output

    /// Sends data messages to one connection: straight to the socket while it takes everything
    /// (nothing is allocated then), the rest queued under the slow-consumer policy. Several
    /// frames (back-to-back broadcasts) go out in one sendmsg.
    pub(crate) fn queue_messages(&mut self, slot: usize, frames: &[Frame]) {
        let mut rest = frames;
        let conn = &mut self.conns[slot];
        // A queue that is not empty is waiting for a writable event: join it.
        let mut blocked = conn.has_queued_output();
        if !blocked {
            let fd = conn.stream.as_raw_fd();
            while !rest.is_empty() {
                let batch = &rest[..rest.len().min(MAX_IOVECS)];
                let mut sent = match write_frames(fd, batch, 0) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        blocked = true;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return self.on_peer_gone(slot),
                };
                bump(&stats!(self).bytes_out_total, sent as u64);
                let before = rest.len();
                while let [frame, tail @ ..] = rest {
                    if sent < frame.len() {
                        break;
                    }
                    sent -= frame.len();
                    rest = tail;
                }
                bump(&stats!(self).messages_out_total, (before - rest.len()) as u64);
                if let ([partial, tail @ ..], true) = (rest, sent > 0) {
                    // Part of this frame is on the wire: it is queued whatever the policy.
                    bump(&stats!(self).messages_out_total, 1);
                    let spill = conn.spill();
                    spill.front_sent = sent;
                    let added = spill.push(partial.clone()) - sent;
                    spill.queued_bytes -= sent;
                    bump(&stats!(self).queued_bytes, added as u64);
                    rest = tail;
                    break;
                }
                if rest.len() + batch.len() > before {
                    break; // the socket took less than offered
                }
            }
        }
        for frame in rest {
            self.enqueue_message(slot, frame.clone());
        }
        if !blocked {
            self.flush(slot);
        }
    }

    /// Queues a data message behind others, applying the slow-consumer policy. Everything queued
    /// counts against `max_queue_bytes`, control frames included.
    fn enqueue_message(&mut self, slot: usize, frame: Frame) {
        let max_queue = self.config().max_queue_bytes;
        let Some(conn) = self.conns.get_mut(slot) else { return };
        if conn.state != State::Open {
            return; // closed as a slow consumer by an earlier frame of this batch
        }
        let spill = conn.spill();
        if spill.queued_bytes + frame.len() <= max_queue {
            bump(&stats!(self).messages_out_total, 1);
            let added = spill.push(frame);
            bump(&stats!(self).queued_bytes, added as u64);
            return;
        }
        match self.shared.config.slow_consumer {
            SlowConsumerPolicy::Drop => {
                bump(&stats!(self).dropped_total, 1);
                if !spill.queue.is_empty() {
                    conn.flags |= INPUT_PAUSED; // over the cap: read no more until it drains
                }
                let id = self.conn_id(slot);
                if let Some(user) = &self.conns[slot].user {
                    let (handler, server) = (&*self.handler, &self.server);
                    guarded(|| handler.on_drop(server, id, user, frame.len()));
                }
            }
            SlowConsumerPolicy::Close => {
                bump(&stats!(self).slow_consumer_closes_total, 1);
                // Free the backlog now, keeping only a partly sent frame so that the close frame
                // starts on a frame boundary.
                let keep = usize::from(spill.front_sent > 0);
                let freed = spill.truncate(keep);
                drop_by(&stats!(self).queued_bytes, freed as u64);
                self.enter_closing(slot, close::POLICY, codec::close_frame(close::POLICY, "slow consumer").as_bytes());
            }
        }
    }

    /// Sends bytes that must never be dropped (handshake responses, ping, close), after anything
    /// already queued.
    pub(crate) fn send_control(&mut self, slot: usize, bytes: &[u8]) {
        let conn = &mut self.conns[slot];
        if conn.has_queued_output() {
            let added = conn.spill().push(Arc::from(bytes));
            bump(&stats!(self).queued_bytes, added as u64);
            return;
        }
        let fd = conn.stream.as_raw_fd();
        let (sent, blocked) = loop {
            match socket::send(fd, bytes) {
                Ok(n) => break (n, false),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break (0, true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.on_peer_gone(slot),
            }
        };
        bump(&stats!(self).bytes_out_total, sent as u64);
        if sent < bytes.len() {
            // Queued whole, as the started front frame: a pong must not cut in before its end.
            let spill = conn.spill();
            let added = spill.push(Arc::from(bytes)) - sent;
            spill.front_sent = sent;
            spill.queued_bytes -= sent;
            bump(&stats!(self).queued_bytes, added as u64);
            if !blocked {
                self.flush(slot);
            }
        }
    }

    /// Answers a ping. With output waiting, only the most recent unanswered ping is answered
    /// (RFC 6455 §5.5.3): a ping flood from a client that does not read holds one pong, not one
    /// per ping. The pong goes ahead of queued data, at the next frame boundary.
    fn send_pong(&mut self, slot: usize, payload: &[u8]) {
        let pong = codec::control(Opcode::Pong, payload);
        let conn = &mut self.conns[slot];
        if !conn.has_queued_output() {
            self.send_control(slot, pong.as_bytes());
            // If it had to wait, it is the queue's only frame: a newer ping replaces it there.
            if let Some(spill) = self.conns.get_mut(slot).and_then(|c| c.spill.as_mut()) {
                spill.pong_at = (spill.queue.len() == 1).then_some(0);
            }
            return;
        }
        let spill = conn.spill();
        let frame: Frame = Arc::from(pong.as_bytes());
        match spill.pong_at {
            Some(at) if at > 0 || spill.front_sent == 0 => {
                let replaced = std::mem::replace(&mut spill.queue[at], frame);
                spill.queued_bytes = spill.queued_bytes - replaced.len() + pong.as_bytes().len();
                drop_by(&stats!(self).queued_bytes, replaced.len() as u64);
            }
            _ => {
                let at = usize::from(spill.front_sent > 0);
                spill.queued_bytes += frame.len();
                spill.queue.insert(at, frame);
                spill.pong_at = Some(at);
            }
        }
        bump(&stats!(self).queued_bytes, pong.as_bytes().len() as u64);
    }

    /// Writes the queue until it is empty or the socket says WouldBlock. With edge-triggered
    /// polling a short write that did not end in WouldBlock is followed by no writable event:
    /// stopping there would strand the rest until some unrelated event. Once the output is below
    /// the queue cap again, reading resumes for a connection paused by backpressure.
    fn flush(&mut self, slot: usize) {
        let max_queue = self.config().max_queue_bytes;
        let Some(conn) = self.conns.get_mut(slot) else { return };
        let fd = conn.stream.as_raw_fd();
        let mut written_total = 0usize;
        let mut gone = false;
        if let Some(spill) = conn.spill.as_mut() {
            while !spill.queue.is_empty() {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let count = spill.gather(&mut slices);
                match socket::send_vectored(fd, &slices[..count]) {
                    Ok(written) => {
                        written_total += written;
                        spill.sent(written);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        gone = true;
                        break;
                    }
                }
            }
            if spill.queue.is_empty() {
                spill.queue = VecDeque::new(); // give the ring's memory back
            }
        }
        bump(&stats!(self).bytes_out_total, written_total as u64);
        drop_by(&stats!(self).queued_bytes, written_total as u64);
        if gone {
            return self.on_peer_gone(slot);
        }
        // Resumed at half the cap, so a client at the edge is not paused and resumed per frame.
        if conn.flags & INPUT_PAUSED != 0 && conn.queued_bytes() <= max_queue / 2 {
            conn.flags &= !INPUT_PAUSED;
            self.again.push(slot); // its input waited in the kernel: read it this round
        }
    }

    pub(crate) fn on_writable(&mut self, slot: usize) {
        self.flush(slot);
        if let Some(conn) = self.conns.get_mut(slot) {
            conn.release_spill();
            self.progress_close(slot);
        }
    }

    // ---------------------------------------------------------------- closing

    /// Starts the close handshake from our side (host close, stop, ...).
    pub(crate) fn start_close(&mut self, slot: usize, code: u16, reason: &str) {
        self.enter_closing(slot, code, codec::close_frame(code, reason).as_bytes());
    }

    /// Sends our last bytes, then waits (bounded by close_timeout) for the peer to close.
    pub(crate) fn enter_closing(&mut self, slot: usize, code: u16, last_bytes: &[u8]) {
        let now = self.wheel.now();
        let conn = &mut self.conns[slot];
        if conn.state == State::Closing {
            return;
        }
        let was_open = conn.state == State::Open;
        conn.state = State::Closing;
        conn.close_code = code;
        conn.last_rx = now;
        if was_open {
            // From now on publishes, counts and gauges see the connection as gone; on_close
            // still fires when the socket is finally closed.
            if let Some(user) = &conn.user {
                self.shared.registry.remove(user, conn_id::make(self.index, slot, conn.generation));
            }
            drop_by(&stats!(self).connections, 1);
        }
        self.drop_input(slot);
        self.rearm_timer(slot, now + self.ticks.close);
        self.send_control(slot, last_bytes);
        self.progress_close(slot);
    }

    /// Moves a closing connection on once its output is flushed: when both close frames have
    /// been exchanged the close handshake is complete and the socket is closed (RFC 6455
    /// §7.1.1); otherwise FIN is sent and the socket closed when the peer's close frame or FIN
    /// arrives (waiting, rather than closing at once, keeps our last bytes from being lost to a
    /// reset).
    fn progress_close(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else { return };
        if conn.state != State::Closing || conn.has_queued_output() {
            return;
        }
        if conn.flags & CLOSE_RECEIVED != 0 {
            let code = conn.close_code;
            return self.finish(slot, code);
        }
        if conn.flags & WRITE_SHUT == 0 {
            conn.flags |= WRITE_SHUT;
            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        }
    }

    /// Removes the connection, closes its socket and, if it was opened, unregisters it and fires
    /// `on_close` once.
    pub(crate) fn finish(&mut self, slot: usize, code: u16) {
        if !self.conns.contains(slot) {
            return;
        }
        self.leave_handshake(slot);
        self.drop_input(slot);
        let id = self.conn_id(slot);
        let conn = self.conns.remove(slot);
        if let Some(spill) = &conn.spill {
            drop_by(&stats!(self).queued_bytes, spill.queued_bytes as u64);
        }
        self.me().live.clear(slot);
        if let Some(key) = self.ip_keys.get_mut(slot).map(|k| std::mem::replace(k, ip_limits::NOT_COUNTED)) {
            if let (Some(limits), true) = (&self.shared.ip_limits, key != ip_limits::NOT_COUNTED) {
                limits.release(key);
            }
        }
        self.shared.open_sockets.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        drop(conn.stream); // closing the descriptor also removes it from epoll
        if std::mem::take(&mut self.accept_after_close) {
            self.accept_pending = true; // a descriptor is free again
        }
        if let Some(user) = conn.user {
            if conn.state == State::Open {
                self.shared.registry.remove(&user, id);
                drop_by(&stats!(self).connections, 1);
            }
            let (handler, server) = (&*self.handler, &self.server);
            guarded(|| handler.on_close(server, id, &user, code));
        }
    }
}

#[cfg(test)]
mod tests {
    /// The cost of an idle connection: reassembly and every other in-flight state live behind the
    /// lazily allocated spill, not inline. Release builds only: in debug builds mio's stream
    /// carries an extra selector ID for its own registration checks.
    #[test]
    #[cfg(all(target_pointer_width = "64", not(debug_assertions)))]
    fn an_idle_connection_is_48_bytes() {
        assert_eq!(std::mem::size_of::<super::Conn>(), 48);
    }
}
