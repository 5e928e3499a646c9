//! Real-time logs: sampled records, one message each, keyed by distribution.
//!
//! The embedded default is an in-process [`Bus`] that the dashboard and a local tail
//! read; with `[sinks.realtime.kafka]`, a Kafka topic ([`KafkaSink`]).

mod config;
mod file;
mod format;
mod kafka;
mod metrics_topic;

use async_trait::async_trait;
use edgelog_collector::{Batch, Seq, Sink, SinkConfig, SinkContext, SinkError};
use edgelog_record::{SCHEMA_VERSION, write_json};

pub use edgelog_collector::{Bus, StreamMessage};

pub use config::{DistributionStream, KafkaConfig, RealtimeConfig};
pub use file::{FileSink, FileSinkConfig};
pub use format::{MessageFormat, REALTIME_FIELDS, Selection, parse_tsv_timestamp};
pub use kafka::{
    Encoder, HEADER_FIELDS, HEADER_FORMAT, HEADER_SAMPLE_RATE, HEADER_SCHEMA_VERSION, KafkaSink,
    KafkaSinkError,
};
pub use metrics_topic::{KafkaPublisher, MetricsKafkaConfig, follow_metrics, follow_realtime};

/// Sends sampled records to the in-process stream.
pub struct RealtimeSink {
    bus: Bus,
    delivered: Seq,
}

impl RealtimeSink {
    pub fn in_process(bus: Bus) -> RealtimeSink {
        RealtimeSink { bus, delivered: 0 }
    }
}

#[async_trait]
impl Sink for RealtimeSink {
    async fn write(&mut self, batch: &Batch<'_>) -> Result<(), SinkError> {
        if batch.seq() <= self.delivered {
            return Ok(());
        }
        // The in-process stream keeps nothing for later readers: with none, there is no
        // one to serialize for.
        if self.bus.record_readers() == 0 {
            self.delivered = batch.seq();
            return Ok(());
        }
        let (mut sent, mut missed) = (0u64, 0u64);
        for k in batch.records() {
            let mut payload = Vec::with_capacity(1024);
            write_json(k.record, &mut payload);
            let message = StreamMessage {
                key: k.record.distribution_id.clone(),
                sample_rate: k.rate,
                schema_version: SCHEMA_VERSION,
                payload,
            };
            match self.bus.send_record(message) {
                true => sent += 1,
                false => missed += 1,
            }
        }
        metrics::counter!("edgelog_realtime_records_total").increment(sent);
        // Its readers are behind by the stream's bytes (or gone): best effort, by design.
        metrics::counter!("edgelog_realtime_stream_missed_total").increment(missed);
        self.delivered = batch.seq();
        Ok(())
    }

    fn delivered(&self) -> Seq {
        self.delivered
    }
}

/// Real-time logs go to Kafka with `kafka`, else to the in-process stream.
impl SinkConfig for RealtimeConfig {
    fn build(&self, cx: &SinkContext) -> Result<Box<dyn Sink>, SinkError> {
        Ok(match &self.kafka {
            Some(kafka) => Box::new(
                KafkaSink::new(self, kafka, &cx.collector_id)
                    .map_err(|e| {
                        SinkError::misconfigured("cannot set up the kafka producer").with_source(e)
                    })?
                    .with_dead_letters(cx.dead_letters.clone())
                    .with_reloads(cx.settings.clone()),
            ),
            None => Box::new(RealtimeSink::in_process(cx.bus.clone())),
        })
    }

    fn describe(&self, _cx: &SinkContext) -> String {
        match &self.kafka {
            Some(k) => format!(
                "kafka topic {} at {} ({})",
                k.topic,
                k.bootstrap_servers,
                self.format.as_str()
            ),
            None => "the in-process stream".into(),
        }
    }

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate(&self, key: &str) -> Result<(), String> {
        RealtimeConfig::validate(self, key)
    }
}
