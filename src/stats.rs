//! Counters: cheap relaxed atomics per I/O thread (no shared cache line on the hot path), summed
//! into a [`Stats`] snapshot on demand.
//!
//! The list of gauges and counters is written once, in [`stats_table!`] below. The Rust struct,
//! the per-thread atomics, the field table ([`Stats::FIELDS`]: names, kinds, help text for JSON
//! and Prometheus) and the C struct's layout (checked at compile time in `ffi`) all follow from
//! it; the bindings' field lists are tested against it. Add a counter at the END only: the C
//! struct grows at the end and hosts built against an older header keep working.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Whether a value only grows (`Counter`, named `*_total`) or goes up and down (`Gauge`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatKind {
    Gauge,
    Counter,
}

impl StatKind {
    /// The Prometheus `# TYPE` word.
    pub fn prometheus_type(self) -> &'static str {
        match self {
            StatKind::Gauge => "gauge",
            StatKind::Counter => "counter",
        }
    }
}

/// One row of the table: what a host needs to export the value (e.g. as Prometheus text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatField {
    /// The field's name in [`Stats`], the C struct, /stats JSON and (prefixed `wspush_`) /metrics.
    pub name: &'static str,
    pub kind: StatKind,
    /// One line, no trailing period missing: the field's documentation and the metric's HELP.
    pub help: &'static str,
    /// `name` with a NUL terminator, for the C ABI.
    pub(crate) name_nul: &'static str,
    /// `help` with a NUL terminator, for the C ABI.
    pub(crate) help_nul: &'static str,
}

macro_rules! stats_table {
    ($($name:ident: $kind:ident, $help:literal;)*) => {
        /// A snapshot of the server's gauges and counters. `*_total` counters only grow.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Stats {
            $(#[doc = $help] pub $name: u64,)*
        }

        /// Per-thread values, written by one I/O thread, read by `stats()`. Values the threads do
        /// not own (users, publishes, ...) stay zero here and are filled in from shared state.
        #[derive(Default)]
        #[repr(align(128))]
        pub(crate) struct ThreadStats {
            $(pub $name: AtomicU64,)*
        }

        impl ThreadStats {
            pub(crate) fn add_to(&self, s: &mut Stats) {
                $(s.$name += self.$name.load(Relaxed);)*
            }
        }

        impl Stats {
            /// Every value, in the order of the C struct `wspush_stats_snapshot`.
            pub const FIELDS: &'static [StatField] = &[$(StatField {
                name: stringify!($name),
                kind: StatKind::$kind,
                help: $help,
                name_nul: concat!(stringify!($name), "\0"),
                help_nul: concat!($help, "\0"),
            },)*];

            /// The values in [`Stats::FIELDS`] order.
            pub fn values(&self) -> [u64; Stats::COUNT] {
                [$(self.$name,)*]
            }
        }
    };
}

stats_table! {
    connections: Gauge, "Open (upgraded) connections now.";
    handshakes: Gauge, "Connections accepted but not yet upgraded (including deferred decisions).";
    users: Gauge, "Distinct users with at least one open connection.";
    accepted_total: Counter, "Sockets accepted.";
    upgrades_total: Counter, "Successful upgrades.";
    rejected_total: Counter, "Requests answered with an HTTP error (400/403/404/426/431, host rejections, ...).";
    over_capacity_total: Counter, "Sockets answered 503 because max_connections was reached.";
    messages_in_total: Counter, "Messages received from clients (after reassembly).";
    messages_out_total: Counter, "Messages handed to sockets (one per recipient connection).";
    bytes_out_total: Counter, "Bytes written to sockets, frame headers included.";
    publishes_total: Counter, "Calls to publish.";
    broadcasts_total: Counter, "Calls to broadcast.";
    dropped_total: Counter, "Messages dropped for a slow consumer (policy drop).";
    slow_consumer_closes_total: Counter, "Connections closed with 1008 because their queue passed max_queue_bytes (policy close).";
    protocol_errors_total: Counter, "Connections closed for a protocol violation (1002, 1007, 1009).";
    timeouts_total: Counter, "Connections closed by the handshake deadline or the idle timeout.";
    pings_total: Counter, "Heartbeat pings sent.";
    ip_limited_total: Counter, "Sockets answered 429 by a per-address limit (max connections, handshakes per second or pending handshakes per IP).";
    queued_bytes: Gauge, "Bytes queued for connections that their sockets have not taken yet.";
    partial_input_bytes: Gauge, "Bytes held for incomplete client frames and messages (see max_partial_input_bytes).";
    message_timeouts_total: Counter, "Connections closed with 1008 because a started frame or message was not completed within message_timeout.";
    partial_input_refusals_total: Counter, "Connections closed with 1013 because max_partial_input_bytes was reached.";
    max_connections: Gauge, "The connection cap in force: max_connections, lowered to what RLIMIT_NOFILE allows.";
    history_users: Gauge, "Users with a history stream (history on).";
    history_messages: Gauge, "Messages held in users' histories.";
    history_bytes: Gauge, "Bytes charged to history: payloads plus bookkeeping (see history_max_bytes).";
    resumes_total: Counter, "wspush.v1 connections that asked to resume (since=...).";
    recoveries_total: Counter, "Resumes that recovered: everything after since was replayed.";
    recovery_failures_total: Counter, "Resumes that could not be honoured (other epoch, trimmed, expired, too large): the client resets.";
    redis_connected: Gauge, "1 while this node's Redis connections are all up and logged in (0 without Redis).";
    redis_subscribed_users: Gauge, "Users whose Redis channel this node is subscribed to (local users, and for a few seconds those whose last connection closed).";
    redis_publish_failures_total: Counter, "Publishes Redis did not confirm in time (answered Unavailable; they may still have been applied).";
    redis_fills_total: Counter, "Reads of a user's stream to fill a jump in offsets or to catch up after a lost Redis connection.";
    redis_resets_total: Counter, "Users whose wspush.v1 connections were closed with 1012 because history under them was lost.";
}

impl Stats {
    /// How many values a snapshot holds.
    pub const COUNT: usize = Stats::FIELDS.len();

    /// `(field, value)` pairs in table order: what /stats JSON and /metrics text are made of.
    pub fn fields(&self) -> impl Iterator<Item = (&'static StatField, u64)> {
        Stats::FIELDS.iter().zip(self.values())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_every_field_once_with_counters_named_total() {
        let mut names: Vec<&str> = Stats::FIELDS.iter().map(|f| f.name).collect();
        for field in Stats::FIELDS {
            assert_eq!(field.kind == StatKind::Counter, field.name.ends_with("_total"), "{}", field.name);
            assert!(field.help.ends_with('.') && !field.help.contains('\n'), "{}", field.name);
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Stats::COUNT);
    }

    #[test]
    fn values_follow_the_table_order() {
        let stats = Stats { connections: 1, max_connections: 23, redis_resets_total: 5, ..Stats::default() };
        let values = stats.values();
        assert_eq!(values[0], 1);
        assert_eq!(values[22], 23);
        let (field, value) = stats.fields().last().expect("the table is not empty");
        assert_eq!((field.name, value), ("redis_resets_total", 5));
    }
}
