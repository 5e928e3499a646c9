//! Settings of the write-ahead log, with their ranges.

use serde::{Deserialize, Serialize};

/// Settings of the write-ahead log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalConfig {
    /// A segment file is closed and a new one started past this size, in bytes.
    pub segment_bytes: u64,
    /// Total size the log may reach; past it ingest answers 503 with Retry-After.
    pub max_bytes: u64,
    /// fsync every group commit before acknowledging. Turning this off trades crash
    /// safety of the last moments for speed; keep it on in production.
    pub fsync: bool,
}

/// The range of `wal.segment_bytes`: a segment holds at least one small entry and at most
/// what a scan on start reads in reasonable time.
pub const MIN_SEGMENT_BYTES: u64 = 4096;
pub const MAX_SEGMENT_BYTES: u64 = 4 << 30;
/// The largest `wal.max_bytes` accepted (1 PiB): beyond any disk, and far from overflow.
pub const MAX_LOG_BYTES: u64 = 1 << 50;

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            segment_bytes: 64 << 20,
            max_bytes: 4 << 30,
            fsync: true,
        }
    }
}

impl WalConfig {
    /// Checks the settings; names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return Err(format!(
                "wal.segment_bytes: must be from {MIN_SEGMENT_BYTES} to {MAX_SEGMENT_BYTES} (4 GiB), got {}",
                self.segment_bytes
            ));
        }
        // Checked: twice a huge segment size must not wrap to something small.
        let twice = self.segment_bytes.saturating_mul(2);
        if self.max_bytes < twice || self.max_bytes > MAX_LOG_BYTES {
            return Err(format!(
                "wal.max_bytes: must be from twice wal.segment_bytes ({twice}) to {MAX_LOG_BYTES} (1 PiB), got {}",
                self.max_bytes
            ));
        }
        Ok(())
    }
}
