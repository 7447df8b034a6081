//! Connections in and out of the slab: accepting from the listener (with storm control and a
//! reserve descriptor for refusing when out of them), admitting, and finishing.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use mio::net::TcpStream;
use mio::{Interest, Token};

use super::{IoThread, FIRST_CONN_TOKEN};
use crate::connection::{Conn, Gone, Step};
use crate::handshake;
use crate::socket;
use crate::stats::bump;

/// Sockets accepted per round, for the same reason as `EVENTS_PER_ROUND`; the rest are taken in
/// the next rounds.
const ACCEPTS_PER_ROUND: usize = 16;

impl IoThread {
    /// The listener may hold connections and this thread may take them now. At the handshake
    /// limit (storm control) the rest wait in the kernel's backlog; `leave_handshake` resumes.
    pub(super) fn can_accept(&self) -> bool {
        self.cx.accept_pending && self.cx.handshakes < self.cx.config().max_handshakes_per_thread
    }

    pub(super) fn accept(&mut self) {
        for _ in 0..ACCEPTS_PER_ROUND {
            if !self.can_accept() {
                return;
            }
            let Some(listener) = &self.listener else { return };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer.ip()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.cx.accept_pending = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if socket::is_out_of_descriptors(&e) && self.refuse_with_reserve() => {}
                Err(_) => {
                    // Out of descriptors or memory: the listener stays readable (level state in
                    // the kernel), so stop for now and try again when the next socket closes
                    // or a new connection arrives, instead of spinning on the error.
                    self.cx.accept_pending = false;
                    self.cx.accept_after_close = true;
                    return;
                }
            }
        }
    }

    /// Out of descriptors: frees the reserve descriptor to take one waiting client, answers it
    /// 503 and closes it, then takes the reserve back. False when there is no reserve to use
    /// (another thread took the freed number first): then wait for a socket to close.
    fn refuse_with_reserve(&mut self) -> bool {
        let (Some(listener), Some(reserve)) = (&self.listener, self.reserve_fd.take()) else { return false };
        drop(reserve);
        let refused = match listener.accept() {
            Ok((stream, _)) => {
                bump(&self.cx.stats().accepted_total, 1);
                self.refuse_over_capacity(stream);
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.cx.accept_pending = false;
                true
            }
            Err(_) => false,
        };
        self.reserve_fd = socket::reserve_descriptor();
        refused && self.reserve_fd.is_some()
    }

    /// Answers 503 to a socket the server has no room for and closes it.
    fn refuse_over_capacity(&mut self, mut stream: TcpStream) {
        bump(&self.cx.stats().over_capacity_total, 1);
        let _ = socket::send(stream.as_raw_fd(), &handshake::error_response(503));
        // Read what request already arrived, so that closing sends FIN rather than a reset that
        // could destroy the answer before the client reads it.
        let _ = io::Read::read(&mut stream, &mut self.scratch);
    }

    /// Takes a socket just accepted from `peer` into the slab (`Conn::admit` sets it up).
    fn admit(&mut self, mut stream: TcpStream, peer: IpAddr) {
        bump(&self.cx.stats().accepted_total, 1);
        let slot = self.conns.vacant_key();
        if !self.cx.reserve_socket(slot) {
            return self.refuse_over_capacity(stream);
        }
        let _ = stream.set_nodelay(true);
        let token = Token(slot + FIRST_CONN_TOKEN);
        if self.poll.registry().register(&mut stream, token, Interest::READABLE | Interest::WRITABLE).is_err() {
            self.cx.release_socket();
            return;
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.checked_add(1).unwrap_or(1);
        let now = self.cx.wheel.now();
        self.conns.insert(Conn::new(stream, generation, now));
        let conn = &mut self.conns[slot];
        self.cx.me().live.set(slot, generation);
        let step = conn.admit(&mut self.cx, slot, peer);
        self.settle(slot, step);
    }

    /// Removes the connection in `slot` and tears it down (`Conn::finish`), reporting `code`.
    pub(super) fn finish(&mut self, slot: usize, code: u16) {
        if let Some(conn) = self.conns.try_remove(slot) {
            conn.finish(&mut self.cx, slot, code);
        }
    }

    /// Finishes the connection in `slot` if `step` says it is over.
    pub(super) fn settle(&mut self, slot: usize, step: Step) {
        if let Err(Gone(code)) = step {
            self.finish(slot, code);
        }
    }
}
