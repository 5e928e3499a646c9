//! `edgelog config` (the real binary) prints the configuration with every secret redacted:
//! tokens, dashboard passwords, the S3 secret key and session token (the access key id
//! shows, as it names the key), and secret-named entries of every options map,
//! from the file and from the environment; the rest shows as it is.

use std::process::Command;

/// Secrets end in `-SECRET`; nothing with that mark may be printed.
const CONFIG: &str = r#"
[collector]
id = "visible-collector"
tokens = ["file-collector-token-SECRET"]

[collector.privacy]
hash_key = "privacy-hash-key-SECRET"
[collector.privacy.default]
ip = "hash"

[sinks.standard.s3]
bucket = "visible-bucket"
access_key_id = "GK-visible-access-key"
secret_access_key = "s3-secret-key-SECRET"
session_token = "s3-session-token-SECRET"

[sinks.realtime.kafka]
bootstrap_servers = "visible-rt-broker:9092"
[sinks.realtime.kafka.options]
"sasl.mechanism" = "SCRAM-SHA-256"
"sasl.username" = "visible-rt-user"
"sasl.password" = "rt-sasl-password-SECRET"
"ssl.key.password" = "rt-ssl-key-password-SECRET"
"ssl.keystore.password" = "rt-keystore-SECRET"
"sasl.oauthbearer.client.secret" = "rt-oauth-SECRET"
"request.timeout.ms" = "30001"

[metrics.kafka]
bootstrap_servers = "visible-metrics-broker:9092"
[metrics.kafka.options]
"sasl.username" = "visible-metrics-user"
"sasl.password" = "metrics-sasl-password-SECRET"
"ssl.key.pem" = "metrics-ssl-key-pem-SECRET"

[dashboard]
tokens = ["dashboard-token-SECRET"]
users = ["visible-ops:dashboard-password-SECRET"]
webhooks = ["http://hook:webhook-password-SECRET@127.0.0.1:9/x?token=webhook-query-SECRET"]
"#;

const VISIBLE: &[&str] = &[
    "visible-collector",
    "visible-bucket",
    "GK-visible-access-key",
    "visible-rt-broker:9092",
    "SCRAM-SHA-256",
    "visible-rt-user",
    "30001",
    "visible-metrics-broker:9092",
    "visible-metrics-user",
    "visible-ops:<redacted>",
    "http://hook:<redacted>@127.0.0.1:9/x?<redacted>",
];

fn edgelog(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edgelog"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .output()
        .expect("edgelog runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn config_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("edgelog-config-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join(name);
    std::fs::write(&file, text).expect("write config");
    file
}

#[test]
fn edgelog_config_redacts_every_secret_and_shows_the_rest() {
    let file = config_file("secrets.toml", CONFIG);
    let (ok, stdout, stderr) = edgelog(
        &["config", "--config", file.to_str().expect("utf8 path")],
        &[(
            "EDGELOG_DASHBOARD__TOKENS",
            "[\"env-dashboard-token-SECRET\"]",
        )],
    );
    assert!(ok, "{stderr}");
    let printed = format!("{stdout}{stderr}");
    assert!(
        !printed.contains("SECRET"),
        "a secret was printed:\n{printed}"
    );
    for v in VISIBLE {
        assert!(stdout.contains(v), "{v} is missing:\n{stdout}");
    }
    // What is redacted, setting by setting.
    let cfg: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let redacted = serde_json::json!("<redacted>");
    for pointer in [
        "/collector/tokens/0",
        "/collector/privacy/hash_key",
        "/dashboard/tokens/0",
        "/sinks/standard/s3/secret_access_key",
        "/sinks/standard/s3/session_token",
        "/sinks/realtime/kafka/options/sasl.password",
        "/sinks/realtime/kafka/options/ssl.key.password",
        "/sinks/realtime/kafka/options/ssl.keystore.password",
        "/sinks/realtime/kafka/options/sasl.oauthbearer.client.secret",
        "/metrics/kafka/options/sasl.password",
        "/metrics/kafka/options/ssl.key.pem",
    ] {
        assert_eq!(cfg.pointer(pointer), Some(&redacted), "{pointer}");
    }
    let _ = std::fs::remove_file(file);
}

#[test]
fn a_malformed_secret_is_not_echoed_in_the_error() {
    let file = config_file(
        "malformed.toml",
        "[collector]\ntokens = \"a-single-token-SECRET\"\n",
    );
    let (ok, stdout, stderr) = edgelog(
        &["config", "--config", file.to_str().expect("utf8 path")],
        &[("EDGELOG_DASHBOARD__USERS", "ops:env-password-SECRET")],
    );
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("collector.tokens"), "{stderr}");
    assert!(!format!("{stdout}{stderr}").contains("SECRET"), "{stderr}");
    let _ = std::fs::remove_file(file);
}
