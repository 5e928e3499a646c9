//! Privacy at ingest, through the real binary: with addresses truncated or hashed, no full
//! client address is anywhere under the data dir (log segments read raw and decoded,
//! Parquet, the file sink's plain text), while every other field is unchanged.

use std::collections::HashMap;
use std::fs;
use std::time::Duration;

use anyhow::Context;
use edgelog_collector::wal::{Wal, WalConfig};
use edgelog_tests::{
    ServerConfig, TestServer, files_under, http_post, parquet_files, read_parquet,
};

const FULL: [&str; 5] = [
    "203.0.113.77",
    "198.51.100.23",
    "192.0.2.99",
    "2001:db8:abcd:12::77",
    "session=s3cr3t-cookie",
];

#[test]
fn no_full_address_or_dropped_field_reaches_the_disk() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("c");
    let cfg = ServerConfig::new()
        .set("collector.privacy", "hash_key", "0123456789abcdef-secret")
        .set("collector.privacy.default", "ip", "truncate")
        .set("collector.privacy.default.fields", "cs_cookie", "drop")
        .set("collector.privacy.distributions.EHASHED", "ip", "hash")
        .set("sinks.audit", "type", "file")
        .set("sinks.audit", "path", "audit/records.ndjson")
        .without_sink("realtime");
    let mut collector = TestServer::collector(&data, &cfg)?;
    let mut body = String::new();
    let mut want: HashMap<String, (String, String)> = HashMap::new();
    for k in 0..300 {
        let (dist, ip) = match k % 3 {
            0 => ("ETRUNC", "203.0.113.77"),
            1 => ("ETRUNC", "2001:db8:abcd:12::77"),
            _ => ("EHASHED", "203.0.113.77"),
        };
        let id = format!("privacy-{k}");
        body.push_str(&format!(
            "{{\"timestamp\":1764151200,\"DistributionId\":\"{dist}\",\"c-ip\":\"{ip}\",\
             \"x-forwarded-for\":\"198.51.100.23, 192.0.2.99\",\"cs(Cookie)\":\"session=s3cr3t-cookie\",\
             \"cs-uri-stem\":\"/p/{k}\",\"sc-status\":200,\"sc-bytes\":{k},\"x-edge-request-id\":\"{id}\"}}\n"
        ));
        want.insert(id, (dist.to_owned(), ip.to_owned()));
    }
    let answer = http_post(&format!("{}/v1/records", collector.url()), body.as_bytes())?;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(collector.terminate()?, "{}", collector.log_text());

    // Raw bytes of every file: nothing.
    for f in files_under(&data) {
        let bytes = fs::read(&f)?;
        for needle in FULL {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} in {}",
                f.display()
            );
        }
    }
    // The log segments decoded: their records carry only what privacy kept.
    let rt = tokio::runtime::Runtime::new()?;
    let decoded = rt.block_on(async {
        let wal = Wal::open(&data.join("wal"), WalConfig::default())?;
        let mut reader = wal.reader("privacy-check");
        let entries = reader.read_available(1 << 20)?;
        wal.close().await;
        anyhow::Ok(entries)
    })?;
    let mut seen = 0;
    for e in &decoded {
        for r in e.records.iter() {
            seen += 1;
            let ip = r.c_ip.as_deref().unwrap_or("");
            match r.distribution_id.as_str() {
                "ETRUNC" => assert!(ip == "203.0.113.0" || ip == "2001:db8:abcd::", "{ip}"),
                _ => assert!(ip.starts_with("h:") && ip.len() == 34, "{ip}"),
            }
            assert_eq!(r.cs_cookie, None);
        }
    }
    assert_eq!(seen, 300, "the log holds every record");

    // The standard logs: the same, and everything else unchanged.
    let mut rows = 0;
    for f in parquet_files(&data.join("standard-logs")) {
        for b in read_parquet(&f)? {
            let col = |name: &str| {
                b.column_by_name(name)
                    .with_context(|| format!("column {name}"))
                    .cloned()
            };
            let ids = col("x_edge_request_id")?;
            let ids = ids
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .context("ids")?;
            let ips = col("c_ip")?;
            let ips = ips
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .context("ips")?;
            let xff = col("x_forwarded_for")?;
            let xff = xff
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .context("xff")?;
            let stems = col("cs_uri_stem")?;
            let stems = stems
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .context("stems")?;
            let bytes = col("sc_bytes")?;
            let bytes = bytes
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>()
                .context("bytes")?;
            for i in 0..b.num_rows() {
                rows += 1;
                let id = ids.value(i);
                let k: i64 = id.trim_start_matches("privacy-").parse()?;
                let (dist, _) = want.get(id).context("an id we sent")?;
                assert_eq!(stems.value(i), format!("/p/{k}"));
                assert_eq!(bytes.value(i), k);
                if dist == "ETRUNC" {
                    assert_eq!(xff.value(i), "198.51.100.0, 192.0.2.0");
                    assert!(ips.value(i).ends_with(".0") || ips.value(i).ends_with("::"));
                } else {
                    assert!(xff.value(i).starts_with("h:") && xff.value(i).contains(", h:"));
                    assert!(ips.value(i).starts_with("h:"));
                }
            }
        }
    }
    assert_eq!(rows, 300);
    let text = fs::read_to_string(data.join("audit/records.ndjson"))?;
    assert_eq!(text.lines().count(), 300);
    assert!(text.contains("203.0.113.0"));
    Ok(())
}

#[test]
fn a_privacy_rule_that_cannot_work_stops_the_start_with_the_key_named() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = ServerConfig::new().set("collector.privacy.default", "ip", "hash");
    let e = TestServer::collector(&dir.path().join("c"), &cfg)
        .err()
        .context("a hash rule without a key was accepted")?;
    assert!(
        format!("{e:#}").contains("collector.privacy.hash_key"),
        "{e:#}"
    );
    Ok(())
}

/// The same promise where the records leave the machine: Parquet on S3 (garage, read by
/// DuckDB) and the real-time topic (tansu, read by confluent-kafka).
#[test]
fn no_full_address_reaches_s3_or_the_topic() -> anyhow::Result<()> {
    use edgelog_tests::servers::{Garage, Tansu, consume, python_json};
    let garage = Garage::start()?;
    let tansu = Tansu::start()?;
    tansu.create_topic("edgelog-realtime", 1)?;
    let dir = tempfile::tempdir()?;
    let cfg = ServerConfig::new()
        .set("collector.privacy.default", "ip", "truncate")
        .set("collector.privacy.default.fields", "cs_cookie", "drop");
    let cfg = tansu.realtime_sink(garage.s3_sink(cfg), "edgelog-realtime");
    let mut collector = TestServer::collector(&dir.path().join("c"), &cfg)?;
    let mut body = String::new();
    for k in 0..200 {
        let ip = if k % 2 == 0 {
            "203.0.113.77"
        } else {
            "2001:db8:abcd:12::77"
        };
        body.push_str(&format!(
            "{{\"timestamp\":1764151200,\"DistributionId\":\"EPRIV\",\"c-ip\":\"{ip}\",\
             \"x-forwarded-for\":\"198.51.100.23, 192.0.2.99\",\"cs(Cookie)\":\"session=s3cr3t-cookie\",\
             \"sc-status\":200,\"x-edge-request-id\":\"s3-privacy-{k}\"}}\n"
        ));
    }
    let answer = http_post(&format!("{}/v1/records", collector.url()), body.as_bytes())?;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(collector.terminate()?, "{}", collector.log_text());

    let report = python_json(&format!(
        r#"{prelude}
src = "read_parquet('s3://edgelog/standard-logs/**/*.parquet')"
rows = con.sql(f"SELECT c_ip, x_forwarded_for, cs_cookie FROM {{src}}").fetchall()
print(json.dumps({{"rows": len(rows), "ips": sorted(set(r[0] for r in rows)),
    "xff": sorted(set(r[1] for r in rows)), "cookies": sorted(set(str(r[2]) for r in rows))}}))
"#,
        prelude = garage.duckdb_prelude()
    ))?;
    assert_eq!(report["rows"], 200, "{report}");
    assert_eq!(
        report["ips"],
        serde_json::json!(["2001:db8:abcd::", "203.0.113.0"]),
        "{report}"
    );
    assert_eq!(
        report["xff"],
        serde_json::json!(["198.51.100.0, 192.0.2.0"])
    );
    assert_eq!(report["cookies"], serde_json::json!(["None"]));

    let got = consume(
        &tansu.bootstrap(),
        "edgelog-realtime",
        200,
        Duration::from_secs(20),
    )?;
    assert_eq!(got.len(), 200);
    for m in &got {
        for needle in FULL {
            assert!(
                !m.value.contains(needle),
                "{needle} on the topic: {}",
                m.value
            );
        }
        assert!(m.value.contains("203.0.113.0") || m.value.contains("2001:db8:abcd::"));
    }
    Ok(())
}
