//! RFC 6455 frame codec, separate from I/O: header parse/format (tungstenite's `FrameHeader`),
//! masking, close-frame payloads, and [`decode_next`]: the whole client-stream decoder (frame rules,
//! reassembly, UTF-8) that the connection runs and the `frame_decoder` fuzz target checks.

use std::borrow::Cow;
use std::io::Cursor;
use std::sync::Arc;

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use crate::types::MessageKind;

/// Bytes of a fully framed server message, shared by every connection it goes to.
pub(crate) type Frame = Arc<[u8]>;

/// Longest close reason that fits a control frame (125 - 2 bytes of code).
pub(crate) const MAX_CLOSE_REASON: usize = 123;
/// Longest server-to-client header: 2 + 8 bytes of length (server frames are not masked).
const MAX_SERVER_HEADER: usize = 10;

/// Close codes the engine sends or reports.
pub(crate) mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const NO_STATUS: u16 = 1005;
    pub const ABNORMAL: u16 = 1006;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl From<MessageKind> for Opcode {
    fn from(kind: MessageKind) -> Self {
        match kind {
            MessageKind::Text => Opcode::Text,
            MessageKind::Binary => Opcode::Binary,
        }
    }
}

impl Opcode {
    fn to_tungstenite(self) -> OpCode {
        match self {
            Opcode::Continuation => OpCode::Data(Data::Continue),
            Opcode::Text => OpCode::Data(Data::Text),
            Opcode::Binary => OpCode::Data(Data::Binary),
            Opcode::Close => OpCode::Control(Control::Close),
            Opcode::Ping => OpCode::Control(Control::Ping),
            Opcode::Pong => OpCode::Control(Control::Pong),
        }
    }

    pub(crate) fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// A small server frame built on the stack (control frames: ≤ 125 bytes of payload).
pub(crate) struct ControlFrame {
    bytes: [u8; 2 + 125],
    len: usize,
}

impl ControlFrame {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

fn write_header(opcode: Opcode, payload_len: usize, out: &mut [u8; MAX_SERVER_HEADER]) -> usize {
    let header = FrameHeader { opcode: opcode.to_tungstenite(), ..FrameHeader::default() };
    let mut cursor = Cursor::new(&mut out[..]);
    // Formatting into a 10-byte buffer cannot fail: a server header is at most 10 bytes.
    let _ = header.format(payload_len as u64, &mut cursor);
    cursor.position() as usize
}

/// Frames `payload` once into a shareable buffer.
pub(crate) fn encode(opcode: Opcode, payload: &[u8]) -> Frame {
    let mut header = [0u8; MAX_SERVER_HEADER];
    let header_len = write_header(opcode, payload.len(), &mut header);
    // One allocation for the shared frame (Arc::from(Vec) would allocate and copy twice).
    // SAFETY: all-zero bytes are a valid `u8`, so the zeroed slice is initialized.
    let mut frame: Arc<[u8]> = unsafe { Arc::new_zeroed_slice(header_len + payload.len()).assume_init() };
    if let Some(bytes) = Arc::get_mut(&mut frame) {
        bytes[..header_len].copy_from_slice(&header[..header_len]);
        bytes[header_len..].copy_from_slice(payload);
    }
    frame
}

/// Builds a control frame (payload truncated to 125 bytes, which callers already guarantee).
pub(crate) fn control(opcode: Opcode, payload: &[u8]) -> ControlFrame {
    let payload = &payload[..payload.len().min(125)];
    let mut header = [0u8; MAX_SERVER_HEADER];
    let header_len = write_header(opcode, payload.len(), &mut header);
    let mut frame = ControlFrame { bytes: [0; 127], len: header_len + payload.len() };
    frame.bytes[..header_len].copy_from_slice(&header[..header_len]);
    frame.bytes[header_len..frame.len].copy_from_slice(payload);
    frame
}

/// A close frame with `code` and `reason` (reason cut to 123 bytes at a char boundary).
pub(crate) fn close_frame(code: u16, reason: &str) -> ControlFrame {
    let mut cut = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = [0u8; 125];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + cut].copy_from_slice(&reason.as_bytes()[..cut]);
    control(Opcode::Close, &payload[..2 + cut])
}

/// A parsed client frame header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameInfo {
    pub fin: bool,
    pub opcode: Opcode,
    pub mask: [u8; 4],
    pub header_len: usize,
    pub payload_len: usize,
}

/// Parses one client frame header at the start of `buf`. `Ok(None)`: need more bytes.
/// `Err(code)`: the connection must be failed with that close code. Decided on the header alone
/// (tungstenite's `FrameHeader`), never waiting for a payload.
pub(crate) fn parse_header(buf: &[u8], max_payload: usize) -> Result<Option<FrameInfo>, u16> {
    let mut cursor = Cursor::new(buf);
    let (header, length) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        Err(_) => return Err(close::PROTOCOL), // reserved opcode
    };
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(close::PROTOCOL); // no extension was negotiated
    }
    let Some(mask) = header.mask else { return Err(close::PROTOCOL) }; // RFC 6455 5.1
    let opcode = match header.opcode {
        OpCode::Data(Data::Continue) => Opcode::Continuation,
        OpCode::Data(Data::Text) => Opcode::Text,
        OpCode::Data(Data::Binary) => Opcode::Binary,
        OpCode::Control(Control::Close) => Opcode::Close,
        OpCode::Control(Control::Ping) => Opcode::Ping,
        OpCode::Control(Control::Pong) => Opcode::Pong,
        _ => return Err(close::PROTOCOL),
    };
    // RFC 6455 5.5: control frames are final and <= 125 bytes, said in the 7-bit length field
    // (buf holds at least the 2 bytes just parsed).
    if opcode.is_control() && (!header.is_final || buf[1] & 0x7f > 125) {
        return Err(close::PROTOCOL);
    }
    if length >> 63 != 0 {
        return Err(close::PROTOCOL); // RFC 6455 5.2: the most significant bit MUST be 0
    }
    if length > max_payload as u64 {
        return Err(close::TOO_BIG);
    }
    // `length <= max_payload`, a usize: the cast is lossless.
    Ok(Some(FrameInfo {
        fin: header.is_final,
        opcode,
        mask,
        header_len: cursor.position() as usize,
        payload_len: length as usize,
    }))
}

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

/// Unmasks (or masks) `buf` in place; `offset` is the position of `buf[0]` within the payload.
pub(crate) fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut mask = mask;
    mask.rotate_left(offset % 4);
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

/// Close codes a peer may send and a host may use (RFC 6455 §7.4, IANA registry).
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Reads a client close payload: the code to report (1005 when empty) or the code to fail with.
pub(crate) fn parse_close_payload(payload: &[u8]) -> Result<u16, u16> {
    match payload {
        [] => Ok(close::NO_STATUS),
        [_] => Err(close::PROTOCOL),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                Err(close::PROTOCOL)
            } else if std::str::from_utf8(reason).is_err() {
                Err(close::INVALID_PAYLOAD)
            } else {
                Ok(code)
            }
        }
    }
}

/// Incremental UTF-8 validation of a text message arriving in pieces (fragments, or a frame's
/// payload as it trickles in): fails on the first byte that cannot belong to valid UTF-8, carries
/// an incomplete code point (at most 3 bytes) over to the next piece. Linear in the bytes fed.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Utf8Stream {
    carry: [u8; 4],
    carry_len: u8,
}

impl Utf8Stream {
    /// Feeds the next bytes of the message; false as soon as it cannot be valid.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> bool {
        if self.carry_len > 0 {
            let have = usize::from(self.carry_len);
            let width = match self.carry[0] {
                0xf0..=0xf4 => 4,
                0xe0..=0xef => 3,
                _ => 2,
            };
            let take = (width - have).min(bytes.len());
            let mut point = self.carry;
            point[have..have + take].copy_from_slice(&bytes[..take]);
            match std::str::from_utf8(&point[..have + take]) {
                Ok(_) => self.carry_len = 0,
                // Still short of its last byte(s), and `bytes` is used up.
                Err(e) if e.error_len().is_none() => {
                    self.carry = point;
                    self.carry_len = (have + take) as u8;
                    return true;
                }
                Err(_) => return false,
            }
            bytes = &bytes[take..];
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => true,
            Err(e) if e.error_len().is_none() => {
                let tail = &bytes[e.valid_up_to()..]; // an incomplete code point: 1 to 3 bytes
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len() as u8;
                true
            }
            Err(_) => false,
        }
    }

    /// No code point is left half-finished (a message may end here).
    pub(crate) fn is_complete(&self) -> bool {
        self.carry_len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        let mut body = payload.to_vec();
        apply_mask(&mut body, mask, 0);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn parses_every_length_encoding() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let frame = client_frame(0x82, &vec![7u8; len]);
            let info = parse_header(&frame, 1 << 20).unwrap().unwrap();
            assert_eq!(info.payload_len, len);
            assert_eq!(info.header_len + len, frame.len());
            assert!(parse_header(&frame[..info.header_len - 1], 1 << 20).unwrap().is_none());
        }
    }

    #[test]
    fn rejects_protocol_violations() {
        assert_eq!(parse_header(&[0x81, 0x00], 100).unwrap_err(), close::PROTOCOL, "unmasked");
        assert_eq!(parse_header(&client_frame(0xC1, b"x"), 100).unwrap_err(), close::PROTOCOL, "rsv1");
        assert_eq!(parse_header(&client_frame(0x83, b""), 100).unwrap_err(), close::PROTOCOL, "opcode 3");
        assert_eq!(parse_header(&client_frame(0x09, b""), 100).unwrap_err(), close::PROTOCOL, "fragmented ping");
        assert_eq!(parse_header(&client_frame(0x89, &[0; 126]), 1000).unwrap_err(), close::PROTOCOL);
        assert_eq!(parse_header(&client_frame(0x82, &[0; 101]), 100).unwrap_err(), close::TOO_BIG);
    }

    #[test]
    fn header_violations_fail_on_the_header_alone() {
        let header = |first: u8| [first, 0x80 | 3, 1, 2, 3, 4];
        assert_eq!(parse_header(&header(0x83), 100).unwrap_err(), close::PROTOCOL, "reserved opcode");
        assert_eq!(parse_header(&header(0x09), 100).unwrap_err(), close::PROTOCOL, "fragmented ping");
        assert!(parse_header(&[0x82, 0xff], 100).unwrap().is_none(), "needs the length first");
    }

    /// Decodes `stream` frame by frame as the connection does, stopping at Incomplete/Fail.
    fn decode_all(stream: &[u8], max: usize) -> Vec<String> {
        let mut buf = stream.to_vec();
        let mut state = DecoderState::default();
        let mut pos = 0;
        let mut events = Vec::new();
        loop {
            let (used, decoded) = decode_next(&mut buf[pos..], &mut state, max);
            pos += used;
            let event = match decoded {
                Decoded::Incomplete => return events,
                Decoded::Fragment => "fragment".to_string(),
                Decoded::Message(kind, payload) => format!("{kind:?} {}", String::from_utf8_lossy(&payload)),
                Decoded::Ping(payload) => format!("ping {}", String::from_utf8_lossy(payload)),
                Decoded::Pong(payload) => format!("pong {}", String::from_utf8_lossy(payload)),
                Decoded::Close(code) => format!("close {code}"),
                Decoded::Fail(code) => format!("fail {code}"),
            };
            let done = event.starts_with("fail") || event.starts_with("close");
            events.push(event);
            if done {
                return events;
            }
        }
    }

    #[test]
    fn reassembles_fragments_around_a_ping_with_a_split_code_point() {
        let euro = "€uro".as_bytes();
        let stream = [
            client_frame(0x01, &euro[..2]),
            client_frame(0x89, b"p"),
            client_frame(0x00, &euro[2..4]),
            client_frame(0x80, &euro[4..]),
            client_frame(0x88, &[0x03, 0xE8]),
        ]
        .concat();
        assert_eq!(decode_all(&stream, 100), ["fragment", "ping p", "fragment", "Text €uro", "close 1000"]);
    }

    #[test]
    fn a_text_message_fails_on_the_fragment_that_makes_it_invalid() {
        // The final fragment never comes: the first one's invalid byte is enough.
        assert_eq!(decode_all(&client_frame(0x01, b"ok\xff"), 100), ["fail 1007"]);
        let second_bad = [client_frame(0x01, b"\xe2\x82"), client_frame(0x00, b"\x41")].concat();
        assert_eq!(decode_all(&second_bad, 100), ["fragment", "fail 1007"]);
        let cut_at_end = [client_frame(0x01, b"a"), client_frame(0x80, b"\xe2\x82")].concat();
        assert_eq!(decode_all(&cut_at_end, 100), ["fragment", "fail 1007"]);
        let binary = [client_frame(0x02, b"\xff"), client_frame(0x80, b"\xfe")].concat();
        assert_eq!(decode_all(&binary, 100), ["fragment", "Binary \u{fffd}\u{fffd}"]);
    }

    #[test]
    fn sequencing_violations_are_1002() {
        assert_eq!(decode_all(&client_frame(0x80, b"x"), 100), ["fail 1002"], "continuation without a start");
        let nested = [client_frame(0x01, b"a"), client_frame(0x81, b"b")].concat();
        assert_eq!(decode_all(&nested, 100), ["fragment", "fail 1002"], "new message inside a fragmented one");
    }

    #[test]
    fn the_message_size_cap_covers_reassembly_and_fires_on_the_header() {
        let at_cap = [client_frame(0x02, &[1; 6]), client_frame(0x80, &[2; 4])].concat();
        assert_eq!(decode_all(&at_cap, 10).len(), 2);
        // Only the header of the fragment that would pass the cap: no need to wait for its payload.
        let over = [client_frame(0x02, &[1; 6]), client_frame(0x80, &[2; 5])[..6].to_vec()].concat();
        assert_eq!(decode_all(&over, 10), ["fragment", "fail 1009"]);
    }

    #[test]
    fn a_frame_fed_byte_by_byte_decodes_like_the_whole_frame() {
        for first in [0x81u8, 0x82, 0x01] {
            let frame = client_frame(first, "a€😀z".repeat(20).as_bytes());
            let mut buf = Vec::new();
            let mut state = DecoderState::default();
            for (i, byte) in frame.iter().enumerate() {
                buf.push(*byte);
                let (used, decoded) = decode_next(&mut buf, &mut state, 1000);
                if i + 1 < frame.len() {
                    assert_eq!((used, decoded), (0, Decoded::Incomplete), "byte {i}");
                    assert!(buf.len() < 2 || buf[..2] == frame[..2], "the header is left as it came");
                } else {
                    assert_eq!(used, frame.len());
                    match decoded {
                        Decoded::Message(_, payload) => assert_eq!(&payload[..], "a€😀z".repeat(20).as_bytes()),
                        Decoded::Fragment => assert!(state.message_open()),
                        other => panic!("{other:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn invalid_utf8_fails_before_its_frame_has_arrived() {
        let frame = client_frame(0x81, &[b"valid start ".as_slice(), b"\xff", &[b'x'; 500]].concat());
        let mut state = DecoderState::default();
        let mut buf = frame[..21].to_vec(); // 8 header bytes, "valid start " and the bad byte
        assert_eq!(decode_next(&mut buf, &mut state, 1000), (0, Decoded::Fail(close::INVALID_PAYLOAD)));
        // Inside a fragmented text message too, and with a code point split across the frames.
        let first = client_frame(0x01, "ok\u{20ac}".as_bytes().split_at(4).0);
        let mut buf = [first.clone(), client_frame(0x80, &[0x82, b'!', 0xc0, 0x80, b'y', b'y'])].concat();
        let mut state = DecoderState::default();
        let (used, decoded) = decode_next(&mut buf, &mut state, 1000);
        assert_eq!((used, decoded), (first.len(), Decoded::Fragment));
        let partial = &mut buf[first.len()..first.len() + 6 + 3];
        assert_eq!(decode_next(partial, &mut state, 1000), (0, Decoded::Fail(close::INVALID_PAYLOAD)));
        assert!(state.is_idle(), "a failure resets the state");
    }

    #[test]
    fn a_message_in_many_one_byte_fragments_is_checked_correctly() {
        let text = "😀é€a".repeat(2000);
        let bytes = text.as_bytes();
        let mut stream = client_frame(0x01, &bytes[..1]);
        for (i, byte) in bytes.iter().enumerate().skip(1) {
            stream.extend(client_frame(if i + 1 == bytes.len() { 0x80 } else { 0x00 }, &[*byte]));
        }
        let events = decode_all(&stream, bytes.len());
        assert_eq!(events.len(), bytes.len());
        assert_eq!(events.last().unwrap(), &format!("Text {text}"));
    }

    #[test]
    fn mask_is_an_involution_at_any_offset() {
        let data: Vec<u8> = (0..37).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, [9, 8, 7, 6], 0);
        let mut split = data.clone();
        let (a, b) = split.split_at_mut(5);
        apply_mask(a, [9, 8, 7, 6], 0);
        apply_mask(b, [9, 8, 7, 6], 5);
        assert_eq!(whole, split);
        apply_mask(&mut whole, [9, 8, 7, 6], 0);
        assert_eq!(whole, data);
    }

    #[test]
    fn encodes_server_frames() {
        assert_eq!(&encode(Opcode::Text, b"hi")[..], &[0x81, 2, b'h', b'i']);
        let big = encode(Opcode::Binary, &[0; 300]);
        assert_eq!(&big[..4], &[0x82, 126, 1, 44]);
        assert_eq!(close_frame(1001, "bye").as_bytes(), &[0x88, 5, 0x03, 0xE9, b'b', b'y', b'e']);
    }

    #[test]
    fn close_payloads() {
        assert_eq!(parse_close_payload(&[]), Ok(close::NO_STATUS));
        assert_eq!(parse_close_payload(&[3]), Err(close::PROTOCOL));
        assert_eq!(parse_close_payload(&[0x03, 0xE8, b'o', b'k']), Ok(1000));
        assert_eq!(parse_close_payload(&[0x03, 0xED]), Err(close::PROTOCOL), "1005 may not be sent");
        assert_eq!(parse_close_payload(&[0x03, 0xE8, 0xff]), Err(close::INVALID_PAYLOAD));
    }

    #[test]
    fn utf8_split_anywhere() {
        let text = "aé€😀".as_bytes();
        for cut in 0..=text.len() {
            for second in cut..=text.len() {
                let mut check = Utf8Stream::default();
                assert!(check.feed(&text[..cut]), "cut {cut}");
                assert!(check.feed(&text[cut..second]));
                assert!(check.feed(&text[second..]));
                assert!(check.is_complete());
            }
        }
        let mut check = Utf8Stream::default();
        assert!(!check.feed(&[b'a', 0xff]), "fails fast on an invalid byte");
        let mut check = Utf8Stream::default();
        assert!(check.feed(&[0xe2, 0x82]));
        assert!(!check.is_complete(), "incomplete at the end");
        assert!(!check.feed(&[0x41]), "a code point cut short by an ASCII byte");
        let mut check = Utf8Stream::default();
        assert!(check.feed(&[0xf0]));
        assert!(!check.feed(&[0x80]), "overlong 4-byte lead is refused at its second byte");
    }
}
