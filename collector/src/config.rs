//! Collector settings.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::wal::WalConfig;

/// Settings of the collector: ingest API, limits, write-ahead log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// Name of this collector, unique in a fleet: it goes into object keys and published
    /// aggregates, so two collectors never overwrite each other.
    pub id: String,
    /// Address the ingest API listens on.
    pub listen: SocketAddr,
    /// Bearer tokens that may post records (`Authorization: Bearer <token>`).
    pub tokens: Vec<String>,
    /// Accept posts without a token. For local experiments only.
    pub allow_unauthenticated: bool,
    /// Largest request body accepted as sent (compressed or not), in bytes.
    pub max_body_bytes: u64,
    /// Largest body after decompression, in bytes; a bigger one is refused with 413.
    pub max_decompressed_bytes: u64,
    /// At most this many refused lines are listed in an answer; the rest are counted.
    pub max_listed_rejections: usize,
    /// How long a SIGTERM may spend draining sinks before exiting (what is left stays in
    /// the write-ahead log).
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How often per-minute partial aggregates are published.
    #[serde(with = "humantime_serde")]
    pub metrics_interval: Duration,
    /// The write-ahead log.
    pub wal: WalConfig,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            id: "collector-1".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tokens: Vec::new(),
            allow_unauthenticated: false,
            max_body_bytes: 16 << 20,
            max_decompressed_bytes: 128 << 20,
            max_listed_rejections: 100,
            shutdown_timeout: Duration::from_secs(30),
            metrics_interval: Duration::from_secs(5),
            wal: WalConfig::default(),
        }
    }
}

impl CollectorConfig {
    /// Checks the settings without touching anything; errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        edgelog_record::check_distribution_id(&self.id).map_err(|e| {
            format!(
                "collector.id: {}",
                e.replace("distribution id", "collector id")
            )
        })?;
        if self.tokens.is_empty() && !self.allow_unauthenticated {
            return Err("collector.tokens: give at least one token, or set collector.allow_unauthenticated = true".into());
        }
        if let Some(t) = self.tokens.iter().find(|t| t.len() < 16) {
            return Err(format!(
                "collector.tokens: token of {} characters is too short (16 at least)",
                t.len()
            ));
        }
        if self.max_body_bytes == 0 || self.max_decompressed_bytes < self.max_body_bytes {
            return Err("collector.max_decompressed_bytes: must be at least collector.max_body_bytes, which must be positive".into());
        }
        if self.metrics_interval.is_zero() {
            return Err("collector.metrics_interval: must be positive".into());
        }
        self.wal.validate().map_err(|e| format!("collector.{e}"))
    }
}
