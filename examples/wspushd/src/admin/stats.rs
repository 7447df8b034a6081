//! The documents of GET /stats (JSON) and GET /metrics (Prometheus text): the engine's counters
//! under their engine names, plus the admin API's own.

use std::fmt::Write as _;

use serde::ser::{Serialize, SerializeMap, Serializer};
use wspush::Stats;

/// Name, value, Prometheus type and help text of one engine counter.
type StatField = (&'static str, u64, &'static str, &'static str);

/// Every engine counter; the one list that feeds both /stats and /metrics.
fn stats_fields(s: &Stats) -> [StatField; 23] {
    [
        ("connections", s.connections, "gauge", "Open (upgraded) WebSocket connections."),
        ("handshakes", s.handshakes, "gauge", "Connections accepted but not yet upgraded."),
        ("users", s.users, "gauge", "Distinct users with at least one open connection."),
        ("accepted_total", s.accepted_total, "counter", "Sockets accepted."),
        ("upgrades_total", s.upgrades_total, "counter", "Successful WebSocket upgrades."),
        ("rejected_total", s.rejected_total, "counter", "Requests answered with an HTTP error."),
        (
            "over_capacity_total",
            s.over_capacity_total,
            "counter",
            "Sockets answered 503 because max connections was reached.",
        ),
        ("messages_in_total", s.messages_in_total, "counter", "Messages received from clients."),
        (
            "messages_out_total",
            s.messages_out_total,
            "counter",
            "Messages handed to sockets, one per recipient connection.",
        ),
        ("bytes_out_total", s.bytes_out_total, "counter", "Bytes written to sockets, frame headers included."),
        ("publishes_total", s.publishes_total, "counter", "Publish calls."),
        ("broadcasts_total", s.broadcasts_total, "counter", "Broadcast calls."),
        ("dropped_total", s.dropped_total, "counter", "Messages dropped for slow consumers (policy drop)."),
        (
            "slow_consumer_closes_total",
            s.slow_consumer_closes_total,
            "counter",
            "Connections closed with 1008 as slow consumers (policy close).",
        ),
        ("protocol_errors_total", s.protocol_errors_total, "counter", "Connections closed for a protocol violation."),
        (
            "timeouts_total",
            s.timeouts_total,
            "counter",
            "Connections closed by the handshake deadline or the idle timeout.",
        ),
        ("pings_total", s.pings_total, "counter", "Heartbeat pings sent."),
        ("ip_limited_total", s.ip_limited_total, "counter", "Sockets answered 429 by a per-IP limit."),
        ("queued_bytes", s.queued_bytes, "gauge", "Bytes queued for connections, not yet taken by their sockets."),
        (
            "partial_input_bytes",
            s.partial_input_bytes,
            "gauge",
            "Bytes held for incomplete client frames and messages.",
        ),
        (
            "message_timeouts_total",
            s.message_timeouts_total,
            "counter",
            "Connections closed with 1008: a started frame or message not completed in time.",
        ),
        (
            "partial_input_refusals_total",
            s.partial_input_refusals_total,
            "counter",
            "Connections closed with 1013: the cap on incomplete input was reached.",
        ),
        ("max_connections", s.max_connections, "gauge", "The connection cap in force (lowered to RLIMIT_NOFILE)."),
    ]
}

/// /stats: one JSON object, a key per engine counter, in the table's order.
struct StatsDocument<'a>(&'a Stats);

impl Serialize for StatsDocument<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fields = stats_fields(self.0);
        let mut map = serializer.serialize_map(Some(fields.len()))?;
        for (name, value, _, _) in fields {
            map.serialize_entry(name, &value)?;
        }
        map.end()
    }
}

pub fn stats_json(stats: &Stats) -> String {
    // Serializing integers into a String cannot fail; an empty object would still be valid JSON.
    serde_json::to_string(&StatsDocument(stats)).unwrap_or_else(|_| "{}".into())
}

/// The admin API's own counters, for /metrics.
pub struct AdminCounts {
    pub requests: u64,
    pub client_errors: u64,
    pub evicted: u64,
}

pub fn metrics_text(stats: &Stats, admin: AdminCounts) -> String {
    let mut text = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = write!(text, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n");
    };
    for (name, value, kind, help) in stats_fields(stats) {
        metric(&format!("wspush_{name}"), kind, help, value);
    }
    metric("wspushd_admin_requests_total", "counter", "Admin API requests answered.", admin.requests);
    metric(
        "wspushd_admin_client_errors_total",
        "counter",
        "Admin API requests answered with a 4xx status.",
        admin.client_errors,
    );
    metric(
        "wspushd_admin_evicted_total",
        "counter",
        "Admin connections without a request in progress closed to make room for a new one.",
        admin.evicted,
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_json_has_every_counter_in_order() {
        let stats = Stats { connections: 3, publishes_total: 7, max_connections: 9, ..Stats::default() };
        let json = stats_json(&stats);
        let parsed: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed.len(), 23);
        assert_eq!((parsed["connections"].as_u64(), parsed["publishes_total"].as_u64()), (Some(3), Some(7)));
        assert!(json.starts_with(r#"{"connections":3,"handshakes":0,"#), "{json}");
        assert!(json.ends_with(r#","max_connections":9}"#), "{json}");
    }

    #[test]
    fn metrics_have_help_and_type_for_every_sample() {
        let text = metrics_text(&Stats::default(), AdminCounts { requests: 1, client_errors: 2, evicted: 3 });
        assert!(text.contains("# TYPE wspush_connections gauge\nwspush_connections 0\n"));
        assert!(text.contains("# TYPE wspushd_admin_evicted_total counter\nwspushd_admin_evicted_total 3\n"));
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let (name, _) = line.split_once(' ').unwrap();
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            let counter = text.contains(&format!("# TYPE {name} counter\n"));
            assert_eq!(counter, name.ends_with("_total"), "{name}");
        }
    }
}
