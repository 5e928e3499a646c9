//! A sink that cannot deliver must not hold up the others, nor the shutdown: a record too
//! large for Kafka goes to the dead letters (and can be replayed from there), and SIGTERM
//! ends the collector within its budget with the brokers and the store down or
//! unreachable; a restart then delivers what was left in the write-ahead log.
//!
//! Long (about 630 lines): four outage scenarios, each with its own checks.
//!
//! Real `edgelog` binary, real garage (S3) and tansu (Kafka) on loopback, read back by
//! DuckDB and confluent-kafka.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use arrow_array::{Array, StringArray};
use edgelog_tests::scenarios::{lost_and_duplicates, sink, wait_readyz as wait_ready_until};
use edgelog_tests::servers::{Garage, Tansu, consume};
use edgelog_tests::{
    ServerConfig, TestServer, free_port, http_get, parquet_files, read_parquet, run_edge,
    send_generated, send_generated_seeded, stored_ids,
};

const TOPIC: &str = "edgelog-realtime";
const DISTRIBUTION: &str = "E2QWRUHAPOMQZL";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The log lines that tell what a shutdown or a sink did (not librdkafka's repeated
/// connection errors): enough to see what happened without the whole file.
fn log_excerpt(log: &str) -> String {
    const KEYS: &[&str] = &[
        "signal",
        "shut",
        "drain",
        "stopped",
        "flushed",
        "dead-letter",
        "recovered",
        "delivery failed",
        "watchdog",
        "panicked",
    ];
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("kafka client error") && !l.contains("librdkafka:"))
        .filter(|l| KEYS.iter().any(|k| l.contains(k)) || l.contains("ERROR"))
        .collect();
    let from = lines.len().saturating_sub(30);
    lines[from..].join("\n")
}

/// SIGTERM: the collector must exit cleanly within `budget` plus the 5 s margin; returns
/// its log. `what` says what was wrong when it was told to stop.
fn terminate_within_budget(
    collector: &mut TestServer,
    budget: Duration,
    what: &str,
) -> anyhow::Result<String> {
    let (took, status) = collector.terminate_timed()?;
    let log = collector.log_text();
    eprintln!(
        "SIGTERM {what}: exited with {status} after {:.2} s \
         (shutdown_timeout {} s, limit {} s)\n{}",
        took.as_secs_f64(),
        budget.as_secs(),
        budget.as_secs() + 5,
        log_excerpt(&log)
    );
    assert!(
        took <= budget + Duration::from_secs(5),
        "took {took:?} to stop, budget {budget:?} + 5 s"
    );
    assert!(
        status.success(),
        "did not exit cleanly ({status}): the shutdown watchdog ended it?"
    );
    Ok(log)
}

/// Posts `lines` as one body; fails unless every line is accepted.
fn post_all(url: &str, lines: &[String]) -> anyhow::Result<()> {
    let mut body = lines.join("\n");
    body.push('\n');
    let a = edgelog_tests::http_post(&format!("{url}/v1/records"), body.as_bytes())?;
    let (status, answer) = (a.status, a.body);
    ensure!(status == 200, "POST answered {status}: {answer}");
    let v: serde_json::Value = serde_json::from_str(&answer)?;
    ensure!(
        v["accepted"].as_u64() == Some(lines.len() as u64),
        "not every line accepted: {answer}"
    );
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `n` letters and digits that compress badly (xorshift), so no compression hides a size.
fn noise(n: usize, seed: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(ALPHABET[(x % ALPHABET.len() as u64) as usize])
        })
        .collect()
}

/// A record line as the ingest API takes it.
fn record_line(id: &str, ts: i64, user_agent: &str, cookie: Option<&str>) -> String {
    let mut v = serde_json::json!({
        "timestamp(ms)": ts,
        "DistributionId": DISTRIBUTION,
        "x-edge-request-id": id,
        "sc-status": 200,
        "cs-method": "GET",
        "cs(Host)": "d111111abcdef8.cloudfront.net",
        "cs-uri-stem": format!("/objects/{id}"),
        "sc-bytes": 1234,
        "cs(User-Agent)": user_agent,
    });
    if let Some(c) = cookie {
        v["cs(Cookie)"] = serde_json::Value::from(c);
    }
    v.to_string()
}

/// The request id of each consumed message (JSON format), with how often it came.
fn consumed_ids(
    messages: &[edgelog_tests::servers::Consumed],
) -> anyhow::Result<HashMap<String, u32>> {
    let mut counts = HashMap::new();
    for m in messages {
        let v: serde_json::Value = serde_json::from_str(&m.value)
            .with_context(|| format!("message is not JSON: {:.200}", m.value))?;
        let id = v["x-edge-request-id"]
            .as_str()
            .with_context(|| format!("no request id in {:.200}", m.value))?;
        *counts.entry(id.to_owned()).or_insert(0) += 1;
    }
    Ok(counts)
}

/// Every `*.ndjson` file under `dir`, sorted.
fn ndjson_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "ndjson"))
        .collect();
    files.sort();
    files
}

/// The sum of a Prometheus counter's samples whose labels contain `label`.
fn prometheus_sum(text: &str, name: &str, label: &str) -> (f64, Vec<String>) {
    let mut sum = 0.0;
    let mut lines = Vec::new();
    for l in text.lines() {
        if l.starts_with(&format!("{name}{{")) && l.contains(label) {
            sum += l
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            lines.push(l.to_owned());
        }
    }
    (sum, lines)
}

// ---------------------------------------------------------------------------------------
// 1. A record too large for Kafka
// ---------------------------------------------------------------------------------------

#[test]
fn a_record_too_large_for_kafka_is_dead_lettered_and_the_rest_delivered() -> anyhow::Result<()> {
    const BODIES: usize = 10;
    const PER_BODY: usize = 200;
    /// The bodies that carry one poison record each, in their middle; more follow them.
    const POISONED: [usize; 3] = [2, 5, 8];

    let tansu = Tansu::start()?;
    tansu.create_topic(TOPIC, 3)?;
    let dir = tempfile::tempdir()?;
    let cfg = ServerConfig::new().sample("realtime", 100).set(
        "sinks.realtime.kafka.options",
        "\"message.max.bytes\"",
        "20000",
    );
    let mut collector = TestServer::collector(dir.path(), &tansu.realtime_sink(cfg, TOPIC))?;
    let url = collector.url();

    // ~2,000 ordinary records; three valid ones (each field within the ingest limits)
    // whose message is about 31 KB, above the producer's 20,000 bytes.
    let ts = now_ms();
    let mut normal = Vec::new();
    let mut after_poison = Vec::new();
    let mut poison: BTreeSet<String> = BTreeSet::new();
    let mut poison_fields: HashMap<String, (String, String)> = HashMap::new();
    for b in 0..BODIES {
        let mut lines = Vec::new();
        for i in 0..PER_BODY {
            if i == PER_BODY / 2
                && let Some(k) = POISONED.iter().position(|p| *p == b)
            {
                let id = format!("stuck-poison-{k}");
                let ua = noise(15_000, 1 + k as u64);
                let cookie = format!("session={}", noise(14_992, 100 + k as u64));
                lines.push(record_line(&id, ts, &ua, Some(&cookie)));
                poison.insert(id.clone());
                poison_fields.insert(id, (ua, cookie));
            }
            let id = format!("stuck-normal-{b:02}-{i:03}");
            lines.push(record_line(
                &id,
                ts + i as i64,
                "Mozilla/5.0 (edgelog test)",
                None,
            ));
            if b > POISONED[POISONED.len() - 1] {
                after_poison.push(id.clone());
            }
            normal.push(id);
        }
        // One body at a time: the log holds them in this order.
        post_all(&url, &lines)?;
    }
    assert_eq!(normal.len(), BODIES * PER_BODY);

    // The sink gets past the poison: everything delivered or dead-lettered, not degraded.
    let started = Instant::now();
    let ready = wait_ready_until(
        &url,
        Duration::from_secs(60),
        "the real-time sink to deliver everything past the oversized records",
        |r| {
            let s = sink(r, "realtime");
            s["lag_entries"] == 0 && s["dead_letters"] == 3 && s["degraded"] == false
        },
    )
    .map_err(|e| e.context(log_excerpt(&collector.log_text())))?;
    eprintln!(
        "real-time sink caught up {:.1} s after the last post: {}",
        started.elapsed().as_secs_f64(),
        sink(&ready, "realtime")
    );
    assert_eq!(
        sink(&ready, "realtime")["last_error"],
        serde_json::Value::Null
    );

    let metrics = http_get(&format!("{url}/metrics"))?;
    let (dead, lines) = prometheus_sum(
        &metrics,
        "edgelog_dead_letter_records_total",
        "sink=\"realtime\"",
    );
    eprintln!("dead-letter counter: {lines:?}");
    assert_eq!(dead, 3.0, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("reason=\"message_too_large\"")),
        "{lines:?}"
    );

    // Every ordinary record on the topic exactly once, none of the oversized ones.
    let got = consume(
        &tansu.bootstrap(),
        TOPIC,
        normal.len(),
        Duration::from_secs(20),
    )?;
    let counts = consumed_ids(&got)?;
    let missing: Vec<&String> = normal
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    let duplicates: Vec<(&String, &u32)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let poisoned_on_topic: Vec<&String> = poison
        .iter()
        .filter(|id| counts.contains_key(*id))
        .collect();
    let after_delivered = after_poison
        .iter()
        .filter(|id| counts.contains_key(*id))
        .count();
    eprintln!(
        "topic: {} messages, {} distinct; {} normal records sent, {} missing, {} duplicated; \
         {after_delivered} of the {} sent after the last oversized record delivered",
        got.len(),
        counts.len(),
        normal.len(),
        missing.len(),
        duplicates.len(),
        after_poison.len()
    );
    assert!(
        poisoned_on_topic.is_empty(),
        "on the topic: {poisoned_on_topic:?}"
    );
    assert!(
        missing.is_empty(),
        "{} normal records missing from the topic, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(duplicates.is_empty(), "duplicated: {duplicates:?}");
    assert_eq!(after_delivered, after_poison.len());
    assert_eq!(got.len(), normal.len());

    // The oversized records are in the dead-letter files, whole.
    let dl_dir = dir.path().join("dead-letter").join("realtime");
    let files = ndjson_files(&dl_dir);
    assert!(
        !files.is_empty(),
        "no dead-letter file in {}",
        dl_dir.display()
    );
    let mut dead_ids = BTreeSet::new();
    for f in &files {
        for line in fs::read_to_string(f)?.lines().filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}: not JSON: {line:.200}", f.display()))?;
            assert_eq!(v["dead_letter"]["sink"], "realtime", "{:.300}", line);
            let reason = v["dead_letter"]["reason"].as_str().unwrap_or("");
            assert!(!reason.is_empty(), "{:.300}", line);
            let id = v["x-edge-request-id"]
                .as_str()
                .with_context(|| format!("no request id: {line:.300}"))?
                .to_owned();
            let (ua, cookie) = poison_fields.get(&id).with_context(|| {
                format!("dead letter for a record that was not too large: {id}")
            })?;
            assert_eq!(v["cs(User-Agent)"].as_str(), Some(ua.as_str()), "{id}");
            assert_eq!(v["cs(Cookie)"].as_str(), Some(cookie.as_str()), "{id}");
            eprintln!(
                "dead letter {id}: entry {}, reason {reason:?}, {} bytes",
                v["dead_letter"]["entry"],
                line.len()
            );
            assert!(dead_ids.insert(id), "dead-lettered twice");
        }
    }
    assert_eq!(dead_ids, poison);

    // The other sinks took the oversized records as usual.
    assert!(collector.terminate()?, "{}", collector.log_text());
    let standard = stored_ids(&dir.path().join("standard-logs"))?;
    assert_eq!(standard.len(), normal.len() + poison.len());
    assert!(poison.iter().all(|id| standard.get(id) == Some(&1)));

    // Replayed from the dead-letter file into another collector, they land in Parquet.
    let dir2 = tempfile::tempdir()?;
    let mut second = TestServer::collector(dir2.path(), &ServerConfig::new())?;
    let mut acked = 0;
    for f in &files {
        let out = run_edge(&second.url(), &["--replay", &f.display().to_string()])?;
        eprintln!("replay of {}:\n{out}", f.display());
        acked += out
            .lines()
            .find_map(|l| l.strip_prefix("records acknowledged:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .with_context(|| format!("no acknowledged count in {out}"))?;
    }
    assert_eq!(acked, 3);
    assert!(second.terminate()?, "{}", second.log_text());
    let replayed = stored_ids(&dir2.path().join("standard-logs"))?;
    let want: HashMap<String, u32> = poison.iter().map(|id| (id.clone(), 1)).collect();
    assert_eq!(replayed, want);
    // Whole: the big fields came through the dead letters unchanged.
    let mut checked = 0;
    for f in parquet_files(&dir2.path().join("standard-logs")) {
        for b in read_parquet(&f)? {
            let col = |name: &str| {
                b.column_by_name(name)
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
                    .with_context(|| format!("{name} column"))
            };
            let (ids, uas, cookies) = (
                col("x_edge_request_id")?,
                col("cs_user_agent")?,
                col("cs_cookie")?,
            );
            for i in 0..ids.len() {
                let (ua, cookie) = &poison_fields[ids.value(i)];
                assert_eq!(uas.value(i), ua);
                assert_eq!(cookies.value(i), cookie);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 3);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 2. SIGTERM with the broker and the store down
// ---------------------------------------------------------------------------------------

#[test]
fn sigterm_with_the_broker_and_the_store_down_ends_within_budget_and_a_restart_delivers_the_rest()
-> anyhow::Result<()> {
    const BUDGET: Duration = Duration::from_secs(3);
    const REALTIME_RATE: u32 = 10;
    let mut garage = Garage::start()?;
    // Messages must outlive the broker's restart: SQLite storage, which tansu serves
    // slowly, hence 10 % of the records to the stream.
    let mut tansu = Tansu::start_persistent()?;
    tansu.create_topic(TOPIC, 3)?;
    let dir = tempfile::tempdir()?;
    let cfg = ServerConfig::new()
        .sample("realtime", REALTIME_RATE)
        .standard("max_age", "2s")
        .shutdown_timeout(BUDGET);
    let cfg = tansu.realtime_sink(garage.s3_sink(cfg), TOPIC);
    let mut collector = TestServer::collector(dir.path(), &cfg)?;

    let first = send_generated(&collector.url(), 5_000, 3, 1, 1, 2)?;
    // Delivered before the outage, so the restart has old and new records to tell apart.
    wait_ready_until(
        &collector.url(),
        Duration::from_secs(60),
        "the first 5,000 records delivered",
        |r| sink(r, "standard")["lag_entries"] == 0 && sink(r, "realtime")["lag_entries"] == 0,
    )?;

    garage.stop()?;
    tansu.stop()?;
    let second = send_generated_seeded(&collector.url(), 5_000, 3, 1, 1, 2, 8)?;
    let acked: Vec<String> = first
        .sample
        .iter()
        .chain(&second.sample)
        .map(|r| r.request_id().to_owned())
        .collect();
    let distinct: HashSet<&String> = acked.iter().collect();
    assert_eq!(distinct.len(), 10_000, "the two batches share request ids");

    let ready = wait_ready_until(
        &collector.url(),
        Duration::from_secs(60),
        "both sinks degraded with garage and tansu down",
        |r| sink(r, "standard")["degraded"] == true && sink(r, "realtime")["degraded"] == true,
    )
    .map_err(|e| e.context(log_excerpt(&collector.log_text())))?;
    eprintln!("before SIGTERM: {ready}");
    assert!(
        sink(&ready, "standard")["lag_entries"]
            .as_u64()
            .unwrap_or(0)
            > 0
    );
    assert!(
        sink(&ready, "realtime")["lag_entries"]
            .as_u64()
            .unwrap_or(0)
            > 0
    );

    let log = terminate_within_budget(&mut collector, BUDGET, "with garage and tansu down")?;
    assert!(
        log.contains("undelivered records stay in the write-ahead log"),
        "the log does not say records stay in the write-ahead log"
    );
    drop(collector);

    garage.restart()?;
    tansu.restart()?;
    let mut collector = TestServer::collector(dir.path(), &cfg)?;
    let restarted = Instant::now();
    let ready = wait_ready_until(
        &collector.url(),
        Duration::from_secs(120),
        "everything delivered after the restart",
        |r| sink(r, "standard")["lag_entries"] == 0 && sink(r, "realtime")["lag_entries"] == 0,
    )
    .map_err(|e| e.context(log_excerpt(&collector.log_text())))?;
    eprintln!(
        "after the restart, delivered in {:.1} s: {ready}",
        restarted.elapsed().as_secs_f64()
    );

    // S3: every acknowledged record, exactly once.
    let ack_file = dir.path().join("acked.txt");
    fs::write(&ack_file, acked.join("\n") + "\n")?;
    let s3 = garage.bucket_report(Some(&ack_file))?;
    let s3_missing = s3["missing"].as_u64().unwrap_or(u64::MAX);
    eprintln!(
        "S3: {} acknowledged, {} rows, {} distinct, {s3_missing} lost, {} unexpected ({s3})",
        acked.len(),
        s3["rows"],
        s3["distinct"],
        s3["unexpected"]
    );

    // Kafka: every sampled acknowledged record, at least once.
    let sampled: HashSet<&String> = acked
        .iter()
        .filter(|id| edgelog_record::keep(id, f64::from(REALTIME_RATE)))
        .collect();
    let got = consume(
        &tansu.bootstrap(),
        TOPIC,
        sampled.len(),
        Duration::from_secs(30),
    )?;
    let counts = consumed_ids(&got)?;
    let (lost, duplicates) = lost_and_duplicates(sampled.iter().copied(), &counts);
    let lost = lost.len();
    let unexpected = counts.keys().filter(|id| !sampled.contains(id)).count();
    eprintln!(
        "Kafka: {} acknowledged, {} sampled at {REALTIME_RATE} %, {} messages, {} delivered, \
         {duplicates} duplicates, {lost} lost, {unexpected} unexpected",
        acked.len(),
        sampled.len(),
        got.len(),
        counts.len()
    );
    let (took2, status2) = collector.terminate_timed()?;
    eprintln!(
        "second SIGTERM (all delivered): {status2} after {:.2} s",
        took2.as_secs_f64()
    );

    assert_eq!(s3_missing, 0, "acknowledged records missing from S3: {s3}");
    assert_eq!(s3["rows"].as_u64(), Some(acked.len() as u64), "{s3}");
    assert_eq!(s3["distinct"].as_u64(), Some(acked.len() as u64), "{s3}");
    assert_eq!(lost, 0, "sampled records missing from the topic");
    assert_eq!(unexpected, 0, "records the sampler did not keep");
    assert!(status2.success(), "{}", log_excerpt(&collector.log_text()));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 3. SIGTERM with the real-time sink stuck (no broker at its address)
// ---------------------------------------------------------------------------------------

#[test]
fn sigterm_with_a_poison_record_before_it_is_dead_lettered_ends_within_budget() -> anyhow::Result<()>
{
    const BUDGET: Duration = Duration::from_secs(2);
    let dir = tempfile::tempdir()?;
    // Nothing listens there: the sink hands messages to librdkafka, which holds them.
    let nowhere = free_port();
    let cfg = ServerConfig::new()
        .sample("realtime", 100)
        .set(
            "sinks.realtime.kafka",
            "bootstrap_servers",
            format!("127.0.0.1:{nowhere}"),
        )
        .set("sinks.realtime.kafka", "topic", TOPIC)
        .shutdown_timeout(BUDGET);
    let mut collector = TestServer::collector(dir.path(), &cfg)?;
    let sent = send_generated(&collector.url(), 1_000, 2, 1, 1, 1)?;
    let ready = wait_ready_until(
        &collector.url(),
        Duration::from_secs(30),
        "the real-time sink stuck (degraded) with no broker",
        |r| {
            let s = sink(r, "realtime");
            s["degraded"] == true && s["lag_entries"].as_u64().unwrap_or(0) > 0
        },
    )
    .map_err(|e| e.context(log_excerpt(&collector.log_text())))?;
    eprintln!("before SIGTERM: {}", sink(&ready, "realtime"));

    let log = terminate_within_budget(&mut collector, BUDGET, "with the real-time sink stuck")?;
    let says = log
        .lines()
        .find(|l| l.contains("undelivered records stay in the write-ahead log"))
        .context("the log does not say undelivered records stay in the write-ahead log")?;
    assert!(says.contains("realtime"), "{says}");
    drop(collector);

    // The same data dir, a broker this time: the records that waited arrive.
    let tansu = Tansu::start()?;
    tansu.create_topic(TOPIC, 1)?;
    let cfg = ServerConfig::new()
        .sample("realtime", 100)
        .shutdown_timeout(BUDGET);
    let mut collector = TestServer::collector(dir.path(), &tansu.realtime_sink(cfg, TOPIC))?;
    let want: HashSet<String> = sent
        .sample
        .iter()
        .map(|r| r.request_id().to_owned())
        .collect();
    assert_eq!(want.len(), 1_000);
    let got = consume(
        &tansu.bootstrap(),
        TOPIC,
        want.len(),
        Duration::from_secs(60),
    )?;
    let counts = consumed_ids(&got)?;
    let (lost, duplicates) = lost_and_duplicates(&want, &counts);
    let lost = lost.len();
    let unexpected = counts.keys().filter(|id| !want.contains(*id)).count();
    eprintln!(
        "after the restart with a broker: {} acknowledged, {} messages, {} delivered, \
         {duplicates} duplicates, {lost} lost",
        want.len(),
        got.len(),
        counts.len()
    );
    let (took2, status2) = collector.terminate_timed()?;
    eprintln!(
        "second SIGTERM (all delivered): {status2} after {:.2} s",
        took2.as_secs_f64()
    );
    assert_eq!(lost, 0, "acknowledged records missing from the topic");
    assert_eq!(unexpected, 0);
    assert!(status2.success(), "{}", log_excerpt(&collector.log_text()));
    Ok(())
}
