//! The standard-log sink: sampled records per (distribution, event hour) become one
//! Parquet object each.
//!
//! Memory holds only rows not yet encoded (Arrow builders, bounded by `max_open_bytes`):
//! a file's row groups are encoded as they fill into the local [`Spool`], and joined into
//! the file at close, which then goes up from disk (or is renamed into place for a local
//! store). A failed upload keeps the file on disk for another try. Uploads run beside the
//! sink's task: it goes on taking entries while closed files go up.
//!
//! Long (about 1,400 lines besides tests): taking rows (into a file's builders or the
//! staging), shared runs, closing files, uploading and the exactly-once watermarks are
//! one bookkeeping that must change together.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use edgelog_collector::state_file::blocking as cpu;
use edgelog_collector::{Batch, DeadLetters, Kept, Seq, Sink, SinkError};
use edgelog_record::{Record, SCHEMA_VERSION, time};
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use tokio::sync::Semaphore;

use crate::config::StandardLogsConfig;
use crate::open_file::{Encoders, OpenFile, Part, PartitionKey, push};
use crate::run::{self, Chunk};
use crate::schema::{self, Columns};
use crate::spool::{self, Spool};
use crate::stage::{self, Staging};

/// A file's rows waiting in memory are encoded as a row group at about this size, by
/// default (`row_group_bytes`).
pub const ROW_GROUP_BYTES: usize = 4 << 20;

/// Under memory pressure, when no file has this many rows waiting, the rows of all go
/// to a shared run instead of row groups of their own (many tiny row groups, or many
/// tiny files, make poor reading).
const MIN_ROW_GROUP_ROWS: usize = 256;

/// Closed files built and uploaded at once, each of another partition; also the uploads
/// whose watermarks are saved together (every partition's, fsynced): with thousands of
/// small files closing together, fewer and larger saves drain faster. A write waits for
/// uploads once more than this many closed files wait for theirs.
const UPLOADS: usize = 64;

/// Local files placed at once (see [`StandardLogSink::places`]).
const PLACES: usize = 4;

/// Shared runs written at once (one per thread), each with at least this many files'
/// rows: a spill of 512 files or more is split.
const RUN_WRITERS: usize = 4;
const RUN_MIN_FILES: usize = 256;

/// With this many files open, rows go to the staging rather than each file's builders
/// (see `stage`): between spills each file holds a few rows.
const STAGE_FILES: usize = 256;

/// A file with this many bytes staged takes its next rows into builders of its own, for
/// row groups of its own as without staging.
const STAGED_FILE_BYTES: usize = 256 << 10;

/// Bytes of files uploaded at once (each counted up to this): many small files go up
/// together, a large one alone (its multipart upload has its own bound).
const UPLOAD_BYTES: u64 = 32 << 20;

/// A closed file waiting for its upload: its last rows go to the spool and its row groups
/// are joined into `local` on the way (each step retried until it succeeds).
struct ReadyFile {
    key: PartitionKey,
    path: ObjectPath,
    file: OpenFile,
    /// Rows taken from a file with shared runs, gathered with them.
    waiting: Vec<arrow_array::RecordBatch>,
    local: Option<(PathBuf, u64)>,
    /// Its rows are on disk or in `waiting` (see [`StandardLogSink::prepare`]).
    prepared: bool,
    /// Names its upload, whose result may come back after others.
    id: u64,
    /// Bytes counted in the uploads' budget while its upload runs.
    in_flight: Option<u64>,
    /// Uploaded; its watermark is saved next.
    uploaded: bool,
}

/// Why a file could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StandardLogError {
    #[error("cannot encode parquet for {partition}: {source}")]
    Encode {
        partition: String,
        source: parquet::errors::ParquetError,
    },
    #[error("cannot build arrow batch for {partition}: {source}")]
    Batch {
        partition: String,
        source: arrow_schema::ArrowError,
    },
}

/// Writes standard logs as Parquet into an object store.
pub struct StandardLogSink {
    cfg: StandardLogsConfig,
    collector_id: String,
    store: Arc<dyn ObjectStore>,
    encoders: Encoders,
    open: HashMap<String, HashMap<i64, OpenFile>>,
    /// Files in `open`.
    open_files: usize,
    ready: Vec<ReadyFile>,
    /// Open files with a row group's worth of rows waiting.
    full: Vec<PartitionKey>,
    /// Open files with row groups being encoded (so a write looks at these, not at all).
    under_way: Vec<PartitionKey>,
    /// Open files that reached `max_rows` or `max_bytes` while taking rows.
    due: Vec<PartitionKey>,
    /// Rows of files (open, or closed and not prepared) taken while many are open.
    staging: Staging,
    stage_files: usize,
    /// Set when rows taken out of the staging were lost (a broken invariant): every call
    /// fails from then on (see [`Self::broke`]).
    broken: Option<String>,
    /// [`memory`](Self::memory) when last summed (over every file), and the bytes of
    /// rows taken since: only taking rows adds memory, so while their sum is under the
    /// bound the files need not be summed again.
    memory_summed: usize,
    memory_taken: usize,
    /// Last entry taken into the buffers.
    taken: Seq,
    watermarks: Watermarks,
    /// Records the encoder refuses go here instead of stalling the sink.
    dead_letters: Option<DeadLetters>,
    /// The directory behind a local store: files are renamed into it from the spool and
    /// fsynced there, since the log forgets its records once a file is reported written.
    local_root: Option<PathBuf>,
    /// Directories under `local_root` whose own entry is on disk (see [`place_local`]).
    synced_dirs: Arc<SyncedDirs>,
    /// Files being placed at once: each is fsyncs on the blocking pool, which ingest
    /// shares.
    places: Arc<Semaphore>,
    /// Closed in the sink's drop, so that no file appears after it (see [`Gate`]).
    gate: Arc<Gate>,
    uploads: tokio::task::JoinSet<Finished>,
    /// Files built at once for their uploads: their own slots, so that the sink's row
    /// groups never queue behind them.
    builds: Arc<Semaphore>,
    /// An upload failed and the error was returned: the next call waits for the uploads
    /// it starts again, so that the sink loop's backoff applies and its error stays until
    /// they succeed.
    failing: bool,
    next_id: u64,
    spool: Spool,
}

/// Per partition, the last entry whose rows are uploaded: a replay after a crash skips
/// them, so no row lands twice. A partition's next file starts its upload only once the
/// watermark of the one before is saved, so at a crash at most one upload per partition
/// is unrecorded, and its replay rebuilds a file with the same first entry, hence the same
/// key: it overwrites the same object (with more rows or fewer, the rest following in
/// the next file).
#[derive(Default)]
struct Watermarks {
    path: Option<std::path::PathBuf>,
    by_partition: HashMap<String, HashMap<i64, Seq>>,
}

impl Watermarks {
    fn load(path: &std::path::Path) -> std::io::Result<Watermarks> {
        let by_partition = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(e),
        };
        Ok(Watermarks {
            path: Some(path.to_owned()),
            by_partition,
        })
    }

    fn get(&self, distribution: &str, hour_ms: i64) -> Seq {
        self.by_partition
            .get(distribution)
            .and_then(|m| m.get(&hour_ms))
            .copied()
            .unwrap_or(0)
    }

    /// Raises a partition's watermark in memory; [`save`](Self::save) makes it last.
    fn set(&mut self, key: &PartitionKey, seq: Seq) {
        let w = self
            .by_partition
            .entry(key.distribution.clone())
            .or_default()
            .entry(key.hour_ms)
            .or_default();
        *w = (*w).max(seq);
    }

    /// Forgets what a replay can no longer reach (at or below the saved position).
    fn prune(&mut self, saved: Seq) -> Result<(), SinkError> {
        let before: usize = self.by_partition.values().map(HashMap::len).sum();
        for m in self.by_partition.values_mut() {
            m.retain(|_, w| *w > saved);
        }
        self.by_partition.retain(|_, m| !m.is_empty());
        let after: usize = self.by_partition.values().map(HashMap::len).sum();
        if after != before { self.save() } else { Ok(()) }
    }

    fn save(&self) -> Result<(), SinkError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let bytes = serde_json::to_vec(&self.by_partition)
            .map_err(|e| SinkError::unavailable("cannot encode watermarks").with_source(e))?;
        edgelog_collector::state_file::write_atomic(path, &bytes).map_err(|e| {
            SinkError::unavailable(format!("cannot save {}", path.display())).with_source(e)
        })
    }
}

fn render_partition(template: &str, key: &PartitionKey) -> String {
    let (y, m, d, h) = time::hour_parts(key.hour_ms);
    template
        .replace("{DistributionId}", &key.distribution)
        .replace("{yyyy}", &format!("{y:04}"))
        .replace("{MM}", &format!("{m:02}"))
        .replace("{dd}", &format!("{d:02}"))
        .replace("{HH}", &format!("{h:02}"))
}

/// Parquet settings of standard logs (the sink's and compaction's), with `metadata` added.
pub fn writer_properties(cfg: &StandardLogsConfig, metadata: Vec<KeyValue>) -> WriterProperties {
    let level = ZstdLevel::try_new(cfg.zstd_level).unwrap_or_default();
    let mut kv = vec![KeyValue::new(
        "edgelog.schema_version".into(),
        SCHEMA_VERSION.to_string(),
    )];
    kv.extend(metadata);
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_dictionary_enabled(true)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(cfg.row_group_rows))
        .set_created_by(format!("edgelog {}", env!("CARGO_PKG_VERSION")))
        .set_key_value_metadata(Some(kv));
    for column in UNIQUE_COLUMNS {
        props = props.set_column_dictionary_enabled(ColumnPath::from(*column), false);
    }
    for column in DELTA_COLUMNS {
        props = props
            .set_column_dictionary_enabled(ColumnPath::from(*column), false)
            .set_column_encoding(ColumnPath::from(*column), Encoding::DELTA_BINARY_PACKED);
    }
    for column in PLAIN_COLUMNS {
        props = props.set_column_compression(ColumnPath::from(*column), Compression::UNCOMPRESSED);
    }
    props.build()
}

/// Columns zstd does not shrink (bit-packed deltas of scattered numbers, dictionary
/// indices of a few short codes, a constant: 0.01 B/record in all in `parquet_encodings`).
/// Left uncompressed, each saves the zstd compressor and decompressor (0.1 MiB, the latter
/// never used) parquet makes per compressed column of every row group it encodes.
const PLAIN_COLUMNS: &[&str] = &[
    "sc_bytes",
    "sc_content_len",
    "c_port",
    "sc_range_start",
    "sc_range_end",
    "fle_encrypted_fields",
    "x_edge_location",
    "c_country",
    "asn",
    "sample_rate",
];

/// Columns whose values hardly repeat: a dictionary only costs time before it is dropped.
const UNIQUE_COLUMNS: &[&str] = &["x_edge_request_id"];

/// Integer columns that rarely repeat but lie close to their neighbours (near-sorted
/// times) or in a narrow range (ports, byte counts): delta bit-packing writes them in
/// fewer bytes than a dictionary, and faster (`cargo run --release -p edgelog-tests
/// --example parquet_encodings`).
const DELTA_COLUMNS: &[&str] = &[
    "timestamp",
    "sc_bytes",
    "sc_content_len",
    "c_port",
    "sc_range_start",
    "sc_range_end",
];

impl StandardLogSink {
    /// A sink writing into `store`. Settings must have been validated.
    pub fn new(cfg: StandardLogsConfig, collector_id: &str, store: Arc<dyn ObjectStore>) -> Self {
        let props = writer_properties(
            &cfg,
            vec![KeyValue::new(
                "edgelog.collector_id".into(),
                collector_id.to_owned(),
            )],
        );
        StandardLogSink {
            cfg,
            collector_id: collector_id.to_owned(),
            store,
            encoders: Encoders {
                slots: Arc::new(Semaphore::new(crate::open_file::encoders())),
                schema: schema::schema(),
                props: Arc::new(props),
            },
            open: HashMap::new(),
            open_files: 0,
            ready: Vec::new(),
            full: Vec::new(),
            under_way: Vec::new(),
            due: Vec::new(),
            staging: Staging::default(),
            stage_files: STAGE_FILES,
            broken: None,
            memory_summed: 0,
            memory_taken: 0,
            taken: 0,
            watermarks: Watermarks::default(),
            dead_letters: None,
            local_root: None,
            synced_dirs: Arc::default(),
            places: Arc::new(Semaphore::new(PLACES)),
            gate: Arc::new(Gate(std::sync::RwLock::new(true))),
            uploads: tokio::task::JoinSet::new(),
            builds: Arc::new(Semaphore::new(crate::open_file::encoders())),
            failing: false,
            next_id: 0,
            spool: Spool::temporary(),
        }
    }

    /// Stages rows once `files` files are open (tests; the default is 256).
    #[doc(hidden)]
    pub fn with_stage_files(mut self, files: usize) -> Self {
        self.stage_files = files;
        self
    }

    /// Encodes row groups into `dir` (emptied now: what it held is rebuilt from the log).
    /// Without it, a directory under the system's temporary one.
    pub fn with_spool_dir(mut self, dir: &Path) -> std::io::Result<Self> {
        self.spool = Spool::open(dir)?;
        Ok(self)
    }

    /// Moves records the encoder refuses to `dead_letters` instead of retrying them.
    pub fn with_dead_letters(mut self, dead_letters: DeadLetters) -> Self {
        self.dead_letters = Some(dead_letters);
        self
    }

    /// The store is a local directory at `root`: make every file durable there.
    pub fn with_local_root(mut self, root: &Path) -> Self {
        self.local_root = Some(root.to_owned());
        self
    }

    /// Keeps per-partition upload watermarks in `path` (read now, written after uploads),
    /// which makes every row land exactly once across crashes.
    pub fn with_state_file(mut self, path: &std::path::Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        self.watermarks = Watermarks::load(path)?;
        Ok(self)
    }

    /// The object key: a function of the data (collector, partition, first WAL entry),
    /// never of the clock, so writing the same file again overwrites the same object.
    fn object_path(&self, key: &PartitionKey, first_seq: Seq) -> ObjectPath {
        let partition = render_partition(&self.cfg.path_template, key);
        let file = format!("{}-{first_seq:020}.parquet", self.collector_id);
        if self.cfg.prefix.is_empty() {
            ObjectPath::from(format!("{partition}/{file}"))
        } else {
            ObjectPath::from(format!("{}/{partition}/{file}", self.cfg.prefix))
        }
    }

    fn memory(&self) -> usize {
        let open: usize = self
            .open
            .values()
            .flat_map(HashMap::values)
            .map(OpenFile::memory)
            .sum::<usize>()
            + self.staging.memory();
        let ready: usize = self
            .ready
            .iter()
            .map(|r| {
                r.file.memory()
                    + r.waiting
                        .iter()
                        .map(crate::open_file::batch_bytes)
                        .sum::<usize>()
            })
            .sum();
        open + ready
    }

    /// Writes the rows waiting in every open file, and the staged rows of every file, into
    /// shared runs (one, or one per thread with thousands of files). A file with a row
    /// group's worth staged keeps them waiting instead, for a row group of its own. On
    /// failure every row stays waiting for the retry.
    async fn spill_shared(&mut self) -> Result<(), SinkError> {
        let schema = self.encoders.schema.clone();
        // Each file's rows, and whether they are staged slices.
        let mut taken: Vec<(Owner, Vec<arrow_array::RecordBatch>, bool)> = Vec::new();
        let mut failed = None;
        'files: for (d, m) in self.open.iter_mut() {
            for (h, f) in m.iter_mut() {
                if f.columns.is_empty() && f.unwritten.is_empty() {
                    continue;
                }
                let key = PartitionKey {
                    distribution: d.clone(),
                    hour_ms: *h,
                };
                match f.take_waiting(&key, &schema) {
                    Ok(b) => taken.push((Owner::Open(key), b, false)),
                    Err(e) => {
                        failed = Some(e);
                        break 'files;
                    }
                }
            }
        }
        if let Some(e) = failed {
            self.put_back(taken);
            return Err(e);
        }
        let mut large = Vec::new();
        let mut staged = 0;
        match self.take_staged(&schema) {
            Ok(shares) => {
                for (owner, batches) in shares {
                    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                    match rows >= MIN_ROW_GROUP_ROWS {
                        true => large.push((owner, batches, true)),
                        false => {
                            taken.push((owner, batches, true));
                            staged += 1;
                        }
                    }
                }
            }
            Err(e) => {
                self.put_back(taken);
                return Err(e);
            }
        }
        // A file with a row group's worth keeps them for one of its own.
        self.put_back(large);
        let files: Vec<_> = taken.iter().map(|t| t.1.clone()).collect();
        // Thousands of files' rows: split over the cores, one run each (the sink waits for
        // this, so while it drains it would use one core otherwise).
        let ways = crate::open_file::cores()
            .min(RUN_WRITERS)
            .min(files.len() / RUN_MIN_FILES)
            .max(1);
        let per = files.len().div_ceil(ways).max(1);
        let groups: Vec<_> = files
            .chunks(per)
            .map(|g| (self.spool.path("run"), g))
            .collect();
        let runs = groups.len();
        let write = |(path, g): &(PathBuf, &[Vec<arrow_array::RecordBatch>])| {
            run::write(path, &schema, g).map_err(|e| {
                SinkError::unavailable(format!("cannot write the run {}", path.display()))
                    .with_source(e)
            })
        };
        let written = cpu(|| {
            std::thread::scope(|s| {
                // A group whose thread cannot be started is written here instead.
                let rest: Vec<_> = groups
                    .iter()
                    .skip(1)
                    .map(|g| {
                        std::thread::Builder::new()
                            .name("edgelog-run".into())
                            .spawn_scoped(s, move || write(g))
                            .map_err(|e| {
                                tracing::warn!(error = %e, "cannot start a thread to write a shared run; writing it on this one");
                                g
                            })
                    })
                    .collect();
                let mut chunks = groups.first().map(write).transpose()?.unwrap_or_default();
                // The scope joins every thread before an error returns; runs the others
                // wrote are removed with their chunks.
                let mut failed = None;
                for h in rest {
                    let done = match h {
                        Ok(h) => h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
                        Err(g) => write(g),
                    };
                    match done {
                        Ok(c) => chunks.extend(c),
                        Err(e) => failed = failed.or(Some(e)),
                    }
                }
                failed.map_or(Ok(chunks), Err)
            })
        });
        match written {
            Ok(chunks) => {
                tracing::debug!(
                    files = taken.len(),
                    staged,
                    "rows of many small files written to a shared run"
                );
                metrics::counter!("edgelog_standard_runs_total").increment(runs as u64);
                debug_assert_eq!(chunks.len(), taken.len());
                for ((owner, _, _), chunk) in taken.into_iter().zip(chunks) {
                    if let Some(f) = self.owned(&owner) {
                        f.part_bytes += chunk.len();
                        f.shared.push(chunk);
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.put_back(taken);
                Err(e)
            }
        }
    }

    /// Every staged row, by file, with the file it belongs to; the staging is empty after.
    fn take_staged(
        &mut self,
        schema: &arrow_schema::SchemaRef,
    ) -> Result<Vec<(Owner, Vec<arrow_array::RecordBatch>)>, SinkError> {
        if self.staging.is_empty() {
            return Ok(Vec::new());
        }
        let mut owners: HashMap<u32, Owner> = HashMap::new();
        for (d, m) in &self.open {
            for (h, f) in m {
                if let Some(slot) = f.stage_slot {
                    let key = PartitionKey {
                        distribution: d.clone(),
                        hour_ms: *h,
                    };
                    owners.insert(slot, Owner::Open(key));
                }
            }
        }
        for (i, r) in self.ready.iter().enumerate() {
            if let Some(slot) = r.file.stage_slot {
                owners.insert(slot, Owner::Ready(i));
            }
        }
        let all = self.staging.take_all(schema);
        let all = self.staged_or_broken(all)?;
        let mut out = Vec::with_capacity(all.len());
        for (slot, batches) in all {
            match owners.remove(&slot) {
                Some(owner) => out.push((owner, batches)),
                None => {
                    return Err(self.broke(format!("staged rows of slot {slot} belong to no file")));
                }
            }
        }
        for (owner, _) in &out {
            if let Some(f) = self.owned(owner) {
                (f.stage_slot, f.staged_bytes) = (None, 0);
            }
        }
        Ok(out)
    }

    /// The staged rows of closed files, taken out of the staging into their own waiting
    /// rows (the open files' stay staged).
    fn unstage_ready(&mut self) -> Result<(), SinkError> {
        let slots: std::collections::HashSet<u32> = self
            .ready
            .iter()
            .filter_map(|r| r.file.stage_slot)
            .collect();
        if slots.is_empty() {
            return Ok(());
        }
        let schema = self.encoders.schema.clone();
        let taken = self.staging.take_slots(&schema, &slots);
        let mut taken: HashMap<u32, arrow_array::RecordBatch> =
            self.staged_or_broken(taken)?.into_iter().collect();
        for r in &mut self.ready {
            if let Some(slot) = r.file.stage_slot.take() {
                r.file.staged_bytes = 0;
                match taken.remove(&slot) {
                    Some(rows) => r.file.put_back(vec![rows]),
                    None => {
                        let e = format!("the staged rows of {} are missing", r.path);
                        return Err(self.broke(e));
                    }
                }
            }
        }
        Ok(())
    }

    /// Taking rows out of the staging can fail only on a broken invariant, with some rows
    /// out already: the sink stops uploading for good, so that the log keeps them for a
    /// restart to replay (see [`Self::broke`]).
    fn staged_or_broken<T>(
        &mut self,
        r: Result<T, arrow_schema::ArrowError>,
    ) -> Result<T, SinkError> {
        r.map_err(|e| self.broke(format!("cannot take the staged rows: {e}")))
    }

    /// Records that rows were lost from memory: every later call fails with this, so no
    /// upload and no watermark passes them and the collector's position stays behind them.
    fn broke(&mut self, why: String) -> SinkError {
        tracing::error!(error = %why, "the standard-log sink stops: restart the collector to replay from its log");
        let e = SinkError::misconfigured(why.clone());
        self.broken.get_or_insert(why);
        e
    }

    /// Puts rows back as waiting in their files, for a row group or the next try; staged
    /// ones as one batch of their own (a slice keeps the whole sorted batch).
    fn put_back(&mut self, rows: Vec<(Owner, Vec<arrow_array::RecordBatch>, bool)>) {
        let schema = self.encoders.schema.clone();
        for (owner, batches, staged) in rows {
            let batches = match staged {
                true => match stage::one_batch(&schema, batches.iter()) {
                    Ok(b) => vec![b],
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot copy staged rows; keeping the slices");
                        batches
                    }
                },
                false => batches,
            };
            if let Some(f) = self.owned(&owner) {
                f.put_back(batches);
            }
        }
    }

    fn check_broken(&self) -> Result<(), SinkError> {
        match &self.broken {
            Some(why) => Err(SinkError::misconfigured(why.clone())),
            None => Ok(()),
        }
    }

    fn owned(&mut self, owner: &Owner) -> Option<&mut OpenFile> {
        match owner {
            Owner::Open(key) => self.open_file(key),
            Owner::Ready(i) => self.ready.get_mut(*i).map(|r| &mut r.file),
        }
    }

    fn open_file(&mut self, key: &PartitionKey) -> Option<&mut OpenFile> {
        self.open
            .get_mut(&key.distribution)
            .and_then(|m| m.get_mut(&key.hour_ms))
    }

    /// Encodes a file's waiting rows as one row group in the spool. On failure the rows
    /// stay waiting for the retry.
    async fn write_row_group(&mut self, key: &PartitionKey) -> Result<(), SinkError> {
        let (spool, encoders) = (&self.spool, &self.encoders);
        let f = self
            .open
            .get_mut(&key.distribution)
            .and_then(|m| m.get_mut(&key.hour_ms));
        match f {
            Some(f) => {
                let started = f.spill(key, spool, encoders).await;
                if !self.under_way.contains(key) {
                    self.under_way.push(key.clone());
                }
                started
            }
            None => Ok(()),
        }
    }

    /// Closes an open file: it waits for its upload. No I/O here, so that taking an
    /// entry's rows never stops half-way.
    fn seal(&mut self, key: &PartitionKey) {
        let Some(f) = self
            .open
            .get_mut(&key.distribution)
            .and_then(|m| m.remove(&key.hour_ms))
        else {
            return;
        };
        self.open_files -= 1;
        if self
            .open
            .get(&key.distribution)
            .is_some_and(HashMap::is_empty)
        {
            self.open.remove(&key.distribution);
        }
        if f.rows == 0 {
            return;
        }
        self.ready.push(ReadyFile {
            key: key.clone(),
            path: self.object_path(key, f.first_seq),
            file: f,
            waiting: Vec::new(),
            local: None,
            prepared: false,
            id: self.next_id,
            in_flight: None,
            uploaded: false,
        });
        self.next_id += 1;
    }

    /// Brings the ready files' rows to disk, each file's last rows as a row group of
    /// their own: every file at once, whatever its turn to upload, so that memory comes
    /// back. A file with rows in shared runs keeps its last rows in memory instead, taken
    /// out of its builders, to be gathered with them when it is built.
    async fn prepare(&mut self) -> Result<(), SinkError> {
        let schema = self.encoders.schema.clone();
        self.unstage_ready()?;
        let todo: Vec<usize> = (0..self.ready.len())
            .filter(|&i| !self.ready[i].prepared)
            .collect();
        for &i in &todo {
            let ready = &mut self.ready[i];
            if ready.local.is_some() {
                continue;
            }
            if !ready.file.shared.is_empty() {
                let rows = ready.file.take_waiting(&ready.key, &schema)?;
                ready.waiting.extend(rows);
            } else {
                ready
                    .file
                    .spill(&ready.key, &self.spool, &self.encoders)
                    .await?;
            }
        }
        for i in todo {
            let ready = &mut self.ready[i];
            ready.file.settle(&ready.key, true).await?;
            ready.prepared = true;
        }
        Ok(())
    }

    /// Builds (once) and uploads a prepared ready file, off the sink's task. Returns the
    /// local file if built, and whether the upload succeeded.
    fn finish(&self, i: usize) -> impl Future<Output = Finished> + Send + 'static {
        let r = &self.ready[i];
        let id = r.id;
        let built = r.local.clone();
        let inputs = Inputs {
            parts: r.file.part_paths(),
            shared: r.file.shared.clone(),
            waiting: r.waiting.clone(),
            gathered: self.spool.path("rows"),
            joined: self.spool.path("file"),
            schema: self.encoders.schema.clone(),
            props: self.encoders.props.clone(),
            group_bytes: usize::try_from(self.cfg.row_group_bytes).unwrap_or(ROW_GROUP_BYTES),
        };
        let slots = self.builds.clone();
        let (store, root, object) = (self.store.clone(), self.local_root.clone(), r.path.clone());
        let (synced, places, gate) = (
            self.synced_dirs.clone(),
            self.places.clone(),
            self.gate.clone(),
        );
        async move {
            let (local, len) = match built {
                Some(l) => l,
                None => {
                    let permit = slots.acquire_owned().await;
                    let what = format!("cannot build {object} in the spool");
                    let job = tokio::task::spawn_blocking(move || {
                        let _permit = permit;
                        inputs.build()
                    });
                    match job.await {
                        Ok(Ok(l)) => l,
                        Ok(Err(e)) => {
                            let e = SinkError::unavailable(what).with_source(e);
                            return Finished {
                                id,
                                built: None,
                                uploaded: Err(e),
                            };
                        }
                        Err(e) => std::panic::resume_unwind(e.into_panic()),
                    }
                }
            };
            let uploaded =
                match root {
                    Some(root) => {
                        let (from, to) = (local.clone(), root.join(object.as_ref()));
                        let permit = places.acquire_owned().await;
                        let placed = tokio::task::spawn_blocking(move || {
                            let _permit = permit;
                            place_local(&root, &from, &to, &synced, &gate)
                        })
                        .await
                        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
                        placed.map_err(|e| {
                            SinkError::unavailable(format!("cannot write {object}")).with_source(e)
                        })
                    }
                    None => match spool::upload(store.as_ref(), &object, &local, len).await {
                        Ok(()) => {
                            let _ = std::fs::remove_file(&local);
                            Ok(())
                        }
                        Err(e) => Err(SinkError::unavailable(format!("cannot upload {object}"))
                            .with_source(e)),
                    },
                };
            Finished {
                id,
                built: Some((local, len)),
                uploaded,
            }
        }
    }

    /// Takes in finished uploads and starts the next ones, several at once but one per
    /// partition at a time (see [`Watermarks`]), then waits as `wait` says; more than
    /// [`UPLOADS`] files waiting, or a failure returned before, make it wait for all.
    /// Returns the first failure (its file waits for a retry).
    async fn upload_ready(&mut self, wait: Wait) -> Result<(), SinkError> {
        let result = self.upload_ready_once(wait).await;
        // Once an error is returned, the next calls wait for the uploads they start
        // again, so that the loop's backoff applies and its error stays until they succeed.
        self.failing = result.is_err();
        result
    }

    async fn upload_ready_once(&mut self, wait: Wait) -> Result<(), SinkError> {
        let all = wait == Wait::All || self.failing;
        let mut failed = None;
        let mut finished = 0;
        loop {
            while let Some(f) = self.uploads.try_join_next() {
                self.finished(f, &mut failed);
                finished += 1;
            }
            let saved = self.save_uploaded(false);
            if let Some(e) = failed {
                return Err(e);
            }
            saved?;
            self.start_uploads().await?;
            let waiting = self
                .ready
                .iter()
                .filter(|r| r.in_flight.is_none() && !r.uploaded)
                .count();
            let more = match wait {
                _ if all => !self.ready.is_empty(),
                Wait::One => finished == 0 && !self.ready.is_empty(),
                _ => false,
            };
            if !more && waiting <= UPLOADS {
                return Ok(());
            }
            match self.uploads.join_next().await {
                Some(f) => {
                    self.finished(f, &mut failed);
                    finished += 1;
                }
                // Only uploaded files are left: their watermarks are saved next.
                None => self.save_uploaded(true)?,
            }
        }
    }

    /// Takes in an upload's result.
    fn finished(
        &mut self,
        f: Result<Finished, tokio::task::JoinError>,
        failed: &mut Option<SinkError>,
    ) {
        let f = f.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let Some(r) = self.ready.iter_mut().find(|r| r.id == f.id) else {
            return;
        };
        r.in_flight = None;
        if let Some(local) = f.built {
            r.local = Some(local);
            r.file.parts.clear();
            r.file.shared.clear();
            r.waiting.clear();
        }
        match f.uploaded {
            Ok(()) => {
                r.uploaded = true;
                let len = r.local.as_ref().map_or(0, |l| l.1);
                tracing::debug!(object = %r.path, rows = r.file.rows, bytes = len, "standard log file written");
                metrics::counter!("edgelog_standard_files_total").increment(1);
                metrics::counter!("edgelog_standard_rows_total").increment(r.file.rows as u64);
                metrics::counter!("edgelog_standard_bytes_total").increment(len);
                let (key, last) = (r.key.clone(), r.file.last_seq);
                self.watermarks.set(&key, last);
            }
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }

    /// Saves the watermarks of uploaded files and forgets the files, once nothing is in
    /// flight, a round's worth is uploaded, or a partition's next file waits on one (or
    /// with `now`).
    fn save_uploaded(&mut self, now: bool) -> Result<(), SinkError> {
        let uploaded: std::collections::HashSet<&PartitionKey> = self
            .ready
            .iter()
            .filter(|r| r.uploaded)
            .map(|r| &r.key)
            .collect();
        let due = now
            || self.uploads.is_empty()
            || uploaded.len() >= UPLOADS
            || self
                .ready
                .iter()
                .any(|r| !r.uploaded && uploaded.contains(&r.key));
        if !uploaded.is_empty() && due {
            self.watermarks.save()?;
            self.ready.retain(|r| !r.uploaded);
        }
        Ok(())
    }

    /// Starts the uploads of ready files in order, within [`UPLOADS`] files and a few
    /// MiB in flight (a large file goes up alone), each the first of its partition still
    /// ready (the one before must be uploaded and its watermark saved).
    async fn start_uploads(&mut self) -> Result<(), SinkError> {
        self.prepare().await?;
        let mut budget = UPLOAD_BYTES;
        let mut flying = 0;
        for r in &self.ready {
            if let Some(cost) = r.in_flight {
                budget = budget.saturating_sub(cost);
                flying += 1;
            }
        }
        let mut seen = std::collections::HashSet::new();
        let mut picked = Vec::new();
        for (i, r) in self.ready.iter().enumerate() {
            if !seen.insert(&r.key) || r.in_flight.is_some() || r.uploaded {
                continue;
            }
            let size = r.local.as_ref().map_or_else(|| r.file.size(), |l| l.1);
            let cost = size.min(UPLOAD_BYTES);
            if flying == UPLOADS || (flying > 0 && cost > budget) {
                break;
            }
            budget = budget.saturating_sub(cost);
            flying += 1;
            picked.push((i, cost));
        }
        for (i, cost) in picked {
            self.uploads.spawn(self.finish(i));
            self.ready[i].in_flight = Some(cost);
        }
        Ok(())
    }

    /// Seals the files `due` picks, then starts their uploads; with `all`, waits for
    /// every upload.
    async fn close_where(
        &mut self,
        due: impl Fn(&OpenFile) -> bool,
        all: bool,
    ) -> Result<(), SinkError> {
        let keys: Vec<PartitionKey> = self
            .open
            .iter()
            .flat_map(|(d, m)| m.iter().map(move |(h, f)| (d, h, f)))
            .filter(|(_, _, f)| due(f))
            .map(|(d, h, _)| PartitionKey {
                distribution: d.clone(),
                hour_ms: *h,
            })
            .collect();
        for k in keys {
            self.seal(&k);
        }
        self.upload_ready(if all { Wait::All } else { Wait::No })
            .await
    }

    /// Stores the batch's records that can never be encoded as dead letters, first, so a
    /// failure to store them leaves the entry untaken for the retry. Returns their indices.
    fn dead_letter_unencodable(&self, batch: &Batch<'_>) -> Result<Vec<usize>, SinkError> {
        let mut refused: Vec<(Kept<'_>, String)> = Vec::new();
        for k in batch.records() {
            if let Err(why) = schema::check_encodable(k.record) {
                refused.push((k, why));
            }
        }
        if refused.is_empty() {
            return Ok(Vec::new());
        }
        let Some(dl) = &self.dead_letters else {
            return Err(SinkError::misconfigured(refused.swap_remove(0).1));
        };
        let records: Vec<&Record> = refused.iter().map(|(k, _)| k.record).collect();
        let why = refused[0].1.clone();
        dl.put(batch.seq(), "encode_error", &why, &records)?;
        Ok(refused.into_iter().map(|(k, _)| k.index).collect())
    }

    fn take(&mut self, batch: &Batch<'_>) -> Result<(), SinkError> {
        let entry = batch.entry;
        let refused = self.dead_letter_unencodable(batch)?;
        // The sampled rows, grouped by partition (in their order within it): a partition
        // is complete for this entry once its group is taken, so files can be closed
        // between groups when too many are open, without a later row of the same entry
        // landing in a file behind an uploaded one.
        let mut picks: Vec<(usize, i64, f64)> = Vec::new();
        for Kept {
            index: i,
            record: r,
            rate,
        } in batch.records()
        {
            if refused.contains(&i) {
                continue;
            }
            let hour_ms = r.timestamp_ms - r.timestamp_ms.rem_euclid(3_600_000);
            if entry.seq <= self.watermarks.get(&r.distribution_id, hour_ms) {
                continue; // uploaded before a crash
            }
            picks.push((i, hour_ms, rate));
        }
        picks.sort_by(|a, b| {
            let (ra, rb) = (&entry.records[a.0], &entry.records[b.0]);
            (ra.distribution_id.as_str(), a.1).cmp(&(rb.distribution_id.as_str(), b.1))
        });
        let mut groups = picks.chunk_by(|a, b| {
            entry.records[a.0].distribution_id == entry.records[b.0].distribution_id && a.1 == b.1
        });
        for group in &mut groups {
            let (first, hour_ms, rate) = group[0];
            let distribution = &entry.records[first].distribution_id;
            let key = PartitionKey {
                distribution: distribution.clone(),
                hour_ms,
            };
            let by_hour = match self.open.get_mut(distribution) {
                Some(m) => m,
                None => self.open.entry(distribution.clone()).or_default(),
            };
            let f = match by_hour.get_mut(&hour_ms) {
                Some(f) => f,
                None => {
                    self.open_files += 1;
                    by_hour.entry(hour_ms).or_insert(OpenFile {
                        columns: Columns::default(),
                        unwritten: Vec::new(),
                        parts: Vec::new(),
                        shared: Vec::new(),
                        stage_slot: None,
                        staged_bytes: 0,
                        part_bytes: 0,
                        rows: 0,
                        first_seq: entry.seq,
                        last_seq: entry.seq,
                        opened: Instant::now(),
                        sample_rate: rate,
                    })
                }
            };
            let before = f.columns.bytes() + f.staged_bytes;
            if self.open_files >= self.stage_files && f.staged_bytes < STAGED_FILE_BYTES {
                let slot = match f.stage_slot {
                    Some(slot) => slot,
                    None => *f.stage_slot.insert(self.staging.slot(f.sample_rate)),
                };
                for (i, _, _) in group {
                    f.staged_bytes += self.staging.push(&entry.records[*i], slot);
                    f.rows += 1;
                    f.last_seq = entry.seq;
                }
            } else {
                for (i, _, _) in group {
                    push(f, &entry.records[*i], entry.seq);
                }
            }
            self.memory_taken += (f.columns.bytes() + f.staged_bytes).saturating_sub(before);
            if f.rows >= self.cfg.max_rows || f.size() >= self.cfg.max_bytes {
                self.due.push(key.clone());
            }
            if f.columns.bytes() as u64 >= self.cfg.row_group_bytes
                || f.columns.len() >= self.cfg.row_group_rows
            {
                self.full.push(key);
            }
            // Too many files open: close the oldest.
            while self.open_files > self.cfg.max_open_files {
                let Some(oldest) = self.oldest_open() else {
                    break;
                };
                self.seal(&oldest);
            }
        }
        Ok(())
    }

    /// Takes in the row groups already encoded (their sizes, or their failures); with
    /// `all`, waits for those still under way too.
    async fn settle_open(&mut self, all: bool) -> Result<(), SinkError> {
        let mut i = 0;
        while i < self.under_way.len() {
            let key = self.under_way[i].clone();
            let Some(f) = self.open_file(&key) else {
                // Sealed since: its ready file settles its own.
                self.under_way.swap_remove(i);
                continue;
            };
            f.settle(&key, all).await?;
            if f.parts.iter().any(|p| matches!(p, Part::Encoding { .. })) {
                i += 1;
            } else {
                self.under_way.swap_remove(i);
            }
        }
        Ok(())
    }

    /// The open file with the most memory in rows waiting, and how many rows.
    fn largest_waiting(&self) -> Option<(PartitionKey, usize)> {
        self.open
            .iter()
            .flat_map(|(d, m)| m.iter().map(move |(h, f)| (d, h, f)))
            .max_by_key(|x| x.2.waiting_bytes())
            .map(|(d, h, f)| {
                (
                    PartitionKey {
                        distribution: d.clone(),
                        hour_ms: *h,
                    },
                    f.waiting_rows(),
                )
            })
    }

    /// The partition of the file opened longest ago.
    fn oldest_open(&self) -> Option<PartitionKey> {
        self.open
            .iter()
            .flat_map(|(d, m)| m.iter().map(move |(h, f)| (d, h, f.opened)))
            .min_by_key(|x| x.2)
            .map(|(d, h, _)| PartitionKey {
                distribution: d.clone(),
                hour_ms: *h,
            })
    }
}

/// The file rows taken for a run belong to: open, or closed (its index in `ready`, which
/// does not change while a run is written).
enum Owner {
    Open(PartitionKey),
    Ready(usize),
}

/// What a ready file is built from.
struct Inputs {
    parts: Vec<PathBuf>,
    shared: Vec<Chunk>,
    waiting: Vec<arrow_array::RecordBatch>,
    gathered: PathBuf,
    joined: PathBuf,
    schema: arrow_schema::SchemaRef,
    props: Arc<WriterProperties>,
    /// A gathered file's row groups end at about this many bytes of rows.
    group_bytes: usize,
}

impl Inputs {
    /// One file in the spool: the rows in shared runs and those waiting are encoded into
    /// a part, and the parts joined (column chunks copied). The parts go once joined.
    fn build(self) -> Result<(PathBuf, u64), parquet::errors::ParquetError> {
        let mut parts = self.parts;
        if !self.shared.is_empty() || !self.waiting.is_empty() {
            run::gather(
                &self.shared,
                &self.waiting,
                &self.gathered,
                &self.schema,
                &self.props,
                self.group_bytes,
            )?;
            parts.push(self.gathered.clone());
        }
        if let [only] = parts.as_slice() {
            let len = std::fs::metadata(only)?.len();
            return Ok((only.clone(), len));
        }
        match spool::join(&parts, &self.joined, &self.props) {
            Ok(len) => {
                for p in &parts {
                    let _ = std::fs::remove_file(p);
                }
                Ok((self.joined, len))
            }
            Err(e) => {
                let _ = std::fs::remove_file(&self.gathered);
                Err(e)
            }
        }
    }
}

/// How long [`StandardLogSink::upload_ready`] waits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Not at all.
    No,
    /// For an upload to finish, if any is under way.
    One,
    /// For every ready file to be uploaded.
    All,
}

/// A ready file's upload: built (its local file), and uploaded or not.
struct Finished {
    id: u64,
    built: Option<(PathBuf, u64)>,
    uploaded: Result<(), SinkError>,
}

/// Directories whose whole path up to the root is on disk (each one's entry fsynced in its
/// parent) by this process's doing, so a file placed in one needs only its own directory
/// synced. Forgotten past a bound (which only costs syncing again).
#[derive(Default)]
struct SyncedDirs(std::sync::Mutex<std::collections::HashSet<PathBuf>>);

impl SyncedDirs {
    const MAX: usize = 100_000;

    fn with<T>(&self, f: impl FnOnce(&mut std::collections::HashSet<PathBuf>) -> T) -> T {
        // A panic while holding the lock leaves a set of paths behind; keep going.
        f(&mut self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// Open while the sink lives. A placement already started when the sink is dropped
/// finishes in the blocking pool; the gate makes the drop wait for its rename and turns
/// away the ones after, so that, as after a crash, no file appears once the sink is gone.
struct Gate(std::sync::RwLock<bool>);

impl Gate {
    fn pass<T>(&self, f: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
        let open = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !*open {
            return Err(std::io::Error::other("the sink is gone"));
        }
        f()
    }

    fn close(&self) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = false;
    }
}

impl Drop for StandardLogSink {
    fn drop(&mut self) {
        self.gate.close();
    }
}

/// Moves a finished file from the spool to `to` under `root` and makes it durable there:
/// the file, its directory, then each directory up to `root` not yet known to be on disk
/// (a partition's first file syncs its whole path; the next ones, one directory). The
/// spool is under the data dir, on the same file system, so this is a rename.
fn place_local(
    root: &Path,
    from: &Path,
    to: &Path,
    synced: &SyncedDirs,
    gate: &Gate,
) -> std::io::Result<()> {
    let parent = to.parent().unwrap_or(root);
    // Directories about to be made (again, if removed from outside since) are not on disk.
    let mut dir = parent;
    while dir != root && !dir.exists() {
        synced.with(|s| s.remove(dir));
        let Some(up) = dir.parent() else { break };
        dir = up;
    }
    std::fs::create_dir_all(parent)?;
    if !from.exists() && to.exists() {
        // Moved by a try that failed after: only the syncs are left.
        File::open(to)?.sync_all()?;
    } else {
        File::open(from)?.sync_all()?;
        gate.pass(|| {
            if std::fs::rename(from, to).is_err() {
                // Another file system after all: copy.
                std::fs::copy(from, to)?;
                File::open(to)?.sync_all()?;
                let _ = std::fs::remove_file(from);
            }
            Ok(())
        })?;
    }
    edgelog_collector::state_file::sync_dir(parent)?;
    // Up to the first directory whose path is known to be on disk, every parent is
    // synced; only then are they all marked, so a mark always means the whole path (a
    // failed try, or another file's, leaves them to the next).
    let mut chain = Vec::new();
    let mut dir = parent;
    while dir != root && !synced.with(|s| s.contains(dir)) {
        let Some(up) = dir.parent() else { break };
        edgelog_collector::state_file::sync_dir(up)?;
        chain.push(dir.to_owned());
        dir = up;
    }
    synced.with(|s| {
        if s.len() + chain.len() > SyncedDirs::MAX {
            s.clear();
        }
        s.extend(chain);
    });
    Ok(())
}

#[async_trait]
impl Sink for StandardLogSink {
    async fn write(&mut self, batch: &Batch<'_>) -> Result<(), SinkError> {
        self.check_broken()?;
        // Taking an entry is separate from closing files, so a retry after a failed
        // upload does not take the same rows twice.
        if batch.seq() > self.taken {
            self.take(batch)?;
            self.taken = batch.seq();
        }
        // Files whose rows make a row group now (taking has no I/O, so that it never stops
        // half-way; what fails here is tried again with the entry).
        while let Some(k) = self.full.last() {
            let k = k.clone();
            self.write_row_group(&k).await?;
            self.full.pop();
        }
        self.settle_open(false).await?;
        for k in std::mem::take(&mut self.due) {
            self.seal(&k);
        }
        self.upload_ready(Wait::No).await?;
        // Over the memory bound: the file with most rows waiting writes them as a row
        // group; when even that one has few, the oldest file closes.
        let bound = self.cfg.max_open_bytes as usize;
        if self.memory_summed + self.memory_taken > bound {
            self.memory_summed = self.memory();
            self.memory_taken = 0;
        }
        while self.memory_summed > bound && !self.open.is_empty() {
            match self.largest_waiting() {
                Some((k, rows)) if rows >= MIN_ROW_GROUP_ROWS => {
                    self.write_row_group(&k).await?;
                    // Memory returns once encoded: wait for it.
                    self.settle_open(true).await?;
                }
                w if w.as_ref().is_some_and(|(_, rows)| *rows > 0) || !self.staging.is_empty() => {
                    self.spill_shared().await?
                }
                _ if !self.under_way.is_empty() => self.settle_open(true).await?,
                // Closed files waiting for their uploads hold rows too (those with rows
                // in shared runs, until built): one upload's worth at a time.
                _ if self.ready.iter().any(|r| !r.uploaded) => self.upload_ready(Wait::One).await?,
                _ => {
                    if let Some(k) = self.oldest_open() {
                        tracing::debug!(memory = self.memory(), partition = %k.distribution, "over the memory bound with no rows waiting: closing the oldest file");
                        self.seal(&k);
                    }
                    self.upload_ready(Wait::All).await?;
                }
            }
            self.memory_summed = self.memory();
        }
        metrics::gauge!("edgelog_standard_open_bytes")
            .set((self.memory_summed + self.memory_taken) as f64);
        Ok(())
    }

    async fn tick(&mut self) -> Result<(), SinkError> {
        self.check_broken()?;
        let max_age = self.cfg.max_age;
        self.close_where(|f| f.opened.elapsed() >= max_age, false)
            .await
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.check_broken()?;
        self.close_where(|_| true, true).await
    }

    fn cursor_saved(&mut self, seq: Seq) {
        if let Err(e) = self.watermarks.prune(seq) {
            tracing::warn!(error = %e, "cannot prune upload watermarks");
        }
    }

    fn delivered(&self) -> Seq {
        let open = self
            .open
            .values()
            .flat_map(HashMap::values)
            .map(|f| f.first_seq);
        let ready = self.ready.iter().map(|r| r.file.first_seq);
        match open.chain(ready).min() {
            Some(first) => first - 1,
            None => self.taken,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partitions_first_file_syncs_its_path_and_the_next_only_its_directory() {
        let tmp = tempfile::tempdir().expect("test");
        let (root, spool) = (tmp.path().join("logs"), tmp.path().join("spool"));
        std::fs::create_dir_all(&root).expect("test");
        std::fs::create_dir_all(&spool).expect("test");
        let synced = SyncedDirs::default();
        let gate = Gate(std::sync::RwLock::new(true));
        let dir = root.join("DistributionId=E1/year=2026/month=11");
        for name in ["a.parquet", "b.parquet"] {
            let from = spool.join(name);
            std::fs::write(&from, name).expect("test");
            place_local(&root, &from, &dir.join(name), &synced, &gate).expect("test");
            assert_eq!(
                std::fs::read(dir.join(name)).expect("test"),
                name.as_bytes()
            );
            assert!(!from.exists());
        }
        let marked = synced.with(|s| s.clone());
        let want: std::collections::HashSet<PathBuf> = [
            root.join("DistributionId=E1"),
            root.join("DistributionId=E1/year=2026"),
            dir.clone(),
        ]
        .into();
        assert_eq!(marked, want, "every directory below the root, once");
        // A try that moved the file and failed while syncing: the next one syncs again.
        place_local(
            &root,
            &spool.join("a.parquet"),
            &dir.join("a.parquet"),
            &synced,
            &gate,
        )
        .expect("a retry after the move");
        // Removed from outside (a retention job) and made again by the next file: its
        // marks go with it and come back once synced.
        std::fs::remove_dir_all(root.join("DistributionId=E1")).expect("test");
        let from = spool.join("c.parquet");
        std::fs::write(&from, "c").expect("test");
        place_local(&root, &from, &dir.join("c.parquet"), &synced, &gate).expect("test");
        assert_eq!(synced.with(|s| s.clone()), want);
    }
}
