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

/// The in-process stream: real-time messages and minute aggregates.
#[derive(Clone)]
pub struct Bus {
    records: broadcast::Sender<Arc<StreamMessage>>,
    minutes: broadcast::Sender<Arc<MinuteUpdate>>,
}

impl Bus {
    pub fn new(capacity: usize) -> Bus {
        Bus {
            records: broadcast::channel(capacity).0,
            minutes: broadcast::channel(capacity).0,
        }
    }

    /// Follows real-time records from now on.
    pub fn subscribe_records(&self) -> broadcast::Receiver<Arc<StreamMessage>> {
        self.records.subscribe()
    }

    /// Hands one minute aggregate to the readers (none reading is fine).
    pub fn publish_one(&self, u: MinuteUpdate) {
        let _ = self.minutes.send(Arc::new(u));
    }

    /// Follows minute aggregates from now on.
    pub fn subscribe_minutes(&self) -> broadcast::Receiver<Arc<MinuteUpdate>> {
        self.minutes.subscribe()
    }
}

#[async_trait]
impl Publisher for Bus {
    async fn publish(&self, updates: Vec<MinuteUpdate>) -> Result<(), SinkError> {
        for u in updates {
            // No subscriber is not an error: nobody is watching yet.
            let _ = self.minutes.send(Arc::new(u));
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
