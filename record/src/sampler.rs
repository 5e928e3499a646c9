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

/// Where sampled records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Destination {
    /// Parquet standard logs.
    Standard,
    /// The real-time stream.
    Realtime,
}

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

fn default_rate() -> f64 {
    100.0
}

/// Sampling rates for one distribution, in percent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rates {
    /// Percent of records written to standard logs (0 to 100, fractions allowed).
    #[serde(default = "default_rate")]
    pub standard: f64,
    /// Percent of records sent to the real-time stream (0 to 100, fractions allowed).
    #[serde(default = "default_rate")]
    pub realtime: f64,
}

impl Default for Rates {
    fn default() -> Self {
        Rates {
            standard: 100.0,
            realtime: 100.0,
        }
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
    /// Checks every rate is within 0 to 100; names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        let check = |key: String, r: f64| {
            if (0.0..=100.0).contains(&r) {
                Ok(())
            } else {
                Err(format!(
                    "{key}: rate must be from 0 to 100 percent, got {r}"
                ))
            }
        };
        check("sampling.default.standard".into(), self.default.standard)?;
        check("sampling.default.realtime".into(), self.default.realtime)?;
        for (id, r) in &self.distributions {
            check(format!("sampling.distributions.{id}.standard"), r.standard)?;
            check(format!("sampling.distributions.{id}.realtime"), r.realtime)?;
        }
        Ok(())
    }

    /// The rate (percent) for a distribution and destination.
    pub fn rate(&self, distribution: &str, dest: Destination) -> f64 {
        let r = self
            .distributions
            .get(distribution)
            .unwrap_or(&self.default);
        match dest {
            Destination::Standard => r.standard,
            Destination::Realtime => r.realtime,
        }
    }

    /// `Some(rate)` when the record is kept for `dest`.
    pub fn decide(&self, distribution: &str, request_id: &str, dest: Destination) -> Option<f64> {
        let rate = self.rate(distribution, dest);
        keep(request_id, rate).then_some(rate)
    }
}
