//! A record the standard-log sink can never encode goes to the dead-letter store; the
//! records around it are delivered, and the dead-letter file replays as it is.

use std::time::Duration;

use anyhow::Context;
use edgelog_tests::scenarios::{sink, wait_readyz};
use edgelog_tests::{ServerConfig, TestServer, http_get, http_post, run_edge, stored_ids};

fn body(ids: &[String]) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut out = Vec::new();
    for id in ids {
        out.extend_from_slice(
            format!(
                "{{\"timestamp\":{now},\"DistributionId\":\"EDEAD\",\"x-edge-request-id\":\"{id}\",\"sc-status\":200,\"cs-uri-stem\":\"/a\"}}\n"
            )
            .as_bytes(),
        );
    }
    out
}

#[test]
fn an_unencodable_record_is_dead_lettered_and_replays() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("a");
    let mut collector = TestServer::collector(
        &data,
        &ServerConfig::new()
            .standard("max_age", "1s")
            .env("EDGELOG_TEST_UNENCODABLE_ID_PREFIX", "poison-"),
    )?;
    let url = collector.url();
    let mut good = Vec::new();
    let mut poison = Vec::new();
    for b in 0..3 {
        let mut ids = Vec::new();
        for i in 0..1000 {
            if b == 1 && i % 200 == 7 {
                let id = format!("poison-{i}");
                poison.push(id.clone());
                ids.push(id);
            } else {
                let id = format!("good-{b}-{i}");
                good.push(id.clone());
                ids.push(id);
            }
        }
        let a = http_post(&format!("{url}/v1/records"), &body(&ids))?;
        assert_eq!(a.status, 200, "{a:?}");
    }
    let r = wait_readyz(
        &url,
        Duration::from_secs(60),
        "/readyz never got there",
        |r| {
            let s = sink(r, "standard");
            s["dead_letters"] == poison.len() && s["lag_entries"] == 0
        },
    )?;
    assert_eq!(sink(&r, "standard")["degraded"], false, "{r}");
    let metrics = http_get(&format!("{url}/metrics"))?;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("edgelog_dead_letter_records_total"))
        .context("no dead-letter counter")?;
    assert!(
        line.contains("sink=\"standard\"") && line.contains("reason=\"encode_error\""),
        "{line}"
    );
    assert!(line.ends_with(&format!(" {}", poison.len())), "{line}");
    assert!(collector.terminate()?, "{}", collector.log_text());

    let stored = stored_ids(&data.join("standard-logs"))?;
    let missing: Vec<_> = good.iter().filter(|id| !stored.contains_key(*id)).collect();
    assert!(missing.is_empty(), "good records missing: {missing:?}");
    assert!(
        poison.iter().all(|id| !stored.contains_key(id)),
        "a poison record was written"
    );

    let dl_dir = data.join("dead-letter").join("standard");
    let files: Vec<_> = std::fs::read_dir(&dl_dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0])?;
    let mut seen = Vec::new();
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l)?;
        assert_eq!(v["dead_letter"]["sink"], "standard", "{l}");
        assert!(
            v["dead_letter"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("cannot be encoded")),
            "{l}"
        );
        seen.push(v["x-edge-request-id"].as_str().unwrap_or("").to_owned());
    }
    assert_eq!(seen, poison);

    // Replayed as it is into another collector, the dead letters land.
    let other_dir = dir.path().join("b");
    let mut other =
        TestServer::collector(&other_dir, &ServerConfig::new().standard("max_age", "1s"))?;
    let file = files[0].display().to_string();
    run_edge(&other.url(), &["--replay", &file])?;
    wait_readyz(
        &other.url(),
        Duration::from_secs(60),
        "/readyz never got there",
        |r| sink(r, "standard")["lag_entries"] == 0,
    )?;
    assert!(other.terminate()?, "{}", other.log_text());
    let replayed = stored_ids(&other_dir.join("standard-logs"))?;
    assert!(
        poison.iter().all(|id| replayed.contains_key(id)),
        "replayed: {replayed:?}"
    );
    eprintln!(
        "dead letters: {} good delivered, {} dead-lettered and replayed",
        good.len(),
        poison.len()
    );
    Ok(())
}
