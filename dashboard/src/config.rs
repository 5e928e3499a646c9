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
