//! The wspush.v1 side of a worker. Every server frame is one JSON object: a `welcome` first,
//! then `message`s; the offset of every message that carries one is checked against the last
//! one processed (gaps and repeats counted), and the message's `data` goes on to the usual
//! handling (messages.rs). The resume phase's part lives here too: dropping connections (RST or
//! clean close), reconnecting them with `since`, and checking what they get after it.

use std::io::{self, Read};
use std::time::Instant;

use data_encoding::BASE64;
use serde::Deserialize;
use tungstenite::protocol::frame::coding::{Control, OpCode};

use super::client::{Client, State, Stop, V1};
use super::codec::encode_masked;
use super::messages::{on_message, two_numbers};
use super::seq::{Seen, SeqCheck};
use super::socket::set_linger_zero;
use super::{Context, Counters, Worker};
use crate::hist::Histogram;
use crate::sys::mono_ns;

/// One server frame of wspush.v1 (bindings/js/PROTOCOL.md); unknown fields are ignored.
#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    epoch: Option<String>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    data_base64: Option<String>,
}

/// One complete data message from the server: a v1 frame when the worker speaks wspush.v1,
/// else a raw payload.
pub fn on_server_message(payload: &[u8], client: &mut Client, context: &mut Context) -> Result<(), Stop> {
    if context.peer.is_some() {
        return super::centrifugo::on_frame(payload, client, context);
    }
    if !context.v1 {
        return on_message(payload, client, context);
    }
    let Ok(frame) = serde_json::from_slice::<Frame>(payload) else {
        context.counters.v1_bad_frames += 1;
        return Ok(());
    };
    match frame.kind.as_str() {
        "welcome" => {
            on_welcome(&frame, client, context);
            Ok(())
        }
        "message" => {
            if let Some(offset) = frame.offset {
                check_offset(frame.epoch, offset, &mut client.v1, &mut context.counters);
            }
            let data = match (frame.data, frame.data_base64) {
                (Some(text), _) => text.into_bytes(),
                (None, Some(encoded)) => match BASE64.decode(encoded.as_bytes()) {
                    Ok(bytes) => bytes,
                    Err(_) => {
                        context.counters.v1_bad_frames += 1;
                        return Ok(());
                    }
                },
                (None, None) => {
                    context.counters.v1_bad_frames += 1;
                    return Ok(());
                }
            };
            if data.first() == Some(&b'r') {
                on_resumed(&data, frame.offset, client, context);
                Ok(())
            } else {
                on_message(&data, client, context)
            }
        }
        _ => {
            context.counters.unknown_msgs += 1;
            Ok(())
        }
    }
}

fn on_welcome(frame: &Frame, client: &mut Client, context: &mut Context) {
    let counters = &mut context.counters;
    counters.v1_welcomes += 1;
    let v1 = &mut client.v1;
    v1.epoch = frame.epoch.clone().unwrap_or_default();
    // The welcome's offset is the top of the stream when the connection joined.
    let top = frame.offset.unwrap_or(0);
    if !v1.resuming {
        v1.last_offset = top;
        return;
    }
    if frame.recovered == Some(true) {
        counters.resume_recovered += 1;
        // The replay follows: everything after `since`, up to the top, then live messages.
        v1.last_offset = v1.since_offset;
        if context.resume_missed == 0 && !v1.recovered_all {
            recovered_all(client, context);
        }
    } else {
        counters.resume_not_recovered += 1;
        v1.last_offset = top;
    }
}

/// A message of the user's stream must carry the offset after the last one processed; a new
/// epoch (its first message, offset 1, carries it) starts the count again.
fn check_offset(epoch: Option<String>, offset: u64, v1: &mut V1, counters: &mut Counters) {
    if let Some(epoch) = epoch {
        if epoch != v1.epoch {
            // From a placeholder ("n...": the user had no stream yet) to its first epoch is the
            // normal start; from one stream epoch to another means history was lost.
            if !v1.epoch.is_empty() && !v1.epoch.starts_with('n') {
                counters.epoch_changes += 1;
            }
            v1.epoch = epoch;
            v1.last_offset = offset.saturating_sub(1);
        }
    }
    let expected = v1.last_offset + 1;
    if offset < expected {
        counters.offset_repeats += 1;
    } else if offset > expected {
        counters.offset_gaps += 1;
    }
    v1.last_offset = v1.last_offset.max(offset);
}

/// `r SEQ T`: the resume phase's message SEQ to this user (1..=missed published while the
/// client was away, then live ones). Its offset must be `since + SEQ`.
fn on_resumed(data: &[u8], offset: Option<u64>, client: &mut Client, context: &mut Context) {
    let Some((seq, _sent_ns)) = two_numbers(data) else {
        context.counters.unknown_msgs += 1;
        return;
    };
    let counters = &mut context.counters;
    counters.resume_recv += 1;
    let v1 = &mut client.v1;
    if !v1.resuming {
        counters.resume_unexpected += 1;
        return;
    }
    if offset != Some(v1.since_offset + seq) {
        counters.offset_mismatch += 1;
    }
    let seq = seq.min(u32::MAX as u64) as u32;
    match v1.resumed.record(seq) {
        Seen::New { late } => {
            counters.resume_distinct += 1;
            counters.resume_reordered += late as u64;
        }
        Seen::Duplicate => counters.resume_dup += 1,
    }
    if seq == context.resume_missed && !v1.recovered_all {
        recovered_all(client, context);
    }
}

/// The last missed message arrived: the time from the start of the reconnect is recorded.
fn recovered_all(client: &mut Client, context: &mut Context) {
    let now = mono_ns();
    client.v1.recovered_all = true;
    context.counters.resume_done += 1;
    context.counters.last_resume_ns = now;
    context.resume_latency.record(now.saturating_sub(client.v1.connect_start_ns));
}

impl Worker {
    /// Every open connection goes away: an RST (SO_LINGER 0, then close), or a close frame
    /// (1000) after which the connection waits in `Closing` for the server to end it. Returns
    /// how many went.
    pub(super) fn drop_open(&mut self, rst: bool) -> usize {
        let open: Vec<usize> = (0..self.clients.len()).filter(|&i| self.clients[i].state == State::Open).collect();
        for &index in &open {
            let counters = &mut self.context.counters;
            counters.open -= 1;
            counters.dropped += 1;
            if self.clients[index].echo {
                self.clients[index].echo = false;
                counters.echo_inflight -= 1;
            }
            if rst {
                if let Some(Err(error)) = self.clients[index].stream.as_ref().map(set_linger_zero) {
                    self.context.note_once("linger", &format!("SO_LINGER failed, closing with FIN: {error}"));
                }
                self.drop_socket(index);
                continue;
            }
            counters.closing += 1;
            self.clients[index].state = State::Closing;
            let mask = self.context.next_random() as u32;
            encode_masked(
                &mut self.context.frame,
                OpCode::Control(Control::Close),
                &1000u16.to_be_bytes(),
                mask.to_ne_bytes(),
            );
            let frame = std::mem::take(&mut self.context.frame);
            self.write_bytes(index, &frame);
            self.context.frame = frame;
        }
        open.len()
    }

    /// A closing connection is readable: skips what arrives until the server's close frame or
    /// the end of the stream, then lets the socket go.
    pub(super) fn drain_closing(&mut self, index: usize) {
        loop {
            let client = &mut self.clients[index];
            let Some(stream) = client.stream.as_mut() else { return };
            match stream.read(&mut self.scratch) {
                Ok(0) => return self.end_closing(index),
                Ok(n) => {
                    client.inbuf.extend_from_slice(&self.scratch[..n]);
                    if close_frame_in(&mut client.inbuf) {
                        return self.end_closing(index);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.end_closing(index),
            }
        }
    }

    pub(super) fn end_closing(&mut self, index: usize) {
        if self.clients[index].state == State::Closing {
            self.context.counters.closing -= 1;
            self.drop_socket(index);
        }
    }

    /// Every dropped connection reconnects with `since` = its epoch and last processed offset;
    /// the first `missed` resume messages must be the replay. A connection still waiting for
    /// the server to end its clean close is let go first (counted in `close_forced`).
    pub(super) fn resume(&mut self, missed: u32) {
        self.context.resume_missed = missed;
        self.context.resume_expected = missed;
        self.context.resume_latency = Histogram::default();
        self.connect_started.get_or_insert_with(Instant::now);
        let mut resuming = 0;
        for index in 0..self.clients.len() {
            if self.clients[index].state == State::Closing {
                self.context.counters.close_forced += 1;
                self.end_closing(index);
            }
            let client = &mut self.clients[index];
            if client.state != State::Closed || !client.ever_open {
                continue;
            }
            let v1 = &mut client.v1;
            v1.resuming = true;
            v1.since_offset = v1.last_offset;
            v1.resumed = SeqCheck::default();
            v1.recovered_all = false;
            resuming += 1;
            self.queue_restart(index, false);
        }
        self.context.counters.resume_clients = resuming;
        self.context.counters.resume_expected = resuming * missed as u64;
    }

    /// Each resumed connection must have received resume messages 1..=count in all.
    pub(super) fn expect_resume(&mut self, count: u32) {
        self.context.resume_expected = count;
        self.context.counters.resume_expected = self.context.counters.resume_clients * count as u64;
    }

    /// (lost, unexpected) resume messages over the resumed connections.
    pub(super) fn resume_tally(&self) -> (u64, u64) {
        let expected = self.context.resume_expected;
        let (mut lost, mut unexpected) = (0, 0);
        for client in self.clients.iter().filter(|c| c.v1.resuming) {
            let (within, beyond) = client.v1.resumed.tally(expected);
            lost += (expected - within) as u64;
            unexpected += beyond as u64;
        }
        (lost, unexpected)
    }
}

/// Consumes the complete frames at the start of `buffer`; true when one is a close frame.
fn close_frame_in(buffer: &mut Vec<u8>) -> bool {
    use std::io::Cursor;
    use tungstenite::protocol::frame::FrameHeader;
    loop {
        let mut cursor = Cursor::new(&buffer[..]);
        let Ok(Some((header, length))) = FrameHeader::parse(&mut cursor) else { return false };
        let end = cursor.position() as usize + length as usize;
        if buffer.len() < end {
            return false;
        }
        if header.opcode == OpCode::Control(Control::Close) {
            return true;
        }
        buffer.drain(..end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_must_follow_the_last_one_processed() {
        let (mut v1, mut counters) = (V1 { epoch: "n00000000000000aa.0".into(), ..V1::default() }, Counters::default());
        // The stream's first message brings its epoch; then 2, 3, a repeat of 3, a jump to 5.
        for (epoch, offset) in [(Some("00000000000000ab"), 1), (None, 2), (None, 3), (None, 3), (None, 5), (None, 6)] {
            check_offset(epoch.map(String::from), offset, &mut v1, &mut counters);
        }
        assert_eq!((counters.offset_repeats, counters.offset_gaps, counters.epoch_changes), (1, 1, 0));
        assert_eq!((v1.epoch.as_str(), v1.last_offset), ("00000000000000ab", 6));
        // History lost behind the stream: a new epoch starts at 1 again, counted but not a repeat.
        check_offset(Some("00000000000000cd".into()), 1, &mut v1, &mut counters);
        assert_eq!((counters.offset_repeats, counters.offset_gaps, counters.epoch_changes), (1, 1, 1));
    }

    #[test]
    fn a_close_frame_is_found_behind_data_frames() {
        let mut buffer = vec![0x81, 2, b'h', b'i', 0x88, 2, 0x03, 0xe8];
        assert!(close_frame_in(&mut buffer));
        let mut partial = vec![0x81, 2, b'h', b'i', 0x88, 2, 0x03];
        assert!(!close_frame_in(&mut partial));
        assert_eq!(partial, [0x88, 2, 0x03], "complete frames before it are consumed");
    }
}
