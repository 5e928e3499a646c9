//! The demo's own alarm (5xxErrorRate > 5 % in 2 of 3 minutes) fires on a 5xx burst.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edgelog_tests::{TOKEN, binary, free_port, http_get, run_edge, signal, wait_listening};

#[test]
fn a_5xx_burst_puts_the_demo_alarm_in_alarm() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ingest, dash) = (free_port(), free_port());
    let mut child = Command::new(binary())
        .args(["demo", "--no-traffic", "--token", TOKEN, "--data-dir"])
        .arg(dir.path())
        .args([
            "--listen",
            &format!("127.0.0.1:{ingest}"),
            "--dashboard-listen",
            &format!("127.0.0.1:{dash}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    wait_listening(ingest)?;
    // 30 % 5xx over the last 4 minutes, for 3 distributions.
    run_edge(
        &format!("http://127.0.0.1:{ingest}"),
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
            serde_json::from_str(&http_get(&format!("http://127.0.0.1:{dash}/api/alarms"))?)?;
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
    let history: Vec<serde_json::Value> = serde_json::from_str(&http_get(&format!(
        "http://127.0.0.1:{dash}/api/alarms/history"
    ))?)?;
    assert!(
        history.iter().any(|t| t["to"] == "ALARM"
            && t["reason"]
                .as_str()
                .is_some_and(|r| r.contains("ErrorRate5xx"))),
        "{history:?}"
    );
    let page = http_get(&format!("http://127.0.0.1:{dash}/"))?;
    assert!(
        page.contains("5xx-error-rate") && page.contains("Alarm"),
        "{page}"
    );
    signal(&child, "TERM")?;
    anyhow::ensure!(child.wait()?.success(), "demo did not stop cleanly");
    Ok(())
}
