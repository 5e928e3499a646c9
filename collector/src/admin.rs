//! `/admin/settings`: the settings that reload without a restart (sampling rates, tokens,
//! privacy rules), changed over HTTP by a `collector.admin_tokens` holder and kept by
//! whoever runs the collector (the binary persists them under the data dir, and they
//! outlive restarts and SIGHUPs until deleted).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

use crate::ingest::{AppState, IngestError, matching_tokens};

/// Largest settings document taken.
pub const MAX_SETTINGS_BYTES: usize = 1 << 20;

/// Where settings made through the API are checked, kept and put in effect.
pub trait AdminSettings: Send + Sync + 'static {
    /// The settings made through the API (a JSON object; `{}` when none).
    fn current(&self) -> serde_json::Value;
    /// Checks `settings` (with the rest of the configuration), keeps them in place of the
    /// current ones and puts them in effect; returns what changed, or why not (then
    /// nothing changed).
    fn replace(&self, settings: serde_json::Value) -> Result<Vec<String>, SettingsError>;
}

/// Why settings were not changed.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// They are wrong: the reason names the key.
    #[error("{0}")]
    Refused(String),
    /// They could not be kept (the disk).
    #[error("{0}")]
    NotKept(String),
}

/// The token must be an admin token; without any configured, the API is off.
fn check_admin(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Arc<dyn AdminSettings>, IngestError> {
    let access = state.access()?;
    let cfg = access.config();
    let admin = state.admin().ok_or(IngestError::AdminOff)?;
    if cfg.admin_tokens.is_empty() {
        return Err(IngestError::AdminOff);
    }
    let mut auth = headers.get_all(header::AUTHORIZATION).iter();
    let (value, second) = (auth.next(), auth.next());
    if second.is_some() {
        return Err(IngestError::BadToken);
    }
    let Some(value) = value else {
        return Err(IngestError::MissingToken);
    };
    let given = value
        .to_str()
        .ok()
        .and_then(|v| v.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .ok_or(IngestError::MissingToken)?
        .1
        .trim()
        .as_bytes();
    if matching_tokens(&cfg.admin_tokens, &[], given).0 {
        return Ok(admin);
    }
    // An ingest token is valid, but not here.
    let (full, scoped) = matching_tokens(&cfg.tokens, &cfg.scoped_tokens, given);
    if full || !scoped.is_empty() {
        Err(IngestError::NotAdmin)
    } else {
        Err(IngestError::BadToken)
    }
}

/// Secrets shown as `<redacted>`: plain tokens (hashes are no secret) and the privacy
/// hash key.
pub(crate) fn redact(v: &mut serde_json::Value) {
    const HIDDEN: &str = "<redacted>";
    let Some(collector) = v.get_mut("collector").and_then(|c| c.as_object_mut()) else {
        return;
    };
    for key in ["tokens", "admin_tokens"] {
        if let Some(list) = collector.get_mut(key).and_then(|t| t.as_array_mut()) {
            for t in list {
                if !t.as_str().is_some_and(|s| s.starts_with("sha256:")) {
                    *t = HIDDEN.into();
                }
            }
        }
    }
    if let Some(list) = collector
        .get_mut("scoped_tokens")
        .and_then(|t| t.as_array_mut())
    {
        for t in list {
            if let Some(token) = t.get_mut("token") {
                *token = HIDDEN.into();
            }
        }
    }
    if let Some(key) = collector
        .get_mut("privacy")
        .and_then(|p| p.get_mut("hash_key"))
        .filter(|k| k.as_str() != Some(""))
    {
        *key = HIDDEN.into();
    }
}

fn answer(state: &AppState, settings: serde_json::Value, changed: &[String]) -> Response {
    let mut settings = settings;
    redact(&mut settings);
    let generation = state.access().map(|a| a.generation()).unwrap_or_default();
    Json(serde_json::json!({
        "settings": settings,
        "changed": changed,
        "generation": generation,
    }))
    .into_response()
}

/// `GET /admin/settings`: what was set through the API, secrets redacted.
pub(crate) async fn get_settings(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, IngestError> {
    let admin = check_admin(&state, &headers)?;
    Ok(answer(&state, admin.current(), &[]))
}

/// `PUT /admin/settings`: the settings, whole, in place of those set before.
pub(crate) async fn put_settings(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, IngestError> {
    // Who asks first: nothing of the body is read for a stranger.
    let admin = check_admin(&state, &headers)?;
    let body = read_limited(body, MAX_SETTINGS_BYTES).await?;
    let settings: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| IngestError::SettingsRefused(format!("not JSON: {e}")))?;
    if !settings.is_object() {
        return Err(IngestError::SettingsRefused(
            "settings must be a JSON object, such as {\"sampling\": {...}}".into(),
        ));
    }
    replace(state, admin, settings).await
}

/// The body, refused as soon as it passes `limit` bytes.
async fn read_limited(mut body: Body, limit: usize) -> Result<Vec<u8>, IngestError> {
    use http_body_util::BodyExt;
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| IngestError::Read(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(IngestError::BodyTooLarge {
                    limit: limit as u64,
                });
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// `DELETE /admin/settings`: back to the configuration file, environment and flags.
pub(crate) async fn delete_settings(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, IngestError> {
    let admin = check_admin(&state, &headers)?;
    replace(state, admin, serde_json::json!({})).await
}

async fn replace(
    state: AppState,
    admin: Arc<dyn AdminSettings>,
    settings: serde_json::Value,
) -> Result<Response, IngestError> {
    // Files are written and synced: off the runtime's threads.
    let kept = settings.clone();
    let changed = tokio::task::spawn_blocking(move || admin.replace(settings))
        .await
        .map_err(|e| IngestError::Internal(e.to_string()))?
        .map_err(|e| match e {
            SettingsError::Refused(r) => IngestError::SettingsRefused(r),
            SettingsError::NotKept(r) => IngestError::SettingsNotKept(r),
        })?;
    tracing::info!(changed = ?changed, "settings changed through the admin API");
    Ok(answer(&state, kept, &changed))
}
