//! The dashboard's settings (`[dashboard]` in the configuration file).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::alarms;

/// Settings of the dashboard. Its `Debug` redacts tokens, passwords and webhook
/// credentials.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardConfig {
    /// Address the dashboard listens on.
    pub listen: SocketAddr,
    /// Minutes of history kept per distribution.
    pub history_minutes: usize,
    /// The most bytes of report summaries kept (all distributions together); past it the
    /// oldest summaries are dropped and the reports that needed them say so.
    pub reports_max_bytes: u64,
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
    /// Bearer tokens that see only some distributions (pages, API, `/metrics`, alarm
    /// states), and may change only their alarms when `write` is set.
    pub scoped_tokens: Vec<ScopedToken>,
    /// Webhooks (http://) that get every alarm state change in Alertmanager's format.
    pub webhooks: Vec<String>,
    /// Alertmanagers (http://host:port, no path) that get alarms through their v2 API
    /// (`POST /api/v2/alerts`): firing ones again every `alertmanager_resend_interval`,
    /// resolved ones once. Several dashboards evaluating the same alarms send the same
    /// labels, so Alertmanager shows one alert.
    pub alertmanagers: Vec<String>,
    /// How often firing alarms are sent again to the Alertmanagers; an alert not sent
    /// again within four of these resolves there on its own (a dashboard gone).
    #[serde(with = "humantime_serde")]
    pub alertmanager_resend_interval: std::time::Duration,
    /// Lets anyone who reaches the dashboard add, replace and delete alarm definitions
    /// (`PUT`/`DELETE /api/alarms/definitions/{name}`) when it has neither tokens nor
    /// users. Off by default: an open dashboard is read-only.
    pub allow_unauthenticated_writes: bool,
    /// Where alarms made through the API are kept, so they come back after a restart;
    /// `edgelog dashboard` and `edgelog demo` use `{data_dir}/state/api-alarms.json`
    /// when it is not set.
    pub api_alarms_file: Option<std::path::PathBuf>,
    /// Live tail: records sent to one page a second, at most (the rest are counted as
    /// skipped).
    pub tail_max_per_second: u32,
    /// Live tail pages open at once, at most (one more is refused with 503).
    pub tail_max_viewers: usize,
    /// A client that accepts none of the answer waiting for it for this long is cut off
    /// (a live tail page whose client stopped reading gives its place back).
    #[serde(with = "humantime_serde")]
    pub write_timeout: std::time::Duration,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            history_minutes: 24 * 60,
            reports_max_bytes: crate::store::DEFAULT_REPORTS_MAX_BYTES as u64,
            alarm_interval: std::time::Duration::from_secs(10),
            alarms: Vec::new(),
            tokens: Vec::new(),
            users: Vec::new(),
            scoped_tokens: Vec::new(),
            webhooks: Vec::new(),
            alertmanagers: Vec::new(),
            alertmanager_resend_interval: std::time::Duration::from_secs(60),
            api_alarms_file: None,
            tail_max_per_second: 200,
            tail_max_viewers: 32,
            write_timeout: std::time::Duration::from_secs(60),
            allow_unauthenticated_writes: false,
        }
    }
}

/// A dashboard token limited to some distributions: `[[dashboard.scoped_tokens]]`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopedToken {
    /// The token...
    #[serde(default)]
    pub token: Option<String>,
    /// ...or its SHA-256 in hex.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Distribution ids, or prefixes ending in `*`.
    pub distributions: Vec<String>,
    /// May add, change and delete alarms on these distributions (not on `*`).
    #[serde(default)]
    pub write: bool,
}

impl ScopedToken {
    /// The same token as the collector checks it (the `write` flag aside).
    pub(crate) fn as_ingest(&self) -> edgelog_collector::ScopedToken {
        edgelog_collector::ScopedToken {
            token: self.token.clone(),
            sha256: self.sha256.as_ref().map(|h| h.to_ascii_lowercase()),
            distributions: self.distributions.clone(),
        }
    }
}

impl std::fmt::Debug for ScopedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopedToken")
            .field(
                "given_as",
                &if self.sha256.is_some() {
                    "sha256"
                } else {
                    "token"
                },
            )
            .field("distributions", &self.distributions)
            .field("write", &self.write)
            .finish()
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
        let hosts = |urls: &[String]| -> Vec<String> {
            urls.iter()
                .map(|w| {
                    let (scheme, rest) = w.split_once("://").unwrap_or(("", w));
                    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
                    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
                    format!("{scheme}://{host}/{HIDDEN}")
                })
                .collect()
        };
        let (webhooks, alertmanagers) = (hosts(&self.webhooks), hosts(&self.alertmanagers));
        f.debug_struct("DashboardConfig")
            .field("listen", &self.listen)
            .field("history_minutes", &self.history_minutes)
            .field("reports_max_bytes", &self.reports_max_bytes)
            .field("alarm_interval", &self.alarm_interval)
            .field("write_timeout", &self.write_timeout)
            .field("alarms", &self.alarms)
            .field("tokens", &tokens)
            .field("users", &users)
            .field("scoped_tokens", &self.scoped_tokens)
            .field("webhooks", &webhooks)
            .field("alertmanagers", &alertmanagers)
            .field(
                "alertmanager_resend_interval",
                &self.alertmanager_resend_interval,
            )
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
        if !(1 << 20..=1 << 40).contains(&self.reports_max_bytes) {
            return Err(format!(
                "dashboard.reports_max_bytes: must be from 1048576 (1 MiB) to 1099511627776 (1 TiB), got {}",
                self.reports_max_bytes
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
        if self.write_timeout < std::time::Duration::from_secs(1)
            || self.write_timeout > std::time::Duration::from_secs(3600)
        {
            return Err(format!(
                "dashboard.write_timeout: must be from 1s to 1h, got {:?}",
                self.write_timeout
            ));
        }
        for a in &self.alarms {
            a.validate().map_err(|e| format!("dashboard.{e}"))?;
        }
        if !(1..=10_000).contains(&self.tail_max_per_second) {
            return Err(format!(
                "dashboard.tail_max_per_second: must be from 1 to 10000, got {}",
                self.tail_max_per_second
            ));
        }
        if !(1..=1_000).contains(&self.tail_max_viewers) {
            return Err(format!(
                "dashboard.tail_max_viewers: must be from 1 to 1000, got {}",
                self.tail_max_viewers
            ));
        }
        // The URL itself is not repeated: it may carry credentials.
        if let Some(i) = self.webhooks.iter().position(|w| !w.starts_with("http://")) {
            return Err(format!(
                "dashboard.webhooks: entry #{} is not an http:// URL (https is not built in yet)",
                i + 1
            ));
        }
        for (i, a) in self.alertmanagers.iter().enumerate() {
            let base = reqwest::Url::parse(a).ok().filter(|u| {
                a.starts_with("http://")
                    && u.host_str().is_some_and(|h| !h.is_empty())
                    && u.path() == "/"
                    && u.query().is_none()
                    && u.fragment().is_none()
            });
            if base.is_none() {
                return Err(format!(
                    "dashboard.alertmanagers: entry #{} is not http://host:port (no path; https is not built in yet)",
                    i + 1
                ));
            }
        }
        let resend = self.alertmanager_resend_interval;
        if resend < std::time::Duration::from_secs(1)
            || resend > std::time::Duration::from_secs(3600)
        {
            return Err(format!(
                "dashboard.alertmanager_resend_interval: must be from 1s to 1h, got {resend:?}"
            ));
        }
        for (i, t) in self.scoped_tokens.iter().enumerate() {
            let key = format!("dashboard.scoped_tokens[{i}]");
            t.as_ingest().validate(&key)?;
            if t.token.as_ref().is_some_and(|x| self.tokens.contains(x)) {
                return Err(format!(
                    "{key}: the token is also in dashboard.tokens, where it sees every distribution"
                ));
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alertmanagers_are_base_urls_and_the_resend_interval_is_bounded() {
        let with = |urls: &[&str], secs: u64| DashboardConfig {
            alertmanagers: urls.iter().map(|u| u.to_string()).collect(),
            alertmanager_resend_interval: std::time::Duration::from_secs(secs),
            ..DashboardConfig::default()
        };
        assert_eq!(
            with(&["http://am:9093", "http://am2:9093/"], 60).validate(),
            Ok(())
        );
        for bad in [
            "https://am:9093",
            "am:9093",
            "http://am:9093/api/v2/alerts",
            "http://am:9093?x",
            "http://",
            "http://:9093",
            "http://127.0.0.1:99999",
            "http://a b:9093",
            "",
        ] {
            let err = with(&[bad], 60).validate().expect_err(bad);
            assert!(
                err.starts_with("dashboard.alertmanagers: entry #1"),
                "{err}"
            );
        }
        for secs in [0, 3601, u64::MAX / 2] {
            let err = with(&[], secs).validate().expect_err("interval");
            assert!(
                err.starts_with("dashboard.alertmanager_resend_interval"),
                "{err}"
            );
        }
        // The Debug form keeps a password out of logs.
        let shown = format!("{:?}", with(&["http://u:SECRET@am:9093"], 60));
        assert!(!shown.contains("SECRET"), "{shown}");
    }
}
