//! The metrics sink: per distribution and minute, from every record (before sampling).
//!
//! It counts into partial aggregates and hands them to a [`Publisher`] every interval;
//! its position advances only once a publish succeeded, so after a crash the minutes are
//! rebuilt from the log. With a state file, the last published entry is saved after each
//! publish, so a replay does not count again what was published (only a crash between
//! the publisher's acknowledgement and that save can publish one interval twice).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use edgelog_record::{MinuteAggregate, MinuteUpdate};

use crate::sink::{Batch, Sink, SinkError};
use crate::wal::Seq;

/// Where finished partial aggregates go (Kafka, or the in-process bus).
#[async_trait]
pub trait Publisher: Send + Sync {
    async fn publish(&self, updates: Vec<MinuteUpdate>) -> Result<(), SinkError>;
}

/// Counts records into per-minute aggregates.
pub struct MetricsAggregator {
    collector_id: String,
    publisher: Arc<dyn Publisher>,
    interval: Duration,
    /// Counts not yet published, by distribution and minute.
    pending: HashMap<String, HashMap<i64, MinuteAggregate>>,
    /// Position of the last entry counted into `pending`.
    counted: Seq,
    delivered: Seq,
    last_publish: Instant,
    /// Entries up to here are published (from the state file, after a restart).
    published: Seq,
    state_file: Option<std::path::PathBuf>,
}

impl MetricsAggregator {
    pub fn new(collector_id: &str, publisher: Arc<dyn Publisher>, interval: Duration) -> Self {
        MetricsAggregator {
            collector_id: collector_id.to_owned(),
            publisher,
            interval,
            pending: HashMap::new(),
            counted: 0,
            delivered: 0,
            last_publish: Instant::now(),
            published: 0,
            state_file: None,
        }
    }

    /// Keeps the last published entry in `path` (read now, written after every publish).
    pub fn with_state_file(mut self, path: &std::path::Path) -> std::io::Result<Self> {
        self.published = match std::fs::read_to_string(path) {
            Ok(text) => text.trim().parse().map_err(std::io::Error::other)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        self.state_file = Some(path.to_owned());
        Ok(self)
    }

    fn save_published(&self) -> Result<(), SinkError> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        crate::state_file::write_atomic(path, self.counted.to_string().as_bytes()).map_err(|e| {
            SinkError::unavailable(format!("cannot save {}", path.display())).with_source(e)
        })
    }

    async fn publish(&mut self) -> Result<(), SinkError> {
        if !self.pending.is_empty() {
            let collector = &self.collector_id;
            let updates: Vec<MinuteUpdate> = self
                .pending
                .iter()
                .flat_map(|(d, minutes)| {
                    minutes.iter().map(move |(m, a)| MinuteUpdate {
                        collector_id: collector.clone(),
                        distribution_id: d.clone(),
                        minute_ms: *m,
                        aggregate: a.clone(),
                    })
                })
                .collect();
            self.publisher.publish(updates).await?;
            self.pending.clear();
            self.save_published()?;
        }
        self.delivered = self.counted;
        self.last_publish = Instant::now();
        Ok(())
    }
}

#[async_trait]
impl Sink for MetricsAggregator {
    async fn write(&mut self, batch: &Batch<'_>) -> Result<(), SinkError> {
        let entry = batch.entry;
        if entry.seq <= self.counted {
            return Ok(());
        }
        if entry.seq <= self.published {
            // Published before a restart.
            self.counted = entry.seq;
            return Ok(());
        }
        for r in batch.records().map(|k| k.record) {
            let minute = r.timestamp_ms - r.timestamp_ms.rem_euclid(60_000);
            // Look up before inserting: no id copied per record.
            let minutes = match self.pending.get_mut(&r.distribution_id) {
                Some(m) => m,
                None => self.pending.entry(r.distribution_id.clone()).or_default(),
            };
            minutes.entry(minute).or_default().add(r);
        }
        self.counted = entry.seq;
        Ok(())
    }

    async fn tick(&mut self) -> Result<(), SinkError> {
        if self.last_publish.elapsed() >= self.interval {
            self.publish().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.publish().await
    }

    fn delivered(&self) -> Seq {
        self.delivered
    }
}
