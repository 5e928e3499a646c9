//! `edgelog compact` on garage: 10,000 small files of one day become the target number of
//! files with the same rows, and a SIGKILL in the middle followed by a rerun leaves no
//! duplicate and no loss. DuckDB reads the bucket before, during and after.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use edgelog_edge::{ErrorMix, Generator};
use edgelog_sink_s3::{S3Config, s3_store, schema, to_batch};
use edgelog_tests::servers::{BUCKET, Garage, S3_KEY_ID, S3_SECRET, python_json};
use edgelog_tests::{ServerConfig, binary};
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;

const DISTRIBUTIONS: usize = 2;
const HOURS: usize = 20;
const FILES_PER_HOUR: usize = 250;
const ROWS_PER_FILE: usize = 20;
/// 250 files of 20 rows a partition, 2,000 rows a compacted file: 3 files a partition.
const MAX_ROWS: usize = 2_000;
const DAY_MS: i64 = 1_763_596_800_000; // 2025-11-20 00:00 UTC

fn partition(dist: usize, hour: usize) -> String {
    format!("standard-logs/DistributionId=EDIST{dist}/year=2025/month=11/day=20/hour={hour:02}")
}

/// Uploads the small files the way collectors with a short max_age leave them.
fn upload(garage: &Garage) -> anyhow::Result<()> {
    let store: Arc<dyn ObjectStore> = s3_store(&S3Config {
        bucket: BUCKET.into(),
        region: Some("garage".into()),
        endpoint: Some(garage.endpoint()),
        access_key_id: Some(S3_KEY_ID.into()),
        secret_access_key: Some(S3_SECRET.into()),
        ..S3Config::default()
    })?;
    let schema = schema();
    let mut g = Generator::new(11, DISTRIBUTIONS, 8);
    let mut files = Vec::new();
    for dist in 0..DISTRIBUTIONS {
        for hour in 0..HOURS {
            for f in 0..FILES_PER_HOUR {
                let recs: Vec<_> = (0..ROWS_PER_FILE)
                    .map(|r| {
                        let ts = DAY_MS
                            + hour as i64 * 3_600_000
                            + ((FILES_PER_HOUR - f) * 10_000 + r * 13) as i64;
                        g.record(ts, dist, ErrorMix::default())
                    })
                    .collect();
                let refs: Vec<_> = recs.iter().collect();
                let mut bytes = Vec::new();
                let mut w = ArrowWriter::try_new(&mut bytes, schema.clone(), None)?;
                w.write(&to_batch(&schema, &refs, 100.0)?)?;
                w.close()?;
                let key = format!("{}/c{}-{:020}.parquet", partition(dist, hour), f % 3, f);
                files.push((ObjectPath::from(key), bytes));
            }
        }
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let results: Vec<_> = futures::stream::iter(files)
            .map(|(key, bytes)| {
                let store = store.clone();
                async move { store.put(&key, PutPayload::from(bytes)).await }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<_>, _>>()
    })?;
    Ok(())
}

/// Files, rows, distinct ids, a checksum of the ids, manifests left, and the time of a
/// query over one hour (best of three).
fn duckdb(garage: &Garage) -> anyhow::Result<serde_json::Value> {
    const GLOB: &str = "s3://edgelog/standard-logs/**/*.parquet";
    let hour = format!("s3://edgelog/{}/*.parquet", partition(1, 7));
    python_json(&format!(
        r#"{prelude}
import time
src = "read_parquet('{GLOB}', hive_partitioning = true)"
one = lambda q: con.sql(q).fetchone()[0]
out = {{}}
out["files"] = one("SELECT count(*) FROM glob('{GLOB}')")
out["manifests"] = one("SELECT count(*) FROM glob('s3://edgelog/standard-logs/**/_edgelog-compaction-*')")
out["rows"] = one(f"SELECT count(*) FROM {{src}}")
out["distinct"] = one(f"SELECT count(DISTINCT x_edge_request_id) FROM {{src}}")
out["checksum"] = str(one(f"SELECT sum(hash(x_edge_request_id)::HUGEINT) FROM (SELECT DISTINCT x_edge_request_id FROM {{src}})"))
out["row_checksum"] = str(one(f"SELECT sum(hash(x_edge_request_id, timestamp, sc_bytes)::HUGEINT) FROM {{src}}"))
best = None
for _ in range(3):
    t = time.perf_counter()
    con.sql("SELECT count(*), sum(sc_bytes), count(DISTINCT c_ip) FROM read_parquet('{hour}')").fetchall()
    d = time.perf_counter() - t
    best = d if best is None else min(best, d)
out["hour_query_s"] = best
print(json.dumps(out))
"#,
        prelude = garage.duckdb_prelude()
    ))
}

fn config_file(dir: &std::path::Path, garage: &Garage) -> anyhow::Result<std::path::PathBuf> {
    let cfg = garage
        .s3_sink(ServerConfig::new())
        .set("", "data_dir", dir.join("data").display().to_string())
        .set("sinks.standard.compaction", "max_rows", MAX_ROWS as u64)
        .set("sinks.standard.compaction", "min_age", "0s");
    let path = dir.join("edgelog.toml");
    std::fs::write(&path, cfg.to_toml())?;
    Ok(path)
}

/// Runs `edgelog compact`; with `kill_at`, SIGKILLs it when its log shows that step the
/// given number of times, and returns the log so far; else returns what it printed.
fn compact(config: &std::path::Path, kill_at: Option<(&str, usize)>) -> anyhow::Result<String> {
    let mut child = Command::new(binary())
        .args(["compact", "--config"])
        .arg(config)
        .env("RUST_LOG", "info,edgelog_sink_s3=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run edgelog compact")?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut log = String::new();
    let mut seen = 0;
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        log.push_str(&line);
        log.push('\n');
        if let Some((step, n)) = kill_at
            && line.contains(step)
        {
            seen += 1;
            if seen == n {
                child.kill()?;
                child.wait()?;
                return Ok(log);
            }
        }
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("edgelog compact failed: {log}");
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn ten_thousand_small_files_of_a_day_on_garage_compact_exactly_once_across_a_sigkill()
-> anyhow::Result<()> {
    let garage = Garage::start()?;
    let dir = tempfile::tempdir()?;
    let t = Instant::now();
    upload(&garage)?;
    eprintln!("uploaded 10,000 files in {:?}", t.elapsed());
    let rows = (DISTRIBUTIONS * HOURS * FILES_PER_HOUR * ROWS_PER_FILE) as u64;
    let before = duckdb(&garage)?;
    assert_eq!(before["files"], 10_000, "{before}");
    assert_eq!(before["rows"], rows, "{before}");
    assert_eq!(before["distinct"], rows, "{before}");

    let config = config_file(dir.path(), &garage)?;
    // Killed twice: with a group's manifest written and its inputs being read (the next
    // run undoes it), then with a group's file written and its inputs being deleted (the
    // next run finishes it). Readers miss nothing meanwhile.
    for (step, n) in [
        ("compaction manifest written", 10),
        ("compacted file written", 20),
    ] {
        let log = compact(&config, Some((step, n)))?;
        let during = duckdb(&garage)?;
        assert_eq!(
            during["distinct"], rows,
            "killed at {step} #{n}, a row is missing: {during}\n{log}"
        );
        assert_eq!(during["checksum"], before["checksum"], "{during}");
        assert!(during["files"].as_u64() < Some(10_000), "{during}");
    }

    let t = Instant::now();
    let printed = compact(&config, None)?;
    let took = t.elapsed();
    let report: serde_json::Value =
        serde_json::from_str(printed.lines().last().context("no report")?)?;
    let after = duckdb(&garage)?;
    let partitions = (DISTRIBUTIONS * HOURS) as u64;
    assert_eq!(
        after["files"],
        partitions * 3,
        "the target number of files: {after} {report}"
    );
    assert_eq!(after["rows"], rows, "no duplicate: {after}");
    assert_eq!(after["distinct"], rows, "no loss: {after}");
    assert_eq!(
        after["checksum"], before["checksum"],
        "the same ids: {after}"
    );
    assert_eq!(
        after["row_checksum"], before["row_checksum"],
        "the same rows: {after}"
    );
    assert_eq!(after["manifests"], 0, "{after}");
    assert!(report["repaired"].as_u64() <= Some(2), "{report}");
    eprintln!(
        "compaction rerun: {took:?}, report {report}; DuckDB over one hour: {:.3} s with {} files before, {:.3} s after",
        before["hour_query_s"].as_f64().unwrap_or_default(),
        FILES_PER_HOUR,
        after["hour_query_s"].as_f64().unwrap_or_default()
    );

    // Nothing left to do.
    let again: serde_json::Value = serde_json::from_str(
        compact(&config, None)?
            .lines()
            .last()
            .context("no report")?,
    )?;
    assert_eq!(again["files_in"], 0, "{again}");
    Ok(())
}

#[test]
fn compact_refuses_a_second_run_an_unknown_sink_and_bad_settings() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let run = |args: &[&str]| {
        Command::new(binary())
            .arg("compact")
            .args(["--data-dir"])
            .arg(dir.path())
            .args(args)
            .output()
    };
    let out = run(&["--max-rows", "0"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("max_rows"), "{err}");
    let out = run(&["--sink", "nope"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("nope"), "{err}");
    // One compaction of a sink at a time on a machine.
    std::fs::create_dir_all(dir.path().join("state"))?;
    let held = std::fs::File::create(dir.path().join("state/compaction-standard.lock"))?;
    held.try_lock()?;
    let out = run(&[])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("another compaction"),
        "{err}"
    );
    drop(held);
    // An empty data dir: nothing to do, a report all zeros.
    let out = run(&["--dry-run"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report["files_in"], 0);
    assert_eq!(report["dry_run"], true);
    Ok(())
}

/// A partition that fails is left as it was and the others are compacted, and the run
/// exits 1 (cron and monitoring go by the status), its report still printed.
#[test]
fn a_partition_that_fails_makes_the_run_exit_1_and_the_others_are_compacted() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let schema = schema();
    let mut g = Generator::new(5, DISTRIBUTIONS, 4);
    for dist in 0..DISTRIBUTIONS {
        let part = dir.path().join(partition(dist, 3));
        std::fs::create_dir_all(&part)?;
        for f in 0..3 {
            let recs: Vec<_> = (0..10)
                .map(|r| {
                    g.record(
                        DAY_MS + 3 * 3_600_000 + (f * 100 + r) as i64,
                        dist,
                        ErrorMix::default(),
                    )
                })
                .collect();
            let refs: Vec<_> = recs.iter().collect();
            let mut w = ArrowWriter::try_new(
                std::fs::File::create(part.join(format!("c-{f}.parquet")))?,
                schema.clone(),
                None,
            )?;
            w.write(&to_batch(&schema, &refs, 100.0)?)?;
            w.close()?;
        }
    }
    // EDIST1's first file: a footer that reads, pages that do not.
    let victim = dir.path().join(partition(1, 3)).join("c-0.parquet");
    let mut bytes = std::fs::read(&victim)?;
    bytes.iter_mut().skip(4).take(200).for_each(|b| *b = 0xAB);
    std::fs::write(&victim, &bytes)?;
    let out = Command::new(binary())
        .args(["compact", "--min-age", "0s", "--data-dir"])
        .arg(dir.path())
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("EDIST1"),
        "the failure names its partition: {err}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report["failed_partitions"], 1, "{report}");
    assert_eq!(report["files_in"], 3, "{report}");
    let names = |dist| -> anyhow::Result<Vec<String>> {
        let mut v: Vec<String> = std::fs::read_dir(dir.path().join(partition(dist, 3)))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        v.sort();
        Ok(v)
    };
    let healthy = names(0)?;
    assert!(
        healthy.len() == 1 && healthy[0].starts_with("compacted-"),
        "{healthy:?}"
    );
    assert_eq!(names(1)?, ["c-0.parquet", "c-1.parquet", "c-2.parquet"]);
    Ok(())
}

#[test]
fn a_collector_compacts_closed_hours_in_the_background_and_loses_nothing() -> anyhow::Result<()> {
    use edgelog_tests::process::wait_until;
    use edgelog_tests::{TestServer, parquet_files, send_generated, stored_ids};
    let dir = tempfile::tempdir()?;
    let cfg = ServerConfig::new()
        .standard("max_rows", 50u64)
        .standard("max_age", "1s")
        .set("sinks.standard.compaction", "interval", "1s")
        .set("sinks.standard.compaction", "min_age", "0s");
    let mut collector = TestServer::collector(dir.path(), &cfg)?;
    // Four hours back from now: three closed hours, and the current one.
    let sent = send_generated(&collector.url(), 20_000, 2, 4, 1, 4)?;
    let done = wait_until(Instant::now() + std::time::Duration::from_secs(60), || {
        collector.log_text().contains("compaction done")
    });
    assert!(done, "no compaction ran: {}", collector.log_text());
    assert!(collector.terminate()?, "{}", collector.log_text());
    let ids = stored_ids(dir.path())?;
    assert_eq!(ids.len() as u64, sent.count, "every record stored");
    assert!(ids.values().all(|&n| n == 1), "no record twice");

    // What the collector wrote after its last round: one more, from the command line.
    let out = Command::new(binary())
        .args(["compact", "--min-age", "0s", "--data-dir"])
        .arg(dir.path())
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids = stored_ids(dir.path())?;
    assert_eq!(ids.len() as u64, sent.count);
    assert!(ids.values().all(|&n| n == 1));
    let now_hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64
        / 3_600_000
        * 3_600_000;
    let closed: Vec<_> = sent
        .partitions
        .keys()
        .filter(|(_, h)| *h < now_hour)
        .collect();
    let files = parquet_files(dir.path());
    for (dist, hour) in closed {
        let (y, m, d) = edgelog_record::time::civil_from_days(hour.div_euclid(86_400_000));
        let part = format!(
            "DistributionId={dist}/year={y:04}/month={m:02}/day={d:02}/hour={:02}",
            hour.rem_euclid(86_400_000) / 3_600_000
        );
        let n = files
            .iter()
            .filter(|f| f.to_string_lossy().contains(&part))
            .count();
        assert_eq!(n, 1, "closed hour {part} is one file: {files:?}");
    }
    Ok(())
}
