//! Deterministic sampling by request id.
//!
//! A record is kept at rate `r` % when the xxh3 hash of its `x-edge-request-id` (fixed
//! seed) falls below `r` % of the hash space. Every collector and every version decides
//! alike, and a smaller sample is always a subset of a larger one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Never change: changing it changes every sampling decision ever made.
pub const SAMPLER_SEED: u64 = 0x6564_6765_6c6f_6721;

/// The point in `[0, 2^64)` where a request id falls.
pub fn sample_point(request_id: &str) -> u64 {
    xxh3_64_with_seed(request_id.as_bytes(), SAMPLER_SEED)
}

/// Whether a record with this id is kept at `rate_percent` (0 to 100, fractions allowed).
pub fn keep(request_id: &str, rate_percent: f64) -> bool {
    if rate_percent >= 100.0 {
        return true;
    }
    if rate_percent <= 0.0 || rate_percent.is_nan() {
        return false;
    }
    // 2^64 * r / 100 as an exact-enough integer threshold; monotone in r.
    let threshold = (rate_percent / 100.0 * 18_446_744_073_709_551_616.0) as u128;
    u128::from(sample_point(request_id)) < threshold
}

/// Sampling rates in percent, by sink name (`standard = 100`, `realtime = 10`); a sink
/// without one is given every record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Rates(pub BTreeMap<String, f64>);

impl Rates {
    /// The rate for sink `sink` (100 when not given).
    pub fn rate(&self, sink: &str) -> f64 {
        self.0.get(sink).copied().unwrap_or(100.0)
    }

    /// Rates from `(sink, percent)` pairs.
    pub fn of<'a>(pairs: impl IntoIterator<Item = (&'a str, f64)>) -> Rates {
        Rates(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }
}

/// Sampling configuration: defaults plus per-distribution overrides.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    /// Rates for distributions without an entry below.
    #[serde(default)]
    pub default: Rates,
    /// Rates per distribution id.
    #[serde(default)]
    pub distributions: BTreeMap<String, Rates>,
}

impl SamplingConfig {
    /// Checks every rate is within 0 to 100 and names one of `sinks` (a typo would
    /// otherwise sample nothing); names the offending key.
    pub fn validate(&self, sinks: &[&str]) -> Result<(), String> {
        let check = |key: String, sink: &str, r: f64| {
            if !sinks.contains(&sink) {
                Err(format!(
                    "{key}: no sink is named {sink:?} (sinks: {})",
                    sinks.join(", ")
                ))
            } else if (0.0..=100.0).contains(&r) {
                Ok(())
            } else {
                Err(format!(
                    "{key}: rate must be from 0 to 100 percent, got {r}"
                ))
            }
        };
        for (sink, r) in &self.default.0 {
            check(format!("sampling.default.{sink}"), sink, *r)?;
        }
        for (id, rates) in &self.distributions {
            // A key no record can carry would never apply: say so.
            crate::check_distribution_id(id).map_err(|e| format!("sampling.distributions: {e}"))?;
            for (sink, r) in &rates.0 {
                check(format!("sampling.distributions.{id}.{sink}"), sink, *r)?;
            }
        }
        Ok(())
    }

    /// The rate (percent) for a distribution and sink.
    pub fn rate(&self, distribution: &str, sink: &str) -> f64 {
        match self.distributions.get(distribution) {
            // A distribution's table overrides only the sinks it names.
            Some(r) if r.0.contains_key(sink) => r.rate(sink),
            _ => self.default.rate(sink),
        }
    }

    /// `Some(rate)` when the record is kept for `sink`.
    pub fn decide(&self, distribution: &str, request_id: &str, sink: &str) -> Option<f64> {
        let rate = self.rate(distribution, sink);
        keep(request_id, rate).then_some(rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_for_an_id_no_record_can_carry_is_refused() {
        let with = |id: &str| SamplingConfig {
            distributions: [(id.to_owned(), Rates::of([("standard", 10.0)]))].into(),
            ..SamplingConfig::default()
        };
        assert!(with("E2EXAMPLE").validate(&["standard"]).is_ok());
        for bad in ["not a valid id!!", "", "E/1", &"E".repeat(129)] {
            let e = with(bad).validate(&["standard"]).expect_err(bad);
            assert!(e.starts_with("sampling.distributions: "), "{e}");
        }
    }
}
