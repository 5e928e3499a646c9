//! `edgelog ship` against a real nginx: field by field into the standard logs; rotation
//! (rename + reopen, copytruncate) and SIGKILLs under load, every line exactly once; the
//! collector away for a minute; CloudFront `.gz` files each delivered once across a
//! restart.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use arrow_array::{
    Array, Float64Array, Int32Array, Int64Array, StringArray, TimestampMillisecondArray,
};
use edgelog_tests::nginx::{Nginx, NginxClient, Ship};
use edgelog_tests::{
    ServerConfig, TestServer, http_get, parquet_files, read_parquet, stored_ids, wait_until, within,
};

/// A value on a `/metrics` page: the line that starts with `series` (name and labels).
fn metric(url: &str, series: &str) -> f64 {
    http_get(&format!("{url}/metrics"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

fn accepted(url: &str) -> u64 {
    metric(url, "edgelog_records_accepted_total") as u64
}

/// Waits until the collector has accepted `n` records; fails with ship's log otherwise.
fn wait_accepted(url: &str, n: u64, ship: &Ship, limit: Duration) -> anyhow::Result<()> {
    if !wait_until(within(limit), || accepted(url) >= n) {
        anyhow::bail!(
            "collector accepted {} of {n} records within {limit:?}; ship's log:\n{}",
            accepted(url),
            tail(
                &ship
                    .log_text()
                    .lines()
                    .filter(|l| !l.contains(" progress "))
                    .collect::<Vec<_>>()
                    .join("\n"),
                60
            )
        );
    }
    Ok(())
}

fn tail(s: &str, n: usize) -> String {
    let l: Vec<&str> = s.lines().collect();
    l[l.len().saturating_sub(n)..].join("\n")
}

fn nginx_input(nginx: &Nginx) -> String {
    format!(
        "[[inputs]]\nname = \"nginx\"\npaths = [{:?}]\nformat = \"nginx_json\"\n\
         distribution = \"E2NGINX\"\n",
        format!("{}/access.log*", nginx.dir.display())
    )
}

fn collector(dir: &Path) -> anyhow::Result<TestServer> {
    TestServer::collector(dir, &ServerConfig::new().without_sink("realtime"))
}

/// Every stored row as column name → value text, keyed by request id.
fn stored_rows(dir: &Path) -> anyhow::Result<HashMap<String, HashMap<String, String>>> {
    let mut out = HashMap::new();
    for f in parquet_files(dir) {
        // The distribution is in the partition path only.
        let dist = f
            .components()
            .filter_map(|c| {
                c.as_os_str()
                    .to_str()?
                    .strip_prefix("DistributionId=")
                    .map(str::to_owned)
            })
            .next()
            .context("a DistributionId= partition")?;
        for b in read_parquet(&f)? {
            let schema = b.schema();
            for row in 0..b.num_rows() {
                let mut m = HashMap::new();
                m.insert("distribution_id".to_owned(), dist.clone());
                for (i, field) in schema.fields().iter().enumerate() {
                    let c = b.column(i);
                    if c.is_null(row) {
                        continue;
                    }
                    let any = c.as_any();
                    let v = if let Some(a) = any.downcast_ref::<StringArray>() {
                        a.value(row).to_owned()
                    } else if let Some(a) = any.downcast_ref::<Int64Array>() {
                        a.value(row).to_string()
                    } else if let Some(a) = any.downcast_ref::<Int32Array>() {
                        a.value(row).to_string()
                    } else if let Some(a) = any.downcast_ref::<TimestampMillisecondArray>() {
                        a.value(row).to_string()
                    } else if let Some(a) = any.downcast_ref::<Float64Array>() {
                        a.value(row).to_string()
                    } else {
                        continue;
                    };
                    m.insert(field.name().clone(), v);
                }
                let id = m
                    .get("x_edge_request_id")
                    .cloned()
                    .context("a request id")?;
                out.insert(id, m);
            }
        }
    }
    Ok(out)
}

#[test]
fn nginx_requests_arrive_in_the_standard_logs_field_by_field() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut collector = collector(&dir.path().join("c"))?;
    let nginx = Nginx::start(&dir.path().join("nginx"))?;
    let mut ship = Ship::start(
        &dir.path().join("ship"),
        &collector.url(),
        &nginx_input(&nginx),
    )?;

    // (method, path, status, cache status)
    let cases = [
        ("GET", "/cached/a.png?w=1&h=2", 200, Some("Miss")),
        ("GET", "/cached/a.png?w=1&h=2", 200, Some("Hit")),
        ("GET", "/missing", 404, None),
        ("GET", "/broken?retry=1", 503, None),
        ("HEAD", "/", 200, None),
        ("POST", "/form", 200, None),
        ("GET", "/caf%C3%A9/menu", 200, None),
    ];
    for (n, (method, path, status, _)) in cases.iter().enumerate() {
        let ua = format!("edgelog-test/1.0 (case {n}; like Gecko)");
        let referer = format!("https://ref.example/page/{n}");
        let got = nginx.request(
            method,
            path,
            &[
                ("user-agent", &ua),
                ("referer", &referer),
                ("cookie", "session=abc"),
                ("x-forwarded-for", "198.51.100.7"),
            ],
        )?;
        assert_eq!(got, *status, "{method} {path}");
    }
    wait_accepted(
        &collector.url(),
        cases.len() as u64,
        &ship,
        Duration::from_secs(30),
    )?;
    ship.terminate()?;
    assert!(collector.terminate()?, "{}", collector.log_text());

    let logged = nginx.logged_lines()?;
    assert_eq!(logged.len(), cases.len());
    let rows = stored_rows(&dir.path().join("c/standard-logs"))?;
    assert_eq!(rows.len(), cases.len(), "{rows:?}");
    for (n, (method, path, status, cache)) in cases.iter().enumerate() {
        let ua = format!("edgelog-test/1.0%20(case%20{n};%20like%20Gecko)");
        let (id, row) = rows
            .iter()
            .find(|(_, r)| r.get("cs_user_agent") == Some(&ua))
            .with_context(|| format!("case {n} ({method} {path}) not stored: {rows:?}"))?;
        let line = logged
            .iter()
            .find(|l| l["request_id"] == id.as_str())
            .with_context(|| format!("request id {id} is not nginx's"))?;
        let get = |k: &str| row.get(k).map(String::as_str);
        let (stem, query) = path
            .split_once('?')
            .map_or((*path, None), |(s, q)| (s, Some(q)));
        assert_eq!(get("distribution_id"), Some("E2NGINX"));
        assert_eq!(get("cs_method"), Some(*method));
        assert_eq!(get("cs_uri_stem"), Some(stem));
        assert_eq!(get("cs_uri_query"), query);
        assert_eq!(get("sc_status"), Some(status.to_string().as_str()));
        assert_eq!(get("x_edge_result_type"), *cache, "case {n}");
        assert_eq!(
            get("cs_referer"),
            Some(format!("https://ref.example/page/{n}").as_str())
        );
        assert_eq!(get("cs_cookie"), Some("session=abc"));
        assert_eq!(get("x_forwarded_for"), Some("198.51.100.7"));
        assert_eq!(get("c_ip"), Some("127.0.0.1"));
        assert_eq!(get("cs_host"), Some("cdn.example.com"));
        assert_eq!(get("cs_protocol"), Some("http"));
        assert_eq!(get("cs_protocol_version"), Some("HTTP/1.1"));
        // Numbers as nginx logged them.
        let num = |k: &str| line[k].as_str().unwrap_or("").to_owned();
        assert_eq!(get("sc_bytes"), Some(num("bytes_sent").as_str()));
        assert_eq!(get("cs_bytes"), Some(num("request_length").as_str()));
        assert_eq!(get("c_port"), Some(num("remote_port").as_str()));
        let taken: f64 = num("request_time").parse()?;
        let stored: f64 = get("time_taken").unwrap_or("x").parse()?;
        assert!((taken - stored).abs() < 1e-9, "{taken} vs {stored}");
        let ms = (num("time").parse::<f64>()? * 1000.0).round() as i64;
        let ts = get("timestamp").unwrap_or("");
        assert_eq!(ts, ms.to_string(), "timestamp");
        if cache == &Some("Miss") {
            assert!(
                get("time_to_first_byte").is_some(),
                "a miss has upstream time"
            );
        }
        assert!(get("x_edge_location").is_some_and(|l| !l.is_empty()));
    }
    Ok(())
}

/// Load while the log is rotated both ways and ship is SIGKILLed twice: every line nginx
/// wrote is stored exactly once.
#[test]
fn rotation_and_crashes_under_load_lose_and_duplicate_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut collector = collector(&dir.path().join("c"))?;
    let nginx = Nginx::start(&dir.path().join("nginx"))?;
    let mut ship = Ship::start(
        &dir.path().join("ship"),
        &collector.url(),
        &nginx_input(&nginx),
    )?;
    let log = nginx.access_log();
    let port = nginx.port;
    let load = std::thread::spawn(move || -> anyhow::Result<u64> {
        let n = NginxClient { port };
        let start = Instant::now();
        let mut sent = 0;
        while start.elapsed() < Duration::from_secs(8) {
            n.request(
                "GET",
                &format!("/obj/{sent}?v=1"),
                &[("user-agent", "load/1")],
            )?;
            sent += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(sent)
    });
    let at = |s: f64| std::thread::sleep(Duration::from_secs_f64(s));
    at(1.0);
    // logrotate's default: rename, then nginx -s reopen.
    fs::rename(&log, nginx.dir.join("access.log.1"))?;
    nginx.reopen()?;
    at(1.0);
    ship.kill()?;
    at(0.5);
    ship.restart()?;
    at(1.0);
    // copytruncate: copy, then truncate in place (nginx appends at the new end).
    fs::copy(&log, nginx.dir.join("access.log.2"))?;
    fs::OpenOptions::new().write(true).open(&log)?.set_len(0)?;
    // Crash after crash: some land with a batch in flight.
    for _ in 0..6 {
        at(0.3);
        ship.kill()?;
        ship.restart()?;
    }
    let sent = load
        .join()
        .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    ship.check_running()?;

    let logged = nginx.logged_lines()?;
    let ids: Vec<String> = logged
        .iter()
        .map(|l| l["request_id"].as_str().unwrap_or("").to_owned())
        .collect();
    // copytruncate's own race may lose a line or two nginx wrote between copy and truncate.
    assert!(
        ids.len() as u64 + 5 >= sent && ids.len() as u64 <= sent,
        "{} lines for {sent} requests",
        ids.len()
    );
    let url = collector.url();
    let all_in = wait_until(within(Duration::from_secs(60)), || {
        accepted(&url) >= ids.len() as u64
    });
    // Give a stray duplicate the chance to show.
    std::thread::sleep(Duration::from_secs(1));
    ship.terminate()?;
    assert!(collector.terminate()?, "{}", collector.log_text());
    let stored = stored_ids(&dir.path().join("c/standard-logs"))?;
    let twice: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored twice: {twice:?}");
    let missing: Vec<_> = ids.iter().filter(|id| !stored.contains_key(*id)).collect();
    if !missing.is_empty() || !all_in {
        // Where the lost lines are, for the failure message.
        let mut places = Vec::new();
        for e in fs::read_dir(&nginx.dir)? {
            let p = e?.path();
            if p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("access.log"))
            {
                let text = fs::read_to_string(&p)?;
                let mut at = 0;
                for line in text.split_inclusive('\n') {
                    if missing.iter().any(|id| line.contains(id.as_str())) {
                        places.push(format!("{}@{at}", p.display()));
                    }
                    at += line.len();
                }
                places.push(format!("{} is {} bytes", p.display(), text.len()));
            }
        }
        let state = dir.path().join("ship/state");
        let cp = fs::read_to_string(state.join("checkpoints.json"))?
            + &fs::read_to_string(state.join("checkpoints.journal")).unwrap_or_default();
        anyhow::bail!(
            "{} lines not stored, at {places:?}\ncheckpoints: {cp}\nship's log:\n{}",
            missing.len(),
            ship.log_text()
                .lines()
                .filter(|l| !l.contains(" progress "))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert_eq!(stored.len(), ids.len());
    let text = ship.log_text();
    assert!(text.contains("following a file"), "{text}");
    Ok(())
}

/// The crash that matters: the collector stored a batch, ship died before it saw the
/// answer. Its checkpoint then says "pending [start, end)"; the restart resends exactly
/// that range with the same key and the collector recognizes it.
#[test]
fn a_batch_resent_after_a_lost_answer_is_stored_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut collector = collector(&dir.path().join("c"))?;
    let logs = dir.path().join("logs");
    fs::create_dir_all(&logs)?;
    // Small enough to be one batch: [0, len).
    let mut text = String::new();
    for k in 0..40 {
        text.push_str(&format!(
            "{{\"time\":\"1764151200.{k:03}\",\"status\":\"200\",\"request_uri\":\"/r/{k}\",\"request_id\":\"resend-{k}\"}}\n"
        ));
    }
    fs::write(logs.join("access.log"), &text)?;
    // Its own metrics endpoint too (a top-level key, before the inputs).
    let metrics = format!("127.0.0.1:{}", edgelog_tests::free_port());
    let input = format!(
        "metrics_listen = {metrics:?}\n[[inputs]]\nname = \"nginx\"\npaths = [{:?}]\nformat = \"nginx_json\"\ndistribution = \"E2NGINX\"\n",
        format!("{}/access.log", logs.display())
    );
    let mut ship = Ship::start(&dir.path().join("ship"), &collector.url(), &input)?;
    wait_accepted(&collector.url(), 40, &ship, Duration::from_secs(30))?;
    let metrics = format!("http://{metrics}");
    assert_eq!(http_get(&format!("{metrics}/healthz"))?, "ok\n");
    assert!(http_get(&format!("{metrics}/metrics"))?.contains("edgelog_ship_"));
    // Its refusals are JSON with a reason, like the collector's.
    for (method, path, status) in [("GET", "/nope", 404), ("POST", "/metrics", 405)] {
        let (got, body) =
            edgelog_tests::http_request(method, &format!("{metrics}{path}"), &[], "")?;
        assert_eq!(got, status, "{method} {path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).with_context(|| body.clone())?;
        assert!(v["error"].as_str().is_some_and(|e| e.contains(path)), "{v}");
    }
    ship.terminate()?;
    // Rewind the checkpoint to "sent, answer never seen".
    let cp_path = dir.path().join("ship/state/checkpoints.json");
    let mut cp: serde_json::Value = serde_json::from_slice(&fs::read(&cp_path)?)?;
    let files = cp["files"].as_object_mut().context("files")?;
    assert_eq!(files.len(), 1);
    for f in files.values_mut() {
        assert_eq!(f["offset"], text.len());
        f["offset"] = 0.into();
        f["pending"] = serde_json::json!([0, text.len()]);
    }
    fs::write(&cp_path, serde_json::to_vec(&cp)?)?;
    ship.restart()?;
    let duplicates = |url: &str| metric(url, "edgelog_ingest_duplicate_records_total");
    let url = collector.url();
    assert!(
        wait_until(within(Duration::from_secs(20)), || duplicates(&url) >= 40.0),
        "no duplicate seen by the collector:\n{}",
        ship.log_text()
    );
    ship.terminate()?;
    assert_eq!(accepted(&collector.url()), 40);
    assert!(collector.terminate()?, "{}", collector.log_text());
    let stored = stored_ids(&dir.path().join("c/standard-logs"))?;
    assert_eq!(stored.len(), 40);
    assert!(stored.values().all(|n| *n == 1), "{stored:?}");
    Ok(())
}

#[test]
fn the_collector_away_for_a_minute_delays_but_loses_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut collector = collector(&dir.path().join("c"))?;
    let nginx = Nginx::start(&dir.path().join("nginx"))?;
    let metrics = format!("127.0.0.1:{}", edgelog_tests::free_port());
    let mut ship = Ship::start(
        &dir.path().join("ship"),
        &collector.url(),
        &format!("metrics_listen = {metrics:?}\n{}", nginx_input(&nginx)),
    )?;
    for k in 0..50 {
        nginx.request("GET", &format!("/before/{k}"), &[])?;
    }
    wait_accepted(&collector.url(), 50, &ship, Duration::from_secs(30))?;
    assert!(collector.terminate()?, "{}", collector.log_text());
    // A minute of traffic with nobody to take it, rotated once on the way.
    let start = Instant::now();
    let mut k = 0;
    while start.elapsed() < Duration::from_secs(60) {
        nginx.request("GET", &format!("/during/{k}"), &[])?;
        k += 1;
        if k == 100 {
            fs::rename(nginx.access_log(), nginx.dir.join("access.log.1"))?;
            nginx.reopen()?;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ship.check_running()?;
    collector.restart()?;
    let total = 50 + k;
    // `accepted` restarts from 0 with the collector: the records of the outage.
    wait_accepted(&collector.url(), k, &ship, Duration::from_secs(60))?;
    // Every line read once, however often its batch was tried during the outage.
    let read = || {
        metric(
            &format!("http://{metrics}"),
            "edgelog_ship_lines_read_total{input=\"nginx\"}",
        ) as u64
    };
    wait_until(within(Duration::from_secs(10)), || read() >= total);
    assert_eq!(read(), total);
    ship.terminate()?;
    assert!(collector.terminate()?, "{}", collector.log_text());
    let stored = stored_ids(&dir.path().join("c/standard-logs"))?;
    assert_eq!(stored.len() as u64, total);
    assert!(stored.values().all(|n| *n == 1));
    Ok(())
}

fn cloudfront_file(path: &Path, records: &[edgelog_record::Record]) -> anyhow::Result<()> {
    let mut text = String::new();
    edgelog_record::w3c::write_header(&mut text);
    for r in records {
        edgelog_record::w3c::write_line(r, &mut text);
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes())?;
    fs::write(path, gz.finish()?)?;
    Ok(())
}

fn records(dist: &str, from: u64, n: u64) -> Vec<edgelog_record::Record> {
    (from..from + n)
        .map(|i| edgelog_record::Record {
            timestamp_ms: 1_764_151_200_000 + i as i64 * 1000,
            distribution_id: dist.into(),
            x_edge_request_id: Some(format!("cf-{dist}-{i}")),
            sc_status: Some(200),
            cs_method: Some("GET".into()),
            cs_uri_stem: Some(format!("/o/{i}")),
            x_edge_location: Some("FRA56-P1".into()),
            ..Default::default()
        })
        .collect()
}

#[test]
fn cloudfront_files_are_each_delivered_once_across_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut collector = collector(&dir.path().join("c"))?;
    let logs = dir.path().join("cloudfront");
    fs::create_dir_all(&logs)?;
    // CloudFront's documented example file (6 requests), a file with the name in
    // docs/shipping.md, and a second distribution.
    let example = fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../record/testdata/EMLARXS9EXAMPLE.2019-12-04-21.RT4KCN4SGK9.log"),
    )?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&example)?;
    fs::write(
        logs.join("EMLARXS9EXAMPLE.2019-12-04-21.RT4KCN4SGK9.gz"),
        gz.finish()?,
    )?;
    cloudfront_file(
        &logs.join("E2EXAMPLE.2026-11-26-10.abcdef12.gz"),
        &records("E2EXAMPLE", 0, 3000),
    )?;
    cloudfront_file(
        &logs.join("E3OTHER.2026-11-26-10.0badc0de.gz"),
        &records("E3OTHER", 0, 500),
    )?;
    // A corrupt file and one whose name carries no distribution: set aside, the others go on.
    fs::write(
        logs.join("E2EXAMPLE.2026-11-26-09.corrupt1.gz"),
        b"\x1f\x8b not really gzip",
    )?;
    cloudfront_file(&logs.join("export.gz"), &records("ENONAME", 0, 10))?;
    let input = format!(
        "[[inputs]]\nname = \"cloudfront\"\npaths = [{:?}]\nformat = \"cloudfront\"\n",
        format!("{}/*.gz", logs.display())
    );
    let mut ship = Ship::start(&dir.path().join("ship"), &collector.url(), &input)?;
    wait_accepted(&collector.url(), 3506, &ship, Duration::from_secs(30))?;
    // A restart must not send them again; a file arriving later (written in two steps,
    // as an upload would) is sent once, whole.
    ship.kill()?;
    ship.restart()?;
    let late = logs.join("E2EXAMPLE.2026-11-26-11.feedbeef.gz");
    cloudfront_file(
        &dir.path().join("late.gz"),
        &records("E2EXAMPLE", 3000, 1000),
    )?;
    let bytes = fs::read(dir.path().join("late.gz"))?;
    fs::write(&late, &bytes[..bytes.len() / 2])?;
    std::thread::sleep(Duration::from_millis(300));
    fs::OpenOptions::new()
        .append(true)
        .open(&late)?
        .write_all(&bytes[bytes.len() / 2..])?;
    wait_accepted(&collector.url(), 4506, &ship, Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_secs(1));
    ship.kill()?;
    ship.restart()?;
    std::thread::sleep(Duration::from_secs(1));
    ship.terminate()?;
    assert_eq!(accepted(&collector.url()), 4506, "{}", ship.log_text());
    assert!(collector.terminate()?, "{}", collector.log_text());
    let stored = stored_ids(&dir.path().join("c/standard-logs"))?;
    assert_eq!(stored.len(), 4506);
    assert!(stored.values().all(|n| *n == 1));
    assert!(stored.contains_key("cf-E3OTHER-499") && stored.contains_key("cf-E2EXAMPLE-3999"));
    let example_ids: Vec<&str> = std::str::from_utf8(&example)?
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split('\t').nth(14))
        .collect();
    assert_eq!(example_ids.len(), 6);
    assert!(
        example_ids.iter().all(|id| stored.contains_key(*id)),
        "{example_ids:?}"
    );
    let log = ship.log_text();
    assert!(
        log.contains("corrupt1.gz") && log.contains("set aside"),
        "{log}"
    );
    assert!(
        log.contains("export.gz") && log.contains("no distribution"),
        "{log}"
    );
    Ok(())
}

/// A CloudFront `.gz` decompressing to 96 MiB (lines of 2 KiB) is sent whole, each line
/// once, while ship holds about a batch of it: its peak RSS stays far below the content.
#[test]
fn a_large_cloudfront_gz_is_streamed_not_held() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut collector = collector(&dir.path().join("c"))?;
    let logs = dir.path().join("cloudfront");
    fs::create_dir_all(&logs)?;
    const LINES: u64 = 48_000;
    let mut rs = records("E2BIG", 0, LINES);
    for r in &mut rs {
        r.cs_uri_stem = r
            .cs_uri_stem
            .take()
            .map(|u| format!("{u}/{}", "p".repeat(2000)));
    }
    let path = logs.join("E2BIG.2026-11-26-10.0123abcd.gz");
    cloudfront_file(&path, &rs)?;
    drop(rs);
    let input = format!(
        "[[inputs]]\nname = \"cloudfront\"\npaths = [{:?}]\nformat = \"cloudfront\"\n",
        format!("{}/*.gz", logs.display())
    );
    let ship = Ship::start(&dir.path().join("ship"), &collector.url(), &input)?;
    wait_accepted(&collector.url(), LINES, &ship, Duration::from_secs(120))?;
    let peak_mib = edgelog_tests::vm_hwm_kib(ship.pid()?)? / 1024;
    assert!(
        peak_mib < 64,
        "ship peaked at {peak_mib} MiB for a 96 MiB file"
    );
    assert_eq!(accepted(&collector.url()), LINES);
    assert!(collector.terminate()?, "{}", collector.log_text());
    let stored = stored_ids(&dir.path().join("c/standard-logs"))?;
    assert_eq!(stored.len() as u64, LINES);
    assert!(stored.values().all(|n| *n == 1));
    Ok(())
}

/// Ship's state directory full (a real tmpfs, filled): no batch goes without its range
/// saved first, nothing is lost, and shipping resumes by itself once there is room.
#[test]
fn a_full_state_disk_holds_shipping_back_and_loses_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut collector = collector(&dir.path().join("c"))?;
    let logs = dir.path().join("logs");
    fs::create_dir_all(&logs)?;
    let mut text = String::new();
    for k in 0..500 {
        text.push_str(&format!(
            "{{\"time\":\"1764151200.{k:03}\",\"status\":\"200\",\"request_uri\":\"/f/{k}\",\"request_id\":\"full-{k}\"}}\n"
        ));
    }
    fs::write(logs.join("access.log"), &text)?;
    let ship_dir = dir.path().join("ship");
    let fs_ = edgelog_tests::process::Tmpfs::mount(&ship_dir, "1m")?;
    // Everything but a few bytes taken.
    let filler = ship_dir.join("filler");
    let _ = fs::write(&filler, vec![0u8; 1 << 20]);
    let input = format!(
        "[[inputs]]\nname = \"nginx\"\npaths = [{:?}]\nformat = \"nginx_json\"\ndistribution = \"E2NGINX\"\n",
        format!("{}/access.log", logs.display())
    );
    // Its config and log live elsewhere: only the state is on the full disk.
    let mut ship = Ship::start_with_state(
        &dir.path().join("ship-run"),
        &ship_dir.join("state"),
        &collector.url(),
        &input,
    );
    if ship.is_err() {
        // The state directory could not even be made: free a little and start again.
        fs::write(&filler, vec![0u8; (1 << 20) - 64 * 1024])?;
        ship = Ship::start_with_state(
            &dir.path().join("ship-run"),
            &ship_dir.join("state"),
            &collector.url(),
            &input,
        );
    }
    let mut ship = ship?;
    fs::write(&filler, vec![0u8; 1 << 20]).ok();
    std::thread::sleep(Duration::from_secs(2));
    let before = accepted(&collector.url());
    assert_eq!(
        before,
        0,
        "sent without its range saved:\n{}",
        ship.log_text()
    );
    assert!(
        ship.log_text().contains("cannot save checkpoints"),
        "{}",
        ship.log_text()
    );
    // Room again.
    fs::remove_file(&filler)?;
    wait_accepted(&collector.url(), 500, &ship, Duration::from_secs(30))?;
    ship.terminate()?;
    assert!(collector.terminate()?, "{}", collector.log_text());
    let stored = stored_ids(&dir.path().join("c/standard-logs"))?;
    assert_eq!(stored.len(), 500, "accepted {before} while full");
    assert!(stored.values().all(|n| *n == 1));
    drop(fs_);
    Ok(())
}
