//! The `wspush.v1` subprotocol (bindings/js/PROTOCOL.md): chosen in the upgrade when the client
//! offers it; the server then sends one JSON object per text frame: a `welcome` first (epoch,
//! offset, whether a resume recovered), then `message`s, with the user's stream offset on those
//! published to the user. A client that offers nothing gets raw frames, as before.

use std::fmt::Write as _;
use std::io::Write as _;

use crate::codec::{self, data_of, Frame, Opcode};
use crate::history::{Position, Stored};
use crate::request::Request;
use crate::types::MessageKind;

pub(crate) const NAME: &str = "wspush.v1";

/// What the upgrade request asked of the subprotocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Negotiated {
    /// The client offered `wspush.v1` (it is then selected).
    pub(crate) v1: bool,
    /// The client asked to resume: `Some(None)` when its `since` is not a position we write.
    pub(crate) since: Option<Option<Position>>,
}

impl Negotiated {
    pub(crate) fn of(request: &Request<'_>) -> Negotiated {
        let v1 = request.headers().any(|(name, value)| {
            name.eq_ignore_ascii_case("sec-websocket-protocol")
                && value.split(|&b| b == b',').any(|offer| offer.trim_ascii() == NAME.as_bytes())
        });
        let since = v1.then(|| request.query_param("since")).flatten().map(|raw| {
            let mut decoded = [0u8; 64];
            percent_decode(raw.as_bytes(), &mut decoded)
                .and_then(|text| std::str::from_utf8(text).ok())
                .and_then(|text| text.parse().ok())
        });
        Negotiated { v1, since }
    }
}

/// Percent-decodes `raw` into `out`; `None` if malformed or longer than `out`.
fn percent_decode<'o>(raw: &[u8], out: &'o mut [u8]) -> Option<&'o [u8]> {
    let (mut from, mut to) = (0, 0);
    while from < raw.len() {
        let byte = match raw[from] {
            b'%' => {
                let hex = raw.get(from + 1..from + 3)?;
                from += 2;
                u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?
            }
            b'+' => b' ',
            other => other,
        };
        *out.get_mut(to)? = byte;
        from += 1;
        to += 1;
    }
    Some(&out[..to])
}

/// `{"type":"welcome","epoch":"E","offset":N,"recovered":B}`; with history off the epoch is
/// empty and the offset 0.
pub(crate) fn welcome(top: Option<Position>, recovered: bool) -> Frame {
    let mut json = String::with_capacity(96);
    json.push_str(r#"{"type":"welcome","epoch":""#);
    let offset = top.map_or(0, |top| {
        let _ = write!(json, "{}", top.epoch);
        top.offset
    });
    let _ = write!(json, r#"","offset":{offset},"recovered":{recovered}}}"#);
    codec::encode(Opcode::Text, json.as_bytes())
}

/// The v1 form of a message: `{"type":"message","offset":K,"data":"..."}` (`data_base64` for
/// binary); `offset` only for a message of the user's stream, and `epoch` too on the first
/// message of an epoch, so a client connected when the stream began learns it. Written straight
/// into the frame: one allocation.
pub(crate) fn message(kind: MessageKind, payload: &[u8], stream: Option<Position>) -> Frame {
    // The longest head: the type, a placeholder epoch (n + 16 hex digits + '.' + 20 digits), a
    // 20-digit offset and the data field's name, about 110 bytes.
    let mut head = [0u8; 128];
    let mut cursor = std::io::Cursor::new(&mut head[..]);
    let _ = cursor.write_all(br#"{"type":"message","#);
    if let Some(position) = stream {
        if position.offset == 1 {
            let _ = write!(cursor, r#""epoch":"{}","#, position.epoch);
        }
        let _ = write!(cursor, r#""offset":{},"#, position.offset);
    }
    let text = match kind {
        MessageKind::Text => Some(String::from_utf8_lossy(payload)), // borrowed unless invalid
        MessageKind::Binary => None,
    };
    let _ = cursor.write_all(if text.is_some() { br#""data":""# } else { br#""data_base64":""# });
    let head_len = cursor.position() as usize;
    let body_len = match &text {
        Some(text) => text.bytes().map(escaped_len).sum(),
        None => data_encoding::BASE64.encode_len(payload.len()),
    };
    const TAIL: &[u8] = b"\"}";
    codec::encode_with(Opcode::Text, head_len + body_len + TAIL.len(), |out| {
        let (head_out, rest) = out.split_at_mut(head_len);
        head_out.copy_from_slice(&head[..head_len]);
        let (body, tail) = rest.split_at_mut(body_len);
        match &text {
            Some(text) => write_escaped(text.as_bytes(), body),
            None => data_encoding::BASE64.encode_mut(payload, body),
        }
        tail.copy_from_slice(TAIL);
    })
}

/// A resume that is honoured: the welcome (`recovered: true`, at `top`) and the replay of
/// `missed` (what follows the client's `since`, oldest first); `None` unless all of it fits in
/// `max_queue` bytes, since the client would otherwise be closed as a slow consumer (or miss
/// some) and come back for the same replay forever. JSON can be several times the payload
/// (escaped control characters, base64).
pub(crate) fn replay(top: Position, missed: &[Stored], max_queue: usize) -> Option<Vec<Frame>> {
    let mut frames = Vec::with_capacity(1 + missed.len());
    frames.push(welcome(Some(top), true));
    let mut bytes = frames[0].len();
    for stored in missed {
        let position = Position { epoch: top.epoch, offset: stored.offset };
        frames.push(message(stored.kind, &stored.payload, Some(position)));
        bytes += frames[frames.len() - 1].len();
        if bytes > max_queue {
            return None;
        }
    }
    Some(frames)
}

/// The v1 form of a raw data frame made by `codec::encode`.
pub(crate) fn message_from_frame(frame: &[u8], stream: Option<Position>) -> Frame {
    let (kind, payload) = data_of(frame);
    message(kind, payload, stream)
}

/// Bytes `byte` of valid UTF-8 takes in a JSON string (multi-byte characters pass as they are).
fn escaped_len(byte: u8) -> usize {
    match byte {
        b'"' | b'\\' | b'\n' | b'\r' | b'\t' => 2,
        0..=0x1f => 6,
        _ => 1,
    }
}

/// Writes `text` (valid UTF-8) escaped for a JSON string into `out`, which is exactly its size.
fn write_escaped(text: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut at = 0;
    for &byte in text {
        let escaped: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => &[b'\\', b'u', b'0', b'0', HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 15)]],
            _ => std::slice::from_ref(&byte),
        };
        out[at..at + escaped.len()].copy_from_slice(escaped);
        at += escaped.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Epoch;

    fn text(frame: &Frame) -> &str {
        let (kind, payload) = data_of(frame);
        assert_eq!(kind, MessageKind::Text);
        std::str::from_utf8(payload).unwrap()
    }

    #[test]
    fn messages_are_json_objects() {
        let at = |offset| Some(Position { epoch: Epoch::Stream(0xab), offset });
        assert_eq!(
            text(&message(MessageKind::Text, b"hi \"you\"\\\n\x01", at(7))),
            r#"{"type":"message","offset":7,"data":"hi \"you\"\\\n\u0001"}"#
        );
        assert_eq!(
            text(&message(MessageKind::Text, b"first", at(1))),
            r#"{"type":"message","epoch":"00000000000000ab","offset":1,"data":"first"}"#
        );
        assert_eq!(text(&message(MessageKind::Text, "é€😀".as_bytes(), None)), r#"{"type":"message","data":"é€😀"}"#);
        assert_eq!(
            text(&message(MessageKind::Binary, &[0, 1, 2, 0xff], at(3))),
            r#"{"type":"message","offset":3,"data_base64":"AAEC/w=="}"#
        );
        assert_eq!(text(&welcome(None, false)), r#"{"type":"welcome","epoch":"","offset":0,"recovered":false}"#);
        assert_eq!(
            text(&welcome(at(9), true)),
            r#"{"type":"welcome","epoch":"00000000000000ab","offset":9,"recovered":true}"#
        );
    }

    /// Whatever the payload, the frame is exactly one JSON object that gives it back.
    #[test]
    fn every_payload_reads_back_from_its_json() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut texts: Vec<String> = vec![String::new(), (0..=127u8).map(char::from).collect(), "é€😀\u{2028}".into()];
        let mut binaries: Vec<Vec<u8>> = vec![Vec::new(), (0..=255u8).collect()];
        for _ in 0..200 {
            let len = (next() % 300) as usize;
            binaries.push((0..len).map(|_| next() as u8).collect());
            texts.push((0..len).filter_map(|_| char::from_u32((next() % 0x11_0000) as u32)).collect());
        }
        let stream = Some(Position { epoch: crate::history::Epoch::Stream(7), offset: 1 });
        for text in &texts {
            let json: serde_json::Value =
                serde_json::from_str(super::tests::text(&message(MessageKind::Text, text.as_bytes(), stream))).unwrap();
            assert_eq!(json["data"].as_str(), Some(text.as_str()));
            assert_eq!(json["offset"], 1);
        }
        for binary in &binaries {
            let json: serde_json::Value =
                serde_json::from_str(super::tests::text(&message(MessageKind::Binary, binary, None))).unwrap();
            let decoded = data_encoding::BASE64.decode(json["data_base64"].as_str().unwrap().as_bytes()).unwrap();
            assert_eq!(&decoded, binary);
            assert!(json.get("offset").is_none());
        }
    }

    #[test]
    fn large_payloads_keep_their_frame_kind_through_re_encoding() {
        for len in [0, 125, 126, 65_535, 65_536] {
            let raw = codec::encode(Opcode::Binary, &vec![7u8; len]);
            let (kind, payload) = data_of(&raw);
            assert_eq!((kind, payload.len()), (MessageKind::Binary, len));
            let v1 = message_from_frame(&raw, None);
            assert!(text(&v1).starts_with(r#"{"type":"message","data_base64":"Bwc"#) || len == 0);
        }
    }

    #[test]
    fn since_is_percent_decoded() {
        let mut out = [0u8; 8];
        assert_eq!(percent_decode(b"a%3Ab", &mut out), Some(&b"a:b"[..]));
        assert_eq!(percent_decode(b"a%3", &mut out), None);
        assert_eq!(percent_decode(b"123456789", &mut out), None);
    }
}
