//! An open standard-log file: its rows waiting in memory and its row groups in the spool,
//! encoded a few at a time off the sink's task.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use edgelog_collector::{Seq, SinkError};
use edgelog_record::Record;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::run::Chunk;
use crate::schema::Columns;
use crate::sink::StandardLogError;
use crate::spool::{self, Spool};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PartitionKey {
    pub(crate) distribution: String,
    pub(crate) hour_ms: i64,
}

/// A file being filled: rows in memory, earlier row groups in the spool.
pub(crate) struct OpenFile {
    pub(crate) columns: Columns,
    /// Rows taken out of `columns` whose row group could not be written (the spool's
    /// disk was full, say), with the memory they hold; written first on the next try.
    pub(crate) unwritten: Vec<(RecordBatch, usize)>,
    /// Row groups in the spool, or on their way there, in order.
    pub(crate) parts: Vec<Part>,
    /// Rows written with other files' into shared runs, gathered when the file closes.
    pub(crate) shared: Vec<Chunk>,
    /// Its slot in the sink's staging while rows of it are there (see `stage`), and the
    /// bytes they hold.
    pub(crate) stage_slot: Option<u32>,
    pub(crate) staged_bytes: usize,
    /// Bytes of the row groups in the spool.
    pub(crate) part_bytes: u64,
    pub(crate) rows: usize,
    pub(crate) first_seq: Seq,
    /// Entry of the last row taken.
    pub(crate) last_seq: Seq,
    pub(crate) opened: Instant,
    pub(crate) sample_rate: f64,
}

/// A row group in the spool, or being encoded there on the blocking pool.
pub(crate) enum Part {
    Done(PathBuf),
    Encoding {
        path: PathBuf,
        /// Memory its rows hold until encoded.
        bytes: usize,
        job: JoinHandle<(Result<u64, ParquetError>, RecordBatch)>,
    },
}

/// What encodes row groups: a few at a time, off the sink's task, so a file's rows are
/// encoded while the sink takes the next entries (and both cores work while it drains).
pub(crate) struct Encoders {
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) schema: SchemaRef,
    pub(crate) props: Arc<WriterProperties>,
}

/// The cores this process may use (1 when unknown), asked once.
pub(crate) fn cores() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Row groups encoded at once: one per core, two to four (each holds a row group and
/// its encoder's buffers; more than the cores adds memory, not speed).
pub(crate) fn encoders() -> usize {
    cores().clamp(2, 4)
}

impl OpenFile {
    /// Bytes the file holds in memory (its staged rows are counted with the staging).
    pub(crate) fn memory(&self) -> usize {
        let encoding: usize = self
            .parts
            .iter()
            .map(|p| match p {
                Part::Encoding { bytes, .. } => *bytes,
                Part::Done(_) => 0,
            })
            .sum();
        self.waiting_bytes() + encoding
    }

    /// Bytes of the rows waiting in its own builders and in `unwritten`.
    pub(crate) fn waiting_bytes(&self) -> usize {
        self.columns.bytes() + self.unwritten.iter().map(|u| u.1).sum::<usize>()
    }

    /// Rows waiting in its own builders and in `unwritten`.
    pub(crate) fn waiting_rows(&self) -> usize {
        self.columns.len() + self.unwritten.iter().map(|u| u.0.num_rows()).sum::<usize>()
    }

    /// About the size the file would have if closed now (rows not encoded yet counted
    /// as they are in memory: more than they will be).
    pub(crate) fn size(&self) -> u64 {
        self.part_bytes + (self.memory() + self.staged_bytes) as u64
    }

    /// Takes the rows waiting (those whose write failed before first) as batches, not
    /// sorted by time (they are sorted when gathered).
    pub(crate) fn take_waiting(
        &mut self,
        key: &PartitionKey,
        schema: &SchemaRef,
    ) -> Result<Vec<RecordBatch>, SinkError> {
        // The rows in the builders first: if they cannot be taken, nothing is.
        let last = match self.columns.is_empty() {
            true => None,
            false => Some(
                self.columns
                    .finish_as(schema, self.sample_rate, false)
                    .map_err(|source| batch_error(key, source))?,
            ),
        };
        let mut batches: Vec<RecordBatch> = self.unwritten.drain(..).map(|u| u.0).collect();
        batches.extend(last);
        Ok(batches)
    }

    /// Puts back rows [`take_waiting`](Self::take_waiting) took, for the next try.
    pub(crate) fn put_back(&mut self, batches: Vec<RecordBatch>) {
        for b in batches {
            let bytes = batch_bytes(&b);
            self.unwritten.push((b, bytes));
        }
    }

    /// Starts encoding the rows waiting as one row group (and first any whose write
    /// failed before). Waits only for an encoder to be free.
    pub(crate) async fn spill(
        &mut self,
        key: &PartitionKey,
        spool: &Spool,
        enc: &Encoders,
    ) -> Result<(), SinkError> {
        loop {
            let (batch, bytes) = match self.unwritten.pop() {
                Some(u) => u,
                None if self.columns.is_empty() => return Ok(()),
                None => {
                    let bytes = self.columns.bytes();
                    let batch = self
                        .columns
                        .finish(&enc.schema, self.sample_rate)
                        .map_err(|source| batch_error(key, source))?;
                    (batch, bytes)
                }
            };
            let permit = enc
                .slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| SinkError::unavailable("the encoders are gone").with_source(e))?;
            let path = spool.path("rows");
            let (to, schema, props) = (path.clone(), enc.schema.clone(), enc.props.clone());
            let job = tokio::task::spawn_blocking(move || {
                let r = spool::write_part(&to, &schema, &props, &batch);
                drop(permit);
                (r, batch)
            });
            self.parts.push(Part::Encoding { path, bytes, job });
        }
    }

    /// Waits for every row group under way (all of them with `all`, else only those
    /// already finished). A failed one's rows go back to `unwritten` for the next try.
    pub(crate) async fn settle(&mut self, key: &PartitionKey, all: bool) -> Result<(), SinkError> {
        let mut failed = None;
        let mut kept = Vec::with_capacity(self.parts.len());
        for part in std::mem::take(&mut self.parts) {
            let Part::Encoding { path, bytes, job } = part else {
                kept.push(part);
                continue;
            };
            if !all && !job.is_finished() {
                kept.push(Part::Encoding { path, bytes, job });
                continue;
            }
            match job.await {
                Ok((Ok(size), _)) => {
                    self.part_bytes += size;
                    kept.push(Part::Done(path));
                }
                Ok((Err(e), batch)) => {
                    self.unwritten.push((batch, bytes));
                    failed.get_or_insert((path, e));
                }
                // An encoder that panicked: the sink stops the same way (its records
                // stay in the log).
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        self.parts = kept;
        match failed {
            None => Ok(()),
            Some((path, e)) => Err(SinkError::unavailable(format!(
                "cannot write to the spool {}",
                path.display()
            ))
            .with_source(StandardLogError::Encode {
                partition: partition_name(key),
                source: e,
            })),
        }
    }

    /// The row groups' files, once every one is written.
    pub(crate) fn part_paths(&self) -> Vec<PathBuf> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Done(path) => Some(path.clone()),
                Part::Encoding { .. } => None,
            })
            .collect()
    }
}

/// The bytes of a batch's rows: a slice of a larger batch counts its own rows only (the
/// slices of one batch add up to it).
pub(crate) fn batch_bytes(b: &RecordBatch) -> usize {
    b.columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
        .sum()
}

fn batch_error(key: &PartitionKey, source: arrow_schema::ArrowError) -> SinkError {
    SinkError::misconfigured("cannot build a parquet batch").with_source(StandardLogError::Batch {
        partition: partition_name(key),
        source,
    })
}

fn partition_name(key: &PartitionKey) -> String {
    format!("{}/{}", key.distribution, key.hour_ms)
}

pub(crate) fn push(f: &mut OpenFile, r: &Record, seq: Seq) {
    f.columns.push(r);
    f.rows += 1;
    f.last_seq = seq;
}
