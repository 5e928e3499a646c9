//! The dead-letter store: records a sink can never deliver (a message above the broker's
//! size limit, a record the encoder refuses) go here, so they don't stall the sink.
//!
//! Files are NDJSON under `{data_dir}/dead-letter/{sink}/`: each line is the record as
//! the ingest API takes it, with a `dead_letter` object (sink, reason, log entry) in front
//! that ingest ignores, so a file can be posted again as it is (`edgelog edge --replay`).
//! The store is bounded: once full, the sink waits (degraded, records kept in the log)
//! until an operator moves files away, rather than dropping anything.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use edgelog_record::Record;

use crate::sink::SinkError;
use crate::state_file::{blocking, sync_dir};
use crate::wal::Seq;

/// A file is closed and a new one started past this size.
const FILE_BYTES: u64 = 64 << 20;

/// Where one sink's dead letters go. Cheap to clone.
#[derive(Clone)]
pub struct DeadLetters {
    inner: Arc<Inner>,
}

struct Inner {
    sink: String,
    dir: PathBuf,
    max_bytes: u64,
    records: AtomicU64,
    files: Mutex<Files>,
}

struct Files {
    /// Bytes in the directory's files, counted at open and on every write, and again
    /// (at most every second) while the store looks full: files an operator moved
    /// away make room.
    total: u64,
    current: Option<(File, PathBuf, u64)>,
    recounted: Option<std::time::Instant>,
}

/// Bytes of the files in `dir`.
fn dir_bytes(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for e in fs::read_dir(dir)? {
        total += e?.metadata()?.len();
    }
    Ok(total)
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("dir", &self.inner.dir)
            .field("records", &self.records())
            .finish()
    }
}

impl DeadLetters {
    /// Opens (creating) `dir` for `sink`'s dead letters, at most `max_bytes` in all.
    pub fn open(dir: &Path, sink: &str, max_bytes: u64) -> io::Result<DeadLetters> {
        fs::create_dir_all(dir)?;
        let total = dir_bytes(dir)?;
        Ok(DeadLetters {
            inner: Arc::new(Inner {
                sink: sink.to_owned(),
                dir: dir.to_owned(),
                max_bytes,
                records: AtomicU64::new(0),
                files: Mutex::new(Files {
                    total,
                    current: None,
                    recounted: None,
                }),
            }),
        })
    }

    /// Records stored since start.
    pub fn records(&self) -> u64 {
        self.inner.records.load(Ordering::Relaxed)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Stores records that can never be delivered, durably, before the sink moves on.
    /// `label` is a short, fixed reason for metrics (`message_too_large`); `reason` the
    /// full one. An error means nothing was stored: the sink must retry.
    pub fn put(
        &self,
        seq: Seq,
        label: &'static str,
        reason: &str,
        records: &[&Record],
    ) -> Result<(), SinkError> {
        let mut lines = Vec::new();
        let mut json = Vec::new();
        for r in records {
            json.clear();
            edgelog_record::write_json(r, &mut json);
            self.line(&mut lines, seq, reason, &json);
        }
        self.store(label, reason, records.len() as u64, &lines)
    }

    /// Like [`DeadLetters::put`] for a message already encoded: a JSON object is kept as
    /// the record; anything else (a TSV line) goes under `message`.
    pub fn put_message(
        &self,
        seq: Seq,
        label: &'static str,
        reason: &str,
        message: &[u8],
    ) -> Result<(), SinkError> {
        let mut lines = Vec::new();
        if message.first() == Some(&b'{')
            && serde_json::from_slice::<serde_json::Value>(message).is_ok()
        {
            self.line(&mut lines, seq, reason, message);
        } else {
            let wrapped = serde_json::json!({ "message": String::from_utf8_lossy(message) });
            let body = serde_json::to_vec(&wrapped).unwrap_or_default();
            self.line(&mut lines, seq, reason, &body);
        }
        self.store(label, reason, 1, &lines)
    }

    /// `{"dead_letter":{...},` + the object's members + newline.
    fn line(&self, out: &mut Vec<u8>, seq: Seq, reason: &str, object: &[u8]) {
        let head = serde_json::json!({ "sink": self.inner.sink, "reason": reason, "entry": seq });
        out.extend_from_slice(b"{\"dead_letter\":");
        out.extend_from_slice(head.to_string().as_bytes());
        match object.get(1..) {
            Some(rest) if rest.first() != Some(&b'}') => {
                out.push(b',');
                out.extend_from_slice(rest);
            }
            _ => out.push(b'}'),
        }
        out.push(b'\n');
    }

    fn store(
        &self,
        label: &'static str,
        reason: &str,
        count: u64,
        lines: &[u8],
    ) -> Result<(), SinkError> {
        let i = &self.inner;
        blocking(|| {
            let mut files = i.files.lock().unwrap_or_else(|p| p.into_inner());
            let over = |f: &Files| f.total.saturating_add(lines.len() as u64) > i.max_bytes;
            if over(&files)
                && files
                    .recounted
                    .is_none_or(|t| t.elapsed() > std::time::Duration::from_secs(1))
            {
                files.recounted = Some(std::time::Instant::now());
                if let Ok(n) = dir_bytes(&i.dir) {
                    files.total = n;
                    // The file being appended to may have been moved away too.
                    if files.current.as_ref().is_some_and(|(_, p, _)| !p.exists()) {
                        files.current = None;
                    }
                }
            }
            if over(&files) {
                return Err(SinkError::unavailable(format!(
                    "dead-letter store {} is full ({} of {} bytes); move its files away to go on \
                     (the records wait in the write-ahead log)",
                    i.dir.display(),
                    files.total,
                    i.max_bytes
                )));
            }
            self.append(&mut files, lines).map_err(|e| {
                SinkError::unavailable(format!(
                    "cannot write to the dead-letter store {}",
                    i.dir.display()
                ))
                .with_source(e)
            })
        })?;
        i.records.fetch_add(count, Ordering::Relaxed);
        metrics::counter!("edgelog_dead_letter_records_total", "sink" => i.sink.clone(), "reason" => label)
            .increment(count);
        tracing::warn!(sink = %i.sink, records = count, %reason, dir = %i.dir.display(), "records moved to the dead-letter store");
        Ok(())
    }

    fn append(&self, files: &mut Files, lines: &[u8]) -> io::Result<()> {
        if files
            .current
            .as_ref()
            .is_none_or(|(_, _, n)| *n + lines.len() as u64 > FILE_BYTES)
        {
            let ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            let path = self.inner.dir.join(format!("{ms:013}.ndjson"));
            let f = OpenOptions::new().create(true).append(true).open(&path)?;
            let len = f.metadata()?.len();
            sync_dir(&self.inner.dir)?;
            files.current = Some((f, path, len));
        }
        let Some((f, path, n)) = files.current.as_mut() else {
            return Err(io::Error::other("no dead-letter file"));
        };
        let result = f.write_all(lines).and_then(|()| f.sync_data());
        if let Err(e) = result {
            // Cut what reached the file, so a retry does not leave half a line behind.
            if f.set_len(*n).and_then(|()| f.sync_all()).is_err() {
                tracing::error!(file = %path.display(), "cannot cut a failed dead-letter write");
                files.current = None;
            }
            return Err(e);
        }
        *n += lines.len() as u64;
        files.total += lines.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> Record {
        Record {
            timestamp_ms: 1_700_000_000_000,
            distribution_id: "E1".into(),
            x_edge_request_id: Some(id.into()),
            sc_status: Some(200),
            ..Record::default()
        }
    }

    fn lines(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .expect("ls")
            .map(|e| e.expect("entry").path())
            .collect();
        names.sort();
        names
            .iter()
            .flat_map(|p| {
                fs::read_to_string(p)
                    .expect("read")
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn dead_letters_parse_back_as_the_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dl = DeadLetters::open(dir.path(), "realtime", 1 << 20).expect("open");
        let (a, b) = (rec("a"), rec("b"));
        dl.put(
            7,
            "message_too_large",
            "message of 2 MB is above 1 MB",
            &[&a, &b],
        )
        .expect("put");
        dl.put_message(8, "message_too_large", "too big", b"E1\t200\t-")
            .expect("put");
        assert_eq!(dl.records(), 3);
        let got = lines(dir.path());
        assert_eq!(got.len(), 3);
        let mut keys = edgelog_record::KeyCache::default();
        let back = edgelog_record::parse_json_line(got[0].as_bytes(), None, &mut keys)
            .expect("a dead letter is a record ingest takes");
        assert_eq!(back, a);
        let v: serde_json::Value = serde_json::from_str(&got[2]).expect("json");
        assert_eq!(v["dead_letter"]["entry"], 8);
        assert_eq!(v["message"], "E1\t200\t-");
    }

    #[test]
    fn a_full_store_refuses_and_keeps_what_it_has() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dl = DeadLetters::open(dir.path(), "standard", 350).expect("open");
        dl.put(1, "encode_error", "x", &[&rec("a")]).expect("put");
        let err = dl
            .put(2, "encode_error", "x", &[&rec("b"), &rec("c")])
            .expect_err("over the bound");
        assert!(err.to_string().contains("is full"), "{err}");
        assert_eq!(lines(dir.path()).len(), 1);
        // Reopening counts what is there.
        let again = DeadLetters::open(dir.path(), "standard", 350).expect("open");
        assert!(
            again
                .put(3, "encode_error", "x", &[&rec("d"), &rec("e")])
                .is_err()
        );
        // Files moved away make room, without a restart: a full store recounts (at most
        // every second).
        for e in fs::read_dir(dir.path()).expect("ls") {
            fs::remove_file(e.expect("entry").path()).expect("rm");
        }
        std::thread::sleep(std::time::Duration::from_millis(1100));
        again
            .put(4, "encode_error", "x", &[&rec("f")])
            .expect("room again");
        assert_eq!(lines(dir.path()).len(), 1);
    }
}
