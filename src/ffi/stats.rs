//! `wspush_stats`: the engine's gauges and counters for C, and the table that describes them.
//!
//! The values and their order come from the one table in `crate::stats`; the struct below is
//! written out only because cbindgen reads source, not macro output. A compile-time check ties
//! its layout to the table, and tests/ffi.rs checks the header's field names against it.

use std::ffi::c_char;
use std::mem::{offset_of, size_of};

use super::boundary::{ffi_boundary, shared_prefix, wspush_result, Out};
use super::server::server_arg;
use super::types::{wspush_server, wspush_stat_kind, WSPUSH_STAT_KIND_COUNTER, WSPUSH_STAT_KIND_GAUGE};
use crate::stats::{StatKind, Stats};

/// Gauges and counters, filled in by `wspush_stats`. Set `size = sizeof(wspush_stats_snapshot)`
/// before the call. Fields are only ever added at the end; a host built against an older header
/// gets the fields its `size` covers. `*_total` counters only grow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct wspush_stats_snapshot {
    /// `sizeof(wspush_stats_snapshot)` as the host compiled it; not written by wspush.
    pub size: usize,
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
    /// Sockets answered 503 because max_connections was reached.
    pub over_capacity_total: u64,
    /// Messages received from clients.
    pub messages_in_total: u64,
    /// Messages handed to sockets (one per recipient connection).
    pub messages_out_total: u64,
    /// Bytes written to sockets, frame headers included.
    pub bytes_out_total: u64,
    /// Calls to publish.
    pub publishes_total: u64,
    /// Calls to broadcast.
    pub broadcasts_total: u64,
    /// Messages dropped for a slow consumer (policy drop).
    pub dropped_total: u64,
    /// Connections closed with 1008 for a slow consumer (policy close).
    pub slow_consumer_closes_total: u64,
    /// Connections closed for a protocol violation (1002, 1007, 1009).
    pub protocol_errors_total: u64,
    /// Connections closed by the handshake deadline or the idle timeout.
    pub timeouts_total: u64,
    /// Heartbeat pings sent.
    pub pings_total: u64,
    /// Sockets answered 429 by a per-address limit (max connections or handshakes per IP).
    pub ip_limited_total: u64,
    /// Bytes queued for connections that their sockets have not taken yet.
    pub queued_bytes: u64,
    /// Bytes held for incomplete client frames and messages (max_partial_input_bytes).
    pub partial_input_bytes: u64,
    /// Connections closed with 1008: a started frame or message not completed in time.
    pub message_timeouts_total: u64,
    /// Connections closed with 1013 because max_partial_input_bytes was reached.
    pub partial_input_refusals_total: u64,
    /// The connection cap in force: max_connections, lowered to what RLIMIT_NOFILE allows.
    pub max_connections: u64,
    /// Users with a history stream (history on).
    pub history_users: u64,
    /// Messages held in users' histories.
    pub history_messages: u64,
    /// Bytes charged to history: payloads plus bookkeeping (see history_max_bytes).
    pub history_bytes: u64,
    /// wspush.v1 connections that asked to resume (since=...).
    pub resumes_total: u64,
    /// Resumes that recovered: everything after since was replayed.
    pub recoveries_total: u64,
    /// Resumes that could not be honoured (other epoch, trimmed, expired, too large).
    pub recovery_failures_total: u64,
    /// 1 while this node's Redis connections are all up and logged in (0 without Redis).
    pub redis_connected: u64,
    /// Users whose Redis channel this node is subscribed to (local users, and for a few seconds those whose last connection closed).
    pub redis_subscribed_users: u64,
    /// Publishes Redis did not confirm in time (answered Unavailable; they may still have been applied).
    pub redis_publish_failures_total: u64,
    /// Reads of a user's stream to fill a jump in offsets or to catch up after a lost Redis connection.
    pub redis_fills_total: u64,
    /// Users whose wspush.v1 connections were closed with 1012 because history under them was lost.
    pub redis_resets_total: u64,
}

// `size`, then exactly one u64 per row of the table, nothing else: the copy in `wspush_stats` and
// C hosts indexing from `&connections` rely on it.
const _: () = assert!(offset_of!(wspush_stats_snapshot, connections) == size_of::<usize>());
const _: () = assert!(size_of::<wspush_stats_snapshot>() == size_of::<usize>() + Stats::COUNT * size_of::<u64>());

/// Fills `*stats` with a snapshot, as many fields as `stats->size` covers. INVALID_ARGUMENT
/// when `stats->size` does not even cover the first counter. Works after stop too.
///
/// # Safety
/// `server` must be NULL or a live server; `stats` NULL or valid for reads and writes of
/// `stats->size` bytes.
#[no_mangle]
pub unsafe extern "C" fn wspush_stats(
    server: *const wspush_server,
    stats: *mut wspush_stats_snapshot,
) -> wspush_result {
    ffi_boundary(|| {
        // SAFETY: per this function's contract.
        let server = unsafe { server_arg(server) }?;
        let first = offset_of!(wspush_stats_snapshot, connections);
        let word = size_of::<u64>();
        // SAFETY: the leading size field is readable per the contract.
        let copied = unsafe { shared_prefix(stats.cast_const(), first, first + word, word) }?;
        let values = server.stats().values();
        // SAFETY: `values` holds the struct's counters in field order (checked above at compile
        // time) and `copied` is at most their size; the host has `first + copied` writable bytes
        // by its size field; the two don't overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(values.as_ptr().cast::<u8>(), stats.cast::<u8>().add(first), copied);
        }
        Ok(wspush_result::Ok)
    })
}

/// How many values `wspush_stats_snapshot` holds in this library (after `size`). A host that
/// exports every value generically (e.g. as Prometheus text) loops up to this and describes each
/// with `wspush_stats_field`; value `i` is `(&snapshot.connections)[i]`, for `i` below what the
/// host's `size` covers.
#[no_mangle]
pub extern "C" fn wspush_stats_field_count() -> usize {
    Stats::COUNT
}

/// Describes value `index` of `wspush_stats_snapshot` (0 is `connections`, in struct order):
/// `*name` receives its field name, `*help` a one-line description (both static and
/// NUL-terminated), `*kind` whether it is a gauge or a counter. NOT_FOUND when `index` is
/// `wspush_stats_field_count()` or more; NULL_ARGUMENT for a NULL out-parameter.
///
/// # Safety
/// `name`, `help` and `kind` must each be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn wspush_stats_field(
    index: usize,
    name: *mut *const c_char,
    help: *mut *const c_char,
    kind: *mut wspush_stat_kind,
) -> wspush_result {
    ffi_boundary(|| {
        let (name, help, kind) = (Out::new(name)?, Out::new(help)?, Out::new(kind)?);
        let field = Stats::FIELDS.get(index).ok_or(wspush_result::NotFound)?;
        let field_kind = match field.kind {
            StatKind::Gauge => WSPUSH_STAT_KIND_GAUGE,
            StatKind::Counter => WSPUSH_STAT_KIND_COUNTER,
        };
        // SAFETY: checked non-NULL, writable per the contract.
        unsafe {
            name.write(field.name_nul.as_ptr().cast());
            help.write(field.help_nul.as_ptr().cast());
            kind.write(field_kind);
        }
        Ok(wspush_result::Ok)
    })
}
