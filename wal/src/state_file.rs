//! Small state files (sink cursors, upload and publish watermarks), written atomically.
//!
//! One helper for every state file, so each gets the same care: write a temporary file,
//! fsync it, rename it over the old one, fsync the directory. A crash or a full disk
//! leaves either the old content or the new, never a mix; a failed fsync is reported,
//! never taken as success (the kernel may have dropped the dirty pages).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Replaces `path` with `data` atomically and durably. Blocking: on a multi-thread tokio
/// runtime it steps off the async worker first.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    blocking(|| write_atomic_now(path, data))
}

fn write_atomic_now(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))
    })();
    if result.is_err() {
        // Don't leave a half-written temporary file taking space on a full disk.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes a directory's entries (creations, renames, deletions) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()
}

/// Runs blocking file work where it doesn't stall other tasks: a multi-thread runtime
/// moves them off this worker; inline elsewhere.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_content_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("cursor");
        write_atomic(&p, b"1").expect("write");
        write_atomic(&p, b"22").expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"22");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn a_failed_write_keeps_the_old_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("cursor");
        write_atomic(&p, b"old").expect("write");
        // The temporary file's place is taken by a directory: creating it fails.
        fs::create_dir(p.with_extension("tmp")).expect("mkdir");
        assert!(write_atomic(&p, b"new").is_err());
        assert_eq!(fs::read(&p).expect("read"), b"old");
    }
}
