//! Alarms to Alertmanager through its v2 API (`POST {url}/api/v2/alerts`), the way
//! Prometheus sends them: a firing alarm is sent when it fires and again every resend
//! interval, with `endsAt` four intervals ahead (so Alertmanager resolves it on its own
//! if every dashboard is gone); a resolved one is sent once with `endsAt` at its end.
//!
//! Labels are `alertname` and `alarm` (the alarm's name), `distribution`, `metric` and
//! `severity`; several dashboards evaluating the same alarms send the same labels, and
//! Alertmanager deduplicates, groups and silences them as one alert.
//!
//! Each Alertmanager has its own task, as webhooks do: one that is slow or down delays only
//! itself; every request has a timeout and a bounded number of tries. What waits for an
//! Alertmanager is the latest alert per label set, not a queue of sends: thousands of
//! transitions at once go as one batch, one down for hours holds one entry per alert
//! (never more), and a resolution is never dropped, only replaced by a newer state.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};

use crate::alarms::{AlarmState, Transition};
use crate::notify::{NotifyError, NotifyOptions, post_json, redact, rfc3339};
use crate::store::now_ms;

/// A firing alert as sent, by (alarm, distribution).
type Firing = BTreeMap<(String, String), Value>;

/// One Alertmanager: the alerts waiting for it, the latest per label set.
struct Target {
    endpoint: String,
    waiting: Mutex<BTreeMap<String, Value>>,
    wake: tokio::sync::Notify,
}

impl Target {
    fn take(&self) -> BTreeMap<String, Value> {
        std::mem::take(&mut *self.waiting.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts back what could not be sent, under anything newer that came meanwhile.
    fn put_back(&self, unsent: BTreeMap<String, Value>) {
        let mut w = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        for (k, v) in unsent {
            w.entry(k).or_insert(v);
        }
    }
}

/// The targets and the firing alerts they are sent again.
struct Shared {
    firing: Firing,
    targets: Vec<Arc<Target>>,
}

impl Shared {
    /// Hands `alerts` to every Alertmanager, each replacing what waits under its labels
    /// (called under the lock, so a resend and a resolution land in the order they
    /// happened).
    fn queue(&self, alerts: Vec<Value>) {
        if alerts.is_empty() {
            return;
        }
        for t in &self.targets {
            let mut w = t.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            for a in &alerts {
                w.insert(a["labels"].to_string(), a.clone());
            }
            drop(w);
            t.wake.notify_one();
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
        let targets = urls
            .iter()
            .map(|url| {
                let t = Arc::new(Target {
                    endpoint: format!("{}/api/v2/alerts", url.trim_end_matches('/')),
                    waiting: Mutex::default(),
                    wake: tokio::sync::Notify::new(),
                });
                tokio::spawn(deliver(client.clone(), t.clone(), options.clone()));
                t
            })
            .collect::<Vec<_>>();
        let any = !targets.is_empty();
        let shared = Arc::new(Mutex::new(Shared {
            firing: BTreeMap::new(),
            targets,
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
        if shared.targets.is_empty() {
            return;
        }
        let key = (t.alarm.clone(), t.distribution.clone());
        match (t.from, t.to) {
            (from, AlarmState::Alarm) => {
                let mut alert = firing_alert(t, &self.external_url);
                if from == AlarmState::Alarm {
                    // Still the same firing, under new labels: it began back then.
                    alert["startsAt"] = json!(rfc3339(t.from_since_ms));
                }
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

/// One Alertmanager's task: whatever waits goes as one batch, tried `tries` times with
/// backoff; what fails waits again (under anything newer) for the next round.
async fn deliver(client: reqwest::Client, target: Arc<Target>, options: NotifyOptions) {
    loop {
        target.wake.notified().await;
        let batch = target.take();
        if batch.is_empty() {
            continue;
        }
        let body = Value::Array(batch.values().cloned().collect());
        if !post_json(&client, &target.endpoint, &body, &options, "alertmanager").await {
            tracing::warn!(alertmanager = %redact(&target.endpoint), alerts = batch.len(), "alerts kept for the next try");
            target.put_back(batch);
            tokio::time::sleep(options.max_delay).await;
            target.wake.notify_one();
        }
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

    /// What waits for the one Alertmanager, in label order (taken: it waits no more).
    fn waiting(am: &Alertmanagers) -> Vec<Value> {
        let shared = am.shared.lock().expect("lock");
        shared.targets[0].take().into_values().collect()
    }

    #[tokio::test]
    async fn firing_resolved_and_relabelled_alerts_follow_the_v2_api() {
        // An Alertmanager that is never reached: what waits shows what would be sent.
        let am = Alertmanagers {
            shared: Arc::new(Mutex::new(Shared {
                firing: BTreeMap::new(),
                targets: vec![Arc::new(Target {
                    endpoint: "http://am/api/v2/alerts".into(),
                    waiting: Mutex::default(),
                    wake: tokio::sync::Notify::new(),
                })],
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
        let fired = waiting(&am);
        let a = &fired[0];
        assert_eq!(a["labels"]["alarm"], "5xx");
        assert_eq!(a["labels"]["alertname"], "5xx");
        assert_eq!(a["labels"]["distribution"], "E1");
        assert_eq!(a["labels"]["metric"], "5xxErrorRate");
        assert_eq!(a["startsAt"], "2019-12-04T21:02:31.123Z");
        assert!(a["endsAt"].as_str().is_some_and(|e| e > "2026"), "{a}");

        // Fires on under another metric: the first alert ends, the new one began when
        // the firing did.
        am.send(&transition(
            AlarmState::Alarm,
            AlarmState::Alarm,
            "4xxErrorRate",
        ));
        let again = waiting(&am);
        assert_eq!(again.len(), 2, "{again:?}");
        assert_eq!(again[0]["labels"]["metric"], "4xxErrorRate");
        assert_eq!(again[0]["startsAt"], "2019-12-04T20:56:40.000Z");
        assert_eq!(again[1]["labels"]["metric"], "5xxErrorRate");
        assert_eq!(again[1]["endsAt"], "2019-12-04T21:02:31.123Z");

        // Resolved under the labels it fired with, once; OK to INSUFFICIENT_DATA is quiet.
        am.send(&transition(AlarmState::Alarm, AlarmState::Ok, "ignored"));
        let back = waiting(&am);
        assert_eq!(back.len(), 1, "{back:?}");
        assert_eq!(back[0]["labels"]["metric"], "4xxErrorRate");
        assert_eq!(back[0]["endsAt"], "2019-12-04T21:02:31.123Z");
        assert_eq!(back[0]["startsAt"], "2019-12-04T20:56:40.000Z");
        am.send(&transition(
            AlarmState::Ok,
            AlarmState::InsufficientData,
            "5xxErrorRate",
        ));
        assert!(waiting(&am).is_empty());
        assert!(am.shared.lock().expect("lock").firing.is_empty());

        // A burst of transitions, then a resolution of one: one entry per alert waits,
        // the resolution in place of its firing.
        for d in 0..5_000 {
            let mut t = transition(AlarmState::Ok, AlarmState::Alarm, "5xxErrorRate");
            t.distribution = format!("E{d}");
            am.send(&t);
        }
        let mut t = transition(AlarmState::Alarm, AlarmState::Ok, "5xxErrorRate");
        t.distribution = "E7".into();
        am.send(&t);
        let all = waiting(&am);
        assert_eq!(all.len(), 5_000);
        let e7 = all.iter().find(|a| a["labels"]["distribution"] == "E7");
        assert_eq!(
            e7.map(|a| &a["endsAt"]),
            Some(&json!("2019-12-04T21:02:31.123Z"))
        );
    }
}
