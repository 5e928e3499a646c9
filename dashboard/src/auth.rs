//! Who may reach the dashboard: its own host names on loopback (against DNS rebinding),
//! bearer tokens or basic-auth users, and who may change alarm definitions.

use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::Dashboard;
use crate::config::DashboardConfig;
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

/// What the caller may see and do; `require_auth` gives every request one.
#[derive(Debug, Clone)]
pub struct Scope {
    /// Per matching token: distribution ids or prefixes ending in `*`, and whether it
    /// may change their alarms. `None`: every distribution.
    entries: Option<Vec<(Vec<String>, bool)>>,
    /// May change alarm definitions (unscoped).
    write: bool,
}

impl Scope {
    /// Every distribution, and alarm changes where the dashboard allows them.
    pub fn full() -> Scope {
        Scope {
            entries: None,
            write: true,
        }
    }

    pub fn is_full(&self) -> bool {
        self.entries.is_none()
    }

    pub fn sees(&self, id: &str) -> bool {
        self.entries.as_ref().is_none_or(|e| {
            e.iter()
                .any(|(p, _)| edgelog_record::distribution_allowed(p, id))
        })
    }

    /// May change alarms on `id`: an entry that sees it may write.
    fn writes(&self, id: &str) -> bool {
        match &self.entries {
            None => self.write,
            Some(e) => e
                .iter()
                .any(|(p, w)| *w && edgelog_record::distribution_allowed(p, id)),
        }
    }

    /// Refuses a distribution it may not see (whether it exists or not).
    pub fn check(&self, id: &str) -> Result<(), ApiError> {
        if self.sees(id) {
            Ok(())
        } else {
            Err(ApiError::NotInScope(id.to_owned()))
        }
    }

    /// Refuses a change to an alarm on `distribution` (`*`: every one), naming it only
    /// when the caller gave it (`named`), not when it is another alarm's.
    pub(crate) fn check_write(
        &self,
        distribution: &str,
        alarm: Option<&str>,
    ) -> Result<(), ApiError> {
        let scoped_ok = |s: &Scope| distribution != "*" && s.writes(distribution);
        let ok = match &self.entries {
            None => self.write,
            Some(e) => {
                if !e.iter().any(|(_, w)| *w) {
                    return Err(ApiError::ReadOnlyToken);
                }
                scoped_ok(self)
            }
        };
        match (ok, alarm) {
            (true, _) => Ok(()),
            (false, _) if self.entries.is_none() => Err(ApiError::ReadOnlyToken),
            (false, Some(name)) => Err(ApiError::AlarmNotInScope(name.to_owned())),
            (false, None) => Err(ApiError::NotInScope(distribution.to_owned())),
        }
    }
}

/// The `Authorization` header values the settings accept (`Bearer ...`, `Basic ...`).
pub(crate) fn credentials(cfg: &DashboardConfig) -> Vec<String> {
    use base64::Engine;
    cfg.tokens
        .iter()
        .map(|t| format!("Bearer {t}"))
        .chain(cfg.users.iter().map(|u| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(u)
            )
        }))
        .collect()
}

/// Refuses (403) a request whose `Host` is not the dashboard's own loopback address.
/// A request without `Host` passes: browsers always send one. `/healthz` passes.
pub(crate) async fn check_host(State(d): State<Dashboard>, req: Request, next: Next) -> Response {
    let Some(allowed) = d.allowed_hosts.as_ref() else {
        return next.run(req).await;
    };
    let host = req
        .headers()
        .get(header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()));
    match host {
        Some(h) if req.uri().path() != "/healthz" && !allowed.contains(&h.to_ascii_lowercase()) => {
            ApiError::ForeignHost {
                host: h,
                allowed: allowed.join(", "),
            }
            .into_response()
        }
        _ => next.run(req).await,
    }
}

/// Refuses (403) a change to alarm definitions on a dashboard without credentials,
/// unless `allow_unauthenticated_writes` is set.
pub(crate) async fn check_writes(State(d): State<Dashboard>, req: Request, next: Next) -> Response {
    if d.writes_allowed {
        return next.run(req).await;
    }
    ApiError::ReadOnly.into_response()
}

/// Refuses (401) a request without one of the credentials, when there are any.
pub(crate) async fn require_auth(
    State(d): State<Dashboard>,
    mut req: Request,
    next: Next,
) -> Response {
    if (d.credentials.is_empty() && d.scoped.is_empty()) || req.uri().path() == "/healthz" {
        req.extensions_mut().insert(Scope::full());
        return next.run(req).await;
    }
    let mut all = req.headers().get_all(header::AUTHORIZATION).iter();
    let given = all.next().map(|v| v.as_bytes()).unwrap_or_default();
    if all.next().is_some() {
        return ApiError::Unauthorized.into_response();
    }
    // The scheme is case-insensitive (RFC 7235).
    let normalized = match std::str::from_utf8(given)
        .ok()
        .and_then(|v| v.trim_start().split_once(' '))
    {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => {
            format!("Bearer {}", t.trim()).into_bytes()
        }
        _ => given.to_vec(),
    };
    let given = normalized.as_slice();
    // Compare with every credential without stopping early.
    let mut ok = subtle::Choice::from(0);
    for c in d.credentials.iter() {
        ok |= subtle::ConstantTimeEq::ct_eq(c.as_bytes(), given);
    }
    if bool::from(ok) {
        req.extensions_mut().insert(Scope::full());
        return next.run(req).await;
    }
    let bearer = std::str::from_utf8(given)
        .ok()
        .and_then(|v| v.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().as_bytes());
    if let Some(token) = bearer
        && !d.scoped.is_empty()
    {
        let tokens: Vec<_> = d.scoped.iter().map(|(t, _)| t.clone()).collect();
        let (_, matched) = edgelog_collector::matching_tokens(&[], &tokens, token);
        if !matched.is_empty() {
            let scope = Scope {
                entries: Some(
                    matched
                        .iter()
                        .map(|&i| (d.scoped[i].0.distributions.clone(), d.scoped[i].1))
                        .collect(),
                ),
                write: false,
            };
            req.extensions_mut().insert(scope);
            return next.run(req).await;
        }
    }
    ApiError::Unauthorized.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_listed_twice_writes_only_where_an_entry_lets_it_and_names_no_other_distribution() {
        let s = Scope {
            entries: Some(vec![
                (vec!["EA*".to_owned()], true),
                (vec!["EB".to_owned()], false),
            ]),
            write: false,
        };
        assert!(s.sees("EB") && s.sees("EA1") && !s.sees("EC"));
        assert!(s.check_write("EA1", None).is_ok());
        assert!(matches!(
            s.check_write("EB", None),
            Err(ApiError::NotInScope(_))
        ));
        assert!(s.check_write("*", None).is_err());
        let e = s
            .check_write("ESECRET", Some("their-alarm"))
            .expect_err("another's alarm")
            .to_string();
        assert!(!e.contains("ESECRET") && e.contains("their-alarm"), "{e}");
        let reader = Scope {
            entries: Some(vec![(vec!["EA".to_owned()], false)]),
            write: false,
        };
        assert!(matches!(
            reader.check_write("EA", None),
            Err(ApiError::ReadOnlyToken)
        ));
        assert!(Scope::full().check_write("*", None).is_ok());
    }
}
