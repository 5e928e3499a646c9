//! The dashboard as a user sees it: `edgelog demo` in headless Chromium (Debian's
//! `chromium`), a distribution page with its six charts drawn and the alarm state shown.
//! The screenshots are kept under the target directory's `test-artifacts/`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use edgelog_tests::{TestServer, binary, http_get, wait_for, within};

fn chromium() -> anyhow::Result<PathBuf> {
    edgelog_tests::servers::server_binary("chromium")
}

/// Runs headless Chromium with the flags a sandboxed, offline machine needs.
fn headless(profile: &std::path::Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(chromium()?)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .context("cannot run chromium")?;
    if !out.status.success() {
        bail!("chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn artifacts() -> anyhow::Result<PathBuf> {
    let target = binary()
        .parent()
        .and_then(|p| p.parent())
        .context("target dir")?
        .join("test-artifacts");
    std::fs::create_dir_all(&target)?;
    Ok(target)
}

#[test]
fn a_distribution_page_shows_six_charts_with_data_and_the_alarm_state() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let demo = TestServer::demo(&dir.path().join("data"), &["--rate", "400"], &[])?;
    // Wait until a distribution has minutes on the dashboard and its alarm was evaluated.
    let id = wait_for(
        within(Duration::from_secs(60)),
        Duration::from_millis(100),
        "a distribution with an evaluated alarm within 60 s",
        || {
            let ids: Vec<String> =
                serde_json::from_str(&http_get(&demo.dashboard_url("/api/distributions"))?)
                    .unwrap_or_default();
            let alarms: serde_json::Value =
                serde_json::from_str(&http_get(&demo.dashboard_url("/api/alarms"))?)?;
            Ok(ids.first().cloned().filter(|id| {
                alarms
                    .as_array()
                    .is_some_and(|a| a.iter().any(|s| s["distribution"] == id.as_str()))
            }))
        },
    )?;
    let url = demo.dashboard_url(&format!("/distributions/{id}"));
    let profile = dir.path().join("chromium");
    let dom = headless(
        &profile,
        &["--virtual-time-budget=2000", "--dump-dom", &url],
    )?;
    let out = artifacts()?;
    headless(
        &profile,
        &[
            "--window-size=1400,2300",
            &format!(
                "--screenshot={}",
                out.join("dashboard-distribution.png").display()
            ),
            &url,
        ],
    )?;
    headless(
        &profile,
        &[
            "--window-size=1400,800",
            &format!(
                "--screenshot={}",
                out.join("dashboard-overview.png").display()
            ),
            &demo.dashboard_url("/"),
        ],
    )?;
    demo.stop()?;

    let start = dom
        .find("id=\"default-charts\"")
        .context("no default charts")?;
    let end = dom
        .find("id=\"additional-charts\"")
        .context("no additional charts")?;
    let cards: Vec<&str> = dom[start..end]
        .split("<div class=\"chart\"")
        .skip(1)
        .collect();
    let titles = [
        "Requests",
        "BytesDownloaded",
        "BytesUploaded",
        "4xxErrorRate",
        "5xxErrorRate",
        "TotalErrorRate",
    ];
    assert_eq!(cards.len(), 6, "six CloudFront charts expected");
    for (card, title) in cards.iter().zip(titles) {
        let points: u32 = card
            .split("data-points=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .and_then(|n| n.parse().ok())
            .context("data-points")?;
        assert!(points >= 1, "{title} has no data");
        assert!(
            card.contains("<svg") && card.contains("<circle"),
            "{title} draws no data"
        );
        assert!(card.contains(title), "{title} missing");
        assert!(card.contains("format=csv"), "{title} has no CSV link");
    }
    assert!(
        ["\"OK\"", "\"ALARM\"", "\"INSUFFICIENT_DATA\""]
            .iter()
            .any(|s| dom.contains(&format!("class={s}"))),
        "no alarm state on the page"
    );
    assert!(
        dom.contains("5xx-error-rate"),
        "the demo's alarm is not shown"
    );
    let png = std::fs::metadata(out.join("dashboard-distribution.png"))?;
    assert!(png.len() > 20_000, "screenshot looks empty");
    Ok(())
}
