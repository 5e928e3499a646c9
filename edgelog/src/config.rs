//! The whole configuration: one TOML file, then `EDGELOG_*` environment variables, then
//! command-line flags, each overriding the one before.
//!
//! Long (about 700 lines) because the redaction rules and their tests, and the test of
//! every numeric setting at its extremes, sit beside the loader they check.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use edgelog_collector::CollectorConfig;
use edgelog_dashboard::DashboardConfig;
use edgelog_record::SamplingConfig;
use edgelog_sink_stream::MetricsKafkaConfig;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use crate::sinks::SinksConfig;

/// Everything edgelog can be told. Its `Debug` shows secrets redacted, as
/// [`Config::to_pretty`] does.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for the write-ahead log and, on embedded defaults, the standard logs.
    pub data_dir: PathBuf,
    /// The collector: ingest API, limits, write-ahead log.
    pub collector: CollectorConfig,
    /// Sampling rates per sink (by name), by default and per distribution.
    pub sampling: SamplingConfig,
    /// Where records go: `[sinks.NAME]` with a `type`.
    pub sinks: SinksConfig,
    /// The dashboard.
    pub dashboard: DashboardConfig,
    /// Where per-minute aggregates travel between collectors and dashboards.
    pub metrics: MetricsConfig,
}

/// Where per-minute aggregates travel: in process (the default, for `edgelog demo`), or a
/// Kafka topic that every collector publishes to and every dashboard reads.
#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// The metrics topic.
    pub kafka: Option<MetricsKafkaConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("edgelog-data"),
            collector: CollectorConfig::default(),
            sampling: SamplingConfig::default(),
            sinks: SinksConfig::default(),
            dashboard: DashboardConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

/// `EDGELOG_*` variables that are not settings but are known: `edgelog edge`'s token, and
/// test hooks.
const OTHER_VARS: &[&str] = &["EDGELOG_TOKEN", "EDGELOG_TEST_UNENCODABLE_ID_PREFIX"];

/// The `EDGELOG_*` names that reach no setting (a typo such as `EDGELOG_COLLECTOR_LISTEN`
/// would otherwise be ignored without a word).
fn unknown_env_vars(names: impl Iterator<Item = String>) -> Vec<String> {
    names
        .filter(|k| k.starts_with("EDGELOG_") && !OTHER_VARS.contains(&k.as_str()))
        .filter(|k| {
            let key = k["EDGELOG_".len()..].to_ascii_lowercase();
            !SECTIONS.contains(&key.split("__").next().unwrap_or(""))
        })
        .collect()
}

/// An `EDGELOG_*` name as a dotted key's parts joined by `__`, in lower case except a
/// distribution id (`EDGELOG_SAMPLING__DISTRIBUTIONS__E2QWRUHAPOMQZL__REALTIME`): ids are
/// case-sensitive, and CloudFront's are upper case.
fn env_key(name: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for part in name.split("__") {
        let keep = out.last().is_some_and(|p| p == "distributions");
        out.push(if keep {
            part.to_owned()
        } else {
            part.to_ascii_lowercase()
        });
    }
    out.join("__")
}

const SECTIONS: &[&str] = &[
    "data_dir",
    "collector",
    "sampling",
    "sinks",
    "dashboard",
    "metrics",
];

/// The largest configuration file read (1 MiB: thousands of alarms and tokens fit).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

impl Config {
    /// Loads and validates: defaults, then `file`, then the environment, then `overrides`
    /// (dotted keys such as `collector.listen`).
    pub fn load(
        file: Option<&Path>,
        overrides: &[(&str, figment::value::Value)],
    ) -> anyhow::Result<Config> {
        Config::load_with(file, overrides, None)
    }

    /// [`Config::load`], with `settings` (made through the collector's admin API) over
    /// everything else.
    pub fn load_with(
        file: Option<&Path>,
        overrides: &[(&str, figment::value::Value)],
        settings: Option<&serde_json::Value>,
    ) -> anyhow::Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            match std::fs::metadata(f) {
                Err(_) => bail!("config file {} does not exist", f.display()),
                Ok(m) if m.is_dir() => bail!("config file {} is a directory", f.display()),
                // Read whole, at every reload too: a runaway file must not take the memory.
                Ok(m) if m.len() > MAX_CONFIG_BYTES => bail!(
                    "config file {} holds {} bytes; a configuration is under {MAX_CONFIG_BYTES}",
                    f.display(),
                    m.len()
                ),
                Ok(_) => {}
            }
            fig = fig.merge(Toml::file(f));
        }
        // Only our sections: EDGELOG_TOKEN and friends belong to `edgelog edge`.
        for name in unknown_env_vars(std::env::vars().map(|(k, _)| k)) {
            tracing::warn!(
                variable = %name,
                "environment variable ignored: it names no setting (sections are joined by two underscores, e.g. EDGELOG_COLLECTOR__LISTEN)"
            );
        }
        fig = fig.merge(
            Env::prefixed("EDGELOG_")
                .filter(|k| {
                    let key = k.as_str().to_ascii_lowercase();
                    let first = key.split("__").next().unwrap_or("");
                    SECTIONS.contains(&first)
                })
                .map(|k| env_key(k.as_str()).into())
                .split("__"),
        );
        for (key, value) in overrides {
            fig = fig.merge(Serialized::default(key, value.clone()));
        }
        if let Some(settings) = settings {
            fig = fig.merge(Serialized::defaults(settings));
        }
        let cfg: Config = fig
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {}", describe(e)))?;
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        Ok(cfg)
    }

    /// Checks every section; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.data_dir.as_os_str().is_empty() {
            return Err("data_dir: must not be empty".into());
        }
        self.collector.validate()?;
        self.sinks.validate()?;
        self.sinks.validate_places(&self.data_dir)?;
        self.sampling.validate(&self.sinks.names())?;
        if let Some(k) = &self.metrics.kafka {
            k.validate("metrics.kafka")?;
        }
        self.dashboard.validate()
    }

    /// The configuration as JSON, for `edgelog config`, with every secret redacted (see
    /// [`redact`]).
    pub fn to_pretty(&self) -> anyhow::Result<String> {
        let mut v = serde_json::to_value(self).context("cannot print the configuration")?;
        redact(None, &mut v);
        serde_json::to_string_pretty(&v).context("cannot print the configuration")
    }
}

/// What is printed instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// Option and setting names that mention a secret but name none: shown as they are. The
/// S3 access key id names the key (as a user name does), its secret is the secret.
const NOT_SECRET: &[&str] = &[
    "access_key_id",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.kerberos.service.name",
    "sasl.kerberos.principal",
    "sasl.oauthbearer.method",
    "sasl.oauthbearer.scope",
    "sasl.oauthbearer.client.id",
    "allow_unauthenticated",
    "allow_unauthenticated_writes",
];

/// Parts of a name that suggest its value is a secret: `collector.tokens`,
/// `secret_access_key`, librdkafka's `sasl.password`, `ssl.key.password`, `ssl.key.pem`,
/// `ssl.keystore.password`, `sasl.oauthbearer.client.secret`, `sasl.oauthbearer.config`,
/// `sasl.jaas.config`...
const SECRET_PARTS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "key",
    "credential",
    "sasl",
    "jaas",
    "private",
    "auth",
];

/// Whether a setting or option named `name` holds a secret (by its name, in any case).
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    !NOT_SECRET.contains(&name.as_str()) && SECRET_PARTS.iter().any(|p| name.contains(p))
}

/// Redacts every secret in a configuration serialized as JSON, whatever section or map
/// it is in:
/// - a string (or each string of a list) under a name [`is_secret_name`] says is secret:
///   `collector.tokens`, `dashboard.tokens`, the S3 `secret_access_key` and
///   `session_token`, and such entries of every `options` map (the Kafka ones);
/// - the password of each `dashboard.users` entry (the user name stays);
/// - in `dashboard.webhooks`, a URL's password and query string; in any other URL, its
///   password.
///
/// Empty strings, numbers, booleans and nulls stay: they say what is not set.
pub fn redact(name: Option<&str>, v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(m) => m.iter_mut().for_each(|(k, v)| redact(Some(k), v)),
        // The elements of a list are under the list's name.
        Value::Array(a) => a.iter_mut().for_each(|v| redact(name, v)),
        Value::String(s) if !s.is_empty() => {
            *s = match name {
                Some("users") => match s.split_once(':') {
                    Some((user, _)) => format!("{user}:{REDACTED}"),
                    None => REDACTED.into(),
                },
                Some(n) if is_secret_name(n) => REDACTED.into(),
                Some("webhooks") => redact_url(s, true),
                _ => redact_url(s, false),
            }
        }
        _ => {}
    }
}

/// `scheme://user:password@host/path?query` without its password (and its query when
/// `query` is set, as webhook URLs often carry a key there). Anything else as it is.
fn redact_url(s: &str, query: bool) -> String {
    let Some((scheme, rest)) = s.split_once("://") else {
        return s.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{REDACTED}@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, _)) if query => format!("{path}?{REDACTED}"),
        _ => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// A copy of `t` with its secrets redacted; `None` if it does not survive the trip through
/// JSON (then nothing of it should be shown).
fn redacted<T: Serialize + serde::de::DeserializeOwned>(t: &T) -> Option<T> {
    let mut v = serde_json::to_value(t).ok()?;
    redact(None, &mut v);
    serde_json::from_value(v).ok()
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(c) = redacted(self) else {
            return f.write_str("Config { <redacted> }");
        };
        f.debug_struct("Config")
            .field("data_dir", &c.data_dir)
            .field("collector", &c.collector)
            .field("sampling", &c.sampling)
            .field("sinks", &c.sinks)
            .field("dashboard", &c.dashboard)
            .field("metrics", &c.metrics)
            .finish()
    }
}

impl std::fmt::Debug for SinksConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(c) = redacted(self) else {
            return f.write_str("SinksConfig { <redacted> }");
        };
        f.debug_map().entries(c.0.iter()).finish()
    }
}

impl std::fmt::Debug for MetricsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(c) = redacted(self) else {
            return f.write_str("MetricsConfig { <redacted> }");
        };
        f.debug_struct("MetricsConfig")
            .field("kafka", &c.kafka)
            .finish()
    }
}

/// A parser's message without the lines it quotes from the file (`3 | tokens = [...]`,
/// and the caret line under it).
fn without_source_lines(msg: &str) -> String {
    msg.lines()
        .filter(|l| {
            let t = l.trim_start();
            let digits = t.trim_start_matches(|c: char| c.is_ascii_digit());
            !(digits.trim_start().starts_with('|'))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `collector.max_body_bytes: invalid type ... (from EDGELOG_ environment variables)`,
/// one line per problem. A value given for a secret key is not repeated.
pub(crate) fn describe(e: figment::Error) -> String {
    use figment::error::Kind;
    e.into_iter()
        .map(|e| {
            let source = e
                .metadata
                .as_ref()
                .map(|m| m.name.to_string())
                .unwrap_or_default();
            let secret = e.path.iter().any(|k| k == "users" || is_secret_name(k));
            let kind = match &e.kind {
                Kind::InvalidType(_, expected) | Kind::InvalidValue(_, expected) if secret => {
                    format!(
                        "invalid value (not shown: this key holds a secret), expected {expected}"
                    )
                }
                Kind::Message(_) if secret => {
                    "invalid value (not shown: this key holds a secret)".to_owned()
                }
                // A syntax error quotes the source line, which may hold a secret: keep
                // where and what, not the line.
                kind => without_source_lines(&kind.to_string()),
            };
            let key = e.path.join(".");
            let key = if key.is_empty() {
                String::new()
            } else {
                format!("{key}: ")
            };
            if source.is_empty() {
                format!("{key}{kind}")
            } else {
                format!("{key}{kind} (from {source})")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_names_keep_the_case_of_distribution_ids() {
        assert_eq!(
            env_key("SAMPLING__DISTRIBUTIONS__E30D0GV9SDE7MC__AUDIT"),
            "sampling__distributions__E30D0GV9SDE7MC__audit"
        );
        assert_eq!(
            env_key("SINKS__REALTIME__DISTRIBUTIONS__E1__FIELDS"),
            "sinks__realtime__distributions__E1__fields"
        );
        assert_eq!(env_key("COLLECTOR__LISTEN"), "collector__listen");
    }

    /// A configuration with a secret in every secret setting and in every options map,
    /// beside settings that are not secret.
    const WITH_SECRETS: &str = r#"
[collector]
id = "collector-visible-id"
tokens = ["collector-token-SECRET-0001", "collector-token-SECRET-0002"]

[sinks.standard.s3]
bucket = "visible-bucket"
endpoint = "http://s3user:s3-endpoint-pw-SECRET@127.0.0.1:3900"
region = "visible-region"
access_key_id = "GK-visible-access-key-id"
secret_access_key = "s3-secret-access-key-SECRET"
session_token = "s3-session-token-SECRET"

[sinks.realtime.kafka]
bootstrap_servers = "visible-broker:9092"
topic = "visible-realtime-topic"
[sinks.realtime.kafka.options]
"security.protocol" = "sasl_ssl"
"sasl.mechanism" = "SCRAM-SHA-512"
"sasl.username" = "visible-kafka-user"
"sasl.password" = "rt-sasl-password-SECRET"
"ssl.key.password" = "rt-ssl-key-password-SECRET"
"ssl.key.pem" = "rt-ssl-key-pem-SECRET"
"ssl.keystore.password" = "rt-keystore-password-SECRET"
"sasl.oauthbearer.client.secret" = "rt-oauth-client-secret-SECRET"
"sasl.oauthbearer.config" = "principal=x clientSecret=rt-oauth-config-SECRET"
"SASL.JAAS.CONFIG" = "rt-jaas-SECRET"
"socket.timeout.ms" = "60001"

[metrics.kafka]
bootstrap_servers = "visible-metrics-broker:9092"
topic = "visible-metrics-topic"
[metrics.kafka.options]
"sasl.mechanisms" = "PLAIN"
"sasl.username" = "visible-metrics-user"
"sasl.password" = "metrics-sasl-password-SECRET"
"ssl.key.location" = "/secret/metrics-key-location-SECRET.pem"
"ssl.ca.location" = "/visible/ca.pem"
"sasl.oauthbearer.client.secret" = "metrics-oauth-SECRET"

[dashboard]
tokens = ["dashboard-token-SECRET"]
users = ["visible-ops:dashboard-user-password-SECRET", "visible-admin:pw:with:colons-SECRET"]
webhooks = ["http://hookuser:webhook-password-SECRET@127.0.0.1:9/alerts?key=webhook-query-key-SECRET"]
"#;

    /// The secrets above, and what must still show.
    fn secrets() -> Vec<String> {
        WITH_SECRETS
            .split('"')
            .filter(|s| s.contains("SECRET"))
            .flat_map(|s| {
                // Only the secret part of values that hold a secret among other text.
                s.split(['@', ':', '=', ' ', '?', '/'])
                    .filter(|p| p.contains("SECRET"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    const VISIBLE: &[&str] = &[
        "collector-visible-id",
        "visible-bucket",
        "visible-region",
        "GK-visible-access-key-id",
        "s3user",
        "127.0.0.1:3900",
        "visible-broker:9092",
        "visible-realtime-topic",
        "sasl_ssl",
        "SCRAM-SHA-512",
        "visible-kafka-user",
        "60001",
        "visible-metrics-broker:9092",
        "visible-metrics-topic",
        "PLAIN",
        "visible-metrics-user",
        "/visible/ca.pem",
        "visible-ops:<redacted>",
        "visible-admin:<redacted>",
        "http://hookuser:<redacted>@127.0.0.1:9/alerts?<redacted>",
        "http://s3user:<redacted>@127.0.0.1:3900",
    ];

    fn load() -> Config {
        let dir = std::env::temp_dir().join(format!("edgelog-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("secrets.toml");
        std::fs::write(&file, WITH_SECRETS).expect("write config");
        let cfg = Config::load(Some(&file), &[]).expect("a valid configuration");
        let _ = std::fs::remove_dir_all(&dir);
        cfg
    }

    #[test]
    fn every_secret_is_redacted_in_edgelog_config_and_in_debug() {
        let cfg = load();
        let secrets = secrets();
        assert!(secrets.len() >= 20, "{secrets:?}");
        let pretty = cfg.to_pretty().expect("printable");
        let debug = format!("{cfg:?}");
        let parts = [
            format!("{:?}", cfg.sinks),
            format!("{:?}", cfg.metrics),
            format!("{cfg:#?}"),
        ];
        for (what, text) in [("to_pretty", &pretty), ("Debug", &debug)]
            .into_iter()
            .chain(parts.iter().map(|p| ("Debug of a section", p)))
        {
            for s in &secrets {
                assert!(!text.contains(s.as_str()), "{what} shows {s}:\n{text}");
            }
            assert!(!text.contains("SECRET"), "{what}:\n{text}");
        }
        for v in VISIBLE {
            assert!(pretty.contains(v), "to_pretty hides {v}:\n{pretty}");
        }
        assert!(debug.contains("visible-kafka-user"), "{debug}");
        assert!(debug.contains("visible-bucket"), "{debug}");
        // The redacted values are marked, one per secret setting or entry.
        assert!(pretty.matches(REDACTED).count() >= 20, "{pretty}");
        // The configuration itself is untouched.
        assert_eq!(cfg.collector.tokens[0], "collector-token-SECRET-0001");
    }

    #[test]
    fn secret_names_are_recognised_in_any_case_and_plain_ones_are_not() {
        for n in [
            "sasl.password",
            "SASL.PASSWORD",
            "ssl.key.password",
            "ssl.key.pem",
            "ssl.keystore.password",
            "ssl.key.location",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "sasl.jaas.config",
            "sasl.kerberos.keytab",
            "tokens",
            "secret_access_key",
            "session_token",
            "basic.auth.user.info",
            "aws.credentials",
        ] {
            assert!(is_secret_name(n), "{n}");
        }
        for n in [
            "sasl.mechanism",
            "sasl.mechanisms",
            "sasl.username",
            "access_key_id",
            "security.protocol",
            "ssl.ca.location",
            "bootstrap_servers",
            "topic",
            "bucket",
            "endpoint",
            "users",
            "webhooks",
            "allow_unauthenticated",
            "allow_unauthenticated_writes",
        ] {
            assert!(!is_secret_name(n), "{n}");
        }
    }

    #[test]
    fn urls_lose_their_password_and_webhooks_their_query() {
        assert_eq!(
            redact_url("http://u:p@h:1/x?k=v", false),
            "http://u:<redacted>@h:1/x?k=v"
        );
        assert_eq!(
            redact_url("http://u:p@h:1/x?k=v", true),
            "http://u:<redacted>@h:1/x?<redacted>"
        );
        assert_eq!(redact_url("http://h/x", true), "http://h/x");
        assert_eq!(redact_url("http://h?a=b", true), "http://h?<redacted>");
        assert_eq!(redact_url("not a url", true), "not a url");
        assert_eq!(redact_url("http://u@h/", false), "http://u@h/");
    }

    #[test]
    fn a_secret_given_with_the_wrong_type_is_not_echoed_in_the_error() {
        let dir = std::env::temp_dir().join(format!("edgelog-config-err-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("bad.toml");
        std::fs::write(
            &file,
            "[collector]\ntokens = \"one-token-as-a-string-SECRET\"\n[dashboard]\nusers = \"ops:pw-SECRET\"\n",
        )
        .expect("write");
        let e = Config::load(Some(&file), &[]).expect_err("tokens is a list");
        let _ = std::fs::remove_dir_all(&dir);
        let e = format!("{e:#}");
        assert!(e.contains("collector.tokens"), "{e}");
        assert!(!e.contains("SECRET"), "{e}");
    }
}

/// Every numeric setting at its extremes: accepted and usable, or refused naming the key;
/// never a panic, a wrap or a huge allocation.
#[cfg(test)]
mod ranges {
    use super::*;
    use figment::value::Value;

    const INTEGER_KEYS: &[&str] = &[
        "collector.max_body_bytes",
        "collector.max_decompressed_bytes",
        "collector.max_listed_rejections",
        "collector.max_line_bytes",
        "collector.max_field_bytes",
        "collector.max_records_per_body",
        "collector.max_inflight_bytes",
        "collector.max_connections",
        "collector.dead_letter_max_bytes",
        "collector.idempotency_ttl_secs",
        "collector.idempotency_max_keys",
        "collector.wal.segment_bytes",
        "collector.wal.max_bytes",
        "sinks.standard.max_rows",
        "sinks.standard.max_bytes",
        "sinks.standard.max_open_bytes",
        "sinks.standard.row_group_rows",
        "sinks.standard.row_group_bytes",
        "sinks.standard.zstd_level",
        "sinks.realtime.bus_capacity",
        "sinks.realtime.kafka.max_in_flight_messages",
        "sinks.realtime.kafka.max_in_flight_bytes",
        "dashboard.history_minutes",
        "dashboard.reports_max_bytes",
        "sampling.default.standard",
        "sampling.default.realtime",
    ];

    const DURATION_KEYS: &[&str] = &[
        "collector.shutdown_timeout",
        "collector.metrics_interval",
        "collector.header_timeout",
        "collector.body_timeout",
        "collector.write_timeout",
        "dashboard.write_timeout",
        "collector.pace_wait",
        "sinks.standard.max_age",
        "sinks.realtime.kafka.linger",
        "dashboard.alarm_interval",
    ];

    fn integers() -> Vec<Value> {
        let mut v: Vec<Value> = [0u64, 1, 2, 1 << 31, 1 << 32, (1 << 63) - 1, 1 << 63]
            .into_iter()
            .chain([u64::MAX - 1, u64::MAX])
            .map(Value::from)
            .collect();
        v.extend([-1i64, i64::MIN].map(Value::from));
        v.push(Value::from("12"));
        v.push(Value::from(f64::NAN));
        v.push(Value::from(1e300));
        v
    }

    fn durations() -> Vec<Value> {
        [
            "0s",
            "1ns",
            "1s",
            "1h",
            "100years",
            "18446744073709551615s",
            "-1s",
            "",
            "soon",
        ]
        .into_iter()
        .map(Value::from)
        .collect()
    }

    /// Builds what a collector builds from the settings: what could panic or allocate.
    fn use_it(cfg: &Config) {
        let dir = tempfile::tempdir().expect("tempdir");
        let bus = edgelog_sink_stream::Bus::new(cfg.sinks.bus_capacity());
        let mut collector = edgelog_collector::Collector::open(cfg.collector.clone(), dir.path())
            .expect("open")
            .with_sampling(cfg.sampling.clone());
        cfg.sinks
            .build_into(&mut collector, &bus)
            .expect("sinks from accepted settings");
        let _ = edgelog_dashboard::MetricsStore::new(cfg.dashboard.history_minutes);
    }

    #[test]
    fn every_numeric_setting_at_its_extremes_is_usable_or_refused_by_name() {
        let base = [
            (
                "collector.tokens",
                Value::from(vec!["range-test-token-0123456".to_owned()]),
            ),
            (
                "sinks.realtime.kafka.bootstrap_servers",
                Value::from("127.0.0.1:9"),
            ),
        ];
        let mut accepted = 0;
        let mut refused = 0;
        let cases = INTEGER_KEYS
            .iter()
            .flat_map(|k| integers().into_iter().map(move |v| (*k, v)))
            .chain(
                DURATION_KEYS
                    .iter()
                    .flat_map(|k| durations().into_iter().map(move |v| (*k, v))),
            );
        for (key, value) in cases {
            let mut overrides: Vec<(&str, Value)> = base.to_vec();
            overrides.push((key, value.clone()));
            let shown = format!("{key} = {value:?}");
            let result = std::panic::catch_unwind(|| Config::load(None, &overrides));
            match result {
                Err(_) => panic!("{shown}: loading panicked"),
                Ok(Ok(cfg)) => {
                    accepted += 1;
                    let used = std::panic::catch_unwind(|| use_it(&cfg));
                    assert!(used.is_ok(), "{shown}: accepted, but using it panicked");
                }
                Ok(Err(e)) => {
                    refused += 1;
                    let msg = format!("{e:#}");
                    let leaf = key.rsplit('.').next().unwrap_or(key);
                    assert!(
                        msg.contains(leaf),
                        "{shown}: refused without naming the key: {msg}"
                    );
                }
            }
        }
        eprintln!("{accepted} accepted and used, {refused} refused by name");
    }
}

#[cfg(test)]
mod errors {
    use super::*;

    #[test]
    fn a_file_too_large_or_a_directory_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; MAX_CONFIG_BYTES as usize + 1]).expect("write");
        let err = format!(
            "{:#}",
            Config::load(Some(&big), &[]).expect_err("too large")
        );
        assert!(err.contains("bytes; a configuration is under"), "{err}");
        let at = vec![b'#'; MAX_CONFIG_BYTES as usize];
        std::fs::write(&big, at).expect("write");
        // At the limit it is read (and judged on what it says, not on its size).
        if let Err(e) = Config::load(Some(&big), &[]) {
            let e = format!("{e:#}");
            assert!(!e.contains("a configuration is under"), "{e}");
        }
        let err = format!(
            "{:#}",
            Config::load(Some(dir.path()), &[]).expect_err("a dir")
        );
        assert!(err.contains("is a directory"), "{err}");
    }

    #[test]
    fn syntax_errors_do_not_quote_the_line_that_may_hold_a_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        for text in [
            "[collector]\ntokens = [\"SECRET-N-0123456789\" \"x\"]\n",
            "[sinks.realtime.kafka.options]\n\"sasl.password\" = \"SECRET-U\"\n\"sasl.password\" = \"SECRET-U\"\n",
            "[sinks.standard.s3]\nsecret_access_key = \"SECRET-K\n",
            "[collector]\ntokens = [\"visible-token-0123456789\"]\n[dashboard]\nwebhooks = [\"ftp://u:SECRET-A@h/x?token=SECRET-B\"]\n",
        ] {
            let path = dir.path().join("c.toml");
            std::fs::write(&path, text).expect("write");
            let err = format!("{:#}", Config::load(Some(&path), &[]).expect_err("invalid"));
            assert!(!err.contains("SECRET"), "{err}");
            assert!(err.contains("line") || err.contains("webhooks"), "{err}");
        }
    }
}
