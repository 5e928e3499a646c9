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
    async fn publish(&self, updates: &[MinuteUpdate]) -> Result<(), SinkError> {
        let mut pending = Vec::with_capacity(updates.len());
        for u in updates {
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

/// A consumer group no other reader shares: `{prefix}-{pid}-{ms}`.
fn group_of_its_own(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    )
}

/// Reads every partial aggregate in the topic, from its beginning, then follows it; calls
/// `merge` for each. Runs until the consumer fails for good.
pub async fn follow_metrics(
    cfg: &MetricsKafkaConfig,
    merge: impl Fn(MinuteUpdate),
) -> Result<(), KafkaSinkError> {
    // A group of its own, starting at the earliest offset: each start rebuilds the history.
    let group = group_of_its_own("edgelog-dashboard");
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

/// Follows the real-time topic from its end (what is logged from now on) and hands each
/// message to `each` as the in-process stream carries it: the live tail of `edgelog
/// dashboard`. TSV messages become the same CloudFront-named JSON, from their
/// `edgelog-fields` header. Runs until the consumer fails for good.
pub async fn follow_realtime(
    cfg: &crate::KafkaConfig,
    each: impl Fn(edgelog_collector::StreamMessage),
) -> Result<(), KafkaSinkError> {
    use rdkafka::message::Headers;
    let group = group_of_its_own("edgelog-tail");
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &cfg.bootstrap_servers);
    for (k, v) in &cfg.options {
        client.set(k, v);
    }
    let consumer: StreamConsumer = client
        .set("group.id", &group)
        .set("auto.offset.reset", "latest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()?;
    consumer.subscribe(&[&cfg.topic])?;
    tracing::info!(topic = %cfg.topic, "dashboard following the real-time topic for live tails");
    let mut errors = 0u32;
    loop {
        match consumer.recv().await {
            Ok(m) => {
                errors = 0;
                let (Some(key), Some(payload)) = (m.key(), m.payload()) else {
                    continue;
                };
                let header = |name: &str| {
                    m.headers().and_then(|h| {
                        h.iter()
                            .find(|x| x.key == name)
                            .and_then(|x| x.value)
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                    })
                };
                let payload = match header(crate::HEADER_FIELDS) {
                    Some(names) => tsv_to_json(&names, payload),
                    None => payload.to_vec(),
                };
                each(edgelog_collector::StreamMessage {
                    key: String::from_utf8_lossy(key).into_owned(),
                    sample_rate: header(crate::HEADER_SAMPLE_RATE)
                        .and_then(|r| r.parse().ok())
                        .unwrap_or(100.0),
                    schema_version: edgelog_record::SCHEMA_VERSION,
                    payload,
                });
            }
            Err(e) => {
                errors += 1;
                tracing::warn!(error = %e, "cannot read the real-time topic; retrying");
                tokio::time::sleep(Duration::from_millis(500 * u64::from(errors.min(20)))).await;
            }
        }
    }
}

/// A TSV message as a JSON object of its columns (standard-log names where known; `-`
/// left out; numbers as numbers).
fn tsv_to_json(names: &str, payload: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(payload);
    let mut out = serde_json::Map::new();
    for (name, col) in names.split(',').zip(text.split('\t')) {
        if col == "-" {
            continue;
        }
        let std_name = crate::REALTIME_FIELDS
            .iter()
            .find(|(rt, _)| *rt == name)
            .map_or(name, |(_, s)| *s);
        let v = match col.parse::<i64>() {
            Ok(n) => serde_json::Value::from(n),
            Err(_) => serde_json::Value::from(col),
        };
        out.insert(std_name.to_owned(), v);
    }
    serde_json::to_vec(&serde_json::Value::Object(out)).unwrap_or_default()
}
