//! Real-time logs on a real Kafka-protocol broker (tansu on loopback), read by an
//! independent consumer (Python confluent-kafka).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use anyhow::Context;
use edgelog_record::{FIELDS, KeyCache, Record, SamplingConfig, field_index, parse_json_line, w3c};
use edgelog_sink_stream::{HEADER_FIELDS, HEADER_FORMAT, HEADER_SAMPLE_RATE, parse_tsv_timestamp};
use edgelog_tests::scenarios::{Outage, acked_ids, lost_and_duplicates, outage_under_load};
use edgelog_tests::servers::{Consumed, Tansu, consume};
use edgelog_tests::{ServerConfig, TestServer, http_get, send_generated, wait_for, within};

const TOPIC: &str = "edgelog-realtime";

/// `rate` percent of `distribution` to the stream, all of the others.
fn sampling(distribution: &str, rate: f64) -> SamplingConfig {
    SamplingConfig {
        distributions: [(
            distribution.to_owned(),
            edgelog_record::Rates::of([("standard", 100.0), ("realtime", rate)]),
        )]
        .into(),
        ..SamplingConfig::default()
    }
}

/// The generator's distribution ids for seed 7 (what `send_generated` uses).
fn distribution_ids(n: usize) -> Vec<String> {
    edgelog_edge::Generator::new(7, n, 8).distribution_ids()
}

#[test]
fn sampled_records_reach_the_topic_exactly_once_and_in_order() -> anyhow::Result<()> {
    let tansu = Tansu::start()?;
    tansu.create_topic(TOPIC, 3)?;
    let ids = distribution_ids(2);
    let dir = tempfile::tempdir()?;
    let cfg = ServerConfig::new().set(
        &format!("sampling.distributions.{}", ids[0]),
        "realtime",
        25u32,
    );
    let mut collector = TestServer::collector(dir.path(), &tansu.realtime_sink(cfg, TOPIC))?;
    // One request at a time: the log holds records in generation order.
    let sent = send_generated(&collector.url(), 100_000, 2, 1, 1, 1)?;
    assert!(collector.terminate()?, "{}", collector.log_text());

    let sampling = sampling(&ids[0], 25.0);
    let expected: Vec<&Record> = sent
        .sample
        .iter()
        .filter(|r| {
            sampling
                .decide(&r.distribution_id, r.request_id(), "realtime")
                .is_some()
        })
        .collect();
    let first_share = expected
        .iter()
        .filter(|r| r.distribution_id == ids[0])
        .count();
    assert!(
        (11_500..13_500).contains(&first_share),
        "25 % of 50,000 expected, {first_share} kept"
    );

    let got = consume(
        &tansu.bootstrap(),
        TOPIC,
        expected.len(),
        Duration::from_secs(20),
    )?;
    let by_id: HashMap<&str, &Record> = expected.iter().map(|r| (r.request_id(), *r)).collect();
    let mut seen = HashSet::new();
    let mut keys = KeyCache::default();
    let mut partitions: BTreeMap<String, HashSet<i32>> = BTreeMap::new();
    let mut last: HashMap<String, (i64, i64)> = HashMap::new();
    let mut sorted = got.clone();
    sorted.sort_by_key(|m| (m.partition, m.offset));
    for m in &sorted {
        let r = parse_json_line(m.value.as_bytes(), None, &mut keys)
            .map_err(|e| anyhow::anyhow!("message does not parse back: {e}: {}", m.value))?;
        let want = by_id
            .get(r.request_id())
            .with_context(|| format!("unexpected record {}", r.request_id()))?;
        assert_eq!(&r, *want, "record changed on its way");
        assert!(
            seen.insert(r.request_id().to_owned()),
            "duplicate {}",
            r.request_id()
        );
        assert_eq!(m.key, r.distribution_id);
        let rate = if r.distribution_id == ids[0] {
            "25"
        } else {
            "100"
        };
        assert_eq!(
            m.headers.get(HEADER_SAMPLE_RATE).map(String::as_str),
            Some(rate)
        );
        assert_eq!(
            m.headers.get(HEADER_FORMAT).map(String::as_str),
            Some("json")
        );
        partitions
            .entry(m.key.clone())
            .or_default()
            .insert(m.partition);
        // In order per distribution: event times grow with the offset.
        if let Some((ts, off)) = last.get(&m.key) {
            assert!(
                r.timestamp_ms >= *ts,
                "{} out of order at offset {} (after {off})",
                m.key,
                m.offset
            );
        }
        last.insert(m.key.clone(), (r.timestamp_ms, m.offset));
    }
    assert_eq!(seen.len(), expected.len(), "records missing from the topic");
    for (d, p) in &partitions {
        assert_eq!(p.len(), 1, "{d} spread over partitions {p:?}");
    }
    Ok(())
}

#[test]
fn tsv_messages_zstd_compressed_carry_the_selected_fields_in_cloudfront_order() -> anyhow::Result<()>
{
    let tansu = Tansu::start()?;
    tansu.create_topic(TOPIC, 1)?;
    let ids = distribution_ids(2);
    let dir = tempfile::tempdir()?;
    let cfg = ServerConfig::new()
        .realtime("format", "tsv")
        .set(
            &format!("sinks.realtime.distributions.{}", ids[0]),
            "fields",
            [
                "x-edge-request-id",
                "sc-status",
                "timestamp",
                "cs-host",
                "time-to-first-byte",
                "cs_user_agent",
                "sc-range-start",
            ],
        )
        .set("sinks.realtime.kafka", "compression", "zstd");
    let mut collector = TestServer::collector(dir.path(), &tansu.realtime_sink(cfg, TOPIC))?;
    let sent = send_generated(&collector.url(), 2_000, 2, 1, 1, 2)?;
    assert!(collector.terminate()?, "{}", collector.log_text());

    let got = consume(&tansu.bootstrap(), TOPIC, 2_000, Duration::from_secs(20))?;
    assert_eq!(got.len(), 2_000);
    let by_id: HashMap<&str, &Record> = sent.sample.iter().map(|r| (r.request_id(), r)).collect();
    let mut checked = HashSet::new();
    for m in &got {
        assert_eq!(
            m.headers.get(HEADER_FORMAT).map(String::as_str),
            Some("tsv")
        );
        let names: Vec<&str> = m
            .headers
            .get(HEADER_FIELDS)
            .context("no field list header")?
            .split(',')
            .collect();
        let cols: Vec<&str> = m.value.split('\t').collect();
        assert_eq!(cols.len(), names.len(), "{}", m.value);
        let id_at = names
            .iter()
            .position(|n| *n == "x-edge-request-id")
            .context("no request id column")?;
        let r = by_id.get(cols[id_at]).context("unknown request id")?;
        if m.key == ids[0] {
            assert_eq!(
                names,
                [
                    "timestamp",
                    "time-to-first-byte",
                    "sc-status",
                    "cs-host",
                    "x-edge-request-id",
                    "cs-user-agent",
                    "sc-range-start"
                ]
            );
        } else {
            assert_eq!(names.len(), FIELDS.len() + 1, "every field: {names:?}");
        }
        for (name, col) in names.iter().zip(&cols) {
            if *name == "timestamp" {
                assert_eq!(parse_tsv_timestamp(col), Some(r.timestamp_ms));
                continue;
            }
            let std_name = edgelog_sink_stream::REALTIME_FIELDS
                .iter()
                .find(|(rt, _)| rt == name)
                .map(|(_, s)| *s)
                .context("unknown column")?;
            let i = field_index(std_name).context("no such field")?;
            let mut want = String::new();
            w3c::write_text(r.get(i), &mut want);
            assert_eq!(*col, want, "{name} of {}", r.request_id());
        }
        checked.insert(r.request_id().to_owned());
    }
    assert_eq!(checked.len(), 2_000);
    Ok(())
}

#[test]
fn thirty_seconds_without_the_broker_lose_nothing() -> anyhow::Result<()> {
    // Messages must outlive the broker's restart: SQLite storage, which tansu serves
    // slowly, hence 5 % of the records to the stream.
    let mut tansu = Tansu::start_persistent()?;
    tansu.create_topic(TOPIC, 3)?;
    let dir = tempfile::tempdir()?;
    let cfg = tansu.realtime_sink(ServerConfig::new().sample("realtime", 5), TOPIC);
    let mut collector = TestServer::collector(dir.path(), &cfg)?;
    let run = outage_under_load(
        &mut collector,
        &mut tansu,
        &Outage {
            edge: &[
                "--rate",
                "2000",
                "--duration",
                "55s",
                "--batch",
                "200",
                "--distributions",
                "3",
            ],
            up_first: Duration::from_secs(8),
            down: Duration::from_secs(25),
            down_after_probe: Duration::from_secs(5),
        },
    )?;
    let (ready, report) = (run.readyz, run.report);

    let status: serde_json::Value = serde_json::from_str(&ready)?;
    let realtime = status["sinks"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "realtime"))
        .with_context(|| format!("no realtime sink in {ready}"))?;
    assert!(
        realtime["lag_seconds"].as_f64().unwrap_or(0.0) > 10.0,
        "{ready}"
    );
    assert_eq!(realtime["degraded"], true, "{ready}");
    assert!(
        realtime["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("kafka")),
        "{ready}"
    );

    let acked: HashSet<String> = acked_ids(&run.ack_log)?;
    let sampled: HashSet<&String> = acked
        .iter()
        .filter(|id| edgelog_record::keep(id, 5.0))
        .collect();
    let got: Vec<Consumed> = consume(
        &tansu.bootstrap(),
        TOPIC,
        sampled.len(),
        Duration::from_secs(30),
    )?;
    let mut keys = KeyCache::default();
    let mut counts: HashMap<String, u32> = HashMap::new();
    for m in &got {
        let r = parse_json_line(m.value.as_bytes(), None, &mut keys)
            .map_err(|e| anyhow::anyhow!("{e}: {}", m.value))?;
        *counts.entry(r.request_id().to_owned()).or_default() += 1;
    }
    let (lost, duplicates) = lost_and_duplicates(sampled.iter().copied(), &counts);
    let lost = lost.len();
    let unexpected = counts.keys().filter(|id| !sampled.contains(id)).count();
    eprintln!(
        "broker down 30 s under 2,000 records/s: {} acknowledged, {} sampled at 5 %, {} messages, {duplicates} duplicates, {lost} lost; readyz during the outage: {ready}\n{report}",
        acked.len(),
        sampled.len(),
        got.len()
    );
    assert_eq!(unexpected, 0, "records the sampler did not keep");
    assert!(acked.len() > 80_000, "too little load: {}", acked.len());
    assert_eq!(lost, 0, "acknowledged records missing from the topic");
    Ok(())
}

#[test]
fn a_missing_topic_is_reported_and_its_records_wait_until_it_exists() -> anyhow::Result<()> {
    let tansu = Tansu::start()?;
    let dir = tempfile::tempdir()?;
    let mut collector = TestServer::collector(
        dir.path(),
        &tansu.realtime_sink(ServerConfig::new(), "not-yet"),
    )?;
    let sent = send_generated(&collector.url(), 500, 2, 1, 1, 1)?;
    let mut last = String::new();
    let ready = wait_for(
        within(Duration::from_secs(30)),
        Duration::from_millis(100),
        "the missing topic reported",
        || {
            last = http_get(&format!("{}/readyz", collector.url()))?;
            Ok(last
                .contains("not-yet does not exist")
                .then(|| last.clone()))
        },
    )
    .with_context(|| format!("the missing topic is not reported: {last}"))?;
    let status: serde_json::Value = serde_json::from_str(&ready)?;
    assert_eq!(status["status"], "degraded", "{ready}");
    assert!(
        collector.log_text().contains("not-yet does not exist"),
        "not in the log"
    );
    // Once the topic exists, the records that waited are delivered.
    tansu.create_topic("not-yet", 1)?;
    let got = consume(&tansu.bootstrap(), "not-yet", 500, Duration::from_secs(60))?;
    assert!(collector.terminate()?, "{}", collector.log_text());
    let ids: HashSet<String> = got
        .iter()
        .filter_map(|m| {
            serde_json::from_str::<serde_json::Value>(&m.value).ok()?["x-edge-request-id"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        ids.len(),
        sent.sample.len(),
        "records lost after the topic appeared"
    );
    Ok(())
}

/// Posts `n` records of `dist`, ids `{prefix}-{k}`.
fn post_records(url: &str, prefix: &str, dist: &str, n: usize) -> anyhow::Result<()> {
    let mut body = String::new();
    for k in 0..n {
        body.push_str(&format!(
            "{{\"timestamp\":1764151200,\"DistributionId\":\"{dist}\",\"cs-uri-stem\":\"/r/{k}\",\
             \"sc-status\":200,\"x-edge-request-id\":\"{prefix}-{k}\"}}\n"
        ));
    }
    let a = edgelog_tests::http_post(&format!("{url}/v1/records"), body.as_bytes())?;
    anyhow::ensure!(a.status == 200, "{}", a.body);
    Ok(())
}

#[test]
fn field_selections_change_on_sighup_and_through_the_admin_api_without_a_restart()
-> anyhow::Result<()> {
    const ADMIN: &str = "admin-token-0123456789abcdef";
    let tansu = Tansu::start()?;
    tansu.create_topic(TOPIC, 1)?;
    let dir = tempfile::tempdir()?;
    let fields = |f: &[&str]| {
        let cfg = ServerConfig::new()
            .set("collector", "admin_tokens", [ADMIN])
            .set("sinks.realtime.distributions.EFIELDS", "fields", f);
        tansu.realtime_sink(cfg, TOPIC)
    };
    let mut c = TestServer::collector(dir.path(), &fields(&["sc-status"]))?;
    post_records(&c.url(), "first", "EFIELDS", 100)?;
    // Taken by the sink under the first selection before anything changes.
    assert_eq!(
        consume(&tansu.bootstrap(), TOPIC, 100, Duration::from_secs(20))?.len(),
        100
    );

    c.rewrite_config(&fields(&["sc-status", "cs-uri-stem"]))?;
    c.signal("HUP")?;
    wait_for(
        within(Duration::from_secs(10)),
        Duration::from_millis(50),
        "the reload",
        || Ok(c.log_text().contains("sinks.realtime.fields").then_some(())),
    )?;
    assert!(!c.log_text().contains("need a restart"), "{}", c.log_text());
    post_records(&c.url(), "second", "EFIELDS", 100)?;
    assert_eq!(
        consume(&tansu.bootstrap(), TOPIC, 200, Duration::from_secs(20))?.len(),
        200
    );

    let settings =
        r#"{"sinks": {"realtime": {"distributions": {"EFIELDS": {"fields": ["cs-uri-stem"]}}}}}"#;
    let auth = format!("Bearer {ADMIN}");
    let (status, body) = edgelog_tests::http_request(
        "PUT",
        &format!("{}/admin/settings", c.url()),
        &[("authorization", &auth)],
        settings,
    )?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("sinks.realtime.fields"), "{body}");
    // A setting of a sink the API may not change is refused.
    let (status, body) = edgelog_tests::http_request(
        "PUT",
        &format!("{}/admin/settings", c.url()),
        &[("authorization", &auth)],
        r#"{"sinks": {"realtime": {"format": "tsv"}}}"#,
    )?;
    assert!(
        status == 400 && body.contains("sinks.realtime.format"),
        "{body}"
    );
    post_records(&c.url(), "third", "EFIELDS", 100)?;
    let got = consume(&tansu.bootstrap(), TOPIC, 300, Duration::from_secs(20))?;
    assert!(c.terminate()?, "{}", c.log_text());
    assert_eq!(got.len(), 300);
    for (n, m) in got.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(&m.value)?;
        let want: &[&str] = match n / 100 {
            0 => &["sc-status"],
            1 => &["sc-status", "cs-uri-stem"],
            _ => &["cs-uri-stem"],
        };
        for f in ["sc-status", "cs-uri-stem"] {
            assert_eq!(v.get(f).is_some(), want.contains(&f), "message {n}: {v}");
        }
    }
    Ok(())
}
