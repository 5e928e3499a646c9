//! How long one alarm evaluation takes with 1,000 distributions × 1,440 minutes of history
//! and 20 alarms on `*` (20,000 alarm × distribution pairs): the first evaluation, a tick
//! where only the minute in progress changed, and a tick after the minute rolled over.
//!
//! `cargo run --release -p edgelog-dashboard --example alarm_eval`

use std::time::Instant;

use edgelog_dashboard::MetricsStore;
use edgelog_dashboard::alarms::{AlarmBoard, AlarmConfig, Comparison, Metric, MissingData};
use edgelog_record::{MinuteAggregate, MinuteUpdate};

const DISTRIBUTIONS: usize = 1_000;
const HISTORY: i64 = 1_440;
const ALARMS: usize = 20;

fn update(d: usize, minute: i64) -> MinuteUpdate {
    let mut a = MinuteAggregate {
        requests: 1_000 + (d as u64 % 7) * 100,
        bytes_downloaded: 50_000_000,
        bytes_uploaded: 20_000,
        status_4xx: 40,
        status_5xx: 10 + (minute as u64 % 13),
        status_detail: [1, 2, 30, 3, 4, 3],
        cache_hits: 700,
        cacheable: 900,
        ..MinuteAggregate::default()
    };
    a.origin_latency.add_seconds(0.02);
    MinuteUpdate {
        collector_id: "collector-1".into(),
        distribution_id: format!("E{d:013}"),
        minute_ms: minute * 60_000,
        aggregate: a,
        report: None,
    }
}

fn alarms() -> Vec<AlarmConfig> {
    let metrics = [
        Metric::ErrorRate5xx,
        Metric::ErrorRate4xx,
        Metric::TotalErrorRate,
        Metric::CacheHitRate,
        Metric::Requests,
        Metric::BytesDownloaded,
        Metric::BytesUploaded,
    ];
    // (period_minutes, evaluation_periods, datapoints_to_alarm)
    let shapes = [(1, 3, 2), (5, 3, 2), (1, 15, 10), (60, 24, 12)];
    (0..ALARMS)
        .map(|i| {
            let (period, n, m) = shapes[i % shapes.len()];
            AlarmConfig {
                name: format!("alarm-{i}"),
                distribution: "*".into(),
                metric: metrics[i % metrics.len()],
                comparison: Comparison::GreaterThanThreshold,
                threshold: 5.0,
                period_minutes: period,
                evaluation_periods: n,
                datapoints_to_alarm: m,
                treat_missing_data: MissingData::Missing,
            }
        })
        .collect()
}

fn main() {
    let now_minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64 / 60_000)
        .unwrap_or(0);
    let store = MetricsStore::new(HISTORY as usize);
    let t = Instant::now();
    for d in 0..DISTRIBUTIONS {
        for m in now_minute - HISTORY..now_minute {
            store.merge(&update(d, m));
        }
    }
    println!(
        "filled {DISTRIBUTIONS} distributions x {HISTORY} minutes in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let board = AlarmBoard::new(alarms());
    let mut now = now_minute * 60_000 + 1_000;
    let time = |what: &str, now: i64| {
        let t = Instant::now();
        let changes = board.evaluate(&store, now);
        println!(
            "{what}: {:.1} ms ({} state changes)",
            t.elapsed().as_secs_f64() * 1e3,
            changes.len()
        );
    };
    time("first evaluation", now);
    for tick in 0..3 {
        // Collectors publish the minute in progress; it is not judged yet.
        for d in 0..DISTRIBUTIONS {
            store.merge(&update(d, now_minute + tick));
        }
        now += 10_000;
        time("tick, only the minute in progress changed", now);
        now += 50_000;
        time("tick, the minute rolled over", now);
    }
}
