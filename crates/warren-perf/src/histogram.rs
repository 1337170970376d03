//! A log-linear histogram of latencies in nanoseconds: bounded memory, constant-time record,
//! percentiles within 1% of the exact value.
//!
//! Values below `2 * SUB_BUCKETS` get a bucket each. Above, every power of two is split into
//! [`SUB_BUCKETS`] equal buckets, so a bucket is never wider than 1/128 of its lower bound.
//! Values above [`VALUE_MAX_NS`] are counted at that bound; the exact minimum and maximum are
//! kept aside so that `percentile(0)` and `percentile(100)` are exact.

/// log2 of the buckets per power of two: 128 buckets bound the relative error by 1/128.
const SUB_BITS: u32 = 7;
const SUB_BUCKETS: u64 = 1 << SUB_BITS;
/// The largest latency tracked, about 18 minutes; longer ones are counted as this (the exact
/// maximum is still reported).
pub const VALUE_MAX_NS: u64 = (1 << 40) - 1;
/// Buckets needed to reach [`VALUE_MAX_NS`]: the linear first `2 * SUB_BUCKETS`, then one row of
/// `SUB_BUCKETS` per further power of two (shift 1 to 32).
const BUCKETS: usize = (index(VALUE_MAX_NS) + 1) as usize;

const fn index(v: u64) -> u64 {
    if v < 2 * SUB_BUCKETS {
        return v;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    shift as u64 * SUB_BUCKETS + (v >> shift)
}

/// The largest value that lands in bucket `i`.
fn bucket_high(i: usize) -> u64 {
    let i = i as u64;
    if i < 2 * SUB_BUCKETS {
        return i;
    }
    let shift = i / SUB_BUCKETS - 1;
    let mantissa = i - shift * SUB_BUCKETS;
    ((mantissa + 1) << shift) - 1
}

#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram { counts: vec![0; BUCKETS], total: 0, min: u64::MAX, max: 0, sum: 0 }
    }

    pub fn record(&mut self, value_ns: u64) {
        let i = index(value_ns.min(VALUE_MAX_NS)) as usize;
        self.counts[i] += 1;
        self.total += 1;
        self.min = self.min.min(value_ns);
        self.max = self.max.max(value_ns);
        self.sum += value_ns as u128;
    }

    pub fn merge(&mut self, other: &Histogram) {
        if other.total == 0 {
            return;
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    pub fn clear(&mut self) {
        if self.total > 0 {
            self.counts.fill(0);
        }
        self.total = 0;
        self.min = u64::MAX;
        self.max = 0;
        self.sum = 0;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn min(&self) -> u64 {
        if self.total == 0 {
            0
        } else {
            self.min
        }
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The smallest recorded value such that `p` percent of the values are at most it (within
    /// the bucket width); 0 for an empty histogram.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        if p <= 0.0 {
            return self.min;
        }
        let rank = ((p / 100.0) * self.total as f64).ceil().clamp(1.0, self.total as f64) as u64;
        if rank == self.total {
            return self.max;
        }
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_high(i).clamp(self.min, self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        let mut last = 0;
        for v in [0u64, 1, 255, 256, 257, 511, 512, 1000, 123_456_789, VALUE_MAX_NS] {
            let i = index(v);
            assert!(i >= last, "index is monotonic");
            last = i;
            let high = bucket_high(i as usize);
            assert!(high >= v, "{v} lands in a bucket ending at {high}");
            // The bucket's width is at most 1/128 of its values.
            assert!((high - v) as f64 <= v as f64 / 128.0, "{v} vs {high}");
        }
        for i in 0..BUCKETS - 1 {
            assert_eq!(index(bucket_high(i)), i as u64);
            assert_eq!(index(bucket_high(i) + 1), i as u64 + 1, "bucket {i} is followed by bucket {}", i + 1);
        }
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.percentile(50.0), 50);
        assert_eq!(h.percentile(95.0), 95);
        assert_eq!(h.percentile(99.0), 99);
        assert_eq!(h.percentile(100.0), 100);
        assert_eq!(h.percentile(0.0), 1);
        assert_eq!(h.count(), 100);
        assert!((h.mean() - 50.5).abs() < 1e-9);
    }

    #[test]
    fn large_values_are_within_one_percent() {
        let mut h = Histogram::new();
        // 10 µs to 100 ms, uniform.
        let values: Vec<u64> = (1..=10_000).map(|i| i * 10_000).collect();
        for &v in &values {
            h.record(v);
        }
        for (p, exact) in [(50.0, 50_000_000.0), (95.0, 95_000_000.0), (99.0, 99_000_000.0), (99.9, 99_900_000.0)] {
            let got = h.percentile(p) as f64;
            assert!((got - exact).abs() / exact < 0.01, "p{p}: {got} vs {exact}");
        }
        assert_eq!(h.max(), 100_000_000);
        assert_eq!(h.percentile(100.0), 100_000_000);
        assert_eq!(h.min(), 10_000);
    }

    #[test]
    fn values_past_the_limit_keep_an_exact_max() {
        let mut h = Histogram::new();
        h.record(VALUE_MAX_NS + 1);
        h.record(u64::MAX);
        assert_eq!(h.max(), u64::MAX);
        assert_eq!(h.percentile(100.0), u64::MAX);
        assert_eq!(h.percentile(50.0), VALUE_MAX_NS + 1);
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let (mut a, mut b, mut all) = (Histogram::new(), Histogram::new(), Histogram::new());
        for v in 0..5000u64 {
            let v = v * v;
            if v % 3 == 0 {
                a.record(v)
            } else {
                b.record(v)
            }
            all.record(v);
        }
        a.merge(&b);
        for p in [0.0, 10.0, 50.0, 95.0, 99.0, 100.0] {
            assert_eq!(a.percentile(p), all.percentile(p));
        }
        assert_eq!(a.count(), all.count());
        a.clear();
        assert_eq!((a.count(), a.percentile(50.0), a.min(), a.max()), (0, 0, 0, 0));
    }
}
