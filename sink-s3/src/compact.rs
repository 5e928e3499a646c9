//! Compaction: a closed hour's small Parquet files, per partition, merged into files of a
//! target size sorted by time, in a bucket or a local directory alike.
//!
//! Crash-safe, in this order per group of inputs: a manifest naming the inputs and the
//! output is written, then the output, then the inputs are deleted, then the manifest.
//! The next run finishes a manifest whose output exists (deletes the inputs left) and
//! undoes one whose output does not. Readers may see a group's rows twice between the
//! output's write and the inputs' deletion; they never miss one.
//!
//! Long (about 800 lines): planning, the crash repair, re-uploads and the writing share
//! one manifest and one set of invariants, and must change together. Row work is in
//! `rows`, partition paths in `partition`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::errors::ParquetError;
use parquet::file::metadata::{KeyValue, ParquetMetaDataReader};
use parquet::file::statistics::Statistics;
use serde::{Deserialize, Serialize};

mod partition;
mod rows;

pub use partition::parse_partition;
use rows::{encode, encode_batch, new_rows, row_keys};

use crate::config::StandardLogsConfig;
use crate::sink::writer_properties;

/// Key-value metadata of a compacted file: the files it replaced, as `name:rows` lines.
pub const COMPACTED_FROM: &str = "edgelog.compacted_from";
/// Manifests start with `_`, which Athena, Hive and Spark skip; DuckDB reads `*.parquet`.
const MANIFEST_PREFIX: &str = "_edgelog-compaction-";
const OUTPUT_PREFIX: &str = "compacted-";

/// How compaction groups files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompactionConfig {
    /// A compacted file holds inputs up to about this many bytes (their Parquet sizes).
    pub target_bytes: u64,
    /// ...and at most this many rows. A group is merged in memory: about 1.5 KiB a row
    /// (see README).
    pub max_rows: u64,
    /// A partition is compacted once its hour ended this long ago, and a file once it was
    /// written this long ago: late records and a collector's retry of an upload land
    /// before it.
    #[serde(with = "humantime_serde")]
    pub min_age: Duration,
    /// Run compaction in the collector this often; zero means never (run
    /// `edgelog compact`). Turn it on in one collector of a fleet only.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Files read at once.
    pub concurrency: usize,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            target_bytes: 128 << 20,
            max_rows: 500_000,
            min_age: Duration::from_secs(3600),
            interval: Duration::ZERO,
            concurrency: 16,
        }
    }
}

impl CompactionConfig {
    /// Checks the settings; errors name the key, under `k`.
    pub fn validate(&self, k: &str) -> Result<(), String> {
        let range = |key: &str, v: u64, min: u64, max: u64| {
            if (min..=max).contains(&v) {
                Ok(())
            } else {
                Err(format!("{k}.{key}: must be from {min} to {max}, got {v}"))
            }
        };
        range("target_bytes", self.target_bytes, 1 << 10, 5 << 40)?;
        range("max_rows", self.max_rows, 1, 1 << 32)?;
        range("concurrency", self.concurrency as u64, 1, 1024)?;
        if self.min_age > Duration::from_secs(365 * 86_400) {
            return Err(format!("{k}.min_age: must be at most a year"));
        }
        if !self.interval.is_zero() && self.interval < Duration::from_secs(1) {
            return Err(format!("{k}.interval: must be 0 (off) or at least 1s"));
        }
        Ok(())
    }
}

/// What a run did (or, dry, would do).
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct CompactionReport {
    pub partitions: u64,
    pub partitions_compacted: u64,
    pub files_in: u64,
    pub files_out: u64,
    pub rows: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Manifests of an interrupted run, finished or undone.
    pub repaired: u64,
    /// Files a collector uploaded again after they were compacted, deleted.
    pub duplicates_removed: u64,
    /// Files left for a later run: too recent.
    pub waiting: u64,
    /// `.parquet` files whose footer could not be read, left alone.
    pub unreadable: u64,
    /// Partitions left as they were after an error (see `last_error`), tried next run.
    pub failed_partitions: u64,
    /// Re-uploads with rows beyond those compacted: only those rows kept.
    pub duplicate_rows_removed: u64,
    /// The first partition error of the run, if any.
    pub last_error: Option<String>,
}

/// Why compaction stopped. Nothing is lost: the next run repairs and goes on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompactionError {
    #[error("storage failed on {path}")]
    Store {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cannot read or write parquet {path}")]
    Parquet {
        path: String,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("cannot merge the rows of {path}")]
    Arrow {
        path: String,
        #[source]
        source: arrow_schema::ArrowError,
    },
    #[error("unreadable compaction manifest {path}")]
    Manifest {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot make {path} durable")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn store_err(path: &impl ToString) -> impl FnOnce(object_store::Error) -> CompactionError {
    let path = path.to_string();
    move |source| CompactionError::Store { path, source }
}

fn parquet_err(
    path: &impl ToString,
) -> impl FnOnce(parquet::errors::ParquetError) -> CompactionError {
    let path = path.to_string();
    move |source| CompactionError::Parquet { path, source }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Manifest {
    version: u32,
    inputs: Vec<Source>,
    output: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Source {
    name: String,
    rows: u64,
}

/// One Parquet file, its footer read.
struct Input {
    meta: ObjectMeta,
    name: String,
    rows: u64,
    min_ts: i64,
    schema: String,
    /// For a compacted file: what it replaced.
    sources: Vec<Source>,
    footer: ArrowReaderMetadata,
    /// The whole file, when reading its footer read it all (small files: most inputs).
    whole: Option<bytes::Bytes>,
}

/// Shorter than a Parquet file can be (two 4-byte magics and a footer length).
const PARQUET_MIN_BYTES: u64 = 12;

/// Small files read whole while planning, per partition, at most (beyond, read again).
const KEPT_WHOLE_BYTES: u64 = 256 << 20;

/// Merges small standard-log files. One compactor at a time per prefix: two planning
/// different groups over the same files would duplicate rows.
pub struct Compactor {
    store: Arc<dyn ObjectStore>,
    standard: StandardLogsConfig,
    cfg: CompactionConfig,
    local_root: Option<PathBuf>,
    dry_run: bool,
}

impl Compactor {
    /// Compacts the files `standard` writes into `store`. Settings must have been validated.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        standard: StandardLogsConfig,
        cfg: CompactionConfig,
    ) -> Self {
        Compactor {
            store,
            standard,
            cfg,
            local_root: None,
            dry_run: false,
        }
    }

    /// The store is a local directory at `root`: each output is made durable there before
    /// its inputs go.
    pub fn with_local_root(mut self, root: &Path) -> Self {
        self.local_root = Some(root.to_owned());
        self
    }

    /// Plans and reports, changing nothing (interrupted runs are not repaired either).
    pub fn dry_run(mut self, dry: bool) -> Self {
        self.dry_run = dry;
        self
    }

    /// One pass over every partition under the prefix.
    pub async fn run(&self, now: SystemTime) -> Result<CompactionReport, CompactionError> {
        let prefix = (!self.standard.prefix.is_empty())
            .then(|| ObjectPath::from(self.standard.prefix.as_str()));
        let mut partitions: BTreeMap<String, Vec<ObjectMeta>> = BTreeMap::new();
        let mut listing = self.store.list(prefix.as_ref());
        while let Some(meta) = listing
            .try_next()
            .await
            .map_err(store_err(&self.standard.prefix))?
        {
            if let Some((dir, _)) = meta.location.as_ref().rsplit_once('/') {
                partitions.entry(dir.to_owned()).or_default().push(meta);
            }
        }
        let mut report = CompactionReport::default();
        for (dir, objects) in partitions {
            let relative = match &prefix {
                Some(p) => dir
                    .strip_prefix(p.as_ref())
                    .and_then(|d| d.strip_prefix('/')),
                None => Some(dir.as_str()),
            };
            let Some(hour) =
                relative.and_then(|r| parse_partition(&self.standard.path_template, r))
            else {
                continue;
            };
            report.partitions += 1;
            let closed = hour.is_none_or(|h| {
                let end = SystemTime::UNIX_EPOCH + Duration::from_millis((h + 3_600_000) as u64);
                end + self.cfg.min_age <= now
            });
            // One partition's trouble (a corrupt file, a store error) is its own: logged,
            // counted, and tried again next run; the others go on.
            if let Err(e) = self
                .partition(&dir, objects, closed, now, &mut report)
                .await
            {
                let e = error_chain(&e);
                tracing::warn!(partition = %dir, error = %e, "partition left as it is; the next run tries again");
                report.failed_partitions += 1;
                report.last_error.get_or_insert(e);
            }
        }
        Ok(report)
    }

    async fn partition(
        &self,
        dir: &str,
        objects: Vec<ObjectMeta>,
        closed: bool,
        now: SystemTime,
        report: &mut CompactionReport,
    ) -> Result<(), CompactionError> {
        let mut files: BTreeMap<String, ObjectMeta> = BTreeMap::new();
        let mut manifests = Vec::new();
        for m in objects {
            let name = file_name(&m.location).to_owned();
            if name.starts_with(MANIFEST_PREFIX) && name.ends_with(".json") {
                manifests.push(m);
            } else if name.ends_with(".parquet") && !name.starts_with(['_', '.']) {
                files.insert(name, m);
            }
        }
        if !self.dry_run {
            for m in manifests {
                self.repair(dir, &m, &mut files).await?;
                report.repaired += 1;
            }
        }
        if !closed {
            report.waiting += files.len() as u64;
            return Ok(());
        }
        // Compacted files are all there is: nothing to merge or check (most of history).
        if files.keys().all(|n| n.starts_with(OUTPUT_PREFIX)) {
            return Ok(());
        }
        // Compacted files are read whatever their age (what they replaced is needed to
        // recognise a file uploaded again); others once settled.
        let mut candidates = Vec::new();
        for (name, m) in files {
            let settled = SystemTime::from(m.last_modified) + self.cfg.min_age <= now;
            if m.size < PARQUET_MIN_BYTES {
                tracing::warn!(partition = dir, file = %name, bytes = m.size, "skipping a file too short to be parquet");
                report.unreadable += 1;
            } else if settled || name.starts_with(OUTPUT_PREFIX) {
                candidates.push((settled, m));
            } else {
                report.waiting += 1;
            }
        }
        let store = self.store.clone();
        let kept = Arc::new(AtomicU64::new(0));
        let read: Vec<(bool, Result<Input, CompactionError>)> = futures::stream::iter(candidates)
            .map(move |(settled, m)| {
                let (store, kept) = (store.clone(), kept.clone());
                async move { (settled, footer(store, m, kept).await) }
            })
            .buffered(self.cfg.concurrency)
            .collect()
            .await;
        let mut inputs = Vec::with_capacity(read.len());
        let mut young_compacted = Vec::new();
        for (settled, r) in read {
            match r {
                Ok(i) if settled => inputs.push(i),
                Ok(i) => young_compacted.push(i),
                // Not a Parquet file after all: not ours to merge, nor to stop for.
                Err(e @ CompactionError::Parquet { .. }) => {
                    tracing::warn!(partition = dir, error = %e, "skipping a file that is not readable parquet");
                    report.unreadable += 1;
                }
                Err(e) => return Err(e),
            }
        }

        // A collector that crashed between an upload and saving its watermark uploads the
        // file again under the same name: the same rows, or (rebuilt from its log) more or
        // fewer. If the first was compacted meanwhile, its rows are there already.
        let replaced: HashMap<String, u64> = inputs
            .iter()
            .chain(&young_compacted)
            .flat_map(|i| i.sources.iter().map(|s| (s.name.clone(), s.rows)))
            .collect();
        let (again, mut inputs): (Vec<Input>, Vec<Input>) = inputs
            .into_iter()
            .partition(|i| i.sources.is_empty() && replaced.contains_key(&i.name));
        if !again.is_empty() {
            let compacted: Vec<&Input> = inputs
                .iter()
                .chain(&young_compacted)
                .filter(|i| !i.sources.is_empty())
                .collect();
            self.uploaded_again(dir, again, &compacted, &replaced, report)
                .await?;
        }

        let groups = self.plan(&mut inputs);
        if groups.is_empty() {
            return Ok(());
        }
        report.partitions_compacted += 1;
        let mut slots: Vec<Option<Input>> = inputs.into_iter().map(Some).collect();
        // Files left as they are need not stay in memory meanwhile.
        let planned: std::collections::HashSet<usize> = groups.iter().flatten().copied().collect();
        for (n, slot) in slots.iter_mut().enumerate() {
            if !planned.contains(&n) {
                *slot = None;
            }
        }
        for group in groups {
            let group: Vec<Input> = group.into_iter().filter_map(|n| slots[n].take()).collect();
            let (files, rows) = (
                group.len() as u64,
                group.iter().map(|i| i.rows).sum::<u64>(),
            );
            let bytes = group.iter().map(|i| i.meta.size).sum::<u64>();
            let written = match self.dry_run {
                true => 0,
                false => match self.merge(dir, group).await? {
                    Some(b) => b,
                    None => continue,
                },
            };
            report.files_in += files;
            report.rows += rows;
            report.bytes_in += bytes;
            report.files_out += 1;
            report.bytes_out += written;
        }
        Ok(())
    }

    /// Files uploaded again after they were compacted: one with the same rows is deleted;
    /// one with other rows keeps, in `<name>-rest.parquet`, only the rows the partition's
    /// compacted files do not hold (by request id and time, each counted once), then goes.
    async fn uploaded_again(
        &self,
        dir: &str,
        again: Vec<Input>,
        compacted: &[&Input],
        replaced: &HashMap<String, u64>,
        report: &mut CompactionReport,
    ) -> Result<(), CompactionError> {
        tracing::warn!(
            partition = dir,
            files = again.len(),
            "files uploaded again after they were compacted"
        );
        report.duplicates_removed += again.len() as u64;
        if self.dry_run {
            return Ok(());
        }
        let (same, other): (Vec<Input>, Vec<Input>) = again
            .into_iter()
            .partition(|i| replaced.get(&i.name) == Some(&i.rows));
        let same: Vec<ObjectPath> = same.into_iter().map(|i| i.meta.location).collect();
        self.delete(&same).await?;
        if other.is_empty() {
            return Ok(());
        }
        let mut held: HashMap<(String, i64), u32> = HashMap::new();
        for c in compacted {
            let bytes = self.fetch(c).await?;
            let footer = c.footer.clone();
            let what = c.meta.location.to_string();
            let keys = tokio::task::spawn_blocking(move || row_keys(bytes, footer, &what))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
            for k in keys {
                *held.entry(k).or_default() += 1;
            }
        }
        for i in other {
            let bytes = self.fetch(&i).await?;
            let (footer, what) = (i.footer.clone(), i.meta.location.to_string());
            let (rest, dropped, left) =
                tokio::task::spawn_blocking(move || new_rows(bytes, footer, held, &what))
                    .await
                    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
            held = left;
            report.duplicate_rows_removed += dropped;
            if let Some(rest) = rest {
                let stem = i.name.trim_end_matches(".parquet");
                let path = ObjectPath::from(format!("{dir}/{stem}-rest.parquet"));
                let props = writer_properties(&self.standard, Vec::new());
                let what = path.to_string();
                let encoded =
                    tokio::task::spawn_blocking(move || encode_batch(&rest, props, &what))
                        .await
                        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
                self.store
                    .put(&path, PutPayload::from(encoded))
                    .await
                    .map_err(store_err(&path))?;
                self.sync(&path, true)?;
            }
            tracing::warn!(partition = dir, file = %i.name, rows_already_compacted = dropped, "a file uploaded again: its rows already compacted dropped");
            self.delete(std::slice::from_ref(&i.meta.location)).await?;
        }
        Ok(())
    }

    /// A file's bytes: those read with its footer, or read now.
    async fn fetch(&self, i: &Input) -> Result<bytes::Bytes, CompactionError> {
        if let Some(b) = &i.whole {
            return Ok(b.clone());
        }
        let got = self.store.get(&i.meta.location).await;
        match got {
            Ok(g) => g.bytes().await,
            Err(e) => Err(e),
        }
        .map_err(store_err(&i.meta.location))
    }

    /// Groups of input indices to merge: files under half the target (in bytes and rows),
    /// same schema, in time order, filled up to the target. A group of one is left alone.
    fn plan(&self, inputs: &mut [Input]) -> Vec<Vec<usize>> {
        let target = self.cfg.target_bytes;
        let rows = self.cfg.max_rows;
        let mut small: Vec<usize> = (0..inputs.len())
            .filter(|&n| inputs[n].meta.size < target / 2 && inputs[n].rows < rows.div_ceil(2))
            .collect();
        small.sort_by(|&a, &b| {
            let (a, b) = (&inputs[a], &inputs[b]);
            (&a.schema, a.min_ts, &a.name).cmp(&(&b.schema, b.min_ts, &b.name))
        });
        let mut groups = Vec::new();
        let mut current: Vec<usize> = Vec::new();
        let (mut bytes, mut n_rows) = (0u64, 0u64);
        for n in small {
            let i = &inputs[n];
            let fits = current
                .first()
                .is_some_and(|&f| inputs[f].schema == i.schema)
                && bytes + i.meta.size <= target
                && n_rows + i.rows <= rows;
            if !fits && !current.is_empty() {
                groups.push(std::mem::take(&mut current));
                (bytes, n_rows) = (0, 0);
            }
            current.push(n);
            bytes += i.meta.size;
            n_rows += i.rows;
        }
        groups.push(current);
        groups.retain(|g| g.len() > 1);
        groups
    }

    /// Writes one group's rows, sorted by time, as one file; then deletes the group.
    async fn merge(
        &self,
        dir: &str,
        mut group: Vec<Input>,
    ) -> Result<Option<u64>, CompactionError> {
        let names: Vec<&str> = group.iter().map(|i| i.name.as_str()).collect();
        let digest = xxhash_rust::xxh3::xxh3_128(names.join("\n").as_bytes());
        let output = format!("{OUTPUT_PREFIX}{:016x}.parquet", digest as u64);
        let manifest_path = ObjectPath::from(format!(
            "{dir}/{MANIFEST_PREFIX}{:016x}.json",
            digest as u64
        ));
        let output_path = ObjectPath::from(format!("{dir}/{output}"));
        // What the output replaces: the group's own files, or what a compacted one replaced.
        let sources: Vec<Source> = group
            .iter()
            .flat_map(|i| {
                if i.sources.is_empty() {
                    vec![Source {
                        name: i.name.clone(),
                        rows: i.rows,
                    }]
                } else {
                    i.sources.clone()
                }
            })
            .collect();
        let manifest = Manifest {
            version: 1,
            inputs: group
                .iter()
                .map(|i| Source {
                    name: i.name.clone(),
                    rows: i.rows,
                })
                .collect(),
            output: output.clone(),
        };
        let body = serde_json::to_vec(&manifest).map_err(|source| CompactionError::Manifest {
            path: manifest_path.to_string(),
            source,
        })?;
        self.store
            .put(&manifest_path, PutPayload::from(body))
            .await
            .map_err(store_err(&manifest_path))?;
        tracing::debug!(partition = dir, manifest = %manifest_path, "compaction manifest written");

        let store = self.store.clone();
        let wanted: Vec<(ObjectPath, Option<bytes::Bytes>)> = group
            .iter_mut()
            .map(|i| (i.meta.location.clone(), i.whole.take()))
            .collect();
        let files: Result<Vec<bytes::Bytes>, CompactionError> = futures::stream::iter(wanted)
            .map(move |(path, whole)| {
                let store = store.clone();
                async move {
                    if let Some(b) = whole {
                        return Ok(b);
                    }
                    match store.get(&path).await {
                        Ok(g) => g.bytes().await,
                        Err(e) => Err(e),
                    }
                    .map_err(store_err(&path))
                }
            })
            .buffered(self.cfg.concurrency)
            .try_collect()
            .await;
        let files = match files {
            Ok(f) => f,
            Err(e) => return Err(self.undo_manifest(dir, &manifest_path, e).await),
        };
        let listed = sources
            .iter()
            .map(|s| format!("{}:{}", s.name, s.rows))
            .collect::<Vec<_>>()
            .join("\n");
        let props = writer_properties(
            &self.standard,
            vec![KeyValue::new(COMPACTED_FROM.into(), listed)],
        );
        let footers: Vec<(ArrowReaderMetadata, String)> = group
            .iter()
            .map(|i| (i.footer.clone(), i.meta.location.to_string()))
            .collect();
        let what = output_path.to_string();
        // Decoding, sorting and encoding are CPU work: off the runtime's threads.
        let encoded =
            match tokio::task::spawn_blocking(move || encode(files, footers, props, &what))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
            {
                Ok(e) => e,
                Err(e) => return Err(self.undo_manifest(dir, &manifest_path, e).await),
            };
        let mut upload =
            object_store::buffered::BufWriter::new(self.store.clone(), output_path.clone());
        {
            use tokio::io::AsyncWriteExt;
            let io = |e: std::io::Error| CompactionError::Io {
                path: output_path.to_string(),
                source: e,
            };
            upload.write_all(&encoded).await.map_err(io)?;
            upload.shutdown().await.map_err(io)?;
        }
        drop(encoded);
        let written = self
            .store
            .head(&output_path)
            .await
            .map_err(store_err(&output_path))?
            .size;
        self.sync(&output_path, true)?;
        tracing::debug!(partition = dir, output = %output_path, "compacted file written");

        // An input changed since it was read (a collector's upload again): this output
        // may miss its new rows, so it goes instead, and the next run starts over.
        if let Some(changed) = self.changed_since_read(dir, &group).await? {
            tracing::warn!(partition = dir, file = %changed, "an input changed while it was compacted: undoing");
            self.delete(std::slice::from_ref(&output_path)).await?;
            self.delete(std::slice::from_ref(&manifest_path)).await?;
            return Ok(None);
        }
        let inputs: Vec<ObjectPath> = group.iter().map(|i| i.meta.location.clone()).collect();
        self.delete(&inputs).await?;
        self.sync(&output_path, false)?;
        self.delete(std::slice::from_ref(&manifest_path)).await?;
        tracing::info!(partition = dir, files = group.len(), output = %output, bytes = written, "compacted");
        Ok(Some(written))
    }

    /// The name of an input whose object is no longer the one read, if any.
    async fn changed_since_read(
        &self,
        dir: &str,
        group: &[Input],
    ) -> Result<Option<String>, CompactionError> {
        let now: HashMap<String, ObjectMeta> = self
            .store
            .list(Some(&ObjectPath::from(dir)))
            .map_ok(|m| (file_name(&m.location).to_owned(), m))
            .try_collect()
            .await
            .map_err(store_err(&dir))?;
        Ok(group
            .iter()
            .find(|i| {
                now.get(&i.name).is_some_and(|m| {
                    m.size != i.meta.size
                        || m.last_modified != i.meta.last_modified
                        || m.e_tag != i.meta.e_tag
                })
            })
            .map(|i| i.name.clone()))
    }

    /// Finishes an interrupted group (its output was written whole: delete the inputs
    /// left) or undoes it (no output, or one cut short by a power loss: its inputs are all
    /// there). An input written after the manifest is a new upload and stays.
    async fn repair(
        &self,
        dir: &str,
        manifest_meta: &ObjectMeta,
        files: &mut BTreeMap<String, ObjectMeta>,
    ) -> Result<(), CompactionError> {
        let manifest_path = &manifest_meta.location;
        let body = self
            .store
            .get(manifest_path)
            .await
            .map_err(store_err(manifest_path))?
            .bytes()
            .await
            .map_err(store_err(manifest_path))?;
        let manifest: Manifest = match serde_json::from_slice(&body) {
            Ok(m) => m,
            Err(e) => {
                // Cut short before its output was begun, or its output names what it
                // replaced (rows so recognised next run): safe to drop either way.
                tracing::warn!(partition = dir, manifest = %manifest_path, error = %e, "dropping an unreadable compaction manifest");
                return self.delete(std::slice::from_ref(manifest_path)).await;
            }
        };
        let whole = match files.get(&manifest.output) {
            Some(out) => {
                let expected: u64 = manifest.inputs.iter().map(|i| i.rows).sum();
                let kept = Arc::new(AtomicU64::new(KEPT_WHOLE_BYTES));
                match footer(self.store.clone(), out.clone(), kept).await {
                    Ok(f) => f.rows == expected,
                    Err(CompactionError::Parquet { .. }) => false,
                    Err(e) => return Err(e),
                }
            }
            None => false,
        };
        if whole {
            let mut left: Vec<ObjectPath> = Vec::new();
            for i in &manifest.inputs {
                if files
                    .get(&i.name)
                    .is_some_and(|m| m.last_modified <= manifest_meta.last_modified)
                    && let Some(m) = files.remove(&i.name)
                {
                    left.push(m.location);
                }
            }
            tracing::info!(partition = dir, manifest = %manifest_path, inputs = left.len(), "finishing an interrupted compaction");
            self.delete(&left).await?;
            self.sync(
                &ObjectPath::from(format!("{dir}/{}", manifest.output)),
                false,
            )?;
        } else {
            tracing::info!(partition = dir, manifest = %manifest_path, "undoing an interrupted compaction");
            if let Some(out) = files.remove(&manifest.output) {
                self.delete(std::slice::from_ref(&out.location)).await?;
            }
            self.remove_staging(dir, &manifest.output);
        }
        self.delete(std::slice::from_ref(manifest_path)).await
    }

    /// On a local store, what a killed multipart write of `output` left (`<name>#<n>`).
    fn remove_staging(&self, dir: &str, output: &str) {
        let Some(root) = &self.local_root else {
            return;
        };
        let local = root.join(dir);
        let prefix = format!("{output}#");
        for e in std::fs::read_dir(&local).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Deletes objects; one already gone is fine (a retry after a crash).
    async fn delete(&self, paths: &[ObjectPath]) -> Result<(), CompactionError> {
        let locations =
            futures::stream::iter(paths.iter().cloned().map(Ok).collect::<Vec<_>>()).boxed();
        let mut deleted = self.store.delete_stream(locations);
        while let Some(r) = deleted.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    // The store's error names the object that failed; this names the set
                    // (results need not come back in the order asked).
                    let path = match paths {
                        [one] => one.to_string(),
                        [first, rest @ ..] => {
                            format!("{first} or one of the {} deleted with it", rest.len())
                        }
                        [] => String::new(),
                    };
                    return Err(CompactionError::Store { path, source: e });
                }
            }
        }
        Ok(())
    }

    /// Nothing of a group is written yet (an input unreadable, say): its manifest goes
    /// too, so the partition is left as it was. Best effort: a manifest left behind is
    /// undone by the next run.
    async fn undo_manifest(
        &self,
        dir: &str,
        manifest: &ObjectPath,
        e: CompactionError,
    ) -> CompactionError {
        if let Err(d) = self.delete(std::slice::from_ref(manifest)).await {
            tracing::warn!(partition = dir, manifest = %manifest, error = %d, "cannot remove the manifest of a group that failed: the next run undoes it");
        }
        e
    }

    /// On a local store: the file (when `file`) and its directory reach the disk.
    fn sync(&self, path: &ObjectPath, file: bool) -> Result<(), CompactionError> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let local = root.join(path.as_ref());
        let io = |source| CompactionError::Io {
            path: local.display().to_string(),
            source,
        };
        if file {
            std::fs::File::open(&local)
                .and_then(|f| f.sync_all())
                .map_err(io)?;
        }
        if let Some(d) = local.parent() {
            edgelog_collector::state_file::sync_dir(d).map_err(io)?;
        }
        Ok(())
    }
}

/// A file's footer, read with one or two ranged reads.
async fn footer(
    store: Arc<dyn ObjectStore>,
    meta: ObjectMeta,
    kept: Arc<AtomicU64>,
) -> Result<Input, CompactionError> {
    // The footer is at the end: one read of its likely size, a second if it is larger.
    let mut want = meta.size.min(64 << 10);
    let mut whole = None;
    let parsed = loop {
        let tail = store
            .get_range(&meta.location, meta.size - want..meta.size)
            .await
            .map_err(store_err(&meta.location))?;
        if want == meta.size && kept.fetch_add(want, Ordering::Relaxed) + want <= KEPT_WHOLE_BYTES {
            whole = Some(tail.clone());
        }
        let mut reader = ParquetMetaDataReader::new();
        match reader.try_parse_sized(&tail, meta.size) {
            Ok(()) => break reader.finish().map_err(parquet_err(&meta.location))?,
            Err(ParquetError::NeedMoreData(n)) if (n as u64) > want && (n as u64) <= meta.size => {
                want = n as u64;
            }
            Err(e) => return Err(parquet_err(&meta.location)(e)),
        }
    };
    let footer = ArrowReaderMetadata::try_new(Arc::new(parsed), ArrowReaderOptions::new())
        .map_err(parquet_err(&meta.location))?;
    let md = footer.metadata();
    let rows = md.file_metadata().num_rows().max(0) as u64;
    let ts = footer.schema().index_of("timestamp").ok();
    let min_ts = md
        .row_groups()
        .iter()
        .filter_map(|rg| match rg.column(ts?).statistics() {
            Some(Statistics::Int64(s)) => s.min_opt().copied(),
            _ => None,
        })
        .min()
        .unwrap_or(i64::MIN);
    let sources = md
        .file_metadata()
        .key_value_metadata()
        .into_iter()
        .flatten()
        .filter(|kv| kv.key == COMPACTED_FROM)
        .filter_map(|kv| kv.value.as_deref())
        .flat_map(|v| v.lines())
        .filter_map(|l| {
            let (name, rows) = l.rsplit_once(':')?;
            Some(Source {
                name: name.to_owned(),
                rows: rows.parse().ok()?,
            })
        })
        .collect();
    Ok(Input {
        name: file_name(&meta.location).to_owned(),
        rows,
        min_ts,
        schema: format!("{:?}", footer.schema().fields()),
        sources,
        footer,
        whole,
        meta,
    })
}

/// An error with its causes, for a log line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

fn file_name(p: &ObjectPath) -> &str {
    p.as_ref().rsplit('/').next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_at_and_past_its_limits() {
        let ok = |c: CompactionConfig| c.validate("c");
        let d = CompactionConfig::default;
        assert!(ok(d()).is_ok());
        for t in [1 << 10, 5 << 40] {
            assert!(
                ok(CompactionConfig {
                    target_bytes: t,
                    ..d()
                })
                .is_ok(),
                "{t}"
            );
        }
        for t in [0, (1 << 10) - 1, (5 << 40) + 1, u64::MAX] {
            let e = ok(CompactionConfig {
                target_bytes: t,
                ..d()
            })
            .expect_err("refused");
            assert!(e.contains("c.target_bytes"), "{e}");
        }
        for r in [0, (1 << 32) + 1, u64::MAX] {
            assert!(ok(CompactionConfig { max_rows: r, ..d() }).is_err(), "{r}");
        }
        assert!(
            ok(CompactionConfig {
                max_rows: 1 << 32,
                ..d()
            })
            .is_ok()
        );
        for n in [0, 1025, usize::MAX] {
            assert!(
                ok(CompactionConfig {
                    concurrency: n,
                    ..d()
                })
                .is_err(),
                "{n}"
            );
        }
        let day = Duration::from_secs(86_400);
        assert!(
            ok(CompactionConfig {
                min_age: day * 366,
                ..d()
            })
            .is_err()
        );
        assert!(
            ok(CompactionConfig {
                min_age: Duration::ZERO,
                ..d()
            })
            .is_ok()
        );
        assert!(
            ok(CompactionConfig {
                interval: Duration::from_millis(999),
                ..d()
            })
            .is_err()
        );
        assert!(
            ok(CompactionConfig {
                interval: Duration::from_secs(1),
                ..d()
            })
            .is_ok()
        );
    }
}
