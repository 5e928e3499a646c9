//! A mergeable latency sketch: counts in logarithmic buckets, so any quantile comes back
//! within 1 % of the true value, and sketches from many collectors add up exactly.
//!
//! Sparse on purpose: a dashboard keeps one per distribution and minute (1,000
//! distributions for a day is 1.4 M of them), and a minute's latencies fill a few dozen
//! buckets, where a dense histogram (hdrhistogram, DDSketch's dense store) holds hundreds.

use serde::{Deserialize, Serialize};

/// Bucket growth factor: bucket `i` holds values in `(GAMMA^(i-1), GAMMA^i]` microseconds.
const GAMMA: f64 = 1.02;

/// The last bucket (about 1.1e12 µs, 12 days): larger values, infinity included, count in
/// it, and a bucket beyond it (from a foreign sketch) reads as it, so quantiles stay finite.
const MAX_BUCKET: i32 = 1400;

/// Counts of latencies (microseconds) per logarithmic bucket, sorted by bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySketch {
    buckets: Vec<(i32, u64)>,
    count: u64,
}

fn bucket_of(micros: f64) -> i32 {
    if micros <= 1.0 {
        0
    } else {
        ((micros.ln() / GAMMA.ln()).ceil() as i32).min(MAX_BUCKET)
    }
}

/// The value a bucket stands for: the middle of its range, in relative terms.
fn value_of(bucket: i32) -> f64 {
    if bucket <= 0 {
        return 1.0;
    }
    2.0 * GAMMA.powi(bucket.min(MAX_BUCKET)) / (GAMMA + 1.0)
}

impl LatencySketch {
    /// Counts one latency, in seconds (negative and NaN values are ignored; counts saturate).
    pub fn add_seconds(&mut self, seconds: f64) {
        if seconds.is_nan() || seconds < 0.0 {
            return;
        }
        let b = bucket_of(seconds * 1e6);
        match self.buckets.binary_search_by_key(&b, |(k, _)| *k) {
            Ok(i) => self.buckets[i].1 = self.buckets[i].1.saturating_add(1),
            Err(i) => self.buckets.insert(i, (b, 1)),
        }
        self.count = self.count.saturating_add(1);
    }

    /// Adds another sketch's counts.
    pub fn merge(&mut self, o: &LatencySketch) {
        if o.count == 0 {
            return;
        }
        let (a, b) = (&self.buckets, &o.buckets);
        let mut out = Vec::with_capacity(a.len().max(b.len()));
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            let next = match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) if x.0 == y.0 => {
                    i += 1;
                    j += 1;
                    (x.0, x.1.saturating_add(y.1))
                }
                (Some(x), Some(y)) if x.0 < y.0 => {
                    i += 1;
                    *x
                }
                (Some(x), None) => {
                    i += 1;
                    *x
                }
                (_, Some(y)) => {
                    j += 1;
                    *y
                }
                (None, None) => break,
            };
            out.push(next);
        }
        self.buckets = out;
        self.count = self.count.saturating_add(o.count);
    }

    /// Latencies counted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q` quantile (0 to 1) in milliseconds, within 1 %; None when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * (self.count - 1) as f64).floor() as u64;
        let mut seen: u64 = 0;
        for (b, n) in &self.buckets {
            seen = seen.saturating_add(*n);
            if seen > rank {
                return Some(value_of(*b) / 1000.0);
            }
        }
        self.buckets.last().map(|(b, _)| value_of(*b) / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exact(values: &mut [f64], q: f64) -> f64 {
        values.sort_by(f64::total_cmp);
        values[(q * (values.len() - 1) as f64).floor() as usize] * 1000.0
    }

    proptest! {
        #[test]
        fn quantiles_are_within_one_percent(values in prop::collection::vec(0.0001f64..30.0, 1..500), q in 0.0f64..=1.0) {
            let mut s = LatencySketch::default();
            values.iter().for_each(|v| s.add_seconds(*v));
            let got = s.quantile_ms(q).unwrap_or(f64::NAN);
            let want = exact(&mut values.clone(), q);
            prop_assert!((got - want).abs() <= want * 0.0101, "q {q}: {got} vs {want}");
        }

        #[test]
        fn merging_equals_adding_everything(a in prop::collection::vec(0.0f64..5.0, 0..200), b in prop::collection::vec(0.0f64..5.0, 0..200)) {
            let (mut x, mut y, mut all) = (LatencySketch::default(), LatencySketch::default(), LatencySketch::default());
            a.iter().for_each(|v| { x.add_seconds(*v); all.add_seconds(*v) });
            b.iter().for_each(|v| { y.add_seconds(*v); all.add_seconds(*v) });
            x.merge(&y);
            prop_assert_eq!(x, all);
        }
    }
}
