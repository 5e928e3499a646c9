//! Metrics count every record, also when a backfill publishes far more minute aggregates at
//! once than any channel holds (the in-process stream once dropped what overflowed).

use std::time::Duration;

use edgelog_tests::{TOKEN, TestServer, http_get as get, run_edge, wait_until_every, within};

/// The two tests here each keep both cores of a small machine busy for a minute or more;
/// run together, each one's deadline measured the other test's load too (the backfill's
/// 90 s ran out at 95 % counted in a CI run, while 47 s sufficed alone).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_24_hour_backfill_of_many_distributions_is_counted_whole() -> anyhow::Result<()> {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir()?;
    let demo = TestServer::demo(
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
        &demo.url(),
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
    let count = || -> anyhow::Result<(Vec<String>, u64)> {
        let ids =
            serde_json::from_str::<Vec<String>>(&get(&demo.dashboard_url("/api/distributions"))?)?;
        let mut seen = 0;
        for id in &ids {
            let points: Vec<serde_json::Value> = serde_json::from_str(&get(
                &demo.dashboard_url(&format!("/api/distributions/{id}/series"))
            )?)?;
            seen += points
                .iter()
                .map(|p| p["requests"].as_u64().unwrap_or(0))
                .sum::<u64>();
        }
        Ok((ids, seen))
    };
    let (mut seen, mut ids, mut failed) = (0u64, Vec::new(), None);
    // Each look reads 201 pages: every 500 ms is often enough.
    wait_until_every(
        within(Duration::from_secs(90)),
        Duration::from_millis(500),
        || match count() {
            Ok((i, s)) => {
                (ids, seen) = (i, s);
                seen == total
            }
            Err(e) => {
                failed = Some(e);
                true
            }
        },
    );
    if let Some(e) = failed {
        return Err(e);
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

/// The same path in process at full scale: a day of 1,000 distributions (1,440,000 minute
/// aggregates, one record each) through the metrics aggregator and the in-process stream,
/// every one counted by the reader.
#[test]
fn a_day_of_1000_distributions_reaches_the_reader_whole() -> anyhow::Result<()> {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use edgelog_collector::{Entry, MetricsAggregator, Publisher, Sink};
    use edgelog_record::Record;
    use edgelog_sink_stream::Bus;

    let (distributions, minutes) = (1_000usize, 1_440i64);
    let bus = Bus::new(16);
    let requests = Arc::new(AtomicU64::new(0));
    let cells = Arc::new(Mutex::new(HashSet::new()));
    let (r, c) = (requests.clone(), cells.clone());
    bus.on_minutes(move |u| {
        r.fetch_add(u.aggregate.requests, Ordering::Relaxed);
        c.lock()
            .expect("lock")
            .insert((u.distribution_id.clone(), u.minute_ms));
    });
    let publisher: Arc<dyn Publisher> = Arc::new(bus.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut agg = MetricsAggregator::new("c1", publisher, Duration::from_secs(3600));
        // A whole minute.
        let start = 1_764_000_000_000i64;
        for m in 0..minutes {
            let records: Vec<Record> = (0..distributions)
                .map(|d| Record {
                    timestamp_ms: start + m * 60_000,
                    distribution_id: format!("E{d}"),
                    sc_status: Some(200),
                    ..Record::default()
                })
                .collect();
            let entry = Entry {
                seq: m as u64 + 1,
                appended_ms: 0,
                records: Arc::new(records),
            };
            agg.write(&edgelog_collector::Batch::all(&entry)).await?;
        }
        agg.flush().await?;
        anyhow::Ok(())
    })?;
    let total = distributions as u64 * minutes as u64;
    let seen = requests.load(Ordering::Relaxed);
    let cells = cells.lock().expect("lock").len();
    eprintln!(
        "in process: {total} records, {seen} counted, {cells} (distribution, minute) aggregates"
    );
    assert_eq!(seen, total);
    assert_eq!(cells as u64, total);
    Ok(())
}
