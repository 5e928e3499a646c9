//! Two collectors publish their minute aggregates to a Kafka metrics topic (tansu); one
//! standalone dashboard reads it and shows the sums; restarted, it rebuilds them.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use edgelog_record::MinuteAggregate;
use edgelog_tests::servers::Tansu;
use edgelog_tests::{
    CollectorProc, Sent, binary, free_port, http_get, send_generated_seeded, wait_listening,
};

struct DashboardProc(Child);

impl Drop for DashboardProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_dashboard(config: &std::path::Path, port: u16) -> anyhow::Result<DashboardProc> {
    let child = Command::new(binary())
        .args(["dashboard", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start edgelog dashboard")?;
    let d = DashboardProc(child);
    wait_listening(port)?;
    Ok(d)
}

type Minutes = BTreeMap<(String, i64), MinuteAggregate>;

fn expected(sent: &[&Sent]) -> Minutes {
    let mut m = Minutes::new();
    for s in sent {
        for r in &s.sample {
            let minute = r.timestamp_ms - r.timestamp_ms.rem_euclid(60_000);
            m.entry((r.distribution_id.clone(), minute))
                .or_default()
                .add(r);
        }
    }
    m
}

/// The dashboard's minutes, once their requests add up to `total` (30 s at most).
fn dashboard_minutes(
    port: u16,
    total: u64,
) -> anyhow::Result<BTreeMap<(String, i64), serde_json::Value>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let base = format!("http://127.0.0.1:{port}");
        let ids: Vec<String> =
            serde_json::from_str(&http_get(&format!("{base}/api/distributions"))?)
                .unwrap_or_default();
        let mut out = BTreeMap::new();
        for id in ids {
            let points: Vec<serde_json::Value> =
                serde_json::from_str(&http_get(&format!("{base}/api/distributions/{id}/series"))?)?;
            for p in points {
                out.insert((id.clone(), p["minute_ms"].as_i64().unwrap_or(0)), p);
            }
        }
        let seen: u64 = out.values().filter_map(|p| p["requests"].as_u64()).sum();
        if seen == total {
            return Ok(out);
        }
        if Instant::now() > deadline {
            bail!("the dashboard shows {seen} requests, {total} were sent");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn two_collectors_feed_one_dashboard_which_rebuilds_after_a_restart() -> anyhow::Result<()> {
    let tansu = Tansu::start()?;
    tansu.create_topic("edgelog-metrics", 3)?;
    let dir = tempfile::tempdir()?;
    let metrics = format!(
        "[metrics.kafka]\nbootstrap_servers = \"{}\"\n[sinks.standard]\nenabled = false\n[sinks.realtime]\nenabled = false\n",
        tansu.bootstrap()
    );
    let mut a = CollectorProc::start_as(&dir.path().join("a"), &metrics, "collector-a")?;
    let mut b = CollectorProc::start_as(&dir.path().join("b"), &metrics, "collector-b")?;
    // The same three distributions and hour on both, different requests.
    let sent_a = send_generated_seeded(&a.url(), 20_000, 3, 1, 1, 2, 7)?;
    let sent_b = send_generated_seeded(&b.url(), 15_000, 3, 1, 1, 2, 8)?;
    assert!(
        a.terminate()? && b.terminate()?,
        "collectors did not stop cleanly"
    );

    let port = free_port();
    let config = dir.path().join("dashboard.toml");
    std::fs::write(
        &config,
        format!("{metrics}[dashboard]\nlisten = \"127.0.0.1:{port}\"\n"),
    )?;
    let want = expected(&[&sent_a, &sent_b]);
    let check = |got: &BTreeMap<(String, i64), serde_json::Value>| {
        assert_eq!(
            got.len(),
            want.len(),
            "different (distribution, minute) sets"
        );
        let mut both = 0;
        for (key, w) in &want {
            let p = &got[key];
            assert_eq!(p["requests"].as_u64(), Some(w.requests), "{key:?}");
            assert_eq!(
                p["bytes_downloaded"].as_u64(),
                Some(w.bytes_downloaded),
                "{key:?}"
            );
            assert_eq!(
                p["bytes_uploaded"].as_u64(),
                Some(w.bytes_uploaded),
                "{key:?}"
            );
            let rate = p["error_rate_5xx"].as_f64().unwrap_or(f64::NAN);
            assert!((rate - w.error_rate_5xx()).abs() < 1e-9, "{key:?}");
            let p50 = p["origin_latency_p50_ms"].as_f64();
            let want_p50 = w.origin_latency.quantile_ms(0.5);
            assert_eq!(p50.is_some(), want_p50.is_some(), "{key:?}");
            both += 1;
        }
        both
    };

    let dashboard = start_dashboard(&config, port)?;
    let first = dashboard_minutes(port, 35_000)?;
    let minutes = check(&first);
    assert!(
        minutes >= 150,
        "only {minutes} (distribution, minute) pairs"
    );
    drop(dashboard);

    // A new dashboard process rebuilds the same history from the topic.
    let _dashboard = start_dashboard(&config, port)?;
    let again = dashboard_minutes(port, 35_000)?;
    check(&again);
    assert_eq!(first, again);
    Ok(())
}
