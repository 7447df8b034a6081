//! RFC 6455 framing as the engine enforces it, driven by hand-made frames. Each violation must
//! produce a close frame with the right code, a clean TCP close, and the same code in on_close.

mod common;

use common::*;
use wspush::{Config, ConnId, MessageKind, Server};

/// A server with a small message limit and one upgraded raw client.
fn connected(cfg: Config) -> (Server, Events, Raw, ConnId) {
    let (server, mut events) = start(cfg);
    let raw = Raw::upgrade(server.local_addr(), "/ws?user=alice");
    let conn = events.opened(b"alice");
    (server, events, raw, conn)
}

fn small_limit() -> Config {
    let mut cfg = config();
    cfg.max_message_size = 1000;
    cfg
}

/// Sends `bytes`, expects the server to close with `code` and report `code` to on_close.
fn assert_fails_with(bytes: &[u8], code: u16) {
    let (server, mut events, mut raw, conn) = connected(small_limit());
    raw.send(bytes);
    raw.expect_close(code);
    drop(raw);
    assert_eq!(events.closed(conn), code);
    assert_eq!(server.stats().protocol_errors_total, 1);
    events.assert_none("on_message", std::time::Duration::ZERO, |e| matches!(e, Event::Message { .. }));
}

#[test]
fn unmasked_client_frame_is_1002() {
    assert_fails_with(&unmasked_frame(0x81, b"hello"), 1002);
}

#[test]
fn reserved_bits_are_1002() {
    for first in [0xC1u8, 0xA1, 0x91] {
        assert_fails_with(&frame(first, b"hello"), 1002);
    }
}

#[test]
fn reserved_opcodes_are_1002() {
    for opcode in [0x3u8, 0x7, 0xB, 0xF] {
        assert_fails_with(&frame(0x80 | opcode, b""), 1002);
    }
}

#[test]
fn ping_with_126_byte_payload_is_1002() {
    assert_fails_with(&frame(0x89, &[7; 126]), 1002);
}

#[test]
fn fragmented_ping_is_1002() {
    assert_fails_with(&frame(0x09, b"ping"), 1002);
}

#[test]
fn continuation_without_a_start_is_1002() {
    assert_fails_with(&frame(0x80, b"orphan"), 1002);
}

#[test]
fn new_message_inside_a_fragmented_one_is_1002() {
    let mut bytes = frame(0x01, b"start");
    bytes.extend(frame(0x81, b"interloper"));
    assert_fails_with(&bytes, 1002);
    let mut bytes = frame(0x02, b"start");
    bytes.extend(frame(0x02, b"another start"));
    assert_fails_with(&bytes, 1002);
}

#[test]
fn invalid_utf8_text_is_1007() {
    assert_fails_with(&frame(0x81, b"bad \xff byte"), 1007);
    assert_fails_with(&frame(0x81, b"\xed\xa0\x80"), 1007); // UTF-16 surrogate
}

#[test]
fn invalid_utf8_across_fragments_is_1007() {
    // "é" is C3 A9: the first fragment ends mid-character, the second does not complete it.
    let mut bytes = frame(0x01, b"abc\xc3");
    bytes.extend(frame(0x80, b"(def"));
    assert_fails_with(&bytes, 1007);
    // A truncated character at the very end of the message.
    let mut bytes = frame(0x01, b"abc");
    bytes.extend(frame(0x80, b"\xe2\x82"));
    assert_fails_with(&bytes, 1007);
}

#[test]
fn utf8_character_split_across_fragments_is_accepted() {
    let (_server, mut events, mut raw, conn) = connected(small_limit());
    let text = "né€😀".as_bytes();
    raw.send_frame(0x01, &text[..2]);
    raw.send_frame(0x00, &text[2..5]);
    raw.send_frame(0x00, &text[5..9]);
    raw.send_frame(0x80, &text[9..]);
    assert_eq!(events.message(conn), (MessageKind::Text, text.to_vec()));
}

#[test]
fn message_over_max_message_size_is_1009() {
    assert_fails_with(&frame(0x82, &[1; 1001]), 1009);
    // The limit counts the whole reassembled message.
    let mut bytes = frame(0x02, &[1; 600]);
    bytes.extend(frame(0x80, &[2; 401]));
    assert_fails_with(&bytes, 1009);
}

#[test]
fn violations_are_answered_on_the_header_without_waiting_for_the_payload() {
    // A fragment that would take the message past the limit: only its header is ever sent.
    let mut bytes = frame(0x02, &[1; 600]);
    bytes.extend(&frame(0x80, &[2; 401])[..8]);
    assert_fails_with(&bytes, 1009);
    // The header alone shows a reserved opcode / an unmasked frame of 256 bytes.
    assert_fails_with(&[0x83, 0x80, 1, 2, 3, 4], 1002);
    assert_fails_with(&[0x82, 0x7e, 0x01, 0x00], 1002);
    // A continuation with nothing to continue, announced as 900 bytes that never come.
    assert_fails_with(&frame(0x80, &[0; 900])[..8], 1002);
}

#[test]
fn message_at_max_message_size_is_delivered() {
    let (_server, mut events, mut raw, conn) = connected(small_limit());
    raw.send_frame(0x82, &[1; 1000]);
    assert_eq!(events.message(conn), (MessageKind::Binary, vec![1; 1000]));
    raw.send_frame(0x02, &[2; 500]);
    raw.send_frame(0x80, &[3; 500]);
    let mut expected = vec![2; 500];
    expected.extend([3; 500]);
    assert_eq!(events.message(conn), (MessageKind::Binary, expected));
}

#[test]
fn large_message_arriving_in_pieces_is_delivered() {
    let mut cfg = config();
    cfg.max_message_size = 1 << 20;
    let (_server, mut events, mut raw, conn) = connected(cfg);
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let bytes = frame(0x82, &payload);
    for chunk in bytes.chunks(7919) {
        raw.send(chunk);
    }
    assert_eq!(events.message(conn), (MessageKind::Binary, payload));
}

#[test]
fn ping_is_answered_with_a_pong_carrying_the_same_payload() {
    let (_server, _events, mut raw, _) = connected(small_limit());
    raw.send_frame(0x89, b"are you there?");
    let pong = raw.next_frame();
    assert_eq!((pong.fin, pong.rsv, pong.opcode), (true, 0, 0xA));
    assert_eq!(pong.payload, b"are you there?");
    raw.send_frame(0x89, &[9; 125]);
    assert_eq!(raw.next_frame().payload, vec![9; 125]);
    raw.send_frame(0x89, b"");
    assert_eq!(raw.next_frame(), RawFrame { fin: true, rsv: 0, opcode: 0xA, masked: false, payload: vec![] });
}

#[test]
fn unsolicited_pong_is_ignored() {
    let (server, mut events, mut raw, conn) = connected(small_limit());
    raw.send_frame(0x8A, b"heartbeat");
    raw.send_frame(0x81, b"after");
    assert_eq!(events.message(conn), (MessageKind::Text, b"after".to_vec()));
    assert_eq!(server.stats().protocol_errors_total, 0);
}

#[test]
fn fragmented_message_with_an_interleaved_ping_is_reassembled() {
    let (_server, mut events, mut raw, conn) = connected(small_limit());
    raw.send_frame(0x01, b"Hello, ");
    raw.send_frame(0x89, b"mid");
    raw.send_frame(0x00, b"fragmented ");
    raw.send_frame(0x80, b"world");
    let pong = raw.next_frame();
    assert_eq!((pong.opcode, pong.payload.as_slice()), (0xA, &b"mid"[..]));
    assert_eq!(events.message(conn), (MessageKind::Text, b"Hello, fragmented world".to_vec()));
}

#[test]
fn data_sent_in_one_burst_is_split_into_messages() {
    let (_server, mut events, mut raw, conn) = connected(small_limit());
    let mut bytes = Vec::new();
    for i in 0..50u8 {
        bytes.extend(frame(0x82, &[i; 17]));
    }
    raw.send(&bytes);
    for i in 0..50u8 {
        assert_eq!(events.message(conn), (MessageKind::Binary, vec![i; 17]));
    }
}

#[test]
fn close_1000_is_echoed_and_tcp_closed() {
    let (server, mut events, mut raw, conn) = connected(small_limit());
    raw.send_frame(0x88, &close_payload(1000, "done"));
    raw.expect_close(1000);
    drop(raw);
    assert_eq!(events.closed(conn), 1000);
    assert_eq!(server.stats().protocol_errors_total, 0);
}

#[test]
fn close_with_an_application_code_is_echoed_and_reported() {
    let (_server, mut events, mut raw, conn) = connected(small_limit());
    raw.send_frame(0x88, &close_payload(4321, ""));
    raw.expect_close(4321);
    drop(raw);
    assert_eq!(events.closed(conn), 4321);
}

#[test]
fn empty_close_is_answered_and_reported_as_1005() {
    let (_server, mut events, mut raw, conn) = connected(small_limit());
    raw.send_frame(0x88, b"");
    let reply = raw.next_frame();
    assert_eq!(reply.opcode, 8);
    assert_eq!(reply.close_code(), None, "an empty close is answered with an empty close");
    assert_eq!(raw.read_end(), End::Eof);
    drop(raw);
    assert_eq!(events.closed(conn), 1005);
}

#[test]
fn close_with_one_byte_payload_is_1002() {
    assert_fails_with(&frame(0x88, &[0x03]), 1002);
}

#[test]
fn close_with_a_forbidden_code_is_1002() {
    for code in [1005u16, 1006, 999, 0, 1004, 1015, 2999, 5000, 65535] {
        assert_fails_with(&frame(0x88, &close_payload(code, "")), 1002);
    }
}

#[test]
fn close_with_invalid_utf8_reason_is_1007() {
    let mut payload = close_payload(1000, "");
    payload.push(0xff);
    assert_fails_with(&frame(0x88, &payload), 1007);
}

#[test]
fn peer_vanishing_without_a_close_frame_is_1006() {
    let (_server, mut events, raw, conn) = connected(small_limit());
    drop(raw);
    assert_eq!(events.closed(conn), 1006);
}

#[test]
fn data_after_a_close_frame_is_ignored() {
    let (_server, mut events, mut raw, conn) = connected(small_limit());
    let mut bytes = frame(0x88, &close_payload(1000, ""));
    bytes.extend(frame(0x81, b"too late"));
    raw.send(&bytes);
    raw.expect_close(1000);
    drop(raw);
    assert_eq!(events.closed(conn), 1000);
    events.assert_none("on_message", std::time::Duration::ZERO, |e| matches!(e, Event::Message { .. }));
}

#[test]
fn server_frames_are_unmasked_and_well_formed() {
    let mut cfg = config();
    cfg.max_queue_bytes = 1 << 20;
    let (server, _events, mut raw, _) = connected(cfg);
    for len in [0usize, 125, 126, 65535, 65536, 200_000] {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        assert_eq!(server.publish(b"alice", &payload, MessageKind::Binary).unwrap(), 1);
        let frame = raw.next_frame();
        assert_eq!((frame.fin, frame.rsv, frame.opcode, frame.masked), (true, 0, 2, false));
        assert_eq!(frame.payload, payload, "length {len}");
    }
}
