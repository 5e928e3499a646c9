//! Alarm notifications: each state change into or out of ALARM is posted to every webhook
//! in Alertmanager's webhook format (`firing` / `resolved`).
//!
//! Each webhook has its own queue and task, so one that is slow, down or stuck (it
//! accepts the connection and never answers) delays only its own notifications: every
//! request has a timeout, every notification a bounded number of tries with backoff
//! (jittered, seeded anew in each process), and a webhook gets its notifications in the
//! order they happened.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use serde_json::json;

use crate::alarms::{AlarmState, Transition};

/// RFC 3339 in UTC for a millisecond timestamp.
pub(crate) fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let (y, m, d) = edgelog_record::time::civil_from_days(days);
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms.rem_euclid(1000)
    )
}

/// The Alertmanager webhook body for one transition, or `None` when it is not worth a
/// notification (changes between OK and INSUFFICIENT_DATA). A firing alert starts when
/// the alarm went to ALARM; a resolved one started then too, and ends now.
pub fn alertmanager_body(t: &Transition, external_url: &str) -> Option<serde_json::Value> {
    let status = match (t.from, t.to) {
        (_, AlarmState::Alarm) => "firing",
        (AlarmState::Alarm, _) => "resolved",
        _ => return None,
    };
    let labels =
        json!({ "alertname": t.alarm, "distribution": t.distribution, "severity": "warning" });
    let (starts, ends) = if status == "firing" {
        (rfc3339(t.at_ms), "0001-01-01T00:00:00Z".to_owned())
    } else {
        (rfc3339(t.from_since_ms), rfc3339(t.at_ms))
    };
    Some(json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{}\",distribution=\"{}\"}}", t.alarm, t.distribution),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "edgelog",
        "groupLabels": { "alertname": t.alarm, "distribution": t.distribution },
        "commonLabels": labels,
        "commonAnnotations": { "summary": t.reason },
        "externalURL": external_url,
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": { "summary": t.reason, "state": format!("{:?}", t.to) },
            "startsAt": starts,
            "endsAt": ends,
            "generatorURL": format!("{external_url}/api/alarms"),
            "fingerprint": format!("{:016x}", xxhash_rust::xxh3::xxh3_64(format!("{}/{}", t.alarm, t.distribution).as_bytes())),
        }],
    }))
}

/// How notifications are delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyOptions {
    /// Longest wait for a webhook's answer (connecting included).
    pub timeout: Duration,
    /// Tries per notification and webhook, the first included.
    pub tries: usize,
    /// First wait between tries; each next one doubles, up to `max_delay`, plus jitter.
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Notifications waiting per webhook; past this, new ones for it are dropped (logged).
    pub queue: usize,
}

impl Default for NotifyOptions {
    fn default() -> Self {
        NotifyOptions {
            timeout: Duration::from_secs(5),
            tries: 6,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
            queue: 1024,
        }
    }
}

/// A seed for the jitter of retry delays: random in every process (std's `RandomState`
/// keys are), and different at every call.
pub fn jitter_seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// The waits between the tries of one notification.
pub fn retry_delays(o: &NotifyOptions) -> impl Iterator<Item = Duration> + use<> {
    ExponentialBuilder::default()
        .with_min_delay(o.min_delay)
        .with_max_delay(o.max_delay)
        .with_jitter()
        .with_jitter_seed(jitter_seed())
        .with_max_times(o.tries.saturating_sub(1))
        .build()
}

/// Why notifications cannot start.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("cannot build the webhook client")]
    Client(#[source] reqwest::Error),
}

/// Posts alarm transitions to webhooks, each webhook on its own task. Dropping it lets
/// the tasks finish what is queued and end.
pub struct Notifier {
    queues: Vec<(String, tokio::sync::mpsc::Sender<Arc<serde_json::Value>>)>,
    external_url: String,
}

impl Notifier {
    /// Starts one delivery task per webhook (on the current tokio runtime). Fails rather
    /// than post without a timeout: a stuck webhook would hold its queue forever.
    pub fn start(
        webhooks: &[String],
        external_url: &str,
        options: NotifyOptions,
    ) -> Result<Notifier, NotifyError> {
        let client = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.timeout)
            .build()
            .map_err(NotifyError::Client)?;
        let queues = webhooks
            .iter()
            .map(|url| {
                let (tx, rx) = tokio::sync::mpsc::channel(options.queue.max(1));
                tokio::spawn(deliver(client.clone(), url.clone(), rx, options.clone()));
                (url.clone(), tx)
            })
            .collect();
        Ok(Notifier {
            queues,
            external_url: external_url.to_owned(),
        })
    }

    /// Queues a transition for every webhook (when it is worth a notification); returns
    /// how many queues took it.
    pub fn send(&self, t: &Transition) -> usize {
        let Some(body) = alertmanager_body(t, &self.external_url) else {
            return 0;
        };
        let body = Arc::new(body);
        let mut queued = 0;
        for (url, tx) in &self.queues {
            match tx.try_send(body.clone()) {
                Ok(()) => queued += 1,
                Err(e) => {
                    tracing::error!(webhook = %redact(url), alarm = %t.alarm, distribution = %t.distribution, error = %e, "notification dropped: the webhook's queue is full or closed");
                }
            }
        }
        queued
    }
}

/// A webhook URL for logs: scheme and host (its path or query may hold a key).
pub(crate) fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    format!("{scheme}://{host}/…")
}

/// One webhook's task: its notifications in order, each tried `tries` times at most.
async fn deliver(
    client: reqwest::Client,
    url: String,
    mut rx: tokio::sync::mpsc::Receiver<Arc<serde_json::Value>>,
    options: NotifyOptions,
) {
    while let Some(body) = rx.recv().await {
        post_json(&client, &url, &body, &options, "webhook").await;
    }
}

/// Posts `body` to `url` until it is taken (2xx) or `options.tries` tries are spent,
/// waiting the jittered backoff between tries; each failure is logged as `what`'s.
pub(crate) async fn post_json(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    options: &NotifyOptions,
    what: &'static str,
) -> bool {
    let shown = redact(url);
    let mut delays = retry_delays(options);
    loop {
        let err = match client.post(url).json(body).send().await {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                format!(
                    "HTTP {status}: {}",
                    text.chars().take(200).collect::<String>()
                )
            }
            Err(e) if e.is_timeout() => format!("no answer within {:?}", options.timeout),
            Err(e) => e.to_string(),
        };
        match delays.next() {
            Some(d) => {
                tracing::warn!(to = what, url = %shown, error = %err, retry_in_ms = d.as_millis() as u64, "notification failed");
                tokio::time::sleep(d).await;
            }
            None => {
                tracing::error!(to = what, url = %shown, error = %err, tries = options.tries, "notification given up");
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_follow_alertmanager() {
        let t = Transition {
            alarm: "5xx".into(),
            distribution: "E1".into(),
            metric: "5xxErrorRate".into(),
            from: AlarmState::Ok,
            to: AlarmState::Alarm,
            at_ms: 1_575_493_351_123,
            from_since_ms: 1_575_493_000_000,
            reason: "r".into(),
        };
        let b = alertmanager_body(&t, "http://d").expect("firing");
        assert_eq!(b["status"], "firing");
        assert_eq!(b["alerts"][0]["startsAt"], "2019-12-04T21:02:31.123Z");
        assert_eq!(b["alerts"][0]["labels"]["alertname"], "5xx");
        let back = Transition {
            from: AlarmState::Alarm,
            to: AlarmState::Ok,
            at_ms: 1_575_493_411_000,
            from_since_ms: t.at_ms,
            ..t.clone()
        };
        let resolved = alertmanager_body(&back, "http://d").expect("resolved");
        assert_eq!(resolved["status"], "resolved");
        // The same alert: it started when it fired, and ends now.
        assert_eq!(
            resolved["alerts"][0]["startsAt"],
            "2019-12-04T21:02:31.123Z"
        );
        assert_eq!(resolved["alerts"][0]["endsAt"], "2019-12-04T21:03:31.000Z");
        assert_eq!(
            resolved["alerts"][0]["fingerprint"],
            b["alerts"][0]["fingerprint"]
        );
        let quiet = Transition {
            from: AlarmState::InsufficientData,
            to: AlarmState::Ok,
            ..t
        };
        assert!(alertmanager_body(&quiet, "http://d").is_none());
    }

    #[test]
    fn retry_delays_are_bounded_and_jittered_differently_each_time() {
        let o = NotifyOptions::default();
        let a: Vec<Duration> = retry_delays(&o).collect();
        let b: Vec<Duration> = retry_delays(&o).collect();
        assert_eq!(a.len(), o.tries - 1);
        assert_ne!(a, b, "the same jitter twice");
        assert_ne!(jitter_seed(), jitter_seed());
        assert_eq!(redact("http://u:pw@h:9/key?k=v"), "http://h:9/…");
    }
}
