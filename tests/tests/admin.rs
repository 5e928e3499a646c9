//! Settings changed over HTTP and kept: the collector's `/admin/settings` (sampling rates,
//! tokens, privacy) survive SIGHUPs and restarts until deleted, and refuse what needs a
//! restart; the dashboard's alarms made through its API come back after a restart.

use edgelog_tests::{ServerConfig, TOKEN, TestServer, http_request, wait_until, within};
use serde_json::json;

const ADMIN: &str = "admin-token-0123456789abcdef";
const NEW_TOKEN: &str = "rotated-ingest-token-0123456789";

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn call(
    server: &TestServer,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let auth = bearer(token);
    let (status, text) = http_request(
        method,
        &format!("{}{path}", server.url()),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    )?;
    let v = serde_json::from_str(&text).unwrap_or(json!({ "text": text }));
    Ok((status, v))
}

fn rate(server: &TestServer, token: &str) -> anyhow::Result<serde_json::Value> {
    let (status, cfg) = call(server, "GET", "/config", token, "")?;
    anyhow::ensure!(status == 200, "{cfg}");
    Ok(cfg["sampling"]["distributions"]["E1"]["realtime"].clone())
}

#[test]
fn settings_made_over_http_are_checked_kept_across_restarts_and_sighups_and_deleted()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = ServerConfig::new().set("collector", "admin_tokens", [ADMIN]);
    let mut c = TestServer::collector(dir.path(), &cfg)?;

    // Who may: an admin token only; an ingest token is told why not.
    let (s, v) = call(&c, "GET", "/admin/settings", "wrong-token-0123456789", "")?;
    assert_eq!(s, 401, "{v}");
    let (s, v) = call(&c, "GET", "/admin/settings", TOKEN, "")?;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("admin_tokens")),
        "{v}"
    );
    let (s, v) = call(&c, "GET", "/admin/settings", ADMIN, "")?;
    assert_eq!((s, &v["settings"]), (200, &json!({})), "{v}");
    let (s, v) = call(&c, "GET", "/config", ADMIN, "")?;
    assert_eq!(s, 401, "an admin token cannot read as an ingest one: {v}");

    // Refused whole, with the reason, nothing changed.
    for (body, reason) in [
        (
            r#"{"collector": {"listen": "0.0.0.0:1"}}"#,
            "collector.listen",
        ),
        (
            r#"{"collector": {"admin_tokens": ["x"]}}"#,
            "collector.admin_tokens",
        ),
        (r#"{"data_dir": "/"}"#, "data_dir"),
        (
            r#"{"sampling": {"distributions": {"E1": {"realtime": 150}}}}"#,
            "150",
        ),
        (
            r#"{"sampling": {"distributions": {"E1": {"realtime": "NaN"}}}}"#,
            "sampling",
        ),
        (r#"{"collector": {"tokens": ["short"]}}"#, "16"),
        ("[1, 2]", "object"),
        ("not json", "not JSON"),
        ("", "not JSON"),
    ] {
        let (s, v) = call(&c, "PUT", "/admin/settings", ADMIN, body)?;
        assert_eq!(s, 400, "{body}: {v}");
        let e = v["error"].as_str().unwrap_or_default();
        assert!(
            e.contains(reason) && e.contains("nothing changed"),
            "{body}: {v}"
        );
    }
    let huge = format!(
        r#"{{"sampling": {{"default": {{"x": "{}"}}}}}}"#,
        "a".repeat(2 << 20)
    );
    let (s, v) = call(&c, "PUT", "/admin/settings", ADMIN, &huge)?;
    assert_eq!(s, 413, "{v}");
    let (_, v) = call(&c, "GET", "/admin/settings", ADMIN, "")?;
    assert_eq!(v["settings"], json!({}));

    // A rate and a rotated token, in effect at once.
    let settings = json!({
        "sampling": {"distributions": {"E1": {"realtime": 50}}},
        "collector": {"tokens": [NEW_TOKEN]},
    });
    let (s, v) = call(&c, "PUT", "/admin/settings", ADMIN, &settings.to_string())?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["settings"]["collector"]["tokens"],
        json!(["<redacted>"]),
        "{v}"
    );
    let changed = v["changed"].to_string();
    assert!(
        changed.contains("sampling") && changed.contains("tokens"),
        "{v}"
    );
    assert_eq!(rate(&c, NEW_TOKEN)?.as_f64(), Some(50.0));
    let (s, _) = call(&c, "GET", "/config", TOKEN, "")?;
    assert_eq!(s, 401, "the old token is gone");

    // Kept: a restart, then a SIGHUP with the file changed, still have them.
    c.restart()?;
    assert_eq!(rate(&c, NEW_TOKEN)?.as_f64(), Some(50.0));
    c.rewrite_config(&cfg.clone().sample("standard", 20))?;
    c.signal("HUP")?;
    assert!(wait_until(
        within(std::time::Duration::from_secs(10)),
        || { c.log_text().matches("configuration reloaded").count() >= 1 }
    ));
    assert_eq!(rate(&c, NEW_TOKEN)?.as_f64(), Some(50.0));
    let (_, v) = call(&c, "GET", "/config", NEW_TOKEN, "")?;
    assert_eq!(
        v["sampling"]["default"]["standard"].as_f64(),
        Some(20.0),
        "the file's change applies too: {v}"
    );

    // Deleted: back to the file's.
    let (s, v) = call(&c, "DELETE", "/admin/settings", ADMIN, "")?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(rate(&c, TOKEN)?, serde_json::Value::Null);
    c.restart()?;
    let (s, v) = call(&c, "GET", "/admin/settings", ADMIN, "")?;
    assert_eq!((s, &v["settings"]), (200, &json!({})), "{v}");
    c.stop()?;
    Ok(())
}

#[test]
fn without_admin_tokens_the_api_is_off_and_an_ingest_token_cannot_be_one() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let c = TestServer::collector(dir.path(), &ServerConfig::new())?;
    let (s, v) = call(&c, "PUT", "/admin/settings", TOKEN, "{}")?;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("admin API is off")),
        "{v}"
    );
    c.stop()?;

    let dir = tempfile::tempdir()?;
    let cfg = ServerConfig::new().set("collector", "admin_tokens", [TOKEN]);
    let refused = TestServer::collector(dir.path(), &cfg);
    let log = std::fs::read_to_string(dir.path().join("edgelog.log")).unwrap_or_default();
    assert!(refused.is_err(), "{log}");
    Ok(())
}

#[test]
fn alarms_made_through_the_dashboards_api_come_back_after_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = ServerConfig::new()
        .set(
            "",
            "data_dir",
            dir.path().join("data").display().to_string(),
        )
        .set("dashboard", "tokens", [ADMIN]);
    let d = TestServer::dashboard(dir.path(), &cfg)?;
    let auth = bearer(ADMIN);
    let put = |d: &TestServer, name: &str| {
        let alarm = format!(
            r#"{{"name":"{name}","distribution":"*","metric":"Requests","comparison":"GreaterThanThreshold","threshold":1}}"#
        );
        http_request(
            "PUT",
            &d.dashboard_url(&format!("/api/alarms/definitions/{name}")),
            &[("authorization", &auth)],
            &alarm,
        )
    };
    let names = |d: &TestServer| -> anyhow::Result<Vec<String>> {
        let (s, body) = http_request(
            "GET",
            &d.dashboard_url("/api/alarms/definitions"),
            &[("authorization", &auth)],
            "",
        )?;
        anyhow::ensure!(s == 200, "{body}");
        let v: Vec<serde_json::Value> = serde_json::from_str(&body)?;
        Ok(v.iter()
            .filter_map(|a| a["name"].as_str().map(str::to_owned))
            .collect())
    };
    assert_eq!(put(&d, "kept")?.0, 201);
    assert_eq!(put(&d, "gone")?.0, 201);
    let (s, _) = http_request(
        "DELETE",
        &d.dashboard_url("/api/alarms/definitions/gone"),
        &[("authorization", &auth)],
        "",
    )?;
    assert_eq!(s, 204);
    d.stop()?;
    let d = TestServer::dashboard(dir.path(), &cfg)?;
    assert_eq!(names(&d)?, ["kept"]);
    d.stop()?;
    Ok(())
}

fn sha256_hex(s: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().map(|mut i| i.write_all(s.as_bytes()));
            c.wait_with_output()
        })?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

#[test]
fn a_hostile_client_and_a_hand_edited_file_are_refused() -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir()?;
    // The admin token given as an upper-case hash still opens the API.
    let hash = sha256_hex(ADMIN)?;
    let cfg = ServerConfig::new().set(
        "collector",
        "admin_tokens",
        [format!("sha256:{}", hash.to_ascii_uppercase()).as_str()],
    );
    let mut c = TestServer::collector(dir.path(), &cfg)?;
    let (s, v) = call(&c, "GET", "/admin/settings", ADMIN, "")?;
    assert_eq!(s, 200, "{v}");

    // A stranger announcing 100 MB is answered at once, the body never read.
    let host = c.url().trim_start_matches("http://").to_owned();
    let mut raw = std::net::TcpStream::connect(&host)?;
    raw.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(
        raw,
        "PUT /admin/settings HTTP/1.1\r\nhost: {host}\r\ncontent-length: 100000000\r\n\r\n{{"
    )?;
    let mut answer = [0u8; 512];
    let n = raw.read(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    // The admin token, as a hash, cannot come back as an ingest token.
    let body = json!({"collector": {"tokens": [format!("sha256:{hash}")]}}).to_string();
    let (s, v) = call(&c, "PUT", "/admin/settings", ADMIN, &body)?;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("admin_tokens")),
        "{v}"
    );

    // A settings file edited by hand with a key the API may not set stops the start.
    assert!(c.terminate()?);
    let file = dir.path().join("state/settings.json");
    std::fs::create_dir_all(file.parent().unwrap_or(dir.path()))?;
    std::fs::write(&file, r#"{"collector": {"listen": "127.0.0.1:1"}}"#)?;
    let again = c.restart();
    assert!(again.is_err(), "started with a hand-edited listen");
    let log = c.log_text();
    assert!(
        log.contains("collector.listen") && log.contains("settings.json"),
        "{log}"
    );
    Ok(())
}

#[test]
fn a_file_reload_leaves_an_alarm_made_through_the_api_alone() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("alarms.toml");
    let file = |threshold: u32, extra: bool| {
        let mut t = format!(
            "data_dir = \"{}\"\n[dashboard]\nlisten = \"127.0.0.1:0\"\ntokens = [\"{ADMIN}\"]\n\
             [[dashboard.alarms]]\nname = \"filealarm\"\ndistribution = \"*\"\nmetric = \"Requests\"\n\
             comparison = \"GreaterThanThreshold\"\nthreshold = {threshold}\n",
            dir.path().join("data").display()
        );
        if extra {
            t.push_str(
                "[[dashboard.alarms]]\nname = \"other\"\ndistribution = \"*\"\nmetric = \"Requests\"\n\
                 comparison = \"GreaterThanThreshold\"\nthreshold = 1\n",
            );
        }
        t
    };
    std::fs::write(&config, file(100, false))?;
    let d = TestServer::command(
        edgelog_tests::Kind::Dashboard,
        dir.path(),
        &["dashboard", "--config", &config.display().to_string()],
    )?;
    let auth = bearer(ADMIN);
    let alarm = r#"{"name":"filealarm","distribution":"*","metric":"Requests","comparison":"GreaterThanThreshold","threshold":5}"#;
    let (s, body) = http_request(
        "PUT",
        &d.dashboard_url("/api/alarms/definitions/filealarm"),
        &[("authorization", &auth)],
        alarm,
    )?;
    assert_eq!(s, 200, "{body}");
    std::fs::write(&config, file(200, true))?;
    d.signal("HUP")?;
    assert!(wait_until(
        within(std::time::Duration::from_secs(10)),
        || { d.log_text().contains("configuration reloaded") }
    ));
    let (_, body) = http_request(
        "GET",
        &d.dashboard_url("/api/alarms/definitions"),
        &[("authorization", &auth)],
        "",
    )?;
    let defs: Vec<serde_json::Value> = serde_json::from_str(&body)?;
    let threshold = |name: &str| {
        defs.iter()
            .find(|a| a["name"] == name)
            .and_then(|a| a["threshold"].as_f64())
    };
    assert_eq!(threshold("filealarm"), Some(5.0), "the API's stays: {body}");
    assert_eq!(
        threshold("other"),
        Some(1.0),
        "the file's new one is added: {body}"
    );
    d.stop()?;
    Ok(())
}
