//! The dashboard: merges per-minute partial aggregates from any number of collectors
//! and serves them. This is the thin first version: a JSON API and an overview table;
//! alarms are evaluated by [`alarms`].

pub mod alarms;
pub mod notify;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use edgelog_record::{MinuteAggregate, MinuteUpdate};
use serde::{Deserialize, Serialize};

/// Settings of the dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardConfig {
    /// Address the dashboard listens on.
    pub listen: SocketAddr,
    /// Minutes of history kept per distribution.
    pub history_minutes: usize,
    /// How often alarms are evaluated.
    #[serde(with = "humantime_serde")]
    pub alarm_interval: std::time::Duration,
    /// CloudWatch-style alarms (`distribution = "*"` watches every distribution).
    pub alarms: Vec<alarms::AlarmConfig>,
    /// Bearer tokens that may read the dashboard and its API. With neither tokens nor
    /// users, the dashboard is open (bind it to loopback then).
    pub tokens: Vec<String>,
    /// `user:password` pairs for HTTP basic auth (what a browser prompts for).
    pub users: Vec<String>,
    /// Webhooks (http://) that get every alarm state change in Alertmanager's format.
    pub webhooks: Vec<String>,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            history_minutes: 24 * 60,
            alarm_interval: std::time::Duration::from_secs(10),
            alarms: Vec::new(),
            tokens: Vec::new(),
            users: Vec::new(),
            webhooks: Vec::new(),
        }
    }
}

impl DashboardConfig {
    /// Checks the settings; errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.history_minutes == 0 {
            return Err("dashboard.history_minutes: must be positive".into());
        }
        if self.alarm_interval.is_zero() {
            return Err("dashboard.alarm_interval: must be positive".into());
        }
        for a in &self.alarms {
            a.validate().map_err(|e| format!("dashboard.{e}"))?;
        }
        if let Some(w) = self.webhooks.iter().find(|w| !w.starts_with("http://")) {
            return Err(format!(
                "dashboard.webhooks: {w:?} is not an http:// URL (https is not built in yet)"
            ));
        }
        if self.users.iter().any(|u| !u.contains(':')) {
            return Err("dashboard.users: each entry is \"user:password\"".into());
        }
        if self.tokens.iter().chain(&self.users).any(|t| t.len() < 8) {
            return Err("dashboard.tokens and dashboard.users: 8 characters at least".into());
        }
        Ok(())
    }
}

/// Merged minutes per distribution.
#[derive(Default)]
pub struct MetricsStore {
    series: RwLock<BTreeMap<String, BTreeMap<i64, MinuteAggregate>>>,
    history_minutes: usize,
}

/// One minute of CloudFront's six metrics and the additional ones (rates in percent).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MinutePoint {
    pub minute_ms: i64,
    pub requests: u64,
    pub bytes_downloaded: u64,
    pub bytes_uploaded: u64,
    pub error_rate_4xx: f64,
    pub error_rate_5xx: f64,
    pub total_error_rate: f64,
    pub cache_hit_rate: f64,
    pub error_rate_401: f64,
    pub error_rate_403: f64,
    pub error_rate_404: f64,
    pub error_rate_502: f64,
    pub error_rate_503: f64,
    pub error_rate_504: f64,
}

impl MinutePoint {
    fn of(minute_ms: i64, a: &MinuteAggregate) -> MinutePoint {
        MinutePoint {
            minute_ms,
            requests: a.requests,
            bytes_downloaded: a.bytes_downloaded,
            bytes_uploaded: a.bytes_uploaded,
            error_rate_4xx: a.error_rate_4xx(),
            error_rate_5xx: a.error_rate_5xx(),
            total_error_rate: a.total_error_rate(),
            cache_hit_rate: a.cache_hit_rate(),
            error_rate_401: a.status_rate(401),
            error_rate_403: a.status_rate(403),
            error_rate_404: a.status_rate(404),
            error_rate_502: a.status_rate(502),
            error_rate_503: a.status_rate(503),
            error_rate_504: a.status_rate(504),
        }
    }
}

impl MetricsStore {
    pub fn new(history_minutes: usize) -> MetricsStore {
        MetricsStore {
            series: RwLock::default(),
            history_minutes,
        }
    }

    /// Adds one collector's partial aggregate.
    pub fn merge(&self, u: &MinuteUpdate) {
        let Ok(mut s) = self.series.write() else {
            return;
        };
        let dist = s.entry(u.distribution_id.clone()).or_default();
        dist.entry(u.minute_ms).or_default().merge(&u.aggregate);
        while dist.len() > self.history_minutes {
            dist.pop_first();
        }
    }

    /// Distribution ids seen.
    pub fn distributions(&self) -> Vec<String> {
        self.series
            .read()
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The minutes of one distribution, by start time.
    pub fn series_map(&self, distribution: &str) -> BTreeMap<i64, MinutePoint> {
        let Ok(s) = self.series.read() else {
            return BTreeMap::new();
        };
        s.get(distribution)
            .map(|m| {
                m.iter()
                    .map(|(k, a)| (*k, MinutePoint::of(*k, a)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The series of one distribution, oldest first.
    pub fn series(&self, distribution: &str) -> Option<Vec<MinutePoint>> {
        let s = self.series.read().ok()?;
        Some(
            s.get(distribution)?
                .iter()
                .map(|(m, a)| MinutePoint::of(*m, a))
                .collect(),
        )
    }
}

/// What the dashboard's handlers share.
#[derive(Clone)]
pub struct Dashboard {
    pub store: Arc<MetricsStore>,
    pub alarms: Arc<alarms::AlarmBoard>,
    /// Accepted `Authorization` header values (`Bearer ...`, `Basic ...`); empty: open.
    pub credentials: Arc<Vec<String>>,
}

impl Dashboard {
    pub fn new(
        store: Arc<MetricsStore>,
        alarms: Arc<alarms::AlarmBoard>,
        cfg: &DashboardConfig,
    ) -> Dashboard {
        use base64::Engine;
        let credentials = cfg
            .tokens
            .iter()
            .map(|t| format!("Bearer {t}"))
            .chain(cfg.users.iter().map(|u| {
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(u)
                )
            }))
            .collect();
        Dashboard {
            store,
            alarms,
            credentials: Arc::new(credentials),
        }
    }
}

async fn require_auth(
    State(d): State<Dashboard>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if d.credentials.is_empty() || req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    // Compare with every credential without stopping early.
    let mut ok = subtle::Choice::from(0);
    for c in d.credentials.iter() {
        ok |= subtle::ConstantTimeEq::ct_eq(c.as_bytes(), given);
    }
    if bool::from(ok) {
        return next.run(req).await;
    }
    let mut resp = (
        StatusCode::UNAUTHORIZED,
        Json(serde_json::json!({ "error": "authentication required" })),
    )
        .into_response();
    resp.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Basic realm=\"edgelog\""),
    );
    resp
}

/// A Prometheus gauge: name, help, and how to read it from a minute.
type Gauge = (&'static str, &'static str, fn(&MinutePoint) -> f64);

/// Prometheus text: each distribution's last complete minute, and alarm states.
async fn prometheus(State(d): State<Dashboard>) -> Response {
    use std::fmt::Write;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.as_millis() as i64);
    let current = now - now.rem_euclid(60_000);
    let mut out = String::new();
    let gauges: [Gauge; 13] = [
        ("requests", "Requests in the last complete minute", |p| {
            p.requests as f64
        }),
        (
            "bytes_downloaded",
            "BytesDownloaded in the last complete minute",
            |p| p.bytes_downloaded as f64,
        ),
        (
            "bytes_uploaded",
            "BytesUploaded in the last complete minute",
            |p| p.bytes_uploaded as f64,
        ),
        ("error_rate_4xx_percent", "4xxErrorRate", |p| {
            p.error_rate_4xx
        }),
        ("error_rate_5xx_percent", "5xxErrorRate", |p| {
            p.error_rate_5xx
        }),
        ("total_error_rate_percent", "TotalErrorRate", |p| {
            p.total_error_rate
        }),
        ("cache_hit_rate_percent", "CacheHitRate", |p| {
            p.cache_hit_rate
        }),
        ("error_rate_401_percent", "401ErrorRate", |p| {
            p.error_rate_401
        }),
        ("error_rate_403_percent", "403ErrorRate", |p| {
            p.error_rate_403
        }),
        ("error_rate_404_percent", "404ErrorRate", |p| {
            p.error_rate_404
        }),
        ("error_rate_502_percent", "502ErrorRate", |p| {
            p.error_rate_502
        }),
        ("error_rate_503_percent", "503ErrorRate", |p| {
            p.error_rate_503
        }),
        ("error_rate_504_percent", "504ErrorRate", |p| {
            p.error_rate_504
        }),
    ];
    let last: Vec<(String, MinutePoint)> = d
        .store
        .distributions()
        .into_iter()
        .filter_map(|id| {
            let p = d
                .store
                .series_map(&id)
                .range(..current)
                .next_back()
                .map(|(_, p)| p.clone())?;
            Some((id, p))
        })
        .collect();
    for (name, help, f) in gauges {
        let _ = writeln!(
            out,
            "# HELP edgelog_distribution_{name} {help}\n# TYPE edgelog_distribution_{name} gauge"
        );
        for (id, p) in &last {
            let _ = writeln!(
                out,
                "edgelog_distribution_{name}{{distribution=\"{id}\"}} {}",
                f(p)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP edgelog_alarm_state 1 for the state each alarm is in\n# TYPE edgelog_alarm_state gauge"
    );
    for a in d.alarms.statuses() {
        for (state, label) in [
            (alarms::AlarmState::Ok, "OK"),
            (alarms::AlarmState::Alarm, "ALARM"),
            (alarms::AlarmState::InsufficientData, "INSUFFICIENT_DATA"),
        ] {
            let _ = writeln!(
                out,
                "edgelog_alarm_state{{alarm=\"{}\",distribution=\"{}\",state=\"{label}\"}} {}",
                a.alarm,
                a.distribution,
                u8::from(a.state == state)
            );
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response()
}

async fn list(State(d): State<Dashboard>) -> Json<Vec<String>> {
    Json(d.store.distributions())
}

async fn series(State(d): State<Dashboard>, Path(id): Path<String>) -> Response {
    match d.store.series(&id) {
        Some(points) => Json(points).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": format!("unknown distribution {id:?}") })),
        )
            .into_response(),
    }
}

async fn alarm_states(State(d): State<Dashboard>) -> Json<Vec<alarms::AlarmStatus>> {
    Json(d.alarms.statuses())
}

async fn alarm_history(State(d): State<Dashboard>) -> Json<Vec<alarms::Transition>> {
    Json(d.alarms.history())
}

async fn overview(State(d): State<Dashboard>) -> Html<String> {
    let mut rows = String::new();
    for id in d.store.distributions() {
        if let Some(last) = d.store.series(&id).and_then(|s| s.last().cloned()) {
            rows.push_str(&format!(
                "<tr><td><a href=\"/api/distributions/{id}/series\">{id}</a></td><td>{}</td><td>{}</td><td>{:.2} %</td><td>{:.2} %</td><td>{:.2} %</td></tr>",
                last.requests, last.bytes_downloaded, last.error_rate_4xx, last.error_rate_5xx, last.total_error_rate
            ));
        }
    }
    let mut alarm_rows = String::new();
    for a in d.alarms.statuses() {
        let color = match a.state {
            alarms::AlarmState::Alarm => "#c0392b",
            alarms::AlarmState::Ok => "#27ae60",
            alarms::AlarmState::InsufficientData => "#7f8c8d",
        };
        alarm_rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td style=\"color:{color};font-weight:bold\">{:?}</td></tr>",
            a.alarm, a.distribution, a.state
        ));
    }
    Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=10><title>edgelog</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:2em}}td,th{{padding:.3em 1em;text-align:right}}td:first-child{{text-align:left}}</style></head>\
         <body><h1>edgelog</h1><p>Last minute per distribution.</p><table><tr><th>Distribution</th><th>Requests</th><th>BytesDownloaded</th><th>4xxErrorRate</th><th>5xxErrorRate</th><th>TotalErrorRate</th></tr>{rows}</table>\
         <h2>Alarms</h2><table><tr><th>Alarm</th><th>Distribution</th><th>State</th></tr>{alarm_rows}</table></body></html>"
    ))
}

/// The dashboard router.
pub fn app(dashboard: Dashboard) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/api/distributions", get(list))
        .route("/api/distributions/{id}/series", get(series))
        .route("/api/alarms", get(alarm_states))
        .route("/api/alarms/history", get(alarm_history))
        .route("/metrics", get(prometheus))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(axum::middleware::from_fn_with_state(
            dashboard.clone(),
            require_auth,
        ))
        .with_state(dashboard)
}
