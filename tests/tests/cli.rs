//! The command line: help, and configuration errors that name the key.

use std::process::Command;

use edgelog_tests::binary;

fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(binary());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run edgelog");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn every_subcommand_has_help() {
    let (ok, text) = run(&["--help"], &[]);
    assert!(ok, "{text}");
    for sub in ["collector", "dashboard", "edge", "demo", "config"] {
        assert!(text.contains(sub), "--help does not list {sub}: {text}");
        let (ok, help) = run(&[sub, "--help"], &[]);
        assert!(ok && help.contains("Usage"), "{sub} --help: {help}");
    }
}

#[test]
fn configuration_errors_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "[collector]\ntokens = [\"0123456789abcdef0\"]\nmax_bodyy_bytes = 5\n",
    )
    .expect("write");
    let (ok, text) = run(&["config", "--config", file.to_str().expect("utf8")], &[]);
    assert!(!ok && text.contains("max_bodyy_bytes"), "{text}");

    std::fs::write(&file, "[collector]\ntokens = [\"0123456789abcdef0\"]\n").expect("write");
    let (ok, text) = run(
        &["config", "--config", file.to_str().expect("utf8")],
        &[("EDGELOG_COLLECTOR__MAX_BODY_BYTES", "lots")],
    );
    assert!(!ok && text.contains("max_body_bytes"), "{text}");

    let (ok, text) = run(
        &["config", "--config", file.to_str().expect("utf8")],
        &[("EDGELOG_SAMPLING__DEFAULT__REALTIME", "150")],
    );
    assert!(!ok && text.contains("sampling.default.realtime"), "{text}");

    let (ok, text) = run(&["config"], &[]);
    assert!(!ok && text.contains("collector.tokens"), "{text}");

    let (ok, text) = run(
        &["config", "--config", file.to_str().expect("utf8")],
        &[("EDGELOG_COLLECTOR__LISTEN", "127.0.0.1:9999")],
    );
    assert!(ok && text.contains("127.0.0.1:9999"), "{text}");
}

#[test]
fn an_s3_bucket_comes_from_the_environment_and_secrets_are_not_printed() {
    let env = [
        ("EDGELOG_COLLECTOR__TOKENS", "[\"0123456789abcdef-secret\"]"),
        ("EDGELOG_SINKS__STANDARD__S3__BUCKET", "logs"),
        (
            "EDGELOG_SINKS__STANDARD__S3__ENDPOINT",
            "http://127.0.0.1:3900",
        ),
        ("EDGELOG_SINKS__STANDARD__S3__ACCESS_KEY_ID", "GKexample"),
        (
            "EDGELOG_SINKS__STANDARD__S3__SECRET_ACCESS_KEY",
            "s3-secret-value",
        ),
    ];
    let (ok, text) = run(&["config"], &env);
    assert!(ok, "{text}");
    let cfg: serde_json::Value = serde_json::from_str(&text).expect("config is JSON");
    let s3 = &cfg["sinks"]["standard"]["s3"];
    assert_eq!(s3["bucket"], "logs");
    assert_eq!(s3["endpoint"], "http://127.0.0.1:3900");
    assert_eq!(s3["access_key_id"], "GKexample");
    assert!(
        !text.contains("s3-secret-value") && !text.contains("0123456789abcdef-secret"),
        "{text}"
    );

    let (ok, text) = run(
        &["config"],
        &[
            env[0],
            ("EDGELOG_SINKS__STANDARD__S3__BUCKET", "logs"),
            ("EDGELOG_SINKS__STANDARD__S3__ENDPOINT", "127.0.0.1:3900"),
        ],
    );
    assert!(!ok && text.contains("sinks.standard.s3.endpoint"), "{text}");
}
