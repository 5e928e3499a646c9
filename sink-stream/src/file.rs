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
use std::path::PathBuf;

use async_trait::async_trait;
use edgelog_collector::state_file::{blocking, write_atomic};
use edgelog_collector::{Batch, Seq, Sink, SinkConfig, SinkContext, SinkError};
use serde::{Deserialize, Serialize};

use crate::format::{MessageFormat, Selection};

/// Settings of a `type = "file"` sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileSinkConfig {
    pub enabled: bool,
    /// The file; a relative path is under the data dir.
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
}

/// What the file holds for sure: its length and the last entry in it.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
struct Written {
    bytes: u64,
    seq: Seq,
}

pub struct FileSink {
    file: File,
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
        let mut written: Written = match std::fs::read(&state) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                SinkError::misconfigured(format!("cannot read {}", state.display())).with_source(e)
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Written::default(),
            Err(e) => return Err(io_err(format!("cannot read {}", state.display()))(e)),
        };
        for dir in [path.parent(), state.parent()].into_iter().flatten() {
            std::fs::create_dir_all(dir)
                .map_err(io_err(format!("cannot create {}", dir.display())))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(format!("cannot open {}", path.display())))?;
        let len = file
            .metadata()
            .map_err(io_err(format!("cannot read {}", path.display())))?
            .len();
        if len > written.bytes {
            // Written but not recorded before a crash: the log hands those entries again.
            file.set_len(written.bytes)
                .map_err(io_err(format!("cannot cut {} back", path.display())))?;
        } else if len < written.bytes {
            // Moved away or cut by someone else: a new file.
            tracing::warn!(path = %path.display(), "file is shorter than what was written to it; going on from its end");
            written.bytes = len;
        }
        Ok(FileSink {
            file,
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
        let at = self.written.bytes;
        let result = blocking(|| {
            self.file
                .write_all(&self.buf)
                .and_then(|()| self.file.sync_data())
        });
        if let Err(e) = result {
            let _ = blocking(|| self.file.set_len(at));
            return Err(io_err(format!("cannot write to {}", self.path.display()))(
                e,
            ));
        }
        let next = Written {
            bytes: at + self.buf.len() as u64,
            seq: self.buffered,
        };
        let json = serde_json::to_vec(&next)
            .map_err(|e| SinkError::unavailable("cannot encode the file's state").with_source(e))?;
        if let Err(e) = write_atomic(&self.state, &json) {
            let _ = blocking(|| self.file.set_len(at));
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
