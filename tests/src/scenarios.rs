//! What more than one test does: read `/readyz`, put load on a collector with `edgelog
//! edge` (logging what was acknowledged) and count what arrived, take a destination away
//! under that load, and receive webhooks.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::harness::TestServer;
use crate::process::{wait_for, within};
use crate::servers::StopStart;
use crate::{http_get, spawn_edge};

/// `/readyz` of the collector at `url`, as JSON.
pub fn readyz(url: &str) -> anyhow::Result<serde_json::Value> {
    let body = http_get(&format!("{url}/readyz"))?;
    serde_json::from_str(&body).with_context(|| format!("/readyz is not JSON: {body}"))
}

/// One sink's entry in a `/readyz` answer (`Null` if there is none).
pub fn sink<'a>(ready: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    ready["sinks"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or(&serde_json::Value::Null)
}

/// Whether every sink in a `/readyz` answer has delivered everything.
pub fn caught_up(ready: &serde_json::Value) -> bool {
    ready["sinks"]
        .as_array()
        .is_some_and(|s| s.iter().all(|s| s["lag_entries"].as_u64() == Some(0)))
}

/// Polls `/readyz` until `done` holds, for at most `timeout`; returns that answer, or
/// fails with the last one.
pub fn wait_readyz(
    url: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<serde_json::Value> {
    let mut last = serde_json::Value::Null;
    wait_for(within(timeout), Duration::from_millis(200), what, || {
        last = readyz(url)?;
        Ok(done(&last).then(|| last.clone()))
    })
    .with_context(|| format!("not within {timeout:?}; /readyz: {last}"))
}

/// `edgelog edge` running in the background, logging the ids it got acknowledged.
pub struct Load {
    child: Child,
    pub ack_log: PathBuf,
}

/// Starts `edgelog edge` against `url` with `args`, acknowledged ids to `ack_log`.
pub fn spawn_load(url: &str, ack_log: &Path, args: &[&str]) -> anyhow::Result<Load> {
    let ack = ack_log.display().to_string();
    let mut all = args.to_vec();
    all.extend(["--ack-log", &ack]);
    Ok(Load {
        child: spawn_edge(url, &all)?,
        ack_log: ack_log.to_owned(),
    })
}

impl Load {
    /// Waits for the end; fails unless it exited cleanly; returns its report.
    pub fn finish(self) -> anyhow::Result<String> {
        let out = self.child.wait_with_output()?;
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "edge failed: {report}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(report)
    }
}

/// The ids in an ack log.
pub fn acked_ids(ack_log: &Path) -> anyhow::Result<HashSet<String>> {
    Ok(std::fs::read_to_string(ack_log)
        .with_context(|| format!("{}", ack_log.display()))?
        .lines()
        .map(str::to_owned)
        .collect())
}

/// The acknowledged ids missing from `stored` (id to how often it came), and how many
/// extra copies `stored` holds.
pub fn lost_and_duplicates<'a>(
    acked: impl IntoIterator<Item = &'a String>,
    stored: &HashMap<String, u32>,
) -> (Vec<&'a String>, u32) {
    let lost = acked
        .into_iter()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    let duplicates = stored.values().map(|n| n - 1).sum();
    (lost, duplicates)
}

/// A destination taken away under load: `edgelog edge` sends `edge` (rate, duration,
/// ...) to the collector; after `up_first` the server stops; `/readyz` and `/metrics` are
/// read `down` later, and the server comes back `down_after_probe` after that.
pub struct Outage<'a> {
    pub edge: &'a [&'a str],
    pub up_first: Duration,
    pub down: Duration,
    pub down_after_probe: Duration,
}

/// What an [`Outage`] left: the answers read during it, the edge's report, and the log of
/// acknowledged ids.
pub struct OutageRun {
    pub readyz: String,
    pub metrics: String,
    pub report: String,
    pub ack_log: PathBuf,
}

/// Runs `o` against `collector` and `server`: the edge must finish cleanly and the
/// collector then drain cleanly on SIGTERM.
pub fn outage_under_load(
    collector: &mut TestServer,
    server: &mut dyn StopStart,
    o: &Outage<'_>,
) -> anyhow::Result<OutageRun> {
    let ack_log = collector.dir().join("acked.txt");
    let load = spawn_load(&collector.url(), &ack_log, o.edge)?;
    // The scenario's own timing: these sleeps are the outage, not waits.
    std::thread::sleep(o.up_first);
    server.stop()?;
    std::thread::sleep(o.down);
    let readyz = http_get(&format!("{}/readyz", collector.url()))?;
    let metrics = http_get(&format!("{}/metrics", collector.url()))?;
    std::thread::sleep(o.down_after_probe);
    server.restart()?;
    let report = load.finish()?;
    assert!(collector.terminate()?, "{}", collector.log_text());
    Ok(OutageRun {
        readyz,
        metrics,
        report,
        ack_log,
    })
}

/// 12,000 records with 30 % 5xx over the last 4 minutes, for 3 distributions: the demo's
/// alarm fires on them.
pub fn send_5xx_burst(url: &str) -> anyhow::Result<String> {
    crate::run_edge(
        url,
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
    )
}

/// Webhook notifications received: when (ms since the epoch) and the body.
pub type Received = Arc<Mutex<Vec<(i64, serde_json::Value)>>>;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A webhook receiver on loopback: answers 200 and keeps every JSON body with its
/// arrival time (the first 200 connections).
pub fn webhook_receiver() -> anyhow::Result<(u16, Received)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let got: Received = Arc::default();
    let keep = got.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten().take(200) {
            let body = read_body(&mut conn);
            let at = now_ms();
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            if let Some(b) = body.and_then(|b| serde_json::from_str(&b).ok())
                && let Ok(mut g) = keep.lock()
            {
                g.push((at, b));
            }
        }
    });
    Ok((port, got))
}

/// The body of one HTTP request (by its Content-Length).
fn read_body(conn: &mut std::net::TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
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
                return Some(rest[..len].to_owned());
            }
        }
    }
}
