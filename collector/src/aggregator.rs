//! The metrics sink: per distribution and minute, from every record (before sampling).
//!
//! It counts into partial aggregates and hands them to a [`Publisher`] every interval;
//! its position advances only once a publish succeeded, so after a crash the minutes are
//! rebuilt from the log.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use edgelog_record::{MinuteAggregate, MinuteUpdate};

use crate::sink::{Sink, SinkError};
use crate::wal::{Entry, Seq};

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
        }
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
        }
        self.delivered = self.counted;
        self.last_publish = Instant::now();
        Ok(())
    }
}

#[async_trait]
impl Sink for MetricsAggregator {
    async fn write(&mut self, entry: &Entry) -> Result<(), SinkError> {
        if entry.seq <= self.counted {
            return Ok(());
        }
        for r in entry.records.iter() {
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
