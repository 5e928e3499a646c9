//! edgelog in the monitoring stack operators already run, with Debian's packages: two
//! dashboards evaluating the same alarm send it to one Alertmanager through its v2 API,
//! which shows one alert per distribution (not two), notifies its receiver once per
//! group, and resolves them when the alarm goes; Prometheus scrapes a collector and a
//! dashboard and its API shows their series with the values they served.

use std::time::Duration;

use anyhow::Context;
use edgelog_tests::monitoring::{Alertmanager, Prometheus};
use edgelog_tests::scenarios::{Received, send_5xx_burst, webhook_receiver};
use edgelog_tests::{TOKEN, TestServer, http_get, http_request, wait_until, within};

const ALARM: &str = "5xx-error-rate";

/// Whether an RFC 3339 UTC time is after `now`: such times compare as strings up to the
/// seconds (Alertmanager adds fractions).
fn later_than(t: &str, now: &str) -> bool {
    t.get(..19).unwrap_or(t) > now.get(..19).unwrap_or(now)
}

fn utc_now() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let secs = ms / 1000;
    let (y, m, d) = edgelog_record::time::civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// The alerts Alertmanager still holds as active (not yet ended).
fn active(am: &Alertmanager) -> Vec<serde_json::Value> {
    let now = utc_now();
    am.alerts()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a["endsAt"].as_str().is_some_and(|e| later_than(e, &now)))
        .collect()
}

fn states(demo: &TestServer) -> Vec<serde_json::Value> {
    http_get(&demo.dashboard_url("/api/alarms"))
        .ok()
        .and_then(|b| serde_json::from_str(&b).ok())
        .unwrap_or_default()
}

fn notified(received: &Received, status: &str) -> Vec<serde_json::Value> {
    received
        .lock()
        .map(|g| g.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|(_, b)| b)
        .filter(|b| b["status"] == status)
        .collect()
}

/// The distributions of Alertmanager's notifications (their groups), sorted, once each.
fn distributions_of(groups: &[serde_json::Value]) -> Vec<String> {
    let mut out: Vec<String> = groups
        .iter()
        .map(|g| {
            g["groupLabels"]["distribution"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

#[test]
fn two_dashboards_alarms_reach_alertmanager_as_one_alert_each_and_prometheus_scrapes_both()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (hook, received) = webhook_receiver()?;
    let am = Alertmanager::start(&dir.path().join("alertmanager"), hook)?;
    let env = [
        (
            "EDGELOG_DASHBOARD__ALERTMANAGERS",
            format!("[\"{}\"]", am.url()),
        ),
        (
            "EDGELOG_DASHBOARD__ALLOW_UNAUTHENTICATED_WRITES",
            "true".to_owned(),
        ),
    ];
    let demos = [
        TestServer::demo(
            &dir.path().join("a"),
            &["--no-traffic", "--token", TOKEN],
            &env,
        )?,
        TestServer::demo(
            &dir.path().join("b"),
            &["--no-traffic", "--token", TOKEN],
            &env,
        )?,
    ];
    let prometheus = Prometheus::start(
        &dir.path().join("prometheus"),
        &[
            ("collector", host_port(&demos[0].url())),
            ("dashboard", host_port(&demos[0].dashboard_url(""))),
        ],
    )?;

    // The same burst into both: each dashboard's alarm fires for three distributions.
    for d in &demos {
        send_5xx_burst(&d.url())?;
    }
    let firing = |d: &TestServer| {
        let s = states(d);
        s.len() == 3 && s.iter().all(|s| s["state"] == "ALARM")
    };
    anyhow::ensure!(
        wait_until(within(Duration::from_secs(60)), || demos.iter().all(firing)),
        "the alarms did not fire: {:?} {:?}",
        states(&demos[0]),
        states(&demos[1])
    );

    // One alert per distribution in Alertmanager, with the alarm's labels.
    let def: Vec<serde_json::Value> = serde_json::from_str(&http_get(
        &demos[0].dashboard_url("/api/alarms/definitions"),
    )?)?;
    let metric = def
        .iter()
        .find(|d| d["name"] == ALARM)
        .and_then(|d| d["metric"].as_str())
        .context("the demo's alarm")?
        .to_owned();
    wait_until(within(Duration::from_secs(20)), || active(&am).len() >= 3);
    // Both dashboards have sent by now; give a second send a moment to be counted twice.
    std::thread::sleep(Duration::from_secs(2));
    let alerts = active(&am);
    let mut distributions: Vec<String> = alerts
        .iter()
        .map(|a| {
            a["labels"]["distribution"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    distributions.sort();
    let expected: Vec<String> = {
        let mut ids: Vec<String> = states(&demos[0])
            .iter()
            .map(|s| s["distribution"].as_str().unwrap_or("").to_owned())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(
        distributions, expected,
        "one alert per distribution, not one per dashboard: {alerts:#?}"
    );
    for a in &alerts {
        let l = &a["labels"];
        assert_eq!(l["alertname"], ALARM, "{a}");
        assert_eq!(l["alarm"], ALARM, "{a}");
        assert_eq!(l["metric"], metric.as_str(), "{a}");
        assert!(
            a["annotations"]["description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{a}"
        );
    }
    // Its receiver got each group once, each with one alert.
    wait_until(within(Duration::from_secs(10)), || {
        notified(&received, "firing").len() >= 3
    });
    let groups = notified(&received, "firing");
    for g in &groups {
        assert_eq!(g["alerts"].as_array().map(Vec::len), Some(1), "{g}");
    }
    assert_eq!(distributions_of(&groups), expected, "{groups:#?}");

    // Prometheus scraped the collector (every record of the burst accepted) and the
    // dashboard (each distribution's alarm in ALARM).
    let accepted = || {
        prometheus
            .query("sum(edgelog_records_accepted_total{job=\"collector\"})")
            .ok()
            .and_then(|r| r.first().map(|s| s.1))
    };
    let in_alarm = || {
        prometheus
            .query(&format!(
                "edgelog_alarm_state{{job=\"dashboard\",alarm=\"{ALARM}\",state=\"ALARM\"}} == 1"
            ))
            .map(|r| r.len())
            .unwrap_or(0)
    };
    let scraped = wait_until(within(Duration::from_secs(30)), || {
        accepted() == Some(12_000.0) && in_alarm() == 3
    });
    assert!(
        scraped,
        "Prometheus shows {:?} records accepted and {} alarms in ALARM",
        accepted(),
        in_alarm()
    );

    // The alarm goes on both dashboards: Alertmanager resolves the alerts and says so.
    for d in &demos {
        let url = d.dashboard_url(&format!("/api/alarms/definitions/{ALARM}"));
        let (status, body) = http_request("DELETE", &url, &[], "")?;
        assert_eq!(status, 204, "{body}");
    }
    assert!(
        wait_until(within(Duration::from_secs(20)), || active(&am).is_empty()),
        "still active: {:#?}",
        active(&am)
    );
    wait_until(within(Duration::from_secs(10)), || {
        notified(&received, "resolved").len() >= 3
    });
    let resolved = notified(&received, "resolved");
    assert_eq!(distributions_of(&resolved), expected, "{resolved:#?}");
    for d in demos {
        d.stop()?;
    }
    Ok(())
}
