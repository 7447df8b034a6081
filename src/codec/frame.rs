//! Server frames (encoded once, shared by every connection they go to; control frames on the
//! stack), client frame headers (tungstenite's `FrameHeader`), masking and close payloads.

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
    pub const SERVICE_RESTART: u16 = 1012;
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
    encode_with(opcode, payload.len(), |out| out.copy_from_slice(payload))
}

/// Frames a payload of `payload_len` bytes that `fill` writes in place: one allocation, for a
/// payload made on the way (a `wspush.v1` JSON message).
pub(crate) fn encode_with(opcode: Opcode, payload_len: usize, fill: impl FnOnce(&mut [u8])) -> Frame {
    let mut header = [0u8; MAX_SERVER_HEADER];
    let header_len = write_header(opcode, payload_len, &mut header);
    // One allocation for the shared frame (Arc::from(Vec) would allocate and copy twice).
    // SAFETY: all-zero bytes are a valid `u8`, so the zeroed slice is initialized.
    let mut frame: Arc<[u8]> = unsafe { Arc::new_zeroed_slice(header_len + payload_len).assume_init() };
    if let Some(bytes) = Arc::get_mut(&mut frame) {
        bytes[..header_len].copy_from_slice(&header[..header_len]);
        fill(&mut bytes[header_len..]);
    }
    frame
}

/// What a data frame made by [`encode`] carries: its kind and its payload.
pub(crate) fn data_of(frame: &[u8]) -> (MessageKind, &[u8]) {
    let kind = if frame[0] & 0x0f == 2 { MessageKind::Binary } else { MessageKind::Text };
    let header_len = match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    (kind, &frame[header_len..])
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
