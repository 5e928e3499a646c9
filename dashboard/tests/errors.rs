//! Every refusal of the dashboard is `{"error": "<reason>"}` as JSON, whatever refused it:
//! a handler, an extractor (query string, path, body), the router (404, 405) or a layer.
//! Alarm definitions with hostile names, distributions or look-backs are refused.

mod common;

use std::sync::Arc;

use axum::http::StatusCode;
use common::Answer;
use edgelog_dashboard::alarms::AlarmBoard;
use edgelog_dashboard::{Dashboard, DashboardConfig, MetricsStore, app};
use edgelog_record::MinuteAggregate;

fn router(cfg: &DashboardConfig) -> (Arc<AlarmBoard>, axum::Router) {
    let store = Arc::new(MetricsStore::new(60));
    let one = MinuteAggregate {
        requests: 1,
        ..MinuteAggregate::default()
    };
    common::merge(&store, "E1", 0, one);
    let alarms = Arc::new(AlarmBoard::new(Vec::new()));
    let router = app(Dashboard::new(store, alarms.clone(), cfg));
    (alarms, router)
}

/// `method` on `uri` with a JSON `body`.
async fn call(router: &axum::Router, method: &str, uri: &str, body: Vec<u8>) -> Answer {
    let json = [("content-type", "application/json")];
    common::call(router, method, uri, &json, body).await
}

/// Asserts the answer is the JSON error shape with `status`, and returns the reason.
fn reason(a: &Answer, status: StatusCode) -> String {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(a.content_type, "application/json", "{}", a.body);
    let v: serde_json::Value = serde_json::from_str(&a.body).expect("a JSON body");
    let obj = v.as_object().expect("an object");
    assert_eq!(obj.len(), 1, "only `error`: {}", a.body);
    let r = obj["error"].as_str().expect("error is a string").to_owned();
    assert!(!r.is_empty(), "an empty reason");
    r
}

const ALARM: &str = r#"{"name":"NAME","distribution":"E1","metric":"5xxErrorRate","comparison":"GreaterThanThreshold","threshold":5.0EXTRA}"#;

fn alarm(name: &str, extra: &str) -> Vec<u8> {
    let name = serde_json::to_string(name).expect("json string");
    ALARM
        .replace("\"NAME\"", &name)
        .replace("EXTRA", extra)
        .into_bytes()
}

#[tokio::test]
async fn extractor_router_and_layer_refusals_are_json_errors_with_a_reason() {
    let (_alarms, r) = router(&DashboardConfig {
        allow_unauthenticated_writes: true,
        ..DashboardConfig::default()
    });

    // Query strings: an unknown key, a wrong type, on the API and on a page.
    let a = call(&r, "GET", "/api/distributions/E1/series?bogus=1", vec![]).await;
    assert!(reason(&a, StatusCode::BAD_REQUEST).contains("bogus"));
    let a = call(&r, "GET", "/distributions/E1?range=1h&x=2", vec![]).await;
    reason(&a, StatusCode::BAD_REQUEST);
    let a = call(
        &r,
        "GET",
        "/api/distributions/E1/charts/requests?nope=1",
        vec![],
    )
    .await;
    reason(&a, StatusCode::BAD_REQUEST);
    // Handler refusals keep their reasons.
    let a = call(&r, "GET", "/api/distributions/E1/series?range=7d", vec![]).await;
    assert!(reason(&a, StatusCode::BAD_REQUEST).contains("7d"));
    let a = call(&r, "GET", "/api/distributions/E9/series", vec![]).await;
    assert!(reason(&a, StatusCode::NOT_FOUND).contains("E9"));

    // A path segment that is not UTF-8 once decoded.
    let a = call(&r, "GET", "/api/distributions/%FF/series", vec![]).await;
    reason(&a, StatusCode::BAD_REQUEST);
    let a = call(&r, "DELETE", "/api/alarms/definitions/%FF%FE", vec![]).await;
    reason(&a, StatusCode::BAD_REQUEST);

    // No such route, no such method (with the methods that are).
    let a = call(&r, "GET", "/nope", vec![]).await;
    assert!(reason(&a, StatusCode::NOT_FOUND).contains("/nope"));
    let a = call(&r, "GET", "/api/alarms/definitions/x/y", vec![]).await;
    reason(&a, StatusCode::NOT_FOUND);
    let a = call(&r, "POST", "/api/distributions", vec![]).await;
    assert!(reason(&a, StatusCode::METHOD_NOT_ALLOWED).contains("POST"));
    assert!(
        a.allow.as_deref().is_some_and(|v| v.contains("GET")),
        "{:?}",
        a.allow
    );
    let a = call(&r, "GET", "/api/alarms/definitions/x", vec![]).await;
    reason(&a, StatusCode::METHOD_NOT_ALLOWED);

    // Bodies: not JSON, not an alarm, over axum's default body limit (2 MiB).
    let a = call(&r, "PUT", "/api/alarms/definitions/a", b"{".to_vec()).await;
    assert!(reason(&a, StatusCode::BAD_REQUEST).contains("invalid alarm"));
    let a = call(&r, "PUT", "/api/alarms/definitions/a", b"[1]".to_vec()).await;
    reason(&a, StatusCode::BAD_REQUEST);
    let a = call(&r, "PUT", "/api/alarms/definitions/a", vec![b' '; 3 << 20]).await;
    reason(&a, StatusCode::PAYLOAD_TOO_LARGE);

    // What still works, works.
    let a = call(&r, "GET", "/healthz", vec![]).await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "ok\n"));
}

#[tokio::test]
async fn a_locked_dashboard_refuses_with_json_before_saying_whether_a_page_exists() {
    let cfg = DashboardConfig {
        tokens: vec!["dash-token-123".into()],
        ..DashboardConfig::default()
    };
    let (_alarms, r) = router(&cfg);
    let a = call(&r, "GET", "/nope", vec![]).await;
    reason(&a, StatusCode::UNAUTHORIZED);
    let a = call(&r, "POST", "/api/distributions", vec![]).await;
    reason(&a, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn hostile_alarm_names_and_distributions_are_refused_with_a_reason() {
    let (alarms, r) = router(&DashboardConfig {
        allow_unauthenticated_writes: true,
        ..DashboardConfig::default()
    });
    let put = |name: &str, body: Vec<u8>| {
        let uri = format!(
            "/api/alarms/definitions/{}",
            name.bytes()
                .map(|b| format!("%{b:02X}"))
                .collect::<String>()
        );
        let r = r.clone();
        async move { call(&r, "PUT", &uri, body).await }
    };

    // The distribution that forged a series in /metrics.
    let forged = r#","distribution":"E1\"} 1\nevil 2""#;
    let body = String::from_utf8(alarm("a", ""))
        .expect("utf8")
        .replace(r#","distribution":"E1""#, forged);
    let a = put("a", body.into_bytes()).await;
    let why = reason(&a, StatusCode::BAD_REQUEST);
    assert!(why.contains("alarms.a.distribution"), "{why}");
    for bad in ["", "E 1", "E1\\", "**", "E1,E2"] {
        let body = String::from_utf8(alarm("a", ""))
            .expect("utf8")
            .replace(r#""E1""#, &serde_json::to_string(bad).expect("json"));
        let a = put("a", body.into_bytes()).await;
        assert!(
            reason(&a, StatusCode::BAD_REQUEST).contains("distribution"),
            "{bad:?}"
        );
    }

    // Names that would break a label, a page or a URL; the same name in path and body.
    let long = "n".repeat(129);
    for name in [
        "x\"} 1\nevil 2",
        "quote\"d",
        "back\\slash",
        "line\nfeed",
        "tab\there",
        "<script>",
        "ünïcode",
        " padded",
        long.as_str(),
    ] {
        let a = put(name, alarm(name, "")).await;
        let why = reason(&a, StatusCode::BAD_REQUEST);
        assert!(why.contains("alarm name"), "{name:?}: {why}");
    }

    // CloudWatch's limits: a day of look-back, M of N, a finite threshold.
    let limits = [
        (r#","evaluation_periods":4294967295"#, "evaluation_periods"),
        (
            r#","period_minutes":60,"evaluation_periods":25,"datapoints_to_alarm":1"#,
            "evaluation_periods",
        ),
        (r#","period_minutes":1441"#, "period_minutes"),
        (r#","period_minutes":0"#, "period_minutes"),
        (r#","evaluation_periods":0"#, "evaluation_periods"),
        (
            r#","evaluation_periods":3,"datapoints_to_alarm":4"#,
            "datapoints_to_alarm",
        ),
        (r#","datapoints_to_alarm":0"#, "datapoints_to_alarm"),
    ];
    for (extra, key) in limits {
        let a = put("limits", alarm("limits", extra)).await;
        let why = reason(&a, StatusCode::BAD_REQUEST);
        assert!(why.contains(key), "{extra}: {why}");
    }
    // A threshold JSON cannot hold as a finite f64.
    let body = String::from_utf8(alarm("limits", ""))
        .expect("utf8")
        .replace("5.0", "1e999");
    let a = put("limits", body.into_bytes()).await;
    reason(&a, StatusCode::BAD_REQUEST);
    assert!(alarms.definitions().is_empty(), "nothing was defined");

    // A whole day, and names people write, are fine.
    let a = put(
        "High 5xx: E1.rate_5",
        alarm(
            "High 5xx: E1.rate_5",
            r#","period_minutes":60,"evaluation_periods":24,"datapoints_to_alarm":24"#,
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let a = put(
        "every-minute-of-a-day",
        alarm("every-minute-of-a-day", r#","evaluation_periods":1440"#),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(alarms.definitions().len(), 2);
}

#[test]
fn configured_alarms_are_held_to_the_same_rules() {
    let parse = |toml_alarm: &str| -> DashboardConfig {
        serde_json::from_str(&format!(r#"{{"alarms":[{toml_alarm}]}}"#)).expect("parses")
    };
    let cfg = parse(&String::from_utf8(alarm("ok", "")).expect("utf8"));
    assert_eq!(cfg.validate(), Ok(()));
    let cfg =
        parse(&String::from_utf8(alarm("ok", r#","evaluation_periods":100000"#)).expect("utf8"));
    assert!(
        cfg.validate()
            .expect_err("a look-back past a day")
            .contains("dashboard.alarms.ok.evaluation_periods")
    );
    let cfg = parse(&String::from_utf8(alarm("a\"b", "")).expect("utf8"));
    assert!(
        cfg.validate()
            .expect_err("a quote in a name")
            .contains("alarm name")
    );
}
