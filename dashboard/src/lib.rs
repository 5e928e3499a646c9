//! The dashboard: merges per-minute partial aggregates from any number of collectors
//! and serves them: an overview, a page per distribution with charts drawn by
//! [`charts`], a JSON and CSV API, Prometheus metrics; alarms are evaluated by [`alarms`].
//!
//! Long (about 1,200 lines) because config, store, auth, API, pages and Prometheus still live
//! together; splitting them into modules is planned (the shape issue).

pub mod alarms;
pub mod charts;
pub mod notify;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

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
    /// Lets anyone who reaches the dashboard add, replace and delete alarm definitions
    /// (`PUT`/`DELETE /api/alarms/definitions/{name}`) when it has neither tokens nor
    /// users. Off by default: an open dashboard is read-only.
    pub allow_unauthenticated_writes: bool,
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
            allow_unauthenticated_writes: false,
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
            .field(
                "allow_unauthenticated_writes",
                &self.allow_unauthenticated_writes,
            )
            .finish()
    }
}

impl DashboardConfig {
    /// Checks the settings; errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.history_minutes == 0 || self.history_minutes > 44_640 {
            return Err(format!(
                "dashboard.history_minutes: must be from 1 to 44640 (31 days), got {}",
                self.history_minutes
            ));
        }
        if self.alarm_interval < std::time::Duration::from_millis(100)
            || self.alarm_interval > std::time::Duration::from_secs(3600)
        {
            return Err(format!(
                "dashboard.alarm_interval: must be from 100ms to 1h, got {:?}",
                self.alarm_interval
            ));
        }
        for a in &self.alarms {
            a.validate().map_err(|e| format!("dashboard.{e}"))?;
        }
        // The URL itself is not repeated: it may carry credentials.
        if let Some(i) = self.webhooks.iter().position(|w| !w.starts_with("http://")) {
            return Err(format!(
                "dashboard.webhooks: entry #{} is not an http:// URL (https is not built in yet)",
                i + 1
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
    series: RwLock<Series>,
    history_minutes: usize,
}

/// Every distribution's minutes, and a counter of changes.
#[derive(Default)]
pub(crate) struct Series {
    pub(crate) distributions: BTreeMap<String, Minutes>,
    /// Number of the latest change (a merge or a minute dropped from history).
    pub(crate) last_change: u64,
}

/// Changes to one distribution listed for incremental alarm evaluation; older ones are
/// forgotten (an evaluation that missed them looks at its whole window again).
const CHANGE_LOG: usize = 512;

/// One distribution's minutes, and which of them changed lately.
#[derive(Default)]
pub(crate) struct Minutes {
    pub(crate) by_minute: BTreeMap<i64, MinuteAggregate>,
    /// `(change number, minute)` of the latest changes, oldest first.
    pub(crate) changes: std::collections::VecDeque<(u64, i64)>,
    /// Changes numbered up to this one are no longer listed.
    pub(crate) forgotten: u64,
}

impl Minutes {
    fn changed(&mut self, change: u64, minute: i64) {
        match self.changes.back_mut() {
            // A minute in progress changes again and again: listed once, with its latest.
            Some(last) if last.1 == minute => last.0 = change,
            _ => self.changes.push_back((change, minute)),
        }
        while self.changes.len() > CHANGE_LOG {
            if let Some((n, _)) = self.changes.pop_front() {
                self.forgotten = n;
            }
        }
    }
}

/// Minutes further than this from 1970 (about 285,000 years) are ignored: no arithmetic
/// on them can overflow, and they convert to f64 exactly.
const MAX_ABS_MINUTE_MS: i64 = 1 << 53;

/// A percentage `n / d`, or `None` when `d` is 0 (no data, not 0 %).
pub(crate) fn percent(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| n as f64 * 100.0 / d as f64)
}

/// One minute of CloudFront's six metrics and the additional ones (rates in percent).
/// A rate is `null` when its denominator is 0: the error rates in a minute without
/// requests, CacheHitRate in a minute where nothing was cacheable.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MinutePoint {
    pub minute_ms: i64,
    pub requests: u64,
    pub bytes_downloaded: u64,
    pub bytes_uploaded: u64,
    pub error_rate_4xx: Option<f64>,
    pub error_rate_5xx: Option<f64>,
    pub total_error_rate: Option<f64>,
    /// Hits over cacheable requests (Hit, RefreshHit, Miss).
    pub cache_hit_rate: Option<f64>,
    pub error_rate_401: Option<f64>,
    pub error_rate_403: Option<f64>,
    pub error_rate_404: Option<f64>,
    pub error_rate_502: Option<f64>,
    pub error_rate_503: Option<f64>,
    pub error_rate_504: Option<f64>,
    /// OriginLatency (time-to-first-byte of requests served from the origin), ms; null
    /// in a minute without any.
    pub origin_latency_p50_ms: Option<f64>,
    pub origin_latency_p90_ms: Option<f64>,
    pub origin_latency_p99_ms: Option<f64>,
}

/// A quantile of OriginLatency in ms. The sketch's lowest bucket holds everything up to
/// 1 µs and reads as 0.001 ms; a time-to-first-byte that small is 0 ms.
fn origin_latency_ms(sketch: &edgelog_record::LatencySketch, q: f64) -> Option<f64> {
    sketch
        .quantile_ms(q)
        .map(|ms| if ms <= 0.001 { 0.0 } else { ms })
}

impl MinutePoint {
    /// The metrics of one minute's aggregate.
    pub fn of(minute_ms: i64, a: &MinuteAggregate) -> MinutePoint {
        let requests = a.requests;
        let detail = |i: usize| percent(a.status_detail[i], requests);
        MinutePoint {
            minute_ms,
            requests,
            bytes_downloaded: a.bytes_downloaded,
            bytes_uploaded: a.bytes_uploaded,
            error_rate_4xx: percent(a.status_4xx, requests),
            error_rate_5xx: percent(a.status_5xx, requests),
            total_error_rate: percent(a.status_4xx.saturating_add(a.status_5xx), requests),
            cache_hit_rate: percent(a.cache_hits, a.cacheable),
            error_rate_401: detail(0),
            error_rate_403: detail(1),
            error_rate_404: detail(2),
            error_rate_502: detail(3),
            error_rate_503: detail(4),
            error_rate_504: detail(5),
            origin_latency_p50_ms: origin_latency_ms(&a.origin_latency, 0.5),
            origin_latency_p90_ms: origin_latency_ms(&a.origin_latency, 0.9),
            origin_latency_p99_ms: origin_latency_ms(&a.origin_latency, 0.99),
        }
    }

    /// A minute without records, as CloudWatch reports it: no requests, no bytes, no
    /// rates, no latency.
    pub fn quiet(minute_ms: i64) -> MinutePoint {
        MinutePoint {
            minute_ms,
            ..MinutePoint::default()
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

    // A panic while the lock was held leaves at worst one merge half applied (sums
    // saturate, maps stay valid): better than dropping every later merge and read.
    fn write(&self) -> RwLockWriteGuard<'_, Series> {
        self.series.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Read access (alarm evaluation reads the minutes in place).
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Series> {
        self.series.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds one collector's partial aggregate (sums saturate, they never wrap). A minute
    /// that does not start on a minute, or lies beyond ±285,000 years, is ignored.
    pub fn merge(&self, u: &MinuteUpdate) {
        if u.minute_ms.rem_euclid(60_000) != 0 || u.minute_ms.abs() > MAX_ABS_MINUTE_MS {
            tracing::debug!(minute_ms = u.minute_ms, distribution = %u.distribution_id, "implausible minute ignored");
            return;
        }
        let mut s = self.write();
        s.last_change += 1;
        let change = s.last_change;
        let dist = s
            .distributions
            .entry(u.distribution_id.clone())
            .or_default();
        dist.by_minute
            .entry(u.minute_ms)
            .or_default()
            .merge(&u.aggregate);
        dist.changed(change, u.minute_ms);
        while dist.by_minute.len() > self.history_minutes {
            if let Some((minute, _)) = dist.by_minute.pop_first() {
                dist.changed(change, minute);
            }
        }
    }

    /// Distribution ids seen.
    pub fn distributions(&self) -> Vec<String> {
        self.read().distributions.keys().cloned().collect()
    }

    /// One minute of one distribution: `None` for an unknown distribution, a quiet minute
    /// (no requests, no rates) when it has no data in that minute.
    pub fn minute(&self, distribution: &str, minute_ms: i64) -> Option<MinutePoint> {
        let s = self.read();
        let d = s.distributions.get(distribution)?;
        Some(d.by_minute.get(&minute_ms).map_or_else(
            || MinutePoint::quiet(minute_ms),
            |a| MinutePoint::of(minute_ms, a),
        ))
    }

    /// The minutes of one distribution, by start time.
    pub fn series_map(&self, distribution: &str) -> BTreeMap<i64, MinutePoint> {
        self.read()
            .distributions
            .get(distribution)
            .map(|m| {
                m.by_minute
                    .iter()
                    .map(|(k, a)| (*k, MinutePoint::of(*k, a)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The minutes with data of one distribution in the window a chart of `range_ms`
    /// shows (see [`window`]), oldest first.
    pub fn recent(&self, distribution: &str, range_ms: i64) -> Option<Vec<MinutePoint>> {
        let s = self.read();
        let d = s.distributions.get(distribution)?;
        let (from, to) = window_of(d.by_minute.last_key_value().map(|(m, _)| *m), range_ms);
        Some(
            d.by_minute
                .range(from..to)
                .map(|(m, a)| MinutePoint::of(*m, a))
                .collect(),
        )
    }

    /// The series of one distribution, oldest first (minutes with data).
    pub fn series(&self, distribution: &str) -> Option<Vec<MinutePoint>> {
        let s = self.read();
        Some(
            s.distributions
                .get(distribution)?
                .by_minute
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
    /// `Host` values accepted (lower case) when the dashboard listens on loopback; `None`
    /// when it listens elsewhere (any name may lead to it then).
    pub allowed_hosts: Arc<Option<Vec<String>>>,
    /// Whether alarm definitions may be changed: with credentials (they are then
    /// required), or with `allow_unauthenticated_writes`.
    pub writes_allowed: bool,
}

/// The `Host` values under which a dashboard listening on loopback `listen` is reached:
/// `localhost`, `127.0.0.1`, `[::1]` and the address itself, with the port (and without
/// it on port 80). A browser sends one of them unless a page of another site was made
/// to reach the dashboard under that site's name (DNS rebinding).
pub fn loopback_hosts(listen: SocketAddr) -> Option<Vec<String>> {
    if !listen.ip().is_loopback() {
        return None;
    }
    let port = listen.port();
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "[::1]".to_owned(),
    ];
    let own = match listen {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    if !names.contains(&own) {
        names.push(own);
    }
    let mut hosts: Vec<String> = names.iter().map(|n| format!("{n}:{port}")).collect();
    if port == 80 {
        hosts.extend(names);
    }
    Some(hosts)
}

impl Dashboard {
    pub fn new(
        store: Arc<MetricsStore>,
        alarms: Arc<alarms::AlarmBoard>,
        cfg: &DashboardConfig,
    ) -> Dashboard {
        use base64::Engine;
        let credentials: Vec<String> = cfg
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
        let writes_allowed = !credentials.is_empty() || cfg.allow_unauthenticated_writes;
        Dashboard {
            store,
            alarms,
            credentials: Arc::new(credentials),
            allowed_hosts: Arc::new(loopback_hosts(cfg.listen)),
            writes_allowed,
        }
    }
}

/// Refuses (403) a request whose `Host` is not the dashboard's own loopback address.
/// A request without `Host` passes: browsers always send one. `/healthz` passes.
async fn check_host(
    State(d): State<Dashboard>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(allowed) = d.allowed_hosts.as_ref() else {
        return next.run(req).await;
    };
    let host = req
        .headers()
        .get(axum::http::header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()));
    match host {
        Some(h) if req.uri().path() != "/healthz" && !allowed.contains(&h.to_ascii_lowercase()) => {
            ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "Host {h:?} is not this dashboard's address: it listens on loopback and answers only to {} (protection against DNS rebinding)",
                    allowed.join(", ")
                ),
            )
            .into_response()
        }
        _ => next.run(req).await,
    }
}

/// Refuses (403) a change to alarm definitions on a dashboard without credentials,
/// unless `allow_unauthenticated_writes` is set.
async fn check_writes(
    State(d): State<Dashboard>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if d.writes_allowed {
        return next.run(req).await;
    }
    ApiError::new(
        StatusCode::FORBIDDEN,
        "alarm definitions are read-only on a dashboard without credentials: set dashboard.tokens or dashboard.users (or dashboard.allow_unauthenticated_writes = true, for local experiments)",
    )
    .into_response()
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

/// A Prometheus gauge: name, help, and how to read it from a minute (`None`: no data).
type Gauge = (&'static str, &'static str, fn(&MinutePoint) -> Option<f64>);

/// Prometheus text: each distribution's last complete minute, and alarm states. A quiet
/// minute has 0 requests and bytes, and NaN rates and latencies (no data, as a 0/0
/// would be in PromQL).
async fn prometheus(State(d): State<Dashboard>) -> Response {
    use std::fmt::Write;
    let last_complete = last_complete_minute(now_ms());
    let mut out = String::new();
    let gauges: [Gauge; 13] = [
        ("requests", "Requests in the last complete minute", |p| {
            Some(p.requests as f64)
        }),
        (
            "bytes_downloaded",
            "BytesDownloaded in the last complete minute",
            |p| Some(p.bytes_downloaded as f64),
        ),
        (
            "bytes_uploaded",
            "BytesUploaded in the last complete minute",
            |p| Some(p.bytes_uploaded as f64),
        ),
        (
            "error_rate_4xx_percent",
            "4xxErrorRate (NaN without requests)",
            |p| p.error_rate_4xx,
        ),
        (
            "error_rate_5xx_percent",
            "5xxErrorRate (NaN without requests)",
            |p| p.error_rate_5xx,
        ),
        (
            "total_error_rate_percent",
            "TotalErrorRate (NaN without requests)",
            |p| p.total_error_rate,
        ),
        (
            "cache_hit_rate_percent",
            "CacheHitRate: hits over cacheable requests (NaN when nothing was cacheable)",
            |p| p.cache_hit_rate,
        ),
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
            let p = d.store.minute(&id, last_complete)?;
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
                prometheus_value(f(p).unwrap_or(f64::NAN))
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP edgelog_distribution_origin_latency_ms OriginLatency in the last complete minute, by quantile (NaN without requests from the origin)\n# TYPE edgelog_distribution_origin_latency_ms gauge"
    );
    for (id, p) in &last {
        for (q, v) in [
            ("0.5", p.origin_latency_p50_ms),
            ("0.9", p.origin_latency_p90_ms),
            ("0.99", p.origin_latency_p99_ms),
        ] {
            let _ = writeln!(
                out,
                "edgelog_distribution_origin_latency_ms{{distribution=\"{}\",quantile=\"{q}\"}} {}",
                prometheus_label(id),
                prometheus_value(v.unwrap_or(f64::NAN))
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

/// The start of the last complete minute at `now_ms`: the one before the minute in
/// progress.
pub fn last_complete_minute(now_ms: i64) -> i64 {
    now_ms - now_ms.rem_euclid(60_000) - 60_000
}

/// The window a chart shows: the last `range` up to now, or up to the last minute with
/// data when the distribution has been quiet for longer (a replay of old logs).
fn window(points: &[MinutePoint], range: i64) -> (i64, i64) {
    window_of(points.last().map(|p| p.minute_ms), range)
}

/// [`window`] for a distribution whose last minute with data is `last_minute`.
fn window_of(last_minute: Option<i64>, range: i64) -> (i64, i64) {
    let now = now_ms();
    let now_end = now - now.rem_euclid(60_000) + 60_000;
    let to = match last_minute {
        Some(m) if m + 60_000 <= now_end - range => m + 60_000,
        _ => now_end,
    };
    (to - range, to)
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
    let points = match range {
        Some(r) => d.store.recent(&id, r),
        None => d.store.series(&id),
    };
    let Some(points) = points else {
        return not_found(&id);
    };
    // `chart=` is checked whatever the format (it picks the CSV's columns).
    let chart = match q
        .chart
        .as_deref()
        .map(|c| charts::Chart::from_slug(c).ok_or(c))
    {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(c)) => return bad_request(format!("unknown chart {c:?}")),
    };
    match q.format.as_deref() {
        None | Some("json") => Json(points).into_response(),
        Some("csv") => {
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
    match d.store.recent(&id, range) {
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
    let Some(points) = d.store.recent(&id, ms) else {
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
    let outcome = d.alarms.put(cfg).map_err(ApiError::bad_request)?;
    tracing::info!(alarm = %name, ?outcome, "alarm defined through the API");
    let (code, replaced, changed) = match outcome {
        alarms::PutOutcome::Created => (StatusCode::CREATED, false, true),
        alarms::PutOutcome::Replaced => (StatusCode::OK, true, true),
        // The same definition again: states, and notifications, carry on untouched.
        alarms::PutOutcome::Unchanged => (StatusCode::OK, true, false),
    };
    Ok((
        code,
        Json(serde_json::json!({ "alarm": name, "replaced": replaced, "changed": changed })),
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
        let Some(recent) = d.store.recent(&id, 3_600_000) else {
            continue;
        };
        // The last complete minute, quiet (0 requests, no rates) when it has no data.
        let last = d
            .store
            .minute(&id, last_complete_minute(now_ms()))
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
            "<tr><td><a href=\"/distributions/{eid}\">{eid}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class={worst}>{worst}</td></tr>",
            charts::sparkline(&recent, 160, 28),
            last.requests,
            bytes(last.bytes_downloaded),
            percent_text(last.error_rate_4xx),
            percent_text(last.error_rate_5xx),
            percent_text(last.total_error_rate)
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

/// `1.25 %`, or `–` for no data.
fn percent_text(p: Option<f64>) -> String {
    p.map_or_else(|| "–".to_owned(), |v| format!("{v:.2} %"))
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
            axum::routing::put(put_alarm)
                .delete(delete_alarm)
                .route_layer(axum::middleware::from_fn_with_state(
                    dashboard.clone(),
                    check_writes,
                )),
        )
        .route("/metrics", get(prometheus))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn_with_state(
            dashboard.clone(),
            require_auth,
        ))
        .layer(axum::middleware::from_fn_with_state(
            dashboard.clone(),
            check_host,
        ))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(dashboard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_holding_the_lock_loses_no_later_merge() {
        let store = std::sync::Arc::new(MetricsStore::new(60));
        let poisoner = store.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.write();
            panic!("poison the lock");
        })
        .join();
        assert!(store.series.is_poisoned());
        store.merge(&MinuteUpdate {
            collector_id: "c".into(),
            distribution_id: "E1".into(),
            minute_ms: 60_000,
            aggregate: MinuteAggregate {
                requests: 3,
                ..MinuteAggregate::default()
            },
        });
        assert_eq!(store.distributions(), ["E1"]);
        assert_eq!(store.minute("E1", 60_000).map(|p| p.requests), Some(3));
    }
}
