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

#[test]
fn each_report_page_shows_its_tables_and_charts_with_data() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let demo = TestServer::demo(&dir.path().join("data"), &["--rate", "400"], &[])?;
    // A distribution whose reports count a few hundred requests.
    let id = wait_for(
        within(Duration::from_secs(60)),
        Duration::from_millis(200),
        "a distribution with reports within 60 s",
        || {
            let ids: Vec<String> =
                serde_json::from_str(&http_get(&demo.dashboard_url("/api/distributions"))?)
                    .unwrap_or_default();
            let Some(id) = ids.first() else {
                return Ok(None);
            };
            let usage: serde_json::Value = serde_json::from_str(&http_get(
                &demo.dashboard_url(&format!("/api/distributions/{id}/reports/usage")),
            )?)?;
            Ok((usage["requests"].as_u64().unwrap_or(0) >= 300).then(|| id.clone()))
        },
    )?;
    let profile = dir.path().join("chromium");
    let out = artifacts()?;
    let page = |slug: &str| demo.dashboard_url(&format!("/distributions/{id}/reports/{slug}"));
    // What each page must show: tables with rows, and charts that draw data (bars are
    // rects, lines have dots).
    let pages: [(&str, &[&str], &str); 5] = [
        ("popular-objects", &["id=\"objects\""], "<rect"),
        ("top-referrers", &["id=\"referrers\""], "<rect"),
        (
            "viewers",
            &[
                "id=\"devices\"",
                "id=\"browsers\"",
                "id=\"operating-systems\"",
                "id=\"countries\"",
                "id=\"edge-locations\"",
            ],
            "<rect",
        ),
        (
            "cache-statistics",
            &[
                "id=\"result-types\"",
                "id=\"status-classes\"",
                "id=\"incomplete\"",
            ],
            "<circle",
        ),
        (
            "usage",
            &["id=\"methods\"", "id=\"protocols\"", "id=\"http-versions\""],
            "<circle",
        ),
    ];
    let mut doms = Vec::new();
    for (slug, _, _) in &pages {
        doms.push(headless(
            &profile,
            &["--virtual-time-budget=2000", "--dump-dom", &page(slug)],
        )?);
        headless(
            &profile,
            &[
                "--window-size=1400,2000",
                &format!(
                    "--screenshot={}",
                    out.join(format!("report-{slug}.png")).display()
                ),
                &page(slug),
            ],
        )?;
    }
    let distribution = headless(
        &profile,
        &[
            "--dump-dom",
            &demo.dashboard_url(&format!("/distributions/{id}")),
        ],
    )?;
    demo.stop()?;

    assert!(
        distribution.contains(&format!("/distributions/{id}/reports/popular-objects")),
        "the distribution page does not link its reports"
    );
    for ((slug, tables, mark), dom) in pages.iter().zip(&doms) {
        for t in *tables {
            let table = dom
                .split(t)
                .nth(1)
                .with_context(|| format!("{slug}: no {t}"))?;
            let table = table.split("</table>").next().unwrap_or("");
            if t.starts_with("id=\"incomplete") {
                continue;
            }
            assert!(
                table.matches("<tr>").count() >= 2 && !table.contains("no requests"),
                "{slug}: {t} has no rows"
            );
        }
        let charts = dom.matches("class=\"chart\"").count();
        assert!(charts >= 1, "{slug}: no chart");
        assert!(dom.contains(mark), "{slug}: the charts draw no data");
        assert!(dom.contains("format=csv"), "{slug}: no CSV link");
        let png = std::fs::metadata(out.join(format!("report-{slug}.png")))?;
        assert!(png.len() > 20_000, "{slug}: screenshot looks empty");
    }
    Ok(())
}
