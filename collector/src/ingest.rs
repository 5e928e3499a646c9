//! The ingest API: `POST /v1/records`, `/healthz`, `/readyz`, `/metrics`.
//!
//! Long (about 600 lines): the handler, its one error type, the memory budget's use, the
//! bounded decoder and `/readyz` belong to one request path.

use std::collections::HashSet;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use edgelog_record::{Format, ParseOptions, Rejection, check_distribution_id, parse_body};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::budget::{Budget, Held};
use crate::config::CollectorConfig;
use crate::sink::{SinkReport, SinkStatus};
use crate::wal::{KeyAnswer, KeyedBody, Wal, WalError, WalStats, check_key, is_no_space};

/// Why a request was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("missing bearer token: send Authorization: Bearer <token>")]
    MissingToken,
    #[error("invalid bearer token")]
    BadToken,
    #[error(
        "this token may only write records of some distributions; the configuration needs an unscoped token"
    )]
    ScopedToken,
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("decompressed body exceeds {limit} bytes")]
    DecompressedTooLarge { limit: u64 },
    #[error("unsupported content-encoding {0:?}: use gzip, zstd or none")]
    UnsupportedEncoding(String),
    #[error("cannot decompress {encoding} body: {reason}")]
    Corrupt {
        encoding: &'static str,
        reason: String,
    },
    #[error("cannot tell the body's format: send ?format=ndjson or ?format=w3c")]
    UnknownFormat,
    #[error("unknown format {0:?}: use ndjson or w3c")]
    BadFormat(String),
    #[error("query parameter distribution: {0}")]
    BadDistribution(String),
    #[error("cannot read request body: {0}")]
    Read(String),
    #[error("request body not received within {0:?}")]
    BodyTimeout(Duration),
    #[error("collector is shutting down")]
    ShuttingDown,
    #[error("invalid query string: {0}")]
    BadQuery(String),
    #[error(
        "collector is busy: bodies in progress hold its memory budget ({budget} bytes); retry later"
    )]
    Busy { budget: u64 },
    #[error("body holds more than {limit} lines; send smaller bodies")]
    TooManyLines { limit: u64 },
    #[error("no such endpoint: {method} {path} (records go to POST /v1/records)")]
    NoRoute { method: String, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("invalid idempotency-key header: {0}")]
    BadIdempotencyKey(String),
    #[error("a request with this idempotency key is in progress")]
    KeyInProgress,
    #[error("internal error while parsing the body; nothing of it was written: {0}")]
    Internal(String),
    #[error("the admin API is off: set collector.admin_tokens")]
    AdminOff,
    #[error("this token may post records, not change settings: use one of collector.admin_tokens")]
    NotAdmin,
    #[error("settings refused, nothing changed: {0}")]
    SettingsRefused(String),
    #[error("settings not kept, nothing changed: {0}")]
    SettingsNotKept(String),
    #[error(transparent)]
    Wal(#[from] WalError),
}

impl IngestError {
    fn status(&self) -> StatusCode {
        match self {
            IngestError::MissingToken | IngestError::BadToken => StatusCode::UNAUTHORIZED,
            IngestError::ScopedToken | IngestError::NotAdmin | IngestError::AdminOff => {
                StatusCode::FORBIDDEN
            }
            IngestError::SettingsRefused(_) => StatusCode::BAD_REQUEST,
            IngestError::SettingsNotKept(_) => StatusCode::INSUFFICIENT_STORAGE,
            IngestError::BodyTooLarge { .. }
            | IngestError::DecompressedTooLarge { .. }
            | IngestError::TooManyLines { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::NoRoute { .. } => StatusCode::NOT_FOUND,
            IngestError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            IngestError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            IngestError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngestError::Corrupt { .. }
            | IngestError::UnknownFormat
            | IngestError::BadFormat(_)
            | IngestError::BadDistribution(_)
            | IngestError::BadQuery(_)
            | IngestError::BadIdempotencyKey(_)
            | IngestError::Read(_) => StatusCode::BAD_REQUEST,
            IngestError::KeyInProgress => StatusCode::CONFLICT,
            IngestError::Wal(WalError::Io { source, .. }) if is_no_space(source) => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            // Every other failure of the log is worth a retry: the records were not
            // acknowledged, and a write error cut them from the log.
            IngestError::ShuttingDown | IngestError::Busy { .. } | IngestError::Wal(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            IngestError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            IngestError::MissingToken | IngestError::BadToken => "unauthorized",
            IngestError::ScopedToken | IngestError::NotAdmin => "forbidden",
            IngestError::AdminOff => "admin_off",
            IngestError::SettingsRefused(_) => "settings_refused",
            IngestError::SettingsNotKept(_) => "settings_not_kept",
            IngestError::BodyTooLarge { .. } => "body_too_large",
            IngestError::DecompressedTooLarge { .. } => "decompressed_too_large",
            IngestError::UnsupportedEncoding(_) | IngestError::Corrupt { .. } => "bad_encoding",
            IngestError::UnknownFormat | IngestError::BadFormat(_) => "bad_format",
            IngestError::BadDistribution(_) => "bad_distribution",
            IngestError::BadQuery(_) => "bad_query",
            IngestError::BadIdempotencyKey(_) => "bad_idempotency_key",
            IngestError::KeyInProgress => "idempotency_key_in_progress",
            IngestError::Busy { .. } => "memory_budget",
            IngestError::TooManyLines { .. } => "too_many_lines",
            IngestError::NoRoute { .. } | IngestError::MethodNotAllowed { .. } => "no_route",
            IngestError::Read(_) => "read_error",
            IngestError::BodyTimeout(_) => "body_timeout",
            IngestError::ShuttingDown => "shutting_down",
            IngestError::Internal(_) => "internal_error",
            IngestError::Wal(WalError::Full { .. }) => "wal_full",
            IngestError::Wal(WalError::Io { source, .. }) if is_no_space(source) => "no_space",
            IngestError::Wal(_) => "wal_error",
        }
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let status = self.status();
        metrics::counter!("edgelog_ingest_refused_total", "reason" => self.label()).increment(1);
        if status.is_server_error() {
            tracing::warn!(error = %self, "ingest refused");
        } else {
            tracing::debug!(error = %self, "ingest refused");
        }
        let mut resp = (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE
            || status == StatusCode::INSUFFICIENT_STORAGE
            || status == StatusCode::CONFLICT
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// The answer to a post.
#[derive(Debug, Serialize, Deserialize)]
pub struct IngestResponse {
    /// Records made durable.
    pub accepted: u64,
    /// Refused lines, with their line numbers and reasons (up to the configured limit).
    pub rejected: Vec<Rejection>,
    /// Number of refused lines, listed or not.
    pub rejected_total: u64,
    /// The request repeated an `Idempotency-Key` already recorded: nothing was logged, and
    /// the counts are the first answer's. Left out when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

#[derive(Debug, Deserialize)]
struct IngestQuery {
    distribution: Option<String>,
    format: Option<String>,
}

struct Inner {
    cfg: CollectorConfig,
    budget: Budget,
    buffers: crate::buffers::Buffers,
    wal: Wal,
    sinks: Vec<Arc<SinkStatus>>,
    accepting: AtomicBool,
    accepted_records: AtomicU64,
    prometheus: PrometheusHandle,
    /// Idempotency keys of requests in progress.
    keys_in_progress: Mutex<HashSet<String>>,
    /// Tokens and privacy rules: replaced whole on a reload.
    access: Arc<AccessCell>,
    /// Sampling rates in effect (shown at `/config`).
    sampling: Option<tokio::sync::watch::Receiver<edgelog_record::SamplingConfig>>,
    /// Settings changed through `/admin/settings`, when the runner keeps them.
    admin: Option<Arc<dyn crate::admin::AdminSettings>>,
}

/// Who may post and what privacy does to their records, as of the last (re)load.
pub(crate) struct Access {
    /// The configuration these came from (its tokens with hashes lower-cased).
    cfg: CollectorConfig,
    privacy: Arc<crate::privacy::Privacy>,
    /// 0 at start, then one more for every reload.
    generation: u64,
}

impl Access {
    pub(crate) fn config(&self) -> &CollectorConfig {
        &self.cfg
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Checks and prepares the tokens and privacy rules of `cfg`.
    pub(crate) fn new(mut cfg: CollectorConfig, generation: u64) -> Result<Access, String> {
        // Token hashes compare with the lower-case hex of a presented token.
        for t in cfg.tokens.iter_mut().chain(cfg.admin_tokens.iter_mut()) {
            if t.starts_with("sha256:") {
                *t = t.to_ascii_lowercase();
            }
        }
        for t in &mut cfg.scoped_tokens {
            if let Some(h) = &mut t.sha256 {
                *h = h.to_ascii_lowercase();
            }
        }
        let privacy = crate::privacy::Privacy::new(&cfg.privacy)
            .map_err(|e| format!("collector.privacy: {e}"))?;
        Ok(Access {
            cfg,
            privacy: Arc::new(privacy),
            generation,
        })
    }
}

/// The [`Access`] in effect, swapped whole on a reload (requests keep the one they began
/// with).
#[derive(Default)]
pub(crate) struct AccessCell(std::sync::RwLock<Option<Arc<Access>>>);

impl AccessCell {
    pub(crate) fn get(&self) -> Option<Arc<Access>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set(&self, a: Access) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(a));
    }
}

/// Shared state of the ingest API.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

impl AppState {
    pub fn new(cfg: CollectorConfig, wal: Wal, sinks: Vec<Arc<SinkStatus>>) -> AppState {
        AppState::reloadable(cfg, wal, sinks, Arc::default(), None, None)
    }

    /// A state whose tokens and privacy rules are those in `access` (set now unless set
    /// already), and which shows `sampling` at `/config`.
    pub(crate) fn reloadable(
        cfg: CollectorConfig,
        wal: Wal,
        sinks: Vec<Arc<SinkStatus>>,
        access: Arc<AccessCell>,
        sampling: Option<tokio::sync::watch::Receiver<edgelog_record::SamplingConfig>>,
        admin: Option<Arc<dyn crate::admin::AdminSettings>>,
    ) -> AppState {
        if access.get().is_none() {
            // Validated with the rest of the configuration.
            match Access::new(cfg.clone(), 0) {
                Ok(a) => access.set(a),
                Err(e) => tracing::error!(error = %e, "privacy rules refused; none applied"),
            }
        }
        // Counters that matter most at zero are shown from the start.
        metrics::counter!("edgelog_ingest_panics_total").increment(0);
        metrics::counter!("edgelog_wal_write_errors_total").increment(0);
        metrics::counter!("edgelog_ingest_duplicate_requests_total").increment(0);
        metrics::counter!("edgelog_ingest_duplicate_records_total").increment(0);
        AppState {
            inner: Arc::new(Inner {
                budget: Budget::new(cfg.max_inflight_bytes),
                buffers: Default::default(),
                cfg,
                wal,
                sinks,
                accepting: AtomicBool::new(true),
                accepted_records: AtomicU64::new(0),
                prometheus: crate::prometheus().clone(),
                keys_in_progress: Mutex::new(HashSet::new()),
                access,
                sampling,
                admin,
            }),
        }
    }

    pub(crate) fn access(&self) -> Result<Arc<Access>, IngestError> {
        self.inner.access()
    }

    pub(crate) fn admin(&self) -> Option<Arc<dyn crate::admin::AdminSettings>> {
        self.inner.admin.clone()
    }

    /// Records acknowledged since start.
    pub fn accepted_records(&self) -> u64 {
        self.inner.accepted_records.load(Ordering::Relaxed)
    }

    /// Stops accepting posts (shutdown has begun).
    pub fn stop_accepting(&self) {
        self.inner.accepting.store(false, Ordering::Relaxed);
    }

    /// Current state of the log and each sink.
    pub fn readiness(&self) -> Readiness {
        let i = &self.inner;
        let wal = i.wal.stats();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let sinks: Vec<SinkReport> = i
            .sinks
            .iter()
            .map(|s| s.report(wal.committed, now))
            .collect();
        let accepting = i.accepting.load(Ordering::Relaxed);
        let full = wal.bytes >= wal.max_bytes;
        let failing = wal.write_error.is_some();
        let status = if !accepting {
            "shutting_down"
        } else if full {
            "wal_full"
        } else if wal.no_space {
            "disk_full"
        } else if failing {
            "wal_write_failing"
        } else if sinks.iter().any(|s| s.degraded) {
            "degraded"
        } else {
            "ready"
        };
        Readiness {
            status,
            accepting: accepting && !full && !failing,
            wal,
            sinks,
        }
    }
}

/// What `/readyz` answers.
#[derive(Debug, Serialize)]
pub struct Readiness {
    /// `ready`, `degraded` (a sink is failing; still accepting), `wal_full`, `disk_full`
    /// or `wal_write_failing` (the last write failed, in the last 5 s), or `shutting_down`.
    pub status: &'static str,
    pub accepting: bool,
    pub wal: WalStats,
    pub sinks: Vec<SinkReport>,
}

/// The ingest router.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/records", post(ingest))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(prometheus_metrics))
        .route("/config", get(config_in_effect))
        .route(
            "/admin/settings",
            get(crate::admin::get_settings)
                .put(crate::admin::put_settings)
                .delete(crate::admin::delete_settings),
        )
        .fallback(|method: Method, uri: Uri| async move {
            IngestError::NoRoute {
                method: method.to_string(),
                path: uri.path().to_owned(),
            }
        })
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            IngestError::MethodNotAllowed {
                method: method.to_string(),
                path: uri.path().to_owned(),
            }
        })
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

impl Inner {
    fn access(&self) -> Result<Arc<Access>, IngestError> {
        self.access
            .get()
            .ok_or_else(|| IngestError::Internal("no tokens or privacy rules in effect".into()))
    }
}

/// `GET /config`: what a reload may change, as in effect now (tokens and the privacy key
/// never shown). Needs an unscoped token.
async fn config_in_effect(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, IngestError> {
    let access = state.inner.access()?;
    if check_token(&access.cfg, &headers)?.is_some() {
        return Err(IngestError::ScopedToken);
    }
    let c = &access.cfg;
    let mut privacy = serde_json::to_value(&c.privacy).unwrap_or_default();
    if !c.privacy.hash_key.is_empty() {
        privacy["hash_key"] = "<redacted>".into();
    }
    let scoped: Vec<serde_json::Value> = c
        .scoped_tokens
        .iter()
        .map(|t| {
            serde_json::json!({
                "given_as": if t.sha256.is_some() { "sha256" } else { "token" },
                "distributions": t.distributions,
            })
        })
        .collect();
    let sampling = state
        .inner
        .sampling
        .as_ref()
        .map(|rx| serde_json::to_value(&*rx.borrow()).unwrap_or_default());
    Ok(Json(serde_json::json!({
        "generation": access.generation,
        "tokens": c.tokens.len(),
        "scoped_tokens": scoped,
        "allow_unauthenticated": c.allow_unauthenticated,
        "privacy": privacy,
        "sampling": sampling,
    }))
    .into_response())
}

/// Checks the bearer token; returns the distributions it may write (`None`: any).
fn check_token(
    cfg: &CollectorConfig,
    headers: &HeaderMap,
) -> Result<Option<Vec<String>>, IngestError> {
    if cfg.tokens.is_empty() && cfg.scoped_tokens.is_empty() && cfg.allow_unauthenticated {
        return Ok(None);
    }
    // The scheme is case-insensitive (RFC 7235).
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .ok_or(IngestError::MissingToken)?
        .1
        .trim()
        .as_bytes();
    let (full, scoped) = matching_tokens(&cfg.tokens, &cfg.scoped_tokens, given);
    let mut scope: Option<Vec<String>> = None;
    for i in scoped {
        scope
            .get_or_insert_with(Vec::new)
            .extend(cfg.scoped_tokens[i].distributions.iter().cloned());
    }
    if full {
        Ok(None)
    } else if scope.is_some() {
        Ok(scope)
    } else {
        Err(IngestError::BadToken)
    }
}

/// Which tokens `given` is: one of `tokens` (plain, or `sha256:<hex>` lower-cased), and
/// the positions of the `scoped` ones it matches (their hashes lower-cased). Every token
/// is compared, in constant time, whatever matched before.
pub fn matching_tokens(
    tokens: &[String],
    scoped: &[crate::ScopedToken],
    given: &[u8],
) -> (bool, Vec<usize>) {
    // The presented token's SHA-256, only where a token is given by its hash.
    let any_hashed = tokens.iter().any(|t| t.starts_with("sha256:"))
        || scoped.iter().any(|t| t.sha256.is_some());
    let hashed = if any_hashed {
        use sha2::Digest;
        let d = sha2::Sha256::digest(given);
        let mut hex = String::with_capacity(64);
        for b in d.iter() {
            hex.push_str(&format!("{b:02x}"));
        }
        hex
    } else {
        String::new()
    };
    let matches = |plain: Option<&str>, sha: Option<&str>| -> subtle::Choice {
        match (plain, sha) {
            (Some(t), _) => t.as_bytes().ct_eq(given),
            (None, Some(h)) => h.as_bytes().ct_eq(hashed.as_bytes()),
            (None, None) => subtle::Choice::from(0),
        }
    };
    let mut all = subtle::Choice::from(0);
    for t in tokens {
        all |= match t.strip_prefix("sha256:") {
            Some(h) => matches(None, Some(h)),
            None => matches(Some(t), None),
        };
    }
    let scoped = scoped
        .iter()
        .enumerate()
        .filter(|(_, t)| bool::from(matches(t.token.as_deref(), t.sha256.as_deref())))
        .map(|(i, _)| i)
        .collect();
    (bool::from(all), scoped)
}

/// The request's `Idempotency-Key`, if it sent one: 1 to 200 bytes of visible ASCII, once.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, IngestError> {
    let mut all = headers.get_all("idempotency-key").iter();
    let Some(v) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(IngestError::BadIdempotencyKey(
            "several idempotency-key headers".into(),
        ));
    }
    check_key(v.as_bytes())
        .map(|k| Some(k.to_owned()))
        .map_err(IngestError::BadIdempotencyKey)
}

/// A key of a request in progress; released when dropped.
struct KeyClaim {
    inner: Arc<Inner>,
    key: String,
}

impl Drop for KeyClaim {
    fn drop(&mut self) {
        self.inner
            .keys_in_progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// Claims `key` for this request, or says it was answered before (or is in progress).
fn claim_key(inner: &Arc<Inner>, key: String) -> Result<Result<KeyClaim, KeyAnswer>, IngestError> {
    let mut busy = inner
        .keys_in_progress
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if busy.contains(&key) {
        return Err(IngestError::KeyInProgress);
    }
    // Looked up under the lock: a request that records its key does so before it lets
    // go of its claim, so the key is either in progress or found.
    if let Some(a) = inner.wal.lookup_key(&key) {
        return Ok(Err(a));
    }
    busy.insert(key.clone());
    Ok(Ok(KeyClaim {
        inner: inner.clone(),
        key,
    }))
}

/// The answer to a request that repeats a recorded key.
fn duplicate(a: &KeyAnswer) -> Response {
    metrics::counter!("edgelog_ingest_duplicate_requests_total").increment(1);
    metrics::counter!("edgelog_ingest_duplicate_records_total").increment(a.accepted);
    tracing::debug!(
        accepted = a.accepted,
        "repeated idempotency key; answered as before"
    );
    (
        StatusCode::OK,
        Json(IngestResponse {
            accepted: a.accepted,
            rejected: Vec::new(),
            rejected_total: a.rejected_total,
            duplicate: true,
        }),
    )
        .into_response()
}

/// Reads a decompressed body in steps, each taken from the memory budget first.
fn read_limited(
    r: impl Read,
    limit: u64,
    encoding: &'static str,
    held: &mut Held,
) -> Result<Vec<u8>, IngestError> {
    const STEP: u64 = 1 << 20;
    let mut r = r.take(limit.saturating_add(1));
    // Room for the whole limit up front, so growing never copies (a copy would hold the
    // old and the new buffer at once); pages count only once written.
    let mut out: Vec<u8> =
        Vec::with_capacity(usize::try_from(limit.saturating_add(1)).unwrap_or(usize::MAX));
    loop {
        // Never more than the limit allows (plus the one byte that tells it was passed).
        let step = STEP.min(limit.saturating_add(1) - out.len() as u64).max(1);
        held.grow(step, BUDGET_WAIT)
            .map_err(|e| IngestError::Busy { budget: e.budget })?;
        let start = out.len();
        let step = usize::try_from(step).unwrap_or(usize::MAX);
        out.resize(start + step, 0);
        let mut filled = start;
        while filled < out.len() {
            match r.read(&mut out[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(IngestError::Corrupt {
                        encoding,
                        reason: e.to_string(),
                    });
                }
            }
        }
        out.truncate(filled);
        if out.len() as u64 > limit {
            return Err(IngestError::DecompressedTooLarge { limit });
        }
        if filled < start + step {
            return Ok(out);
        }
    }
}

/// Decompresses with memory bounded by `limit` and by the budget (plus zstd's window,
/// capped at 16 MiB).
fn decode(encoding: &str, body: Bytes, limit: u64, held: &mut Held) -> Result<Bytes, IngestError> {
    match encoding {
        "" | "identity" => Ok(body),
        "gzip" | "x-gzip" => read_limited(
            flate2::read::MultiGzDecoder::new(&body[..]),
            limit,
            "gzip",
            held,
        )
        .map(Bytes::from),
        "zstd" => {
            let mut d =
                zstd::stream::read::Decoder::new(&body[..]).map_err(|e| IngestError::Corrupt {
                    encoding: "zstd",
                    reason: e.to_string(),
                })?;
            d.window_log_max(24).map_err(|e| IngestError::Corrupt {
                encoding: "zstd",
                reason: e.to_string(),
            })?;
            read_limited(d, limit, "zstd", held).map(Bytes::from)
        }
        other => Err(IngestError::UnsupportedEncoding(other.to_owned())),
    }
}

fn choose_format(q: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Result<Format, IngestError> {
    match q {
        Some("ndjson" | "json") => return Ok(Format::Ndjson),
        Some("w3c" | "cloudfront" | "tsv") => return Ok(Format::W3c),
        Some(other) => return Err(IngestError::BadFormat(other.to_owned())),
        None => {}
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.starts_with("application/x-ndjson") || ct.starts_with("application/json") {
        return Ok(Format::Ndjson);
    }
    if ct.starts_with("text/tab-separated-values") {
        return Ok(Format::W3c);
    }
    Format::sniff(body).ok_or(IngestError::UnknownFormat)
}

/// Records per log entry at most: a bigger body is split into several entries (written
/// in one group), so what a sink decodes at a time stays small. The log refuses more.
const ENTRY_RECORDS: usize = edgelog_wal::MAX_ENTRY_RECORDS;

/// Bytes of records per log entry at most (as [`Record::memory`] counts them), so that
/// records of long values make smaller entries: the log's cache and each sink's reads
/// hold a bounded number of entries, and so stay within about the memory that full
/// entries of ordinary records take: 16 entries of about 4 MiB in the cache, 4 a batch. A
/// 1,000-record body of ordinary records (about 1.3 MiB) stays one entry.
///
/// [`Record::memory`]: edgelog_record::Record::memory
const ENTRY_BYTES: usize = 4 << 20;

/// The records' entries: runs of at most [`ENTRY_RECORDS`] records and [`ENTRY_BYTES`]
/// bytes (a record bigger than that alone is an entry of its own). `text` bounds the
/// records' text from above, less what ingest adds to a record without privacy rules (a
/// derived id, a distribution from the query): when even that fits, the records are not
/// measured one by one. With privacy rules, pass `usize::MAX` (a hashed list of addresses
/// can be far longer than the list).
fn entry_ranges(records: &[edgelog_record::Record], text: usize) -> Vec<std::ops::Range<usize>> {
    ranges_within(records, text, ENTRY_RECORDS, ENTRY_BYTES)
}

/// [`entry_ranges`] with the limits given.
fn ranges_within(
    records: &[edgelog_record::Record],
    text: usize,
    max_records: usize,
    max_bytes: usize,
) -> Vec<std::ops::Range<usize>> {
    const ADDED: usize = 256;
    let per_record = std::mem::size_of::<edgelog_record::Record>() + ADDED;
    if records.len() <= max_records
        && text.saturating_add(records.len().saturating_mul(per_record)) <= max_bytes
    {
        return std::iter::once(0..records.len()).collect();
    }
    let mut ranges = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    for (i, r) in records.iter().enumerate() {
        let b = r.memory();
        if i > start && (i - start == max_records || bytes.saturating_add(b) > max_bytes) {
            ranges.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes = bytes.saturating_add(b);
    }
    if start < records.len() {
        ranges.push(start..records.len());
    }
    ranges
}

/// What a body becomes in the log.
enum Entries {
    None,
    /// One entry, its records kept for the log's cache.
    One(Arc<Vec<edgelog_record::Record>>, Vec<u8>),
    /// Several entries, each with its records for the log's cache.
    Many(Vec<(Arc<Vec<edgelog_record::Record>>, Vec<u8>)>),
}

/// How long a request waits for room in the memory budget before it is refused.
const BUDGET_WAIT: Duration = Duration::from_secs(2);

/// Low-cardinality label for a refused line: its kind (`line_too_long`, `field_too_long`,
/// `out_of_range`, `bad_value`, `timestamp_out_of_range`, `invalid_json`, ...).
fn reason_label(r: &Rejection) -> &'static str {
    r.kind.label()
}

/// Reads a body whole into `buf` (a kept buffer: see [`crate::buffers`]), never holding
/// more than `limit` bytes of room (growing by doubling could reach twice what the budget
/// took for it).
async fn read_body(
    mut body: Limited<Body>,
    mut buf: Vec<u8>,
    limit: usize,
) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            let need = buf.len() + data.len();
            if need > buf.capacity() {
                let room = (buf.capacity() * 2).clamp(need, limit.max(need));
                buf.reserve_exact(room - buf.len());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

async fn ingest(
    State(state): State<AppState>,
    query: Result<Query<IngestQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, IngestError> {
    let i = &state.inner;
    let Query(q) = query.map_err(|e| IngestError::BadQuery(e.body_text()))?;
    let access = i.access()?;
    let scope = check_token(&access.cfg, &headers)?;
    // A repeated key is answered from memory, whatever the body, the log's room or a
    // shutdown: nothing is written.
    let claim = match idempotency_key(&headers)? {
        None => None,
        Some(key) => match claim_key(&state.inner, key)? {
            Ok(claim) => Some(claim),
            Err(answer) => return Ok(duplicate(&answer)),
        },
    };
    if !i.accepting.load(Ordering::Relaxed) {
        return Err(IngestError::ShuttingDown);
    }
    if i.wal.is_full() {
        return Err(WalError::Full {
            used: i.wal.stats().bytes,
            max: i.cfg.wal.max_bytes,
        }
        .into());
    }
    let limit = i.cfg.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(IngestError::BodyTooLarge { limit });
    }
    // The body's bytes are taken from the budget before they are read.
    let mut held = i
        .budget
        .reserve(declared.unwrap_or(limit), BUDGET_WAIT)
        .await
        .map_err(|e| IngestError::Busy { budget: e.budget })?;
    let want = usize::try_from(declared.unwrap_or(0).min(limit)).unwrap_or(0);
    let limit_bytes = usize::try_from(limit).unwrap_or(usize::MAX);
    let reading = read_body(
        Limited::new(body, limit_bytes),
        i.buffers.take(want),
        limit_bytes,
    );
    let wire = tokio::time::timeout(i.cfg.body_timeout, reading)
        .await
        .map_err(|_| IngestError::BodyTimeout(i.cfg.body_timeout))?
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                IngestError::BodyTooLarge { limit }
            } else {
                IngestError::Read(e.to_string())
            }
        })?;
    let wire = Bytes::from(wire);
    metrics::counter!("edgelog_ingest_bytes_total", "stage" => "wire").increment(wire.len() as u64);
    if let Some(d) = &q.distribution {
        check_distribution_id(d).map_err(IngestError::BadDistribution)?;
    }
    if headers.get_all(header::CONTENT_ENCODING).iter().count() > 1 {
        return Err(IngestError::UnsupportedEncoding(
            "several Content-Encoding headers".into(),
        ));
    }
    let encoding = match headers.get(header::CONTENT_ENCODING) {
        None => String::new(),
        Some(v) => v
            .to_str()
            .map_err(|_| {
                IngestError::UnsupportedEncoding(String::from_utf8_lossy(v.as_bytes()).into_owned())
            })?
            .trim()
            .to_ascii_lowercase(),
    };
    let max_lines = i.cfg.max_records_per_body;
    let max_decoded = i.cfg.max_decompressed_bytes;
    let max_listed = i.cfg.max_listed_rejections;
    // Validated to at most 16 MiB.
    let max_line_bytes = usize::try_from(i.cfg.max_line_bytes).unwrap_or(usize::MAX);
    let max_field_bytes = usize::try_from(i.cfg.max_field_bytes).unwrap_or(usize::MAX);
    // Taken once the body is here, so a slow client holds no admission (the body's
    // budget is held meanwhile, for at most `pace_wait`), and held until the log has the
    // records: live sinks stay within the log's cache. A keyed body is two entries.
    let entries = 1 + u64::from(claim.is_some());
    let admission = i.wal.pace(i.cfg.pace_wait, entries).await;
    if !admission.waited.is_zero() {
        metrics::counter!("edgelog_ingest_paced_total").increment(1);
        metrics::counter!("edgelog_ingest_paced_milliseconds_total")
            .increment(u64::try_from(admission.waited.as_millis()).unwrap_or(u64::MAX));
    }
    let privacy = access.privacy.clone();
    let buffers = state.inner.clone();
    // Decompressing and parsing are CPU work: keep them off the async workers.
    let parsed = tokio::task::spawn_blocking(move || {
        let body = decode(&encoding, wire, max_decoded, &mut held)?;
        let body_len = body.len();
        metrics::counter!("edgelog_ingest_bytes_total", "stage" => "decoded")
            .increment(body_len as u64);
        let format = choose_format(q.format.as_deref(), &headers, &body)?;
        // Parsed records cost their struct (twice: the vector may grow by copying) plus
        // their text: taken from the budget first.
        // Lines as the client counts them: a last line without its newline counts too.
        let lines = memchr::memchr_iter(b'\n', &body).count() as u64
            + u64::from(body.last().is_some_and(|b| *b != b'\n'));
        if lines > max_lines {
            return Err(IngestError::TooManyLines { limit: max_lines });
        }
        let record = std::mem::size_of::<edgelog_record::Record>() as u64;
        held.grow(
            lines
                .saturating_mul(record)
                .saturating_mul(2)
                .saturating_add(body.len() as u64),
            BUDGET_WAIT,
        )
        .map_err(|e| IngestError::Busy { budget: e.budget })?;
        let opts = ParseOptions {
            default_distribution: q.distribution.as_deref(),
            max_listed,
            max_line_bytes,
            max_field_bytes,
            allowed_distributions: scope.as_deref(),
        };
        let mut parsed = parse_body(format, &body, &opts);
        // Before anything is written: the raw values never reach the disk.
        if !privacy.is_noop() {
            let mut unparsed = 0;
            for r in &mut parsed.records {
                unparsed += privacy.apply(r);
            }
            if unparsed > 0 {
                metrics::counter!("edgelog_privacy_unparsed_addresses_total").increment(unparsed);
            }
        }
        // The records own their text: the body's room is the encoder's now.
        if let Ok(b) = body.try_into_mut() {
            buffers.buffers.give(b.into());
        }
        let records = std::mem::take(&mut parsed.records);
        let accepted = records.len() as u64;
        // Hashing can lengthen a record well past its line: measure them then.
        let text = if privacy.is_noop() {
            body_len
        } else {
            usize::MAX
        };
        let ranges = entry_ranges(&records, text);
        let entry = if records.is_empty() {
            Entries::None
        } else if ranges.len() == 1 {
            let payload = Wal::encode(&records)?;
            Entries::One(Arc::new(records), payload)
        } else {
            // A big body becomes several entries, so no sink ever decodes it whole.
            let mut records = records;
            let mut parts = Vec::with_capacity(ranges.len());
            for r in ranges.into_iter().rev() {
                let part = records.split_off(r.start);
                let payload = Wal::encode(&part)?;
                parts.push((Arc::new(part), payload));
            }
            parts.reverse();
            Entries::Many(parts)
        };
        Ok::<_, IngestError>((parsed, accepted, entry, held))
    })
    .await
    .map_err(|e| {
        // A bug, never the client's fault: a 500, counted, and logged with the panic.
        metrics::counter!("edgelog_ingest_panics_total").increment(1);
        tracing::error!(error = %e, "parsing a body panicked");
        IngestError::Internal(e.to_string())
    })??;
    // Held until the log has the records (and they leave this request).
    let (parsed, accepted, entry, _held) = parsed;

    for r in &parsed.rejected {
        metrics::counter!("edgelog_records_rejected_total", "reason" => reason_label(r))
            .increment(1);
    }
    if parsed.rejected_unlisted > 0 {
        metrics::counter!("edgelog_records_rejected_total", "reason" => "unlisted")
            .increment(parsed.rejected_unlisted);
    }
    let rejected_total = parsed.rejected_count();
    if accepted > 0 {
        // In a task of its own: once the log has the records they are counted, and a keyed
        // body keeps its key claimed until the log has answered, even if the client hung
        // up meanwhile (a client that resends at once must not get them logged twice).
        let inner = state.inner.clone();
        tokio::spawn(async move {
            let _admission = admission;
            let i = &inner;
            match (entry, claim) {
                (Entries::None, _) => {}
                (Entries::One(records, payload), None) => {
                    i.wal.append_encoded(records, payload).await?;
                }
                (Entries::Many(parts), None) => {
                    i.wal.append_entries(parts).await?;
                }
                (Entries::One(records, payload), Some(claim)) => {
                    i.wal
                        .append_keyed(
                            &claim.key,
                            accepted,
                            rejected_total,
                            KeyedBody::One(records, payload),
                        )
                        .await?;
                }
                (Entries::Many(parts), Some(claim)) => {
                    i.wal
                        .append_keyed(&claim.key, accepted, rejected_total, KeyedBody::Many(parts))
                        .await?;
                }
            }
            metrics::counter!("edgelog_records_accepted_total").increment(accepted);
            i.accepted_records.fetch_add(accepted, Ordering::Relaxed);
            Ok::<_, IngestError>(())
        })
        .await
        .map_err(|e| IngestError::Internal(e.to_string()))??;
    }
    let status = if accepted == 0 && rejected_total > 0 {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(IngestResponse {
            accepted,
            rejected: parsed.rejected,
            rejected_total,
            duplicate: false,
        }),
    )
        .into_response())
}

async fn readyz(State(state): State<AppState>) -> Response {
    let r = state.readiness();
    let code = if r.accepting {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(r)).into_response()
}

async fn prometheus_metrics(State(state): State<AppState>) -> Response {
    let r = state.readiness();
    metrics::gauge!("edgelog_ingest_memory_bytes").set(state.inner.budget.in_use() as f64);
    metrics::gauge!("edgelog_ingest_memory_budget_bytes").set(state.inner.budget.total() as f64);
    metrics::gauge!("edgelog_wal_bytes").set(r.wal.bytes as f64);
    metrics::gauge!("edgelog_wal_max_bytes").set(r.wal.max_bytes as f64);
    metrics::gauge!("edgelog_wal_segments").set(r.wal.segments as f64);
    metrics::gauge!("edgelog_wal_committed_seq").set(r.wal.committed as f64);
    let oldest = r.sinks.iter().map(|s| s.lag_seconds).fold(0.0, f64::max);
    metrics::gauge!("edgelog_wal_oldest_undelivered_seconds").set(oldest);
    metrics::gauge!("edgelog_ready").set(if r.accepting { 1.0 } else { 0.0 });
    for s in &r.sinks {
        let sink = s.name.clone();
        metrics::gauge!("edgelog_sink_delivered_seq", "sink" => sink.clone())
            .set(s.delivered as f64);
        metrics::gauge!("edgelog_sink_lag_entries", "sink" => sink.clone())
            .set(s.lag_entries as f64);
        metrics::gauge!("edgelog_sink_lag_seconds", "sink" => sink.clone()).set(s.lag_seconds);
        metrics::gauge!("edgelog_sink_degraded", "sink" => sink).set(if s.degraded {
            1.0
        } else {
            0.0
        });
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.inner.prometheus.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgelog_record::Record;

    fn record(uri_bytes: usize) -> Record {
        Record {
            timestamp_ms: 1_764_000_000_000,
            distribution_id: "E1".into(),
            cs_uri_stem: Some("/".repeat(uri_bytes)),
            x_edge_request_id: Some("id".into()),
            ..Default::default()
        }
    }

    fn one(r: std::ops::Range<usize>) -> Vec<std::ops::Range<usize>> {
        std::iter::once(r).collect()
    }

    /// Every record once, in order, in runs within both limits (or alone).
    fn check(records: &[Record], ranges: &[std::ops::Range<usize>]) {
        let mut next = 0;
        for r in ranges {
            assert_eq!(r.start, next, "{ranges:?}");
            assert!(!r.is_empty() && r.len() <= ENTRY_RECORDS, "{ranges:?}");
            let bytes: usize = records[r.clone()].iter().map(Record::memory).sum();
            assert!(
                bytes <= ENTRY_BYTES || r.len() == 1,
                "{bytes} bytes in {r:?}"
            );
            next = r.end;
        }
        assert_eq!(next, records.len());
    }

    #[test]
    fn ordinary_bodies_stay_one_entry_unmeasured() {
        let records: Vec<Record> = (0..1000).map(|_| record(40)).collect();
        assert_eq!(entry_ranges(&records, 1_000_000), one(0..1000));
        assert_eq!(entry_ranges(&[], 0), one(0..0));
    }

    #[test]
    fn records_of_long_values_make_entries_within_the_bytes() {
        // 48 KB each, as three fields at the default 16 KB limit: about 86 an entry.
        let records: Vec<Record> = (0..2_600).map(|_| record(48_000)).collect();
        let ranges = entry_ranges(&records, 2_600 * 48_100);
        check(&records, &ranges);
        assert!(ranges.len() >= 30, "{ranges:?}");
        // Without a bound on the text (privacy rules): measured all the same.
        assert_eq!(entry_ranges(&records, usize::MAX), ranges);
        // 80 of them fit in one entry's bytes.
        assert_eq!(entry_ranges(&records[..80], 80 * 48_100), one(0..80));
        // The body's length just above the records' text: measured, and split the same.
        assert_eq!(entry_ranges(&records, 2_600 * 48_003), ranges);
    }

    #[test]
    fn counts_and_bytes_both_end_an_entry_and_a_huge_record_goes_alone() {
        // The count ends an entry when the bytes do not, and the other way round.
        let small: Vec<Record> = (0..7).map(|_| record(1)).collect();
        assert_eq!(
            ranges_within(&small, usize::MAX, 3, usize::MAX),
            [0..3, 3..6, 6..7]
        );
        let each = small[0].memory();
        assert_eq!(
            ranges_within(&small, usize::MAX, 100, 2 * each),
            [0..2, 2..4, 4..6, 6..7]
        );
        // At the limits exactly: one entry, unmeasured or measured.
        assert_eq!(ranges_within(&small, 0, 7, usize::MAX), one(0..7));
        assert_eq!(ranges_within(&small, usize::MAX, 7, 7 * each), one(0..7));
        // Ordinary records: 8,192 of them are more than an entry's bytes.
        let many: Vec<Record> = (0..ENTRY_RECORDS).map(|_| record(1)).collect();
        check(&many, &entry_ranges(&many, usize::MAX));
        let mut mixed: Vec<Record> = (0..10).map(|_| record(100)).collect();
        mixed.insert(5, record(ENTRY_BYTES + 1));
        let ranges = entry_ranges(&mixed, usize::MAX);
        check(&mixed, &ranges);
        assert_eq!(ranges, [0..5, 5..6, 6..11]);
    }
}
