//! Counters: cheap relaxed atomics per I/O thread (no shared cache line on the hot path), summed
//! into a [`Stats`] snapshot on demand.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of the server's gauges and counters. `*_total` counters only grow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Open (upgraded) connections now.
    pub connections: u64,
    /// Connections accepted but not yet upgraded (including deferred decisions).
    pub handshakes: u64,
    /// Distinct users with at least one open connection.
    pub users: u64,
    /// Sockets accepted.
    pub accepted_total: u64,
    /// Successful upgrades.
    pub upgrades_total: u64,
    /// Requests answered with an HTTP error (400/403/404/426/431, host rejections, ...).
    pub rejected_total: u64,
    /// Sockets answered 503 because `max_connections` was reached.
    pub over_capacity_total: u64,
    /// Messages received from clients (after reassembly).
    pub messages_in_total: u64,
    /// Messages handed to sockets (one per recipient connection).
    pub messages_out_total: u64,
    /// Bytes written to sockets, frame headers included.
    pub bytes_out_total: u64,
    /// Calls to publish.
    pub publishes_total: u64,
    /// Calls to broadcast.
    pub broadcasts_total: u64,
    /// Messages dropped for a slow consumer (policy Drop).
    pub dropped_total: u64,
    /// Connections closed with 1008 because their queue passed `max_queue_bytes` (policy Close).
    pub slow_consumer_closes_total: u64,
    /// Connections closed for a protocol violation (1002, 1007, 1009).
    pub protocol_errors_total: u64,
    /// Connections closed by the handshake deadline or the idle timeout.
    pub timeouts_total: u64,
    /// Heartbeat pings sent.
    pub pings_total: u64,
    /// Sockets answered 429 by a per-address limit (`max_connections_per_ip`,
    /// `max_handshakes_per_ip_per_sec`).
    pub ip_limited_total: u64,
    /// Bytes queued for connections that their sockets have not taken yet.
    pub queued_bytes: u64,
    /// Bytes held for incomplete client frames and messages (see `max_partial_input_bytes`).
    pub partial_input_bytes: u64,
    /// Connections closed with 1008 because a started frame or message was not completed
    /// within `message_timeout`.
    pub message_timeouts_total: u64,
    /// Connections closed with 1013 because `max_partial_input_bytes` was reached.
    pub partial_input_refusals_total: u64,
    /// The connection cap in force: `max_connections`, lowered to what RLIMIT_NOFILE allows.
    pub max_connections: u64,
}

/// Per-thread counters, written by one I/O thread, read by `stats()`.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct ThreadStats {
    pub connections: AtomicU64,
    pub handshakes: AtomicU64,
    pub accepted_total: AtomicU64,
    pub upgrades_total: AtomicU64,
    pub rejected_total: AtomicU64,
    pub over_capacity_total: AtomicU64,
    pub messages_in_total: AtomicU64,
    pub messages_out_total: AtomicU64,
    pub bytes_out_total: AtomicU64,
    pub dropped_total: AtomicU64,
    pub slow_consumer_closes_total: AtomicU64,
    pub protocol_errors_total: AtomicU64,
    pub timeouts_total: AtomicU64,
    pub pings_total: AtomicU64,
    pub ip_limited_total: AtomicU64,
    pub queued_bytes: AtomicU64,
    pub message_timeouts_total: AtomicU64,
    pub partial_input_refusals_total: AtomicU64,
}

/// Adds one to a counter only this thread writes (a plain load+store, no locked instruction).
#[inline]
pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(by), Relaxed);
}

/// Subtracts from a gauge only this thread writes.
#[inline]
pub(crate) fn drop_by(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Relaxed).saturating_sub(by), Relaxed);
}

impl ThreadStats {
    pub(crate) fn add_to(&self, s: &mut Stats) {
        s.connections += self.connections.load(Relaxed);
        s.handshakes += self.handshakes.load(Relaxed);
        s.accepted_total += self.accepted_total.load(Relaxed);
        s.upgrades_total += self.upgrades_total.load(Relaxed);
        s.rejected_total += self.rejected_total.load(Relaxed);
        s.over_capacity_total += self.over_capacity_total.load(Relaxed);
        s.messages_in_total += self.messages_in_total.load(Relaxed);
        s.messages_out_total += self.messages_out_total.load(Relaxed);
        s.bytes_out_total += self.bytes_out_total.load(Relaxed);
        s.dropped_total += self.dropped_total.load(Relaxed);
        s.slow_consumer_closes_total += self.slow_consumer_closes_total.load(Relaxed);
        s.protocol_errors_total += self.protocol_errors_total.load(Relaxed);
        s.timeouts_total += self.timeouts_total.load(Relaxed);
        s.pings_total += self.pings_total.load(Relaxed);
        s.ip_limited_total += self.ip_limited_total.load(Relaxed);
        s.queued_bytes += self.queued_bytes.load(Relaxed);
        s.message_timeouts_total += self.message_timeouts_total.load(Relaxed);
        s.partial_input_refusals_total += self.partial_input_refusals_total.load(Relaxed);
    }
}
