//! Standard logs: sampled records as Parquet files on S3-compatible storage or local
//! disk, Hive-partitioned by distribution and event hour, for DuckDB, Athena and Spark.

mod config;
mod schema;
mod sink;

use std::path::Path;
use std::sync::Arc;

pub use config::{DEFAULT_TEMPLATE, StandardLogsConfig};
pub use schema::{Columns, SAMPLE_RATE_COLUMN, schema, to_batch};
pub use sink::{BATCH_ROWS, StandardLogError, StandardLogSink};

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
