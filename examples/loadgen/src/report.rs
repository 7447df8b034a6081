//! Phase results and how they are shown: the table, the --json document (serde_json, keys in the
//! order the phases wrote them) and progress lines.

use std::time::{Duration, Instant};

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::cli::{Options, Phase};
use crate::hist::Histogram;

/// A summary value, rendered into both the table and JSON.
#[derive(Clone)]
pub enum Value {
    Int(u64),
    Float(f64),
    Text(String),
    /// One value per node (JSON array).
    List(Vec<Value>),
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Int(n) => serializer.serialize_u64(*n),
            // Three decimals, as the report always had; not finite (no samples): null.
            Value::Float(x) if x.is_finite() => serializer.serialize_f64((x * 1000.0).round() / 1000.0),
            Value::Float(_) => serializer.serialize_none(),
            Value::Text(text) => serializer.serialize_str(text),
            Value::List(values) => serializer.collect_seq(values),
        }
    }
}

pub struct PhaseResult {
    pub phase: Phase,
    /// Table: what matters most, then details.
    pub headline: String,
    pub details: String,
    /// JSON fields in order.
    pub fields: Vec<(&'static str, Value)>,
}

/// A list of (key, value) pairs as one JSON object, keys in list order.
struct Fields<'a, V>(&'a [(&'a str, V)]);

impl<V: Serialize> Serialize for Fields<'_, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// The --json document: the run's shape, one object per phase, then the verdict.
struct JsonReport<'a> {
    options: &'a Options,
    results: &'a [PhaseResult],
    anomalies: u64,
}

impl Serialize for JsonReport<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let o = self.options;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("url", &o.urls())?;
        if o.targets.len() > 1 {
            map.serialize_entry("nodes", &o.targets.len())?;
        }
        map.serialize_entry("conns", &o.conns)?;
        map.serialize_entry("tabs", &o.tabs)?;
        map.serialize_entry("users", &o.conns.div_ceil(o.tabs))?;
        map.serialize_entry("workers", &o.workers)?;
        for result in self.results {
            map.serialize_entry(result.phase.name(), &Fields(&result.fields))?;
        }
        map.serialize_entry("anomalies", &self.anomalies)?;
        map.serialize_entry("ok", &(self.anomalies == 0))?;
        map.end()
    }
}

pub fn format_ns(ns: u64) -> String {
    match ns {
        0..=999 => format!("{ns} ns"),
        1_000..=999_999 => format!("{:.1} µs", ns as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.2} ms", ns as f64 / 1e6),
        _ => format!("{:.2} s", ns as f64 / 1e9),
    }
}

pub fn format_kib(kib: f64) -> String {
    if kib.abs() >= 1024.0 * 10.0 {
        format!("{:.1} MiB", kib / 1024.0)
    } else {
        format!("{kib:.0} KiB")
    }
}

/// p50, p99, p99.9, max and mean of `hist` under the report keys of `prefix` ("latency" or "rtt").
pub fn latency_fields(prefix: &'static str, hist: &Histogram) -> Vec<(&'static str, Value)> {
    let names: [&'static str; 5] = match prefix {
        "latency" => ["latency_p50_ns", "latency_p99_ns", "latency_p999_ns", "latency_max_ns", "latency_mean_ns"],
        "cross_node_latency" => [
            "cross_node_latency_p50_ns",
            "cross_node_latency_p99_ns",
            "cross_node_latency_p999_ns",
            "cross_node_latency_max_ns",
            "cross_node_latency_mean_ns",
        ],
        _ => ["rtt_p50_ns", "rtt_p99_ns", "rtt_p999_ns", "rtt_max_ns", "rtt_mean_ns"],
    };
    vec![
        (names[0], Value::Int(hist.quantile(0.5))),
        (names[1], Value::Int(hist.quantile(0.99))),
        (names[2], Value::Int(hist.quantile(0.999))),
        (names[3], Value::Int(hist.max())),
        (names[4], Value::Int(hist.mean())),
    ]
}

pub fn latency_text(label: &str, hist: &Histogram) -> String {
    if hist.count() == 0 {
        return format!("{label}: no samples");
    }
    format!(
        "{label} p50 {}, p99 {}, p99.9 {}, max {}",
        format_ns(hist.quantile(0.5)),
        format_ns(hist.quantile(0.99)),
        format_ns(hist.quantile(0.999)),
        format_ns(hist.max())
    )
}

/// Prints a progress line to stderr at most once a second.
pub fn progress(phase: Phase, last: &mut Instant, text: impl FnOnce() -> String) {
    if last.elapsed() >= Duration::from_secs(1) {
        *last = Instant::now();
        eprintln!("[{}] {}", phase.name(), text());
    }
}

pub fn print_results(o: &Options, results: &[PhaseResult], anomalies: u64) {
    if o.json {
        let report = JsonReport { options: o, results, anomalies };
        match serde_json::to_string(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("loadgen: cannot write the JSON report: {e}"),
        }
    } else {
        let width = results.iter().map(|r| r.headline.chars().count()).max().unwrap_or(0);
        println!("{:<10} {:<width$}  details", "phase", "result");
        for result in results {
            println!("{:<10} {:<width$}  {}", result.phase.name(), result.headline, result.details);
        }
    }
    if anomalies > 0 {
        eprintln!(
            "loadgen: FAILED: {anomalies} anomalies (messages lost, duplicated, reordered or unexpected, \
             limits or server checks that did not hold; see the lines above)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_keep_their_order_and_floats_three_decimals() {
        let fields = [
            ("opened", Value::Int(500)),
            ("secs", Value::Float(1.23456)),
            ("none", Value::Float(f64::NAN)),
            ("statuses", Value::Text("503x2 \"q\"".into())),
        ];
        let json = serde_json::to_string(&Fields(&fields)).unwrap();
        assert_eq!(json, r#"{"opened":500,"secs":1.235,"none":null,"statuses":"503x2 \"q\""}"#);
    }
}
