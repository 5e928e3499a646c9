//! A collector killed with SIGKILL again and again under load loses nothing it acknowledged.

use std::collections::HashSet;
use std::time::Duration;

use edgelog_tests::{CollectorProc, spawn_edge, stored_ids};

#[test]
fn sigkill_during_sustained_load_loses_no_acknowledged_record() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut collector = CollectorProc::start(dir.path(), "[sinks.standard]\nmax_age = \"2s\"\n")?;
    let ack_log = dir.path().join("acked.txt");
    let ack = ack_log.display().to_string();
    let edge = spawn_edge(
        &collector.url(),
        &[
            "--rate",
            "4000",
            "--duration",
            "20s",
            "--batch",
            "250",
            "--concurrency",
            "4",
            "--distributions",
            "4",
            "--ack-log",
            &ack,
            "--max-tries",
            "500",
            "--timeout",
            "5s",
        ],
    )?;
    let kills = 6;
    for i in 0..kills {
        std::thread::sleep(Duration::from_millis(2000 + 350 * i));
        collector.crash_and_restart()?;
    }
    let out = edge.wait_with_output()?;
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "edge failed: {report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        collector.terminate()?,
        "collector did not drain cleanly:\n{}",
        collector.log_text()
    );

    let acked: HashSet<String> = std::fs::read_to_string(&ack_log)?
        .lines()
        .map(str::to_owned)
        .collect();
    let stored = stored_ids(&dir.path().join("standard-logs"))?;
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    let duplicates: u32 = stored.values().map(|n| n - 1).sum();
    eprintln!(
        "{kills} SIGKILLs: {} acknowledged, {} distinct stored, {} duplicates (resent after a kill), {} lost\n{report}",
        acked.len(),
        stored.len(),
        duplicates,
        lost.len()
    );
    assert!(
        acked.len() > 20_000,
        "too little load to mean anything: {}",
        acked.len()
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged records lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        collector.log_text().contains("write-ahead log open"),
        "{}",
        collector.log_text()
    );
    Ok(())
}

#[test]
fn sigterm_right_after_the_listener_opens_still_exits_cleanly() -> anyhow::Result<()> {
    // The signal handlers are installed before anything listens: a SIGTERM that comes
    // while the collector is still starting must not kill it uncleanly.
    for _ in 0..10 {
        let dir = tempfile::tempdir()?;
        let mut collector = CollectorProc::start(dir.path(), "")?;
        assert!(collector.terminate()?, "{}", collector.log_text());
    }
    Ok(())
}

#[test]
fn sighup_is_logged_and_ignored_by_a_collector() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut collector = CollectorProc::start(dir.path(), "")?;
    edgelog_tests::signal(&collector.child, "HUP")?;
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        collector.child.try_wait()?.is_none(),
        "SIGHUP stopped the collector:\n{}",
        collector.log_text()
    );
    edgelog_tests::http_get(&format!("{}/readyz", collector.url()))?;
    assert!(collector.log_text().contains("SIGHUP received and ignored"));
    assert!(collector.terminate()?, "{}", collector.log_text());
    Ok(())
}
