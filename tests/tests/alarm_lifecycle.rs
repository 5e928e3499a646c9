//! Alarm lifecycle against the real binary, with two webhooks of which the first accepts
//! connections and never answers: the second still gets each notification within about
//! a second of the state change; putting the same definition again (or a changed one
//! that still breaches) sends no second `firing`; deleting a firing alarm sends
//! `resolved`. And the dashboard's guards: a foreign `Host` is refused, and without
//! credentials or `dashboard.allow_unauthenticated_writes` alarm definitions are
//! read-only; a quiet distribution's last complete minute has 0 requests and no rates.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use edgelog_tests::scenarios::{Received, send_5xx_burst, webhook_receiver};
use edgelog_tests::{TOKEN, TestServer, http_get, http_post, http_request, wait_until, within};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A webhook that accepts connections and never answers; counts them.
fn stuck_receiver() -> anyhow::Result<(u16, Arc<Mutex<usize>>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let count = Arc::new(Mutex::new(0));
    let keep = count.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            if let Ok(mut c) = keep.lock() {
                *c += 1;
            }
            held.push(conn);
        }
    });
    Ok((port, count))
}

fn distribution(b: &serde_json::Value) -> String {
    b["alerts"][0]["labels"]["distribution"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// Waits (`within` at most) until `received` holds `count` notifications with `status`.
fn wait_for(
    received: &Received,
    status: &str,
    count: usize,
    within: Duration,
) -> Vec<(i64, serde_json::Value)> {
    let got = || -> Vec<(i64, serde_json::Value)> {
        received
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, b)| b["status"] == status)
            .collect()
    };
    wait_until(edgelog_tests::within(within), || got().len() >= count);
    got()
}

fn states(demo: &TestServer) -> anyhow::Result<Vec<serde_json::Value>> {
    Ok(serde_json::from_str(&http_get(
        &demo.dashboard_url("/api/alarms"),
    )?)?)
}

#[test]
fn a_stuck_webhook_delays_no_other_and_alarms_fire_once_and_resolve_when_deleted()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (stuck, stuck_connections) = stuck_receiver()?;
    let (hook, received) = webhook_receiver()?;
    let demo = TestServer::demo(
        dir.path(),
        &["--no-traffic", "--token", TOKEN],
        &[
            (
                "EDGELOG_DASHBOARD__WEBHOOKS",
                format!(
                    "[\"http://127.0.0.1:{stuck}/alerts\", \"http://127.0.0.1:{hook}/alerts\"]"
                ),
            ),
            (
                "EDGELOG_DASHBOARD__ALLOW_UNAUTHENTICATED_WRITES",
                "true".to_owned(),
            ),
        ],
    )?;
    // 30 % 5xx over the last 4 minutes, for 3 distributions: the demo's alarm fires.
    send_5xx_burst(&demo.url())?;
    let fired = wait_for(&received, "firing", 3, Duration::from_secs(40));
    let ids: Vec<String> = {
        let mut ids: Vec<String> = fired.iter().map(|(_, b)| distribution(b)).collect();
        ids.sort();
        ids
    };
    anyhow::ensure!(
        ids.len() == 3,
        "firing notifications at the second webhook: {fired:?}"
    );
    anyhow::ensure!(
        *stuck_connections
            .lock()
            .map_err(|_| anyhow::anyhow!("lock"))?
            >= 1,
        "the first webhook was never tried"
    );
    // Each arrived within about a second of its state change, the stuck webhook first
    // in the list notwithstanding.
    let history: Vec<serde_json::Value> =
        serde_json::from_str(&http_get(&demo.dashboard_url("/api/alarms/history"))?)?;
    for (at, body) in &fired {
        let d = distribution(body);
        let changed = history
            .iter()
            .find(|t| t["distribution"] == d.as_str() && t["to"] == "ALARM")
            .and_then(|t| t["at_ms"].as_i64())
            .with_context(|| format!("no transition to ALARM for {d}: {history:?}"))?;
        let delay = at - changed;
        println!("{d}: notified {delay} ms after the state change");
        assert!(
            (0..5_000).contains(&delay),
            "{d}: the second webhook waited {delay} ms"
        );
    }
    let before = states(&demo)?;
    assert!(
        before.len() == 3 && before.iter().all(|s| s["state"] == "ALARM"),
        "{before:?}"
    );

    // The same definition again, then a changed one that still breaches: states carry
    // on, and no second `firing` goes out.
    let defs: Vec<serde_json::Value> =
        serde_json::from_str(&http_get(&demo.dashboard_url("/api/alarms/definitions"))?)?;
    let mut def = defs
        .iter()
        .find(|d| d["name"] == "5xx-error-rate")
        .cloned()
        .context("the demo's alarm")?;
    let url = demo.dashboard_url("/api/alarms/definitions/5xx-error-rate");
    let (status, body) = http_request("PUT", &url, &[], &def.to_string())?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"changed\":false"), "{body}");
    def["threshold"] = serde_json::json!(4.0);
    let (status, body) = http_request("PUT", &url, &[], &def.to_string())?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"changed\":true"), "{body}");
    // Two evaluations (every 5 s in the demo) and then some: the scenario's window for
    // a change that must not come (nothing to poll for).
    std::thread::sleep(Duration::from_secs(12));
    let after = states(&demo)?;
    for s in &before {
        let same = after
            .iter()
            .find(|a| a["distribution"] == s["distribution"]);
        assert_eq!(
            same.map(|a| (&a["state"], &a["since_ms"])),
            Some((&s["state"], &s["since_ms"])),
            "{after:?}"
        );
    }
    let all = received.lock().map(|g| g.clone()).unwrap_or_default();
    assert_eq!(all.len(), 3, "only the three firings: {all:?}");

    // Deleting the firing alarm resolves it, for each distribution, as the same alerts.
    let (status, body) = http_request("DELETE", &url, &[], "")?;
    assert_eq!(status, 204, "{body}");
    let resolved = wait_for(&received, "resolved", 3, Duration::from_secs(10));
    let mut back: Vec<String> = resolved.iter().map(|(_, b)| distribution(b)).collect();
    back.sort();
    assert_eq!(back, ids, "{resolved:?}");
    for (_, r) in &resolved {
        let f = fired
            .iter()
            .find(|(_, f)| distribution(f) == distribution(r))
            .map(|(_, f)| f)
            .context("its firing")?;
        assert_eq!(r["alerts"][0]["startsAt"], f["alerts"][0]["startsAt"]);
        assert_eq!(r["alerts"][0]["fingerprint"], f["alerts"][0]["fingerprint"]);
    }
    assert_eq!(states(&demo)?, Vec::<serde_json::Value>::new());
    demo.stop()?;
    Ok(())
}

#[test]
fn without_credentials_definitions_are_read_only_and_foreign_hosts_are_refused()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Returns once the dashboard serves too.
    let demo = TestServer::demo(dir.path(), &["--no-traffic", "--token", TOKEN], &[])?;
    let url = demo.dashboard_url("/api/alarms/definitions/mine");
    let alarm = r#"{"name":"mine","distribution":"*","metric":"Requests","comparison":"GreaterThanThreshold","threshold":1}"#;
    let (status, body) = http_request("PUT", &url, &[], alarm)?;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("allow_unauthenticated_writes"), "{body}");
    let (status, _) = http_request(
        "DELETE",
        &demo.dashboard_url("/api/alarms/definitions/5xx-error-rate"),
        &[],
        "",
    )?;
    assert_eq!(status, 403);
    let defs = http_get(&demo.dashboard_url("/api/alarms/definitions"))?;
    assert!(
        defs.contains("5xx-error-rate") && !defs.contains("mine"),
        "{defs}"
    );

    // DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1.
    let port = demo.dashboard_port();
    for host in [format!("evil.example:{port}"), "evil.example".to_owned()] {
        for path in ["/", "/api/distributions", "/metrics"] {
            let (status, body) =
                http_request("GET", &demo.dashboard_url(path), &[("host", &host)], "")?;
            assert_eq!(status, 403, "{host} {path}: {body}");
            let v: serde_json::Value = serde_json::from_str(&body)?;
            assert!(
                v["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("DNS rebinding"))
            );
        }
    }
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let (status, body) = http_request("GET", &demo.dashboard_url("/"), &[("host", &host)], "")?;
        assert_eq!(status, 200, "{host}: {body}");
    }

    // A distribution last busy ten minutes ago is quiet in its last complete minute: 0
    // requests and no rates in /metrics, not its busy minute again.
    let ten_minutes_ago = (now_ms() - 600_000) as f64 / 1000.0;
    let record = format!(
        "{{\"timestamp\":{ten_minutes_ago},\"DistributionId\":\"EQUIET\",\"sc-status\":503,\"cs-method\":\"GET\",\"sc-bytes\":\"100\",\"x-edge-result-type\":\"Error\"}}\n"
    );
    let answer = http_post(&format!("{}/v1/records", demo.url()), record.as_bytes())?;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let mut metrics = String::new();
    let shown = wait_until(within(Duration::from_secs(30)), || {
        metrics = http_get(&demo.dashboard_url("/metrics")).unwrap_or_default();
        metrics.contains("distribution=\"EQUIET\"")
    });
    anyhow::ensure!(shown, "EQUIET never showed: {metrics}");
    for (gauge, value) in [
        ("requests", "0"),
        ("bytes_downloaded", "0"),
        ("error_rate_5xx_percent", "NaN"),
        ("total_error_rate_percent", "NaN"),
        ("cache_hit_rate_percent", "NaN"),
    ] {
        let line = format!("edgelog_distribution_{gauge}{{distribution=\"EQUIET\"}} {value}\n");
        assert!(metrics.contains(&line), "no {line:?} in\n{metrics}");
    }
    let series = http_get(&demo.dashboard_url("/api/distributions/EQUIET/series"))?;
    assert!(
        series.contains("\"error_rate_5xx\":100.0") && series.contains("\"cache_hit_rate\":null"),
        "{series}"
    );
    demo.stop()?;
    Ok(())
}
