//! Settings of the standard-log sink.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::compact::CompactionConfig;

/// The Hive layout, CloudFront v2's variables.
pub const DEFAULT_TEMPLATE: &str =
    "DistributionId={DistributionId}/year={yyyy}/month={MM}/day={dd}/hour={HH}";

/// Standard logs: Parquet files, partitioned by distribution and event hour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StandardLogsConfig {
    /// Write standard logs at all.
    pub enabled: bool,
    /// Key prefix under the store's root (no leading or trailing `/`).
    pub prefix: String,
    /// Partition path under the prefix, with `{DistributionId}`, `{yyyy}`, `{MM}`, `{dd}`, `{HH}`.
    pub path_template: String,
    /// A file closes at this many rows.
    pub max_rows: usize,
    /// A file closes when it reaches about this many bytes (encoded Parquet plus rows
    /// waiting to be encoded).
    pub max_bytes: u64,
    /// A file closes this long after its first record arrived.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Memory the rows waiting in all open files may take together; past it the file with
    /// most waiting writes a row group to the spool (or the oldest closes, when all are
    /// small).
    pub max_open_bytes: u64,
    /// Files open at once; past it the oldest is closed first. An open file costs memory
    /// only for its rows waiting (within `max_open_bytes`) and a little bookkeeping.
    pub max_open_files: usize,
    /// Rows per Parquet row group, at most.
    pub row_group_rows: usize,
    /// A row group also ends when its rows waiting in memory reach about this many bytes
    /// (about 800 bytes a row), or earlier at the `max_open_bytes` bound. Larger groups
    /// make smaller files (each group has its own dictionaries) and take more memory while
    /// they fill and are encoded (1 MiB to 16 MiB).
    pub row_group_bytes: u64,
    /// zstd level for Parquet pages (1: as small as 3 on logs, and a quarter faster).
    pub zstd_level: i32,
    /// An S3-compatible bucket; without it, files go under the data dir.
    pub s3: Option<S3Config>,
    /// Merging small files (`edgelog compact`, or in the collector every `interval`).
    pub compaction: CompactionConfig,
}

/// An S3-compatible bucket: AWS S3, garage, MinIO, Ceph and the like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Region; AWS_REGION or AWS_DEFAULT_REGION when empty, else `us-east-1`.
    pub region: Option<String>,
    /// Endpoint of an S3-compatible server, e.g. `http://127.0.0.1:3900`; empty for AWS.
    /// An `http://` endpoint allows plain HTTP.
    pub endpoint: Option<String>,
    /// `https://bucket.endpoint/key` instead of the path style `https://endpoint/bucket/key`,
    /// which most S3-compatible servers expect.
    pub virtual_hosted_style: bool,
    /// Access key; AWS_ACCESS_KEY_ID (or the instance's role) when empty.
    pub access_key_id: Option<String>,
    /// Secret key; AWS_SECRET_ACCESS_KEY when empty.
    pub secret_access_key: Option<String>,
    /// Session token for temporary credentials; AWS_SESSION_TOKEN when empty.
    pub session_token: Option<String>,
    /// Timeout of one request to the server.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            bucket: String::new(),
            region: None,
            endpoint: None,
            virtual_hosted_style: false,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl S3Config {
    fn validate(&self, parent: &str) -> Result<(), String> {
        let k = &format!("{parent}.s3");
        if self.bucket.is_empty() {
            return Err(format!("{k}.bucket: must be set"));
        }
        if let Some(e) = &self.endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            // Not echoed: it may hold a password.
            return Err(format!("{k}.endpoint: must start with http:// or https://"));
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err(format!(
                "{k}.access_key_id and {k}.secret_access_key: set both or neither"
            ));
        }
        if self.request_timeout.is_zero() || self.request_timeout > Duration::from_secs(3600) {
            return Err(format!(
                "{k}.request_timeout: must be from 1ns to 1h, got {:?}",
                self.request_timeout
            ));
        }
        Ok(())
    }
}

impl Default for StandardLogsConfig {
    fn default() -> Self {
        StandardLogsConfig {
            enabled: true,
            prefix: "standard-logs".into(),
            path_template: DEFAULT_TEMPLATE.into(),
            max_rows: 1_000_000,
            max_bytes: 64 << 20,
            max_age: Duration::from_secs(60),
            max_open_bytes: 128 << 20,
            max_open_files: 20_000,
            row_group_rows: 128 * 1024,
            row_group_bytes: crate::sink::ROW_GROUP_BYTES as u64,
            zstd_level: 1,
            s3: None,
            compaction: CompactionConfig::default(),
        }
    }
}

impl StandardLogsConfig {
    /// Checks the settings; errors name the key, under `k` (`sinks.standard`).
    pub fn validate(&self, k: &str) -> Result<(), String> {
        if self.prefix.starts_with('/') || self.prefix.ends_with('/') {
            return Err(format!("{k}.prefix: must not start or end with '/'"));
        }
        if !self.path_template.contains("{DistributionId}") || !self.path_template.contains("{HH}")
        {
            return Err(format!(
                "{k}.path_template: must contain {{DistributionId}} and {{HH}}"
            ));
        }
        let stripped = ["{DistributionId}", "{yyyy}", "{MM}", "{dd}", "{HH}"]
            .iter()
            .fold(self.path_template.clone(), |t, v| t.replace(v, ""));
        if stripped.contains('{') || stripped.contains('}') {
            return Err(format!(
                "{k}.path_template: unknown variable in {:?}",
                self.path_template
            ));
        }
        let range = |key: &str, v: u64, min: u64, max: u64| {
            if (min..=max).contains(&v) {
                Ok(())
            } else {
                Err(format!("{k}.{key}: must be from {min} to {max}, got {v}"))
            }
        };
        range("max_rows", self.max_rows as u64, 1, 1 << 32)?;
        range("row_group_rows", self.row_group_rows as u64, 1, 1 << 24)?;
        range("max_bytes", self.max_bytes, 1 << 10, 1 << 40)?;
        range("max_open_bytes", self.max_open_bytes, 1 << 20, 1 << 40)?;
        // From about 1,300 rows (fewer make poor reading and a writer each) to 16 MiB: each
        // group being encoded or built (up to four of each) holds its rows and a sorted
        // copy outside `max_open_bytes`.
        range("row_group_bytes", self.row_group_bytes, 1 << 20, 1 << 24)?;
        range("max_open_files", self.max_open_files as u64, 1, 100_000)?;
        if self.max_age.is_zero() || self.max_age > Duration::from_secs(86_400) {
            return Err(format!(
                "{k}.max_age: must be from 1ns to 24h (a file holds one event hour), got {:?}",
                self.max_age
            ));
        }
        if !(1..=22).contains(&self.zstd_level) {
            return Err(format!("{k}.zstd_level: must be from 1 to 22"));
        }
        if let Some(s3) = &self.s3 {
            s3.validate(k)?;
        }
        self.compaction.validate(&format!("{k}.compaction"))
    }
}
