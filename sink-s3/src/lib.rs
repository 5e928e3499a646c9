//! Standard logs: sampled records as Parquet files on S3-compatible storage or local
//! disk, Hive-partitioned by distribution and event hour, for DuckDB, Athena and Spark.

mod compact;
mod config;
mod open_file;
mod run;
mod schema;
mod sink;
mod spool;
mod stage;

use std::path::Path;
use std::sync::Arc;

use edgelog_collector::{Place, Sink, SinkConfig, SinkContext, SinkError};

pub use compact::{COMPACTED_FROM, CompactionConfig, CompactionError, CompactionReport, Compactor};
pub use config::{DEFAULT_TEMPLATE, S3Config, StandardLogsConfig};
pub use schema::{Columns, SAMPLE_RATE_COLUMN, schema, to_batch};
pub use sink::{ROW_GROUP_BYTES, StandardLogError, StandardLogSink, writer_properties};

/// The embedded default: files under a local directory, the same layout as on S3.
pub fn local_store(dir: &Path) -> Result<Arc<dyn object_store::ObjectStore>, object_store::Error> {
    std::fs::create_dir_all(dir).map_err(|e| object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(e),
    })?;
    Ok(Arc::new(
        object_store::local::LocalFileSystem::new_with_prefix(dir)?,
    ))
}

/// An S3-compatible bucket. Settings must have been validated; nothing is contacted yet,
/// so a collector starts (and keeps accepting into its WAL) while the server is down.
pub fn s3_store(cfg: &S3Config) -> Result<Arc<dyn object_store::ObjectStore>, object_store::Error> {
    use object_store::aws::AmazonS3Builder;
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(&cfg.bucket)
        .with_virtual_hosted_style_request(cfg.virtual_hosted_style)
        .with_client_options(
            object_store::ClientOptions::new()
                .with_timeout(cfg.request_timeout)
                .with_connect_timeout(std::time::Duration::from_secs(5)),
        )
        // A few quick tries, then the error reaches the sink loop, which shows the sink
        // degraded and keeps retrying for as long as it takes.
        .with_retry(object_store::RetryConfig {
            max_retries: 3,
            retry_timeout: std::time::Duration::from_secs(30),
            ..Default::default()
        });
    let region = cfg
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .unwrap_or_else(|| "us-east-1".into());
    b = b.with_region(region);
    if let Some(e) = &cfg.endpoint {
        b = b
            .with_endpoint(e.trim_end_matches('/'))
            .with_allow_http(e.starts_with("http://"));
    }
    if let (Some(id), Some(secret)) = (&cfg.access_key_id, &cfg.secret_access_key) {
        b = b.with_access_key_id(id).with_secret_access_key(secret);
    }
    if let Some(t) = &cfg.session_token {
        b = b.with_token(t);
    }
    Ok(Arc::new(b.build()?))
}

impl StandardLogsConfig {
    /// The store the files go to: the bucket, or the data dir (the prefix goes under it,
    /// the same key layout as in a bucket).
    fn store(&self, data_dir: &Path) -> Result<Arc<dyn object_store::ObjectStore>, SinkError> {
        match &self.s3 {
            Some(s3) => s3_store(s3).map_err(|e| {
                SinkError::misconfigured(format!("cannot use bucket {}", s3.bucket)).with_source(e)
            }),
            None => local_store(data_dir).map_err(|e| {
                SinkError::misconfigured(format!("cannot use {}", data_dir.display()))
                    .with_source(e)
            }),
        }
    }

    /// What compacts the files this sink writes (see [`Compactor`]).
    pub fn compactor(&self, data_dir: &Path) -> Result<Compactor, SinkError> {
        Ok(match self.s3 {
            // Every write synced: an output must be whole on disk before its inputs go.
            None => {
                std::fs::create_dir_all(data_dir).map_err(|e| {
                    SinkError::misconfigured(format!("cannot use {}", data_dir.display()))
                        .with_source(e)
                })?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(data_dir)
                    .map_err(|e| {
                        SinkError::misconfigured(format!("cannot use {}", data_dir.display()))
                            .with_source(e)
                    })?
                    .with_fsync(true);
                Compactor::new(Arc::new(store), self.clone(), self.compaction.clone())
                    .with_local_root(data_dir)
            }
            Some(_) => Compactor::new(self.store(data_dir)?, self.clone(), self.compaction.clone()),
        })
    }
}

impl SinkConfig for StandardLogsConfig {
    fn build(&self, cx: &SinkContext) -> Result<Box<dyn Sink>, SinkError> {
        let store = self.store(&cx.data_dir)?;
        let state = cx
            .data_dir
            .join("state")
            .join(format!("{}-watermarks.json", cx.name));
        let mut sink = StandardLogSink::new(self.clone(), &cx.collector_id, store)
            .with_state_file(&state)
            .map_err(|e| {
                SinkError::misconfigured(format!("cannot read {}", state.display())).with_source(e)
            })?
            .with_dead_letters(cx.dead_letters.clone())
            .with_spool_dir(&cx.data_dir.join("spool").join(&cx.name))
            .map_err(|e| {
                SinkError::misconfigured("cannot make the spool directory").with_source(e)
            })?;
        if self.s3.is_none() {
            sink = sink.with_local_root(&cx.data_dir);
        }
        Ok(Box::new(sink))
    }

    fn describe(&self, cx: &SinkContext) -> String {
        match &self.s3 {
            Some(s3) => format!(
                "parquet files in s3://{}/{} at {}",
                s3.bucket,
                self.prefix,
                s3.endpoint.as_deref().unwrap_or("AWS")
            ),
            None => format!(
                "parquet files in {}",
                cx.data_dir.join(&self.prefix).display()
            ),
        }
    }

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate(&self, key: &str) -> Result<(), String> {
        StandardLogsConfig::validate(self, key)
    }

    fn place(&self) -> Option<Place> {
        Some(match &self.s3 {
            Some(s3) => Place::Remote {
                key: "prefix",
                name: format!(
                    "s3://{}/{} at {}",
                    s3.bucket,
                    self.prefix,
                    s3.endpoint.as_deref().unwrap_or("AWS")
                ),
            },
            None => Place::Local {
                key: "prefix",
                path: self.prefix.clone().into(),
            },
        })
    }
}
