//! The connection loop: starting connections within the rate and in-flight limits, the upgrade,
//! reading and writing, and how an attempt fails or an open connection is lost.

use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use mio::{Interest, Token};
use tungstenite::protocol::frame::coding::{Data, OpCode};

use super::client::{Client, Failure, State, Stop};
use super::codec::{check_upgrade_response, encode_masked, process_frames};
use super::seq::SeqCheck;
use super::socket::{classify, open_client_socket};
use super::{Context, Worker, MAX_RESPONSE_HEAD, TICK};
use crate::protocol::End;
use crate::sys::mono_ns;

impl Worker {
    /// Starts as many connections as the rate and in-flight limits allow; returns how long the
    /// poll may sleep.
    pub(super) fn start_connections(&mut self) -> Duration {
        let Some(started_at) = self.connect_started else { return TICK };
        let mut sleep = TICK;
        while (self.context.counters.inflight as usize) < self.config.max_inflight {
            if self.next_to_start >= self.clients.len() {
                let Some((index, churned)) = self.restart.pop_front() else { break };
                self.context.counters.pending -= 1;
                self.context.counters.reconnects += u64::from(churned);
                self.start_one(index);
                continue;
            }
            if self.config.connect_rate > 0.0 {
                let due = started_at + Duration::from_secs_f64(self.next_to_start as f64 / self.config.connect_rate);
                let now = Instant::now();
                if due > now {
                    sleep = sleep.min(due - now);
                    break;
                }
            }
            let index = self.next_to_start;
            self.next_to_start += 1;
            self.context.counters.pending -= 1;
            self.start_one(index);
        }
        sleep
    }

    pub(super) fn start_one(&mut self, index: usize) {
        let global = self.config.first + index;
        let source = self
            .config
            .sources
            .map(|(base, count)| Ipv4Addr::from(u32::from(base).wrapping_add((global % count as usize) as u32)));
        self.context.counters.inflight += 1;
        let client = &mut self.clients[index];
        client.state = State::Connecting;
        client.v1.connect_start_ns = mono_ns();
        let target = self.config.targets[global % self.config.targets.len()].addr;
        match open_client_socket(target, source) {
            Ok(mut stream) => {
                if let Err(e) =
                    self.poll.registry().register(&mut stream, Token(index), Interest::READABLE | Interest::WRITABLE)
                {
                    self.fail(index, classify(&e), &e.to_string());
                    return;
                }
                client.stream = Some(stream);
                self.deadlines.push_back((index, Instant::now() + self.config.connect_timeout));
            }
            Err(e) => {
                let text = match source {
                    Some(ip) => format!("{e} (source {ip})"),
                    None => e.to_string(),
                };
                self.fail(index, classify(&e), &text);
            }
        }
    }

    /// Ends a connection attempt that never opened.
    pub(super) fn fail(&mut self, index: usize, failure: Failure, text: &str) {
        let counters = &mut self.context.counters;
        counters.inflight -= 1;
        let kind = match failure {
            Failure::Refused => {
                counters.refused += 1;
                "refused"
            }
            Failure::Timeout => {
                counters.timeout += 1;
                "timeout"
            }
            Failure::Http(status) => {
                counters.http += 1;
                *self.context.http_statuses.entry(status).or_default() += 1;
                "http"
            }
            Failure::Reset => {
                counters.reset += 1;
                "reset"
            }
            Failure::Other => {
                counters.other += 1;
                "other"
            }
        };
        self.context.note_once(kind, text);
        self.drop_socket(index);
    }

    pub(super) fn drop_socket(&mut self, index: usize) {
        let client = &mut self.clients[index];
        if let Some(mut stream) = client.stream.take() {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        client.state = State::Closed;
        client.inbuf = Vec::new();
        client.outbuf = Vec::new();
        client.fragments = None;
        client.peer_login = false;
    }

    /// Ends an opened connection (the server closed it, or it broke).
    pub(super) fn lose(&mut self, index: usize, text: &str) {
        if self.clients[index].state != State::Open {
            return;
        }
        if self.context.soak {
            let record = self.incarnation(index, End::ServerClosed);
            self.finished.push(record);
        }
        let counters = &mut self.context.counters;
        counters.open -= 1;
        counters.closed_by_peer += 1;
        if self.clients[index].echo {
            self.clients[index].echo = false;
            counters.echo_inflight -= 1;
        }
        self.context.note_once("closed", text);
        self.drop_socket(index);
    }

    pub(super) fn expire_handshakes(&mut self) {
        let now = Instant::now();
        while let Some(&(index, deadline)) = self.deadlines.front() {
            let state = self.clients[index].state;
            if state == State::Connecting || state == State::Handshaking {
                if deadline > now {
                    break;
                }
                let stage = if state == State::Connecting { "TCP connect" } else { "upgrade response" };
                self.fail(index, Failure::Timeout, &format!("no {stage} within {:?}", self.config.connect_timeout));
            }
            self.deadlines.pop_front();
        }
    }

    pub(super) fn on_socket_event(&mut self, index: usize) {
        let Some(client) = self.clients.get(index) else { return };
        match client.state {
            State::Connecting => self.on_connecting(index),
            State::Handshaking | State::Open => {
                self.flush(index);
                self.read_ready(index);
            }
            State::Closing => {
                self.flush(index);
                self.drain_closing(index);
            }
            State::NotStarted | State::Closed => {}
        }
    }

    pub(super) fn on_connecting(&mut self, index: usize) {
        let Some(stream) = self.clients[index].stream.as_ref() else { return };
        match stream.take_error() {
            Ok(Some(e)) | Err(e) => return self.fail_after_error(index, classify(&e), &e.to_string()),
            Ok(None) => {}
        }
        match stream.peer_addr() {
            Ok(_) => {}
            // Not connected yet: a spurious event; wait for the next one.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
            Err(e) => return self.fail(index, classify(&e), &e.to_string()),
        }
        let global = self.config.first + index;
        let user = global / self.config.tabs;
        let target = &self.config.targets[global % self.config.targets.len()];
        let separator = if target.path.contains('?') { '&' } else { '?' };
        // wspush.v1: offer the subprotocol; a resuming client says where it left off.
        let (since, protocol) = match (&self.clients[index].v1, self.config.v1) {
            (v1, true) if v1.resuming => {
                (format!("&since={}:{}", v1.epoch, v1.since_offset), "Sec-WebSocket-Protocol: wspush.v1\r\n")
            }
            (_, true) => (String::new(), "Sec-WebSocket-Protocol: wspush.v1\r\n"),
            (_, false) => (String::new(), ""),
        };
        let request = format!(
            "GET {}{separator}user=u{user}{since} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n",
            target.path, target.host_header, self.key
        );
        self.clients[index].state = State::Handshaking;
        self.write_bytes(index, request.as_bytes());
        if self.clients[index].state == State::Handshaking {
            self.read_ready(index);
        }
    }

    /// Writes `bytes` now or queues what the socket does not take.
    pub(super) fn write_bytes(&mut self, index: usize, bytes: &[u8]) {
        let client = &mut self.clients[index];
        let Some(stream) = client.stream.as_mut() else { return };
        if !client.outbuf.is_empty() {
            client.outbuf.extend_from_slice(bytes);
            return;
        }
        let mut written = 0;
        while written < bytes.len() {
            match stream.write(&bytes[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.broken(index, classify(&e), &format!("write: {e}")),
            }
        }
        if written < bytes.len() {
            client.outbuf.extend_from_slice(&bytes[written..]);
        }
    }

    pub(super) fn flush(&mut self, index: usize) {
        let client = &mut self.clients[index];
        let Some(stream) = client.stream.as_mut() else { return };
        while !client.outbuf.is_empty() {
            match stream.write(&client.outbuf) {
                Ok(n) => {
                    client.outbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.broken(index, classify(&e), &format!("write: {e}")),
            }
        }
        client.outbuf = Vec::new();
    }

    /// A socket error or EOF: a failed attempt while handshaking, a lost connection once open.
    pub(super) fn broken(&mut self, index: usize, failure: Failure, text: &str) {
        match self.clients[index].state {
            State::Connecting | State::Handshaking => self.fail_after_error(index, failure, text),
            State::Open => self.lose(index, text),
            State::Closing => self.end_closing(index),
            State::NotStarted | State::Closed => {}
        }
    }

    pub(super) fn read_ready(&mut self, index: usize) {
        loop {
            let client = &mut self.clients[index];
            let Some(stream) = client.stream.as_mut() else { return };
            let n = match stream.read(&mut self.scratch) {
                Ok(0) => {
                    let stage = if client.state == State::Handshaking { "during upgrade" } else { "" };
                    return self.broken(index, Failure::Other, &format!("server closed the connection {stage}"));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.broken(index, classify(&e), &format!("read: {e}")),
            };
            let outcome = if client.inbuf.is_empty() && client.state == State::Open {
                let (consumed, outcome) = process_frames(&self.scratch[..n], client, &mut self.context);
                if outcome.is_ok() {
                    client.inbuf.extend_from_slice(&self.scratch[consumed..n]);
                }
                outcome
            } else {
                client.inbuf.extend_from_slice(&self.scratch[..n]);
                self.process_buffered(index)
            };
            if let Err(action) = outcome {
                return self.finish(index, action);
            }
            if self.clients[index].state == State::Closed {
                return;
            }
            // A full scratch read means more may be waiting; otherwise the socket is drained.
            if n < self.scratch.len() {
                return;
            }
        }
    }

    pub(super) fn process_buffered(&mut self, index: usize) -> Result<(), Stop> {
        let client = &mut self.clients[index];
        if client.state == State::Handshaking && !client.peer_login {
            let Some(head_end) = crate::admin::find(&client.inbuf, b"\r\n\r\n").map(|p| p + 4) else {
                if client.inbuf.len() > MAX_RESPONSE_HEAD {
                    return Err(Stop::Failed(Failure::Other, "upgrade response head too long".into()));
                }
                return Ok(());
            };
            check_upgrade_response(&client.inbuf[..head_end], &self.accept_key, self.config.v1)
                .map_err(|(f, t)| Stop::Failed(f, t))?;
            client.inbuf.drain(..head_end);
            if self.context.peer.is_some() {
                // Open once the peer's login is answered (worker/centrifugo.rs).
                let user = (self.config.first + index) / self.config.tabs;
                super::centrifugo::login(client, &mut self.context, user)?;
            } else {
                mark_open(client, &mut self.context);
            }
        }
        if client.inbuf.is_empty() {
            return Ok(());
        }
        let buffered = std::mem::take(&mut client.inbuf);
        let (consumed, outcome) = process_frames(&buffered, client, &mut self.context);
        client.inbuf = buffered;
        client.inbuf.drain(..consumed);
        if client.inbuf.is_empty() && client.inbuf.capacity() > 4096 {
            client.inbuf = Vec::new();
        }
        outcome
    }

    pub(super) fn finish(&mut self, index: usize, stop: Stop) {
        match stop {
            Stop::Failed(failure, text) => self.fail(index, failure, &text),
            Stop::ServerClosed(text) => {
                // Our close reply was queued by process_frames; give it one chance to go out.
                self.flush(index);
                if self.clients[index].state == State::Handshaking {
                    // Closed during a peer's login (worker/centrifugo.rs): a failed attempt.
                    return self.fail(index, Failure::Other, &format!("during login: {text}"));
                }
                self.lose(index, &text)
            }
            Stop::ProtocolError(text) => {
                self.context.counters.protocol_errors += 1;
                self.lose(index, &format!("protocol error: {text}"))
            }
            Stop::WriteFailed(text) => self.broken(index, Failure::Other, &text),
        }
    }

    /// The attempt broke (reset, write error) before the upgrade completed. A server refusing us
    /// may have answered first and then closed (a 503 and an RST for our unread request): read
    /// what arrived so the refusal is counted by its status rather than as a reset.
    pub(super) fn fail_after_error(&mut self, index: usize, failure: Failure, text: &str) {
        let client = &mut self.clients[index];
        if let Some(stream) = client.stream.as_mut() {
            while client.inbuf.len() <= MAX_RESPONSE_HEAD {
                match stream.read(&mut self.scratch) {
                    Ok(0) => break,
                    Ok(n) => client.inbuf.extend_from_slice(&self.scratch[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        let head = String::from_utf8_lossy(&client.inbuf[..client.inbuf.len().min(MAX_RESPONSE_HEAD)]).into_owned();
        let status =
            head.strip_prefix("HTTP/1.").and_then(|rest| rest.get(2..5)).and_then(|code| code.parse::<u16>().ok());
        match status {
            Some(status) => self.fail(index, Failure::Http(status), &format!("upgrade answered {status}, then {text}")),
            None => self.fail(index, failure, text),
        }
    }

    /// Sends one masked text frame on connection `index`.
    pub(super) fn send_text(&mut self, index: usize, payload: &[u8]) {
        let mask = self.context.next_random() as u32;
        encode_masked(&mut self.context.frame, OpCode::Data(Data::Text), payload, mask.to_ne_bytes());
        let frame = std::mem::take(&mut self.context.frame);
        self.write_bytes(index, &frame);
        self.context.frame = frame;
    }
}

/// The connection is usable: counted as open (after the 101, or a peer's login reply).
pub(super) fn mark_open(client: &mut Client, context: &mut Context) {
    client.state = State::Open;
    client.ever_open = true;
    let now = mono_ns();
    if context.soak {
        client.opened_ns = now;
        client.first_pub = 0;
        client.publishes = SeqCheck::default();
    }
    let counters = &mut context.counters;
    counters.inflight -= 1;
    counters.connected += 1;
    counters.open += 1;
    if counters.first_open_ns == 0 {
        counters.first_open_ns = now;
    }
    counters.last_open_ns = now;
}
