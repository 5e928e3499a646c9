//! The demo's own alarm (5xxErrorRate > 5 % in 2 of 3 minutes) fires on a 5xx burst and
//! clears when late, clean records dilute the same minutes; a webhook receiver gets one
//! Alertmanager notification per distribution and state change.

use std::time::Duration;

use edgelog_tests::scenarios::{Received, send_5xx_burst, webhook_receiver};
use edgelog_tests::{TOKEN, TestServer, http_get, run_edge, wait_until, within};

/// The alarm states on the dashboard (none if it cannot be read).
fn alarm_states(demo: &TestServer) -> Vec<serde_json::Value> {
    http_get(&demo.dashboard_url("/api/alarms"))
        .ok()
        .and_then(|body| serde_json::from_str(&body).ok())
        .unwrap_or_default()
}

/// Waits (20 s at most) for `count` notifications in all, then 6 s more for a duplicate
/// to show up; returns them all, and the distributions of those with `status`, sorted.
fn settled(
    received: &Received,
    count: usize,
    status: &str,
) -> (Vec<serde_json::Value>, Vec<String>) {
    wait_until(within(Duration::from_secs(20)), || {
        received.lock().map(|g| g.len()).unwrap_or(0) >= count
    });
    // The scenario: a window for a duplicate to show up (nothing to poll for).
    std::thread::sleep(Duration::from_secs(6));
    let got: Vec<serde_json::Value> = received
        .lock()
        .map(|g| g.iter().map(|(_, b)| b.clone()).collect())
        .unwrap_or_default();
    let mut ids: Vec<String> = got
        .iter()
        .filter(|b| b["status"] == status)
        .map(|b| {
            b["alerts"][0]["labels"]["distribution"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    ids.sort();
    (got, ids)
}

#[test]
fn a_5xx_burst_puts_the_demo_alarm_in_alarm_and_late_clean_records_clear_it() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let (hook, received) = webhook_receiver()?;
    let demo = TestServer::demo(
        dir.path(),
        &["--no-traffic", "--token", TOKEN],
        &[(
            "EDGELOG_DASHBOARD__WEBHOOKS",
            format!("[\"http://127.0.0.1:{hook}/alerts\"]"),
        )],
    )?;
    // 30 % 5xx over the last 4 minutes, for 3 distributions.
    send_5xx_burst(&demo.url())?;
    let mut states = Vec::new();
    let fired = wait_until(within(Duration::from_secs(30)), || {
        states = alarm_states(&demo);
        states.len() == 3 && states.iter().all(|s| s["state"] == "ALARM")
    });
    anyhow::ensure!(fired, "alarms did not fire: {states:?}");
    assert!(
        states.iter().all(|s| s["alarm"] == "5xx-error-rate"),
        "{states:?}"
    );
    let history: Vec<serde_json::Value> =
        serde_json::from_str(&http_get(&demo.dashboard_url("/api/alarms/history"))?)?;
    assert!(
        history.iter().any(|t| t["to"] == "ALARM"
            && t["reason"]
                .as_str()
                .is_some_and(|r| r.contains("ErrorRate5xx"))),
        "{history:?}"
    );
    let page = http_get(&demo.dashboard_url("/"))?;
    assert!(
        page.contains("5xx-error-rate") && page.contains("Alarm"),
        "{page}"
    );
    // One firing notification per distribution, each exactly once.
    let (got, fired) = settled(&received, 3, "firing");
    let mut ids: Vec<String> = states
        .iter()
        .map(|s| s["distribution"].as_str().unwrap_or("").to_owned())
        .collect();
    ids.sort();
    assert_eq!(fired, ids, "notifications: {got:?}");
    assert!(
        got.iter()
            .all(|b| b["version"] == "4"
                && b["alerts"][0]["labels"]["alertname"] == "5xx-error-rate"),
        "{got:?}"
    );

    // Late records update their minutes: ten times as many clean ones over the same
    // minutes bring the 5xx rate under 5 %, and the alarm back to OK.
    run_edge(
        &demo.url(),
        &[
            "--total",
            "150000",
            "--rate",
            "0",
            "--backfill-hours",
            "0.066",
        ],
    )?;
    let mut states = Vec::new();
    let cleared = wait_until(within(Duration::from_secs(60)), || {
        states = alarm_states(&demo);
        states.len() == 3 && states.iter().all(|s| s["state"] == "OK")
    });
    anyhow::ensure!(cleared, "alarms did not clear: {states:?}");
    let (got, resolved) = settled(&received, 6, "resolved");
    assert_eq!(resolved, ids, "notifications: {got:?}");
    assert_eq!(
        got.len(),
        6,
        "one firing and one resolved per distribution: {got:?}"
    );
    let history: Vec<serde_json::Value> =
        serde_json::from_str(&http_get(&demo.dashboard_url("/api/alarms/history"))?)?;
    assert!(
        history
            .iter()
            .filter(|t| t["from"] == "ALARM" && t["to"] == "OK")
            .count()
            == 3,
        "{history:?}"
    );
    demo.stop()?;
    Ok(())
}
