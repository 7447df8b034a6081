//! What the Redis bridge reads: RESP replies from the server it was pointed at (a broken or
//! hostile one must cost it nothing but the connection) and, inside pub/sub pushes, the message
//! format of a user's channel.
//!
//! Checks: no panic; a parsed reply took 0 < n <= input bytes, parsing exactly those bytes gives
//! the same reply, and every shorter prefix is incomplete (never an error: the link waits); an
//! incomplete input minus its last byte is incomplete too; a reply written back out in canonical
//! RESP parses to itself. A channel message that parses has a payload that is the input's tail,
//! and writing it back gives the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wspush::internals::{parse_channel_message, parse_redis_reply, RedisReply};

fuzz_target!(|data: &[u8]| {
    match parse_redis_reply(data) {
        Ok(Some((reply, used))) => {
            assert!(used > 0 && used <= data.len());
            assert_eq!(parse_redis_reply(&data[..used]), Ok(Some((reply.clone(), used))));
            for end in [0, used / 2, used - 1] {
                assert_eq!(parse_redis_reply(&data[..end]), Ok(None), "prefix of {end}");
            }
            let mut canonical = Vec::new();
            write(&reply, &mut canonical);
            assert_eq!(parse_redis_reply(&canonical), Ok(Some((reply, canonical.len()))));
        }
        Ok(None) => {
            if let Some((_, shorter)) = data.split_last() {
                assert_eq!(parse_redis_reply(shorter), Ok(None));
            }
        }
        Err(_) => {}
    }
    if let Some((stream, kind, payload)) = parse_channel_message(data) {
        assert!(data.ends_with(payload));
        let mut written = match stream {
            Some((epoch, offset)) => format!("{epoch:016x}:{offset}:").into_bytes(),
            None => b":0:".to_vec(),
        };
        written.push(kind);
        written.push(b':');
        written.extend_from_slice(payload);
        // Offsets may be written with leading zeros or a '+'; the epoch in either hex case.
        if written != data {
            let reparsed = parse_channel_message(&written).expect("canonical form parses");
            assert_eq!(reparsed, (stream, kind, payload));
        }
    }
});

fn write(reply: &RedisReply, out: &mut Vec<u8>) {
    match reply {
        RedisReply::Status(text) => line(out, b'+', text),
        RedisReply::Error(text) => line(out, b'-', text),
        RedisReply::Int(n) => line(out, b':', n.to_string().as_bytes()),
        RedisReply::Bulk(None) => out.extend_from_slice(b"$-1\r\n"),
        RedisReply::Bulk(Some(bytes)) => {
            line(out, b'$', bytes.len().to_string().as_bytes());
            out.extend_from_slice(bytes);
            out.extend_from_slice(b"\r\n");
        }
        RedisReply::Array(None) => out.extend_from_slice(b"*-1\r\n"),
        RedisReply::Array(Some(items)) => {
            line(out, b'*', items.len().to_string().as_bytes());
            items.iter().for_each(|item| write(item, out));
        }
    }
}

fn line(out: &mut Vec<u8>, kind: u8, text: &[u8]) {
    out.push(kind);
    out.extend_from_slice(text);
    out.extend_from_slice(b"\r\n");
}
