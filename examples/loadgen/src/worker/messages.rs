//! What a client does with each complete message from the server: sequence checks, latencies,
//! echo replies.

use tungstenite::protocol::frame::coding::{Data, OpCode};

use super::client::{Client, Stop};
use super::codec::{echo_payload, encode_masked, write_frame};
use super::seq::Seen;
use super::Context;
use crate::sys::mono_ns;

/// Splits "X <number> <number>" into the two numbers.
pub fn two_numbers(payload: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(payload.get(2..)?).ok()?;
    let mut words = text.split_ascii_whitespace();
    Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
}

/// The node a publish was made through: the optional third number of "p SEQ T NODE".
pub fn via_node(payload: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(payload.get(2..)?).ok()?;
    text.split_ascii_whitespace().nth(2)?.parse().ok()
}

/// Records a publish's latency, and separately when it was made through another node than the
/// one this connection is on (cross-node delivery, through the broker).
fn record_publish_latency(payload: &[u8], latency_ns: u64, client: &Client, context: &mut Context) {
    context.pub_latency.record(latency_ns);
    if via_node(payload).is_some_and(|node| node != client.node as u64) {
        context.pub_remote_latency.record(latency_ns);
    }
}

/// One complete message from the server. The first byte says what it is (the parent writes
/// every payload): `p SEQ T [NODE]` publish (NODE: the admin API it went through), `b INDEX T` broadcast, `w T` idle warm-up broadcast,
/// `e...` echo reply, `i` echo of our own idle probe.
pub fn on_message(payload: &[u8], client: &mut Client, context: &mut Context) -> Result<(), Stop> {
    let now = mono_ns();
    let counters = &mut context.counters;
    match payload.first() {
        Some(b'p') if context.soak => {
            let Some((seq, sent_ns)) = two_numbers(payload) else {
                counters.unknown_msgs += 1;
                return Ok(());
            };
            counters.pub_recv += 1;
            counters.last_pub_ns = now;
            let seq = seq.clamp(1, u32::MAX as u64) as u32;
            if client.first_pub == 0 {
                client.first_pub = seq;
            }
            if seq < client.first_pub {
                // Below the first number this incarnation got: it arrived after a higher one.
                counters.pub_reordered += 1;
                return Ok(());
            }
            match client.publishes.record(seq - client.first_pub + 1) {
                Seen::New { late } => {
                    counters.pub_distinct += 1;
                    counters.pub_reordered += late as u64;
                    record_publish_latency(payload, now.saturating_sub(sent_ns), client, context);
                }
                Seen::Duplicate => counters.pub_dup += 1,
            }
        }
        Some(b'p') => {
            let Some((seq, sent_ns)) = two_numbers(payload) else {
                counters.unknown_msgs += 1;
                return Ok(());
            };
            counters.pub_recv += 1;
            counters.last_pub_ns = now;
            match client.publishes.record(seq.min(u32::MAX as u64) as u32) {
                Seen::New { late } => {
                    counters.pub_distinct += 1;
                    counters.pub_reordered += late as u64;
                    record_publish_latency(payload, now.saturating_sub(sent_ns), client, context);
                }
                Seen::Duplicate => counters.pub_dup += 1,
            }
        }
        Some(b'b') => {
            let Some((index, sent_ns)) = two_numbers(payload) else {
                counters.unknown_msgs += 1;
                return Ok(());
            };
            counters.bcast_recv += 1;
            counters.last_bcast_ns = now;
            match client.broadcasts.record(index.min(u32::MAX as u64) as u32) {
                Seen::New { late } => {
                    counters.bcast_distinct += 1;
                    counters.bcast_reordered += late as u64;
                    context.bcast_latency.record(now.saturating_sub(sent_ns));
                }
                Seen::Duplicate => counters.bcast_dup += 1,
            }
        }
        Some(b'w') => {
            if !client.warm {
                client.warm = true;
                counters.warm += 1;
            }
        }
        Some(b'e') if client.echo => {
            let sent_ns = std::str::from_utf8(payload.get(1..17).unwrap_or(&[]))
                .ok()
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                .unwrap_or(now);
            context.echo_rtt.record(now.saturating_sub(sent_ns));
            counters.echo_msgs += 1;
            if now < context.echo_until_ns {
                let payload = echo_payload(mono_ns());
                let mask = context.next_random() as u32;
                encode_masked(&mut context.frame, OpCode::Data(Data::Text), &payload, mask.to_ne_bytes());
                return write_frame(client, &context.frame);
            }
            client.echo = false;
            counters.echo_inflight -= 1;
        }
        Some(b'i') => counters.probe_echoes += 1,
        _ => counters.unknown_msgs += 1,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_payloads_may_name_the_node_they_went_through() {
        assert_eq!(two_numbers(b"p 7 123"), Some((7, 123)));
        assert_eq!(via_node(b"p 7 123"), None);
        assert_eq!(two_numbers(b"p 7 123 1"), Some((7, 123)));
        assert_eq!(via_node(b"p 7 123 1"), Some(1));
        assert_eq!(via_node(b"p 7 123 1 ....."), Some(1));
        // Padding after the two numbers (one server, --payload-bytes) is not a node.
        assert_eq!(via_node(b"p 7 123 ....."), None);
    }
}
