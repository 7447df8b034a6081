//! The codec's unit tests: frames as clients send them, decoded, and server frames encoded.

use super::decoder::*;
use super::frame::*;
use super::utf8::*;

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
