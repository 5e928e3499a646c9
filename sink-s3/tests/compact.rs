//! Compaction on a local store: groups, order, exactly once across a failure at each
//! step, files uploaded again after compaction, young hours left alone.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

mod common;

use common::files as all_files;

use arrow_array::{Array, StringArray, TimestampMillisecondArray};
use async_trait::async_trait;
use edgelog_edge::{ErrorMix, Generator};
use edgelog_sink_s3::{
    CompactionConfig, CompactionReport, Compactor, StandardLogsConfig, local_store, schema,
    to_batch,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const HOUR_MS: i64 = 1_763_600_400_000; // 2025-11-20 01:00 UTC

fn partition(dist: &str, hour: u32) -> String {
    format!("standard-logs/DistributionId={dist}/year=2025/month=11/day=20/hour={hour:02}")
}

/// `files` small files of `rows` rows in each of `partitions`, timestamps shuffled across
/// files; returns every request id written.
fn write_inputs(
    root: &Path,
    partitions: &[(String, u32)],
    files: usize,
    rows: usize,
) -> Vec<String> {
    write_seeded(7, root, partitions, files, rows)
}

fn write_seeded(
    seed: u64,
    root: &Path,
    partitions: &[(String, u32)],
    files: usize,
    rows: usize,
) -> Vec<String> {
    let mut g = Generator::new(seed, 4, 4);
    let mut ids = Vec::new();
    let schema = schema();
    for (dist, hour) in partitions {
        let dir = root.join(partition(dist, *hour));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for f in 0..files {
            let recs: Vec<_> = (0..rows)
                .map(|r| {
                    // Later files start earlier: the merge must sort.
                    let ts = HOUR_MS
                        + (*hour as i64 - 1) * 3_600_000
                        + ((files - f) * 1000 + r * 7) as i64;
                    g.record(ts, 0, ErrorMix::default())
                })
                .collect();
            ids.extend(recs.iter().map(|r| r.request_id().to_owned()));
            let refs: Vec<_> = recs.iter().collect();
            let batch = to_batch(&schema, &refs, 100.0).expect("batch");
            let file =
                std::fs::File::create(dir.join(format!("c1-{f:020}.parquet"))).expect("create");
            let mut w = ArrowWriter::try_new(file, schema.clone(), None).expect("writer");
            w.write(&batch).expect("write");
            w.close().expect("close");
        }
    }
    ids
}

fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    all_files(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect()
}

/// Request ids per file, and whether each file is in time order.
fn read(path: &Path) -> (Vec<String>, bool) {
    let f = std::fs::File::open(path).expect("open");
    let mut ids = Vec::new();
    let mut ts = Vec::new();
    for b in ParquetRecordBatchReaderBuilder::try_new(f)
        .expect("parquet")
        .build()
        .expect("reader")
    {
        let b = b.expect("batch");
        let col = b
            .column_by_name("x_edge_request_id")
            .or_else(|| b.column_by_name("x-edge-request-id"))
            .expect("request id column");
        let col = col.as_any().downcast_ref::<StringArray>().expect("strings");
        ids.extend((0..col.len()).map(|i| col.value(i).to_owned()));
        let t = b.column_by_name("timestamp").expect("timestamp");
        let t = t
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .expect("ms");
        ts.extend(t.values().iter().copied());
    }
    (ids, ts.is_sorted())
}

/// Every id found under `dir`, counted.
fn found(dir: &Path) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for p in parquet_files(dir) {
        for id in read(&p).0 {
            *m.entry(id).or_default() += 1;
        }
    }
    m
}

fn exactly_once(dir: &Path, ids: &[String]) {
    let m = found(dir);
    assert_eq!(m.len(), ids.len(), "every row present");
    for id in ids {
        assert_eq!(m.get(id), Some(&1), "row {id} once");
    }
}

fn config(min_age: Duration) -> StandardLogsConfig {
    StandardLogsConfig {
        compaction: CompactionConfig {
            target_bytes: 64 << 20,
            max_rows: 100,
            min_age,
            ..CompactionConfig::default()
        },
        ..StandardLogsConfig::default()
    }
}

fn compactor(root: &Path, store: Arc<dyn ObjectStore>, min_age: Duration) -> Compactor {
    let cfg = config(min_age);
    Compactor::new(store, cfg.clone(), cfg.compaction).with_local_root(root)
}

async fn compact(root: &Path) -> CompactionReport {
    compactor(root, local_store(root).expect("store"), Duration::ZERO)
        .run(SystemTime::now())
        .await
        .expect("compaction")
}

#[tokio::test]
async fn small_files_become_groups_of_max_rows_in_time_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let parts = [
        ("E1".to_owned(), 1),
        ("E1".to_owned(), 2),
        ("E2".to_owned(), 1),
    ];
    // 20 files of 10 rows: groups of 100 rows, two per partition.
    let ids = write_inputs(dir.path(), &parts, 20, 10);
    let dry = compactor(
        dir.path(),
        local_store(dir.path()).expect("store"),
        Duration::ZERO,
    )
    .dry_run(true)
    .run(SystemTime::now())
    .await
    .expect("dry run");
    assert_eq!((dry.files_in, dry.files_out, dry.rows), (60, 6, 600));
    assert_eq!(
        parquet_files(dir.path()).len(),
        60,
        "a dry run changes nothing"
    );

    let report = compact(dir.path()).await;
    assert_eq!(report.files_in, 60);
    assert_eq!(report.files_out, 6);
    assert_eq!(report.partitions_compacted, 3);
    let files = parquet_files(dir.path());
    assert_eq!(files.len(), 6, "{files:?}");
    for f in &files {
        let (rows, sorted) = read(f);
        assert_eq!(rows.len(), 100);
        assert!(sorted, "{} is in time order", f.display());
        assert!(
            f.file_name()
                .expect("name")
                .to_string_lossy()
                .starts_with("compacted-")
        );
    }
    exactly_once(dir.path(), &ids);
    assert!(
        all_files(dir.path())
            .iter()
            .all(|p| !p.to_string_lossy().contains("_edgelog-compaction-"))
    );

    // Compacted files are full: nothing more to do.
    let again = compact(dir.path()).await;
    assert_eq!((again.files_in, again.files_out), (0, 0));
    exactly_once(dir.path(), &ids);
}

#[tokio::test]
async fn an_hour_not_yet_closed_and_files_not_yet_settled_wait() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = write_inputs(dir.path(), &[("E1".to_owned(), 1)], 4, 10);
    let c = compactor(
        dir.path(),
        local_store(dir.path()).expect("store"),
        Duration::from_secs(3600),
    );
    // An hour after the partition's hour ended, but the files were written just now.
    let r = c.run(SystemTime::now()).await.expect("run");
    assert_eq!((r.files_in, r.waiting), (0, 4));
    // Just before the hour's end plus min_age.
    let end = SystemTime::UNIX_EPOCH + Duration::from_millis((HOUR_MS + 3_600_000) as u64);
    let r = c.run(end + Duration::from_secs(3599)).await.expect("run");
    assert_eq!((r.files_in, r.waiting), (0, 4));
    assert_eq!(parquet_files(dir.path()).len(), 4);
    exactly_once(dir.path(), &ids);
}

#[tokio::test]
async fn a_file_uploaded_again_after_compaction_is_removed_as_a_duplicate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = write_inputs(dir.path(), &[("E1".to_owned(), 1)], 5, 10);
    let first = parquet_files(dir.path())[0].clone();
    let bytes = std::fs::read(&first).expect("read");
    compact(dir.path()).await;
    exactly_once(dir.path(), &ids);
    // A collector that crashed before saving its watermark uploads the same file again.
    std::fs::write(&first, &bytes).expect("write again");
    let r = compact(dir.path()).await;
    assert_eq!(r.duplicates_removed, 1);
    exactly_once(dir.path(), &ids);
    // A different file that happens to share a name (other rows): none of its rows is
    // among the compacted ones, so all are kept.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let other = write_seeded(8, dir2.path(), &[("E1".to_owned(), 1)], 1, 3);
    std::fs::copy(parquet_files(dir2.path())[0].clone(), &first).expect("copy");
    let r = compact(dir.path()).await;
    assert_eq!(
        (r.duplicates_removed, r.duplicate_rows_removed),
        (1, 0),
        "{r:?}"
    );
    let m = found(dir.path());
    assert!(other.iter().all(|id| m.get(id) == Some(&1)));
    assert!(ids.iter().all(|id| m.get(id) == Some(&1)));
}

/// A Parquet file of `recs` at `path`.
fn write_file(path: &Path, recs: &[edgelog_record::Record]) {
    let schema = schema();
    let refs: Vec<_> = recs.iter().collect();
    let batch = to_batch(&schema, &refs, 100.0).expect("batch");
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).expect("create"), schema, None)
        .expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
}

#[tokio::test]
async fn unreadable_files_and_foreign_objects_are_left_alone_and_stop_no_other_partition() {
    let dir = tempfile::tempdir().expect("tempdir");
    let parts = [
        ("E1".to_owned(), 1),
        ("E2".to_owned(), 1),
        ("E3".to_owned(), 1),
    ];
    let ids = write_inputs(dir.path(), &parts, 3, 10);
    let part = dir.path().join(partition("E1", 1));
    std::fs::write(part.join("broken.parquet"), b"not parquet at all").expect("write");
    std::fs::write(part.join("empty.parquet"), b"").expect("write");
    std::fs::write(part.join("notes.txt"), b"hello").expect("write");
    std::fs::create_dir_all(dir.path().join("standard-logs/elsewhere")).expect("mkdir");
    std::fs::write(dir.path().join("standard-logs/elsewhere/x.parquet"), b"x").expect("write");
    // E2: a file whose footer reads but whose pages are garbage.
    let e2 = dir.path().join(partition("E2", 1));
    let victim = parquet_files(&e2)[0].clone();
    let mut bytes = std::fs::read(&victim).expect("read");
    for b in bytes.iter_mut().skip(4).take(200) {
        *b = 0xAB;
    }
    std::fs::write(&victim, &bytes).expect("write");

    let r = compact(dir.path()).await;
    assert_eq!((r.unreadable, r.failed_partitions), (2, 1), "{r:?}");
    assert!(
        r.last_error.as_deref().is_some_and(|e| e.contains("E2")),
        "{r:?}"
    );
    // E1 and E3 compacted, E2 as it was.
    assert_eq!((r.files_in, r.files_out), (6, 2), "{r:?}");
    assert!(part.join("broken.parquet").exists() && part.join("notes.txt").exists());
    assert!(part.join("empty.parquet").exists());
    assert!(
        dir.path()
            .join("standard-logs/elsewhere/x.parquet")
            .exists()
    );
    assert_eq!(parquet_files(&e2).len(), 3);
    let m: BTreeMap<_, _> = parquet_files(dir.path())
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("compacted-"))
        })
        .flat_map(|p| read(&p).0)
        .map(|id| (id, ()))
        .collect();
    assert_eq!(m.len(), 60);
    assert!(m.keys().all(|id| ids.contains(id)));
}

#[tokio::test]
async fn a_file_uploaded_again_with_more_or_fewer_rows_keeps_only_rows_not_compacted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let part = dir.path().join(partition("E1", 1));
    std::fs::create_dir_all(&part).expect("mkdir");
    let mut g = Generator::new(5, 2, 2);
    let recs: Vec<_> = (0..60)
        .map(|n| g.record(HOUR_MS + n * 1000, 0, ErrorMix::default()))
        .collect();
    // Three files of 10 rows, compacted.
    for (f, chunk) in recs[..30].chunks(10).enumerate() {
        write_file(&part.join(format!("c1-{f:020}.parquet")), chunk);
    }
    compact(dir.path()).await;
    // The collector, rebuilding from its log after a crash, uploads file 0 again with
    // 10 more rows (its own and the next ones), and file 1 with fewer.
    write_file(
        &part.join(format!("c1-{:020}.parquet", 0)),
        &[&recs[..10], &recs[30..40]].concat(),
    );
    write_file(&part.join(format!("c1-{:020}.parquet", 1)), &recs[10..15]);
    // And a new file, the rest.
    write_file(&part.join(format!("c1-{:020}.parquet", 40)), &recs[40..60]);
    let r = compact(dir.path()).await;
    assert_eq!(
        (r.duplicates_removed, r.duplicate_rows_removed),
        (2, 15),
        "{r:?}"
    );
    let ids: Vec<String> = recs.iter().map(|r| r.request_id().to_owned()).collect();
    exactly_once(dir.path(), &ids);
    // Nothing more on a rerun.
    let r = compact(dir.path()).await;
    assert_eq!(r.duplicates_removed, 0, "{r:?}");
    exactly_once(dir.path(), &ids);
}

#[tokio::test]
async fn an_output_cut_short_by_a_power_loss_is_undone_not_finished() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let ids = write_inputs(root, &[("E1".to_owned(), 1)], 10, 10);
    // Killed at the first deletion: the manifest and the output are written.
    let store = Arc::new(Crashing {
        inner: local_store(root).expect("store"),
        changes: Arc::new(AtomicUsize::new(0)),
        fail_at: 3,
    });
    assert!(
        compactor(root, store, Duration::ZERO)
            .run(SystemTime::now())
            .await
            .is_ok_and(|r| r.failed_partitions == 1)
    );
    let out = parquet_files(root)
        .into_iter()
        .find(|p| p.to_string_lossy().contains("compacted-"))
        .expect("an output");
    // The disk kept only part of it.
    let bytes = std::fs::read(&out).expect("read");
    std::fs::write(&out, &bytes[..bytes.len() / 2]).expect("truncate");
    let r = compact(root).await;
    assert_eq!(r.repaired, 1, "{r:?}");
    exactly_once(root, &ids);
    assert_eq!(parquet_files(root).len(), 1);
}

/// A store whose `fail_at`-th change (a put or one deletion) fails, and every one after:
/// what a process killed there leaves behind.
#[derive(Debug)]
struct Crashing {
    inner: Arc<dyn ObjectStore>,
    changes: Arc<AtomicUsize>,
    fail_at: usize,
}

impl fmt::Display for Crashing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Crashing({})", self.inner)
    }
}

fn crash(changes: &AtomicUsize, fail_at: usize) -> object_store::Result<()> {
    if changes.fetch_add(1, Ordering::SeqCst) + 1 >= fail_at {
        return Err(object_store::Error::Generic {
            store: "Crashing",
            source: "killed here".into(),
        });
    }
    Ok(())
}

#[async_trait]
impl ObjectStore for Crashing {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        crash(&self.changes, self.fail_at)?;
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        crash(&self.changes, self.fail_at)?;
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        let (inner, changes, fail_at) = (self.inner.clone(), self.changes.clone(), self.fail_at);
        locations
            .then(move |l| {
                let (inner, changes) = (inner.clone(), changes.clone());
                async move {
                    let l = l?;
                    crash(&changes, fail_at)?;
                    let mut one =
                        inner.delete_stream(futures::stream::iter([Ok(l.clone())]).boxed());
                    one.next().await.unwrap_or(Ok(l))
                }
            })
            .boxed()
    }
    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        crash(&self.changes, self.fail_at)?;
        self.inner.copy_opts(from, to, options).await
    }
}

#[tokio::test]
async fn killed_at_each_step_then_run_again_every_row_is_there_once() {
    // Two groups in one partition, one in another: a manifest, an output, five or ten
    // deletions and a manifest deletion each.
    let parts = [("E1".to_owned(), 1), ("E2".to_owned(), 1)];
    let mut fail_at = 1;
    loop {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let ids = write_inputs(root, &parts, 10, 15);
        let store = Arc::new(Crashing {
            inner: local_store(root).expect("store"),
            changes: Arc::new(AtomicUsize::new(0)),
            fail_at,
        });
        let crashed = compactor(root, store, Duration::ZERO)
            .run(SystemTime::now())
            .await
            .map(|r| r.failed_partitions)
            .unwrap_or(1);
        // Whatever a reader sees now holds every row, some maybe twice, none missing.
        let seen = found(root);
        assert!(
            ids.iter().all(|id| seen.contains_key(id)),
            "after a crash at change {fail_at}, no row is missing"
        );
        let report = compact(root).await;
        exactly_once(root, &ids);
        let files = parquet_files(root);
        assert_eq!(
            files.len(),
            4,
            "after a crash at change {fail_at}: {files:?}"
        );
        assert!(
            all_files(root)
                .iter()
                .all(|p| !p.to_string_lossy().contains("_edgelog-compaction-")),
            "no manifest is left after a crash at change {fail_at}"
        );
        if crashed == 0 {
            assert_eq!(report.files_in, 0);
            break;
        }
        fail_at += 1;
    }
    assert!(fail_at > 30, "every step was tried: {fail_at}");
}

#[tokio::test]
async fn files_other_writers_leave_with_snappy_are_merged_too() {
    use parquet::basic::Compression;
    use parquet::file::properties::WriterProperties;
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = write_inputs(dir.path(), &[("E1".to_owned(), 1)], 2, 10);
    let part = dir.path().join(partition("E1", 1));
    let mut g = Generator::new(9, 2, 2);
    let recs: Vec<_> = (0..10)
        .map(|n| g.record(HOUR_MS + n * 1000, 0, ErrorMix::default()))
        .collect();
    let schema = schema();
    let refs: Vec<_> = recs.iter().collect();
    let batch = to_batch(&schema, &refs, 100.0).expect("batch");
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let file = std::fs::File::create(part.join("from-spark.parquet")).expect("create");
    let mut w = ArrowWriter::try_new(file, schema, Some(props)).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
    let r = compact(dir.path()).await;
    assert_eq!((r.files_in, r.failed_partitions), (3, 0), "{r:?}");
    let mut all = ids.clone();
    all.extend(recs.iter().map(|r| r.request_id().to_owned()));
    exactly_once(dir.path(), &all);
}
