//! Per-minute partial aggregates over Kafka: every collector publishes its own, every
//! dashboard reads them all and sums them, so N collectors show one correct figure, and a
//! restarted dashboard rebuilds its history from the topic.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use edgelog_collector::{Publisher, SinkError};
use edgelog_record::MinuteUpdate;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};

use crate::KafkaSinkError;

/// The metrics topic, for collectors (publish) and dashboards (read).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsKafkaConfig {
    /// Bootstrap brokers, `host:port` separated by commas.
    pub bootstrap_servers: String,
    /// Topic of the partial aggregates; create it beforehand. Its retention should cover
    /// the dashboard's history (a day by default) for restarts to rebuild it.
    pub topic: String,
    /// More librdkafka properties (SASL, timeouts...).
    pub options: BTreeMap<String, String>,
}

impl Default for MetricsKafkaConfig {
    fn default() -> Self {
        MetricsKafkaConfig {
            bootstrap_servers: String::new(),
            topic: "edgelog-metrics".into(),
            options: BTreeMap::new(),
        }
    }
}

impl MetricsKafkaConfig {
    /// Checks the settings; errors name the key (under `prefix`).
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        crate::config::check_brokers_and_topic(prefix, &self.bootstrap_servers, &self.topic)
    }

    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        for (k, v) in &self.options {
            c.set(k, v);
        }
        c
    }
}

/// Publishes a collector's partial aggregates, waiting for the broker's acknowledgement
/// (the metrics sink advances only after it).
pub struct KafkaPublisher {
    producer: FutureProducer,
    topic: String,
}

impl KafkaPublisher {
    pub fn new(
        cfg: &MetricsKafkaConfig,
        client_id: &str,
    ) -> Result<KafkaPublisher, KafkaSinkError> {
        let producer = cfg
            .client()
            .set("client.id", client_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .create()?;
        Ok(KafkaPublisher {
            producer,
            topic: cfg.topic.clone(),
        })
    }
}

#[async_trait]
impl Publisher for KafkaPublisher {
    async fn publish(&self, updates: Vec<MinuteUpdate>) -> Result<(), SinkError> {
        let mut pending = Vec::with_capacity(updates.len());
        for u in &updates {
            let payload = serde_json::to_vec(u)
                .map_err(|e| SinkError::unavailable("cannot encode an aggregate").with_source(e))?;
            let record = FutureRecord::to(&self.topic)
                .key(u.distribution_id.as_bytes())
                .payload(&payload);
            let delivery = self.producer.send_result(record).map_err(|(e, _)| {
                SinkError::unavailable(format!("kafka metrics topic {}", self.topic)).with_source(e)
            })?;
            pending.push(delivery);
        }
        for d in pending {
            match d.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    return Err(SinkError::unavailable(format!(
                        "kafka metrics topic {}",
                        self.topic
                    ))
                    .with_source(e));
                }
                Err(_) => {
                    return Err(SinkError::unavailable("kafka producer dropped a delivery"));
                }
            }
        }
        metrics::counter!("edgelog_metrics_updates_published_total")
            .increment(updates.len() as u64);
        Ok(())
    }
}

/// Reads every partial aggregate in the topic, from its beginning, then follows it; calls
/// `merge` for each. Runs until the consumer fails for good.
pub async fn follow_metrics(
    cfg: &MetricsKafkaConfig,
    merge: impl Fn(MinuteUpdate),
) -> Result<(), KafkaSinkError> {
    // A group of its own, starting at the earliest offset: each start rebuilds the history.
    let group = format!(
        "edgelog-dashboard-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let consumer: StreamConsumer = cfg
        .client()
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()?;
    consumer.subscribe(&[&cfg.topic])?;
    tracing::info!(topic = %cfg.topic, brokers = %cfg.bootstrap_servers, "dashboard reading the metrics topic");
    let mut errors = 0u32;
    loop {
        match consumer.recv().await {
            Ok(m) => {
                errors = 0;
                let Some(payload) = m.payload() else { continue };
                match serde_json::from_slice::<MinuteUpdate>(payload) {
                    Ok(u) => merge(u),
                    Err(e) => {
                        tracing::warn!(error = %e, offset = m.offset(), partition = m.partition(), "skipping a message that is not a minute aggregate");
                    }
                }
            }
            Err(e) => {
                errors += 1;
                tracing::warn!(error = %e, "cannot read the metrics topic; retrying");
                tokio::time::sleep(Duration::from_millis(500 * u64::from(errors.min(20)))).await;
            }
        }
    }
}
