//! Rates as CloudFront computes them, checked against DuckDB over the standard logs of the
//! same records: per minute, CacheHitRate is hits over cacheable requests and null where
//! nothing was cacheable; over an alarm's 5-minute periods, CacheHitRate is the period's
//! hits over its cacheable requests and TotalErrorRate its errors over its requests (not
//! a mean of the minutes' rates).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use anyhow::Context;
use edgelog_tests::servers::python_json;
use edgelog_tests::{TOKEN, TestServer, http_get, http_post, run_edge, wait_until, within};

const PERIOD_MS: i64 = 5 * 60_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn put(url: &str, body: &str) -> anyhow::Result<u16> {
    let rest = url.strip_prefix("http://").context("http only")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = std::net::TcpStream::connect(host)?;
    write!(
        s,
        "PUT /{path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    raw.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status")
}

/// Counts per (distribution, minute) from DuckDB.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    requests: u64,
    errors: u64,
    hits: u64,
    cacheable: u64,
}

fn percent(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| n as f64 * 100.0 / d as f64)
}

fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => (a - b).abs() < 1e-9,
        _ => false,
    }
}

#[test]
fn cache_hit_and_error_rates_per_minute_and_period_equal_duckdb() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("demo");
    let demo = TestServer::demo(
        &data,
        &["--no-traffic", "--token", TOKEN],
        &[(
            "EDGELOG_DASHBOARD__ALLOW_UNAUTHENTICATED_WRITES",
            "true".to_owned(),
        )],
    )?;
    // Two alarms over 5-minute periods, on every distribution.
    for (name, metric) in [
        ("cache-5m", "CacheHitRate"),
        ("errors-5m", "TotalErrorRate"),
    ] {
        let body = format!(
            r#"{{"name":"{name}","distribution":"*","metric":"{metric}","comparison":"LessThanThreshold","threshold":50,"period_minutes":5,"evaluation_periods":2}}"#
        );
        let status = put(
            &demo.dashboard_url(&format!("/api/alarms/definitions/{name}")),
            &body,
        )?;
        anyhow::ensure!(status == 201, "PUT {name}: {status}");
    }
    // Realistic traffic over the last 12 minutes, errors in the mix...
    run_edge(
        &demo.url(),
        &[
            "--total",
            "20000",
            "--rate",
            "0",
            "--seed",
            "9",
            "--backfill-hours",
            "0.2",
            "--error-4xx",
            "5",
            "--error-5xx",
            "5",
        ],
    )?;
    // ...and a distribution whose requests were never cacheable (all origin errors).
    let minute = (now_ms() - 7 * 60_000) as f64 / 1000.0;
    let body: String = (0..20)
        .map(|i| {
            format!(
                "{{\"timestamp\":{},\"DistributionId\":\"ENOCACHE\",\"sc-status\":502,\"cs-method\":\"GET\",\"x-edge-result-type\":\"Error\"}}\n",
                minute + f64::from(i)
            )
        })
        .collect();
    let answer = http_post(&format!("{}/v1/records", demo.url()), body.as_bytes())?;
    anyhow::ensure!(answer.status == 200, "{}", answer.body);

    // Published (every 2 s), then evaluated (every 5 s); read the alarms well inside a
    // 5-minute period, so that the last evaluation judged the same periods. The demo
    // shows no evaluation time to poll for: 12 s covers a publication and two
    // evaluations.
    std::thread::sleep(Duration::from_secs(12));
    wait_until(within(Duration::from_millis(PERIOD_MS as u64)), || {
        (15_000..PERIOD_MS - 5_000).contains(&now_ms().rem_euclid(PERIOD_MS))
    });
    let read_at = now_ms();
    let states: Vec<serde_json::Value> = serde_json::from_str::<Vec<serde_json::Value>>(
        &http_get(&demo.dashboard_url("/api/alarms"))?,
    )?
    .into_iter()
    .filter(|s| s["alarm"] == "cache-5m" || s["alarm"] == "errors-5m")
    .collect();
    let ids: Vec<String> =
        serde_json::from_str(&http_get(&demo.dashboard_url("/api/distributions"))?)?;
    anyhow::ensure!(ids.len() == 4, "distributions: {ids:?}");
    let mut series = BTreeMap::new();
    for id in &ids {
        let points: Vec<serde_json::Value> = serde_json::from_str(&http_get(
            &demo.dashboard_url(&format!("/api/distributions/{id}/series")),
        )?)?;
        for p in points {
            series.insert((id.clone(), p["minute_ms"].as_i64().unwrap_or(0)), p);
        }
    }
    demo.stop()?;

    let glob = data
        .join("standard-logs/**/*.parquet")
        .display()
        .to_string();
    let script = format!(
        r#"import duckdb, json
duckdb.sql("SET enable_progress_bar = false")
rows = duckdb.sql("""
SELECT DistributionId, epoch_ms(timestamp) // 60000 * 60000 AS minute_ms, count(*),
  count(*) FILTER (WHERE sc_status BETWEEN 400 AND 599),
  count(*) FILTER (WHERE x_edge_result_type IN ('Hit', 'RefreshHit')),
  count(*) FILTER (WHERE x_edge_result_type IN ('Hit', 'RefreshHit', 'Miss'))
FROM read_parquet('{glob}', hive_partitioning = true) GROUP BY ALL ORDER BY ALL
""").fetchall()
print(json.dumps(rows))"#
    );
    let rows: Vec<(String, i64, u64, u64, u64, u64)> =
        serde_json::from_value(python_json(&script)?)?;
    let minutes: BTreeMap<(String, i64), Counts> = rows
        .into_iter()
        .map(|(d, m, requests, errors, hits, cacheable)| {
            (
                (d, m),
                Counts {
                    requests,
                    errors,
                    hits,
                    cacheable,
                },
            )
        })
        .collect();
    anyhow::ensure!(
        minutes.len() == series.len(),
        "different (distribution, minute) sets"
    );

    // Per minute.
    let mut nulls = 0;
    for (key, c) in &minutes {
        let p = series
            .get(key)
            .with_context(|| format!("dashboard lacks {key:?}"))?;
        let want = percent(c.hits, c.cacheable);
        let got = p["cache_hit_rate"].as_f64();
        assert!(
            close(got, want),
            "cache_hit_rate of {key:?}: {got:?}, DuckDB {want:?}"
        );
        assert!(
            close(
                p["total_error_rate"].as_f64(),
                percent(c.errors, c.requests)
            ),
            "total_error_rate of {key:?}"
        );
        nulls += usize::from(want.is_none());
    }
    assert!(nulls >= 1, "no minute without cacheable requests");

    // Per 5-minute period, as the alarms judged them.
    let current = read_at - read_at.rem_euclid(PERIOD_MS);
    let mut checked = 0;
    for s in &states {
        let d = s["distribution"].as_str().unwrap_or("").to_owned();
        let got: Vec<Option<f64>> = s["datapoints"]
            .as_array()
            .context("datapoints")?
            .iter()
            .map(serde_json::Value::as_f64)
            .collect();
        let want: Vec<Option<f64>> = (1..=2)
            .rev()
            .map(|k| {
                let start = current - k * PERIOD_MS;
                let mut sum = Counts::default();
                for (_, c) in minutes.range((d.clone(), start)..(d.clone(), start + PERIOD_MS)) {
                    sum.requests += c.requests;
                    sum.errors += c.errors;
                    sum.hits += c.hits;
                    sum.cacheable += c.cacheable;
                }
                if sum.requests == 0 {
                    return None;
                }
                if s["alarm"] == "cache-5m" {
                    percent(sum.hits, sum.cacheable)
                } else {
                    percent(sum.errors, sum.requests)
                }
            })
            .collect();
        assert_eq!(got.len(), 2, "{s}");
        for (g, w) in got.iter().zip(&want) {
            assert!(
                close(*g, *w),
                "{} on {d}: {got:?}, DuckDB {want:?}",
                s["alarm"]
            );
        }
        checked += got.iter().filter(|g| g.is_some()).count();
    }
    assert_eq!(states.len(), 8, "2 alarms × 4 distributions: {states:?}");
    assert!(checked >= 8, "too few datapoints compared: {states:?}");
    // The distribution that never had anything cacheable: no CacheHitRate, so its
    // "CacheHitRate < 50" alarm is not in ALARM.
    let nocache = states
        .iter()
        .find(|s| s["alarm"] == "cache-5m" && s["distribution"] == "ENOCACHE")
        .context("ENOCACHE's cache alarm")?;
    assert_ne!(nocache["state"], "ALARM", "{nocache}");
    Ok(())
}
