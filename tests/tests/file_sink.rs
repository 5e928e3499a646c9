//! A sink added by configuration alone: `[sinks.audit] type = "file"` with its own
//! sampling rate gets exactly the records the sampler keeps for its name, once each,
//! across a SIGKILL; the other sinks are untouched by its rate.

use std::collections::HashMap;

use anyhow::Context;
use edgelog_record::SamplingConfig;
use edgelog_tests::{ServerConfig, TestServer, send_generated, send_generated_seeded, stored_ids};

#[test]
fn a_file_sink_gets_its_sample_exactly_once_across_a_crash() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("c");
    let cfg = ServerConfig::new()
        .set("sinks.audit", "type", "file")
        .set("sinks.audit", "path", "audit/records.ndjson")
        .set("sinks.audit", "buffer_bytes", 65_536u64)
        .sample("audit", 30);
    let mut collector = TestServer::collector(&data, &cfg)?;
    let first = send_generated(&collector.url(), 20_000, 3, 1, 1, 2)?;
    collector.crash_and_restart()?;
    let second = send_generated_seeded(&collector.url(), 20_000, 3, 1, 1, 2, 11)?;
    assert!(collector.terminate()?, "{}", collector.log_text());

    // The [sampling] above, as the collector reads it.
    let sampling: SamplingConfig = serde_json::from_str(r#"{"default":{"audit":30}}"#)?;
    let all: Vec<_> = first.sample.iter().chain(&second.sample).collect();
    assert_eq!(all.len(), 40_000);
    let want: HashMap<&str, ()> = all
        .iter()
        .filter(|r| {
            sampling
                .decide(&r.distribution_id, r.request_id(), "audit")
                .is_some()
        })
        .map(|r| (r.request_id(), ()))
        .collect();
    let text = std::fs::read_to_string(data.join("audit/records.ndjson"))
        .context("the file sink's file")?;
    let mut seen: HashMap<String, u32> = HashMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).context("a JSON line")?;
        let id = v["x-edge-request-id"].as_str().context("an id")?;
        *seen.entry(id.to_owned()).or_default() += 1;
    }
    let twice = seen.values().filter(|n| **n > 1).count();
    assert_eq!(twice, 0, "lines written twice");
    assert_eq!(
        seen.len(),
        want.len(),
        "the sampler's set, no more, no less"
    );
    assert!(seen.keys().all(|id| want.contains_key(id.as_str())));
    assert!(
        (10_000..14_000).contains(&want.len()),
        "30 % of 40,000: {}",
        want.len()
    );
    // The standard logs keep their own rate (100 %).
    let stored = stored_ids(&data.join("standard-logs"))?;
    assert_eq!(stored.len(), 40_000);
    Ok(())
}
