//! Compaction: a closed hour's small Parquet files, per partition, merged into files of a
//! target size sorted by time, in a bucket or a local directory alike.
//!
//! Crash-safe, in this order per group of inputs: a manifest naming the inputs and the
//! output is written, then the output, then the inputs are deleted, then the manifest.
//! The next run finishes a manifest whose output exists (deletes the inputs left) and
//! undoes one whose output does not. Readers may see a group's rows twice between the
//! output's write and the inputs' deletion; they never miss one.
//!
//! Long (about 520 lines): planning, the crash repair and the writing share one manifest
//! format and must change together.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arrow_array::{Array, RecordBatch, TimestampMillisecondArray, UInt32Array};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::errors::ParquetError;
use parquet::file::metadata::{KeyValue, ParquetMetaDataReader};
use parquet::file::statistics::Statistics;
use serde::{Deserialize, Serialize};

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
    /// ...and at most this many rows. Memory while compacting is about this many decoded
    /// rows, twice (about 2 KiB a row for typical records).
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
            max_rows: 1_000_000,
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
            self.partition(&dir, objects, closed, now, &mut report)
                .await?;
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
                self.repair(dir, &m.location, &mut files).await?;
                report.repaired += 1;
            }
        }
        if !closed {
            report.waiting += files.len() as u64;
            return Ok(());
        }
        let (settled, young): (Vec<_>, Vec<_>) = files
            .into_values()
            .partition(|m| SystemTime::from(m.last_modified) + self.cfg.min_age <= now);
        report.waiting += young.len() as u64;
        let store = self.store.clone();
        let kept = Arc::new(AtomicU64::new(0));
        let read: Vec<Result<Input, CompactionError>> = futures::stream::iter(settled)
            .map(move |m| footer(store.clone(), m, kept.clone()))
            .buffered(self.cfg.concurrency)
            .collect()
            .await;
        let mut inputs = Vec::with_capacity(read.len());
        for r in read {
            match r {
                Ok(i) => inputs.push(i),
                // Not a Parquet file after all: not ours to merge, nor to stop for.
                Err(e @ CompactionError::Parquet { .. }) => {
                    tracing::warn!(partition = dir, error = %e, "skipping a file that is not readable parquet");
                    report.unreadable += 1;
                }
                Err(e) => return Err(e),
            }
        }

        // A collector that crashed between an upload and saving its watermark uploads the
        // same file again (same name, same rows); one compacted meanwhile is a duplicate.
        let replaced: HashMap<&str, u64> = inputs
            .iter()
            .flat_map(|i| i.sources.iter().map(|s| (s.name.as_str(), s.rows)))
            .collect();
        let (again, kept): (Vec<_>, Vec<_>) = inputs.iter().enumerate().partition(|(_, i)| {
            i.sources.is_empty() && replaced.get(i.name.as_str()) == Some(&i.rows)
        });
        let again: Vec<ObjectPath> = again
            .into_iter()
            .map(|(_, i)| i.meta.location.clone())
            .collect();
        let kept: Vec<usize> = kept.into_iter().map(|(n, _)| n).collect();
        if !again.is_empty() {
            tracing::warn!(
                partition = dir,
                files = again.len(),
                "deleting files uploaded again after they were compacted"
            );
            report.duplicates_removed += again.len() as u64;
            if !self.dry_run {
                self.delete(&again).await?;
            }
        }
        let mut inputs: Vec<Input> = {
            let mut slots: Vec<Option<Input>> = inputs.drain(..).map(Some).collect();
            kept.into_iter().filter_map(|n| slots[n].take()).collect()
        };

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
            report.files_in += group.len() as u64;
            report.rows += group.iter().map(|i| i.rows).sum::<u64>();
            report.bytes_in += group.iter().map(|i| i.meta.size).sum::<u64>();
            report.files_out += 1;
            if !self.dry_run {
                report.bytes_out += self.merge(dir, group).await?;
            }
        }
        Ok(())
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
    async fn merge(&self, dir: &str, mut group: Vec<Input>) -> Result<u64, CompactionError> {
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
        let files: Vec<bytes::Bytes> = futures::stream::iter(wanted)
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
            .await?;
        let listed = sources
            .iter()
            .map(|s| format!("{}:{}", s.name, s.rows))
            .collect::<Vec<_>>()
            .join("\n");
        let props = writer_properties(
            &self.standard,
            vec![KeyValue::new(COMPACTED_FROM.into(), listed)],
        );
        let footers: Vec<ArrowReaderMetadata> = group.iter().map(|i| i.footer.clone()).collect();
        let what = output_path.to_string();
        // Decoding, sorting and encoding are CPU work: off the runtime's threads.
        let encoded = tokio::task::spawn_blocking(move || encode(files, footers, props, &what))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
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

        let inputs: Vec<ObjectPath> = group.iter().map(|i| i.meta.location.clone()).collect();
        self.delete(&inputs).await?;
        self.sync(&output_path, false)?;
        self.delete(std::slice::from_ref(&manifest_path)).await?;
        tracing::info!(partition = dir, files = group.len(), output = %output, bytes = written, "compacted");
        Ok(written)
    }

    /// Finishes an interrupted group (its output was written: delete the inputs left) or
    /// undoes it (no output: its inputs are all there).
    async fn repair(
        &self,
        dir: &str,
        manifest_path: &ObjectPath,
        files: &mut BTreeMap<String, ObjectMeta>,
    ) -> Result<(), CompactionError> {
        let body = self
            .store
            .get(manifest_path)
            .await
            .map_err(store_err(manifest_path))?
            .bytes()
            .await
            .map_err(store_err(manifest_path))?;
        let manifest: Manifest =
            serde_json::from_slice(&body).map_err(|source| CompactionError::Manifest {
                path: manifest_path.to_string(),
                source,
            })?;
        if files.contains_key(&manifest.output) {
            let left: Vec<ObjectPath> = manifest
                .inputs
                .iter()
                .filter_map(|i| files.remove(&i.name))
                .map(|m| m.location)
                .collect();
            tracing::info!(partition = dir, manifest = %manifest_path, inputs = left.len(), "finishing an interrupted compaction");
            self.delete(&left).await?;
            self.sync(
                &ObjectPath::from(format!("{dir}/{}", manifest.output)),
                false,
            )?;
        } else {
            tracing::info!(partition = dir, manifest = %manifest_path, "undoing an interrupted compaction");
        }
        self.delete(std::slice::from_ref(manifest_path)).await
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
                    return Err(CompactionError::Store {
                        path: paths.first().map(|p| p.to_string()).unwrap_or_default(),
                        source: e,
                    });
                }
            }
        }
        Ok(())
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

fn file_name(p: &ObjectPath) -> &str {
    p.as_ref().rsplit('/').next().unwrap_or_default()
}

/// The files' rows, sorted by time, as one Parquet file.
fn encode(
    files: Vec<bytes::Bytes>,
    footers: Vec<ArrowReaderMetadata>,
    props: parquet::file::properties::WriterProperties,
    what: &str,
) -> Result<Vec<u8>, CompactionError> {
    let parquet = |source| CompactionError::Parquet {
        path: what.to_owned(),
        source,
    };
    let arrow = |source| CompactionError::Arrow {
        path: what.to_owned(),
        source,
    };
    let schema = footers[0].schema().clone();
    let mut batches = Vec::new();
    for (file, footer) in files.into_iter().zip(footers) {
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, footer)
            .with_batch_size(64 * 1024)
            .build()
            .map_err(parquet)?;
        for b in reader {
            batches.push(b.map_err(arrow)?);
        }
    }
    let all = arrow_select::concat::concat_batches(&schema, &batches).map_err(arrow)?;
    drop(batches);
    let sorted = sort_by_time(&all).map_err(arrow)?;
    drop(all);
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, schema, Some(props)).map_err(parquet)?;
    writer.write(&sorted).map_err(parquet)?;
    writer.close().map_err(parquet)?;
    Ok(out)
}

/// Rows in time order; rows of one millisecond keep their order (stable).
fn sort_by_time(batch: &RecordBatch) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let Some(ts) = batch.schema().index_of("timestamp").ok().and_then(|n| {
        batch
            .column(n)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .cloned()
    }) else {
        return Ok(batch.clone());
    };
    let mut order: Vec<u32> = (0..batch.num_rows() as u32).collect();
    order.sort_by_key(|&n| (ts.is_null(n as usize), ts.value(n as usize)));
    arrow_select::take::take_record_batch(batch, &UInt32Array::from(order))
}

/// The start of the partition's hour, from a path the template made: `Some(None)` when the
/// template has no full date, `None` when the path is not one of the template's.
pub fn parse_partition(template: &str, path: &str) -> Option<Option<i64>> {
    let (mut y, mut mo, mut d, mut h) = (None, None, None, None);
    let mut rest = path;
    let mut t = template;
    while !t.is_empty() {
        if let Some(after) = t.strip_prefix('{') {
            let (var, after) = after.split_once('}')?;
            t = after;
            let digits = |n: usize, rest: &mut &str| -> Option<u32> {
                let s = rest.get(..n)?;
                if !s.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                *rest = &rest[n..];
                s.parse().ok()
            };
            match var {
                "yyyy" => y = Some(digits(4, &mut rest)?),
                "MM" => mo = Some(digits(2, &mut rest)?),
                "dd" => d = Some(digits(2, &mut rest)?),
                "HH" => h = Some(digits(2, &mut rest)?),
                "DistributionId" => {
                    // Up to the template's next literal character (ids hold no '/').
                    let stop = t.chars().next();
                    let end = match stop {
                        Some(c) => rest.find(c)?,
                        None => rest.len(),
                    };
                    if end == 0 || rest[..end].contains('/') {
                        return None;
                    }
                    rest = &rest[end..];
                }
                _ => return None,
            }
        } else {
            let c = t.chars().next()?;
            rest = rest.strip_prefix(c)?;
            t = &t[c.len_utf8()..];
        }
    }
    if !rest.is_empty() {
        return None;
    }
    Some(match (y, mo, d, h) {
        (Some(y), Some(mo), Some(d), Some(h))
            if (1..=12).contains(&mo) && (1..=31).contains(&d) && h < 24 =>
        {
            let days = edgelog_record::time::days_from_civil(y as i64, mo, d);
            Some(days * 86_400_000 + h as i64 * 3_600_000)
        }
        (Some(_), Some(_), Some(_), Some(_)) => return None,
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_parse_back_from_the_template() {
        let t = crate::config::DEFAULT_TEMPLATE;
        let hour = edgelog_record::time::days_from_civil(2026, 11, 26) * 86_400_000 + 5 * 3_600_000;
        assert_eq!(
            parse_partition(t, "DistributionId=E1/year=2026/month=11/day=26/hour=05"),
            Some(Some(hour))
        );
        assert_eq!(
            parse_partition(t, "DistributionId=/year=2026/month=11/day=26/hour=05"),
            None
        );
        assert_eq!(
            parse_partition(t, "DistributionId=E1/year=2026/month=13/day=26/hour=05"),
            None
        );
        assert_eq!(
            parse_partition(t, "DistributionId=E1/year=2026/month=11/day=26/hour=24"),
            None
        );
        assert_eq!(
            parse_partition(t, "DistributionId=E1/year=2026/month=11/day=26/hour=5"),
            None
        );
        assert_eq!(
            parse_partition(t, "DistributionId=E1/year=2026/month=11/day=26/hour=05/x"),
            None
        );
        assert_eq!(parse_partition(t, "other/thing"), None);
        assert_eq!(
            parse_partition("{DistributionId}/{HH}", "E1/07"),
            Some(None)
        );
        assert_eq!(parse_partition("{DistributionId}/{HH}", "E1"), None);
    }
}
