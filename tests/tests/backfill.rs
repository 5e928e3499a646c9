//! Metrics count every record, also when a backfill publishes far more minute aggregates at
//! once than any channel holds (the in-process stream once dropped what overflowed).

use std::time::{Duration, Instant};

use edgelog_tests::{DemoProc, TOKEN, http_get as get, run_edge};

#[test]
fn a_24_hour_backfill_of_many_distributions_is_counted_whole() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let demo = DemoProc::start(
        &dir.path().join("demo"),
        &["--no-traffic", "--token", TOKEN],
        &[],
    )?;
    // 200 distributions × 1,440 minutes: about 288,000 (distribution, minute) aggregates,
    // more than four times the 65,536 that overflowed before.
    let (total, distributions) = (300_000u64, 200usize);
    let dists = distributions.to_string();
    let tot = total.to_string();
    run_edge(
        &demo.ingest_url(),
        &[
            "--total",
            &tot,
            "--rate",
            "0",
            "--distributions",
            &dists,
            // Within the dashboard's 24 h of history.
            "--backfill-hours",
            "23.5",
            "--batch",
            "2000",
            "--concurrency",
            "4",
        ],
    )?;
    let start = Instant::now();
    let (mut seen, mut ids) = (0u64, Vec::new());
    while start.elapsed() < Duration::from_secs(90) {
        ids =
            serde_json::from_str::<Vec<String>>(&get(&demo.dashboard_url("/api/distributions"))?)?;
        seen = 0;
        for id in &ids {
            let points: Vec<serde_json::Value> = serde_json::from_str(&get(
                &demo.dashboard_url(&format!("/api/distributions/{id}/series"))
            )?)?;
            seen += points
                .iter()
                .map(|p| p["requests"].as_u64().unwrap_or(0))
                .sum::<u64>();
        }
        if seen == total {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    demo.stop()?;
    eprintln!(
        "backfill: {total} records over 24 h for {distributions} distributions; the dashboard counts {seen} in {} distributions",
        ids.len()
    );
    assert_eq!(ids.len(), distributions);
    assert_eq!(seen, total, "records missing from the metrics");
    Ok(())
}
