//! edgelog's edge side: plays a fleet of edge servers (realistic traffic or a replayed
//! CloudFront log) against a collector, and reports what got acknowledged how fast.

mod generator;
mod replay;
mod sender;

use std::time::Duration;

pub use generator::{ErrorMix, Generator};
pub use replay::{ReplayError, distribution_from_file_name, replay};
pub use sender::{OutBody, Report, Target, send_all};

/// Compression of request bodies, and their format (one for the whole body).
pub use edgelog_client::{Compression, Format as WireFormat, compress};

/// What traffic to make.
#[derive(Debug, Clone)]
pub struct TrafficConfig {
    /// Number of distributions.
    pub distributions: usize,
    /// Number of edge locations.
    pub locations: usize,
    /// Records per second over all senders; 0 sends as fast as the collector takes them.
    pub rate: f64,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Stop after this many records.
    pub total: Option<u64>,
    /// Records per request body.
    pub batch: usize,
    pub format: WireFormat,
    pub seed: u64,
    /// Spread event times uniformly over this many past hours (0: now).
    pub backfill_hours: f64,
    /// Baseline extra error shares.
    pub errors: ErrorMix,
    /// A burst of `burst` errors for `burst_length` every `burst_every`.
    pub burst_every: Option<Duration>,
    pub burst_length: Duration,
    pub burst: ErrorMix,
    /// Generate this many bodies once and send them round-robin (load tests: takes the
    /// generator out of the measurement). Each send is a copy of a pooled body with fresh
    /// request ids written over the old ones: random characters, then the record's number
    /// in the run (scrambled, as 16 hex digits), so no two records of a run share an id;
    /// the other fields repeat. A compressed body is compressed again on every send. The
    /// ack log gets no ids.
    pub pregenerate: Option<usize>,
}

impl Default for TrafficConfig {
    fn default() -> Self {
        TrafficConfig {
            distributions: 3,
            locations: 8,
            rate: 1000.0,
            duration: None,
            total: None,
            batch: 1000,
            format: WireFormat::Ndjson,
            seed: 1,
            backfill_hours: 0.0,
            errors: ErrorMix::default(),
            burst_every: None,
            burst_length: Duration::from_secs(60),
            burst: ErrorMix {
                pct_4xx: 0.0,
                pct_5xx: 20.0,
            },
            pregenerate: None,
        }
    }
}

/// Generates traffic per `cfg` and sends it to `target`.
pub async fn run_traffic(cfg: TrafficConfig, target: Target) -> Report {
    let (tx, rx) = tokio::sync::mpsc::channel(target.concurrency * 2);
    let compression = target.compression;
    let producer = tokio::task::spawn_blocking(move || sender::produce(&cfg, compression, &tx));
    let report = send_all(target, rx).await;
    let _ = producer.await;
    report
}
