//! `edgelog ship`'s settings: where the collector is, where state goes, and the inputs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use edgelog_client::Compression;
use serde::{Deserialize, Serialize};

use crate::mapping::{Mapping, MappingConfig, Preset};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShipConfig {
    /// Base URL of the collector.
    pub collector: String,
    /// Bearer token for the collector's ingest API.
    pub token: String,
    /// Checkpoints (and a lock: one ship per state directory).
    pub state_dir: PathBuf,
    pub compression: Compression,
    /// Bytes of log lines per request, at most.
    pub batch_bytes: usize,
    /// How often globs are scanned and files checked for growth.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// A file renamed away or deleted is read until it has not grown for this long.
    #[serde(with = "humantime_serde")]
    pub rotate_wait: Duration,
    /// Time allowed for one request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A CloudFront `.gz` decompressing to more is refused (with an error, not skipped).
    pub max_gz_bytes: u64,
    /// Serve `/metrics` (Prometheus) and `/healthz` here.
    pub metrics_listen: Option<SocketAddr>,
    /// Log a progress line this often; 0 turns it off.
    #[serde(with = "humantime_serde")]
    pub progress_interval: Duration,
    #[serde(rename = "inputs")]
    pub inputs: Vec<InputConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    pub name: String,
    /// Glob patterns, e.g. `/var/log/nginx/access.log*`. Include the rotated names
    /// (`.1`) when logrotate uses copytruncate: lines written after the last read are in
    /// the copy.
    pub paths: Vec<String>,
    pub format: Preset,
    /// Distribution of every line (or of those whose host is not listed below).
    pub distribution: Option<String>,
    /// Host (cs-host, else x-host-header) → distribution.
    #[serde(default)]
    pub distribution_by_host: BTreeMap<String, String>,
    /// x-edge-location for lines that carry none (e.g. this server's name).
    pub edge_location: Option<String>,
    /// Record field → `path` or `path|conversion` in the source; `""` drops a preset's rule.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

impl Default for ShipConfig {
    fn default() -> Self {
        ShipConfig {
            collector: "http://127.0.0.1:8080".into(),
            token: String::new(),
            state_dir: PathBuf::from("edgelog-ship"),
            compression: Compression::Zstd,
            batch_bytes: 1 << 20,
            poll_interval: Duration::from_millis(250),
            rotate_wait: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_gz_bytes: 1 << 30,
            metrics_listen: None,
            progress_interval: Duration::from_secs(10),
            inputs: Vec::new(),
        }
    }
}

impl InputConfig {
    pub fn mapping(&self) -> Result<Mapping, String> {
        Mapping::new(
            self.format,
            &MappingConfig {
                fields: self.fields.clone(),
                distribution: self.distribution.clone(),
                distribution_by_host: self.distribution_by_host.clone(),
                edge_location: self.edge_location.clone(),
            },
        )
        .map_err(|e| format!("inputs.{}: {e}", self.name))
    }
}

fn range<T: PartialOrd + std::fmt::Debug>(key: &str, v: T, lo: T, hi: T) -> Result<(), String> {
    if v < lo || v > hi {
        return Err(format!("{key} = {v:?} is out of range {lo:?}..={hi:?}"));
    }
    Ok(())
}

impl ShipConfig {
    /// Every refusal names the key.
    pub fn validate(&self) -> Result<(), String> {
        let url = self.collector.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 8 {
            return Err(format!(
                "collector = {:?}: give the collector's base URL, e.g. http://10.0.0.5:8080",
                self.collector
            ));
        }
        if self.token.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
            return Err("token: must be printable ASCII without spaces".into());
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err("state_dir: must not be empty".into());
        }
        range("batch_bytes", self.batch_bytes, 1 << 10, 64 << 20)?;
        range(
            "poll_interval",
            self.poll_interval,
            Duration::from_millis(10),
            Duration::from_secs(60),
        )?;
        range(
            "rotate_wait",
            self.rotate_wait,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        )?;
        range(
            "request_timeout",
            self.request_timeout,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        )?;
        range("max_gz_bytes", self.max_gz_bytes, 1 << 10, 16 << 30)?;
        range(
            "progress_interval",
            self.progress_interval,
            Duration::ZERO,
            Duration::from_secs(86_400),
        )?;
        if self.inputs.is_empty() {
            return Err(
                "inputs: give at least one [[inputs]] (or paths on the command line)".into(),
            );
        }
        let mut names = BTreeSet::new();
        for i in &self.inputs {
            if i.name.is_empty()
                || i.name.len() > 64
                || !i
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            {
                return Err(format!(
                    "inputs: name {:?} must be 1 to 64 of a-z, 0-9, _ and -",
                    i.name
                ));
            }
            if !names.insert(&i.name) {
                return Err(format!("inputs: two inputs are named {:?}", i.name));
            }
            if i.paths.is_empty() || i.paths.iter().any(|p| p.trim().is_empty()) {
                return Err(format!("inputs.{}.paths: give at least one glob", i.name));
            }
            for p in &i.paths {
                glob::Pattern::new(p)
                    .map_err(|e| format!("inputs.{}.paths: {p:?}: {e}", i.name))?;
            }
            i.mapping()?;
            if !matches!(i.format, Preset::Cloudfront | Preset::Ndjson)
                && i.distribution.is_none()
                && i.distribution_by_host.is_empty()
            {
                return Err(format!(
                    "inputs.{}: set distribution (or distribution_by_host): {:?} lines carry no distribution id",
                    i.name, i.format
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> ShipConfig {
        ShipConfig {
            inputs: vec![InputConfig {
                name: "nginx".into(),
                paths: vec!["/var/log/nginx/access.log*".into()],
                format: Preset::NginxJson,
                distribution: Some("E1".into()),
                distribution_by_host: BTreeMap::new(),
                edge_location: None,
                fields: BTreeMap::new(),
            }],
            ..ShipConfig::default()
        }
    }

    #[test]
    fn every_key_is_checked_at_its_extremes() {
        assert_eq!(ok().validate(), Ok(()));
        type Change = Box<dyn Fn(&mut ShipConfig)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "collector",
                Box::new(|c| c.collector = "10.0.0.1:8080".into()),
            ),
            ("collector", Box::new(|c| c.collector = String::new())),
            ("token", Box::new(|c| c.token = "two words".into())),
            ("token", Box::new(|c| c.token = "é".into())),
            ("state_dir", Box::new(|c| c.state_dir = PathBuf::new())),
            ("batch_bytes", Box::new(|c| c.batch_bytes = 0)),
            ("batch_bytes", Box::new(|c| c.batch_bytes = usize::MAX)),
            (
                "poll_interval",
                Box::new(|c| c.poll_interval = Duration::ZERO),
            ),
            (
                "poll_interval",
                Box::new(|c| c.poll_interval = Duration::MAX),
            ),
            ("rotate_wait", Box::new(|c| c.rotate_wait = Duration::MAX)),
            ("rotate_wait", Box::new(|c| c.rotate_wait = Duration::ZERO)),
            (
                "request_timeout",
                Box::new(|c| c.request_timeout = Duration::ZERO),
            ),
            ("max_gz_bytes", Box::new(|c| c.max_gz_bytes = u64::MAX)),
            ("max_gz_bytes", Box::new(|c| c.max_gz_bytes = 0)),
            (
                "progress_interval",
                Box::new(|c| c.progress_interval = Duration::MAX),
            ),
            ("inputs", Box::new(|c| c.inputs.clear())),
            ("name", Box::new(|c| c.inputs[0].name = "Nginx".into())),
            ("name", Box::new(|c| c.inputs[0].name = String::new())),
            (
                "two inputs",
                Box::new(|c| c.inputs.push(c.inputs[0].clone())),
            ),
            ("paths", Box::new(|c| c.inputs[0].paths.clear())),
            (
                "paths",
                Box::new(|c| c.inputs[0].paths = vec!["/a/[".into()]),
            ),
            (
                "distribution",
                Box::new(|c| c.inputs[0].distribution = None),
            ),
            (
                "distribution",
                Box::new(|c| c.inputs[0].distribution = Some("a b".into())),
            ),
            (
                "not a record field",
                Box::new(|c| {
                    c.inputs[0].fields.insert("nope".into(), "x".into());
                }),
            ),
            (
                "unknown conversion",
                Box::new(|c| {
                    c.inputs[0]
                        .fields
                        .insert("cs_host".into(), "x|upper".into());
                }),
            ),
            (
                "timestamp",
                Box::new(|c| {
                    c.inputs[0].fields.insert("timestamp".into(), String::new());
                }),
            ),
        ];
        for (key, change) in cases {
            let mut c = ok();
            change(&mut c);
            let e = c
                .validate()
                .err()
                .unwrap_or_else(|| panic!("{key}: accepted"));
            assert!(e.contains(key), "{key}: {e}");
        }
    }
}
