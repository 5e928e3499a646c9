//! The file sink: lines that parse back, exactly once across a crash, and a failed write
//! that loses nothing.

use std::sync::Arc;

use edgelog_collector::{
    Batch, Bus, DeadLetters, Entry, Sampler, SinkConfig, SinkContext, SinkErrorKind,
};
use edgelog_edge::{ErrorMix, Generator};
use edgelog_record::{Record, SamplingConfig};
use edgelog_sink_stream::FileSinkConfig;

fn entry(seq: u64, g: &mut Generator, n: usize) -> Entry {
    let records: Vec<Record> = (0..n)
        .map(|i| g.record(1_764_000_000_000 + i as i64, i % 3, ErrorMix::default()))
        .collect();
    Entry {
        seq,
        appended_ms: 0,
        records: Arc::new(records),
    }
}

fn context(dir: &std::path::Path) -> SinkContext {
    SinkContext {
        name: "audit".into(),
        collector_id: "c1".into(),
        data_dir: dir.to_owned(),
        dead_letters: DeadLetters::open(&dir.join("dead-letter/audit"), "audit", 1 << 20)
            .expect("dead letters"),
        bus: Bus::new(16),
        settings: tokio::sync::watch::channel(None).1,
    }
}

fn settings(path: &str) -> FileSinkConfig {
    FileSinkConfig {
        path: path.into(),
        ..FileSinkConfig::default()
    }
}

fn ids(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            v["x-edge-request-id"].as_str().expect("an id").to_owned()
        })
        .collect()
}

#[tokio::test]
async fn sampled_records_become_json_lines_once_flushed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = settings("out/audit.ndjson");
    cfg.validate("sinks.audit").expect("valid");
    let mut sink = cfg.build(&context(dir.path())).expect("build");
    let sampling: SamplingConfig =
        serde_json::from_str(r#"{"default":{"audit":50}}"#).expect("sampling");
    let mut sampler = Sampler::new(&sampling, "audit");
    let mut g = Generator::new(7, 3, 2);
    let mut expected = Vec::new();
    for seq in 1..=5 {
        let e = entry(seq, &mut g, 200);
        let batch = sampler.batch(&e);
        expected.extend(batch.records().map(|k| k.record.request_id().to_owned()));
        sink.write(&batch).await.expect("write");
    }
    assert_eq!(
        sink.delivered(),
        0,
        "nothing is delivered before it is fsynced"
    );
    sink.flush().await.expect("flush");
    assert_eq!(sink.delivered(), 5);
    let text = std::fs::read_to_string(dir.path().join("out/audit.ndjson")).expect("file");
    assert!(
        expected.len() > 300 && expected.len() < 700,
        "{}",
        expected.len()
    );
    assert_eq!(ids(&text), expected);
}

#[tokio::test]
async fn a_restart_cuts_an_unrecorded_write_and_skips_what_is_in_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = settings("audit.ndjson");
    let path = dir.path().join("audit.ndjson");
    let mut g = Generator::new(9, 2, 2);
    let entries: Vec<Entry> = (1..=4).map(|s| entry(s, &mut g, 50)).collect();
    {
        let mut sink = cfg.build(&context(dir.path())).expect("build");
        for e in &entries[..2] {
            sink.write(&Batch::all(e)).await.expect("write");
        }
        sink.flush().await.expect("flush");
    }
    // A crash after lines reached the file but before their length was recorded.
    let mut text = std::fs::read(&path).expect("file");
    text.extend_from_slice(b"{\"x-edge-request-id\":\"unrecorded\"}\n{\"partial");
    std::fs::write(&path, &text).expect("append");
    // The log hands everything after the saved cursor (here: from the start) again.
    let mut sink = cfg.build(&context(dir.path())).expect("build");
    assert_eq!(sink.delivered(), 2);
    for e in &entries {
        sink.write(&Batch::all(e)).await.expect("write");
    }
    sink.flush().await.expect("flush");
    let want: Vec<String> = entries
        .iter()
        .flat_map(|e| e.records.iter().map(|r| r.request_id().to_owned()))
        .collect();
    assert_eq!(ids(&std::fs::read_to_string(&path).expect("file")), want);
}

#[tokio::test]
async fn a_failed_write_keeps_the_lines_and_reports_the_cause() {
    // /dev/full refuses every write with ENOSPC.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = settings("/dev/full");
    let mut sink = cfg.build(&context(dir.path())).expect("build");
    let mut g = Generator::new(1, 1, 1);
    let e = entry(1, &mut g, 10);
    sink.write(&Batch::all(&e)).await.expect("buffered");
    let err = sink.flush().await.expect_err("no space");
    assert_eq!(err.kind(), SinkErrorKind::Unavailable);
    assert!(
        std::error::Error::source(&err).is_some(),
        "the io error is kept as the cause: {err}"
    );
    assert!(err.to_string().contains("/dev/full"), "{err}");
    assert_eq!(sink.delivered(), 0);
    let again = sink.flush().await.expect_err("still no space");
    assert!(again.to_string().contains("space"), "{again}");
}

#[test]
fn settings_at_their_limits_are_refused_by_name() {
    let mut c = settings("");
    assert!(
        c.validate("sinks.audit")
            .is_err_and(|e| e.contains("sinks.audit.path"))
    );
    c.path = "a.ndjson".into();
    for (bytes, ok) in [
        (0, false),
        (1, true),
        (1 << 30, true),
        ((1 << 30) + 1, false),
    ] {
        c.buffer_bytes = bytes;
        assert_eq!(
            c.validate("sinks.audit").is_ok(),
            ok,
            "buffer_bytes = {bytes}"
        );
    }
    c.buffer_bytes = 1;
    c.fields = vec!["no-such-field".into()];
    assert!(
        c.validate("sinks.audit")
            .is_err_and(|e| e.contains("sinks.audit.fields"))
    );
}

#[tokio::test]
async fn a_file_it_did_not_write_is_appended_to_never_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("precious.log");
    std::fs::write(&path, "someone else's line\n").expect("write");
    let mut sink = settings("precious.log")
        .build(&context(dir.path()))
        .expect("build");
    let mut g = Generator::new(2, 1, 1);
    let e = entry(1, &mut g, 3);
    sink.write(&Batch::all(&e)).await.expect("write");
    sink.flush().await.expect("flush");
    let text = std::fs::read_to_string(&path).expect("file");
    assert!(text.starts_with("someone else's line\n"), "{text}");
    assert_eq!(text.lines().count(), 4);
}

#[tokio::test]
async fn a_file_cut_while_running_goes_on_from_its_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.ndjson");
    let mut sink = settings("audit.ndjson")
        .build(&context(dir.path()))
        .expect("build");
    let mut g = Generator::new(3, 1, 1);
    let (a, b) = (entry(1, &mut g, 5), entry(2, &mut g, 5));
    sink.write(&Batch::all(&a)).await.expect("write");
    sink.flush().await.expect("flush");
    // copytruncate, as logrotate does it.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(0))
        .expect("truncate");
    sink.write(&Batch::all(&b)).await.expect("write");
    sink.flush().await.expect("flush");
    let text = std::fs::read(&path).expect("file");
    assert!(!text.contains(&0), "no hole of NUL bytes");
    let want: Vec<String> = b
        .records
        .iter()
        .map(|r| r.request_id().to_owned())
        .collect();
    assert_eq!(ids(&String::from_utf8(text).expect("utf-8")), want);
}
