//! The demo's own alarm (5xxErrorRate > 5 % in 2 of 3 minutes) fires on a 5xx burst and
//! clears when late, clean records dilute the same minutes; a webhook receiver gets one
//! Alertmanager notification per distribution and state change.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgelog_tests::{DemoProc, TOKEN, http_get, run_edge};

/// A webhook receiver on loopback: answers 200 and keeps every body.
fn receiver() -> anyhow::Result<(u16, Received)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten().take(100) {
            let mut conn = conn;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body = loop {
                let Ok(n) = conn.read(&mut chunk) else {
                    break None;
                };
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if rest.len() >= len {
                        break Some(rest[..len].to_owned());
                    }
                }
            };
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            if let Some(b) = body.and_then(|b| serde_json::from_str(&b).ok())
                && let Ok(mut g) = keep.lock()
            {
                g.push(b);
            }
        }
    });
    Ok((port, got))
}

type Received = Arc<Mutex<Vec<serde_json::Value>>>;

/// Waits (20 s at most) for `count` notifications in all, then 6 s more for a duplicate
/// to show up; returns them all, and the distributions of those with `status`, sorted.
fn settled(
    received: &Received,
    count: usize,
    status: &str,
) -> (Vec<serde_json::Value>, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while received.lock().map(|g| g.len()).unwrap_or(0) < count && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(6));
    let got = received.lock().map(|g| g.clone()).unwrap_or_default();
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
    let (hook, received) = receiver()?;
    let demo = DemoProc::start(
        dir.path(),
        &["--no-traffic", "--token", TOKEN],
        &[(
            "EDGELOG_DASHBOARD__WEBHOOKS",
            format!("[\"http://127.0.0.1:{hook}/alerts\"]"),
        )],
    )?;
    // 30 % 5xx over the last 4 minutes, for 3 distributions.
    run_edge(
        &demo.ingest_url(),
        &[
            "--total",
            "12000",
            "--rate",
            "0",
            "--backfill-hours",
            "0.066",
            "--error-5xx",
            "30",
        ],
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let states = loop {
        let states: Vec<serde_json::Value> =
            serde_json::from_str(&http_get(&demo.dashboard_url("/api/alarms"))?)?;
        if states.len() == 3 && states.iter().all(|s| s["state"] == "ALARM") {
            break states;
        }
        anyhow::ensure!(Instant::now() < deadline, "alarms did not fire: {states:?}");
        std::thread::sleep(Duration::from_millis(500));
    };
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
        &demo.ingest_url(),
        &[
            "--total",
            "150000",
            "--rate",
            "0",
            "--backfill-hours",
            "0.066",
        ],
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let states: Vec<serde_json::Value> =
            serde_json::from_str(&http_get(&demo.dashboard_url("/api/alarms"))?)?;
        if states.len() == 3 && states.iter().all(|s| s["state"] == "OK") {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "alarms did not clear: {states:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
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
