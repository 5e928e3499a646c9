//! The dashboard: merges per-minute partial aggregates from any number of collectors
//! and serves them: an overview, a page per distribution with charts drawn by
//! [`charts`], a JSON and CSV API, Prometheus metrics; alarms are evaluated by [`alarms`].

pub mod alarms;
pub mod charts;
pub mod notify;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use edgelog_record::{MinuteAggregate, MinuteUpdate};
use serde::{Deserialize, Serialize};

/// A refusal of the dashboard's API: a status and a reason, answered as
/// `{"error": "<reason>"}` (`application/json`). Every error the dashboard answers has this
/// shape, extractor rejections (bad query strings, paths, bodies), 404 and 405 included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub reason: String,
}

impl ApiError {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> ApiError {
        ApiError {
            status,
            reason: reason.into(),
        }
    }

    pub fn bad_request(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, reason)
    }

    pub fn not_found(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, reason)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.reason })),
        )
            .into_response()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.reason)
    }
}

macro_rules! rejection_into_api_error {
    ($($rejection:ty),*) => {$(
        impl From<$rejection> for ApiError {
            fn from(r: $rejection) -> ApiError {
                ApiError::new(r.status(), r.body_text())
            }
        }
    )*};
}
rejection_into_api_error!(QueryRejection, PathRejection, BytesRejection, JsonRejection);

/// `axum::extract::Path` whose rejection is an [`ApiError`].
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
struct Path<T>(T);

/// `axum::extract::Query` whose rejection is an [`ApiError`].
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
struct Query<T>(T);

/// Settings of the dashboard. Its `Debug` redacts tokens, passwords and webhook
/// credentials.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
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

impl std::fmt::Debug for DashboardConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const HIDDEN: &str = "<redacted>";
        let tokens: Vec<&str> = self.tokens.iter().map(|_| HIDDEN).collect();
        let users: Vec<String> = self
            .users
            .iter()
            .map(|u| match u.split_once(':') {
                Some((name, _)) => format!("{name}:{HIDDEN}"),
                None => HIDDEN.to_owned(),
            })
            .collect();
        // Scheme and host only: a webhook's path, query or user part may be its key.
        let webhooks: Vec<String> = self
            .webhooks
            .iter()
            .map(|w| {
                let (scheme, rest) = w.split_once("://").unwrap_or(("", w));
                let host = rest.split(['/', '?', '#']).next().unwrap_or("");
                let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
                format!("{scheme}://{host}/{HIDDEN}")
            })
            .collect();
        f.debug_struct("DashboardConfig")
            .field("listen", &self.listen)
            .field("history_minutes", &self.history_minutes)
            .field("alarm_interval", &self.alarm_interval)
            .field("alarms", &self.alarms)
            .field("tokens", &tokens)
            .field("users", &users)
            .field("webhooks", &webhooks)
            .finish()
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
    /// OriginLatency (time-to-first-byte of requests served from the origin), ms; null
    /// in a minute without any.
    pub origin_latency_p50_ms: Option<f64>,
    pub origin_latency_p90_ms: Option<f64>,
    pub origin_latency_p99_ms: Option<f64>,
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
            origin_latency_p50_ms: a.origin_latency.quantile_ms(0.5),
            origin_latency_p90_ms: a.origin_latency.quantile_ms(0.9),
            origin_latency_p99_ms: a.origin_latency.quantile_ms(0.99),
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
    let mut resp =
        ApiError::new(StatusCode::UNAUTHORIZED, "authentication required").into_response();
    resp.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Basic realm=\"edgelog\""),
    );
    resp
}

/// A label value as the Prometheus text exposition format wants it: backslash, double
/// quote and line feed escaped (`\\`, `\"`, `\n`); everything else, any UTF-8, as it is.
pub fn prometheus_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value as the text format spells it (`NaN`, `+Inf`, `-Inf`).
fn prometheus_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        v.to_string()
    }
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
                "edgelog_distribution_{name}{{distribution=\"{}\"}} {}",
                prometheus_label(id),
                prometheus_value(f(p))
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP edgelog_distribution_origin_latency_ms OriginLatency in the last complete minute, by quantile\n# TYPE edgelog_distribution_origin_latency_ms gauge"
    );
    for (id, p) in &last {
        for (q, v) in [
            ("0.5", p.origin_latency_p50_ms),
            ("0.9", p.origin_latency_p90_ms),
            ("0.99", p.origin_latency_p99_ms),
        ] {
            if let Some(v) = v {
                let _ = writeln!(
                    out,
                    "edgelog_distribution_origin_latency_ms{{distribution=\"{}\",quantile=\"{q}\"}} {}",
                    prometheus_label(id),
                    prometheus_value(v)
                );
            }
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
                prometheus_label(&a.alarm),
                prometheus_label(&a.distribution),
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

/// `?range=1h|3h|12h|24h` (default: the whole history), `format=json|csv`, and for CSV
/// `chart=` (one chart's columns).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeriesQuery {
    range: Option<String>,
    format: Option<String>,
    chart: Option<String>,
}

fn bad_request(msg: String) -> Response {
    ApiError::bad_request(msg).into_response()
}

fn not_found(id: &str) -> Response {
    ApiError::not_found(format!("unknown distribution {id:?}")).into_response()
}

/// Chart ranges the pages offer, and their length in ms.
const RANGES: [(&str, i64); 4] = [
    ("1h", 3_600_000),
    ("3h", 3 * 3_600_000),
    ("12h", 12 * 3_600_000),
    ("24h", 24 * 3_600_000),
];

fn range_ms(range: Option<&str>) -> Result<Option<i64>, String> {
    match range {
        None => Ok(None),
        Some(r) => RANGES
            .iter()
            .find(|(name, _)| *name == r)
            .map(|(_, ms)| Some(*ms))
            .ok_or_else(|| format!("range {r:?} is not one of 1h, 3h, 12h, 24h")),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The window a chart shows: the last `range` up to now, or up to the last minute with
/// data when the distribution has been quiet for longer (a replay of old logs).
fn window(points: &[MinutePoint], range: i64) -> (i64, i64) {
    let now = now_ms();
    let now_end = now - now.rem_euclid(60_000) + 60_000;
    let to = match points.last() {
        Some(p) if p.minute_ms + 60_000 < now_end - range => p.minute_ms + 60_000,
        _ => now_end,
    };
    (to - range, to)
}

fn in_window(points: Vec<MinutePoint>, range: Option<i64>) -> Vec<MinutePoint> {
    match range {
        None => points,
        Some(r) => {
            let (from, to) = window(&points, r);
            points
                .into_iter()
                .filter(|p| (from..to).contains(&p.minute_ms))
                .collect()
        }
    }
}

async fn series(
    State(d): State<Dashboard>,
    Path(id): Path<String>,
    Query(q): Query<SeriesQuery>,
) -> Response {
    let range = match range_ms(q.range.as_deref()) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let Some(points) = d.store.series(&id) else {
        return not_found(&id);
    };
    let points = in_window(points, range);
    match q.format.as_deref() {
        None | Some("json") => Json(points).into_response(),
        Some("csv") => {
            let chart = match q
                .chart
                .as_deref()
                .map(|c| charts::Chart::from_slug(c).ok_or(c))
            {
                None => None,
                Some(Ok(c)) => Some(c),
                Some(Err(c)) => return bad_request(format!("unknown chart {c:?}")),
            };
            let name = format!(
                "{id}-{}-{}.csv",
                chart.map_or("all", charts::Chart::slug),
                q.range.as_deref().unwrap_or("all")
            );
            (
                [
                    (
                        axum::http::header::CONTENT_TYPE,
                        "text/csv; charset=utf-8".to_owned(),
                    ),
                    (
                        axum::http::header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{name}\""),
                    ),
                ],
                charts::csv(chart, &points),
            )
                .into_response()
        }
        Some(f) => bad_request(format!("format {f:?} is not json or csv")),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChartQuery {
    range: Option<String>,
}

/// One chart of `points` over the last `range` ms, and how many minutes in it have data.
fn chart_svg(points: &[MinutePoint], chart: charts::Chart, range: i64) -> (String, usize) {
    let (from, to) = window(points, range);
    let shown = points
        .iter()
        .filter(|p| (from..to).contains(&p.minute_ms))
        .filter(|p| chart.lines().iter().any(|(_, get, _)| get(p).is_some()))
        .count();
    let svg = charts::render(chart, points, from, to, (640, 260))
        .unwrap_or_else(|e| format!("<p class=error>cannot draw this chart: {e}</p>"));
    (svg, shown)
}

async fn chart(
    State(d): State<Dashboard>,
    Path((id, slug)): Path<(String, String)>,
    Query(q): Query<ChartQuery>,
) -> Response {
    let range = match range_ms(q.range.as_deref().or(Some("1h"))) {
        Ok(r) => r.unwrap_or(3_600_000),
        Err(e) => return bad_request(e),
    };
    let slug = slug.trim_end_matches(".svg");
    let Some(c) = charts::Chart::from_slug(slug) else {
        return bad_request(format!("unknown chart {slug:?}"));
    };
    match d.store.series(&id) {
        Some(points) => {
            let (svg, _) = chart_svg(&points, c, range);
            ([(axum::http::header::CONTENT_TYPE, "image/svg+xml")], svg).into_response()
        }
        None => not_found(&id),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em 2em;color:#222;background:#f6f7f9}\
a{color:#1f6fb4}h1{margin:.2em 0}h2{margin-top:1.2em}\
table{border-collapse:collapse;background:#fff}td,th{padding:.35em .9em;text-align:right;border-bottom:1px solid #eee}\
td:first-child,th:first-child{text-align:left}.ALARM{color:#c0392b;font-weight:bold}.OK{color:#27ae60;font-weight:bold}\
.INSUFFICIENT_DATA{color:#7f8c8d;font-weight:bold}.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:1em}\
.chart{background:#fff;border:1px solid #e3e5e8;border-radius:6px;padding:.5em}.chart svg{width:100%;height:auto}\
.chart .links{font-size:.85em;text-align:right}.ranges a{margin-right:.8em}.ranges a.on{font-weight:bold;text-decoration:none;color:#222}\
.muted{color:#777;font-size:.9em}";

fn alarm_state_name(s: alarms::AlarmState) -> &'static str {
    match s {
        alarms::AlarmState::Ok => "OK",
        alarms::AlarmState::Alarm => "ALARM",
        alarms::AlarmState::InsufficientData => "INSUFFICIENT_DATA",
    }
}

fn chart_card(
    points: &[MinutePoint],
    id: &str,
    c: charts::Chart,
    range: &str,
    range_ms: i64,
) -> String {
    let (svg, shown) = chart_svg(points, c, range_ms);
    let base = format!("/api/distributions/{}", escape(id));
    format!(
        "<div class=chart data-chart=\"{slug}\" data-points=\"{shown}\"><div class=svg>{svg}</div>\
         <div class=links>data: <a href=\"{base}/series?range={range}&amp;format=csv&amp;chart={slug}\" download>CSV</a> \
         <a href=\"{base}/series?range={range}\" download=\"{slug}.json\">JSON</a></div></div>",
        slug = c.slug()
    )
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    range: Option<String>,
}

async fn distribution_page(
    State(d): State<Dashboard>,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    let range = q.range.unwrap_or_else(|| "1h".into());
    let ms = match range_ms(Some(&range)) {
        Ok(r) => r.unwrap_or(3_600_000),
        Err(e) => return bad_request(e),
    };
    let Some(points) = d.store.series(&id) else {
        return not_found(&id);
    };
    let eid = escape(&id);
    let ranges: String = RANGES
        .iter()
        .map(|(r, _)| {
            let on = if *r == range { " class=on" } else { "" };
            format!("<a{on} href=\"/distributions/{eid}?range={r}\">{r}</a>")
        })
        .collect();
    let six: String = charts::DEFAULT_CHARTS
        .iter()
        .map(|c| chart_card(&points, &id, *c, &range, ms))
        .collect();
    let more: String = charts::ADDITIONAL_CHARTS
        .iter()
        .map(|c| chart_card(&points, &id, *c, &range, ms))
        .collect();
    let alarm_rows = alarm_rows(&d, Some(&id));
    Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><meta name=viewport content=\"width=device-width\">\
         <title>{eid} · edgelog</title><style>{STYLE}</style></head><body>\
         <p><a href=\"/\">← all distributions</a></p><h1>{eid}</h1>\
         <p class=ranges>Last: {ranges} <span class=muted>per minute, by event time, UTC; updates every 10 s</span></p>\
         <h2>Alarms</h2><table id=alarms><tr><th>Alarm</th><th>State</th><th>Last datapoints</th></tr>{alarm_rows}</table>\
         <h2>CloudFront metrics</h2><div class=grid id=default-charts>{six}</div>\
         <h2>Additional metrics</h2><div class=grid id=additional-charts>{more}</div>\
         <script>\
         const id = {id_json}, range = {range_json};\
         async function refresh() {{\
           for (const el of document.querySelectorAll('.chart')) {{\
             const r = await fetch(`/api/distributions/${{encodeURIComponent(id)}}/charts/${{el.dataset.chart}}?range=${{range}}`);\
             if (r.ok) el.querySelector('.svg').innerHTML = await r.text();\
           }}\
           const a = await fetch('/api/alarms');\
           if (a.ok) {{\
             const rows = (await a.json()).filter(s => s.distribution === id);\
             const t = document.getElementById('alarms');\
             t.querySelectorAll('tr.alarm').forEach(r => r.remove());\
             for (const s of rows) {{\
               const tr = t.insertRow(); tr.className = 'alarm';\
               const st = s.state;\
               tr.insertCell().textContent = s.alarm;\
               const c = tr.insertCell(); c.textContent = st; c.className = st;\
               tr.insertCell().textContent = s.datapoints.map(v => v === null ? '–' : v.toFixed(1)).join(', ');\
             }}\
           }}\
         }}\
         setInterval(refresh, 10000);\
         </script></body></html>",
        id_json = serde_json::to_string(&id).unwrap_or_default(),
        range_json = serde_json::to_string(&range).unwrap_or_default(),
    ))
    .into_response()
}

/// `0.4 %, 12.1 %, –`: the datapoints of the last evaluation.
fn datapoints_text(points: &[Option<f64>]) -> String {
    points
        .iter()
        .map(|p| p.map_or("–".to_owned(), |v| format!("{v:.1}")))
        .collect::<Vec<_>>()
        .join(", ")
}

fn alarm_rows(d: &Dashboard, only: Option<&str>) -> String {
    let mut rows = String::new();
    for a in d.alarms.statuses() {
        if only.is_some_and(|id| id != a.distribution) {
            continue;
        }
        let st = alarm_state_name(a.state);
        let dist = if only.is_some() {
            String::new()
        } else {
            format!("<td>{}</td>", escape(&a.distribution))
        };
        rows.push_str(&format!(
            "<tr class=alarm><td>{}</td>{dist}<td class={st}>{st}</td><td>{}</td></tr>",
            escape(&a.alarm),
            datapoints_text(&a.datapoints)
        ));
    }
    rows
}

async fn alarm_states(State(d): State<Dashboard>) -> Json<Vec<alarms::AlarmStatus>> {
    Json(d.alarms.statuses())
}

async fn alarm_definitions(State(d): State<Dashboard>) -> Json<Vec<alarms::AlarmConfig>> {
    Json(d.alarms.definitions())
}

/// `PUT /api/alarms/definitions/{name}` with an alarm as JSON (its `name` must match).
async fn put_alarm(
    State(d): State<Dashboard>,
    Path(name): Path<String>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    alarms::check_alarm_name(&name).map_err(ApiError::bad_request)?;
    let cfg: alarms::AlarmConfig = serde_json::from_slice(&body?)
        .map_err(|e| ApiError::bad_request(format!("invalid alarm: {e}")))?;
    if cfg.name != name {
        return Err(ApiError::bad_request(format!(
            "the alarm's name {:?} differs from the path's {name:?}",
            cfg.name
        )));
    }
    let replaced = d.alarms.put(cfg).map_err(ApiError::bad_request)?;
    tracing::info!(alarm = %name, replaced, "alarm defined through the API");
    let code = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        code,
        Json(serde_json::json!({ "alarm": name, "replaced": replaced })),
    )
        .into_response())
}

async fn delete_alarm(
    State(d): State<Dashboard>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if d.alarms.delete(&name) {
        tracing::info!(alarm = %name, "alarm deleted through the API");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no alarm named {name:?}")))
    }
}

async fn alarm_history(State(d): State<Dashboard>) -> Json<Vec<alarms::Transition>> {
    Json(d.alarms.history())
}

async fn overview(State(d): State<Dashboard>) -> Html<String> {
    let states = d.alarms.statuses();
    let mut rows = String::new();
    for id in d.store.distributions() {
        let Some(points) = d.store.series(&id) else {
            continue;
        };
        let recent = in_window(points, Some(3_600_000));
        // The last complete minute, when there is one.
        let last = recent
            .iter()
            .rev()
            .nth(1)
            .or(recent.last())
            .cloned()
            .unwrap_or_default();
        let worst = states
            .iter()
            .filter(|s| s.distribution == id)
            .map(|s| alarm_state_name(s.state))
            .max_by_key(|s| match *s {
                "ALARM" => 2,
                "INSUFFICIENT_DATA" => 1,
                _ => 0,
            })
            .unwrap_or("");
        let eid = escape(&id);
        rows.push_str(&format!(
            "<tr><td><a href=\"/distributions/{eid}\">{eid}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{:.2} %</td><td>{:.2} %</td><td>{:.2} %</td><td class={worst}>{worst}</td></tr>",
            charts::sparkline(&recent, 160, 28),
            last.requests,
            bytes(last.bytes_downloaded),
            last.error_rate_4xx,
            last.error_rate_5xx,
            last.total_error_rate
        ));
    }
    let alarm_rows = alarm_rows(&d, None);
    Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=10><title>edgelog</title>\
         <style>{STYLE}</style></head><body><h1>edgelog</h1>\
         <p class=muted>Last complete minute per distribution; the line is requests per minute over the last hour.</p>\
         <table><tr><th>Distribution</th><th>Last hour</th><th>Requests</th><th>BytesDownloaded</th><th>4xxErrorRate</th><th>5xxErrorRate</th><th>TotalErrorRate</th><th>Alarms</th></tr>{rows}</table>\
         <h2>Alarms</h2><table><tr><th>Alarm</th><th>Distribution</th><th>State</th><th>Last datapoints</th></tr>{alarm_rows}</table>\
         <p class=muted><a href=\"/api/alarms/history\">alarm history</a> · <a href=\"/metrics\">Prometheus</a></p></body></html>"
    ))
}

fn bytes(n: u64) -> String {
    let n = n as f64;
    match n {
        n if n >= 1e9 => format!("{:.1} GB", n / 1e9),
        n if n >= 1e6 => format!("{:.1} MB", n / 1e6),
        n if n >= 1e3 => format!("{:.1} kB", n / 1e3),
        n => format!("{n} B"),
    }
}

/// 404 for any path the dashboard does not serve.
async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no such page or API: {method} {}", uri.path()))
}

/// 405 for a path served with other methods (the `Allow` header lists them).
async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on {}", uri.path()),
    )
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
        .get(axum::http::header::CONTENT_TYPE)
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
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    let body = serde_json::json!({ "error": reason }).to_string();
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// The dashboard router.
pub fn app(dashboard: Dashboard) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/api/distributions", get(list))
        .route("/distributions/{id}", get(distribution_page))
        .route("/api/distributions/{id}/series", get(series))
        .route("/api/distributions/{id}/charts/{chart}", get(chart))
        .route("/api/alarms", get(alarm_states))
        .route("/api/alarms/history", get(alarm_history))
        .route("/api/alarms/definitions", get(alarm_definitions))
        .route(
            "/api/alarms/definitions/{name}",
            axum::routing::put(put_alarm).delete(delete_alarm),
        )
        .route("/metrics", get(prometheus))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn_with_state(
            dashboard.clone(),
            require_auth,
        ))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(dashboard)
}
