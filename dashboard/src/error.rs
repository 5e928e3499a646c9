//! Every refusal the dashboard answers, as `{"error": "<reason>"}` (`application/json`).

use axum::extract::FromRequestParts;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};

/// A refusal of the dashboard: its message is the reason answered. Extractor rejections
/// (bad query strings, paths, bodies), 404 and 405 have this shape too.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("range {0:?} is not one of 1h, 3h, 12h, 24h")]
    BadRange(String),
    #[error("unknown chart {0:?}")]
    UnknownChart(String),
    #[error("format {0:?} is not json or csv")]
    BadFormat(String),
    #[error(
        "unknown report {0:?}: one of popular-objects, top-referrers, viewers, cache-statistics, usage"
    )]
    UnknownReport(String),
    #[error("sort {0:?} is not requests or bytes")]
    BadSort(String),
    #[error("unknown distribution {0:?}")]
    UnknownDistribution(String),
    /// An alarm the board or its name check refuses (the reason names what is wrong).
    #[error("{0}")]
    BadAlarm(String),
    #[error("invalid alarm: {0}")]
    AlarmNotParsed(String),
    #[error("the alarm's name {body:?} differs from the path's {path:?}")]
    AlarmNameMismatch { body: String, path: String },
    #[error("no alarm named {0:?}")]
    NoSuchAlarm(String),
    #[error("no such page or API: {method} {path}")]
    NoRoute { method: Method, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: Method, path: String },
    // Capitalised as it always was: clients may match on it.
    #[error(
        "Host {host:?} is not this dashboard's address: it listens on loopback and answers only to {allowed} (protection against DNS rebinding)"
    )]
    ForeignHost { host: String, allowed: String },
    #[error(
        "alarm definitions are read-only on a dashboard without credentials: set dashboard.tokens or dashboard.users (or dashboard.allow_unauthenticated_writes = true, for local experiments)"
    )]
    ReadOnly,
    #[error("authentication required")]
    Unauthorized,
    #[error("this token may not see or change distribution {0:?}")]
    NotInScope(String),
    #[error("this token may not change alarm {0:?}")]
    AlarmNotInScope(String),
    #[error("this token may only read: it cannot change alarm definitions")]
    ReadOnlyToken,
    #[error("the change is not made: {0}")]
    NotKept(String),
    #[error("live tail: {0}")]
    BadTail(String),
    #[error(
        "no real-time records reach this dashboard: `edgelog demo` streams them in process; `edgelog dashboard` reads [sinks.realtime.kafka]"
    )]
    NoTail,
    #[error("{0} live tail pages are open already (dashboard.tail_max_viewers); try again later")]
    TooManyTails(usize),
    /// An extractor's rejection, with its own status and text.
    #[error("{reason}")]
    Rejected { status: StatusCode, reason: String },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRange(_)
            | ApiError::UnknownChart(_)
            | ApiError::UnknownReport(_)
            | ApiError::BadSort(_)
            | ApiError::BadFormat(_)
            | ApiError::BadAlarm(_)
            | ApiError::AlarmNotParsed(_)
            | ApiError::AlarmNameMismatch { .. } => StatusCode::BAD_REQUEST,
            ApiError::UnknownDistribution(_)
            | ApiError::NoSuchAlarm(_)
            | ApiError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::ForeignHost { .. }
            | ApiError::ReadOnly
            | ApiError::NotInScope(_)
            | ApiError::AlarmNotInScope(_)
            | ApiError::ReadOnlyToken => StatusCode::FORBIDDEN,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotKept(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::BadTail(_) => StatusCode::BAD_REQUEST,
            ApiError::NoTail => StatusCode::NOT_FOUND,
            ApiError::TooManyTails(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Rejected { status, .. } => *status,
        }
    }
}

/// The body of every refusal.
pub(crate) fn error_body(reason: &str) -> serde_json::Value {
    serde_json::json!({ "error": reason })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), Json(error_body(&self.to_string()))).into_response();
        if let ApiError::Unauthorized = self {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"edgelog\""),
            );
        }
        resp
    }
}

macro_rules! rejection_into_api_error {
    ($($rejection:ty),*) => {$(
        impl From<$rejection> for ApiError {
            fn from(r: $rejection) -> ApiError {
                ApiError::Rejected { status: r.status(), reason: r.body_text() }
            }
        }
    )*};
}
rejection_into_api_error!(QueryRejection, PathRejection, BytesRejection, JsonRejection);

/// `axum::extract::Path` whose rejection is an [`ApiError`].
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct Path<T>(pub(crate) T);

/// `axum::extract::Query` whose rejection is an [`ApiError`].
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct Query<T>(pub(crate) T);
