//! A client byte stream fed to the engine's decoder (`internals::decode_next`: frame rules,
//! unmasking, fragment reassembly under the message-size cap, incremental UTF-8, control and close
//! rules) the way the connection feeds it: bytes kept across reads, decoded frame by frame.
//!
//! Checks, for every input:
//! - the events equal those of an independent RFC 6455 reading written here (`model`):
//!   a reassembled message is the concatenation of its fragments, text is delivered iff it is
//!   valid UTF-8 (checked by this file's own RFC 3629 table, and again by `std`), failures carry
//!   1002 / 1007 / 1009 where the RFC puts them, and at the end a message is open iff the model
//!   has one open;
//! - chunking invariance: the same events whether the stream arrives in one piece, in the
//!   fuzzer's chunk sizes, or one byte at a time;
//! - `consumed` never exceeds the input, is 0 exactly for Incomplete/Fail, and Incomplete leaves
//!   the header untouched (the bytes are decoded again once more arrive, the state remembering
//!   how much payload is already unmasked and checked; a Fail ends the stream);
//! - text fails on invalid UTF-8 as soon as it arrives, also inside a frame not complete yet;
//! - no panic, no overflow (the fuzz build has overflow checks on).
//!
//! Input: byte 0 picks the message size limit; byte 1's low nibble is the number of chunk-size
//! bytes that follow (byte `b` = a chunk of `b + 1` bytes, used in turn); the rest is the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wspush::internals::{decode_next, Decoded, DecoderState};
use wspush::MessageKind;

/// Small limits (reached by inputs of a few KiB), the length-encoding boundaries, the extremes.
const LIMITS: [usize; 16] = [0, 1, 2, 3, 5, 7, 16, 64, 125, 126, 300, 1024, 65_535, 65_536, 1 << 40, usize::MAX];

#[derive(Debug, PartialEq, Eq)]
enum Event {
    Fragment,
    Message { text: bool, payload: Vec<u8> },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(u16),
    Fail(u16),
}

impl Event {
    /// Close and Fail end the decoding (the connection moves on to closing).
    fn ends_stream(&self) -> bool {
        matches!(self, Event::Close(_) | Event::Fail(_))
    }
}

/// What decoding a stream produced: the events, and whether a fragmented message is still open.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<Event>,
    message_open: bool,
}

// ------------------------------------------------------------------------------ the engine

/// Feeds `stream` to the engine's decoder in chunks of the given sizes (cycled; the last chunk
/// may be shorter), keeping unconsumed bytes between chunks as the connection does.
fn run_engine(stream: &[u8], max: usize, chunk_sizes: &[usize]) -> Outcome {
    let mut pending: Vec<u8> = Vec::new();
    let mut state = DecoderState::default();
    let mut events = Vec::new();
    let mut rest = stream;
    for &size in chunk_sizes.iter().cycle() {
        let take = size.max(1).min(rest.len());
        pending.extend_from_slice(&rest[..take]);
        rest = &rest[take..];
        let mut pos = 0;
        loop {
            let available = pending.len() - pos;
            // The header and the start of the payload: enough to see an unmask done too early
            // (copying everything on every call would make one-byte feeding quadratic).
            let mut before = [0u8; 64];
            let watched = available.min(before.len());
            before[..watched].copy_from_slice(&pending[pos..pos + watched]);
            let (used, decoded) = decode_next(&mut pending[pos..], &mut state, max);
            assert!(used <= available, "consumed {used} of {available} bytes");
            let event = match decoded {
                Decoded::Incomplete => None,
                Decoded::Fragment => Some(Event::Fragment),
                Decoded::Message(kind, payload) => {
                    let text = kind == MessageKind::Text;
                    if text {
                        assert!(std::str::from_utf8(&payload).is_ok(), "text message with invalid UTF-8 delivered");
                    }
                    assert!(payload.len() <= max, "{}-byte message passed the {max}-byte limit", payload.len());
                    Some(Event::Message { text, payload: payload.into_owned() })
                }
                Decoded::Ping(payload) => Some(Event::Ping(payload.to_vec())),
                Decoded::Pong(payload) => Some(Event::Pong(payload.to_vec())),
                Decoded::Close(code) => Some(Event::Close(code)),
                Decoded::Fail(code) => Some(Event::Fail(code)),
            };
            match &event {
                None => {
                    assert_eq!(used, 0, "Incomplete consumed bytes");
                    // The payload that has arrived may be unmasked in place (the state remembers
                    // how far); the header is left as it came.
                    let header = watched.min(2);
                    assert_eq!(pending[pos..pos + header], before[..header], "Incomplete changed the header");
                }
                Some(Event::Fail(_)) => assert_eq!(used, 0, "Fail consumed bytes"),
                Some(_) => assert!(used > 0, "an event without consuming a byte"),
            }
            pos += used;
            let Some(event) = event else { break };
            let ends = event.ends_stream();
            events.push(event);
            if ends {
                return Outcome { events, message_open: false };
            }
        }
        pending.drain(..pos);
        if rest.is_empty() {
            break;
        }
    }
    Outcome { events, message_open: state.message_open() }
}

// ------------------------------------------------------------------------------ the model

/// RFC 3629 §4: is `bytes` valid UTF-8 (`complete`), or a prefix of valid UTF-8 (`!complete`)?
fn utf8_ok(bytes: &[u8], complete: bool) -> bool {
    let mut i = 0;
    while i < bytes.len() {
        // Sequence length and the allowed range of the second byte (the table excludes
        // overlong forms, surrogates and code points above U+10FFFF).
        let (len, second) = match bytes[i] {
            0x00..=0x7F => (1, 0x80..=0xBF),
            0xC2..=0xDF => (2, 0x80..=0xBF),
            0xE0 => (3, 0xA0..=0xBF),
            0xE1..=0xEC | 0xEE..=0xEF => (3, 0x80..=0xBF),
            0xED => (3, 0x80..=0x9F),
            0xF0 => (4, 0x90..=0xBF),
            0xF1..=0xF3 => (4, 0x80..=0xBF),
            0xF4 => (4, 0x80..=0x8F),
            _ => return false,
        };
        for k in 1..len {
            let Some(&byte) = bytes.get(i + k) else { return !complete };
            let allowed = if k == 1 { second.clone() } else { 0x80..=0xBF };
            if !allowed.contains(&byte) {
                return false;
            }
        }
        i += len;
    }
    true
}

/// RFC 6455 §7.4.1 plus the IANA registry: codes a client may put in a close frame.
fn close_code_allowed(code: u16) -> bool {
    (1000..=1003).contains(&code) || (1007..=1014).contains(&code) || (3000..=4999).contains(&code)
}

/// An independent reading of RFC 6455 for a server receiving `stream`, deciding each frame on its
/// complete header (2 bytes, the extended length, the mask key when the mask bit is set): RSV
/// (§5.2, no extensions), opcode (§5.2), masking (§5.1), control-frame rules (§5.5, the 7-bit
/// length must say <= 125), the 64-bit MSB (§5.2), the size limit (§10.4, 1009), fragment sequencing (§5.4)
/// and the message-size limit over the reassembled message; the payload decides UTF-8 (§8.1,
/// 1007, as soon as a fragment makes the message invalid) and the close payload (§5.5.1, §7.4).
fn model(stream: &[u8], max: usize) -> Outcome {
    let mut events = Vec::new();
    let mut open: Option<(bool, Vec<u8>)> = None; // (text, bytes so far)
    let mut at = 0usize;
    macro_rules! fail {
        ($code:expr) => {{
            events.push(Event::Fail($code));
            return Outcome { events, message_open: false };
        }};
    }
    loop {
        let left = &stream[at..];
        if left.len() < 2 {
            break;
        }
        let fin = left[0] >> 7 == 1;
        let rsv = (left[0] >> 4) & 0b111;
        let opcode = left[0] & 0x0F;
        let masked = left[1] >> 7 == 1;
        let len7 = left[1] & 0x7F;
        let extended = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        if left.len() < 2 + extended + if masked { 4 } else { 0 } {
            break;
        }
        if rsv != 0 || ![0x0, 0x1, 0x2, 0x8, 0x9, 0xA].contains(&opcode) || !masked {
            fail!(1002);
        }
        let control = opcode >= 0x8;
        if control && (!fin || len7 > 125) {
            fail!(1002);
        }
        let length: u128 = if extended == 0 {
            u128::from(len7)
        } else {
            left[2..2 + extended].iter().fold(0u128, |acc, &b| acc * 256 + u128::from(b))
        };
        if length >= 1 << 63 {
            fail!(1002);
        }
        if length > max as u128 {
            fail!(1009);
        }
        let header = 2 + extended + 4;
        if left.len() < header {
            break;
        }
        match (opcode, &open) {
            (0x1 | 0x2, Some(_)) | (0x0, None) => fail!(1002),
            (0x0, Some((_, so_far))) if so_far.len() as u128 + length > max as u128 => fail!(1009),
            _ => {}
        }
        let length = length as usize;
        if left.len() < header + length {
            // A text frame whose payload has only partly arrived fails as soon as what has
            // arrived cannot begin valid UTF-8 (with the message so far).
            let key = &left[header - 4..header];
            let arrived = left[header..].iter().enumerate().map(|(i, b)| b ^ key[i % 4]);
            let so_far = match (opcode, &open) {
                (0x1, _) => Some(arrived.collect::<Vec<u8>>()),
                (0x0, Some((true, so_far))) => Some(so_far.iter().copied().chain(arrived).collect()),
                _ => None,
            };
            if so_far.is_some_and(|bytes| !utf8_ok(&bytes, false)) {
                fail!(1007);
            }
            break;
        }
        let key = &left[header - 4..header];
        let payload: Vec<u8> = left[header..header + length].iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
        at += header + length;
        match opcode {
            0x1 | 0x2 => {
                let text = opcode == 0x1;
                if text && !utf8_ok(&payload, fin) {
                    fail!(1007);
                }
                if fin {
                    events.push(Event::Message { text, payload });
                } else {
                    open = Some((text, payload));
                    events.push(Event::Fragment);
                }
            }
            0x0 => {
                let Some((text, mut so_far)) = open.take() else { unreachable!("checked above") };
                so_far.extend_from_slice(&payload);
                if text && !utf8_ok(&so_far, fin) {
                    fail!(1007);
                }
                if fin {
                    events.push(Event::Message { text, payload: so_far });
                } else {
                    open = Some((text, so_far));
                    events.push(Event::Fragment);
                }
            }
            0x9 => events.push(Event::Ping(payload)),
            0xA => events.push(Event::Pong(payload)),
            _ => {
                // 0x8, close: no body is 1005 (nothing to report); one byte cannot hold a code.
                if payload.is_empty() {
                    events.push(Event::Close(1005));
                } else if payload.len() == 1 {
                    fail!(1002);
                } else {
                    let code = u16::from(payload[0]) << 8 | u16::from(payload[1]);
                    if !close_code_allowed(code) {
                        fail!(1002);
                    }
                    if !utf8_ok(&payload[2..], true) {
                        fail!(1007);
                    }
                    events.push(Event::Close(code));
                }
                return Outcome { events, message_open: false };
            }
        }
    }
    Outcome { events, message_open: open.is_some() }
}

fuzz_target!(|data: &[u8]| {
    let [limit_pick, chunking, rest @ ..] = data else { return };
    let max = LIMITS[usize::from(*limit_pick) % LIMITS.len()];
    let size_count = usize::from(chunking & 0x0F).min(rest.len());
    let (sizes, stream) = rest.split_at(size_count);
    let chunk_sizes: Vec<usize> = sizes.iter().map(|&b| usize::from(b) + 1).collect();

    let expected = model(stream, max);
    let whole = run_engine(stream, max, &[usize::MAX]);
    assert_eq!(whole, expected, "engine (one piece) vs the RFC model, limit {max}");
    if !chunk_sizes.is_empty() {
        assert_eq!(run_engine(stream, max, &chunk_sizes), expected, "chunked {chunk_sizes:?}, limit {max}");
    }
    assert_eq!(run_engine(stream, max, &[1]), expected, "one byte at a time, limit {max}");
});
