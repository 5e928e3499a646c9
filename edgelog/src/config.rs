//! The whole configuration: one TOML file, then `EDGELOG_*` environment variables, then
//! command-line flags, each overriding the one before.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use edgelog_collector::CollectorConfig;
use edgelog_dashboard::DashboardConfig;
use edgelog_record::SamplingConfig;
use edgelog_sink_s3::StandardLogsConfig;
use edgelog_sink_stream::{MetricsKafkaConfig, RealtimeConfig};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Everything edgelog can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for the write-ahead log and, on embedded defaults, the standard logs.
    pub data_dir: PathBuf,
    /// The collector: ingest API, limits, write-ahead log.
    pub collector: CollectorConfig,
    /// Sampling rates per destination, by default and per distribution.
    pub sampling: SamplingConfig,
    /// Where records go.
    pub sinks: SinksConfig,
    /// The dashboard.
    pub dashboard: DashboardConfig,
    /// Where per-minute aggregates travel between collectors and dashboards.
    pub metrics: MetricsConfig,
}

/// Where per-minute aggregates travel: in process (the default, for `edgelog demo`), or a
/// Kafka topic that every collector publishes to and every dashboard reads.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
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

/// The sinks.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinksConfig {
    /// Standard logs: Parquet files (under `{data_dir}/standard-logs` on embedded defaults).
    pub standard: StandardLogsConfig,
    /// Real-time logs: sampled records to a stream (in process on embedded defaults).
    pub realtime: RealtimeConfig,
}

const SECTIONS: &[&str] = &[
    "data_dir",
    "collector",
    "sampling",
    "sinks",
    "dashboard",
    "metrics",
];

impl Config {
    /// Loads and validates: defaults, then `file`, then the environment, then `overrides`
    /// (dotted keys such as `collector.listen`).
    pub fn load(
        file: Option<&Path>,
        overrides: &[(&str, figment::value::Value)],
    ) -> anyhow::Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.is_file() {
                bail!("config file {} does not exist", f.display());
            }
            fig = fig.merge(Toml::file(f));
        }
        // Only our sections: EDGELOG_TOKEN and friends belong to `edgelog edge`.
        fig = fig.merge(
            Env::prefixed("EDGELOG_")
                .filter(|k| {
                    let key = k.as_str().to_ascii_lowercase();
                    let first = key.split("__").next().unwrap_or("");
                    SECTIONS.contains(&first)
                })
                .map(|k| k.as_str().to_ascii_lowercase().into())
                .split("__"),
        );
        for (key, value) in overrides {
            fig = fig.merge(Serialized::default(key, value.clone()));
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
        self.collector.validate()?;
        self.sampling.validate()?;
        self.sinks.standard.validate()?;
        self.sinks.realtime.validate()?;
        if let Some(k) = &self.metrics.kafka {
            k.validate("metrics.kafka")?;
        }
        self.dashboard.validate()
    }

    /// The effective configuration as TOML-ish JSON, for `edgelog config`.
    /// The configuration as JSON, secrets (tokens, passwords, keys) redacted.
    pub fn to_pretty(&self) -> anyhow::Result<String> {
        const HIDDEN: &str = "<redacted>";
        let mut c = self.clone();
        let hide = |v: &mut Vec<String>| v.iter_mut().for_each(|t| *t = HIDDEN.into());
        hide(&mut c.collector.tokens);
        hide(&mut c.dashboard.tokens);
        for u in &mut c.dashboard.users {
            if let Some((name, _)) = u.split_once(':') {
                *u = format!("{name}:{HIDDEN}");
            }
        }
        if let Some(s3) = &mut c.sinks.standard.s3 {
            for secret in [&mut s3.secret_access_key, &mut s3.session_token] {
                if secret.is_some() {
                    *secret = Some(HIDDEN.into());
                }
            }
        }
        serde_json::to_string_pretty(&c).context("cannot print the configuration")
    }
}

/// `collector.max_body_bytes: invalid type ... (from EDGELOG_ environment variables)`,
/// one line per problem.
fn describe(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let source = e
                .metadata
                .as_ref()
                .map(|m| m.name.to_string())
                .unwrap_or_default();
            let key = e.path.join(".");
            let key = if key.is_empty() {
                String::new()
            } else {
                format!("{key}: ")
            };
            if source.is_empty() {
                format!("{key}{}", e.kind)
            } else {
                format!("{key}{} (from {source})", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}
