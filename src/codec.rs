//! RFC 6455 frame codec, separate from I/O: header parse/format (tungstenite's `FrameHeader`),
//! masking, close-frame payloads and the validation rules the connection state machine applies.

use std::io::Cursor;
use std::sync::Arc;

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use crate::handler::MessageKind;

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
/// `Err(code)`: the connection must be failed with that close code.
pub(crate) fn parse_header(buf: &[u8], max_payload: usize) -> Result<Option<FrameInfo>, u16> {
    let mut cursor = Cursor::new(buf);
    let (header, length) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        Err(_) => return Err(close::PROTOCOL), // reserved opcode
    };
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(close::PROTOCOL);
    }
    let Some(mask) = header.mask else { return Err(close::PROTOCOL) };
    let opcode = match header.opcode {
        OpCode::Data(Data::Continue) => Opcode::Continuation,
        OpCode::Data(Data::Text) => Opcode::Text,
        OpCode::Data(Data::Binary) => Opcode::Binary,
        OpCode::Control(Control::Close) => Opcode::Close,
        OpCode::Control(Control::Ping) => Opcode::Ping,
        OpCode::Control(Control::Pong) => Opcode::Pong,
        _ => return Err(close::PROTOCOL),
    };
    if opcode.is_control() && (!header.is_final || length > 125) {
        return Err(close::PROTOCOL);
    }
    if length >> 63 != 0 {
        return Err(close::PROTOCOL); // RFC 6455 5.2: the most significant bit MUST be 0
    }
    if length > max_payload as u64 {
        return Err(close::TOO_BIG);
    }
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

/// Incremental UTF-8 check for a text message arriving in fragments: fails on the first invalid
/// byte, tolerates a code point split across fragments.
#[derive(Default, Debug)]
pub(crate) struct Utf8Check {
    valid_up_to: usize,
}

impl Utf8Check {
    /// `message` is everything received so far; returns false as soon as it cannot be valid.
    pub(crate) fn feed(&mut self, message: &[u8], is_last: bool) -> bool {
        match std::str::from_utf8(&message[self.valid_up_to..]) {
            Ok(_) => {
                self.valid_up_to = message.len();
                true
            }
            Err(e) if e.error_len().is_none() && !is_last => {
                self.valid_up_to += e.valid_up_to();
                true
            }
            Err(_) => false,
        }
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
    fn utf8_split_across_fragments() {
        let text = "aé€😀".as_bytes();
        for cut in 0..text.len() {
            let mut check = Utf8Check::default();
            assert!(check.feed(&text[..cut], false), "cut {cut}");
            assert!(check.feed(text, true));
        }
        let mut check = Utf8Check::default();
        assert!(!check.feed(&[b'a', 0xff], false), "fails fast on an invalid byte");
        let mut check = Utf8Check::default();
        assert!(check.feed(&[0xe2, 0x82], false));
        assert!(!check.feed(&[0xe2, 0x82], true), "incomplete at the end");
    }
}
