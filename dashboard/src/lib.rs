//! The dashboard: merges per-minute partial aggregates from any number of collectors
//! and serves them. This is the thin first version: a JSON API and an overview table;
//! alarms are evaluated by [`alarms`].

pub mod alarms;

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
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            history_minutes: 24 * 60,
        }
    }
}

impl DashboardConfig {
    /// Checks the settings; errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.history_minutes == 0 {
            return Err("dashboard.history_minutes: must be positive".into());
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

async fn list(State(store): State<Arc<MetricsStore>>) -> Json<Vec<String>> {
    Json(store.distributions())
}

async fn series(State(store): State<Arc<MetricsStore>>, Path(id): Path<String>) -> Response {
    match store.series(&id) {
        Some(points) => Json(points).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": format!("unknown distribution {id:?}") })),
        )
            .into_response(),
    }
}

async fn overview(State(store): State<Arc<MetricsStore>>) -> Html<String> {
    let mut rows = String::new();
    for d in store.distributions() {
        if let Some(last) = store.series(&d).and_then(|s| s.last().cloned()) {
            rows.push_str(&format!(
                "<tr><td><a href=\"/api/distributions/{d}/series\">{d}</a></td><td>{}</td><td>{}</td><td>{:.2} %</td><td>{:.2} %</td><td>{:.2} %</td></tr>",
                last.requests, last.bytes_downloaded, last.error_rate_4xx, last.error_rate_5xx, last.total_error_rate
            ));
        }
    }
    Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=10><title>edgelog</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:2em}}td,th{{padding:.3em 1em;text-align:right}}td:first-child{{text-align:left}}</style></head>\
         <body><h1>edgelog</h1><p>Last minute per distribution.</p><table><tr><th>Distribution</th><th>Requests</th><th>BytesDownloaded</th><th>4xxErrorRate</th><th>5xxErrorRate</th><th>TotalErrorRate</th></tr>{rows}</table></body></html>"
    ))
}

/// The dashboard router.
pub fn app(store: Arc<MetricsStore>) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/api/distributions", get(list))
        .route("/api/distributions/{id}/series", get(series))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(store)
}
