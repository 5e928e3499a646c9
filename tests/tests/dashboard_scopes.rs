//! Dashboard tokens scoped to distributions: a token for one distribution sees only its
//! records' metrics (pages, JSON and CSV API, charts, alarm states and history,
//! Prometheus) and is refused the others' with a reason; a read-only token cannot change
//! alarms, and a writing one only its own (not `*`). Tokens may be given as SHA-256.

use std::time::Duration;

use edgelog_tests::{TOKEN, TestServer, http_post, http_request, wait_until, within};

const FULL: &str = "full-dashboard-token-0123456789";
const READER: &str = "scoped-reader-token-0123456789";
const WRITER: &str = "scoped-writer-token-0123456789";

fn sha256(s: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("printf %s '{s}' | sha256sum")])
        .output()?;
    Ok(String::from_utf8(out.stdout)?
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned())
}

fn get(d: &TestServer, token: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let auth = format!("Bearer {token}");
    http_request(
        "GET",
        &d.dashboard_url(path),
        &[("authorization", &auth)],
        "",
    )
}

fn put_alarm(
    d: &TestServer,
    token: &str,
    name: &str,
    distribution: &str,
) -> anyhow::Result<(u16, String)> {
    let auth = format!("Bearer {token}");
    let body = serde_json::json!({"name": name, "distribution": distribution, "metric": "Requests",
        "comparison": "LessThanThreshold", "threshold": 1.0});
    http_request(
        "PUT",
        &d.dashboard_url(&format!("/api/alarms/definitions/{name}")),
        &[("authorization", &auth)],
        &body.to_string(),
    )
}

#[test]
fn a_scoped_token_sees_and_changes_only_its_distributions() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("scopes.toml");
    std::fs::write(
        &config,
        format!(
            "[dashboard]\ntokens = [\"{FULL}\"]\n\
             [[dashboard.scoped_tokens]]\ntoken = \"{READER}\"\ndistributions = [\"EALPHA\"]\n\
             [[dashboard.scoped_tokens]]\nsha256 = \"{}\"\ndistributions = [\"EALPHA\"]\nwrite = true\n",
            sha256(WRITER)?.to_uppercase()
        ),
    )?;
    let config_arg = config.display().to_string();
    let d = TestServer::demo(
        &dir.path().join("demo"),
        &["--no-traffic", "--token", TOKEN, "--config", &config_arg],
        &[],
    )?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        - 60;
    let mut body = String::new();
    for (k, dist) in ["EALPHA", "EBETA"].iter().cycle().take(200).enumerate() {
        body.push_str(&format!(
            "{{\"timestamp\":{now},\"DistributionId\":\"{dist}\",\"sc-status\":200,\"sc-bytes\":{k},\"x-edge-request-id\":\"s-{k}\"}}\n"
        ));
    }
    let a = http_post(&format!("{}/v1/records", d.url()), body.as_bytes())?;
    assert_eq!(a.status, 200, "{}", a.body);
    // An alarm on EBETA alone, so that its state and history exist to be hidden.
    assert_eq!(put_alarm(&d, FULL, "beta-only", "EBETA")?.0, 201);
    let both = wait_until(within(Duration::from_secs(40)), || {
        get(&d, FULL, "/api/distributions")
            .is_ok_and(|(_, b)| b.contains("EALPHA") && b.contains("EBETA"))
            && get(&d, FULL, "/api/alarms").is_ok_and(|(_, b)| b.contains("EBETA"))
    });
    assert!(
        both,
        "{:?} {:?}",
        get(&d, FULL, "/api/distributions"),
        get(&d, FULL, "/api/alarms")
    );

    // Without a token: nothing.
    assert_eq!(
        get(&d, "no-such-token-0123456789", "/api/distributions")?.0,
        401
    );
    // The scheme in any case; two Authorization headers are refused, whichever is first.
    let url = d.dashboard_url("/api/distributions");
    let lower = format!("bearer {FULL}");
    assert_eq!(
        http_request("GET", &url, &[("authorization", &lower)], "")?.0,
        200
    );
    let (full, reader) = (format!("Bearer {FULL}"), format!("Bearer {READER}"));
    for pair in [[&reader, &full], [&full, &reader]] {
        let headers = [
            ("authorization", pair[0].as_str()),
            ("authorization", pair[1].as_str()),
        ];
        assert_eq!(http_request("GET", &url, &headers, "")?.0, 401);
    }

    // The reader: EALPHA only, everywhere.
    let (s, b) = get(&d, READER, "/api/distributions")?;
    assert_eq!((s, b.trim()), (200, "[\"EALPHA\"]"));
    for path in [
        "/api/distributions/EBETA/series",
        "/api/distributions/EBETA/series?format=csv",
        "/api/distributions/EBETA/charts/requests",
        "/distributions/EBETA",
        "/api/distributions/ENOSUCH/series",
        "/distributions/EBETA/reports/popular-objects",
        "/api/distributions/EBETA/reports/popular-objects",
        "/api/distributions/EBETA/reports/top-referrers?format=csv",
        "/api/distributions/EBETA/reports/viewers",
        "/api/distributions/EBETA/reports/cache-statistics?range=24h",
        "/distributions/EBETA/reports/usage",
        // Scope comes first: a bad report name or range tells nothing about EBETA.
        "/api/distributions/EBETA/reports/no-such-report",
        "/api/distributions/EBETA/reports/usage?range=7d",
    ] {
        let (s, b) = get(&d, READER, path)?;
        assert_eq!(s, 403, "{path}: {b}");
        assert!(b.contains("may not see"), "{path}: {b}");
    }
    for path in [
        "/api/distributions/EALPHA/series",
        "/api/distributions/EALPHA/series?format=csv",
        "/api/distributions/EALPHA/charts/requests",
        "/distributions/EALPHA",
        "/distributions/EALPHA/reports/popular-objects",
        "/api/distributions/EALPHA/reports/top-referrers?format=csv",
        "/api/distributions/EALPHA/reports/usage",
    ] {
        assert_eq!(get(&d, READER, path)?.0, 200, "{path}");
    }
    for path in ["/", "/metrics", "/api/alarms", "/api/alarms/history"] {
        let (s, b) = get(&d, READER, path)?;
        assert_eq!(s, 200, "{path}");
        assert!(
            !b.contains("EBETA"),
            "{path} shows another distribution: {b}"
        );
    }
    let (_, overview) = get(&d, READER, "/")?;
    assert!(overview.contains("EALPHA"), "{overview}");
    let (_, metrics) = get(&d, READER, "/metrics")?;
    assert!(metrics.contains("distribution=\"EALPHA\""), "{metrics}");
    let (_, full_metrics) = get(&d, FULL, "/metrics")?;
    assert!(full_metrics.contains("distribution=\"EBETA\""));

    // Alarms: the reader may not change any; the writer only its own, not `*`.
    let (s, b) = put_alarm(&d, READER, "mine", "EALPHA")?;
    assert_eq!(s, 403, "{b}");
    assert!(b.contains("only read"), "{b}");
    assert_eq!(put_alarm(&d, WRITER, "mine", "EALPHA")?.0, 201);
    assert_eq!(put_alarm(&d, WRITER, "theirs", "EBETA")?.0, 403);
    assert_eq!(put_alarm(&d, WRITER, "everyone", "*")?.0, 403);
    // Nor take over another's alarm by its name, nor delete it, nor one on `*`.
    assert_eq!(put_alarm(&d, WRITER, "beta-only", "EALPHA")?.0, 403);
    assert_eq!(put_alarm(&d, FULL, "everyone", "*")?.0, 201);
    let auth = format!("Bearer {WRITER}");
    for name in ["beta-only", "everyone"] {
        let (s, b) = http_request(
            "DELETE",
            &d.dashboard_url(&format!("/api/alarms/definitions/{name}")),
            &[("authorization", &auth)],
            "",
        )?;
        assert_eq!(s, 403, "{name}: {b}");
    }
    let (s, _) = http_request(
        "DELETE",
        &d.dashboard_url("/api/alarms/definitions/mine"),
        &[("authorization", &auth)],
        "",
    )?;
    assert_eq!(s, 204);
    d.stop()?;
    Ok(())
}
