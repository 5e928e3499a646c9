//! Alarms to Alertmanager through its v2 API (`POST {url}/api/v2/alerts`), the way
//! Prometheus sends them: a firing alarm is sent when it fires and again every resend
//! interval, with `endsAt` four intervals ahead (so Alertmanager resolves it on its own
//! if every dashboard is gone); a resolved one is sent once with `endsAt` at its end.
//!
//! Labels are `alertname` and `alarm` (the alarm's name), `distribution`, `metric` and
//! `severity`; several dashboards evaluating the same alarms send the same labels, and
//! Alertmanager deduplicates, groups and silences them as one alert.
//!
//! Each Alertmanager has its own queue and task, as webhooks do: one that is slow or down
//! delays only itself; every request has a timeout and a bounded number of tries.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};

use crate::alarms::{AlarmState, Transition};
use crate::notify::{NotifyError, NotifyOptions, post_json, redact, rfc3339};
use crate::store::now_ms;

/// A firing alert as sent, by (alarm, distribution).
type Firing = BTreeMap<(String, String), Value>;

/// Queues and the firing alerts they are sent again.
struct Shared {
    firing: Firing,
    queues: Vec<(String, tokio::sync::mpsc::Sender<Arc<Value>>)>,
}

impl Shared {
    /// Queues `alerts` for every Alertmanager (called under the lock, so a resend and a
    /// resolution reach each queue in the order they happened).
    fn queue(&self, alerts: Vec<Value>) {
        if alerts.is_empty() {
            return;
        }
        let body = Arc::new(Value::Array(alerts));
        for (url, tx) in &self.queues {
            if let Err(e) = tx.try_send(body.clone()) {
                tracing::error!(alertmanager = %redact(url), error = %e, "alerts dropped: the alertmanager's queue is full or closed");
            }
        }
    }
}

/// Sends alarm transitions to Alertmanagers. Dropping it stops the resends; the queues'
/// tasks finish what they hold and end.
pub struct Alertmanagers {
    shared: Arc<Mutex<Shared>>,
    external_url: String,
    resend: Duration,
    resender: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Alertmanagers {
    fn drop(&mut self) {
        if let Some(r) = self.resender.take() {
            r.abort();
        }
    }
}

impl Alertmanagers {
    /// One delivery task per Alertmanager, and one that resends firing alerts every
    /// `resend` (on the current tokio runtime).
    pub fn start(
        urls: &[String],
        external_url: &str,
        resend: Duration,
        options: NotifyOptions,
    ) -> Result<Alertmanagers, NotifyError> {
        let client = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.timeout)
            .build()
            .map_err(NotifyError::Client)?;
        let queues = urls
            .iter()
            .map(|url| {
                let (tx, rx) = tokio::sync::mpsc::channel(options.queue.max(1));
                let endpoint = format!("{}/api/v2/alerts", url.trim_end_matches('/'));
                tokio::spawn(deliver(client.clone(), endpoint, rx, options.clone()));
                (url.clone(), tx)
            })
            .collect::<Vec<_>>();
        let any = !queues.is_empty();
        let shared = Arc::new(Mutex::new(Shared {
            firing: BTreeMap::new(),
            queues,
        }));
        let resender = any.then(|| tokio::spawn(resend_every(resend, shared.clone())));
        Ok(Alertmanagers {
            shared,
            external_url: external_url.to_owned(),
            resend,
            resender,
        })
    }

    /// Sends a transition into or out of ALARM (others are not alerts).
    pub fn send(&self, t: &Transition) {
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if shared.queues.is_empty() {
            return;
        }
        let key = (t.alarm.clone(), t.distribution.clone());
        match (t.from, t.to) {
            (_, AlarmState::Alarm) => {
                let alert = firing_alert(t, &self.external_url);
                let mut out = Vec::new();
                // The same alarm firing under other labels (its metric changed): the
                // alert sent before ends, or it would linger until its endsAt.
                if let Some(old) = shared.firing.get(&key)
                    && old["labels"] != alert["labels"]
                {
                    out.push(ended(old, t.at_ms));
                }
                out.push(with_ends(&alert, now_ms() + 4 * ms(self.resend)));
                shared.firing.insert(key, alert);
                shared.queue(out);
            }
            (AlarmState::Alarm, _) => {
                // Resolved under the labels it fired with.
                let alert = shared
                    .firing
                    .remove(&key)
                    .unwrap_or_else(|| firing_alert(t, &self.external_url));
                let mut resolved = ended(&alert, t.at_ms);
                resolved["startsAt"] = json!(rfc3339(t.from_since_ms));
                shared.queue(vec![resolved]);
            }
            _ => {}
        }
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The alert of a transition to ALARM, without `endsAt`.
fn firing_alert(t: &Transition, external_url: &str) -> Value {
    json!({
        "labels": {
            "alertname": t.alarm,
            "alarm": t.alarm,
            "distribution": t.distribution,
            "metric": t.metric,
            "severity": "warning",
        },
        "annotations": {
            "summary": format!("{} on {}", t.alarm, t.distribution),
            "description": t.reason,
        },
        "startsAt": rfc3339(t.at_ms),
        "generatorURL": format!("{external_url}/alarms"),
    })
}

fn with_ends(alert: &Value, ends_ms: i64) -> Value {
    let mut a = alert.clone();
    a["endsAt"] = json!(rfc3339(ends_ms));
    a
}

fn ended(alert: &Value, at_ms: i64) -> Value {
    with_ends(alert, at_ms)
}

/// Sends every firing alert again each `every`, `endsAt` four intervals ahead.
async fn resend_every(every: Duration, shared: Arc<Mutex<Shared>>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
        let ends = now_ms() + 4 * ms(every);
        let alerts = shared.firing.values().map(|a| with_ends(a, ends)).collect();
        shared.queue(alerts);
    }
}

/// One Alertmanager's task: its batches in order, each tried `tries` times at most.
async fn deliver(
    client: reqwest::Client,
    endpoint: String,
    mut rx: tokio::sync::mpsc::Receiver<Arc<Value>>,
    options: NotifyOptions,
) {
    while let Some(body) = rx.recv().await {
        post_json(&client, &endpoint, &body, &options, "alertmanager").await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transition(from: AlarmState, to: AlarmState, metric: &str) -> Transition {
        Transition {
            alarm: "5xx".into(),
            distribution: "E1".into(),
            metric: metric.into(),
            from,
            to,
            at_ms: 1_575_493_351_123,
            from_since_ms: 1_575_493_000_000,
            reason: "r".into(),
        }
    }

    #[tokio::test]
    async fn firing_resolved_and_relabelled_alerts_follow_the_v2_api() {
        // An Alertmanager that is never reached: the queue shows what would be sent.
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let am = Alertmanagers {
            shared: Arc::new(Mutex::new(Shared {
                firing: BTreeMap::new(),
                queues: vec![("http://am".into(), tx)],
            })),
            external_url: "http://d".into(),
            resend: Duration::from_secs(60),
            resender: None,
        };
        am.send(&transition(
            AlarmState::Ok,
            AlarmState::Alarm,
            "5xxErrorRate",
        ));
        let fired = rx.try_recv().expect("firing sent");
        let a = &fired[0];
        assert_eq!(a["labels"]["alarm"], "5xx");
        assert_eq!(a["labels"]["alertname"], "5xx");
        assert_eq!(a["labels"]["distribution"], "E1");
        assert_eq!(a["labels"]["metric"], "5xxErrorRate");
        assert_eq!(a["startsAt"], "2019-12-04T21:02:31.123Z");
        assert!(a["endsAt"].as_str().is_some_and(|e| e > "2026"), "{a}");

        // Fires again under another metric: the first alert ends.
        am.send(&transition(
            AlarmState::Alarm,
            AlarmState::Alarm,
            "4xxErrorRate",
        ));
        let again = rx.try_recv().expect("relabelled");
        assert_eq!(again.as_array().map(Vec::len), Some(2), "{again}");
        assert_eq!(again[0]["labels"]["metric"], "5xxErrorRate");
        assert_eq!(again[0]["endsAt"], "2019-12-04T21:02:31.123Z");
        assert_eq!(again[1]["labels"]["metric"], "4xxErrorRate");

        // Resolved under the labels it fired with, once; OK to INSUFFICIENT_DATA is quiet.
        am.send(&transition(AlarmState::Alarm, AlarmState::Ok, "ignored"));
        let back = rx.try_recv().expect("resolved");
        assert_eq!(back[0]["labels"]["metric"], "4xxErrorRate");
        assert_eq!(back[0]["endsAt"], "2019-12-04T21:02:31.123Z");
        assert_eq!(back[0]["startsAt"], "2019-12-04T20:56:40.000Z");
        am.send(&transition(
            AlarmState::Ok,
            AlarmState::InsufficientData,
            "5xxErrorRate",
        ));
        assert!(rx.try_recv().is_err());
        assert!(am.shared.lock().expect("lock").firing.is_empty());
    }
}
