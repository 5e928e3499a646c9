//! The ingest API: `POST /v1/records`, `/healthz`, `/readyz`, `/metrics`.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use edgelog_record::{Format, Rejection, check_distribution_id, parse_body};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::config::CollectorConfig;
use crate::sink::{SinkReport, SinkStatus};
use crate::wal::{Wal, WalError, WalStats};

/// Why a request was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("missing bearer token: send Authorization: Bearer <token>")]
    MissingToken,
    #[error("invalid bearer token")]
    BadToken,
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
    #[error("collector is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Wal(#[from] WalError),
}

impl IngestError {
    fn status(&self) -> StatusCode {
        match self {
            IngestError::MissingToken | IngestError::BadToken => StatusCode::UNAUTHORIZED,
            IngestError::BodyTooLarge { .. } | IngestError::DecompressedTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            IngestError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngestError::Corrupt { .. }
            | IngestError::UnknownFormat
            | IngestError::BadFormat(_)
            | IngestError::BadDistribution(_)
            | IngestError::Read(_) => StatusCode::BAD_REQUEST,
            IngestError::ShuttingDown
            | IngestError::Wal(WalError::Full { .. } | WalError::Closed) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            IngestError::Wal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn label(&self) -> &'static str {
        match self {
            IngestError::MissingToken | IngestError::BadToken => "unauthorized",
            IngestError::BodyTooLarge { .. } => "body_too_large",
            IngestError::DecompressedTooLarge { .. } => "decompressed_too_large",
            IngestError::UnsupportedEncoding(_) | IngestError::Corrupt { .. } => "bad_encoding",
            IngestError::UnknownFormat | IngestError::BadFormat(_) => "bad_format",
            IngestError::BadDistribution(_) => "bad_distribution",
            IngestError::Read(_) => "read_error",
            IngestError::ShuttingDown => "shutting_down",
            IngestError::Wal(WalError::Full { .. }) => "wal_full",
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
        if status == StatusCode::SERVICE_UNAVAILABLE {
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
}

#[derive(Debug, Deserialize)]
struct IngestQuery {
    distribution: Option<String>,
    format: Option<String>,
}

struct Inner {
    cfg: CollectorConfig,
    wal: Wal,
    sinks: Vec<Arc<SinkStatus>>,
    accepting: AtomicBool,
    accepted_records: AtomicU64,
    prometheus: PrometheusHandle,
}

/// Shared state of the ingest API.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

impl AppState {
    pub fn new(cfg: CollectorConfig, wal: Wal, sinks: Vec<Arc<SinkStatus>>) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                cfg,
                wal,
                sinks,
                accepting: AtomicBool::new(true),
                accepted_records: AtomicU64::new(0),
                prometheus: crate::prometheus().clone(),
            }),
        }
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
        let status = if !accepting {
            "shutting_down"
        } else if full {
            "wal_full"
        } else if sinks.iter().any(|s| s.degraded) {
            "degraded"
        } else {
            "ready"
        };
        Readiness {
            status,
            accepting: accepting && !full,
            wal,
            sinks,
        }
    }
}

/// What `/readyz` answers.
#[derive(Debug, Serialize)]
pub struct Readiness {
    /// `ready`, `degraded` (a sink is failing; still accepting), `wal_full` or `shutting_down`.
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
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

fn check_token(cfg: &CollectorConfig, headers: &HeaderMap) -> Result<(), IngestError> {
    if cfg.tokens.is_empty() && cfg.allow_unauthenticated {
        return Ok(());
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .ok_or(IngestError::MissingToken)?
        .trim()
        .as_bytes();
    // Compare against every token without stopping early.
    let mut ok = subtle::Choice::from(0);
    for t in &cfg.tokens {
        ok |= t.as_bytes().ct_eq(given);
    }
    if bool::from(ok) {
        Ok(())
    } else {
        Err(IngestError::BadToken)
    }
}

fn read_limited(
    r: impl Read,
    limit: u64,
    encoding: &'static str,
    hint: usize,
) -> Result<Vec<u8>, IngestError> {
    let mut out = Vec::with_capacity(hint.min(limit as usize));
    r.take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| IngestError::Corrupt {
            encoding,
            reason: e.to_string(),
        })?;
    if out.len() as u64 > limit {
        return Err(IngestError::DecompressedTooLarge { limit });
    }
    Ok(out)
}

/// Decompresses with memory bounded by `limit` (plus zstd's window, capped at 16 MiB).
fn decode(encoding: &str, body: Bytes, limit: u64) -> Result<Bytes, IngestError> {
    let hint = body.len().saturating_mul(6);
    match encoding {
        "" | "identity" => Ok(body),
        "gzip" | "x-gzip" => read_limited(
            flate2::read::MultiGzDecoder::new(&body[..]),
            limit,
            "gzip",
            hint,
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
            read_limited(d, limit, "zstd", hint).map(Bytes::from)
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

/// Low-cardinality label for a refusal reason.
fn reason_label(reason: &str) -> String {
    if let Some(rest) = reason.strip_prefix("field `") {
        return format!("field:{}", rest.split('`').next().unwrap_or(""));
    }
    let label = if reason.starts_with("missing timestamp") || reason.starts_with("missing `date`") {
        "missing_timestamp"
    } else if reason.starts_with("missing distribution") {
        "missing_distribution"
    } else if reason.starts_with("distribution id") {
        "bad_distribution"
    } else if reason.starts_with("timestamp") {
        "timestamp_out_of_range"
    } else if reason.starts_with("expected ") {
        "column_count"
    } else if reason.contains("#Fields") {
        "w3c_header"
    } else if reason.contains("UTF-8") {
        "not_utf8"
    } else {
        "invalid_json"
    };
    label.to_owned()
}

async fn ingest(
    State(state): State<AppState>,
    Query(q): Query<IngestQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, IngestError> {
    let i = &state.inner;
    check_token(&i.cfg, &headers)?;
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
    let wire = Limited::new(body, limit as usize)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                IngestError::BodyTooLarge { limit }
            } else {
                IngestError::Read(e.to_string())
            }
        })?;
    let wire = wire.to_bytes();
    metrics::counter!("edgelog_ingest_bytes_total", "stage" => "wire").increment(wire.len() as u64);
    if let Some(d) = &q.distribution {
        check_distribution_id(d).map_err(IngestError::BadDistribution)?;
    }
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let max_decoded = i.cfg.max_decompressed_bytes;
    let max_listed = i.cfg.max_listed_rejections;
    // Decompressing and parsing are CPU work: keep them off the async workers.
    let parsed = tokio::task::spawn_blocking(move || {
        let body = decode(&encoding, wire, max_decoded)?;
        metrics::counter!("edgelog_ingest_bytes_total", "stage" => "decoded")
            .increment(body.len() as u64);
        let format = choose_format(q.format.as_deref(), &headers, &body)?;
        let parsed = parse_body(format, &body, q.distribution.as_deref(), max_listed);
        let payload = if parsed.records.is_empty() {
            Vec::new()
        } else {
            Wal::encode(&parsed.records)?
        };
        Ok::<_, IngestError>((parsed, payload))
    })
    .await
    .map_err(|e| IngestError::Read(e.to_string()))??;
    let (parsed, payload) = parsed;

    for r in &parsed.rejected {
        metrics::counter!("edgelog_records_rejected_total", "reason" => reason_label(&r.reason))
            .increment(1);
    }
    if parsed.rejected_unlisted > 0 {
        metrics::counter!("edgelog_records_rejected_total", "reason" => "unlisted")
            .increment(parsed.rejected_unlisted);
    }
    let accepted = parsed.records.len() as u64;
    let rejected_total = parsed.rejected_count();
    if accepted > 0 {
        i.wal
            .append_encoded(Arc::new(parsed.records), payload)
            .await?;
        metrics::counter!("edgelog_records_accepted_total").increment(accepted);
        i.accepted_records.fetch_add(accepted, Ordering::Relaxed);
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
