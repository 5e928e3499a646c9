//! Batches the collector could not take, kept on disk until it can: one file per batch
//! (a JSON header line, then the body), written to a temporary name, fsync'd and renamed,
//! so a crash leaves whole batches or nothing. Bounded in bytes.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;

use crate::error::ClientError;
use crate::post::Batch;

const EXT: &str = "batch";

#[derive(Debug)]
struct State {
    bytes: u64,
    next: u64,
}

/// A directory of spooled batches, oldest first.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    /// Held while open: one client per spool directory.
    _lock: File,
}

fn io(path: &Path, what: &str) -> impl FnOnce(std::io::Error) -> ClientError {
    let msg = format!("spool: cannot {what} {}", path.display());
    move |e| ClientError::invalid(format!("{msg}: {e}")).with_source(e)
}

impl Spool {
    /// Opens (creating) `dir`; batches left by an earlier run are kept and sent first.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, ClientError> {
        fs::create_dir_all(dir).map_err(io(dir, "create"))?;
        let lock_path = dir.join("lock");
        let lock = File::create(&lock_path).map_err(io(&lock_path, "create"))?;
        lock.try_lock().map_err(|_| {
            ClientError::invalid(format!(
                "spool {} is used by another client (its lock is held)",
                dir.display()
            ))
        })?;
        let mut bytes = 0;
        let mut next = 0;
        for e in fs::read_dir(dir).map_err(io(dir, "read"))? {
            let e = e.map_err(io(dir, "read"))?;
            let p = e.path();
            // Numbers of set-aside files (`.bad`, `.refused`) are not given out again.
            if let Some(n) = seq_of(&p) {
                next = next.max(n + 1);
            }
            match p.extension().and_then(|x| x.to_str()) {
                Some(EXT) => {
                    bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                }
                // A batch whose write a crash interrupted: it was never acknowledged to
                // anyone, and its source still has it.
                Some("tmp") => {
                    let _ = fs::remove_file(&p);
                }
                _ => {}
            }
        }
        Ok(Spool {
            dir: dir.to_owned(),
            max_bytes,
            state: Mutex::new(State { bytes, next }),
            _lock: lock,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Batches waiting.
    pub fn len(&self) -> usize {
        self.list().len()
    }

    pub fn is_empty(&self) -> bool {
        self.list().is_empty()
    }

    fn list(&self) -> Vec<PathBuf> {
        let mut v: Vec<_> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().and_then(|x| x.to_str()) == Some(EXT))
            .collect();
        v.sort();
        v
    }

    /// Writes `batch` durably. Refused when it would take the spool past its bound.
    pub fn push(&self, batch: &Batch) -> Result<(), ClientError> {
        let mut header = serde_json::to_vec(batch)
            .map_err(|e| ClientError::invalid("spool: cannot encode a batch").with_source(e))?;
        header.push(b'\n');
        let len = (header.len() + batch.body.len()) as u64;
        let mut st = self.lock();
        if st.bytes.saturating_add(len) > self.max_bytes {
            return Err(ClientError::invalid(format!(
                "spool full: {} of {} bytes used, batch of {len} bytes not spooled",
                st.bytes, self.max_bytes
            )));
        }
        let seq = st.next;
        let path = self.dir.join(format!("{seq:020}.{EXT}"));
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&header)?;
            f.write_all(&batch.body)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(io(&path, "write")(e));
        }
        st.next += 1;
        st.bytes += len;
        Ok(())
    }

    /// The oldest batch, with the path to [`Spool::remove`] once delivered. A file that
    /// cannot be read back is renamed `*.bad`, logged, and skipped.
    pub fn oldest(&self) -> Option<(PathBuf, Batch)> {
        for path in self.list() {
            match read_batch(&path) {
                Ok(b) => return Some((path, b)),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "unreadable spooled batch set aside");
                    let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    let _ = fs::rename(&path, path.with_extension("bad"));
                    let mut st = self.lock();
                    st.bytes = st.bytes.saturating_sub(len);
                }
            }
        }
        None
    }

    /// Renames a batch that will never be delivered to `*.EXT`, out of the queue.
    pub fn set_aside(&self, path: &Path, ext: &str) -> Result<(), ClientError> {
        let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        fs::rename(path, path.with_extension(ext)).map_err(io(path, "rename"))?;
        let mut st = self.lock();
        st.bytes = st.bytes.saturating_sub(len);
        Ok(())
    }

    /// Deletes a delivered batch.
    pub fn remove(&self, path: &Path) -> Result<(), ClientError> {
        let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        fs::remove_file(path).map_err(io(path, "remove"))?;
        let mut st = self.lock();
        st.bytes = st.bytes.saturating_sub(len);
        Ok(())
    }
}

fn seq_of(p: &Path) -> Option<u64> {
    p.file_stem()?.to_str()?.parse().ok()
}

fn read_batch(path: &Path) -> std::io::Result<Batch> {
    let mut r = BufReader::new(File::open(path)?);
    let mut header = Vec::new();
    r.read_until(b'\n', &mut header)?;
    let mut batch: Batch = serde_json::from_slice(&header)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut body = Vec::new();
    r.read_to_end(&mut body)?;
    batch.body = Bytes::from(body);
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::post::Format;

    fn batch(n: u64) -> Batch {
        Batch {
            body: Bytes::from(format!("line {n}\nsecond\n")),
            format: Format::W3c,
            distribution: Some("E1".into()),
            records: 2,
            key: Some(format!("k{n}")),
        }
    }

    #[test]
    fn batches_come_back_oldest_first_across_reopen() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = Spool::open(dir.path(), 1 << 20).unwrap_or_else(|e| panic!("{e}"));
        for n in 0..3 {
            s.push(&batch(n)).unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(
            Spool::open(dir.path(), 1 << 20).is_err(),
            "a second client on one spool"
        );
        drop(s);
        // A torn write left behind by a crash, and a stray file: ignored.
        fs::write(dir.path().join("00000000000000000099.tmp"), b"{").ok();
        fs::write(dir.path().join("notes.txt"), b"x").ok();
        let s = Spool::open(dir.path(), 1 << 20).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.len(), 3);
        assert!(!dir.path().join("00000000000000000099.tmp").exists());
        let (p, b) = s.oldest().unwrap_or_else(|| panic!("empty"));
        assert_eq!(b.key.as_deref(), Some("k0"));
        assert_eq!(&b.body[..], b"line 0\nsecond\n");
        assert_eq!(b.distribution.as_deref(), Some("E1"));
        s.remove(&p).unwrap_or_else(|e| panic!("{e}"));
        s.push(&batch(7)).unwrap_or_else(|e| panic!("{e}"));
        let keys: Vec<_> = std::iter::from_fn(|| {
            let (p, b) = s.oldest()?;
            s.remove(&p).ok()?;
            b.key
        })
        .collect();
        assert_eq!(keys, ["k1", "k2", "k7"]);
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn the_bound_is_kept_and_a_corrupt_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = Spool::open(dir.path(), 200).unwrap_or_else(|e| panic!("{e}"));
        s.push(&batch(1)).unwrap_or_else(|e| panic!("{e}"));
        let mut refused = 0;
        for n in 2..10 {
            refused += usize::from(s.push(&batch(n)).is_err());
        }
        assert!(refused > 0, "a 200-byte spool took every batch");
        assert!(s.bytes() <= 200);
        fs::write(dir.path().join("00000000000000000000.batch"), b"not json\n").ok();
        let (_, b) = s.oldest().unwrap_or_else(|| panic!("empty"));
        assert_ne!(b.key.as_deref(), None);
        assert!(dir.path().join("00000000000000000000.bad").exists());
        // A zero bound takes nothing.
        let z = Spool::open(&dir.path().join("z"), 0).unwrap_or_else(|e| panic!("{e}"));
        assert!(z.push(&batch(1)).is_err());
    }
}
