//! The standard-log sink on the local store: layout, no empty files, bounded memory.

use std::sync::Arc;
use std::time::Duration;

mod common;

use common::files;
use edgelog_collector::{Batch, Sampler};
use edgelog_collector::{Entry, Sink};
use edgelog_edge::{ErrorMix, Generator};
use edgelog_record::SamplingConfig;
use edgelog_sink_s3::{StandardLogSink, StandardLogsConfig, local_store};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn rows(path: &std::path::Path) -> usize {
    let f = std::fs::File::open(path).expect("open");
    ParquetRecordBatchReaderBuilder::try_new(f)
        .expect("parquet")
        .build()
        .expect("reader")
        .map(|b| b.expect("batch").num_rows())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_distributions_stay_within_the_memory_bound_and_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = StandardLogsConfig {
        max_open_bytes: 8 << 20,
        max_age: Duration::from_secs(3600),
        ..StandardLogsConfig::default()
    };
    let mut sink = StandardLogSink::new(cfg, "c1", local_store(dir.path()).expect("store"));
    let mut g = Generator::new(3, 100, 8);
    let mut total = 0;
    for seq in 1..=100u64 {
        let recs: Vec<_> = (0..1000)
            .map(|i| {
                g.record(
                    1_764_000_000_000 + (seq * 1000 + i) as i64 * 50,
                    i as usize,
                    ErrorMix::default(),
                )
            })
            .collect();
        total += recs.len();
        let entry = Entry {
            seq,
            appended_ms: 0,
            records: Arc::new(recs),
        };
        sink.write(&Batch::all(&entry)).await.expect("write");
    }
    sink.flush().await.expect("flush");
    assert_eq!(sink.delivered(), 100);
    let found = files(dir.path());
    assert!(
        found
            .iter()
            .all(|p| p.extension().is_some_and(|x| x == "parquet")),
        "{found:?}"
    );
    let n: usize = found.iter().map(|p| rows(p)).sum();
    assert_eq!(n, total);
    assert!(
        found.iter().all(|p| rows(p) > 0),
        "an empty file was written"
    );
    let sample = found[0].display().to_string();
    assert!(
        sample.contains("standard-logs/DistributionId=E")
            && sample.contains("/year=2025/month=11/"),
        "{sample}"
    );
}

#[tokio::test]
async fn nothing_in_means_no_file_and_the_position_still_moves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sampling: SamplingConfig =
        serde_json::from_str(r#"{"default":{"standard":0}}"#).expect("config");
    let mut sink = StandardLogSink::new(
        StandardLogsConfig::default(),
        "c1",
        local_store(dir.path()).expect("store"),
    );
    let mut g = Generator::new(1, 2, 2);
    let recs: Vec<_> = (0..100)
        .map(|i| g.record(1_764_000_000_000, i, ErrorMix::default()))
        .collect();
    let entry = Entry {
        seq: 7,
        appended_ms: 0,
        records: Arc::new(recs),
    };
    let mut sampler = Sampler::new(&sampling, "standard");
    sink.write(&sampler.batch(&entry)).await.expect("write");
    sink.flush().await.expect("flush");
    assert_eq!(sink.delivered(), 7);
    assert!(files(dir.path()).is_empty());
}

fn entry(seq: u64, g: &mut Generator) -> Entry {
    let recs: Vec<_> = (0..500)
        .map(|i| {
            g.record(
                1_764_000_000_000 + (seq * 500 + i) as i64 * 3_000,
                i as usize,
                ErrorMix::default(),
            )
        })
        .collect();
    Entry {
        seq,
        appended_ms: 0,
        records: Arc::new(recs),
    }
}

fn ids_in(dir: &std::path::Path) -> std::collections::HashMap<String, u32> {
    paths_of_ids(dir)
        .into_iter()
        .map(|(id, paths)| (id, paths.len() as u32))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_point_leaves_every_row_exactly_once() {
    crash_and_replay(3, 128 << 20, usize::MAX).await;
}

/// The same with rows in shared runs and many files uploaded at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_with_many_small_distributions_leaves_every_row_exactly_once() {
    crash_and_replay(40, 1 << 20, usize::MAX).await;
}

/// The same with every row staged (as with hundreds of files open): files close, crash
/// and replay with their rows in the staging, in runs, or in row groups of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_with_staged_rows_leaves_every_row_exactly_once() {
    crash_and_replay(40, 1 << 20, 1).await;
    crash_and_replay(3, 1 << 20, 1).await;
}

async fn crash_and_replay(distributions: usize, max_open_bytes: u64, stage_files: usize) {
    const ENTRIES: u64 = 24;
    for crash_after in [2u64, 4, 5, 9, 14, 16, 20] {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state/watermarks.json");
        let make = |max_age: Duration| {
            let cfg = StandardLogsConfig {
                max_age,
                max_open_bytes,
                ..StandardLogsConfig::default()
            };
            // As the collector makes it for a local directory: files renamed into place.
            StandardLogSink::new(cfg, "c1", local_store(dir.path()).expect("store"))
                .with_local_root(dir.path())
                .with_stage_files(stage_files)
                .with_state_file(&state)
                .expect("state")
        };
        let mut g = Generator::new(9, distributions, 4);
        let all: Vec<Entry> = (1..=ENTRIES).map(|s| entry(s, &mut g)).collect();

        // First life: files close by age, partition by partition: a tick right after an
        // entry closes the files opened before it and keeps the ones it just opened, which
        // hold the saved position back while older partitions upload past it.
        let mut first = make(Duration::from_millis(5));
        let mut saved = 0;
        for e in &all[..crash_after as usize] {
            first.write(&Batch::all(e)).await.expect("write");
            if e.seq % 2 == 0 {
                first.tick().await.expect("tick");
            }
            tokio::time::sleep(Duration::from_millis(8)).await;
            saved = first.delivered();
            first.cursor_saved(saved);
        }
        if std::env::var_os("DEBUG_CRASH").is_some() {
            let mut names: Vec<_> = files(dir.path())
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            names.sort();
            eprintln!("crash after {crash_after}, saved {saved}: {names:#?}");
        }
        drop(first); // SIGKILL: open files are gone, uploaded ones stay

        // Second life: replays from the saved position and closes files elsewhere.
        let mut second = make(Duration::from_secs(3600));
        for e in &all[saved as usize..] {
            second.write(&Batch::all(e)).await.expect("write");
        }
        second.flush().await.expect("flush");

        let ids = ids_in(dir.path());
        let total: usize = all.iter().map(|e| e.records.len()).sum();
        let dupes = ids.values().filter(|n| **n > 1).count();
        assert_eq!(
            dupes, 0,
            "crash after {crash_after} (saved {saved}): {dupes} rows twice"
        );
        assert_eq!(
            ids.len(),
            total,
            "crash after {crash_after} (saved {saved}): rows lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_body_of_thousands_of_partitions_keeps_few_files_open_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = StandardLogsConfig {
        max_open_files: 16,
        max_age: Duration::from_secs(3600),
        ..StandardLogsConfig::default()
    };
    let mut sink = StandardLogSink::new(cfg, "c1", local_store(dir.path()).expect("store"));
    // 3,000 records, each its own (distribution, hour), interleaved with a partition that
    // recurs through the body: its rows must all land, whatever is closed in between.
    let mut recs = Vec::new();
    for i in 0..3000i64 {
        recs.push(edgelog_record::Record {
            timestamp_ms: 1_764_000_000_000 + (i % 30) * 3_600_000,
            distribution_id: format!("E{}", i / 30),
            x_edge_request_id: Some(format!("r{i}")),
            ..Default::default()
        });
        if i % 100 == 0 {
            recs.push(edgelog_record::Record {
                timestamp_ms: 1_764_000_000_000,
                distribution_id: "EKEEP".into(),
                x_edge_request_id: Some(format!("keep{i}")),
                ..Default::default()
            });
        }
    }
    let total = recs.len();
    let entry = Entry {
        seq: 1,
        appended_ms: 0,
        records: Arc::new(recs),
    };
    sink.write(&Batch::all(&entry)).await.expect("write");
    sink.flush().await.expect("flush");
    assert_eq!(sink.delivered(), 1);
    let written: usize = files(dir.path()).iter().map(|p| rows(p)).sum();
    assert_eq!(written, total, "every row once");
}

/// Thousands of distributions with a few rows each per entry: under the memory bound
/// their rows go to shared runs rather than into files of a few rows each, so every
/// partition gets one file, with every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_small_distributions_share_runs_and_write_one_file_each() {
    const DISTRIBUTIONS: usize = 2000;
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    let cfg = StandardLogsConfig {
        max_open_bytes: 1 << 20,
        max_age: Duration::from_secs(3600),
        ..StandardLogsConfig::default()
    };
    let out = dir.path().join("out");
    let mut sink = StandardLogSink::new(cfg, "c1", local_store(&out).expect("store"))
        .with_local_root(&out)
        .with_spool_dir(&spool)
        .expect("spool");
    let mut g = Generator::new(11, DISTRIBUTIONS, 4);
    let (mut sent, mut runs) = (0, 0);
    for seq in 1..=40u64 {
        let recs: Vec<_> = (0..1000)
            .map(|i| {
                // Out of order within the hour: rows come back sorted all the same.
                g.record(
                    1_764_000_000_000 + ((seq * 1000 + i) * 7919 % 3_000_000) as i64,
                    (seq as usize * 1000 + i as usize) % DISTRIBUTIONS,
                    ErrorMix::default(),
                )
            })
            .collect();
        sent += recs.len();
        let entry = Entry {
            seq,
            appended_ms: 0,
            records: Arc::new(recs),
        };
        sink.write(&Batch::all(&entry)).await.expect("write");
        runs = runs.max(
            files(&spool)
                .iter()
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("run"))
                })
                .count(),
        );
    }
    assert!(runs > 1, "rows went to shared runs ({runs} at most)");
    sink.flush().await.expect("flush");
    assert_eq!(sink.delivered(), 40);
    let written = files(&out);
    assert_eq!(written.len(), DISTRIBUTIONS, "one file per partition");
    let ids = ids_in(&out);
    assert_eq!(ids.len(), sent, "every row");
    assert!(ids.values().all(|n| *n == 1), "no row twice");
    assert!(files(&spool).is_empty(), "runs are removed once gathered");
    for p in &written {
        assert_one_sorted_row_group(p);
    }
}

/// The file at `p` is one row group, sorted by time, every row with its time.
fn assert_one_sorted_row_group(p: &std::path::Path) {
    use arrow_array::{Array, TimestampMillisecondArray};
    let f = std::fs::File::open(p).expect("open");
    let reader = ParquetRecordBatchReaderBuilder::try_new(f).expect("parquet");
    assert_eq!(reader.metadata().num_row_groups(), 1, "{}", p.display());
    for b in reader.build().expect("reader") {
        let b = b.expect("batch");
        let ts = b
            .column(0)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .expect("timestamps");
        assert!(ts.values().is_sorted(), "{} sorted by time", p.display());
        assert_eq!(ts.null_count(), 0);
    }
}

/// A file's row groups are encoded into the spool as they fill and joined at close: one
/// file with several row groups, every row once, the edgelog metadata and Arrow types kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_groups_written_as_they_fill_join_into_one_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    let cfg = StandardLogsConfig {
        max_age: Duration::from_secs(3600),
        ..StandardLogsConfig::default()
    };
    let mut sink = StandardLogSink::new(cfg, "c1", local_store(dir.path()).expect("store"))
        .with_spool_dir(&spool)
        .expect("spool");
    let sent = write_one_partition(&mut sink).await;
    assert!(
        std::fs::read_dir(&spool).expect("spool").count() > 1,
        "rows went to the spool as they filled"
    );
    sink.flush().await.expect("flush");
    assert_eq!(sink.delivered(), 30);
    let found: Vec<_> = files(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "parquet") && !p.starts_with(&spool))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    let f = std::fs::File::open(&found[0]).expect("open");
    let builder = ParquetRecordBatchReaderBuilder::try_new(f).expect("parquet");
    let meta = builder.metadata().clone();
    assert!(
        meta.num_row_groups() > 1,
        "{} row groups",
        meta.num_row_groups()
    );
    let kv = meta
        .file_metadata()
        .key_value_metadata()
        .expect("key-value metadata");
    assert!(kv.iter().any(|k| k.key == "edgelog.schema_version"));
    assert_eq!(
        builder
            .schema()
            .field_with_name("timestamp")
            .expect("ts")
            .data_type(),
        &arrow_schema::DataType::Timestamp(arrow_schema::TimeUnit::Millisecond, Some("UTC".into()))
    );
    let ids = ids_in(dir.path());
    assert_eq!(ids.len(), sent.len());
    assert!(ids.values().all(|n| *n == 1));
    assert_eq!(
        std::fs::read_dir(&spool).expect("spool").count(),
        0,
        "the spool is emptied"
    );
}

/// Writes 30 entries of 1,000 rows of one partition into `sink`; their request ids.
async fn write_one_partition(sink: &mut StandardLogSink) -> Vec<String> {
    let mut g = Generator::new(5, 1, 2);
    let mut sent = Vec::new();
    for seq in 1..=30u64 {
        let recs: Vec<_> = (0..1000)
            .map(|i| {
                g.record(
                    1_764_000_000_000 + (seq * 1000 + i) as i64,
                    0,
                    ErrorMix::default(),
                )
            })
            .collect();
        sent.extend(recs.iter().map(|r| r.request_id().to_owned()));
        let entry = Entry {
            seq,
            appended_ms: 0,
            records: Arc::new(recs),
        };
        sink.write(&Batch::all(&entry)).await.expect("write");
    }
    sent
}

/// Writes 30,000 rows of one partition with `row_group_bytes`; the file's row group count
/// and the rows' ids.
async fn one_file_with_row_groups_of(bytes: u64) -> (usize, usize, Vec<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = StandardLogsConfig {
        max_age: Duration::from_secs(3600),
        row_group_bytes: bytes,
        ..StandardLogsConfig::default()
    };
    cfg.validate("sinks.standard").expect("valid");
    let mut sink = StandardLogSink::new(cfg, "c1", local_store(dir.path()).expect("store"))
        .with_spool_dir(&dir.path().join("spool"))
        .expect("spool");
    let mut sent = write_one_partition(&mut sink).await;
    sink.flush().await.expect("flush");
    let found: Vec<_> = files(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    let f = std::fs::File::open(&found[0]).expect("open");
    let meta = ParquetRecordBatchReaderBuilder::try_new(f)
        .expect("parquet")
        .metadata()
        .clone();
    let ids = ids_in(dir.path());
    assert!(ids.values().all(|n| *n == 1), "every row once");
    let mut got: Vec<String> = ids.into_keys().collect();
    got.sort();
    sent.sort();
    assert_eq!(got, sent);
    let len = std::fs::metadata(&found[0]).expect("file").len() as usize;
    (meta.num_row_groups(), len, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_group_bytes_sets_where_row_groups_end() {
    let (small, small_len, a) = one_file_with_row_groups_of(1 << 20).await;
    let (default, default_len, b) =
        one_file_with_row_groups_of(edgelog_sink_s3::ROW_GROUP_BYTES as u64).await;
    let (large, large_len, c) = one_file_with_row_groups_of(1 << 24).await;
    assert!(
        small > default && default > large,
        "row groups: {small} at 1 MiB, {default} at the default, {large} at 16 MiB"
    );
    assert!(
        small_len > default_len && default_len > large_len,
        "bytes: {small_len}, {default_len}, {large_len}"
    );
    assert!(a == b && b == c, "the same rows whatever the groups");
}

#[test]
fn row_group_bytes_outside_its_range_is_refused_by_name() {
    for bytes in [0, (1 << 20) - 1, (1 << 24) + 1, u64::MAX] {
        let cfg = StandardLogsConfig {
            row_group_bytes: bytes,
            ..StandardLogsConfig::default()
        };
        let e = cfg.validate("sinks.standard").expect_err("refused");
        assert!(e.contains("sinks.standard.row_group_bytes"), "{e}");
    }
    for (bytes, open) in [(1 << 20, 1 << 20), (1 << 24, 1 << 20), (1 << 24, 1 << 24)] {
        // Larger than the memory bound is accepted: the bound ends groups first.
        let cfg = StandardLogsConfig {
            row_group_bytes: bytes,
            max_open_bytes: open,
            ..StandardLogsConfig::default()
        };
        cfg.validate("sinks.standard").expect("within the range");
    }
    let small_bound = StandardLogsConfig {
        max_open_bytes: 1 << 20,
        ..StandardLogsConfig::default()
    };
    small_bound
        .validate("sinks.standard")
        .expect("the smallest memory bound with the default groups");
}

/// A shared run that cannot be written (a path the disk refuses, as when it is full)
/// fails the write with its rows kept waiting; once the disk takes it again, the same
/// entry goes through and every row lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_the_disk_refuses_keeps_its_rows_for_the_retry() {
    const DISTRIBUTIONS: usize = 500;
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, out) = (dir.path().join("spool"), dir.path().join("out"));
    let cfg = StandardLogsConfig {
        max_open_bytes: 1 << 20,
        max_age: Duration::from_secs(3600),
        ..StandardLogsConfig::default()
    };
    let mut sink = StandardLogSink::new(cfg, "c1", local_store(&out).expect("store"))
        .with_local_root(&out)
        .with_spool_dir(&spool)
        .expect("spool");
    let mut g = Generator::new(13, DISTRIBUTIONS, 4);
    let entries: Vec<Entry> = (1..=12u64)
        .map(|seq| Entry {
            seq,
            appended_ms: 0,
            records: Arc::new(
                (0..1000)
                    .map(|i| {
                        g.record(
                            1_764_000_000_000 + (seq * 1000 + i) as i64,
                            i as usize % DISTRIBUTIONS,
                            ErrorMix::default(),
                        )
                    })
                    .collect(),
            ),
        })
        .collect();
    for e in &entries[..4] {
        sink.write(&Batch::all(e)).await.expect("write");
    }
    // Every next scratch name is taken by a directory: no run can be created.
    let blocked: Vec<_> = (0..2000u64)
        .map(|n| spool.join(format!("run-{n:016}.parquet")))
        .filter(|p| std::fs::create_dir(p).is_ok())
        .collect();
    let mut refused = 0;
    for e in &entries[4..] {
        let mut tries = 0;
        while sink.write(&Batch::all(e)).await.is_err() {
            refused += 1;
            tries += 1;
            if tries == 2 {
                for p in &blocked {
                    let _ = std::fs::remove_dir(p);
                }
            }
        }
    }
    assert!(refused > 0, "no run was refused");
    sink.flush().await.expect("flush");
    let ids = ids_in(&out);
    assert_eq!(ids.len(), 12_000, "every row");
    assert!(ids.values().all(|n| *n == 1), "no row twice");
}

/// Request id to the Parquet files holding it, once per row.
fn paths_of_ids(dir: &std::path::Path) -> std::collections::HashMap<String, Vec<String>> {
    use arrow_array::{Array, StringArray};
    let mut ids: std::collections::HashMap<String, Vec<String>> = Default::default();
    for p in files(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
    {
        let f = std::fs::File::open(&p).expect("open");
        for b in ParquetRecordBatchReaderBuilder::try_new(f)
            .expect("parquet")
            .build()
            .expect("reader")
        {
            let b = b.expect("batch");
            let col = b.column_by_name("x_edge_request_id").expect("ids");
            let col = col.as_any().downcast_ref::<StringArray>().expect("strings");
            for i in 0..col.len() {
                ids.entry(col.value(i).to_owned())
                    .or_default()
                    .push(p.display().to_string());
            }
        }
    }
    ids
}

/// Files closing by age while their rows are staged take those rows out alone: without
/// memory pressure no run is written, and every row lands once, in its own partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_closing_with_staged_rows_take_them_alone_into_their_partitions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, out) = (dir.path().join("spool"), dir.path().join("out"));
    let cfg = StandardLogsConfig {
        max_age: Duration::from_millis(5),
        ..StandardLogsConfig::default()
    };
    let mut sink = StandardLogSink::new(cfg, "c1", local_store(&out).expect("store"))
        .with_local_root(&out)
        .with_stage_files(1)
        .with_spool_dir(&spool)
        .expect("spool");
    let mut g = Generator::new(21, 30, 4);
    let all: Vec<Entry> = (1..=12).map(|s| entry(s, &mut g)).collect();
    let mut runs = 0;
    for e in &all {
        sink.write(&Batch::all(e)).await.expect("write");
        if e.seq % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(8)).await;
            sink.tick().await.expect("tick");
        }
        runs += files(&spool)
            .iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("run"))
            })
            .count();
    }
    sink.flush().await.expect("flush");
    assert_eq!(sink.delivered(), 12);
    assert_eq!(runs, 0, "a run written without memory pressure");
    let found = paths_of_ids(&out);
    let mut files_seen = std::collections::HashSet::new();
    for r in all.iter().flat_map(|e| e.records.iter()) {
        let id = r.x_edge_request_id.as_deref().expect("id");
        let paths = found.get(id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(paths.len(), 1, "{id}: {paths:?}");
        let hour = format!("/hour={:02}/", r.timestamp_ms / 3_600_000 % 24);
        let dist = format!("DistributionId={}/", r.distribution_id);
        assert!(
            paths[0].contains(&dist) && paths[0].contains(&hour),
            "{id} of {dist} {hour} in {}",
            paths[0]
        );
        files_seen.insert(paths[0].clone());
    }
    assert!(files_seen.len() > 30, "files closed at several ticks");
}

/// Files closing at different ticks, so that a file's staged rows lie in several sorted
/// batches: each file still gets its rows as one row group, sorted by time, every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_closing_at_different_ticks_get_one_row_group_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let cfg = StandardLogsConfig {
        max_age: Duration::from_millis(30),
        ..StandardLogsConfig::default()
    };
    let mut sink = StandardLogSink::new(cfg, "c1", local_store(&out).expect("store"))
        .with_local_root(&out)
        .with_stage_files(1);
    let mut g = Generator::new(23, 30, 4);
    let all: Vec<Entry> = (1..=16).map(|s| entry(s, &mut g)).collect();
    for e in &all {
        sink.write(&Batch::all(e)).await.expect("write");
        tokio::time::sleep(Duration::from_millis(12)).await;
        sink.tick().await.expect("tick");
    }
    sink.flush().await.expect("flush");
    let ids = ids_in(&out);
    let total: usize = all.iter().map(|e| e.records.len()).sum();
    assert_eq!(ids.len(), total, "every row");
    assert!(ids.values().all(|n| *n == 1), "no row twice");
    for p in files(&out) {
        assert_one_sorted_row_group(&p);
    }
}
