//! The client side of the WebSocket wire: the upgrade response check, masked frames out, and
//! frames in, parsed with tungstenite's frame header codec over the worker's own buffers (its
//! `WebSocket` type would allocate a 128 KiB read buffer per connection).

use std::io::{self, Cursor, Write};

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use super::client::{Client, Failure, Stop};
use super::v1::on_server_message;
use super::Context;

/// Largest frame accepted from the server; the tool's own messages are tiny.
const MAX_FRAME: u64 = 1 << 20;

/// Checks a 101 and its accept key, and with `v1` that the server selected wspush.v1.
pub fn check_upgrade_response(head: &[u8], accept_key: &str, v1: bool) -> Result<(), (Failure, String)> {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| (Failure::Other, format!("bad status line {status_line:?}")))?;
    if status != 101 {
        return Err((Failure::Http(status), format!("upgrade answered {status_line:?}")));
    }
    let headers: Vec<(&str, &str)> =
        lines.filter_map(|line| line.split_once(':')).map(|(name, value)| (name.trim(), value.trim())).collect();
    let header = |wanted: &str| headers.iter().find(|(name, _)| name.eq_ignore_ascii_case(wanted)).map(|h| h.1);
    match header("sec-websocket-accept") {
        Some(value) if value == accept_key => {}
        other => return Err((Failure::Other, format!("bad Sec-WebSocket-Accept {other:?}"))),
    }
    match header("sec-websocket-protocol") {
        Some("wspush.v1") if v1 => Ok(()),
        None if !v1 => Ok(()),
        other => Err((Failure::Other, format!("Sec-WebSocket-Protocol {other:?} in the 101 (v1 offered: {v1})"))),
    }
}

/// Masked client frame into `out` (cleared first).
pub fn encode_masked(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], mask: [u8; 4]) {
    out.clear();
    let header = FrameHeader { is_final: true, opcode, mask: Some(mask), ..FrameHeader::default() };
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, out);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, byte) in out[start..].iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// A 20-byte echo message: 'e', the send time as 16 hex digits, padding.
pub fn echo_payload(now_ns: u64) -> [u8; 20] {
    let mut payload = *b"e0000000000000000   ";
    let hex = format!("{now_ns:016x}");
    payload[1..17].copy_from_slice(hex.as_bytes());
    payload
}

/// Parses every complete frame in `data`. Returns bytes consumed, and Err when the connection
/// must end.
pub fn process_frames(data: &[u8], client: &mut Client, context: &mut Context) -> (usize, Result<(), Stop>) {
    let mut pos = 0;
    while pos < data.len() {
        let mut cursor = Cursor::new(&data[pos..]);
        let (header, length) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => break,
            Err(e) => return (pos, Err(Stop::ProtocolError(e.to_string()))),
        };
        if length > MAX_FRAME {
            return (pos, Err(Stop::ProtocolError(format!("{length}-byte frame"))));
        }
        if header.mask.is_some() {
            return (pos, Err(Stop::ProtocolError("server sent a masked frame".into())));
        }
        let payload_start = pos + cursor.position() as usize;
        let payload_end = payload_start + length as usize;
        if payload_end > data.len() {
            break;
        }
        let payload = &data[payload_start..payload_end];
        pos = payload_end;
        let outcome = match header.opcode {
            OpCode::Data(Data::Text | Data::Binary) if header.is_final => {
                if client.fragments.is_some() {
                    Err(Stop::ProtocolError("new message inside a fragmented one".into()))
                } else {
                    on_server_message(payload, client, context)
                }
            }
            OpCode::Data(Data::Text | Data::Binary) => {
                client.fragments = Some(Box::new(payload.to_vec()));
                Ok(())
            }
            OpCode::Data(Data::Continue) => match client.fragments.as_mut() {
                Some(message) => {
                    message.extend_from_slice(payload);
                    if header.is_final {
                        let message = client.fragments.take().map(|b| *b).unwrap_or_default();
                        on_server_message(&message, client, context)
                    } else {
                        Ok(())
                    }
                }
                None => Err(Stop::ProtocolError("continuation without a message".into())),
            },
            OpCode::Control(Control::Ping) => reply(client, context, Control::Pong, payload),
            OpCode::Control(Control::Pong) => Ok(()),
            OpCode::Control(Control::Close) => {
                let code = if payload.len() >= 2 { u16::from_be_bytes([payload[0], payload[1]]) } else { 1005 };
                let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or(&[])).into_owned();
                let echo_code = if payload.len() >= 2 { &payload[..2] } else { &[][..] };
                match reply(client, context, Control::Close, echo_code) {
                    Ok(()) => Err(Stop::ServerClosed(format!("server closed with {code} {reason:?}"))),
                    Err(e) => Err(e),
                }
            }
            OpCode::Data(Data::Reserved(op)) | OpCode::Control(Control::Reserved(op)) => {
                Err(Stop::ProtocolError(format!("reserved opcode {op}")))
            }
        };
        if let Err(stop) = outcome {
            return (pos, Err(stop));
        }
    }
    (pos, Ok(()))
}

/// Queues a control frame (pong or close reply). Clients never hold more than a few bytes, so
/// an unflushed remainder goes to the client's outbuf and is sent on the next writable event.
pub fn reply(client: &mut Client, context: &mut Context, control: Control, payload: &[u8]) -> Result<(), Stop> {
    let mask = context.next_random() as u32;
    encode_masked(&mut context.frame, OpCode::Control(control), payload, mask.to_ne_bytes());
    write_frame(client, &context.frame)
}

pub fn write_frame(client: &mut Client, frame: &[u8]) -> Result<(), Stop> {
    let Some(stream) = client.stream.as_mut() else { return Ok(()) };
    if !client.outbuf.is_empty() {
        client.outbuf.extend_from_slice(frame);
        return Ok(());
    }
    let mut written = 0;
    while written < frame.len() {
        match stream.write(&frame[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Stop::WriteFailed(format!("write: {e}"))),
        }
    }
    client.outbuf.extend_from_slice(&frame[written..]);
    Ok(())
}
