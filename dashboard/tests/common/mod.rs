//! What the dashboard's tests share: the clock, a minute merged into a store, a dashboard
//! over a store, a simple alarm, one request through `oneshot`, and Python's
//! `prometheus_client` reading an exposition.

// Each test file uses only some of these.
#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use edgelog_dashboard::alarms::{AlarmBoard, AlarmConfig, Comparison, Metric, MissingData};
use edgelog_dashboard::{Dashboard, DashboardConfig, MetricsStore, app};
use edgelog_record::{MinuteAggregate, MinuteUpdate};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use tower::ServiceExt;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// Merges `aggregate` into `store` as collector "c"'s minute `minute_ms` of distribution
/// `id`.
pub fn merge(store: &MetricsStore, id: &str, minute_ms: i64, aggregate: MinuteAggregate) {
    store.merge(&MinuteUpdate {
        collector_id: "c".into(),
        distribution_id: id.into(),
        minute_ms,
        aggregate,
        report: None,
    });
}

/// The dashboard over `store`, without alarms, configured by default.
pub fn router(store: Arc<MetricsStore>) -> axum::Router {
    app(Dashboard::new(
        store,
        Arc::new(AlarmBoard::new(Vec::new())),
        &DashboardConfig::default(),
    ))
}

/// An alarm on `metric` of every distribution: above 5 in one minute of one.
pub fn alarm(name: &str, metric: Metric) -> AlarmConfig {
    AlarmConfig {
        name: name.into(),
        distribution: "*".into(),
        metric,
        comparison: Comparison::GreaterThanThreshold,
        threshold: 5.0,
        period_minutes: 1,
        evaluation_periods: 1,
        datapoints_to_alarm: 1,
        treat_missing_data: MissingData::Missing,
    }
}

/// What the dashboard answered to [`call`].
pub struct Answer {
    pub status: StatusCode,
    /// The `content-type` header, "" without one.
    pub content_type: String,
    /// The `allow` header.
    pub allow: Option<String>,
    /// The body, lossily as UTF-8.
    pub body: String,
    /// The body as it came.
    pub bytes: Vec<u8>,
}

/// One request through `router`: `method` on `uri`, with `headers` and `body`.
pub async fn call(
    router: &axum::Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = router
        .clone()
        .oneshot(req.body(body.into()).expect("request"))
        .await
        .expect("response");
    let header = |name| {
        resp.headers()
            .get(name)
            .map(|v: &axum::http::HeaderValue| v.to_str().unwrap_or_default().to_owned())
    };
    let content_type = header(header::CONTENT_TYPE).unwrap_or_default();
    let allow = header(header::ALLOW);
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    Answer {
        status,
        content_type,
        allow,
        body: String::from_utf8_lossy(&bytes).into_owned(),
        bytes: bytes.to_vec(),
    }
}

/// What every [`prometheus_client`] script starts with.
const PRELUDE: &str = r#"
import json, math, sys
try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError as e:
    sys.exit(f"prometheus_client is missing ({e}): run scripts/install-test-deps.sh")
"#;

/// Runs the Python `script` (after `import json, math, sys` and prometheus_client's
/// `text_string_to_metric_families`) with the exposition `text` on its stdin, and reads
/// the JSON it prints. Without python3 or prometheus_client (which
/// `scripts/install-test-deps.sh` installs) it fails: it never skips.
pub fn prometheus_client<T: DeserializeOwned>(script: &str, text: &str) -> T {
    let mut child = Command::new("python3")
        .args(["-c", &format!("{PRELUDE}{script}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/install-test-deps.sh installs what the tests need)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to python");
    let out = child.wait_with_output().expect("python ends");
    assert!(
        out.status.success(),
        "the parser (python3, prometheus_client) failed or refused the exposition: {}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the parser's samples as JSON")
}
