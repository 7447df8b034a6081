//! Output: data messages straight to the socket while it takes them, the rest queued under the
//! slow-consumer policy; control frames (pong, ping, close, HTTP answers) that are never dropped.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use super::{Conn, Context, Spill, State, Step, INPUT_PAUSED};
use crate::codec::{self, close, Frame, Opcode};
use crate::config::SlowConsumerPolicy;
use crate::guard::guarded;
use crate::socket;
use crate::stats::{bump, drop_by};

/// Frames gathered into one sendmsg.
const MAX_IOVECS: usize = 64;

impl Spill {
    /// Adds a frame to the output; returns its size for the queued-bytes gauge.
    fn push(&mut self, frame: Frame) -> usize {
        let len = frame.len();
        self.queued_bytes += len;
        self.queue.push_back(frame);
        len
    }

    /// Queues `frame` whole as the front frame of which the socket took `sent` bytes; returns
    /// the bytes it adds to the queued-bytes gauge.
    fn push_started(&mut self, frame: Frame, sent: usize) -> usize {
        let added = self.push(frame) - sent;
        self.front_sent = sent;
        self.queued_bytes -= sent;
        added
    }

    /// Accounts for `written` bytes taken by the socket from the front of the queue.
    fn sent(&mut self, mut written: usize) {
        self.queued_bytes = self.queued_bytes.saturating_sub(written);
        while let Some(front) = self.queue.front() {
            let remaining = front.len() - self.front_sent;
            if written < remaining {
                self.front_sent += written;
                return;
            }
            written -= remaining;
            self.front_sent = 0;
            self.queue.pop_front();
            self.pong_at = self.pong_at.and_then(|at| at.checked_sub(1));
        }
    }

    /// Drops queued frames past the first `keep`; returns the bytes dropped.
    fn truncate(&mut self, keep: usize) -> usize {
        let before = self.queued_bytes;
        self.queue.truncate(keep);
        if self.queue.is_empty() {
            self.front_sent = 0;
        }
        self.queued_bytes = self.queue.iter().map(|f| f.len()).sum::<usize>() - self.front_sent;
        self.pong_at = self.pong_at.filter(|&at| at < self.queue.len());
        before - self.queued_bytes
    }

    /// Fills `slices` with the queued bytes in order; returns how many slices are used.
    fn gather<'a>(&'a self, slices: &mut [IoSlice<'a>; MAX_IOVECS]) -> usize {
        let mut count = 0;
        for (i, frame) in self.queue.iter().take(MAX_IOVECS).enumerate() {
            slices[i] = IoSlice::new(if i == 0 { &frame[self.front_sent..] } else { &frame[..] });
            count += 1;
        }
        count
    }
}

/// Writes `frames` (the first from byte `skip`) in one call.
fn write_frames(fd: RawFd, frames: &[Frame], skip: usize) -> io::Result<usize> {
    match frames {
        [frame] => socket::send(fd, &frame[skip..]),
        _ => {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let count = frames.len().min(MAX_IOVECS);
            for (i, (slice, frame)) in slices.iter_mut().zip(frames).enumerate() {
                *slice = IoSlice::new(if i == 0 { &frame[skip..] } else { frame });
            }
            socket::send_vectored(fd, &slices[..count])
        }
    }
}

impl Conn {
    /// Sends data messages: straight to the socket while it takes everything (nothing is
    /// allocated then), the rest queued under the slow-consumer policy. Several frames
    /// (back-to-back broadcasts) go out in one sendmsg.
    pub(crate) fn queue_messages(&mut self, cx: &mut Context, slot: usize, frames: &[Frame]) -> Step {
        let mut rest = frames;
        // A queue that is not empty is waiting for a writable event: join it.
        let mut blocked = self.has_queued_output();
        if !blocked {
            let fd = self.stream.as_raw_fd();
            while !rest.is_empty() {
                let batch = &rest[..rest.len().min(MAX_IOVECS)];
                let mut sent = match write_frames(fd, batch, 0) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        blocked = true;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return Err(self.gone()),
                };
                let stats = cx.stats();
                bump(&stats.bytes_out_total, sent as u64);
                let before = rest.len();
                while let [frame, tail @ ..] = rest {
                    if sent < frame.len() {
                        break;
                    }
                    sent -= frame.len();
                    rest = tail;
                }
                bump(&stats.messages_out_total, (before - rest.len()) as u64);
                if let ([partial, tail @ ..], true) = (rest, sent > 0) {
                    // Part of this frame is on the wire: it is queued whatever the policy.
                    bump(&stats.messages_out_total, 1);
                    let added = self.spill().push_started(partial.clone(), sent);
                    bump(&stats.queued_bytes, added as u64);
                    rest = tail;
                    break;
                }
                if rest.len() + batch.len() > before {
                    break; // the socket took less than offered
                }
            }
        }
        for frame in rest {
            self.enqueue_message(cx, slot, frame.clone())?;
        }
        if !blocked {
            self.flush(cx, slot)?;
        }
        Ok(())
    }

    /// Queues a data message behind others, applying the slow-consumer policy. Everything queued
    /// counts against `max_queue_bytes`, control frames included.
    fn enqueue_message(&mut self, cx: &mut Context, slot: usize, frame: Frame) -> Step {
        if self.state != State::Open {
            return Ok(()); // closed as a slow consumer by an earlier frame of this batch
        }
        let max_queue = cx.config().max_queue_bytes;
        let spill = self.spill();
        if spill.queued_bytes + frame.len() <= max_queue {
            bump(&cx.stats().messages_out_total, 1);
            let added = spill.push(frame);
            bump(&cx.stats().queued_bytes, added as u64);
            return Ok(());
        }
        match cx.config().slow_consumer {
            SlowConsumerPolicy::Drop => {
                bump(&cx.stats().dropped_total, 1);
                if !spill.queue.is_empty() {
                    self.flags |= INPUT_PAUSED; // over the cap: read no more until it drains
                }
                let id = cx.conn_id(slot, self.generation);
                if let Some(user) = &self.user {
                    let (handler, server) = (&cx.handler, &cx.server);
                    guarded(|| handler.on_drop(server, id, user, frame.len()));
                }
                Ok(())
            }
            SlowConsumerPolicy::Close => {
                bump(&cx.stats().slow_consumer_closes_total, 1);
                // Free the backlog now, keeping only a partly sent frame so that the close frame
                // starts on a frame boundary.
                let keep = usize::from(spill.front_sent > 0);
                let freed = spill.truncate(keep);
                drop_by(&cx.stats().queued_bytes, freed as u64);
                let frame = codec::close_frame(close::POLICY, "slow consumer");
                self.enter_closing(cx, slot, close::POLICY, frame.as_bytes())
            }
        }
    }

    /// Sends bytes that must never be dropped (handshake responses, ping, close), after anything
    /// already queued.
    pub(crate) fn send_control(&mut self, cx: &mut Context, slot: usize, bytes: &[u8]) -> Step {
        if self.has_queued_output() {
            let added = self.spill().push(Arc::from(bytes));
            bump(&cx.stats().queued_bytes, added as u64);
            return Ok(());
        }
        let fd = self.stream.as_raw_fd();
        let (sent, blocked) = loop {
            match socket::send(fd, bytes) {
                Ok(n) => break (n, false),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break (0, true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(self.gone()),
            }
        };
        bump(&cx.stats().bytes_out_total, sent as u64);
        if sent < bytes.len() {
            // Queued whole, as the started front frame: a pong must not cut in before its end.
            let added = self.spill().push_started(Arc::from(bytes), sent);
            bump(&cx.stats().queued_bytes, added as u64);
            if !blocked {
                self.flush(cx, slot)?;
            }
        }
        Ok(())
    }

    /// Answers a ping. With output waiting, only the most recent unanswered ping is answered
    /// (RFC 6455 §5.5.3): a ping flood from a client that does not read holds one pong, not one
    /// per ping. The pong goes ahead of queued data, at the next frame boundary.
    pub(super) fn send_pong(&mut self, cx: &mut Context, slot: usize, payload: &[u8]) -> Step {
        let pong = codec::control(Opcode::Pong, payload);
        if !self.has_queued_output() {
            self.send_control(cx, slot, pong.as_bytes())?;
            // If it had to wait, it is the queue's only frame: a newer ping replaces it there.
            if let Some(spill) = self.spill.as_mut() {
                spill.pong_at = (spill.queue.len() == 1).then_some(0);
            }
            return Ok(());
        }
        let spill = self.spill();
        let frame: Frame = Arc::from(pong.as_bytes());
        match spill.pong_at {
            Some(at) if at > 0 || spill.front_sent == 0 => {
                let replaced = std::mem::replace(&mut spill.queue[at], frame);
                spill.queued_bytes = spill.queued_bytes - replaced.len() + pong.as_bytes().len();
                drop_by(&cx.stats().queued_bytes, replaced.len() as u64);
            }
            _ => {
                let at = usize::from(spill.front_sent > 0);
                spill.queued_bytes += frame.len();
                spill.queue.insert(at, frame);
                spill.pong_at = Some(at);
            }
        }
        bump(&cx.stats().queued_bytes, pong.as_bytes().len() as u64);
        Ok(())
    }

    /// Writes the queue until it is empty or the socket says WouldBlock. With edge-triggered
    /// polling a short write that did not end in WouldBlock is followed by no writable event:
    /// stopping there would strand the rest until some unrelated event. Once the output is below
    /// the queue cap again, reading resumes for a connection paused by backpressure.
    pub(super) fn flush(&mut self, cx: &mut Context, slot: usize) -> Step {
        let fd = self.stream.as_raw_fd();
        let mut written_total = 0usize;
        let mut gone = false;
        if let Some(spill) = self.spill.as_mut() {
            while !spill.queue.is_empty() {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let count = spill.gather(&mut slices);
                match socket::send_vectored(fd, &slices[..count]) {
                    Ok(written) => {
                        written_total += written;
                        spill.sent(written);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        gone = true;
                        break;
                    }
                }
            }
            if spill.queue.is_empty() {
                spill.queue = VecDeque::new(); // give the ring's memory back
            }
        }
        bump(&cx.stats().bytes_out_total, written_total as u64);
        drop_by(&cx.stats().queued_bytes, written_total as u64);
        if gone {
            return Err(self.gone());
        }
        // Resumed at half the cap, so a client at the edge is not paused and resumed per frame.
        if self.flags & INPUT_PAUSED != 0 && self.queued_bytes() <= cx.config().max_queue_bytes / 2 {
            self.flags &= !INPUT_PAUSED;
            cx.again.push(slot); // its input waited in the kernel: read it this round
        }
        Ok(())
    }

    /// The socket can take more: writes what is queued, then moves a closing connection on.
    pub(crate) fn on_writable(&mut self, cx: &mut Context, slot: usize) -> Step {
        self.flush(cx, slot)?;
        self.release_spill();
        self.progress_close()
    }
}
