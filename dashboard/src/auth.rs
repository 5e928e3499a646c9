//! Who may reach the dashboard: its own host names on loopback (against DNS rebinding),
//! bearer tokens or basic-auth users, and who may change alarm definitions.

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::api::Dashboard;
use crate::error::ApiError;

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

/// Refuses (403) a request whose `Host` is not the dashboard's own loopback address.
/// A request without `Host` passes: browsers always send one. `/healthz` passes.
pub(crate) async fn check_host(
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
pub(crate) async fn check_writes(
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

pub(crate) async fn require_auth(
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
