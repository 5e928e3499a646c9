//! A sink that appends sampled records to a local file, one line each (NDJSON with
//! CloudFront's names, or CloudFront's real-time TSV): for a local tail, `jq`, or a log
//! shipper that reads files.
//!
//! Exactly once across crashes: lines are buffered, written and fsynced together, and
//! then `{data_dir}/state/{name}-file.json` records the file's length and the last entry
//! in it. A restart cuts the file back to that length (dropping a write whose record was
//! not saved) and the log hands the rest again.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use async_trait::async_trait;
use edgelog_collector::state_file::{blocking, write_atomic};
use edgelog_collector::{Batch, Place, Seq, Sink, SinkConfig, SinkContext, SinkError};
use serde::{Deserialize, Serialize};

use crate::format::{MessageFormat, Selection};

/// Settings of a `type = "file"` sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileSinkConfig {
    pub enabled: bool,
    /// The file (a regular file; a character device such as `/dev/null` is written
    /// without fsync); a relative path is under the data dir.
    pub path: PathBuf,
    /// `json` (one object per line) or `tsv`.
    pub format: MessageFormat,
    /// Fields to write, in any CloudFront or Athena spelling; empty writes every field.
    pub fields: Vec<String>,
    /// Lines are written and fsynced once this many bytes wait, and every tick.
    pub buffer_bytes: usize,
}

impl Default for FileSinkConfig {
    fn default() -> Self {
        FileSinkConfig {
            enabled: true,
            path: PathBuf::new(),
            format: MessageFormat::Json,
            fields: Vec::new(),
            buffer_bytes: 1 << 20,
        }
    }
}

impl SinkConfig for FileSinkConfig {
    fn build(&self, cx: &SinkContext) -> Result<Box<dyn Sink>, SinkError> {
        let selection = Selection::parse(&self.fields)
            .map_err(|n| SinkError::misconfigured(format!("unknown field {n:?}")))?;
        let state = cx
            .data_dir
            .join("state")
            .join(format!("{}-file.json", cx.name));
        let sink = FileSink::open(
            cx.data_dir.join(&self.path),
            state,
            self.format,
            selection,
            self.buffer_bytes,
        )?;
        Ok(Box::new(sink))
    }

    fn describe(&self, cx: &SinkContext) -> String {
        format!(
            "{} lines in {}",
            self.format.as_str(),
            cx.data_dir.join(&self.path).display()
        )
    }

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate(&self, k: &str) -> Result<(), String> {
        if self.path.as_os_str().is_empty() {
            return Err(format!("{k}.path: must be set"));
        }
        if !(1..=1 << 30).contains(&self.buffer_bytes) {
            return Err(format!(
                "{k}.buffer_bytes: must be from 1 to 1073741824, got {}",
                self.buffer_bytes
            ));
        }
        Selection::parse(&self.fields).map_err(|n| format!("{k}.fields: unknown field {n:?}"))?;
        Ok(())
    }

    fn place(&self) -> Option<Place> {
        Some(Place::Local {
            key: "path",
            path: self.path.clone(),
        })
    }
}

/// What the file holds for sure: its length and the last entry in it.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
struct Written {
    bytes: u64,
    seq: Seq,
}

pub struct FileSink {
    file: File,
    /// A regular file (fsynced); else a character device such as `/dev/null` or
    /// `/dev/full`, which has nothing to fsync or cut.
    durable: bool,
    path: PathBuf,
    state: PathBuf,
    format: MessageFormat,
    selection: Selection,
    limit: usize,
    written: Written,
    /// Lines not yet written, and the last entry they hold.
    buf: Vec<u8>,
    buffered: Seq,
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> SinkError {
    move |e| SinkError::unavailable(what).with_source(e)
}

impl FileSink {
    fn open(
        path: PathBuf,
        state: PathBuf,
        format: MessageFormat,
        selection: Selection,
        limit: usize,
    ) -> Result<FileSink, SinkError> {
        let recorded: Option<Written> = match std::fs::read(&state) {
            Ok(b) => Some(serde_json::from_slice(&b).map_err(|e| {
                SinkError::misconfigured(format!("cannot read {}", state.display())).with_source(e)
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(format!("cannot read {}", state.display()))(e)),
        };
        for dir in [path.parent(), state.parent()].into_iter().flatten() {
            std::fs::create_dir_all(dir)
                .map_err(io_err(format!("cannot create {}", dir.display())))?;
        }
        // Checked before opening: opening a FIFO for writing would wait for a reader.
        if let Ok(m) = std::fs::metadata(&path)
            && !(m.is_file() || m.file_type().is_char_device())
        {
            return Err(SinkError::misconfigured(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(format!("cannot open {}", path.display())))?;
        let meta = file
            .metadata()
            .map_err(io_err(format!("cannot read {}", path.display())))?;
        let durable = meta.is_file();
        let len = if durable { meta.len() } else { 0 };
        let written = match recorded {
            // A device: nothing to cut or measure.
            Some(w) if !durable => Written { bytes: 0, ..w },
            // Written but not recorded before a crash: the log hands those entries again.
            Some(w) if len > w.bytes => {
                file.set_len(w.bytes)
                    .map_err(io_err(format!("cannot cut {} back", path.display())))?;
                w
            }
            Some(w) if len < w.bytes => {
                // Moved away or cut by someone else: a new file.
                tracing::warn!(path = %path.display(), "file is shorter than what was written to it; going on from its end");
                Written { bytes: len, ..w }
            }
            Some(w) => w,
            // Not ours (another program's, or this sink's under another name): never cut
            // what edgelog did not write; append after it.
            None => {
                if len > 0 {
                    tracing::warn!(path = %path.display(), bytes = len, "file sink appends to a file it did not write");
                }
                Written { bytes: len, seq: 0 }
            }
        };
        Ok(FileSink {
            file,
            durable,
            path,
            state,
            format,
            selection,
            limit,
            buffered: written.seq,
            written,
            buf: Vec::new(),
        })
    }

    /// Writes and fsyncs the buffered lines, then records it. On failure the file is cut
    /// back to what was recorded and the lines stay buffered for the retry.
    fn persist(&mut self) -> Result<(), SinkError> {
        if self.buffered <= self.written.seq {
            return Ok(());
        }
        if self.buf.is_empty() {
            // Nothing sampled since: a replay of those entries writes nothing either.
            self.written.seq = self.buffered;
            return Ok(());
        }
        // Where this write starts: the file as it is (someone may have cut it).
        let at = match blocking(|| self.file.metadata()) {
            Ok(m) if self.durable => m.len(),
            Ok(_) => 0,
            Err(e) => {
                return Err(io_err(format!("cannot read {}", self.path.display()))(e));
            }
        };
        if at != self.written.bytes {
            tracing::warn!(path = %self.path.display(), expected = self.written.bytes, found = at, "file changed size outside edgelog; going on from its end");
        }
        let result = blocking(|| {
            self.file.write_all(&self.buf).and_then(|()| {
                if self.durable {
                    self.file.sync_data()
                } else {
                    Ok(())
                }
            })
        });
        if let Err(e) = result {
            if self.durable {
                let _ = blocking(|| self.file.set_len(at));
            }
            return Err(io_err(format!("cannot write to {}", self.path.display()))(
                e,
            ));
        }
        let next = Written {
            bytes: if self.durable {
                at + self.buf.len() as u64
            } else {
                0
            },
            seq: self.buffered,
        };
        let json = serde_json::to_vec(&next)
            .map_err(|e| SinkError::unavailable("cannot encode the file's state").with_source(e))?;
        if let Err(e) = write_atomic(&self.state, &json) {
            if self.durable {
                let _ = blocking(|| self.file.set_len(at));
            }
            return Err(io_err(format!("cannot save {}", self.state.display()))(e));
        }
        self.written = next;
        self.buf.clear();
        Ok(())
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn write(&mut self, batch: &Batch<'_>) -> Result<(), SinkError> {
        if batch.seq() <= self.buffered {
            return Ok(());
        }
        for k in batch.records() {
            self.selection.encode(self.format, k.record, &mut self.buf);
            self.buf.push(b'\n');
        }
        self.buffered = batch.seq();
        if self.buf.len() >= self.limit {
            self.persist()?;
        }
        Ok(())
    }

    async fn tick(&mut self) -> Result<(), SinkError> {
        self.persist()
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.persist()
    }

    fn delivered(&self) -> Seq {
        self.written.seq
    }
}
