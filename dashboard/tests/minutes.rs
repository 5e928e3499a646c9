//! What a minute means on the dashboard: the overview and `/metrics` show the last
//! complete minute (not the minute in progress, not the last one with data); a quiet
//! minute has 0 requests and no rates (NaN in `/metrics`, read back by prometheus_client);
//! CacheHitRate is null where nothing was cacheable; sums saturate; a time-to-first-byte
//! of 0 is 0 ms; an unknown `chart=` is refused in JSON too.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::StatusCode;
use common::{merge, now_ms, router};
use edgelog_dashboard::{MetricsStore, MinutePoint, last_complete_minute};
use edgelog_record::{LatencySketch, MinuteAggregate};

fn minute(requests: u64, status_5xx: u64) -> MinuteAggregate {
    MinuteAggregate {
        requests,
        status_5xx,
        bytes_downloaded: requests * 1000,
        cacheable: requests,
        cache_hits: requests / 2,
        ..MinuteAggregate::default()
    }
}

/// A `GET`: the status, the content type and the body.
async fn get(router: &axum::Router, path: &str) -> (StatusCode, String, String) {
    let a = common::call(router, "GET", path, &[], Body::empty()).await;
    (a.status, a.content_type, a.body)
}

/// `/metrics` read by prometheus_client: `(sample name, distribution, value)`, NaN kept
/// (as the string "NaN" on the way, JSON has no NaN).
fn parse(text: &str) -> Vec<(String, String, f64)> {
    let script = r#"
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        v = "NaN" if math.isnan(s.value) else s.value
        out.append([s.name, s.labels.get("distribution", "") + "|" + s.labels.get("quantile", ""), v])
print(json.dumps(out))
"#;
    let rows: Vec<(String, String, serde_json::Value)> = common::prometheus_client(script, text);
    rows.into_iter()
        .map(|(n, l, v)| (n, l, v.as_f64().unwrap_or(f64::NAN)))
        .collect()
}

fn sample(samples: &[(String, String, f64)], name: &str, labels: &str) -> f64 {
    samples
        .iter()
        .find(|s| s.0 == name && s.1 == labels)
        .map(|s| s.2)
        .unwrap_or_else(|| panic!("no sample {name}{{{labels}}}"))
}

#[tokio::test]
async fn metrics_and_the_overview_show_the_last_complete_minute_and_quiet_minutes_as_quiet() {
    let store = Arc::new(MetricsStore::new(1440));
    let last = last_complete_minute(now_ms());
    // BUSY: the minute before, the last complete one, and the one in progress.
    merge(&store, "BUSY", last - 60_000, minute(100, 1));
    merge(&store, "BUSY", last, minute(400, 40));
    merge(&store, "BUSY", last + 60_000, minute(7, 7));
    // QUIET: busy ten minutes ago, nothing since.
    let mut old = minute(900, 90);
    old.origin_latency.add_seconds(0.05);
    merge(&store, "QUIET", last - 600_000, old);
    let r = router(store.clone());

    let (status, ct, text) = get(&r, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(ct.starts_with("text/plain"), "{ct}");
    let samples = parse(&text);
    let busy = |name: &str| sample(&samples, name, "BUSY|");
    assert_eq!(busy("edgelog_distribution_requests"), 400.0, "{text}");
    assert_eq!(busy("edgelog_distribution_bytes_downloaded"), 400_000.0);
    assert_eq!(busy("edgelog_distribution_error_rate_5xx_percent"), 10.0);
    assert_eq!(busy("edgelog_distribution_cache_hit_rate_percent"), 50.0);
    // No origin requests in that minute: no latency.
    assert!(
        sample(
            &samples,
            "edgelog_distribution_origin_latency_ms",
            "BUSY|0.5"
        )
        .is_nan()
    );

    // The quiet distribution: 0 requests and bytes, no rates, no latency; not its last
    // busy minute again.
    let quiet = |name: &str| sample(&samples, name, "QUIET|");
    assert_eq!(quiet("edgelog_distribution_requests"), 0.0, "{text}");
    assert_eq!(quiet("edgelog_distribution_bytes_downloaded"), 0.0);
    assert_eq!(quiet("edgelog_distribution_bytes_uploaded"), 0.0);
    for rate in [
        "error_rate_4xx_percent",
        "error_rate_5xx_percent",
        "total_error_rate_percent",
        "cache_hit_rate_percent",
        "error_rate_401_percent",
        "error_rate_504_percent",
    ] {
        let v = quiet(&format!("edgelog_distribution_{rate}"));
        assert!(v.is_nan(), "{rate} of a quiet minute: {v}");
    }
    for q in ["0.5", "0.9", "0.99"] {
        let v = sample(
            &samples,
            "edgelog_distribution_origin_latency_ms",
            &format!("QUIET|{q}"),
        );
        assert!(v.is_nan(), "latency {q} of a quiet minute: {v}");
    }

    // The overview: the same minute, rates as "–" when there are none.
    let (status, _, page) = get(&r, "/").await;
    assert_eq!(status, StatusCode::OK);
    let row = |id: &str| {
        page.split("<tr>")
            .find(|r| r.contains(&format!(">{id}</a>")))
            .unwrap_or_else(|| panic!("no row for {id}: {page}"))
            .to_owned()
    };
    let busy_row = row("BUSY");
    assert!(busy_row.contains("<td>400</td>"), "{busy_row}");
    assert!(busy_row.contains("<td>10.00 %</td>"), "{busy_row}");
    let quiet_row = row("QUIET");
    assert!(quiet_row.contains("<td>0</td>"), "{quiet_row}");
    assert!(quiet_row.contains("<td>–</td>"), "{quiet_row}");
    assert!(!quiet_row.contains("900"), "{quiet_row}");
}

#[tokio::test]
async fn rates_without_a_denominator_are_null_and_a_zero_ttfb_is_zero_ms() {
    let store = Arc::new(MetricsStore::new(60));
    let m = last_complete_minute(now_ms());
    // Requests, none cacheable: no CacheHitRate (not 0 %).
    let mut a = MinuteAggregate {
        requests: 50,
        status_4xx: 5,
        ..MinuteAggregate::default()
    };
    // Origin requests answered at once.
    for _ in 0..10 {
        a.origin_latency.add_seconds(0.0);
    }
    merge(&store, "E1", m, a);
    let r = router(store);
    let (status, _, body) = get(&r, "/api/distributions/E1/series").await;
    assert_eq!(status, StatusCode::OK);
    let points: Vec<MinutePoint> = serde_json::from_str(&body).expect("json");
    assert_eq!(points.len(), 1);
    let p = &points[0];
    assert_eq!(p.cache_hit_rate, None, "{body}");
    assert!(body.contains("\"cache_hit_rate\":null"), "{body}");
    assert_eq!(p.error_rate_4xx, Some(10.0));
    assert_eq!(p.origin_latency_p50_ms, Some(0.0), "{body}");
    assert_eq!(p.origin_latency_p99_ms, Some(0.0), "{body}");
    let (_, _, csv) = get(
        &r,
        "/api/distributions/E1/series?format=csv&chart=cache-hit-rate",
    )
    .await;
    assert!(
        csv.lines().nth(1).is_some_and(|l| l.ends_with(',')),
        "{csv}"
    );

    // An unknown chart is refused whatever the format, as JSON.
    for q in [
        "format=json&chart=nope",
        "chart=nope",
        "format=csv&chart=nope",
    ] {
        let (status, ct, body) = get(&r, &format!("/api/distributions/E1/series?{q}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}: {body}");
        assert_eq!(ct, "application/json", "{q}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains("nope")),
            "{body}"
        );
    }
}

#[tokio::test]
async fn sums_saturate_and_latency_stays_finite_whatever_the_collectors_send() {
    let store = Arc::new(MetricsStore::new(60));
    let m = last_complete_minute(now_ms());
    let huge = || {
        let mut a = MinuteAggregate {
            requests: u64::MAX - 1,
            bytes_downloaded: u64::MAX - 1,
            bytes_uploaded: u64::MAX / 2 + 1,
            status_4xx: u64::MAX - 1,
            status_5xx: u64::MAX - 1,
            status_detail: [u64::MAX; 6],
            cache_hits: u64::MAX - 1,
            cacheable: u64::MAX - 1,
            ..MinuteAggregate::default()
        };
        a.origin_latency.add_seconds(f64::INFINITY);
        a.origin_latency.add_seconds(f64::MAX);
        a.origin_latency.add_seconds(1e300);
        a
    };
    for _ in 0..3 {
        merge(&store, "E1", m, huge());
    }
    // A sketch from a broken or hostile producer: a bucket past any latency, counts that
    // overflow when added.
    let foreign: LatencySketch = serde_json::from_str(&format!(
        r#"{{"buckets":[[2147483647,{max}],[5,{max}]],"count":{max}}}"#,
        max = u64::MAX
    ))
    .expect("a sketch");
    let mut a = MinuteAggregate {
        requests: 1,
        ..MinuteAggregate::default()
    };
    a.origin_latency = foreign;
    merge(&store, "E1", m, a.clone());
    merge(&store, "E1", m, a);

    let r = router(store);
    let (_, _, body) = get(&r, "/api/distributions/E1/series").await;
    let p: Vec<MinutePoint> = serde_json::from_str(&body).expect("json");
    let p = &p[0];
    assert_eq!(p.requests, u64::MAX, "{body}");
    assert_eq!(p.bytes_downloaded, u64::MAX);
    assert_eq!(p.bytes_uploaded, u64::MAX);
    assert_eq!(p.error_rate_5xx, Some(100.0));
    assert_eq!(p.total_error_rate, Some(100.0));
    assert_eq!(p.cache_hit_rate, Some(100.0));
    for q in [
        p.origin_latency_p50_ms,
        p.origin_latency_p90_ms,
        p.origin_latency_p99_ms,
    ] {
        let q = q.expect("latency");
        assert!(q.is_finite() && q > 0.0, "{body}");
    }
    // Charts and Prometheus take it too.
    let (status, _, svg) = get(&r, "/api/distributions/E1/charts/origin-latency?range=1h").await;
    assert_eq!(status, StatusCode::OK);
    assert!(svg.starts_with("<svg"), "{svg}");
    let (_, _, text) = get(&r, "/metrics").await;
    let samples = parse(&text);
    assert_eq!(
        sample(&samples, "edgelog_distribution_requests", "E1|"),
        u64::MAX as f64
    );
    assert!(
        sample(
            &samples,
            "edgelog_distribution_origin_latency_ms",
            "E1|0.99"
        )
        .is_finite()
    );

    // Implausible minutes are ignored rather than stored.
    let store = MetricsStore::new(60);
    for minute_ms in [i64::MAX, i64::MIN, 61_001, 1 << 60] {
        merge(&store, "E1", minute_ms, MinuteAggregate::default());
    }
    assert!(store.distributions().is_empty());
}
