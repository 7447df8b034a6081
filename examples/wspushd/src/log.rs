//! Logging policy: one line per start and stop, and one line per class of error (its first
//! occurrence), never one per connection: with a million clients, per-connection lines would be
//! a denial of service on the log. Later occurrences show up in /stats and /metrics.

use std::sync::atomic::{AtomicBool, Ordering};

/// The kinds of trouble worth one log line each.
#[derive(Clone, Copy)]
pub enum ErrorClass {
    AdminAccept,
    AdminIo,
    AdminBadRequest,
    AdminUnauthorized,
    AdminForeign,
    AdminCrowded,
    OverCapacity,
    IpLimited,
    SlowConsumerClose,
    SlowConsumerDrop,
    ProtocolError,
}

const CLASS_COUNT: usize = 11;

impl ErrorClass {
    fn describe(self) -> &'static str {
        match self {
            ErrorClass::AdminAccept => "admin API: accepting a connection failed",
            ErrorClass::AdminIo => "admin API: connection I/O failed",
            ErrorClass::AdminBadRequest => "admin API: bad request",
            ErrorClass::AdminUnauthorized => "admin API: request without the right bearer token (401)",
            ErrorClass::AdminForeign => {
                "admin API: request refused as a browser's (403) or for a foreign or missing Host (421/400)"
            }
            ErrorClass::AdminCrowded => "admin API: connection slots full",
            ErrorClass::OverCapacity => "over capacity: --max-connections reached, new sockets answered 503",
            ErrorClass::IpLimited => "per-IP limit: new sockets from one address answered 429",
            ErrorClass::SlowConsumerClose => "slow consumer: closed connections whose send queue was full (1008)",
            ErrorClass::SlowConsumerDrop => "slow consumer: dropped messages for connections whose send queue was full",
            ErrorClass::ProtocolError => {
                "protocol error: closed client connections that broke RFC 6455 (1002/1007/1009)"
            }
        }
    }

    /// Where later occurrences can be followed.
    fn counted_in(self) -> &'static str {
        match self {
            ErrorClass::AdminAccept | ErrorClass::AdminIo => "not counted",
            ErrorClass::AdminBadRequest | ErrorClass::AdminUnauthorized | ErrorClass::AdminForeign => {
                "counted in wspushd_admin_client_errors_total"
            }
            ErrorClass::AdminCrowded => "closes counted in wspushd_admin_evicted_total",
            ErrorClass::OverCapacity => "counted in wspush_over_capacity_total",
            ErrorClass::IpLimited => "counted in wspush_ip_limited_total",
            ErrorClass::SlowConsumerClose => "counted in wspush_slow_consumer_closes_total",
            ErrorClass::SlowConsumerDrop => "counted in wspush_dropped_total",
            ErrorClass::ProtocolError => "counted in wspush_protocol_errors_total",
        }
    }
}

/// Remembers which classes were already logged.
#[derive(Default)]
pub struct ErrorLog {
    logged: [AtomicBool; CLASS_COUNT],
}

impl ErrorLog {
    /// Logs the first occurrence of `class` to stderr; later ones are silent.
    pub fn report(&self, class: ErrorClass, detail: &str) {
        if !self.logged[class as usize].swap(true, Ordering::Relaxed) {
            eprintln!(
                "wspushd: {}: {detail} (logged once; further occurrences {})",
                class.describe(),
                class.counted_in()
            );
        }
    }
}
