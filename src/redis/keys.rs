//! What wspush keeps in Redis and how it is named: per user a list (the history: the user's
//! stream of messages), a small hash (epoch and last offset) and a pub/sub channel, all three
//! under one hash tag so that in a Redis Cluster they live in the same slot (the publish script
//! touches all three atomically).
//!
//! The history is a plain list, not a Redis Stream: a stream preallocates a 4 KiB node, so a user
//! with one 100-byte message costs 4,728 B in a stream and 240 B in a list (`MEMORY USAGE`, Redis
//! 7.0, default `stream-node-max-bytes`); offsets need no stream IDs because they are contiguous
//! by construction (the list's last element is the top offset).

use std::borrow::Cow;

use crate::history::{Epoch, Position};
use crate::types::MessageKind;

/// The hash tag of `user`: the ID itself when it has no brace (the common case: readable keys),
/// else its hex form, so a brace in an ID can never move a user's keys apart or into another
/// user's names.
fn push_tag(out: &mut Vec<u8>, user: &[u8]) {
    out.extend_from_slice(b"wspush:{");
    if user.iter().any(|&b| b == b'{' || b == b'}') {
        out.extend_from_slice(b"x:");
        for byte in user {
            out.extend_from_slice(format!("{byte:02x}").as_bytes());
        }
    } else {
        out.extend_from_slice(b"u:");
        out.extend_from_slice(user);
    }
    out.push(b'}');
}

fn named(user: &[u8], suffix: &[u8]) -> Vec<u8> {
    let mut name = Vec::with_capacity(16 + 2 * user.len());
    push_tag(&mut name, user);
    name.extend_from_slice(suffix);
    name
}

/// The user's history: a list of `KIND PAYLOAD` (one byte `t`/`b`, then the payload), oldest
/// first; its last element is the top offset, the one before it top - 1, and so on.
pub(crate) fn history(user: &[u8]) -> Vec<u8> {
    named(user, b":h")
}

/// The user's hash: `e` (epoch, 16 hex digits) and `o` (last offset handed out).
pub(crate) fn meta(user: &[u8]) -> Vec<u8> {
    named(user, b":m")
}

/// The user's sharded pub/sub channel.
pub(crate) fn channel(user: &[u8]) -> Vec<u8> {
    named(user, b":c")
}

/// The user a channel name belongs to; `None` for a name we did not make.
pub(crate) fn user_of_channel(channel: &[u8]) -> Option<Cow<'_, [u8]>> {
    let tag = channel.strip_prefix(b"wspush:{")?.strip_suffix(b"}:c")?;
    if let Some(user) = tag.strip_prefix(b"u:") {
        return Some(Cow::Borrowed(user)); // the common case: no copy per message
    }
    let hex = tag.strip_prefix(b"x:")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    hex.chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect::<Option<Vec<u8>>>()
        .map(Cow::Owned)
}

/// Channel every node subscribes to for broadcasts (plain pub/sub: in a cluster it reaches all
/// shards' subscribers).
pub(crate) const BROADCAST_CHANNEL: &[u8] = b"wspush:broadcast";

pub(crate) fn kind_byte(kind: MessageKind) -> u8 {
    match kind {
        MessageKind::Text => b't',
        MessageKind::Binary => b'b',
    }
}

pub(crate) fn kind_of(byte: u8) -> Option<MessageKind> {
    match byte {
        b't' => Some(MessageKind::Text),
        b'b' => Some(MessageKind::Binary),
        _ => None,
    }
}

/// An epoch as stored in Redis: 16 hex digits.
pub(crate) fn epoch_text(epoch: u64) -> [u8; 16] {
    let mut text = [0u8; 16];
    text.copy_from_slice(format!("{epoch:016x}").as_bytes());
    text
}

pub(crate) fn parse_epoch(text: &[u8]) -> Option<u64> {
    (text.len() == 16).then_some(())?;
    u64::from_str_radix(std::str::from_utf8(text).ok()?, 16).ok()
}

/// A message as it travels on a user's channel: `EPOCH:OFFSET:KIND:PAYLOAD`, where EPOCH is
/// empty and OFFSET 0 when history is off.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ChannelMessage<'a> {
    pub(crate) stream: Option<Position>,
    pub(crate) kind: MessageKind,
    pub(crate) payload: &'a [u8],
}

impl<'a> ChannelMessage<'a> {
    pub(crate) fn parse(raw: &'a [u8]) -> Option<ChannelMessage<'a>> {
        let mut parts = raw.splitn(4, |&b| b == b':');
        let (epoch, offset, kind, payload) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let offset: u64 = std::str::from_utf8(offset).ok()?.parse().ok()?;
        let kind = match kind {
            [byte] => kind_of(*byte)?,
            _ => return None,
        };
        let stream = match epoch {
            b"" => None,
            epoch => Some(Position { epoch: Epoch::Stream(parse_epoch(epoch)?), offset }),
        };
        Some(ChannelMessage { stream, kind, payload })
    }

    /// The history-off form (the publish script writes the history-on form itself).
    pub(crate) fn unnumbered(kind: MessageKind, payload: &[u8]) -> Vec<u8> {
        let mut raw = Vec::with_capacity(payload.len() + 4);
        raw.extend_from_slice(b":0:");
        raw.push(kind_byte(kind));
        raw.push(b':');
        raw.extend_from_slice(payload);
        raw
    }
}

/// A broadcast as it travels: `KIND:PAYLOAD`.
pub(crate) fn broadcast_message(kind: MessageKind, payload: &[u8]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(payload.len() + 2);
    raw.push(kind_byte(kind));
    raw.push(b':');
    raw.extend_from_slice(payload);
    raw
}

pub(crate) fn parse_broadcast(raw: &[u8]) -> Option<(MessageKind, &[u8])> {
    match raw {
        [kind, b':', payload @ ..] => Some((kind_of(*kind)?, payload)),
        _ => None,
    }
}

/// The start of both scripts: KEYS meta, history; ARGV[1] an epoch for a new stream, ARGV[2] the
/// TTL in seconds. A missing hash means a new epoch (expired, evicted, or a Redis that lost its
/// data): the history, if any is left, is dropped with it, so offsets always restart at 1 in a
/// new epoch.
macro_rules! epoch_or_new {
    () => {
        r#"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
"#
    };
}

/// Appends to the user's history, trims it, and publishes on its channel, atomically. ARGV after the two
/// above: kind, payload, max messages, channel. Returns {epoch, offset, nodes that received it}.
pub(crate) const PUBLISH_SCRIPT: &str = concat!(
    epoch_or_new!(),
    r#"
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
redis.call('RPUSH', KEYS[2], ARGV[3] .. ARGV[4])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[5]), -1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
local nodes = redis.call('SPUBLISH', ARGV[6], epoch .. ':' .. offset .. ':' .. ARGV[3] .. ':' .. ARGV[4])
return {epoch, offset, nodes}
"#
);

/// The user's epoch and top, and (when ARGV[3] is an offset rather than empty) the history's
/// entries after it, as many as are still held (the last is `top`). A user without a hash gets
/// one now (a new epoch at offset 0, expiring like a history), so the position a client is
/// welcomed with names an epoch that a later loss changes.
pub(crate) const READ_SCRIPT: &str = concat!(
    epoch_or_new!(),
    r#"
local top = tonumber(redis.call('HGET', KEYS[1], 'o'))
if ARGV[3] == '' then
  return {epoch, top}
end
local since = tonumber(ARGV[3])
if since >= top then
  return {epoch, top, {}}
end
return {epoch, top, redis.call('LRANGE', KEYS[2], since - top, -1)}
"#
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_keys_share_one_hash_tag_and_channels_map_back_to_users() {
        for user in [&b"alice"[..], b"a{b}c", b"}", b"x:41", b"\xff\x01"] {
            let (s, m, c) = (history(user), meta(user), channel(user));
            let tag = |name: &[u8]| name[..name.iter().position(|&b| b == b'}').unwrap() + 1].to_vec();
            assert_eq!(tag(&s), tag(&m));
            assert_eq!(tag(&s), tag(&c));
            assert_eq!(user_of_channel(&c).as_deref(), Some(user));
        }
        assert_ne!(channel(b"x:41"), channel(b"A{"));
        assert_eq!(history(b"alice"), b"wspush:{u:alice}:h");
        assert_eq!(user_of_channel(b"other:{u:alice}:c"), None);
    }

    #[test]
    fn channel_messages_round_trip_and_garbage_is_refused() {
        let raw = b"00000000000000ff:7:b:pay:load";
        let message = ChannelMessage::parse(raw).unwrap();
        assert_eq!(message.stream, Some(Position { epoch: Epoch::Stream(255), offset: 7 }));
        assert_eq!((message.kind, message.payload), (MessageKind::Binary, &b"pay:load"[..]));
        let plain = ChannelMessage::unnumbered(MessageKind::Text, b"");
        assert_eq!(
            ChannelMessage::parse(&plain).unwrap(),
            ChannelMessage { stream: None, kind: MessageKind::Text, payload: b"" }
        );
        for bad in [&b""[..], b"ff:1:t:x", b"00000000000000ff:x:t:", b"00000000000000ff:1:q:", b"00000000000000ff:1:t"]
        {
            assert_eq!(ChannelMessage::parse(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_broadcast(&broadcast_message(MessageKind::Text, b"a:b")),
            Some((MessageKind::Text, &b"a:b"[..]))
        );
        assert_eq!(parse_epoch(&epoch_text(u64::MAX)), Some(u64::MAX));
    }
}
