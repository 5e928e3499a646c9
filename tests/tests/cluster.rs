//! Two collectors publish their minute aggregates to a Kafka metrics topic (tansu); one
//! standalone dashboard reads it and shows the sums; restarted, it rebuilds them.

use std::collections::BTreeMap;
use std::time::Duration;

use edgelog_record::MinuteAggregate;
use edgelog_tests::servers::Tansu;
use edgelog_tests::{
    Sent, ServerConfig, TestServer, http_get, send_generated_seeded, wait_for, within,
};

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
    base: &str,
    total: u64,
) -> anyhow::Result<BTreeMap<(String, i64), serde_json::Value>> {
    let mut seen = 0;
    let minutes = wait_for(
        within(Duration::from_secs(30)),
        Duration::from_millis(100),
        "the dashboard's sums",
        || {
            let ids: Vec<String> =
                serde_json::from_str(&http_get(&format!("{base}/api/distributions"))?)
                    .unwrap_or_default();
            let mut out = BTreeMap::new();
            for id in ids {
                let points: Vec<serde_json::Value> = serde_json::from_str(&http_get(&format!(
                    "{base}/api/distributions/{id}/series"
                ))?)?;
                for p in points {
                    out.insert((id.clone(), p["minute_ms"].as_i64().unwrap_or(0)), p);
                }
            }
            seen = out.values().filter_map(|p| p["requests"].as_u64()).sum();
            Ok((seen == total).then_some(out))
        },
    );
    minutes.map_err(|_| anyhow::anyhow!("the dashboard shows {seen} requests, {total} were sent"))
}

#[test]
fn two_collectors_feed_one_dashboard_which_rebuilds_after_a_restart() -> anyhow::Result<()> {
    let tansu = Tansu::start()?;
    tansu.create_topic("edgelog-metrics", 3)?;
    let dir = tempfile::tempdir()?;
    let metrics = tansu
        .metrics_sink(ServerConfig::new())
        .without_sink("standard")
        .without_sink("realtime");
    let mut a = TestServer::collector(&dir.path().join("a"), &metrics.clone().id("collector-a"))?;
    let mut b = TestServer::collector(&dir.path().join("b"), &metrics.clone().id("collector-b"))?;
    // The same three distributions and hour on both, different requests.
    let sent_a = send_generated_seeded(&a.url(), 20_000, 3, 1, 1, 2, 7)?;
    let sent_b = send_generated_seeded(&b.url(), 15_000, 3, 1, 1, 2, 8)?;
    assert!(
        a.terminate()? && b.terminate()?,
        "collectors did not stop cleanly"
    );

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

    let dashboard = TestServer::dashboard(dir.path(), &metrics)?;
    let first = dashboard_minutes(&dashboard.url(), 35_000)?;
    let minutes = check(&first);
    assert!(
        minutes >= 150,
        "only {minutes} (distribution, minute) pairs"
    );
    drop(dashboard);

    // A new dashboard process rebuilds the same history from the topic.
    let dashboard = TestServer::dashboard(dir.path(), &metrics)?;
    let again = dashboard_minutes(&dashboard.url(), 35_000)?;
    check(&again);
    assert_eq!(first, again);
    Ok(())
}
