//! Standard logs on a real S3-compatible server (garage on loopback), read back by DuckDB
//! straight from the bucket, the way users query them.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Context;
use edgelog_record::{FIELDS, KeyCache, Rates, Record, SamplingConfig, Value, parse_json_line};
use edgelog_tests::scenarios::{Outage, outage_under_load};
use edgelog_tests::servers::{Garage, Tansu, consume, python_json};
use edgelog_tests::{ServerConfig, TestServer, run_edge, send_generated, send_generated_keeping};
use serde_json::json;

const GLOB: &str = "s3://edgelog/standard-logs/**/*.parquet";

fn expected_json(v: Value<'_>) -> serde_json::Value {
    match v {
        Value::Str(s) => s.map_or(json!(null), |s| json!(s)),
        Value::U16(n) => n.map_or(json!(null), |n| json!(n)),
        Value::U32(n) => n.map_or(json!(null), |n| json!(n)),
        Value::U64(n) => n.map_or(json!(null), |n| json!(n)),
        Value::I64(n) => n.map_or(json!(null), |n| json!(n)),
        Value::F64(n) => n.map_or(json!(null), |n| json!(n)),
    }
}

/// Every field of `r` equals the row DuckDB returned for it.
fn assert_row_matches(r: &Record, row: &serde_json::Value) {
    let id = r.request_id();
    assert_eq!(row["timestamp_ms"].as_i64(), Some(r.timestamp_ms), "{id}");
    assert_eq!(
        row["DistributionId"].as_str(),
        Some(r.distribution_id.as_str()),
        "{id}"
    );
    assert_eq!(row["sample_rate"].as_f64(), Some(100.0), "{id}");
    for (i, f) in FIELDS.iter().enumerate() {
        let want = expected_json(r.get(i));
        let got = &row[f.column];
        let same = match (want.as_f64(), got.as_f64()) {
            (Some(a), Some(b)) => a == b,
            _ => &want == got,
        };
        assert!(same, "{id}: {} is {got}, sent {want}", f.column);
    }
}

/// A million records: all of them in S3, exactly as sent (DuckDB counts, sums and
/// groups them, and reads sampled rows back whole), and their 10 % sample on the Kafka
/// topic, each message the record sent and none missing or twice.
#[test]
fn a_million_records_land_in_s3_and_duckdb_returns_exactly_them() -> anyhow::Result<()> {
    const TOPIC: &str = "edgelog-realtime";
    let garage = Garage::start()?;
    let tansu = Tansu::start()?;
    tansu.create_topic(TOPIC, 3)?;
    let dir = tempfile::tempdir()?;
    let cfg = tansu
        .realtime_sink(garage.s3_sink(ServerConfig::new()), TOPIC)
        .set("sampling.default", "realtime", 10u32);
    let mut collector = TestServer::collector(dir.path(), &cfg)?;
    let sampling = SamplingConfig {
        default: Rates::of([("realtime", 10.0)]),
        ..SamplingConfig::default()
    };
    let sent = send_generated_keeping(&collector.url(), 1_000_000, 5, 6, 4, move |r| {
        sampling
            .decide(&r.distribution_id, r.request_id(), "realtime")
            .is_some()
    })?;
    assert!(collector.terminate()?, "{}", collector.log_text());
    // Rows to read back whole from S3: about 200 of them.
    let sample: Vec<&Record> = sent.kept.iter().step_by(500).collect();
    assert!(
        !dir.path().join("standard-logs").exists(),
        "standard logs went to local disk, not to S3"
    );

    let (dist, hour_ms) = sent
        .partitions
        .keys()
        .nth(3)
        .cloned()
        .context("no partitions")?;
    let ids: Vec<&str> = sample.iter().map(|r| r.request_id()).collect();
    let (y, m, d) = edgelog_record::time::civil_from_days(hour_ms.div_euclid(86_400_000));
    let hour = hour_ms.rem_euclid(86_400_000) / 3_600_000;
    let script = format!(
        r#"{prelude}
src = "read_parquet('{GLOB}', hive_partitioning = true)"
one = lambda q: con.sql(q).fetchone()[0]
out = {{}}
out["count"] = one(f"SELECT count(*) FROM {{src}}")
out["distinct_ids"] = one(f"SELECT count(DISTINCT x_edge_request_id) FROM {{src}}")
out["sc_bytes"] = int(one(f"SELECT sum(sc_bytes) FROM {{src}}"))
out["by_status"] = {{str(s): n for s, n in con.sql(f"SELECT sc_status, count(*) FROM {{src}} GROUP BY ALL").fetchall()}}
out["by_distribution"] = {{d: n for d, n in con.sql(f"SELECT DistributionId, count(*) FROM {{src}} GROUP BY ALL").fetchall()}}
rel = con.sql(f"SELECT epoch_ms(timestamp) AS timestamp_ms, * EXCLUDE (timestamp) FROM {{src}} WHERE x_edge_request_id IN (SELECT unnest($ids))", params={{"ids": {ids}}})
cols = rel.columns
out["sample"] = [dict(zip(cols, row)) for row in rel.fetchall()]
where = "DistributionId = '{dist}' AND year = {y} AND month = {m} AND day = {d} AND hour = {hour}"
out["partition_count"] = one(f"SELECT count(*) FROM {{src}} WHERE {{where}}")
plan = con.sql(f"EXPLAIN ANALYZE SELECT count(*) FROM {{src}} WHERE {{where}}").fetchall()
out["plan"] = "\n".join(str(c) for row in plan for c in row)
out["files_total"] = one(f"SELECT count(*) FROM glob('{GLOB}')")
out["files_in_partition"] = one(f"SELECT count(*) FROM glob('s3://edgelog/standard-logs/DistributionId={dist}/year={y}/month={m:02}/day={d:02}/hour={hour:02}/*.parquet')")
out["types"] = {{c: str(t) for c, t in zip(rel.columns, rel.types)}}
print(json.dumps(out))
"#,
        prelude = garage.duckdb_prelude(),
        ids = serde_json::to_string(&ids)?,
    );
    let out = python_json(&script)?;

    assert_eq!(out["count"].as_u64(), Some(1_000_000));
    assert_eq!(out["distinct_ids"].as_u64(), Some(1_000_000), "duplicates");
    assert_eq!(out["sc_bytes"].as_u64(), Some(sent.sc_bytes));
    let by_status: BTreeMap<String, u64> = serde_json::from_value(out["by_status"].clone())?;
    let want: BTreeMap<String, u64> = sent
        .by_status
        .iter()
        .map(|(s, n)| (s.to_string(), *n))
        .collect();
    assert_eq!(by_status, want);
    let by_distribution: BTreeMap<String, u64> =
        serde_json::from_value(out["by_distribution"].clone())?;
    assert_eq!(by_distribution, sent.by_distribution);

    let rows = out["sample"].as_array().context("sample rows")?;
    assert_eq!(rows.len(), sample.len());
    let by_id: HashMap<&str, &serde_json::Value> = rows
        .iter()
        .filter_map(|r| Some((r["x_edge_request_id"].as_str()?, r)))
        .collect();
    for r in &sample {
        assert_row_matches(r, by_id.get(r.request_id()).context("sampled row missing")?);
    }
    assert_eq!(out["types"]["timestamp_ms"], "BIGINT");
    assert_eq!(out["types"]["sc_status"], "INTEGER");
    assert_eq!(out["types"]["time_taken"], "DOUBLE");

    // The partition filter reads only that partition's files.
    assert_eq!(
        out["partition_count"].as_u64(),
        sent.partitions.get(&(dist, hour_ms)).copied()
    );
    let plan = out["plan"].as_str().unwrap_or("");
    let files_read = plan
        .lines()
        .find_map(|l| {
            l.split("Total Files Read:")
                .nth(1)
                .and_then(|n| n.trim().trim_matches('│').trim().parse::<u64>().ok())
        })
        .with_context(|| format!("no file count in the plan:\n{plan}"))?;
    let (files_total, files_in_partition) = (
        out["files_total"].as_u64().unwrap_or(0),
        out["files_in_partition"].as_u64().unwrap_or(0),
    );
    assert!(files_in_partition >= 1);
    assert_eq!(
        files_read, files_in_partition,
        "{files_total} files in all; plan:\n{plan}"
    );
    assert!(files_total >= sent.partitions.len() as u64);

    // The topic: the 10 % sample, each message the record sent, none missing or twice.
    let share = sent.kept.len() as f64 / sent.count as f64;
    assert!((0.095..0.105).contains(&share), "10 % expected, {share}");
    let got = consume(
        &tansu.bootstrap(),
        TOPIC,
        sent.kept.len(),
        Duration::from_secs(30),
    )?;
    let want: HashMap<&str, &Record> = sent.kept.iter().map(|r| (r.request_id(), r)).collect();
    let mut keys = KeyCache::default();
    let mut seen: HashMap<String, u32> = HashMap::new();
    for m in &got {
        let r = parse_json_line(m.value.as_bytes(), None, &mut keys)
            .map_err(|e| anyhow::anyhow!("message does not parse back: {e}: {}", m.value))?;
        let w = want
            .get(r.request_id())
            .with_context(|| format!("unexpected record {} on the topic", r.request_id()))?;
        assert_eq!(&r, *w, "record changed on its way to the topic");
        *seen.entry(r.request_id().to_owned()).or_default() += 1;
    }
    let twice = seen.values().filter(|n| **n > 1).count();
    assert_eq!(twice, 0, "records twice on the topic");
    assert_eq!(seen.len(), want.len(), "records missing from the topic");
    Ok(())
}

#[test]
fn the_aws_example_comes_back_from_s3_with_its_documented_values() -> anyhow::Result<()> {
    const EXAMPLE: &str = "../record/testdata/EMLARXS9EXAMPLE.2019-12-04-21.RT4KCN4SGK9.log";
    let garage = Garage::start()?;
    let dir = tempfile::tempdir()?;
    let mut collector = TestServer::collector(dir.path(), &garage.s3_sink(ServerConfig::new()))?;
    let out = run_edge(&collector.url(), &["--replay", EXAMPLE])?;
    assert!(out.contains("records acknowledged: 6"), "{out}");
    assert!(collector.terminate()?, "{}", collector.log_text());

    let out = python_json(&format!(
        r#"{prelude}
rel = con.sql("""SELECT DistributionId, year, month, day, hour, timestamp::VARCHAR AS ts, *
    EXCLUDE (DistributionId, year, month, day, hour, timestamp)
    FROM read_parquet('{GLOB}', hive_partitioning = true) ORDER BY timestamp""")
print(json.dumps({{"types": [str(t) for t in rel.types], "cols": rel.columns, "rows": rel.fetchall()}}))
"#,
        prelude = garage.duckdb_prelude()
    ))?;
    let cols: Vec<&str> = out["cols"]
        .as_array()
        .context("cols")?
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    let rows = out["rows"].as_array().context("rows")?;
    assert_eq!(rows.len(), 6);
    let cell = |row: usize, col: &str| {
        let i = cols.iter().position(|c| *c == col).unwrap_or(usize::MAX);
        rows[row].get(i).cloned().unwrap_or_default()
    };
    let ty = |col: &str| {
        let i = cols.iter().position(|c| *c == col).unwrap_or(usize::MAX);
        out["types"].get(i).cloned().unwrap_or_default()
    };
    // The first line of AWS's example, as documented.
    assert_eq!(cell(0, "DistributionId"), "EMLARXS9EXAMPLE");
    assert_eq!(cell(0, "year"), 2019);
    assert_eq!(cell(0, "hour"), 21);
    assert_eq!(cell(0, "ts"), "2019-12-04 21:02:31+00");
    assert_eq!(cell(0, "x_edge_location"), "LAX1");
    assert_eq!(cell(0, "sc_bytes"), 392);
    assert_eq!(cell(0, "c_ip"), "192.0.2.100");
    assert_eq!(cell(0, "cs_method"), "GET");
    assert_eq!(cell(0, "cs_host"), "d111111abcdef8.cloudfront.net");
    assert_eq!(cell(0, "cs_uri_stem"), "/index.html");
    assert_eq!(cell(0, "sc_status"), 200);
    assert_eq!(cell(0, "x_edge_result_type"), "Hit");
    assert_eq!(cell(0, "time_taken"), 0.001);
    assert_eq!(cell(0, "time_to_first_byte"), 0.001);
    assert_eq!(cell(0, "cs_protocol_version"), "HTTP/2.0");
    assert_eq!(
        cell(0, "cs_uri_query"),
        serde_json::Value::Null,
        "'-' is null"
    );
    assert_eq!(ty("ts"), "VARCHAR");
    assert_eq!(ty("sc_status"), "INTEGER");
    assert_eq!(ty("sc_bytes"), "BIGINT");
    assert_eq!(ty("time_taken"), "DOUBLE");
    assert_eq!(ty("year"), "BIGINT");
    Ok(())
}

#[test]
fn sigkill_during_uploads_leaves_every_record_exactly_once() -> anyhow::Result<()> {
    let mut garage = Garage::start()?;
    let dir = tempfile::tempdir()?;
    // Small files, so uploads go on all the time.
    let cfg = ServerConfig::new()
        .standard("max_rows", 2000u32)
        .standard("max_age", "1s");
    let mut collector = TestServer::collector(dir.path(), &garage.s3_sink(cfg))?;
    // With the bucket away, everything waits in the write-ahead log, acknowledged.
    garage.stop()?;
    let sent = send_generated(&collector.url(), 200_000, 5, 3, 1_000_000, 4)?;
    garage.restart()?;
    let mut kills = 0;
    let mut files_seen = Vec::new();
    for i in 0..6u64 {
        // The scenario: kills at staggered times while uploads go on.
        std::thread::sleep(Duration::from_millis(900 + 300 * i));
        let files = garage.bucket_report(None)?["files"].as_u64().unwrap_or(0);
        files_seen.push(files);
        collector.crash_and_restart()?;
        kills += 1;
    }
    assert!(collector.terminate()?, "{}", collector.log_text());
    let r = garage.bucket_report(None)?;
    eprintln!("{kills} SIGKILLs during uploads; files seen before each: {files_seen:?}; {r}");
    assert!(
        files_seen.windows(2).any(|w| w[0] < w[1]),
        "the kills did not fall during uploads: {files_seen:?}"
    );
    assert_eq!(r["rows"].as_u64(), Some(sent.count), "{r}");
    assert_eq!(r["distinct"].as_u64(), Some(sent.count), "{r}");
    Ok(())
}

#[test]
fn sixty_seconds_without_s3_under_load_lose_and_duplicate_nothing() -> anyhow::Result<()> {
    let mut garage = Garage::start()?;
    let dir = tempfile::tempdir()?;
    let cfg = ServerConfig::new().standard("max_age", "2s");
    let mut collector = TestServer::collector(dir.path(), &garage.s3_sink(cfg))?;
    // Degraded, lagging, and still accepting: /readyz and /metrics 55 s into the outage.
    let run = outage_under_load(
        &mut collector,
        &mut garage,
        &Outage {
            edge: &[
                "--rate",
                "2000",
                "--duration",
                "80s",
                "--batch",
                "200",
                "--distributions",
                "4",
            ],
            up_first: Duration::from_secs(8),
            down: Duration::from_secs(55),
            down_after_probe: Duration::from_secs(5),
        },
    )?;
    let (ready, metrics, report, ack_log) = (run.readyz, run.metrics, run.report, run.ack_log);

    let log = collector.log_text();
    let log_tail: String = log
        .lines()
        .filter(|l| !l.contains(" INFO "))
        .take(40)
        .collect::<Vec<_>>()
        .join("\n");
    let ready = format!("{ready}\ncollector log:\n{log_tail}");
    let status: serde_json::Value = serde_json::from_str(ready.lines().next().unwrap_or(""))?;
    let standard = status["sinks"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "standard"))
        .with_context(|| format!("no standard sink in {ready}"))?;
    assert_eq!(standard["degraded"], true, "{ready}");
    assert!(
        standard["lag_seconds"].as_f64().unwrap_or(0.0) > 30.0,
        "{ready}"
    );
    assert!(
        standard["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("upload")),
        "{ready}"
    );
    let lag_line = metrics
        .lines()
        .find(|l| l.starts_with("edgelog_sink_lag_seconds{sink=\"standard\"}"))
        .with_context(|| format!("no standard lag in /metrics:\n{metrics}"))?;
    let lag: f64 = lag_line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(lag > 30.0, "{lag_line}");

    let r = garage.bucket_report(Some(&ack_log))?;
    eprintln!("S3 down 60 s under 2,000 records/s: {r}\n{report}");
    let acked = r["acked"].as_u64().unwrap_or(0);
    assert!(acked > 100_000, "too little load: {r}");
    assert_eq!(
        r["missing"].as_u64(),
        Some(0),
        "acknowledged records lost: {r}"
    );
    assert_eq!(r["rows"], r["distinct"], "duplicates: {r}");
    Ok(())
}

#[test]
fn a_file_larger_than_a_part_goes_up_as_a_multipart_upload() -> anyhow::Result<()> {
    let garage = Garage::start()?;
    let dir = tempfile::tempdir()?;
    // One distribution, one hour, distinct records: one file of about 14 MB, above the
    // 8 MiB part size.
    let cfg = ServerConfig::new().standard("max_age", "10m");
    let mut collector = TestServer::collector(dir.path(), &garage.s3_sink(cfg))?;
    let sent = send_generated(&collector.url(), 200_000, 1, 0, 1_000_000, 4)?;
    assert!(collector.terminate()?, "{}", collector.log_text());
    let out = python_json(&format!(
        r#"{prelude}
files = con.sql("SELECT filename, size FROM read_blob('{GLOB}')").fetchall()
rows = con.sql("SELECT count(*), count(DISTINCT x_edge_request_id) FROM read_parquet('{GLOB}')").fetchone()
print(json.dumps({{"sizes": [s for _, s in files], "rows": rows[0], "distinct": rows[1]}}))
"#,
        prelude = garage.duckdb_prelude()
    ))?;
    let sizes: Vec<u64> = serde_json::from_value(out["sizes"].clone())?;
    assert!(
        sizes.iter().any(|s| *s > 8 << 20),
        "no file above 8 MiB: {sizes:?}"
    );
    assert_eq!(out["rows"].as_u64(), Some(sent.count), "{out}");
    assert_eq!(out["distinct"].as_u64(), Some(sent.count), "{out}");
    Ok(())
}
