//! The router, and the JSON, CSV and SVG API: distributions, their series and charts,
//! alarm states, history and definitions.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, put};
use axum::{Extension, Router};
use serde::Deserialize;

use crate::alarms::{self, AlarmBoard, AlarmConfig, PutOutcome};
use crate::auth::Scope;
use crate::charts::Chart;
use crate::config::DashboardConfig;
use crate::error::{ApiError, Path, Query, error_body};
use crate::store::MetricsStore;
use crate::{auth, pages, prometheus};

/// What the dashboard's handlers share.
#[derive(Clone)]
pub struct Dashboard {
    pub store: Arc<MetricsStore>,
    pub alarms: Arc<AlarmBoard>,
    /// Accepted `Authorization` header values (`Bearer ...`, `Basic ...`); empty: open.
    pub credentials: Arc<Vec<String>>,
    /// `Host` values accepted (lower case) when the dashboard listens on loopback; `None`
    /// when it listens elsewhere (any name may lead to it then).
    pub allowed_hosts: Arc<Option<Vec<String>>>,
    /// Whether alarm definitions may be changed: with credentials (they are then
    /// required), or with `allow_unauthenticated_writes`.
    pub writes_allowed: bool,
    /// Tokens scoped to distributions, each with whether it may write.
    pub scoped: Arc<Vec<(edgelog_collector::ScopedToken, bool)>>,
    /// Where alarms made through the API are kept, if anywhere.
    pub kept: Option<Arc<crate::kept::KeptAlarms>>,
    /// Real-time records for the live tail, if any reach this dashboard.
    pub tail: Option<crate::tail::TailSource>,
    pub tail_limits: crate::tail::TailLimits,
    /// Live tail pages open: one permit each.
    pub tail_viewers: Arc<tokio::sync::Semaphore>,
    /// Becomes true when shutdown begins: live tails end.
    pub closing: tokio::sync::watch::Receiver<bool>,
}

impl Dashboard {
    pub fn new(
        store: Arc<MetricsStore>,
        alarms: Arc<AlarmBoard>,
        cfg: &DashboardConfig,
    ) -> Dashboard {
        let credentials = auth::credentials(cfg);
        let scoped: Vec<_> = cfg
            .scoped_tokens
            .iter()
            .map(|t| (t.as_ingest(), t.write))
            .collect();
        let writes_allowed =
            !credentials.is_empty() || !scoped.is_empty() || cfg.allow_unauthenticated_writes;
        Dashboard {
            store,
            alarms,
            credentials: Arc::new(credentials),
            allowed_hosts: Arc::new(auth::loopback_hosts(cfg.listen)),
            writes_allowed,
            scoped: Arc::new(scoped),
            kept: None,
            tail: None,
            tail_limits: crate::tail::TailLimits {
                max_per_second: cfg.tail_max_per_second,
                max_viewers: cfg.tail_max_viewers,
            },
            tail_viewers: Arc::new(tokio::sync::Semaphore::new(cfg.tail_max_viewers)),
            closing: tokio::sync::watch::channel(false).1,
        }
    }

    /// Live tail from `source`; tails end when `closing` turns true.
    pub fn with_tail(
        mut self,
        source: Option<crate::tail::TailSource>,
        closing: tokio::sync::watch::Receiver<bool>,
    ) -> Dashboard {
        self.tail = source;
        self.closing = closing;
        self
    }

    /// Keeps alarms made through the API in `kept`.
    pub fn with_kept_alarms(mut self, kept: Arc<crate::kept::KeptAlarms>) -> Dashboard {
        self.kept = Some(kept);
        self
    }
}

/// The dashboard router.
pub fn app(dashboard: Dashboard) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/api/distributions", get(list))
        .route("/distributions/{id}", get(pages::distribution))
        .route("/distributions/{id}/tail", get(pages::tail))
        .route("/api/distributions/{id}/tail", get(crate::tail::tail))
        .route("/api/distributions/{id}/series", get(series))
        .route(
            "/distributions/{id}/reports/{report}",
            get(crate::reports::page),
        )
        .route(
            "/api/distributions/{id}/reports/{report}",
            get(crate::reports::api),
        )
        .route("/api/distributions/{id}/charts/{chart}", get(chart))
        .route("/api/alarms", get(alarm_states))
        .route("/api/alarms/history", get(alarm_history))
        .route("/api/alarms/definitions", get(alarm_definitions))
        .route(
            "/api/alarms/definitions/{name}",
            put(put_alarm)
                .delete(delete_alarm)
                .route_layer(axum::middleware::from_fn_with_state(
                    dashboard.clone(),
                    auth::check_writes,
                )),
        )
        .route("/metrics", get(prometheus::metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn_with_state(
            dashboard.clone(),
            auth::require_auth,
        ))
        .layer(axum::middleware::from_fn_with_state(
            dashboard.clone(),
            auth::check_host,
        ))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(dashboard)
}

/// Chart ranges the pages offer, and their length in ms.
pub(crate) const RANGES: [(&str, i64); 4] = [
    ("1h", 3_600_000),
    ("3h", 3 * 3_600_000),
    ("12h", 12 * 3_600_000),
    ("24h", 24 * 3_600_000),
];

/// The length of `?range=`, `None` without one.
pub(crate) fn range_ms(range: Option<&str>) -> Result<Option<i64>, ApiError> {
    match range {
        None => Ok(None),
        Some(r) => RANGES
            .iter()
            .find(|(name, _)| *name == r)
            .map(|(_, ms)| Some(*ms))
            .ok_or_else(|| ApiError::BadRange(r.to_owned())),
    }
}

fn chart_named(slug: &str) -> Result<Chart, ApiError> {
    Chart::from_slug(slug).ok_or_else(|| ApiError::UnknownChart(slug.to_owned()))
}

async fn list(State(d): State<Dashboard>, Extension(scope): Extension<Scope>) -> Json<Vec<String>> {
    let mut ids = d.store.distributions();
    ids.retain(|id| scope.sees(id));
    Json(ids)
}

/// `?range=1h|3h|12h|24h` (default: the whole history), `format=json|csv`, and for CSV
/// `chart=` (one chart's columns).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeriesQuery {
    range: Option<String>,
    format: Option<String>,
    chart: Option<String>,
}

async fn series(
    State(d): State<Dashboard>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
    Query(q): Query<SeriesQuery>,
) -> Result<Response, ApiError> {
    scope.check(&id)?;
    let points = match range_ms(q.range.as_deref())? {
        Some(r) => d.store.recent(&id, r),
        None => d.store.series(&id),
    };
    let points = points.ok_or_else(|| ApiError::UnknownDistribution(id.clone()))?;
    // `chart=` is checked whatever the format (it picks the CSV's columns).
    let chart = q.chart.as_deref().map(chart_named).transpose()?;
    match q.format.as_deref() {
        None | Some("json") => Ok(Json(points).into_response()),
        Some("csv") => {
            let name = format!(
                "{id}-{}-{}.csv",
                chart.map_or("all", Chart::slug),
                q.range.as_deref().unwrap_or("all")
            );
            Ok((
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{name}\""),
                    ),
                ],
                crate::charts::csv(chart, &points),
            )
                .into_response())
        }
        Some(f) => Err(ApiError::BadFormat(f.to_owned())),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChartQuery {
    range: Option<String>,
}

/// One chart as SVG (what the distribution page redraws every 10 s).
async fn chart(
    State(d): State<Dashboard>,
    Extension(scope): Extension<Scope>,
    Path((id, slug)): Path<(String, String)>,
    Query(q): Query<ChartQuery>,
) -> Result<Response, ApiError> {
    scope.check(&id)?;
    let range = range_ms(q.range.as_deref().or(Some("1h")))?.unwrap_or(3_600_000);
    let c = chart_named(slug.trim_end_matches(".svg"))?;
    let points = d
        .store
        .recent(&id, range)
        .ok_or(ApiError::UnknownDistribution(id))?;
    let (svg, _) = pages::chart_svg(&points, c, range);
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}

async fn alarm_states(
    State(d): State<Dashboard>,
    Extension(scope): Extension<Scope>,
) -> Json<Vec<alarms::AlarmStatus>> {
    let mut states = d.alarms.statuses();
    states.retain(|s| scope.sees(&s.distribution));
    Json(states)
}

/// Definitions on `*` (they say nothing of other distributions) and on its own.
async fn alarm_definitions(
    State(d): State<Dashboard>,
    Extension(scope): Extension<Scope>,
) -> Json<Vec<AlarmConfig>> {
    let mut defs = d.alarms.definitions();
    defs.retain(|a| a.distribution == "*" || scope.sees(&a.distribution));
    Json(defs)
}

/// `PUT /api/alarms/definitions/{name}` with an alarm as JSON (its `name` must match).
async fn put_alarm(
    State(d): State<Dashboard>,
    Extension(scope): Extension<Scope>,
    Path(name): Path<String>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    alarms::check_alarm_name(&name).map_err(ApiError::BadAlarm)?;
    let cfg: AlarmConfig =
        serde_json::from_slice(&body?).map_err(|e| ApiError::AlarmNotParsed(e.to_string()))?;
    if cfg.name != name {
        return Err(ApiError::AlarmNameMismatch {
            body: cfg.name,
            path: name,
        });
    }
    scope.check_write(&cfg.distribution, None)?;
    // Nor may it take over an alarm of another distribution under the same name.
    if let Some(old) = d.alarms.definitions().iter().find(|a| a.name == name) {
        scope.check_write(&old.distribution, Some(&name))?;
    }
    let _writing = d.kept.as_ref().map(|k| k.writing());
    let before = d.alarms.definitions().into_iter().find(|a| a.name == name);
    let outcome = d.alarms.put(cfg.clone()).map_err(ApiError::BadAlarm)?;
    if let Some(kept) = &d.kept
        && let Err(e) = kept.put(cfg)
    {
        // In effect only if kept: back to what was.
        match before {
            Some(b) => drop(d.alarms.put(b)),
            None => drop(d.alarms.delete(&name)),
        }
        return Err(ApiError::NotKept(e));
    }
    tracing::info!(alarm = %name, ?outcome, "alarm defined through the API");
    let (code, replaced, changed) = match outcome {
        PutOutcome::Created => (StatusCode::CREATED, false, true),
        PutOutcome::Replaced => (StatusCode::OK, true, true),
        // The same definition again: states, and notifications, carry on untouched.
        PutOutcome::Unchanged => (StatusCode::OK, true, false),
    };
    Ok((
        code,
        Json(serde_json::json!({ "alarm": name, "replaced": replaced, "changed": changed })),
    )
        .into_response())
}

async fn delete_alarm(
    State(d): State<Dashboard>,
    Extension(scope): Extension<Scope>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    // The same answer whether the alarm exists or not, unless the caller may write it.
    let on = d
        .alarms
        .definitions()
        .iter()
        .find(|a| a.name == name)
        .map_or_else(|| "*".to_owned(), |a| a.distribution.clone());
    scope.check_write(&on, Some(&name))?;
    let _writing = d.kept.as_ref().map(|k| k.writing());
    if let Some(kept) = &d.kept {
        kept.delete(&name).map_err(ApiError::NotKept)?;
    }
    if d.alarms.delete(&name) {
        tracing::info!(alarm = %name, "alarm deleted through the API");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NoSuchAlarm(name))
    }
}

async fn alarm_history(
    State(d): State<Dashboard>,
    Extension(scope): Extension<Scope>,
) -> Json<Vec<alarms::Transition>> {
    let mut history = d.alarms.history();
    history.retain(|t| scope.sees(&t.distribution));
    Json(history)
}

/// 404 for any path the dashboard does not serve.
async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NoRoute {
        method,
        path: uri.path().to_owned(),
    }
}

/// 405 for a path served with other methods (the `Allow` header lists them).
async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method,
        path: uri.path().to_owned(),
    }
}

/// Largest error body turned into a JSON reason by [`json_errors`].
const ERROR_TEXT_LIMIT: usize = 4096;

/// The net under everything: an error answered in any other shape than JSON (a layer's
/// plain-text refusal, say) becomes `{"error": "<its text>"}`, headers kept.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, ERROR_TEXT_LIMIT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let reason = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = error_body(&reason).to_string();
    Response::from_parts(parts, axum::body::Body::from(body))
}
