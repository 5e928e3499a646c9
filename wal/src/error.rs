//! The log's one error type.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log is full ({used} of {max} bytes used); retry later")]
    Full { used: u64, max: u64 },
    #[error("write-ahead log is closed")]
    Closed,
    #[error(
        "write-ahead log in {dir} is in use by another process (is another collector running on this data dir?)"
    )]
    Locked { dir: PathBuf },
    #[error("write-ahead log i/o on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("corrupt write-ahead log entry in {path} at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("cannot encode records for the write-ahead log: {0}")]
    Encode(String),
    #[error("cannot decode a write-ahead log entry: {0}")]
    Decode(String),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Whether an I/O error means the disk (or the quota) is full.
pub fn is_no_space(e: &io::Error) -> bool {
    // ENOSPC and EDQUOT on Linux.
    e.kind() == io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(28 | 122))
}
