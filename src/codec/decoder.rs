//! The client-stream decoder: frame rules, fragment reassembly and UTF-8 of text messages as the
//! bytes arrive. Pure: no I/O, no allocation unless a message is fragmented.

use std::borrow::Cow;

use super::frame::{apply_mask, close, parse_close_payload, parse_header, Opcode};
use super::utf8::Utf8Stream;
use crate::types::MessageKind;

/// A text or binary message arriving in fragments. Exists only between a message's first
/// fragment and its last (the connection keeps it in its lazily allocated spill).
#[derive(Debug)]
pub struct Reassembly {
    text: bool,
    data: Vec<u8>,
    /// UTF-8 state after `data` (text only).
    utf8: Utf8Stream,
}

/// Progress through a frame whose payload has only partly arrived: how much of it is already
/// unmasked in place and, for text, checked as UTF-8. So an invalid byte fails the connection
/// as soon as it arrives rather than when the frame completes, and no byte is unmasked or
/// checked twice however the payload trickles in.
#[derive(Debug, Default)]
struct PartialFrame {
    unmasked: usize,
    /// UTF-8 state after the message so far plus `unmasked` bytes of this frame (text only).
    utf8: Option<Utf8Stream>,
}

/// What the decoder carries from one call to the next for one client stream.
#[derive(Debug, Default)]
pub struct DecoderState {
    reassembly: Option<Reassembly>,
    partial: PartialFrame,
}

impl DecoderState {
    /// No message or frame in progress: nothing held.
    pub fn is_idle(&self) -> bool {
        self.reassembly.is_none() && self.partial.unmasked == 0 && self.partial.utf8.is_none()
    }

    /// Whether a fragmented message has started and not ended.
    #[allow(dead_code)] // for the fuzz target, through `internals`
    pub fn message_open(&self) -> bool {
        self.reassembly.is_some()
    }

    /// Heap bytes the reassembly holds.
    pub(crate) fn held_bytes(&self) -> usize {
        self.reassembly.as_ref().map_or(0, |r| r.data.capacity())
    }
}

/// What the next bytes of a client stream amount to (see [`decode_next`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// Not a whole frame yet: nothing consumed. The payload that has arrived may have been
    /// unmasked and checked in place (the state remembers how far): call again with the same
    /// bytes plus more.
    Incomplete,
    /// A non-final fragment was taken into the reassembly; nothing to deliver yet.
    Fragment,
    /// A complete message: borrowed from the input when it came in one frame, owned when it
    /// was reassembled. Text is valid UTF-8.
    Message(MessageKind, Cow<'a, [u8]>),
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// A valid close frame: the peer's code (1005 when the payload was empty).
    Close(u16),
    /// The connection must be failed with this close code (RFC 6455 §7.1.7): nothing consumed,
    /// the state reset; the stream is not to be decoded further (the failing frame's payload
    /// may have been unmasked in place).
    Fail(u16),
}

/// Decodes the next client frame at the start of `buf`: header rules, unmasking (in place),
/// fragment sequencing and reassembly under `max_message_size` (whole messages, not only single
/// frames), UTF-8 of text messages checked as the bytes arrive (a message fails on the byte that
/// makes it invalid, even inside a frame whose payload has only partly arrived), control-frame
/// and close-payload rules.
///
/// Returns the bytes consumed and what they were. Pure: no I/O, no allocation unless a message
/// is fragmented. Size and sequencing violations are reported as soon as the header shows them,
/// before the payload arrives.
pub fn decode_next<'a>(buf: &'a mut [u8], state: &mut DecoderState, max_message_size: usize) -> (usize, Decoded<'a>) {
    let fail = |state: &mut DecoderState, code| {
        *state = DecoderState::default();
        (0, Decoded::Fail(code))
    };
    let info = match parse_header(buf, max_message_size) {
        Ok(Some(info)) => info,
        Ok(None) => return (0, Decoded::Incomplete),
        Err(code) => return fail(state, code),
    };
    match (info.opcode, state.reassembly.as_ref()) {
        (Opcode::Text | Opcode::Binary, Some(_)) => return fail(state, close::PROTOCOL), // new message inside a fragmented one
        (Opcode::Continuation, None) => return fail(state, close::PROTOCOL),             // continuation without a start
        // `data.len() <= max_message_size` holds between fragments, so this cannot underflow.
        (Opcode::Continuation, Some(open)) if info.payload_len > max_message_size - open.data.len() => {
            return fail(state, close::TOO_BIG);
        }
        _ => {}
    }
    let text = match info.opcode {
        Opcode::Text => true,
        Opcode::Continuation => state.reassembly.as_ref().is_some_and(|open| open.text),
        _ => false,
    };
    let end = info.header_len + info.payload_len; // both bounded: header <= 14, payload <= max
    let arrived_end = end.min(buf.len());
    let arrived = &mut buf[info.header_len..arrived_end];
    let partial = &mut state.partial;
    // The caller passes the same stream plus more bytes, so `unmasked <= arrived.len()`.
    let done = partial.unmasked.min(arrived.len());
    let fresh = &mut arrived[done..];
    apply_mask(fresh, info.mask, done);
    if text {
        let before = match info.opcode {
            Opcode::Continuation => state.reassembly.as_ref().map_or(Utf8Stream::default(), |open| open.utf8),
            _ => Utf8Stream::default(),
        };
        if !partial.utf8.get_or_insert(before).feed(fresh) {
            return fail(state, close::INVALID_PAYLOAD);
        }
    }
    partial.unmasked = arrived.len();
    if buf.len() < end {
        return (0, Decoded::Incomplete);
    }
    let utf8 = std::mem::take(&mut state.partial).utf8.unwrap_or_default();
    let payload: &'a [u8] = &buf[info.header_len..end];
    let decoded = match info.opcode {
        Opcode::Text | Opcode::Binary if info.fin => {
            if text && !utf8.is_complete() {
                return fail(state, close::INVALID_PAYLOAD);
            }
            Decoded::Message(kind(text), Cow::Borrowed(payload))
        }
        Opcode::Text | Opcode::Binary => {
            state.reassembly = Some(Reassembly { text, data: payload.to_vec(), utf8 });
            Decoded::Fragment
        }
        Opcode::Continuation => {
            let Some(open) = state.reassembly.as_mut() else { return fail(state, close::PROTOCOL) };
            grow_within(&mut open.data, payload.len(), max_message_size);
            open.data.extend_from_slice(payload);
            open.utf8 = utf8;
            if info.fin && text && !utf8.is_complete() {
                return fail(state, close::INVALID_PAYLOAD);
            }
            match state.reassembly.take() {
                Some(done) if info.fin => Decoded::Message(kind(done.text), Cow::Owned(done.data)),
                still_open => {
                    state.reassembly = still_open;
                    Decoded::Fragment
                }
            }
        }
        Opcode::Ping => Decoded::Ping(payload),
        Opcode::Pong => Decoded::Pong(payload),
        Opcode::Close => match parse_close_payload(payload) {
            Ok(code) => Decoded::Close(code),
            Err(code) => return fail(state, code),
        },
    };
    (end, decoded)
}

/// Makes room for `more` bytes, doubling as usual but never past `limit` (the message-size cap):
/// a reassembly near the cap would otherwise hold up to twice the cap.
fn grow_within(data: &mut Vec<u8>, more: usize, limit: usize) {
    let needed = data.len() + more;
    if needed > data.capacity() {
        let target = data.capacity().saturating_mul(2).max(needed).min(limit.max(needed));
        data.reserve_exact(target - data.len());
    }
}

fn kind(text: bool) -> MessageKind {
    if text {
        MessageKind::Text
    } else {
        MessageKind::Binary
    }
}
