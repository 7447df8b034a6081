//! Input: reading the socket, the PROXY header, the upgrade request, and frames from the client;
//! what is left of an incomplete frame or message is kept, counted and under a deadline.

use std::io::{self, Read};
use std::sync::atomic::Ordering::Relaxed;

use super::{
    Conn, Context, Gone, Interrupt, Received, State, Step, CLOSE_RECEIVED, INPUT_PAUSED, PARTIAL_TRACKED, PINGED,
};
use crate::codec::{self, close, Decoded, DecoderState, Opcode};
use crate::guard::guarded;
use crate::handshake::{self, Head, MAX_HEADERS};
use crate::proxy_protocol::{self, Parsed};
use crate::request::UpgradeDecision;
use crate::stats::bump;
use crate::subprotocol::Negotiated;
use crate::types::MessageKind;

impl Conn {
    /// Reads what the socket has into `buf` (the thread's shared read buffer).
    pub(crate) fn receive(&mut self, cx: &Context, buf: &mut [u8]) -> Result<Received, Gone> {
        if self.state == State::Open && self.queued_bytes() >= cx.config().max_queue_bytes {
            self.flags |= INPUT_PAUSED;
        }
        if self.flags & INPUT_PAUSED != 0 {
            // Backpressure: a client that sends (pings, requests the host answers) but does not
            // read can't make us queue more; its input waits in the kernel until the output
            // drains (`flush` resumes reading).
            return Ok(Received::Nothing);
        }
        match self.stream.read(buf) {
            Ok(0) => Err(self.gone()),
            Ok(n) => {
                match self.state {
                    // After an HTTP error, or once the peer's close frame is in, the rest is
                    // discarded until the peer closes; a WebSocket peer's reply to our close
                    // frame is looked for.
                    State::Closing if self.user.is_none() || self.flags & CLOSE_RECEIVED != 0 => {
                        return Ok(Received::Discarded)
                    }
                    State::Closing => {}
                    // Only an open connection's input counts as life: a handshake that trickles
                    // bytes (slowloris) must not push its deadline back.
                    State::Open => {
                        self.last_rx = cx.wheel.now();
                        self.flags &= !PINGED;
                    }
                    State::ProxyHeader | State::Handshake | State::Deciding => {}
                }
                Ok(Received::Bytes(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Received::Nothing),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Received::Retry),
            Err(_) => Err(self.gone()),
        }
    }

    /// The input kept from earlier reads, taken out to be consumed with the fresh bytes.
    pub(crate) fn take_input(&mut self) -> Vec<u8> {
        self.spill.as_mut().map(|s| std::mem::take(&mut s.input)).unwrap_or_default()
    }

    /// Feeds `buf` to the state machine. Returns how many bytes it consumed and, when it stopped
    /// for the loop to act, why; without an interrupt the rest is an incomplete frame or head.
    pub(crate) fn consume(&mut self, cx: &mut Context, slot: usize, buf: &mut [u8]) -> (usize, Option<Interrupt>) {
        let mut pos = 0;
        loop {
            let step = match self.state {
                State::ProxyHeader => self.proxy_header(cx, slot, &buf[pos..]),
                State::Handshake => self.handshake(cx, slot, &buf[pos..]),
                State::Deciding => {
                    if buf.len() - pos > cx.config().max_header_bytes {
                        return (buf.len(), Some(Gone(close::ABNORMAL).into()));
                    }
                    return (pos, None);
                }
                State::Closing => {
                    // Only the peer's close frame matters now; anything unparsable is dropped.
                    let info = match codec::parse_header(&buf[pos..], cx.config().max_message_size) {
                        Ok(Some(info)) => info,
                        Ok(None) => return (pos, None),
                        Err(_) => return (buf.len(), None),
                    };
                    let end = pos + info.header_len + info.payload_len;
                    if end > buf.len() {
                        return (pos, None);
                    }
                    pos = end;
                    if info.opcode == Opcode::Close {
                        self.flags |= CLOSE_RECEIVED;
                        return (buf.len(), self.progress_close().err().map(Interrupt::from));
                    }
                    continue;
                }
                State::Open => {
                    // The decoder state is lent to the decoder and put back before the frame is
                    // acted on, so that failing or closing (which drop it) see it in place.
                    let mut decoder = self.spill.as_mut().map(|s| std::mem::take(&mut s.decoder)).unwrap_or_default();
                    let (used, decoded) =
                        codec::decode_next(&mut buf[pos..], &mut decoder, cx.config().max_message_size);
                    if !decoder.is_idle() {
                        self.spill().decoder = decoder;
                    }
                    pos += used;
                    match decoded {
                        Decoded::Incomplete => return (pos, None),
                        Decoded::Fail(code) => return (buf.len(), Some(Interrupt::Fail(code))),
                        Decoded::Close(code) => return (pos, Some(Interrupt::PeerClose(code))),
                        Decoded::Message(kind, payload) => self.deliver(cx, slot, kind, &payload),
                        Decoded::Ping(payload) => self.send_pong(cx, slot, payload),
                        Decoded::Pong(_) | Decoded::Fragment => Ok(()),
                    }
                    .map(|()| Some(0))
                }
            };
            match step {
                Ok(Some(used)) => pos += used,
                Ok(None) => return (pos, None),
                Err(gone) => return (buf.len(), Some(gone.into())),
            }
        }
    }

    fn deliver(&mut self, cx: &mut Context, slot: usize, kind: MessageKind, payload: &[u8]) -> Step {
        bump(&cx.stats().messages_in_total, 1);
        let id = cx.conn_id(slot, self.generation);
        let Some(user) = &self.user else { return Ok(()) };
        let (handler, server) = (&cx.handler, &cx.server);
        guarded(|| handler.on_message(server, id, user, kind, payload));
        Ok(())
    }

    /// Answers the peer's close frame (the loop has sent what the host queued before it): echoes
    /// its code (an empty close is answered with an empty one) and closes.
    pub(crate) fn close_on_peer_request(&mut self, cx: &mut Context, slot: usize, code: u16) -> Step {
        let reply = if code == close::NO_STATUS {
            codec::control(Opcode::Close, b"")
        } else {
            codec::control(Opcode::Close, &code.to_be_bytes())
        };
        self.flags |= CLOSE_RECEIVED;
        self.enter_closing(cx, slot, code, reply.as_bytes())
    }

    /// Fails the connection for a protocol violation (RFC 6455 §7.1.7) with `code`.
    pub(crate) fn fail(&mut self, cx: &mut Context, slot: usize, code: u16) -> Step {
        bump(&cx.stats().protocol_errors_total, 1);
        let reason = match code {
            close::TOO_BIG => "message too big",
            close::INVALID_PAYLOAD => "invalid UTF-8",
            _ => "protocol error",
        };
        self.enter_closing(cx, slot, code, codec::close_frame(code, reason).as_bytes())
    }

    /// Handles the PROXY header at the start of `buf`; `None` while it is incomplete. Once it
    /// is in, the client's address is kept for the request, the connection is counted under it,
    /// and the HTTP handshake continues with the bytes after it.
    fn proxy_header(&mut self, cx: &mut Context, slot: usize, buf: &[u8]) -> Result<Option<usize>, Gone> {
        match proxy_protocol::parse(buf) {
            Parsed::Incomplete => Ok(None),
            Parsed::Invalid => {
                self.reject(cx, slot, 400)?;
                Ok(Some(buf.len()))
            }
            Parsed::Header { len, source } => {
                self.state = State::Handshake;
                // No address in the header (health check): count the balancer's own.
                let counted = source.or_else(|| self.socket_peer());
                if counted.is_some_and(|client| !cx.limit_address(slot, client.ip())) {
                    self.reject(cx, slot, 429)?; // answered now, as a refusal at accept
                    return Ok(Some(buf.len()));
                }
                if let Some(source) = source {
                    self.spill().client_addr = Some(source);
                }
                Ok(Some(len))
            }
        }
    }

    /// Handles the request head at the start of `buf`; `None` while it is incomplete.
    fn handshake(&mut self, cx: &mut Context, slot: usize, buf: &[u8]) -> Result<Option<usize>, Gone> {
        let ticket = cx.conn_id(slot, self.generation);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        // Behind a trusted load balancer the client is who its PROXY header says.
        let client = self.spill.as_ref().and_then(|s| s.client_addr);
        let head = handshake::parse(buf, &mut headers, cx.config(), ticket, || client.or_else(|| self.socket_peer()));
        if !matches!(head, Head::Incomplete) {
            if let Some(spill) = self.spill.as_mut() {
                spill.client_addr = None; // the request has it now
            }
        }
        match head {
            Head::Incomplete => Ok(None),
            Head::Reject(status) => {
                self.reject(cx, slot, status)?;
                Ok(Some(buf.len()))
            }
            Head::Plain { request } => {
                let response = guarded(|| cx.handler.on_http(&cx.server, &request));
                let bytes = match response {
                    Some(Some(response)) => handshake::host_response(&response),
                    Some(None) => handshake::error_response(426),
                    None => handshake::error_response(500),
                };
                self.leave_handshake(cx, slot);
                self.enter_closing(cx, slot, close::ABNORMAL, &bytes)?;
                Ok(Some(buf.len()))
            }
            Head::Upgrade { len, mut request, accept_key } => {
                let invalid_token = handshake::check_token(&mut request, cx.shared.jwt.as_ref());
                let decision =
                    guarded(|| cx.handler.on_upgrade(&cx.server, &request)).unwrap_or(UpgradeDecision::Reject(500));
                let negotiated = Negotiated::of(&request);
                match decision {
                    UpgradeDecision::Accept(user) => self.open(cx, slot, &user, &accept_key, negotiated)?,
                    UpgradeDecision::Reject(status) => {
                        self.reject_with(cx, slot, handshake::refusal(status, invalid_token))?
                    }
                    UpgradeDecision::Defer => {
                        self.state = State::Deciding;
                        let spill = self.spill();
                        spill.accept_key = Some(accept_key.into());
                        spill.negotiated = negotiated;
                    }
                }
                Ok(Some(len))
            }
        }
    }

    /// Keeps `input` (kept bytes and fresh ones, of which the state machine consumed `used`):
    /// as it is while it is still the frame it was sized for, else the rest in a new buffer.
    pub(crate) fn keep_rest_of(&mut self, cx: &Context, mut input: Vec<u8>, used: usize) {
        let need = self.input_need(cx, &input[used..]);
        if used == 0 && input.capacity() <= need {
            // Still the frame this buffer was sized for: keep it as it is.
            input.reserve_exact(need - input.len());
            if !input.is_empty() {
                self.spill().input = input;
            }
        } else {
            // Not kept to hold a few leftover bytes in the room of what was consumed.
            self.keep_copy(cx, &input[used..]);
        }
    }

    /// Keeps `rest`, the unconsumed input, in a buffer sized to what it will become.
    pub(crate) fn keep_copy(&mut self, cx: &Context, rest: &[u8]) {
        if rest.is_empty() {
            return;
        }
        let mut kept = Vec::with_capacity(self.input_need(cx, rest));
        kept.extend_from_slice(rest);
        self.spill().input = kept;
    }

    /// How large the kept input `rest` will grow before it can be consumed: the whole frame
    /// once its header is in (bounded by the message-size cap), else the bytes themselves.
    fn input_need(&self, cx: &Context, rest: &[u8]) -> usize {
        let framed = matches!(self.state, State::Open | State::Closing);
        match codec::parse_header(rest, cx.config().max_message_size) {
            Ok(Some(info)) if framed => (info.header_len + info.payload_len).max(rest.len()),
            _ => rest.len(),
        }
    }

    /// After input was consumed: counts what the connection now holds for an incomplete frame or
    /// message in the server's `partial_input_bytes` (past `max_partial_input_bytes`, the
    /// connection that grew it is refused with 1013), starts the message deadline when such
    /// input begins, and frees the spill when nothing is pending.
    pub(crate) fn input_settled(&mut self, cx: &mut Context, slot: usize) -> Step {
        let held = match (self.state, self.spill.as_deref()) {
            (State::Open, Some(spill)) => spill.input.capacity() + spill.decoder.held_bytes(),
            _ => 0,
        };
        let before = self.spill.as_ref().map_or(0, |s| s.held);
        let mut over = false;
        if held > before {
            let total = cx.shared.partial_input_bytes.fetch_add(held - before, Relaxed) + (held - before);
            over = total > cx.config().max_partial_input_bytes;
            let began = (before == 0).then(|| cx.wheel.now());
            let spill = self.spill();
            spill.held = held;
            if let Some(now) = began {
                spill.input_since = now;
                if self.flags & PARTIAL_TRACKED == 0 {
                    self.flags |= PARTIAL_TRACKED;
                    cx.partial_inputs.push((slot, self.generation));
                }
            }
        } else if held < before {
            cx.shared.partial_input_bytes.fetch_sub(before - held, Relaxed);
            self.spill().held = held;
        }
        self.release_spill();
        if over {
            bump(&cx.stats().partial_input_refusals_total, 1);
            let frame = codec::close_frame(close::TRY_AGAIN_LATER, "server busy: too much incomplete input");
            return self.enter_closing(cx, slot, close::TRY_AGAIN_LATER, frame.as_bytes());
        }
        Ok(())
    }

    /// When the incomplete frame or message this open connection holds began, if it holds one.
    pub(crate) fn partial_input_since(&self) -> Option<u32> {
        self.spill.as_ref().filter(|s| s.held > 0 && self.state == State::Open).map(|s| s.input_since)
    }

    /// Off its thread's list of partial inputs (see `input_settled`).
    pub(crate) fn untrack_partial_input(&mut self) {
        self.flags &= !PARTIAL_TRACKED;
    }

    /// The incomplete input this connection holds has passed `message_timeout`: close (1008).
    pub(crate) fn message_timed_out(&mut self, cx: &mut Context, slot: usize) -> Step {
        self.untrack_partial_input();
        bump(&cx.stats().message_timeouts_total, 1);
        let frame = codec::close_frame(close::POLICY, "message not completed in time");
        self.enter_closing(cx, slot, close::POLICY, frame.as_bytes())
    }

    /// Drops whatever input the connection holds (closing: the rest is discarded).
    pub(super) fn drop_input(&mut self, cx: &Context) {
        let Some(spill) = self.spill.as_mut() else { return };
        spill.input = Vec::new();
        spill.decoder = DecoderState::default();
        spill.accept_key = None;
        spill.negotiated = Negotiated::default();
        cx.shared.partial_input_bytes.fetch_sub(std::mem::take(&mut spill.held), Relaxed);
    }
}
