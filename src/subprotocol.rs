//! The `wspush.v1` subprotocol (bindings/js/PROTOCOL.md): chosen in the upgrade when the client
//! offers it; the server then sends one JSON object per text frame: a `welcome` first (epoch,
//! offset, whether a resume recovered), then `message`s, with the user's stream offset on those
//! published to the user. A client that offers nothing gets raw frames, as before.

use std::fmt::Write as _;

use crate::codec::{self, data_of, Frame, Opcode};
use crate::history::Position;
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
/// message of an epoch, so a client connected when the stream began learns it.
pub(crate) fn message(kind: MessageKind, payload: &[u8], stream: Option<Position>) -> Frame {
    let mut json = String::with_capacity(payload.len() + payload.len() / 2 + 64);
    json.push_str(r#"{"type":"message","#);
    if let Some(position) = stream {
        if position.offset == 1 {
            let _ = write!(json, r#""epoch":"{}","#, position.epoch);
        }
        let _ = write!(json, r#""offset":{},"#, position.offset);
    }
    match kind {
        MessageKind::Text => {
            json.push_str(r#""data":""#);
            push_json_escaped(&mut json, &String::from_utf8_lossy(payload));
        }
        MessageKind::Binary => {
            json.push_str(r#""data_base64":""#);
            data_encoding::BASE64.encode_append(payload, &mut json);
        }
    }
    json.push_str("\"}");
    codec::encode(Opcode::Text, json.as_bytes())
}

/// The v1 form of a raw data frame made by `codec::encode`.
pub(crate) fn message_from_frame(frame: &[u8], stream: Option<Position>) -> Frame {
    let (kind, payload) = data_of(frame);
    message(kind, payload, stream)
}

fn push_json_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
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
