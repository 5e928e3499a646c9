//! Dashboard cost with 1,000 distributions: merging minute aggregates, the overview page,
//! a distribution page (nine charts), and one chart over 24 hours.

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use edgelog_dashboard::alarms::AlarmBoard;
use edgelog_dashboard::{Dashboard, DashboardConfig, MetricsStore, app};
use edgelog_record::{MinuteAggregate, MinuteUpdate};
use tower::ServiceExt;

const DISTRIBUTIONS: usize = 1_000;

fn update(d: usize, minute: i64) -> MinuteUpdate {
    let mut a = MinuteAggregate {
        requests: 1_000 + (d as u64 % 7) * 100,
        bytes_downloaded: 50_000_000,
        bytes_uploaded: 20_000,
        status_4xx: 40,
        status_5xx: 10,
        status_detail: [1, 2, 30, 3, 4, 3],
        cache_hits: 700,
        cacheable: 900,
        ..MinuteAggregate::default()
    };
    for i in 0..200 {
        a.origin_latency.add_seconds(0.01 + f64::from(i) * 0.003);
    }
    MinuteUpdate {
        collector_id: "collector-1".into(),
        distribution_id: format!("E{d:013}"),
        minute_ms: minute * 60_000,
        aggregate: a,
        report: None,
    }
}

fn now_minute() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64 / 60_000)
        .unwrap_or(0)
}

fn filled(minutes: i64) -> Arc<MetricsStore> {
    let store = Arc::new(MetricsStore::new(1_440));
    let now = now_minute();
    for d in 0..DISTRIBUTIONS {
        for m in now - minutes..now {
            store.merge(&update(d, m));
        }
    }
    store
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("dashboard");
    g.sample_size(10);

    // One minute of 1,000 distributions from one collector: what a merge round costs.
    let updates: Vec<MinuteUpdate> = (0..DISTRIBUTIONS)
        .map(|d| update(d, now_minute()))
        .collect();
    g.throughput(Throughput::Elements(DISTRIBUTIONS as u64));
    g.bench_function("merge 1,000 distributions x 1 minute", |b| {
        let store = filled(60);
        b.iter(|| updates.iter().for_each(|u| store.merge(u)));
    });

    let store = filled(60);
    let dashboard = Dashboard::new(
        store,
        Arc::new(AlarmBoard::new(Vec::new())),
        &DashboardConfig::default(),
    );
    let router = app(dashboard);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let get = |uri: &str| {
        let r = router.clone();
        let req = Request::get(uri).body(Body::empty()).expect("request");
        rt.block_on(async move {
            let resp = r.oneshot(req).await.expect("response");
            assert!(resp.status().is_success());
            http_body_util::BodyExt::collect(resp.into_body())
                .await
                .map(|b| b.to_bytes().len())
                .unwrap_or(0)
        })
    };
    g.throughput(Throughput::Elements(1));
    g.bench_function("overview page, 1,000 distributions x 60 minutes", |b| {
        b.iter(|| get("/"));
    });
    g.bench_function("distribution page, 9 charts over 1 h", |b| {
        b.iter(|| get("/distributions/E0000000000001?range=1h"));
    });
    let store = filled(1_440);
    let dashboard = Dashboard::new(
        store,
        Arc::new(AlarmBoard::new(Vec::new())),
        &DashboardConfig::default(),
    );
    let router24 = app(dashboard);
    g.bench_function("one chart over 24 h (1,440 minutes)", |b| {
        b.iter(|| {
            let r = router24.clone();
            let req = Request::get("/api/distributions/E0000000000001/charts/requests?range=24h")
                .body(Body::empty())
                .expect("request");
            rt.block_on(async move { r.oneshot(req).await.expect("response").status() })
        });
    });
    g.finish();
}

criterion_group!(dashboard_benches, benches);
criterion_main!(dashboard_benches);
