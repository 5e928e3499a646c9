//! A dashboard on loopback answers only under its own names (a page of another site that
//! resolves its name to 127.0.0.1 cannot read or change it: DNS rebinding), and alarm
//! definitions change only with credentials, or with `allow_unauthenticated_writes`.

mod common;

use std::sync::Arc;

use axum::http::StatusCode;
use edgelog_dashboard::alarms::AlarmBoard;
use edgelog_dashboard::{
    Dashboard, DashboardConfig, MetricsStore, app, last_complete_minute, loopback_hosts,
};
use edgelog_record::MinuteAggregate;

const ALARM: &str = r#"{"name":"a","distribution":"*","metric":"5xxErrorRate","comparison":"GreaterThanThreshold","threshold":5}"#;

fn router(cfg: &DashboardConfig) -> (Arc<AlarmBoard>, axum::Router) {
    let alarms = Arc::new(AlarmBoard::new(Vec::new()));
    let r = app(Dashboard::new(
        Arc::new(MetricsStore::new(60)),
        alarms.clone(),
        cfg,
    ));
    (alarms, r)
}

async fn call(
    r: &axum::Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, String) {
    let a = common::call(r, method, uri, headers, body.to_owned()).await;
    let (status, body) = (a.status, a.body);
    if !status.is_success() {
        assert_eq!(a.content_type, "application/json", "{status}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("a JSON refusal");
        assert!(v["error"].is_string(), "{body}");
    }
    (status, body)
}

#[tokio::test]
async fn on_loopback_only_its_own_host_names_are_answered() {
    let cfg = DashboardConfig {
        listen: "127.0.0.1:8081".parse().expect("addr"),
        ..DashboardConfig::default()
    };
    let (_, r) = router(&cfg);
    for host in [
        "127.0.0.1:8081",
        "localhost:8081",
        "LOCALHOST:8081",
        "[::1]:8081",
    ] {
        for path in ["/", "/api/distributions", "/metrics", "/api/alarms"] {
            let (status, body) = call(&r, "GET", path, &[("host", host)], "").await;
            assert_eq!(status, StatusCode::OK, "{host} {path}: {body}");
        }
    }
    for host in [
        "evil.example:8081",
        "evil.example",
        "localhost",
        "127.0.0.1",
        "localhost:8082",
        "127.0.0.1.nip.io:8081",
        "localhost.evil.example:8081",
    ] {
        for (method, path) in [
            ("GET", "/"),
            ("GET", "/api/distributions"),
            ("GET", "/metrics"),
            ("PUT", "/api/alarms/definitions/a"),
            ("GET", "/nope"),
        ] {
            let (status, body) = call(&r, method, path, &[("host", host)], ALARM).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{host} {method} {path}: {body}"
            );
            assert!(body.contains("DNS rebinding"), "{body}");
        }
    }
    // No Host at all (no browser sends that), and the health check, pass.
    let (status, _) = call(&r, "GET", "/api/distributions", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&r, "GET", "/healthz", &[("host", "evil.example")], "").await;
    assert_eq!(status, StatusCode::OK);

    // Listening on every interface, any name may lead to it: no check.
    let open = DashboardConfig {
        listen: "0.0.0.0:8081".parse().expect("addr"),
        ..DashboardConfig::default()
    };
    let (_, r) = router(&open);
    let (status, _) = call(&r, "GET", "/", &[("host", "dash.example.com")], "").await;
    assert_eq!(status, StatusCode::OK);

    // Port 80 may go without it; an IPv6 loopback listener answers to its own name.
    let hosts = loopback_hosts("127.0.0.1:80".parse().expect("addr")).expect("loopback");
    assert!(hosts.contains(&"localhost".to_owned()) && hosts.contains(&"localhost:80".to_owned()));
    let hosts = loopback_hosts("[::1]:9000".parse().expect("addr")).expect("loopback");
    assert!(hosts.contains(&"[::1]:9000".to_owned()), "{hosts:?}");
    assert!(!hosts.iter().any(|h| h == "[::1]"), "{hosts:?}");
    assert_eq!(loopback_hosts("10.0.0.1:80".parse().expect("addr")), None);
}

#[tokio::test]
async fn without_credentials_alarm_definitions_are_read_only_unless_allowed() {
    let (alarms, r) = router(&DashboardConfig::default());
    let (status, body) = call(&r, "PUT", "/api/alarms/definitions/a", &[], ALARM).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("allow_unauthenticated_writes"), "{body}");
    let (status, _) = call(&r, "DELETE", "/api/alarms/definitions/a", &[], "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(alarms.definitions().is_empty());
    // Reading stays open.
    let (status, body) = call(&r, "GET", "/api/alarms/definitions", &[], "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "[]"));

    // With credentials, writes need them (like everything else).
    let locked = DashboardConfig {
        tokens: vec!["dash-token-123".into()],
        ..DashboardConfig::default()
    };
    let (alarms, r) = router(&locked);
    let (status, _) = call(&r, "PUT", "/api/alarms/definitions/a", &[], ALARM).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let auth = [("authorization", "Bearer dash-token-123")];
    let (status, body) = call(&r, "PUT", "/api/alarms/definitions/a", &auth, ALARM).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = call(&r, "PUT", "/api/alarms/definitions/a", &auth, ALARM).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"changed\":false"), "{body}");
    let (status, _) = call(&r, "DELETE", "/api/alarms/definitions/a", &[], "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call(&r, "DELETE", "/api/alarms/definitions/a", &auth, "").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(alarms.definitions().is_empty());

    // Or with the explicit switch, for local experiments.
    let allowed = DashboardConfig {
        allow_unauthenticated_writes: true,
        ..DashboardConfig::default()
    };
    let (alarms, r) = router(&allowed);
    let (status, body) = call(&r, "PUT", "/api/alarms/definitions/a", &[], ALARM).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(alarms.definitions().len(), 1);
    assert!(format!("{allowed:?}").contains("allow_unauthenticated_writes: true"));
}

/// An id read from a metrics topic is not checked by a collector: one that holds
/// `</script>` is shown as text, and cannot end the page's script.
#[tokio::test]
async fn a_distribution_id_cannot_end_the_page_script() {
    let store = Arc::new(MetricsStore::new(60));
    let evil = "E</script><script>alert(1)</script>";
    let one = MinuteAggregate {
        requests: 1,
        ..Default::default()
    };
    common::merge(&store, evil, last_complete_minute(common::now_ms()), one);
    let r = common::router(store);
    let uri = "/distributions/E%3C%2Fscript%3E%3Cscript%3Ealert(1)%3C%2Fscript%3E";
    let (status, page) = call(&r, "GET", uri, &[("host", "127.0.0.1:8081")], "").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(!page.contains("<script>alert(1)"), "{page}");
    assert_eq!(
        page.matches("</script>").count(),
        1,
        "only the page's own: {page}"
    );
}
