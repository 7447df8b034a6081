//! Arbitrary bytes as a stream of client frames, decoded the way the connection's Open state does:
//! header, bounds, unmask, next frame. Checks the engine's header parser against an independent
//! RFC 6455 §5.2 reading, and the unmasking against a byte-at-a-time XOR.
//!
//! Input: byte 0 picks the message size limit, byte 1 a split point for the chunked unmask, the
//! rest is the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wspush::internals::{apply_mask, parse_frame_header};

/// Limits around the length-encoding boundaries (125/126, 65535/65536) and the extremes.
const LIMITS: [usize; 8] = [0, 1, 125, 126, 65_535, 65_536, 64 * 1024 * 1024, usize::MAX];

/// RFC 6455 §5.2 for a client frame: `Some((header_len, payload_len))` for a complete, acceptable
/// header; `None` when incomplete or when the connection must be failed.
fn reference_header(buf: &[u8], max_payload: usize) -> Option<(usize, usize)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let fin = b0 & 0x80 != 0;
    let rsv = b0 & 0x70;
    let opcode = b0 & 0x0f;
    let masked = b1 & 0x80 != 0;
    let (len_bytes, mut payload_len) = match b1 & 0x7f {
        126 => (2, 0u64),
        127 => (8, 0u64),
        short => (0, u64::from(short)),
    };
    let header_len = 2 + len_bytes + 4;
    if buf.len() < header_len {
        return None;
    }
    for &byte in &buf[2..2 + len_bytes] {
        payload_len = payload_len << 8 | u64::from(byte);
    }
    let is_control = opcode & 0x08 != 0;
    let acceptable = rsv == 0
        && masked
        && matches!(opcode, 0x0 | 0x1 | 0x2 | 0x8 | 0x9 | 0xA)
        && (!is_control || (fin && payload_len <= 125))
        && payload_len >> 63 == 0
        && payload_len <= max_payload as u64;
    acceptable.then_some((header_len, payload_len as usize))
}

fuzz_target!(|data: &[u8]| {
    let [limit_pick, split_pick, stream @ ..] = data else { return };
    let max_payload = LIMITS[usize::from(*limit_pick) % LIMITS.len()];
    let mut stream = stream.to_vec();
    let mut pos = 0;
    while pos < stream.len() {
        let parsed = parse_frame_header(&stream[pos..], max_payload);
        assert_eq!(parsed, reference_header(&stream[pos..], max_payload), "header at offset {pos}");
        let Some((header_len, payload_len)) = parsed else { break };
        assert!((2..=14).contains(&header_len), "header_len {header_len}");
        assert!(payload_len <= max_payload, "{payload_len} bytes passed the {max_payload} limit");
        let Some(frame_len) = header_len.checked_add(payload_len) else { panic!("frame length overflows") };
        // As the connection does: wait for the whole frame (here: the stream ends).
        let Some(end) = pos.checked_add(frame_len).filter(|&end| end <= stream.len()) else { break };
        // A header that parses is complete: any shorter prefix of it must ask for more bytes.
        assert_eq!(parse_frame_header(&stream[pos..pos + header_len - 1], max_payload), None);

        let mask: [u8; 4] = stream[pos + header_len - 4..pos + header_len].try_into().expect("4 bytes");
        let payload = &mut stream[pos + header_len..end];
        let original = payload.to_vec();
        let expected: Vec<u8> = original.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();

        apply_mask(payload, mask, 0);
        assert_eq!(payload, &expected[..], "unmask in one piece");

        // Unmasking in two pieces (as data arriving in two reads would be) gives the same bytes.
        let mut pieces = original.clone();
        let split = if pieces.is_empty() { 0 } else { usize::from(*split_pick) % (pieces.len() + 1) };
        let (head, tail) = pieces.split_at_mut(split);
        apply_mask(head, mask, 0);
        apply_mask(tail, mask, split);
        assert_eq!(pieces, expected, "unmask split at {split}");

        // Masking is an involution.
        apply_mask(&mut pieces, mask, 0);
        assert_eq!(pieces, original, "mask twice");

        pos = end;
    }
});
