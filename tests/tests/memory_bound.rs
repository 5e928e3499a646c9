//! Bodies that each decompress to the limit, 20 at once and 20 more in a row, cannot take
//! a collector's memory past its budget: what does not fit is told to come back (503 with
//! Retry-After), and every record it accepted is delivered. Ten thousand distributions at
//! once stay within the same documented bound, and stop within `shutdown_timeout` even
//! with ten thousand files left to build: a restart lands the rest, each record once.

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use edgelog_tests::scenarios::{caught_up, readyz};
use edgelog_tests::{
    ServerConfig, TestServer, http_get, parquet_files, send_generated, stored_ids, vm_hwm_kib,
    wait_until, within,
};

const MIB: u64 = 1 << 20;

/// A gzip body of about `bytes` of NDJSON records with ids `{tag}-{i}`.
fn body(tag: &str, bytes: u64) -> (Vec<u8>, Vec<String>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let pad = "p".repeat(600);
    let mut raw = Vec::with_capacity(bytes as usize);
    let mut ids = Vec::new();
    let mut i = 0;
    while (raw.len() as u64) + 800 < bytes {
        let id = format!("{tag}-{i}");
        raw.extend_from_slice(
            format!(
                "{{\"timestamp\":{now},\"DistributionId\":\"EMEM\",\"x-edge-request-id\":\"{id}\",\"sc-status\":200,\"cs-uri-stem\":\"/{pad}\"}}\n"
            )
            .as_bytes(),
        );
        ids.push(id);
        i += 1;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).expect("gzip");
    (gz.finish().expect("gzip"), ids)
}

/// Posts a gzip body; returns (status, has Retry-After).
fn post(url: &str, body: &[u8]) -> anyhow::Result<(u16, bool)> {
    let a = edgelog_tests::http_post_with(
        &format!("{url}/v1/records"),
        &[("content-encoding", "gzip")],
        body,
    )?;
    Ok((a.status, a.header("retry-after").is_some()))
}

/// The peak RSS of process `pid` in KiB, as last seen before it exits.
fn watch_peak(pid: u32) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while let Ok(kib) = vm_hwm_kib(pid) {
            peak = kib;
            std::thread::sleep(Duration::from_millis(50));
        }
        peak
    })
}

/// Every record stored, none twice, and at most two files a partition.
fn each_once_in_few_files(
    stored: usize,
    twice: usize,
    files: usize,
    records: u64,
    partitions: usize,
) {
    assert_eq!(stored as u64, records, "records missing");
    assert_eq!(twice, 0, "records stored twice");
    assert!(
        files <= 2 * partitions,
        "{files} files for {partitions} partitions"
    );
}

#[test]
fn bodies_at_the_decompression_limit_stay_within_the_memory_budget() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let budget = 256 * MIB;
    let open_files = 32 * MIB;
    let cfg = ServerConfig::new()
        .standard("max_age", "1s")
        .standard("max_open_bytes", open_files)
        .without_sink("realtime")
        .env(
            "EDGELOG_COLLECTOR__MAX_DECOMPRESSED_BYTES",
            (32 * MIB).to_string(),
        )
        .env("EDGELOG_COLLECTOR__MAX_INFLIGHT_BYTES", budget.to_string())
        .env("EDGELOG_COLLECTOR__MAX_RECORDS_PER_BODY", "60000");
    let collector = TestServer::collector(dir.path(), &cfg)?;
    let url = collector.url();
    let pid = collector.pid()?;
    let mut accepted: HashSet<String> = HashSet::new();
    let (mut ok, mut busy) = (0, 0);

    // 20 at once.
    let bodies: Vec<_> = (0..20)
        .map(|n| body(&format!("c{n}"), 32 * MIB - 1024))
        .collect();
    let answers: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = bodies
            .iter()
            .map(|(b, _)| s.spawn(|| post(&url, b)))
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("thread"))
            .collect::<Vec<_>>()
    });
    for ((_, ids), a) in bodies.iter().zip(answers) {
        let (status, retry) = a?;
        match status {
            200 => {
                ok += 1;
                accepted.extend(ids.iter().cloned());
            }
            503 => {
                assert!(retry, "503 without Retry-After");
                busy += 1;
            }
            other => anyhow::bail!("answer {other} to a body at the limit"),
        }
    }
    drop(bodies);
    // 20 more in a row.
    for n in 0..20 {
        let (b, ids) = body(&format!("s{n}"), 32 * MIB - 1024);
        let (status, retry) = post(&url, &b)?;
        match status {
            200 => {
                ok += 1;
                accepted.extend(ids);
            }
            503 => {
                assert!(retry, "503 without Retry-After");
                busy += 1;
            }
            other => anyhow::bail!("answer {other} to a body at the limit"),
        }
    }
    let hwm = vm_hwm_kib(pid)? * 1024;
    let metrics = http_get(&format!("{url}/metrics"))?;
    let mut collector = collector;
    // Everything accepted lands.
    let delivered = wait_until(within(Duration::from_secs(60)), || {
        readyz(&url).is_ok_and(|r| caught_up(&r))
    });
    assert!(delivered, "sinks did not catch up");
    assert!(collector.terminate()?, "{}", collector.log_text());
    let stored = stored_ids(&dir.path().join("standard-logs"))?;
    let missing = accepted
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .count();
    // The documented bound: the ingest budget, the open Parquet files, and the process
    // itself (code, runtime, the log's decoded cache, the sinks' batches, allocator
    // slack), 256 MiB. Before the budget, one such body alone took gigabytes.
    let bound = budget + open_files + 256 * MIB;
    eprintln!(
        "memory bound: {ok} bodies of 32 MiB accepted, {busy} told to retry; peak RSS {} MiB \
         (budget {} MiB, bound checked {} MiB); {} records accepted, {missing} missing",
        hwm / MIB,
        budget / MIB,
        bound / MIB,
        accepted.len()
    );
    assert!(
        metrics.contains("edgelog_ingest_memory_budget_bytes"),
        "budget not on /metrics"
    );
    assert!(ok >= 1, "nothing accepted");
    assert_eq!(missing, 0, "accepted records missing");
    assert!(hwm < bound, "peak RSS {hwm} above {bound}");
    Ok(())
}

/// Ten thousand distributions at once, a few dozen records each: the rows waiting for
/// their files share runs within `max_open_bytes`, the collector's peak RSS stays within
/// the documented bound (budget + open files + 256 MiB), every record lands exactly once,
/// and each partition gets one file, not one per run.
#[test]
fn ten_thousand_distributions_stay_within_the_memory_bound_and_lose_nothing() -> anyhow::Result<()>
{
    const DISTRIBUTIONS: usize = 10_000;
    const RECORDS: u64 = 300_000;
    let dir = tempfile::tempdir()?;
    let budget = 64 * MIB;
    let open_files = 32 * MIB;
    let cfg = ServerConfig::new()
        .standard("max_open_bytes", open_files)
        .env("EDGELOG_COLLECTOR__MAX_BODY_BYTES", (8 * MIB).to_string())
        .env(
            "EDGELOG_COLLECTOR__MAX_DECOMPRESSED_BYTES",
            (8 * MIB).to_string(),
        )
        .env("EDGELOG_COLLECTOR__MAX_RECORDS_PER_BODY", "10000")
        .env("EDGELOG_COLLECTOR__MAX_INFLIGHT_BYTES", budget.to_string())
        .env("EDGELOG_COLLECTOR__SHUTDOWN_TIMEOUT", "600s");
    let collector = TestServer::collector(dir.path(), &cfg)?;
    let url = collector.url();
    let pid = collector.pid()?;
    // The peak as last seen: the files are built during the shutdown, until the exit.
    let watcher = watch_peak(pid);
    // All of them now: one partition each (two if an hour begins meanwhile).
    let sent = send_generated(&url, RECORDS, DISTRIBUTIONS, 0, RECORDS, 4)?;
    assert_eq!(sent.count, RECORDS);
    assert!(
        sent.by_distribution.len() >= DISTRIBUTIONS * 9 / 10,
        "only {} distributions got records",
        sent.by_distribution.len()
    );
    let mut collector = collector;
    // The flush at SIGTERM closes every file: all of them are built then.
    let (clean, took) = collector.terminate_within(Duration::from_secs(600))?;
    assert!(clean, "{}", collector.log_text());
    let hwm = watcher.join().expect("watcher") * 1024;
    let stored = stored_ids(&dir.path().join("standard-logs"))?;
    let files = parquet_files(&dir.path().join("standard-logs")).len();
    let twice = stored.values().filter(|n| **n > 1).count();
    let bound = budget + open_files + 256 * MIB;
    eprintln!(
        "{DISTRIBUTIONS} distributions: peak RSS {} MiB (bound {} MiB), {} records stored of \
         {RECORDS}, {files} files for {} partitions; shutdown {took:?}",
        hwm / MIB,
        bound / MIB,
        stored.len(),
        sent.partitions.len()
    );
    each_once_in_few_files(stored.len(), twice, files, RECORDS, sent.partitions.len());
    assert!(hwm < bound, "peak RSS {hwm} above {bound}");
    Ok(())
}

/// SIGTERM with ten thousand files still to build: the collector stops within its
/// `shutdown_timeout`, the files it did not build stay in its log, and after a restart
/// every record lands exactly once, one file per partition and shutdown at most.
#[test]
fn ten_thousand_files_to_build_stop_within_shutdown_timeout_and_land_after_a_restart()
-> anyhow::Result<()> {
    const DISTRIBUTIONS: usize = 10_000;
    const RECORDS: u64 = 100_000;
    let dir = tempfile::tempdir()?;
    let budget = Duration::from_secs(2);
    let cfg = ServerConfig::new()
        .standard("max_open_bytes", 32 * MIB)
        .shutdown_timeout(budget);
    let mut collector = TestServer::collector(dir.path(), &cfg)?;
    let sent = send_generated(&collector.url(), RECORDS, DISTRIBUTIONS, 0, RECORDS, 4)?;
    assert_eq!(sent.count, RECORDS);
    assert!(
        sent.partitions.len() >= DISTRIBUTIONS * 9 / 10,
        "only {} partitions got records",
        sent.partitions.len()
    );

    let (took, status) = collector.terminate_timed()?;
    let first = stored_ids(&dir.path().join("standard-logs"))?;
    eprintln!(
        "SIGTERM: exited with {status} after {took:?} (shutdown_timeout {budget:?}), {} of \
         {RECORDS} records in {} files",
        first.len(),
        parquet_files(&dir.path().join("standard-logs")).len()
    );
    assert!(status.success(), "{}", collector.log_text());
    assert!(
        took <= budget + Duration::from_secs(5),
        "took {took:?} to stop, budget {budget:?} + 5 s"
    );
    // Else the restart below has nothing to prove (none built at all is fine: the sink may
    // still have been reading the log when the budget ran out).
    assert!(
        (first.len() as u64) < RECORDS,
        "the first shutdown built every file within {budget:?}: make the test larger"
    );

    // The rest from the log: a restart, then a shutdown with time to build every file.
    collector.rewrite_config(&cfg.clone().shutdown_timeout(Duration::from_secs(600)))?;
    collector.restart()?;
    // Beyond the collector's own budget: a drain that runs out fails as missing records.
    let (clean, took) = collector.terminate_within(Duration::from_secs(660))?;
    assert!(clean, "{}", collector.log_text());
    let stored = stored_ids(&dir.path().join("standard-logs"))?;
    let files = parquet_files(&dir.path().join("standard-logs")).len();
    let twice = stored.values().filter(|n| **n > 1).count();
    eprintln!(
        "after the restart: {} records stored of {RECORDS}, {twice} twice, {files} files for {} \
         partitions; shutdown {took:?}",
        stored.len(),
        sent.partitions.len()
    );
    each_once_in_few_files(stored.len(), twice, files, RECORDS, sent.partitions.len());
    Ok(())
}

/// A gzip body of `n` records with ids `{tag}-{i}`, each with three values of
/// `field_bytes` (about 48 KB a record at the default field limit).
fn long_body(tag: &str, n: usize, field_bytes: usize) -> (Vec<u8>, Vec<String>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut raw = Vec::new();
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("{tag}-{i}");
        // Distinct per record, so that nothing is shared or folded.
        let long = |c: char| format!("/{id}-{}", c.to_string().repeat(field_bytes));
        let cut = |s: String| s[..field_bytes].to_owned();
        raw.extend_from_slice(
            serde_json::json!({
                "timestamp": now,
                "DistributionId": format!("ELONG{}", i % 7),
                "x-edge-request-id": id,
                "sc-status": 200,
                "cs-uri-stem": cut(long('u')),
                "cs(User-Agent)": cut(long('a')),
                "cs(Referer)": cut(long('r')),
            })
            .to_string()
            .as_bytes(),
        );
        raw.push(b'\n');
        ids.push(id);
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).expect("gzip");
    (gz.finish().expect("gzip"), ids)
}

/// Records of long values, left in the log by a shutdown with no time to deliver, then
/// replayed after a restart: the log's entries hold about 4 MiB of records each, so what
/// each sink reads ahead (counted in entries) stays small, and the peak RSS of both runs
/// stays within the documented bound. Before, one body was one entry however large, and a
/// replay like this one took several times the bound.
#[test]
fn long_values_replayed_after_a_restart_stay_within_the_memory_bound() -> anyhow::Result<()> {
    // Bodies of about 96 MB decompressed: one entry each before.
    const BODIES: usize = 5;
    const PER_BODY: usize = 2_000;
    let dir = tempfile::tempdir()?;
    let budget = 256 * MIB;
    let open_files = 32 * MIB;
    let cfg = ServerConfig::new()
        .standard("max_open_bytes", open_files)
        .sample("realtime", 10)
        .env(
            "EDGELOG_COLLECTOR__MAX_DECOMPRESSED_BYTES",
            (100 * MIB).to_string(),
        )
        .env("EDGELOG_COLLECTOR__MAX_RECORDS_PER_BODY", "10000")
        .env("EDGELOG_COLLECTOR__MAX_INFLIGHT_BYTES", budget.to_string())
        .shutdown_timeout(Duration::from_secs(0));
    let mut collector = TestServer::collector(dir.path(), &cfg)?;
    let url = collector.url();
    let mut accepted: HashSet<String> = HashSet::new();
    for n in 0..BODIES {
        let (b, ids) = long_body(&format!("long{n}"), PER_BODY, 16_000);
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            match post(&url, &b)? {
                (200, _) => break,
                (503, true) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                other => anyhow::bail!("answer {other:?} to a body of long values"),
            }
        }
        accepted.extend(ids);
    }
    let ingest_hwm = vm_hwm_kib(collector.pid()?)? * 1024;
    // No time to deliver: what the sinks had not written stays in the log.
    let (took, status) = collector.terminate_timed()?;
    assert!(status.success(), "{}", collector.log_text());
    let first = stored_ids(&dir.path().join("standard-logs"))?.len();
    // Else the replay below has nothing to prove.
    assert!(
        first < accepted.len(),
        "the first shutdown delivered everything: nothing left to replay"
    );

    collector.rewrite_config(&cfg.clone().shutdown_timeout(Duration::from_secs(600)))?;
    collector.restart()?;
    let pid = collector.pid()?;
    let watcher = watch_peak(pid);
    let delivered = wait_until(within(Duration::from_secs(300)), || {
        readyz(&url).is_ok_and(|r| caught_up(&r))
    });
    assert!(delivered, "sinks did not catch up after the restart");
    let (clean, _) = collector.terminate_within(Duration::from_secs(660))?;
    assert!(clean, "{}", collector.log_text());
    let replay_hwm = watcher.join().expect("watcher") * 1024;
    let stored = stored_ids(&dir.path().join("standard-logs"))?;
    let missing = accepted
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .count();
    let twice = stored.values().filter(|n| **n > 1).count();
    let bound = budget + open_files + 256 * MIB;
    eprintln!(
        "long values: {} records of about 48 KB accepted; peak RSS {} MiB while posting, {} \
         MiB replaying after the restart (bound {} MiB); first shutdown {took:?} with {first} \
         stored; {missing} missing, {twice} twice",
        accepted.len(),
        ingest_hwm / MIB,
        replay_hwm / MIB,
        bound / MIB
    );
    assert_eq!(missing, 0, "accepted records missing");
    assert_eq!(twice, 0, "records stored twice");
    assert!(
        ingest_hwm < bound,
        "peak RSS {ingest_hwm} while posting, above {bound}"
    );
    assert!(
        replay_hwm < bound,
        "peak RSS {replay_hwm} replaying, above {bound}"
    );
    Ok(())
}
