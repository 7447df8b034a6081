//! A log-linear latency histogram in the HDR style: exact below 256 ns, then 128 sub-buckets per
//! power of two, so any recorded value is reported within 0.8 % of its true value. Fixed size
//! (about 58 KiB), allocation-free recording, and mergeable across worker processes through a
//! sparse text form.

/// Bits of sub-bucket precision: 2^7 = 128 sub-buckets per octave.
const SUB_BITS: u32 = 7;
/// Values below this are counted exactly, one bucket each.
const LINEAR: u64 = 1 << (SUB_BITS + 1);
const SUB_BUCKETS: usize = 1 << SUB_BITS;
/// Linear part plus one row of sub-buckets per octave from 2^8 up to 2^63.
const BUCKETS: usize = LINEAR as usize + (63 - SUB_BITS as usize) * SUB_BUCKETS;

#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: vec![0; BUCKETS], count: 0, min: u64::MAX, max: 0, sum: 0 }
    }
}

fn bucket_of(value: u64) -> usize {
    if value < LINEAR {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros(); // >= SUB_BITS + 1
    let shift = exponent - SUB_BITS;
    let mantissa = (value >> shift) as usize; // in [SUB_BUCKETS, 2 * SUB_BUCKETS)
    LINEAR as usize + (exponent - SUB_BITS - 1) as usize * SUB_BUCKETS + (mantissa - SUB_BUCKETS)
}

/// The largest value that lands in `bucket`.
fn bucket_high(bucket: usize) -> u64 {
    if bucket < LINEAR as usize {
        return bucket as u64;
    }
    let row = (bucket - LINEAR as usize) / SUB_BUCKETS;
    let mantissa = ((bucket - LINEAR as usize) % SUB_BUCKETS + SUB_BUCKETS) as u64;
    let shift = row as u32 + 1;
    let low = mantissa << shift;
    low + ((1u64 << shift) - 1)
}

impl Histogram {
    pub fn record(&mut self, value: u64) {
        self.counts[bucket_of(value)] += 1;
        self.count += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum += value as u128;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            (self.sum / self.count as u128) as u64
        }
    }

    /// The value at quantile `q` (0..=1): the top of the bucket holding the ceil(q·count)-th
    /// smallest value, capped at the exact maximum. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (bucket, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_high(bucket).min(self.max);
            }
        }
        self.max
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// One line, no spaces inside a field: `count min max sum bucket:n,bucket:n,...`.
    pub fn encode(&self) -> String {
        let mut out = format!("{} {} {} {} ", self.count, self.min, self.max, self.sum);
        let mut first = true;
        for (bucket, &n) in self.counts.iter().enumerate().filter(|(_, n)| **n > 0) {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&format!("{bucket}:{n}"));
        }
        if first {
            out.push('-');
        }
        out
    }

    pub fn decode(text: &str) -> Option<Histogram> {
        let mut fields = text.split_whitespace();
        let mut hist = Histogram {
            count: fields.next()?.parse().ok()?,
            min: fields.next()?.parse().ok()?,
            max: fields.next()?.parse().ok()?,
            sum: fields.next()?.parse().ok()?,
            ..Histogram::default()
        };
        let buckets = fields.next()?;
        if buckets != "-" {
            for pair in buckets.split(',') {
                let (bucket, n) = pair.split_once(':')?;
                let bucket: usize = bucket.parse().ok()?;
                *hist.counts.get_mut(bucket)? += n.parse::<u64>().ok()?;
            }
        }
        Some(hist)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_within_precision() {
        for value in [0u64, 1, 255, 256, 257, 1000, 123_456, 9_999_999_999, u64::MAX / 3, u64::MAX] {
            let bucket = bucket_of(value);
            assert!(bucket < BUCKETS);
            let high = bucket_high(bucket);
            assert!(high >= value, "{value}: high {high}");
            assert!((high - value) as f64 <= value as f64 / 128.0 + 1.0, "{value}: high {high}");
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
        let copy = Histogram::decode(&hist.encode()).unwrap();
        assert_eq!(copy.quantile(0.99), hist.quantile(0.99));
        assert_eq!(copy.count(), 1000);
    }
}
