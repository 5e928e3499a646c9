//! Real-time logs: sampled records, one message each, keyed by distribution.
//!
//! The embedded default is an in-process [`Bus`] that the dashboard and a local tail
//! read; with `[sinks.realtime.kafka]`, a Kafka topic ([`KafkaSink`]).

mod config;
mod format;
mod kafka;
mod metrics_topic;

use std::sync::Arc;

use async_trait::async_trait;
use edgelog_collector::{Entry, Publisher, Seq, Sink, SinkError};
use edgelog_record::{Destination, MinuteUpdate, SCHEMA_VERSION, SamplingConfig, write_json};
use tokio::sync::broadcast;

pub use config::{DistributionStream, KafkaConfig, RealtimeConfig};
pub use format::{MessageFormat, REALTIME_FIELDS, Selection, parse_tsv_timestamp};
pub use kafka::{
    Encoder, HEADER_FIELDS, HEADER_FORMAT, HEADER_SAMPLE_RATE, HEADER_SCHEMA_VERSION, KafkaSink,
    KafkaSinkError,
};
pub use metrics_topic::{KafkaPublisher, MetricsKafkaConfig, follow_metrics};

/// One real-time log message.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamMessage {
    /// The distribution id: one distribution's records keep their order.
    pub key: String,
    /// Percent of this distribution's records that the stream carries.
    pub sample_rate: f64,
    pub schema_version: u32,
    /// The record as CloudFront-named JSON.
    pub payload: Vec<u8>,
}

/// Something that takes every minute aggregate published in process (a dashboard's store).
type MinuteReader = Arc<dyn Fn(&MinuteUpdate) + Send + Sync>;

/// The in-process stream: real-time messages (a bounded broadcast: a slow reader misses
/// some) and minute aggregates (handed to every reader as they are published, never
/// dropped: metrics must count every record).
#[derive(Clone)]
pub struct Bus {
    records: broadcast::Sender<Arc<StreamMessage>>,
    minutes: Arc<std::sync::RwLock<Vec<MinuteReader>>>,
}

impl Bus {
    /// `capacity`: real-time messages kept for slow readers.
    pub fn new(capacity: usize) -> Bus {
        Bus {
            records: broadcast::channel(capacity.max(1)).0,
            minutes: Arc::default(),
        }
    }

    /// Follows real-time records from now on.
    pub fn subscribe_records(&self) -> broadcast::Receiver<Arc<StreamMessage>> {
        self.records.subscribe()
    }

    /// Hands one minute aggregate to every reader (none reading is fine).
    pub fn publish_one(&self, u: &MinuteUpdate) {
        let readers = self.minutes.read().unwrap_or_else(|p| p.into_inner());
        for r in readers.iter() {
            r(u);
        }
    }

    /// Calls `reader` with every minute aggregate published from now on, in the
    /// publisher's task (keep it quick: a merge into a map).
    pub fn on_minutes(&self, reader: impl Fn(&MinuteUpdate) + Send + Sync + 'static) {
        self.minutes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::new(reader));
    }
}

#[async_trait]
impl Publisher for Bus {
    async fn publish(&self, updates: Vec<MinuteUpdate>) -> Result<(), SinkError> {
        for u in &updates {
            // No reader is not an error: nobody is watching yet.
            self.publish_one(u);
        }
        Ok(())
    }
}

/// Sends sampled records to the in-process stream.
pub struct RealtimeSink {
    sampling: SamplingConfig,
    bus: Bus,
    delivered: Seq,
}

impl RealtimeSink {
    pub fn in_process(sampling: SamplingConfig, bus: Bus) -> RealtimeSink {
        RealtimeSink {
            sampling,
            bus,
            delivered: 0,
        }
    }
}

#[async_trait]
impl Sink for RealtimeSink {
    async fn write(&mut self, entry: &Entry) -> Result<(), SinkError> {
        if entry.seq <= self.delivered {
            return Ok(());
        }
        // The in-process stream keeps nothing for later readers: with none, there is no
        // one to serialize for.
        if self.bus.records.receiver_count() == 0 {
            self.delivered = entry.seq;
            return Ok(());
        }
        let mut sent = 0u64;
        for r in entry.records.iter() {
            let Some(rate) =
                self.sampling
                    .decide(&r.distribution_id, r.request_id(), Destination::Realtime)
            else {
                continue;
            };
            let mut payload = Vec::with_capacity(1024);
            write_json(r, &mut payload);
            let _ = self.bus.records.send(Arc::new(StreamMessage {
                key: r.distribution_id.clone(),
                sample_rate: rate,
                schema_version: SCHEMA_VERSION,
                payload,
            }));
            sent += 1;
        }
        metrics::counter!("edgelog_realtime_records_total").increment(sent);
        self.delivered = entry.seq;
        Ok(())
    }

    async fn tick(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    fn delivered(&self) -> Seq {
        self.delivered
    }
}
