//! Alarm notifications: each state change into or out of ALARM is posted to every webhook
//! in Alertmanager's webhook format (`firing` / `resolved`), retried with backoff.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use serde_json::json;

use crate::alarms::{AlarmState, Transition};

/// Tries per notification and webhook.
const TRIES: usize = 8;

/// RFC 3339 in UTC for a millisecond timestamp.
fn rfc3339(ms: i64) -> String {
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
/// notification (changes between OK and INSUFFICIENT_DATA).
pub fn alertmanager_body(t: &Transition, external_url: &str) -> Option<serde_json::Value> {
    let status = match (t.from, t.to) {
        (_, AlarmState::Alarm) => "firing",
        (AlarmState::Alarm, _) => "resolved",
        _ => return None,
    };
    let labels =
        json!({ "alertname": t.alarm, "distribution": t.distribution, "severity": "warning" });
    let ends = if status == "firing" {
        "0001-01-01T00:00:00Z".to_owned()
    } else {
        rfc3339(t.at_ms)
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
            "startsAt": rfc3339(t.at_ms),
            "endsAt": ends,
            "generatorURL": format!("{external_url}/api/alarms"),
            "fingerprint": format!("{:016x}", xxhash_rust::xxh3::xxh3_64(format!("{}/{}", t.alarm, t.distribution).as_bytes())),
        }],
    }))
}

/// Posts a transition to every webhook, retrying each until it answers 2xx or the tries
/// run out. Returns how many webhooks took it.
pub async fn notify(
    client: &reqwest::Client,
    webhooks: &[String],
    t: &Transition,
    external_url: &str,
) -> usize {
    let Some(body) = alertmanager_body(t, external_url) else {
        return 0;
    };
    let mut delivered = 0;
    for url in webhooks {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(30))
            .with_jitter()
            .with_max_times(TRIES)
            .build();
        loop {
            let result = client.post(url).json(&body).send().await;
            let err = match result {
                Ok(r) if r.status().is_success() => {
                    delivered += 1;
                    break;
                }
                Ok(r) => format!("HTTP {}", r.status()),
                Err(e) => e.to_string(),
            };
            match delays.next() {
                Some(d) => {
                    tracing::warn!(webhook = %url, alarm = %t.alarm, error = %err, retry_in_ms = d.as_millis() as u64, "webhook failed");
                    tokio::time::sleep(d).await;
                }
                None => {
                    tracing::error!(webhook = %url, alarm = %t.alarm, error = %err, "webhook gave up");
                    break;
                }
            }
        }
    }
    delivered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_follow_alertmanager() {
        let t = Transition {
            alarm: "5xx".into(),
            distribution: "E1".into(),
            from: AlarmState::Ok,
            to: AlarmState::Alarm,
            at_ms: 1_575_493_351_123,
            reason: "r".into(),
        };
        let b = alertmanager_body(&t, "http://d").expect("firing");
        assert_eq!(b["status"], "firing");
        assert_eq!(b["alerts"][0]["startsAt"], "2019-12-04T21:02:31.123Z");
        assert_eq!(b["alerts"][0]["labels"]["alertname"], "5xx");
        let back = Transition {
            from: AlarmState::Alarm,
            to: AlarmState::Ok,
            ..t.clone()
        };
        assert_eq!(
            alertmanager_body(&back, "http://d").expect("resolved")["status"],
            "resolved"
        );
        let quiet = Transition {
            from: AlarmState::InsufficientData,
            to: AlarmState::Ok,
            ..t
        };
        assert!(alertmanager_body(&quiet, "http://d").is_none());
    }
}
