//! The standard-log sink: buffers sampled records per (distribution, event hour) and
//! writes each buffer as one Parquet object.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arrow_schema::SchemaRef;
use async_trait::async_trait;
use edgelog_collector::{Entry, Seq, Sink, SinkError};
use edgelog_record::{Destination, Record, SCHEMA_VERSION, SamplingConfig, time};
use object_store::ObjectStore;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use parquet::arrow::async_writer::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use crate::config::StandardLogsConfig;
use crate::schema;

/// Rows per Arrow batch handed to the Parquet writer.
const BATCH_ROWS: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PartitionKey {
    distribution: String,
    hour_ms: i64,
}

struct Partition {
    rows: Vec<Record>,
    bytes: u64,
    first_seq: Seq,
    last_seq: Seq,
    opened: Instant,
    sample_rate: f64,
}

/// Why writing a file failed.
#[derive(Debug, thiserror::Error)]
pub enum StandardLogError {
    #[error("cannot build parquet for {key}: {source}")]
    Encode {
        key: String,
        source: parquet::errors::ParquetError,
    },
    #[error("cannot build arrow batch for {key}: {source}")]
    Batch {
        key: String,
        source: arrow_schema::ArrowError,
    },
}

/// Writes standard logs as Parquet into an object store.
pub struct StandardLogSink {
    cfg: StandardLogsConfig,
    collector_id: String,
    sampling: SamplingConfig,
    store: Arc<dyn ObjectStore>,
    schema: SchemaRef,
    props: WriterProperties,
    open: HashMap<PartitionKey, Partition>,
    open_bytes: u64,
    /// Last entry taken into the buffers.
    taken: Seq,
}

fn render_partition(template: &str, key: &PartitionKey) -> String {
    let (y, m, d, h) = time::hour_parts(key.hour_ms);
    template
        .replace("{DistributionId}", &key.distribution)
        .replace("{yyyy}", &format!("{y:04}"))
        .replace("{MM}", &format!("{m:02}"))
        .replace("{dd}", &format!("{d:02}"))
        .replace("{HH}", &format!("{h:02}"))
}

impl StandardLogSink {
    /// A sink writing into `store`. Settings must have been validated.
    pub fn new(
        cfg: StandardLogsConfig,
        collector_id: &str,
        sampling: SamplingConfig,
        store: Arc<dyn ObjectStore>,
    ) -> Self {
        let level = ZstdLevel::try_new(cfg.zstd_level).unwrap_or_default();
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_dictionary_enabled(true)
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_max_row_group_row_count(Some(cfg.row_group_rows))
            .set_created_by(format!("edgelog {}", env!("CARGO_PKG_VERSION")))
            .set_key_value_metadata(Some(vec![
                KeyValue::new("edgelog.schema_version".into(), SCHEMA_VERSION.to_string()),
                KeyValue::new("edgelog.collector_id".into(), collector_id.to_owned()),
            ]))
            .build();
        StandardLogSink {
            cfg,
            collector_id: collector_id.to_owned(),
            sampling,
            store,
            schema: schema::schema(),
            props,
            open: HashMap::new(),
            open_bytes: 0,
            taken: 0,
        }
    }

    /// The object key of a file: a function of the data (collector, partition, WAL range),
    /// so writing the same batch again overwrites the same object.
    fn object_path(&self, key: &PartitionKey, p: &Partition) -> ObjectPath {
        let partition = render_partition(&self.cfg.path_template, key);
        let file = format!(
            "{}-{:020}-{:020}.parquet",
            self.collector_id, p.first_seq, p.last_seq
        );
        let full = if self.cfg.prefix.is_empty() {
            format!("{partition}/{file}")
        } else {
            format!("{}/{partition}/{file}", self.cfg.prefix)
        };
        ObjectPath::from(full)
    }

    async fn write_file(&self, key: &PartitionKey, p: &Partition) -> Result<u64, SinkError> {
        let path = self.object_path(key, p);
        let mut rows: Vec<&Record> = p.rows.iter().collect();
        rows.sort_by_key(|r| r.timestamp_ms);
        let name = path.to_string();
        // BufWriter switches to a multipart upload once the file outgrows its buffer.
        let writer = BufWriter::new(self.store.clone(), path);
        let mut w =
            AsyncArrowWriter::try_new(writer, self.schema.clone(), Some(self.props.clone()))
                .map_err(|source| {
                    fatal(StandardLogError::Encode {
                        key: name.clone(),
                        source,
                    })
                })?;
        for chunk in rows.chunks(BATCH_ROWS) {
            let batch = schema::to_batch(&self.schema, chunk, p.sample_rate).map_err(|source| {
                fatal(StandardLogError::Batch {
                    key: name.clone(),
                    source,
                })
            })?;
            w.write(&batch).await.map_err(|e| unavailable(&name, &e))?;
        }
        let meta = w.close().await.map_err(|e| unavailable(&name, &e))?;
        let size: i64 = meta.row_groups().iter().map(|g| g.compressed_size()).sum();
        tracing::debug!(object = %name, rows = p.rows.len(), bytes = size, "standard log file written");
        Ok(size.max(0) as u64)
    }

    /// Writes and forgets one open partition; on failure it stays open for a retry.
    async fn close(&mut self, key: &PartitionKey) -> Result<(), SinkError> {
        let Some(p) = self.open.get(key) else {
            return Ok(());
        };
        if p.rows.is_empty() {
            self.open.remove(key);
            return Ok(());
        }
        let size = self.write_file(key, p).await?;
        metrics::counter!("edgelog_standard_files_total").increment(1);
        metrics::counter!("edgelog_standard_rows_total").increment(p.rows.len() as u64);
        metrics::counter!("edgelog_standard_bytes_total").increment(size);
        if let Some(p) = self.open.remove(key) {
            self.open_bytes -= p.bytes;
        }
        metrics::gauge!("edgelog_standard_open_bytes").set(self.open_bytes as f64);
        Ok(())
    }

    async fn close_where(&mut self, due: impl Fn(&Partition) -> bool) -> Result<(), SinkError> {
        let keys: Vec<PartitionKey> = self
            .open
            .iter()
            .filter(|(_, p)| due(p))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.close(&k).await?;
        }
        Ok(())
    }
}

fn fatal(e: StandardLogError) -> SinkError {
    SinkError::Misconfigured(e.to_string())
}

fn unavailable(object: &str, e: &parquet::errors::ParquetError) -> SinkError {
    SinkError::Unavailable(format!("cannot write {object}: {e}"))
}

#[async_trait]
impl Sink for StandardLogSink {
    async fn write(&mut self, entry: &Entry) -> Result<(), SinkError> {
        // Taking an entry is separate from closing files, so a retry after a failed
        // close does not buffer the same rows twice.
        if entry.seq > self.taken {
            for r in entry.records.iter() {
                let Some(rate) =
                    self.sampling
                        .decide(&r.distribution_id, r.request_id(), Destination::Standard)
                else {
                    continue;
                };
                let key = PartitionKey {
                    distribution: r.distribution_id.clone(),
                    hour_ms: r.timestamp_ms - r.timestamp_ms.rem_euclid(3_600_000),
                };
                let p = self.open.entry(key).or_insert_with(|| Partition {
                    rows: Vec::new(),
                    bytes: 0,
                    first_seq: entry.seq,
                    last_seq: entry.seq,
                    opened: Instant::now(),
                    sample_rate: rate,
                });
                let size = r.approx_size() as u64;
                p.rows.push(r.clone());
                p.bytes += size;
                p.last_seq = entry.seq;
                self.open_bytes += size;
            }
            self.taken = entry.seq;
            metrics::gauge!("edgelog_standard_open_bytes").set(self.open_bytes as f64);
        }
        let (max_rows, max_bytes) = (self.cfg.max_rows, self.cfg.max_bytes);
        self.close_where(|p| p.rows.len() >= max_rows || p.bytes >= max_bytes)
            .await?;
        // Over the memory bound: close the oldest files first.
        while self.open_bytes > self.cfg.max_open_bytes {
            let Some(oldest) = self
                .open
                .iter()
                .min_by_key(|(_, p)| p.opened)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.close(&oldest).await?;
        }
        Ok(())
    }

    async fn tick(&mut self) -> Result<(), SinkError> {
        let max_age = self.cfg.max_age;
        self.close_where(|p| p.opened.elapsed() >= max_age).await
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.close_where(|_| true).await
    }

    fn delivered(&self) -> Seq {
        match self.open.values().map(|p| p.first_seq).min() {
            Some(first) => first - 1,
            None => self.taken,
        }
    }
}
