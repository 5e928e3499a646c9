//! Report pages and API against hostile requests and absurd figures: every parameter
//! spelling refused with a JSON reason; sums at u64::MAX and names full of markup and
//! hidden characters drawn, escaped and summed without panic.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::StatusCode;
use common::{now_ms, router};
use edgelog_dashboard::MetricsStore;
use edgelog_record::report::Viewer;
use edgelog_record::{MinuteAggregate, MinuteReport, MinuteUpdate, Record};

fn store_with_absurd_figures() -> Arc<MetricsStore> {
    let store = Arc::new(MetricsStore::new(24 * 60));
    let now = now_ms();
    let minute = now - now.rem_euclid(60_000) - 60_000;
    let mut r = MinuteReport::default();
    let rec = Record {
        timestamp_ms: minute,
        distribution_id: "E1".into(),
        cs_uri_stem: Some("/<script>\u{202e}x\u{0}".into()),
        cs_referer: Some("https://\"><img src=x>.com/".into()),
        sc_bytes: Some(u64::MAX),
        sc_status: Some(503),
        cs_method: Some("GET".into()),
        c_country: Some("=cmd|' /C calc'!A0".into()),
        ..Record::default()
    };
    let v = Viewer {
        device: 0,
        browser: "\u{2067}b",
        os: "<o>",
    };
    for _ in 0..3 {
        r.add(&rec, &v);
    }
    for collector in ["a", "b"] {
        store.merge(&MinuteUpdate {
            collector_id: collector.into(),
            distribution_id: "E1".into(),
            minute_ms: minute,
            aggregate: MinuteAggregate {
                requests: 3,
                ..MinuteAggregate::default()
            },
            report: Some(Box::new(r.clone())),
        });
    }
    store
}

#[tokio::test]
async fn every_bad_spelling_is_refused_in_json_with_a_reason() {
    let app = router(store_with_absurd_figures());
    for (path, status, reason) in [
        ("/api/distributions/E1/reports/nope", 400, "unknown report"),
        ("/api/distributions/E1/reports/", 404, "no such page"),
        ("/api/distributions/E1/reports/usage?range=7d", 400, "range"),
        ("/api/distributions/E1/reports/usage?range=", 400, "range"),
        (
            "/api/distributions/E1/reports/usage?range=1h&range=3h",
            400,
            "range",
        ),
        (
            "/api/distributions/E1/reports/usage?format=xml",
            400,
            "format",
        ),
        (
            "/api/distributions/E1/reports/popular-objects?sort=size",
            400,
            "sort",
        ),
        (
            "/api/distributions/E1/reports/usage?what=1",
            400,
            "unknown field",
        ),
        (
            "/api/distributions/ENOPE/reports/usage",
            404,
            "unknown distribution",
        ),
        ("/distributions/E1/reports/nope", 400, "unknown report"),
    ] {
        let a = common::call(&app, "GET", path, &[], Body::empty()).await;
        assert_eq!(a.status.as_u16(), status, "{path}: {}", a.body);
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap_or_default();
        let text = v["error"].as_str().unwrap_or("");
        assert!(text.contains(reason), "{path}: {}", a.body);
    }
}

#[tokio::test]
async fn sums_at_their_limit_and_hostile_names_reach_pages_charts_and_csv_safely() {
    let app = router(store_with_absurd_figures());
    let a = common::call(
        &app,
        "GET",
        "/api/distributions/E1/reports/popular-objects",
        &[],
        Body::empty(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let v: serde_json::Value = serde_json::from_str(&a.body).expect("JSON");
    assert_eq!(v["requests"], 6);
    assert_eq!(
        v["objects"][0]["bytes"].as_u64(),
        Some(u64::MAX),
        "saturated, not wrapped"
    );
    for slug in [
        "popular-objects",
        "top-referrers",
        "viewers",
        "cache-statistics",
        "usage",
    ] {
        let page = common::call(
            &app,
            "GET",
            &format!("/distributions/E1/reports/{slug}?range=24h"),
            &[],
            Body::empty(),
        )
        .await;
        assert_eq!(page.status, StatusCode::OK, "{slug}");
        for bad in ["<script>", "<img", "<o>", "\u{202e}", "\u{2067}", "\u{0}"] {
            assert!(!page.body.contains(bad), "{slug} shows {bad:?}");
        }
        assert!(page.body.contains("<svg"), "{slug} draws its charts");
        let csv = common::call(
            &app,
            "GET",
            &format!("/api/distributions/E1/reports/{slug}?format=csv"),
            &[],
            Body::empty(),
        )
        .await;
        assert_eq!(csv.status, StatusCode::OK, "{slug}");
        assert!(!csv.body.contains(",\"=cmd"), "{slug}: a formula left live");
    }
}
