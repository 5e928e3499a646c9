//! The dashboard's per-minute metrics equal what DuckDB computes from the standard logs of
//! the same records (sampled at 100 %), minute by minute, distribution by distribution.

use std::time::Duration;

use edgelog_tests::servers::python_json;
use edgelog_tests::{TOKEN, TestServer, http_get as get, run_edge, wait_until, within};

/// (distribution, point) of every series point on the dashboard.
type Points = Vec<(String, serde_json::Value)>;

#[test]
fn dashboard_minutes_equal_duckdb_over_the_standard_logs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("demo");
    let demo = TestServer::demo(&data, &["--no-traffic", "--token", TOKEN], &[])?;
    let url = demo.url();
    // Errors in the mix, times spread over the last 12 minutes.
    run_edge(
        &url,
        &[
            "--total",
            "30000",
            "--rate",
            "0",
            "--seed",
            "5",
            "--backfill-hours",
            "0.2",
            "--error-4xx",
            "4",
            "--error-5xx",
            "3",
        ],
    )?;
    // The demo publishes minutes every 2 s: read the dashboard once it counts all 30,000
    // (30 s at most; what differs then is told below).
    let read = || -> anyhow::Result<(Vec<String>, Points)> {
        let ids: Vec<String> =
            serde_json::from_str(&get(&demo.dashboard_url("/api/distributions"))?)?;
        let mut dashboard = Vec::new();
        for id in &ids {
            let points: Vec<serde_json::Value> = serde_json::from_str(&get(
                &demo.dashboard_url(&format!("/api/distributions/{id}/series"))
            )?)?;
            for p in points {
                dashboard.push((id.clone(), p));
            }
        }
        Ok((ids, dashboard))
    };
    wait_until(within(Duration::from_secs(30)), || {
        read().is_ok_and(|(_, d)| {
            d.iter()
                .filter_map(|(_, p)| p["requests"].as_i64())
                .sum::<i64>()
                == 30_000
        })
    });
    let (ids, dashboard) = read()?;
    anyhow::ensure!(ids.len() == 3, "distributions: {ids:?}");
    demo.stop()?;

    let glob = data
        .join("standard-logs/**/*.parquet")
        .display()
        .to_string();
    let script = format!(
        r#"import duckdb, json
duckdb.sql("SET enable_progress_bar = false")
rows = duckdb.sql("""
SELECT DistributionId, epoch_ms(timestamp) // 60000 * 60000 AS minute_ms, count(*) AS requests,
  sum(CASE WHEN cs_method IN ('GET','HEAD','OPTIONS') THEN coalesce(sc_bytes, 0) ELSE 0 END) AS bytes_downloaded,
  sum(CASE WHEN cs_method IN ('POST','PUT') THEN coalesce(cs_bytes, 0) ELSE 0 END) AS bytes_uploaded,
  100.0 * count(*) FILTER (WHERE sc_status BETWEEN 400 AND 499) / count(*) AS error_rate_4xx,
  100.0 * count(*) FILTER (WHERE sc_status BETWEEN 500 AND 599) / count(*) AS error_rate_5xx,
  100.0 * count(*) FILTER (WHERE sc_status BETWEEN 400 AND 599) / count(*) AS total_error_rate
FROM read_parquet('{glob}', hive_partitioning = true) GROUP BY ALL ORDER BY ALL
""").fetchall()
print(json.dumps(rows))"#
    );
    let duck: Vec<serde_json::Value> = serde_json::from_value(python_json(&script)?)?;
    anyhow::ensure!(
        duck.len() >= 30,
        "only {} (distribution, minute) rows",
        duck.len()
    );
    assert_eq!(
        duck.len(),
        dashboard.len(),
        "different (distribution, minute) sets"
    );
    let total: i64 = duck.iter().filter_map(|r| r[2].as_i64()).sum();
    assert_eq!(total, 30_000);
    for row in &duck {
        let (id, minute) = (row[0].as_str().unwrap_or(""), row[1].as_i64().unwrap_or(0));
        let p = &dashboard
            .iter()
            .find(|(d, p)| d == id && p["minute_ms"].as_i64() == Some(minute))
            .ok_or_else(|| anyhow::anyhow!("dashboard lacks {id} at {minute}"))?
            .1;
        for (i, key) in [
            (2, "requests"),
            (3, "bytes_downloaded"),
            (4, "bytes_uploaded"),
        ] {
            assert_eq!(
                p[key].as_i64(),
                row[i].as_i64(),
                "{key} of {id} at {minute}"
            );
        }
        for (i, key) in [
            (5, "error_rate_4xx"),
            (6, "error_rate_5xx"),
            (7, "total_error_rate"),
        ] {
            let (a, b) = (
                p[key].as_f64().unwrap_or(f64::NAN),
                row[i].as_f64().unwrap_or(f64::NAN),
            );
            assert!(
                (a - b).abs() < 1e-9,
                "{key} of {id} at {minute}: dashboard {a}, duckdb {b}"
            );
        }
    }
    Ok(())
}
