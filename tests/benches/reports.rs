//! What the reports cost: counting a record into its summary (with the user agent's
//! classification) next to the minute aggregate alone; a summary's size per
//! distribution-minute as traffic grows; and the dashboard with 1,000 distributions over
//! 24 hours (merging every minute's summary, memory held, a report page over 24 h).
//!
//!   cargo bench -p edgelog-tests --bench reports
//!
//! Prints its figures (plain `main`: the dashboard part is one long measurement).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use edgelog_collector::viewer::ViewerClassifier;
use edgelog_dashboard::alarms::AlarmBoard;
use edgelog_dashboard::{Dashboard, DashboardConfig, MetricsStore, app};
use edgelog_edge::{ErrorMix, Generator};
use edgelog_record::report::wire;
use edgelog_record::{MinuteAggregate, MinuteReport, MinuteUpdate, Record};
use http_body_util::BodyExt;
use tower::ServiceExt;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn records(seed: u64, n: usize) -> Vec<Record> {
    let mut g = Generator::new(seed, 8, 16);
    (0..n)
        .map(|i| g.record(1_764_000_000_000 + i as i64 * 7, i, ErrorMix::default()))
        .collect()
}

fn summary(recs: &[Record], viewers: &mut ViewerClassifier) -> MinuteReport {
    let mut r = MinuteReport::default();
    for rec in recs {
        let v = viewers.classify(rec.cs_user_agent.as_deref());
        r.add(rec, &v);
    }
    r
}

fn counting() {
    // 20,000 records read 50 times: what is measured is the counting, not the memory
    // latency of a gigabyte of records (a collector counts a batch it just decoded).
    let pool = records(1, 20_000);
    let recs: Vec<&Record> = (0..50).flat_map(|_| pool.iter()).collect();
    let start = Instant::now();
    let mut aggs = vec![MinuteAggregate::default(); 8];
    for (i, r) in recs.iter().enumerate() {
        aggs[i % 8].add(r);
    }
    black_box(&aggs);
    let agg_ns = start.elapsed().as_nanos() as f64 / recs.len() as f64;
    let mut viewers = ViewerClassifier::default();
    let mut reports = vec![MinuteReport::default(); 8];
    let start = Instant::now();
    for (i, r) in recs.iter().enumerate() {
        let v = viewers.classify(r.cs_user_agent.as_deref());
        reports[i % 8].add(r, &v);
    }
    black_box(&reports);
    let report_ns = start.elapsed().as_nanos() as f64 / recs.len() as f64;
    println!(
        "counting a record: minute aggregate {agg_ns:.0} ns, report summary {report_ns:.0} ns (8 distributions, 20,000 generated records counted 50 times)"
    );
}

fn sizes() {
    let mut viewers = ViewerClassifier::default();
    println!("summary of one distribution-minute (generated traffic):");
    println!("| records in the minute | on the topic (base64) | in memory |");
    println!("|---:|---:|---:|");
    for n in [10, 100, 1_000, 10_000, 100_000] {
        let r = summary(&records(3, n), &mut viewers);
        let mut kept = r.clone();
        kept.compact();
        println!(
            "| {n} | {} B | {} B |",
            wire::encode(&r).len(),
            kept.heap_bytes()
        );
    }
}

async fn dashboard() -> anyhow::Result<()> {
    const DISTRIBUTIONS: usize = 1000;
    const MINUTES: i64 = 24 * 60;
    let mut viewers = ViewerClassifier::default();
    // A pool of busy minutes (300 requests each), reused round-robin.
    // Compacted, as collectors publish them.
    let pool: Vec<Box<MinuteReport>> = (0..64)
        .map(|s| {
            let mut r = summary(&records(100 + s, 300), &mut viewers);
            r.compact();
            Box::new(r)
        })
        .collect();
    let store = Arc::new(MetricsStore::new(24 * 60).with_reports_max_bytes(16 << 30));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let last = now - now.rem_euclid(60_000) - 60_000;
    let first = last - (MINUTES - 1) * 60_000;
    let mut took = std::time::Duration::ZERO;
    let mut merges = 0u64;
    for m in 0..MINUTES {
        for d in 0..DISTRIBUTIONS {
            let u = MinuteUpdate {
                collector_id: "c".into(),
                distribution_id: format!("E{d:05}"),
                minute_ms: first + m * 60_000,
                aggregate: MinuteAggregate {
                    requests: 300,
                    ..MinuteAggregate::default()
                },
                report: Some(pool[(d * 7 + m as usize) % pool.len()].clone()),
            };
            // The merge alone (not the copy of the pooled summary).
            let start = Instant::now();
            store.merge(&u);
            took += start.elapsed();
            merges += 1;
        }
    }
    let (bytes, dropped) = store.report_bytes();
    println!(
        "dashboard, {DISTRIBUTIONS} distributions x 24 h: {merges} summaries merged in {:.1} s ({:.1} us each); {} MiB of summaries held ({} KiB per distribution), {dropped} dropped",
        took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / merges as f64,
        bytes >> 20,
        (bytes / DISTRIBUTIONS) >> 10
    );
    let status = std::fs::read_to_string("/proc/self/status")?;
    if let Some(rss) = status.lines().find(|l| l.starts_with("VmRSS")) {
        println!("  process {rss}");
    }
    let router = app(Dashboard::new(
        store,
        Arc::new(AlarmBoard::new(Vec::new())),
        &DashboardConfig::default(),
    ));
    for (path, what) in [
        (
            "/api/distributions/E00042/reports/popular-objects?range=24h",
            "JSON, 24 h",
        ),
        (
            "/distributions/E00042/reports/popular-objects?range=24h",
            "page, 24 h",
        ),
        (
            "/distributions/E00042/reports/cache-statistics?range=24h",
            "cache page, 24 h",
        ),
        (
            "/distributions/E00042/reports/usage?range=1h",
            "usage page, 1 h",
        ),
        (
            "/distributions/E00042/reports/viewers?range=3h",
            "viewers page, 3 h",
        ),
    ] {
        let mut best = f64::MAX;
        let mut size = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let resp = router
                .clone()
                .oneshot(axum::http::Request::get(path).body(axum::body::Body::empty())?)
                .await?;
            anyhow::ensure!(resp.status() == 200, "{path}: {}", resp.status());
            size = resp.into_body().collect().await?.to_bytes().len();
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        println!("  {what}: {best:.1} ms ({size} B)");
    }
    Ok(())
}

/// `-- counting`, `-- sizes` or `-- dashboard` runs one part (the dashboard's first by
/// default, so its memory figure is its own).
fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return Ok(());
    }
    let part =
        |name: &str| !args.iter().any(|a| !a.starts_with('-')) || args.iter().any(|a| a == name);
    if part("dashboard") {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(dashboard())?;
    }
    if part("counting") {
        counting();
    }
    if part("sizes") {
        sizes();
    }
    Ok(())
}
