//! The documents of GET /stats (JSON) and GET /metrics (Prometheus text): every engine value from
//! the engine's own table (`Stats::FIELDS`: name, kind, help) under its name, plus the admin API's
//! own counters.

use std::fmt::Write as _;

use serde::ser::{Serialize, SerializeMap, Serializer};
use wspush::Stats;

/// /stats: one JSON object, a key per engine value, in the table's order.
struct StatsDocument<'a>(&'a Stats);

impl Serialize for StatsDocument<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(Stats::COUNT))?;
        for (field, value) in self.0.fields() {
            map.serialize_entry(field.name, &value)?;
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
    for (field, value) in stats.fields() {
        metric(&format!("wspush_{}", field.name), field.kind.prometheus_type(), field.help, value);
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
        let stats = Stats { connections: 3, publishes_total: 7, redis_resets_total: 9, ..Stats::default() };
        let json = stats_json(&stats);
        let parsed: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed.len(), Stats::COUNT);
        let names: Vec<&str> = parsed.keys().map(String::as_str).collect();
        let mut table: Vec<&str> = Stats::FIELDS.iter().map(|field| field.name).collect();
        table.sort_unstable(); // serde_json's map sorts its keys
        assert_eq!(names, table);
        assert_eq!((parsed["connections"].as_u64(), parsed["publishes_total"].as_u64()), (Some(3), Some(7)));
        assert!(json.starts_with(r#"{"connections":3,"handshakes":0,"#), "{json}");
        assert!(json.ends_with(r#","redis_resets_total":9}"#), "{json}");
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
