//! What the log's integration tests share.

use std::sync::Arc;

use edgelog_record::Record;
use edgelog_wal::WalConfig;

/// `n` records tagged `tag` (their request ids are `{tag}-{i}`).
pub fn records(n: usize, tag: &str) -> Arc<Vec<Record>> {
    Arc::new(
        (0..n)
            .map(|i| Record {
                timestamp_ms: 1_700_000_000_000 + i as i64,
                distribution_id: "E1".into(),
                x_edge_request_id: Some(format!("{tag}-{i}")),
                ..Record::default()
            })
            .collect(),
    )
}

/// Small segments, so a few records span several.
pub fn small() -> WalConfig {
    WalConfig {
        segment_bytes: 4096,
        max_bytes: 1 << 30,
        fsync: true,
    }
}
