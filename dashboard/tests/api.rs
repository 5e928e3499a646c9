//! The dashboard's HTTP surface through `oneshot`: auth, JSON API, Prometheus.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::StatusCode;
use common::{alarm, merge, now_ms};
use edgelog_dashboard::alarms::{AlarmBoard, Metric};
use edgelog_dashboard::{Dashboard, DashboardConfig, MetricsStore, app};
use edgelog_record::MinuteAggregate;

fn dashboard(cfg: &DashboardConfig) -> (Arc<MetricsStore>, Arc<AlarmBoard>, axum::Router) {
    let store = Arc::new(MetricsStore::new(60));
    let now = now_ms();
    let minute = now - now.rem_euclid(60_000) - 60_000;
    let mut aggregate = MinuteAggregate {
        requests: 200,
        status_5xx: 30,
        ..MinuteAggregate::default()
    };
    aggregate.origin_latency.add_seconds(0.05);
    merge(&store, "E1", minute, aggregate);
    let alarms = Arc::new(AlarmBoard::new(vec![alarm("5xx", Metric::ErrorRate5xx)]));
    alarms.evaluate(&store, now);
    let router = app(Dashboard::new(store.clone(), alarms.clone(), cfg));
    (store, alarms, router)
}

/// A `GET`, with the `authorization` header if `auth` is given: the status and the body.
async fn get(router: &axum::Router, path: &str, auth: Option<&str>) -> (StatusCode, String) {
    let auth: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
    let a = common::call(router, "GET", path, &auth, Body::empty()).await;
    (a.status, a.body)
}

#[tokio::test]
async fn an_open_dashboard_serves_series_alarms_and_prometheus() {
    let (_s, _a, router) = dashboard(&DashboardConfig::default());
    let (status, body) = get(&router, "/api/distributions", None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "[\"E1\"]"));
    let (_, series) = get(&router, "/api/distributions/E1/series", None).await;
    assert!(series.contains("\"error_rate_5xx\":15.0"), "{series}");
    let (_, alarms) = get(&router, "/api/alarms", None).await;
    assert!(alarms.contains("\"state\":\"ALARM\""), "{alarms}");
    let (status, metrics) = get(&router, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics.contains("edgelog_distribution_requests{distribution=\"E1\"} 200"),
        "{metrics}"
    );
    assert!(
        metrics.contains("edgelog_distribution_error_rate_5xx_percent{distribution=\"E1\"} 15"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("edgelog_alarm_state{alarm=\"5xx\",distribution=\"E1\",state=\"ALARM\"} 1"),
        "{metrics}"
    );
    let p99: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "edgelog_distribution_origin_latency_ms{distribution=\"E1\",quantile=\"0.99\"} ",
            )
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    assert!((p99 - 50.0).abs() < 0.5, "{metrics}");
    let (status, _) = get(&router, "/api/distributions/nope/series", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_configured_dashboard_wants_a_token_or_a_user() {
    let cfg = DashboardConfig {
        tokens: vec!["dash-token-123".into()],
        users: vec!["ops:s3cret-pw".into()],
        ..DashboardConfig::default()
    };
    cfg.validate().expect("valid");
    let (_s, _a, router) = dashboard(&cfg);
    let (status, _) = get(&router, "/api/distributions", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = get(&router, "/api/distributions", Some("Bearer wrong-token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = get(&router, "/api/distributions", Some("Bearer dash-token-123")).await;
    assert_eq!(status, StatusCode::OK);
    // "ops:s3cret-pw" in base64, as a browser sends it.
    let (status, _) = get(&router, "/", Some("Basic b3BzOnMzY3JldC1wdw==")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get(&router, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    let shown = format!(
        "{:?}",
        DashboardConfig {
            webhooks: vec!["http://hook:hook-pw@127.0.0.1:9/key-in-path?k=query-key".into()],
            ..cfg.clone()
        }
    );
    for secret in [
        "dash-token-123",
        "s3cret-pw",
        "hook-pw",
        "key-in-path",
        "query-key",
    ] {
        assert!(!shown.contains(secret), "Debug shows {secret}: {shown}");
    }
    assert!(shown.contains("ops:<redacted>"), "{shown}");
    assert!(shown.contains("http://127.0.0.1:9/<redacted>"), "{shown}");
    let bad = DashboardConfig {
        users: vec!["no-colon-here".into()],
        ..DashboardConfig::default()
    };
    assert!(
        bad.validate()
            .expect_err("no colon")
            .contains("dashboard.users")
    );
}

/// A JSON `body` sent with `method`: the status and the body of the answer.
async fn send(router: &axum::Router, method: &str, path: &str, body: &str) -> (StatusCode, String) {
    let json = [("content-type", "application/json")];
    let a = common::call(router, method, path, &json, body.to_owned()).await;
    (a.status, a.body)
}

#[tokio::test]
async fn alarms_are_defined_replaced_and_deleted_through_the_api() {
    let (store, alarms, router) = dashboard(&DashboardConfig {
        allow_unauthenticated_writes: true,
        ..DashboardConfig::default()
    });
    let alarm = r#"{"name": "total-errors", "distribution": "E1", "metric": "TotalErrorRate",
        "comparison": "GreaterThanOrEqualToThreshold", "threshold": 10.0}"#;
    const DEFINITION: &str = "/api/alarms/definitions/total-errors";
    let (status, body) = send(&router, "PUT", DEFINITION, alarm).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = send(&router, "PUT", DEFINITION, alarm).await;
    assert_eq!(status, StatusCode::OK, "replaced");
    let (_, defs) = get(&router, "/api/alarms/definitions", None).await;
    let defs: Vec<serde_json::Value> = serde_json::from_str(&defs).expect("json");
    assert_eq!(defs.len(), 2, "{defs:?}");

    // Evaluated like the configured ones: 15 % of errors breaches 10 %.
    alarms.evaluate(&store, now_ms());
    let (_, states) = get(&router, "/api/alarms", None).await;
    assert!(
        states.contains(r#""alarm":"total-errors","distribution":"E1","state":"ALARM""#),
        "{states}"
    );

    // Bad definitions are refused with the reason.
    let bad = alarm.replace("10.0}", "10.0, \"datapoints_to_alarm\": 3}");
    let (status, body) = send(&router, "PUT", DEFINITION, &bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("datapoints_to_alarm"), "{body}");
    let (status, body) = send(&router, "PUT", "/api/alarms/definitions/other", alarm).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("differs"), "{body}");

    let (status, _) = send(&router, "DELETE", DEFINITION, "").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = send(&router, "DELETE", DEFINITION, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, states) = get(&router, "/api/alarms", None).await;
    assert!(!states.contains("total-errors"), "{states}");
}
