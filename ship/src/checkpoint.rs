//! Where each file stands: its identity (fingerprint of its first line, plus the device
//! and inode last seen), the offset up to which the collector acknowledged its lines, and
//! the range of a batch in flight. Saved atomically before a batch is sent (its range)
//! and after it is answered (the new offset), so a restart resends exactly the range
//! whose answer it may have missed, with the same idempotency key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileState {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    /// Lines before this byte are acknowledged (or could not be mapped, and were counted).
    pub offset: u64,
    /// A batch sent and not yet answered: `[start, end)`.
    pub pending: Option<(u64, u64)>,
    /// A file read to its end that will not grow (a CloudFront `.gz`).
    #[serde(default)]
    pub done: bool,
    /// Last time this file was seen, ms since the epoch (for forgetting old entries).
    pub seen_ms: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Checkpoints {
    /// By input and fingerprint: `input/0123456789abcdef` (two inputs may read one file).
    pub files: BTreeMap<String, FileState>,
}

pub fn file_key(input: &str, fp: u64) -> String {
    format!("{input}/{fp:016x}")
}

/// Entries not seen for this long are forgotten.
const FORGET_MS: u64 = 7 * 24 * 3600 * 1000;

impl Checkpoints {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("checkpoints.json")
    }

    pub fn load(state_dir: &Path) -> Result<Checkpoints, String> {
        let p = Self::path(state_dir);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| format!("checkpoint file {} is unreadable: {e}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Checkpoints::default()),
            Err(e) => Err(format!("cannot read {}: {e}", p.display())),
        }
    }

    pub fn save(&mut self, state_dir: &Path, now_ms: u64) -> Result<(), String> {
        self.files
            .retain(|_, f| now_ms.saturating_sub(f.seen_ms) < FORGET_MS);
        let data = serde_json::to_vec(self).map_err(|e| e.to_string())?;
        let p = Self::path(state_dir);
        edgelog_wal::state_file::write_atomic(&p, &data)
            .map_err(|e| format!("cannot save {}: {e}", p.display()))
    }
}
