//! A collector killed with SIGKILL again and again under load loses nothing it acknowledged.

use std::collections::HashSet;
use std::time::Duration;

use edgelog_tests::scenarios::{acked_ids, lost_and_duplicates, spawn_load};
use edgelog_tests::{ServerConfig, TestServer, stored_ids, wait_until, within};

#[test]
fn sigkill_during_sustained_load_loses_no_acknowledged_record() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut collector =
        TestServer::collector(dir.path(), &ServerConfig::new().standard("max_age", "2s"))?;
    let ack_log = dir.path().join("acked.txt");
    let edge = spawn_load(
        &collector.url(),
        &ack_log,
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
            "--max-tries",
            "500",
            "--timeout",
            "5s",
        ],
    )?;
    let kills = 6;
    for i in 0..kills {
        // The scenario: kills at staggered times under load.
        std::thread::sleep(Duration::from_millis(2000 + 350 * i));
        collector.crash_and_restart()?;
    }
    let report = edge.finish()?;
    assert!(
        collector.terminate()?,
        "collector did not drain cleanly:\n{}",
        collector.log_text()
    );

    let acked: HashSet<String> = acked_ids(&ack_log)?;
    let stored = stored_ids(&dir.path().join("standard-logs"))?;
    let (lost, duplicates) = lost_and_duplicates(&acked, &stored);
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
        let mut collector = TestServer::collector_listening(dir.path(), &ServerConfig::new())?;
        assert!(collector.terminate()?, "{}", collector.log_text());
    }
    Ok(())
}

#[test]
fn sighup_makes_a_collector_reload_and_keep_running() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut collector = TestServer::collector(dir.path(), &ServerConfig::new())?;
    collector.signal("HUP")?;
    wait_until(within(Duration::from_secs(10)), || {
        collector.log_text().contains("configuration reloaded")
    });
    assert!(
        collector.running()?,
        "SIGHUP stopped the collector:\n{}",
        collector.log_text()
    );
    edgelog_tests::http_get(&format!("{}/readyz", collector.url()))?;
    let log = collector.log_text();
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(!log.contains("need a restart"), "nothing changed: {log}");
    assert!(collector.terminate()?, "{}", collector.log_text());
    Ok(())
}
