//! Changes without a restart: under load, a SIGHUP moves the standard logs' sampling from
//! 10 % to 50 % (records posted after it follow the new rate, each row says the rate it
//! was kept at, and every record is counted); a configuration that does not parse, or
//! does not validate, is refused with its reason and the one in effect stays; `/config`
//! shows what is in effect without a secret.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use arrow_array::{Array, Float64Array, StringArray};
use edgelog_tests::{
    ServerConfig, TOKEN, TestServer, http_get, http_post, http_request, parquet_files,
    read_parquet, spawn_edge, wait_until, within,
};

fn config(rate: u32) -> ServerConfig {
    ServerConfig::new()
        .sample("standard", rate)
        .standard("max_age", Duration::from_secs(2))
        .set(
            "collector.privacy",
            "hash_key",
            "reload-test-secret-0123456789",
        )
        .without_sink("realtime")
}

/// Posts `n` records of distribution `dist` with ids `{prefix}-{k}`, 1,000 a body.
fn post(url: &str, prefix: &str, dist: &str, n: usize) -> anyhow::Result<()> {
    for start in (0..n).step_by(1000) {
        let mut body = String::new();
        for k in start..(start + 1000).min(n) {
            body.push_str(&format!(
                "{{\"timestamp\":1764151200,\"DistributionId\":\"{dist}\",\"c-ip\":\"203.0.113.7\",\
                 \"cs-uri-stem\":\"/r/{k}\",\"sc-status\":200,\"sc-bytes\":{k},\"x-edge-request-id\":\"{prefix}-{k}\"}}\n"
            ));
        }
        let a = http_post(&format!("{url}/v1/records"), body.as_bytes())?;
        anyhow::ensure!(a.status == 200, "{}", a.body);
    }
    Ok(())
}

/// Every stored row's id and the rate it was kept at.
fn stored_rates(dir: &std::path::Path) -> anyhow::Result<HashMap<String, f64>> {
    let mut out = HashMap::new();
    for f in parquet_files(dir) {
        for b in read_parquet(&f)? {
            let ids = b
                .column_by_name("x_edge_request_id")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .context("ids")?;
            let rates = b
                .column_by_name("sample_rate")
                .and_then(|c| c.as_any().downcast_ref::<Float64Array>())
                .context("rates")?;
            for i in 0..b.num_rows() {
                out.insert(ids.value(i).to_owned(), rates.value(i));
            }
        }
    }
    Ok(out)
}

fn in_effect(url: &str) -> anyhow::Result<serde_json::Value> {
    let auth = format!("Bearer {TOKEN}");
    let (status, body) = http_request(
        "GET",
        &format!("{url}/config"),
        &[("authorization", &auth)],
        "",
    )?;
    anyhow::ensure!(status == 200, "{status} {body}");
    anyhow::ensure!(!body.contains(TOKEN), "a token shown: {body}");
    anyhow::ensure!(
        !body.contains("reload-test-secret"),
        "the privacy key shown: {body}"
    );
    Ok(serde_json::from_str(&body)?)
}

fn wait_log(c: &TestServer, needle: &str, count: usize) -> bool {
    wait_until(within(Duration::from_secs(15)), || {
        c.log_text().matches(needle).count() >= count
    })
}

fn kept(rates: &HashMap<String, f64>, prefix: &str) -> Vec<f64> {
    rates
        .iter()
        .filter(|(id, _)| id.starts_with(prefix))
        .map(|(_, r)| *r)
        .collect()
}

#[test]
fn a_sighup_under_load_changes_the_sampling_and_a_broken_config_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("c");
    let mut c = TestServer::collector(&data, &config(10))?;
    let url = c.url();
    let load = spawn_edge(
        &url,
        &[
            "--rate",
            "2000",
            "--duration",
            "20s",
            "--batch",
            "200",
            "--json",
        ],
    )?;

    post(&url, "before", "EBEFORE", 4000)?;
    let cfg = in_effect(&url)?;
    assert_eq!(cfg["sampling"]["default"]["standard"], 10.0, "{cfg}");
    assert_eq!(
        (cfg["generation"].as_u64(), cfg["tokens"].as_u64()),
        (Some(0), Some(1))
    );
    // Without a token, nothing is shown.
    let (status, _) = edgelog_tests::harness::http_status(&format!("{url}/config"))?;
    assert_eq!(status, 401);

    c.rewrite_config(&config(50))?;
    c.signal("HUP")?;
    assert!(
        wait_log(&c, "configuration reloaded", 1),
        "{}",
        c.log_text()
    );
    assert_eq!(in_effect(&url)?["sampling"]["default"]["standard"], 50.0);
    post(&url, "after", "EAFTER", 4000)?;

    // Not TOML, then a rate out of range: each refused with its reason, 50 % stays.
    std::fs::write(data.join("edgelog.toml"), "data_dir = [not toml")?;
    c.signal("HUP")?;
    assert!(
        wait_log(&c, "configuration refused on reload", 1),
        "{}",
        c.log_text()
    );
    c.rewrite_config(&config(50).sample("standard", 150))?;
    c.signal("HUP")?;
    assert!(
        wait_log(&c, "configuration refused on reload", 2),
        "{}",
        c.log_text()
    );
    let log = c.log_text();
    assert!(
        log.contains("rate must be from 0 to 100 percent, got 150"),
        "{log}"
    );
    assert!(c.running()?, "a broken config stopped the collector");
    let cfg = in_effect(&url)?;
    assert_eq!(cfg["sampling"]["default"]["standard"], 50.0, "{cfg}");
    assert_eq!(cfg["generation"], 1, "{cfg}");
    post(&url, "late", "ELATE", 4000)?;

    let out = load.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stdout).into_owned())?;
    let metrics = http_get(&format!("{url}/metrics"))?;
    let accepted: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("edgelog_records_accepted_total "))
        .and_then(|v| v.trim().parse().ok())
        .context("accepted total")?;
    assert!(c.terminate()?, "{}", c.log_text());

    let rates = stored_rates(&data.join("standard-logs"))?;
    let before = kept(&rates, "before-");
    let after = kept(&rates, "after-");
    let late = kept(&rates, "late-");
    assert!(
        before.iter().all(|r| *r == 10.0),
        "before the reload: {before:?}"
    );
    assert!(after.iter().chain(&late).all(|r| *r == 50.0), "after it");
    // 10 % and 50 % of 4,000 (the sample is a hash of the id: binomial, 6 sigma).
    assert!((280..=520).contains(&before.len()), "{}", before.len());
    assert!((1_800..=2_200).contains(&after.len()), "{}", after.len());
    assert!((1_800..=2_200).contains(&late.len()), "{}", late.len());
    // The load's rows were kept at one rate or the other, and nothing went uncounted.
    assert!(rates.values().all(|r| *r == 10.0 || *r == 50.0));
    let acked = report["acknowledged"]
        .as_f64()
        .context("the edge's report")?;
    assert!(acked > 10_000.0, "little load: {report}");
    assert_eq!(accepted, acked + 12_000.0, "every record counted");
    Ok(())
}

/// The alarm definitions' names and thresholds.
fn definitions(d: &TestServer) -> anyhow::Result<Vec<(String, f64)>> {
    let defs: Vec<serde_json::Value> =
        serde_json::from_str(&http_get(&d.dashboard_url("/api/alarms/definitions"))?)?;
    let mut out: Vec<(String, f64)> = defs
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap_or("").to_owned(),
                a["threshold"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[test]
fn a_dashboard_reloads_the_alarms_of_its_file_and_keeps_those_made_through_the_api()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("dashboard.toml");
    let alarm = |name: &str, threshold: f64| {
        format!(
            "[[dashboard.alarms]]\nname = \"{name}\"\ndistribution = \"*\"\nmetric = \"5xxErrorRate\"\n\
             comparison = \"GreaterThanThreshold\"\nthreshold = {threshold:?}\n"
        )
    };
    let write = |body: &str| {
        std::fs::write(
            &path,
            format!(
                "[dashboard]\nlisten = \"127.0.0.1:0\"\nallow_unauthenticated_writes = true\n{body}"
            ),
        )
    };
    write(&(alarm("a", 5.0) + &alarm("b", 5.0)))?;
    let path_arg = path.display().to_string();
    let d = TestServer::command(
        edgelog_tests::Kind::Dashboard,
        dir.path(),
        &["dashboard", "--config", &path_arg],
    )?;
    assert_eq!(definitions(&d)?, [("a".into(), 5.0), ("b".into(), 5.0)]);
    let made = serde_json::json!({"name": "by-api", "distribution": "*", "metric": "Requests",
        "comparison": "LessThanThreshold", "threshold": 1.0});
    let (status, body) = http_request(
        "PUT",
        &d.dashboard_url("/api/alarms/definitions/by-api"),
        &[],
        &made.to_string(),
    )?;
    assert_eq!(status, 201, "{body}");

    // `a` changed, `b` gone, `c` new; the alarm made through the API stays.
    write(&(alarm("a", 7.0) + &alarm("c", 5.0)))?;
    d.signal("HUP")?;
    assert!(
        wait_log(&d, "configuration reloaded", 1),
        "{}",
        d.log_text()
    );
    let want = [
        ("a".to_owned(), 7.0),
        ("by-api".to_owned(), 1.0),
        ("c".to_owned(), 5.0),
    ];
    assert!(
        wait_until(within(Duration::from_secs(5)), || definitions(&d)
            .is_ok_and(|x| x == want)),
        "{:?}",
        definitions(&d)
    );

    // An alarm that does not validate: the whole file is refused, nothing changes.
    write(&(alarm("a", 9.0) + "[[dashboard.alarms]]\nname = \"\"\n"))?;
    d.signal("HUP")?;
    assert!(
        wait_log(&d, "configuration refused on reload", 1),
        "{}",
        d.log_text()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(definitions(&d)?, want);
    d.stop()?;
    Ok(())
}

#[test]
fn a_sighup_replaces_the_ingest_tokens() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let c = TestServer::collector(dir.path(), &ServerConfig::new())?;
    let url = format!("{}/v1/records", c.url());
    let line = "{\"timestamp\":1764151200,\"DistributionId\":\"ETOKEN\",\"sc-status\":200}\n";
    let post_as = |token: &str| -> anyhow::Result<u16> {
        let auth = format!("Bearer {token}");
        Ok(http_request("POST", &url, &[("authorization", &auth)], line)?.0)
    };
    assert_eq!(post_as(TOKEN)?, 200);
    let new = "rotated-token-0123456789abcdef";
    c.rewrite_config(&ServerConfig::new().set("collector", "tokens", [new]))?;
    c.signal("HUP")?;
    assert!(
        wait_log(&c, "configuration reloaded", 1),
        "{}",
        c.log_text()
    );
    assert!(c.log_text().contains("tokens"), "{}", c.log_text());
    assert_eq!(post_as(TOKEN)?, 401, "the old token still writes");
    assert_eq!(post_as(new)?, 200);
    Ok(())
}
