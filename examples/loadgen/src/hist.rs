//! Latency histograms: an HDR histogram (3 significant digits, so any recorded value is reported
//! within 0.1 % of its true value) plus the exact maximum and sum, which HDR buckets round.
//!
//! Workers send theirs to the coordinator in HdrHistogram's V2 serialisation (base64 inside the
//! JSON line protocol, with the exact max and sum beside it); the coordinator adds them up, so
//! percentiles are those of every sample from every worker, not averages of per-worker figures.

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

/// Significant decimal digits kept per value.
const SIGNIFICANT_DIGITS: u8 = 3;

#[derive(Clone)]
pub struct Histogram {
    /// Grows its range on demand: a worker records only what it sees.
    hdr: hdrhistogram::Histogram<u64>,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            // Fails only for more than 5 significant digits: a constant here, not input.
            hdr: hdrhistogram::Histogram::new(SIGNIFICANT_DIGITS).expect("3 significant digits are valid"),
            max: 0,
            sum: 0,
        }
    }
}

/// A histogram on the wire between a worker and the coordinator.
#[derive(Serialize, Deserialize, Debug)]
pub struct WireHistogram {
    /// HdrHistogram V2 serialisation, base64.
    pub v2: String,
    /// Exact maximum and sum of the recorded values (the buckets round them).
    pub max: u64,
    pub sum: u64,
}

impl Histogram {
    pub fn record(&mut self, value: u64) {
        // record() grows the histogram's range as needed; past what it can track (values near
        // u64::MAX), the top bucket takes the value.
        if self.hdr.record(value).is_err() {
            self.hdr.saturating_record(value);
        }
        self.max = self.max.max(value);
        self.sum += value as u128;
    }

    pub fn count(&self) -> u64 {
        self.hdr.len()
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> u64 {
        match self.count() {
            0 => 0,
            count => (self.sum / count as u128) as u64,
        }
    }

    /// The value at quantile `q` (0..=1): the top of the bucket holding the ceil(q·count)-th
    /// smallest value, capped at the exact maximum. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count() == 0 {
            return 0;
        }
        self.hdr.value_at_quantile(q).min(self.max)
    }

    pub fn merge(&mut self, other: &Histogram) -> Result<(), String> {
        self.hdr.add(&other.hdr).map_err(|e| format!("cannot merge histograms: {e:?}"))?;
        self.max = self.max.max(other.max);
        self.sum += other.sum;
        Ok(())
    }

    pub fn to_wire(&self) -> Result<WireHistogram, String> {
        let mut bytes = Vec::new();
        V2Serializer::new().serialize(&self.hdr, &mut bytes).map_err(|e| format!("cannot serialise: {e:?}"))?;
        Ok(WireHistogram {
            v2: data_encoding::BASE64.encode(&bytes),
            max: self.max,
            sum: self.sum.min(u64::MAX as u128) as u64,
        })
    }

    pub fn from_wire(wire: &WireHistogram) -> Result<Histogram, String> {
        let bytes = data_encoding::BASE64.decode(wire.v2.as_bytes()).map_err(|e| format!("bad base64: {e}"))?;
        let decoded: hdrhistogram::Histogram<u64> =
            Deserializer::new().deserialize(&mut bytes.as_slice()).map_err(|e| format!("bad histogram: {e:?}"))?;
        // Merge into an auto-resizing histogram so later merges of wider ranges succeed.
        let mut histogram = Histogram::default();
        histogram.hdr.add(&decoded).map_err(|e| format!("cannot load histogram: {e:?}"))?;
        histogram.max = wire.max;
        histogram.sum = wire.sum as u128;
        Ok(histogram)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_values_are_reported_within_precision() {
        for value in [1u64, 255, 256, 257, 1000, 123_456, 9_999_999_999, u64::MAX / 3] {
            let mut hist = Histogram::default();
            hist.record(value);
            hist.record(value + 1);
            let p = hist.quantile(0.5);
            assert!(p >= value, "{value}: p50 {p}");
            assert!((p - value) as f64 <= value as f64 / 1000.0 + 1.0, "{value}: p50 {p}");
        }
    }

    #[test]
    fn quantiles_and_roundtrip() {
        let mut hist = Histogram::default();
        for v in 1..=1000u64 {
            hist.record(v * 1000);
        }
        let p50 = hist.quantile(0.5);
        assert!((496_000..=504_000).contains(&p50), "{p50}");
        assert_eq!(hist.quantile(1.0), 1_000_000);
        let copy = Histogram::from_wire(&hist.to_wire().unwrap()).unwrap();
        assert_eq!(copy.quantile(0.99), hist.quantile(0.99));
        assert_eq!(copy.count(), 1000);
        assert_eq!(copy.mean(), hist.mean());
    }

    #[test]
    fn worker_histograms_merge_exactly_through_their_serialisation() {
        // Two workers with very different latencies: the merged p50 and p99 must be those of all
        // samples together, which averaging the workers' own percentiles would not give.
        let mut fast = Histogram::default();
        let mut slow = Histogram::default();
        let mut together = Histogram::default();
        for v in 1..=900u64 {
            fast.record(v * 1_000);
            together.record(v * 1_000);
        }
        for v in 1..=100u64 {
            slow.record(v * 1_000_000);
            together.record(v * 1_000_000);
        }
        let mut merged = Histogram::default();
        for part in [&fast, &slow] {
            let line = serde_json::to_string(&part.to_wire().unwrap()).unwrap();
            let wire: WireHistogram = serde_json::from_str(&line).unwrap();
            merged.merge(&Histogram::from_wire(&wire).unwrap()).unwrap();
        }
        assert_eq!(merged.count(), 1000);
        for q in [0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
            assert_eq!(merged.quantile(q), together.quantile(q), "q {q}");
        }
        assert_eq!(merged.max(), 100_000_000);
        assert_eq!(merged.mean(), together.mean());
        // p50 lies among the fast worker's samples, p99 among the slow one's.
        assert!(merged.quantile(0.5) < 1_000_000);
        assert!(merged.quantile(0.99) >= 90_000_000);
    }

    #[test]
    fn empty_histograms_report_zero_and_survive_the_wire() {
        let empty = Histogram::from_wire(&Histogram::default().to_wire().unwrap()).unwrap();
        assert_eq!((empty.count(), empty.quantile(0.99), empty.max(), empty.mean()), (0, 0, 0, 0));
    }
}
