//! A collector whose disk fills up under load refuses cleanly (507 or 503 with
//! Retry-After, never 500), resumes by itself when space returns, and loses nothing it
//! acknowledged across a SIGKILL afterwards.
//!
//! The data dir is a real, small tmpfs mounted by the test (CI runs as root), enlarged
//! with a remount while the collector runs.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use edgelog_tests::process::Tmpfs;
use edgelog_tests::scenarios::{
    acked_ids, caught_up, lost_and_duplicates, spawn_load, wait_readyz,
};
use edgelog_tests::{ServerConfig, TestServer, http_get, http_post, stored_ids, wait_for, within};

/// `n` records with ids `{tag}-{i}`, hard to compress so the log really grows.
fn body(tag: &str, n: usize) -> (Vec<u8>, Vec<String>) {
    let mut out = Vec::with_capacity(n * 400);
    let mut ids = Vec::with_capacity(n);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (tag.len() as u64 * 7919);
    for c in tag.bytes() {
        x = x.wrapping_mul(31).wrapping_add(u64::from(c));
    }
    for i in 0..n {
        let mut noise = String::with_capacity(160);
        for _ in 0..10 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            noise.push_str(&format!("{x:016x}"));
        }
        let id = format!("{tag}-{i}");
        out.extend_from_slice(
            format!(
                "{{\"timestamp\":{now},\"DistributionId\":\"EFULL\",\"x-edge-request-id\":\"{id}\",\
                 \"sc-status\":200,\"sc-bytes\":{i},\"cs-uri-stem\":\"/{noise}\",\"cs(User-Agent)\":\"ua-{noise}\"}}\n"
            )
            .as_bytes(),
        );
        ids.push(id);
    }
    (out, ids)
}

#[derive(Default)]
struct Probe {
    acked: HashSet<String>,
    refused: u64,
    statuses: std::collections::BTreeMap<u16, u64>,
    sent: u64,
}

impl Probe {
    /// Posts one body; checks that a refusal is a retryable one with a reason.
    fn post(&mut self, url: &str, records: usize) -> anyhow::Result<u16> {
        let (b, ids) = body(&format!("probe{}", self.sent), records);
        self.sent += 1;
        let a = http_post(&format!("{url}/v1/records"), &b)?;
        *self.statuses.entry(a.status).or_default() += 1;
        match a.status {
            200 => self.acked.extend(ids),
            503 | 507 => {
                self.refused += 1;
                assert!(
                    a.header("retry-after").is_some(),
                    "a {} without Retry-After: {a:?}",
                    a.status
                );
                let v: serde_json::Value = serde_json::from_str(&a.body)
                    .with_context(|| format!("refusal is not JSON: {a:?}"))?;
                assert!(v["error"].is_string(), "no reason: {a:?}");
            }
            other => bail!("unexpected answer {other} while the disk filled: {a:?}"),
        }
        Ok(a.status)
    }
}

#[test]
fn a_full_disk_is_refused_cleanly_and_loses_nothing_acknowledged() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let fs = Tmpfs::mount(&data, "6m")?;
    let cfg = ServerConfig::new()
        .set("collector.wal", "segment_bytes", 262_144u64)
        .standard("max_age", "1s");
    // Everything on the tmpfs, the collector's own log (stderr) included: a log line that
    // cannot be written must not hurt either.
    let mut collector = TestServer::collector(&data, &cfg)?;
    let url = collector.url();
    let ack_log = tmp.path().join("edge-acked.txt");
    let edge = spawn_load(
        &url,
        &ack_log,
        &[
            "--rate",
            "3000",
            "--duration",
            "25s",
            "--batch",
            "300",
            "--concurrency",
            "2",
            "--max-tries",
            "100000",
            "--timeout",
            "5s",
        ],
    )?;

    // Fill the disk: bodies until they are refused for a while.
    let mut probe = Probe::default();
    let start = Instant::now();
    let mut full_since: Option<Instant> = None;
    loop {
        let status = probe
            .post(&url, 500)
            .with_context(|| format!("collector log:\n{}", collector.log_text()))?;
        if status != 200 {
            full_since.get_or_insert_with(Instant::now);
        }
        if full_since.is_some_and(|t| t.elapsed() > Duration::from_secs(3)) && probe.refused >= 10 {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "the disk never filled: {:?}\n{}",
                probe.statuses,
                collector.log_text()
            );
        }
        // The scenario: the probe's pace while the edge fills the disk.
        std::thread::sleep(Duration::from_millis(20));
    }
    let readyz = http_get(&format!("{url}/readyz"))?;
    eprintln!("full: {:?}; /readyz: {readyz}", probe.statuses);
    // A load balancer must see it: not ready while writes fail for lack of space.
    let r: serde_json::Value = serde_json::from_str(&readyz)?;
    assert_eq!(r["status"], "disk_full", "{readyz}");
    assert_eq!(r["accepting"], false, "{readyz}");

    // Space returns: ingest resumes without a restart.
    fs.resize("256m")?;
    let resumed = Instant::now();
    wait_for(
        within(Duration::from_secs(30)),
        Duration::from_millis(100),
        "ingest resumed after the disk grew",
        || Ok((probe.post(&url, 100)? == 200).then_some(())),
    )
    .with_context(|| format!("{:?}\n{}", probe.statuses, collector.log_text()))?;
    let resumed_after = resumed.elapsed();
    for _ in 0..20 {
        assert_eq!(probe.post(&url, 100)?, 200, "refused after space returned");
    }
    edge.finish()?;

    // A crash after all that, then a clean drain.
    collector.crash_and_restart()?;
    wait_readyz(
        &url,
        Duration::from_secs(60),
        "sinks did not catch up",
        caught_up,
    )?;
    assert!(collector.terminate()?, "{}", collector.log_text());

    let mut acked = probe.acked.clone();
    acked.extend(acked_ids(&ack_log)?);
    let stored = stored_ids(&data.join("standard-logs"))?;
    let (lost, duplicates) = lost_and_duplicates(&acked, &stored);
    let log = collector.log_text();
    eprintln!(
        "full disk: answers {:?}; ingest resumed {resumed_after:?} after the disk grew; \
         {} acknowledged, {} delivered, {} lost, {duplicates} duplicates",
        probe.statuses,
        acked.len(),
        stored.len(),
        lost.len()
    );
    assert!(
        probe.refused >= 10 && acked.len() > 10_000,
        "too little to mean anything"
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged records lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert_eq!(duplicates, 0, "records stored twice");
    assert!(
        !log.contains("cutting write-ahead log"),
        "the log was cut on reopen:\n{log}"
    );
    assert!(
        !stored.keys().any(|id| !acked.contains(id)),
        "records stored that were never acknowledged: a refused group leaked into the log"
    );
    Ok(())
}
