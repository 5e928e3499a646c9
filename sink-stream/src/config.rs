//! Settings of the real-time sink.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::format::{MessageFormat, Selection};

/// Real-time logs: sampled records, one message each, keyed by distribution id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RealtimeConfig {
    /// Stream sampled records at all.
    pub enabled: bool,
    /// Messages the in-process stream keeps for slow readers before they miss some.
    pub bus_capacity: usize,
    /// Message body: `json` (CloudFront's standard-log names) or `tsv` (CloudFront's
    /// real-time log format).
    pub format: MessageFormat,
    /// Fields to send, in any CloudFront or Athena spelling; empty sends every field.
    pub fields: Vec<String>,
    /// Per-distribution settings, by distribution id (like a CloudFront real-time log
    /// configuration attached to one distribution).
    pub distributions: BTreeMap<String, DistributionStream>,
    /// A Kafka topic instead of the in-process stream.
    pub kafka: Option<KafkaConfig>,
}

/// What one distribution streams.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistributionStream {
    /// Fields to send for this distribution; empty: the sink's `fields`.
    pub fields: Vec<String>,
}

/// A Kafka topic (any Kafka-protocol broker).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port` separated by commas.
    pub bootstrap_servers: String,
    /// Topic of the real-time records. It must exist unless the brokers create topics.
    pub topic: String,
    /// Compression of message batches: `none`, `lz4` or `zstd`.
    pub compression: String,
    /// How long the producer waits to fill a batch.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Messages the producer may hold unacknowledged; past it the sink waits (the
    /// records wait in the write-ahead log).
    pub max_in_flight_messages: usize,
    /// Bytes of messages the producer may hold unacknowledged (its memory); past it the
    /// sink waits, as above.
    pub max_in_flight_bytes: u64,
    /// More librdkafka properties, passed as they are: `security.protocol`,
    /// `sasl.mechanism`, `sasl.username`, `ssl.ca.location`, timeouts...
    pub options: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: String::new(),
            topic: "edgelog-realtime".into(),
            compression: "lz4".into(),
            // At 100,000 records/s, 5 ms batches were too many requests for a broker on
            // the same two cores (p99 1.5-2.8 s); 20 ms: p99 53-80 ms, and 43-45 ms at 10,000.
            linger: Duration::from_millis(20),
            max_in_flight_messages: 100_000,
            max_in_flight_bytes: 32 << 20,
            options: BTreeMap::new(),
        }
    }
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        RealtimeConfig {
            enabled: true,
            bus_capacity: 65_536,
            format: MessageFormat::Json,
            fields: Vec::new(),
            distributions: BTreeMap::new(),
            kafka: None,
        }
    }
}

/// The checks every Kafka table shares: brokers given, a topic name Kafka accepts.
pub(crate) fn check_brokers_and_topic(k: &str, servers: &str, topic: &str) -> Result<(), String> {
    if servers.trim().is_empty() {
        return Err(format!("{k}.bootstrap_servers: must be set"));
    }
    let topic_ok = !topic.is_empty()
        && topic.len() <= 249
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !topic_ok {
        return Err(format!(
            "{k}.topic: {topic:?} is not a valid topic name (letters, digits, '.', '_', '-')"
        ));
    }
    Ok(())
}

/// Properties edgelog sets itself: delivery guarantees depend on them.
const OWNED_OPTIONS: &[&str] = &[
    "bootstrap.servers",
    "enable.idempotence",
    "acks",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
];

impl RealtimeConfig {
    /// Checks the settings; errors name the key, under `k` (`sinks.realtime`).
    pub fn validate(&self, k: &str) -> Result<(), String> {
        // Each slot is allocated up front: a bound keeps a typo from taking the memory.
        if self.bus_capacity == 0 || self.bus_capacity > 1 << 20 {
            return Err(format!(
                "{k}.bus_capacity: must be from 1 to 1048576, got {}",
                self.bus_capacity
            ));
        }
        Selection::parse(&self.fields).map_err(|n| format!("{k}.fields: unknown field {n:?}"))?;
        for (id, d) in &self.distributions {
            Selection::parse(&d.fields)
                .map_err(|n| format!("{k}.distributions.{id}.fields: unknown field {n:?}"))?;
        }
        if let Some(kafka) = &self.kafka {
            kafka.validate(&format!("{k}.kafka"))?;
        }
        Ok(())
    }
}

impl KafkaConfig {
    fn validate(&self, k: &str) -> Result<(), String> {
        check_brokers_and_topic(k, &self.bootstrap_servers, &self.topic)?;
        if !["none", "lz4", "zstd"].contains(&self.compression.as_str()) {
            return Err(format!(
                "{k}.compression: {:?} is not none, lz4 or zstd",
                self.compression
            ));
        }
        // librdkafka's own bounds for queue.buffering.max.messages and linger.ms.
        if !(1..=2_147_483_647).contains(&self.max_in_flight_messages) {
            return Err(format!(
                "{k}.max_in_flight_messages: must be from 1 to 2147483647, got {}",
                self.max_in_flight_messages
            ));
        }
        // librdkafka takes queue.buffering.max.kbytes up to 2^31-1 KiB.
        if !(1 << 20..=1 << 40).contains(&self.max_in_flight_bytes) {
            return Err(format!(
                "{k}.max_in_flight_bytes: must be from 1048576 to 1099511627776, got {}",
                self.max_in_flight_bytes
            ));
        }
        if self.linger > Duration::from_secs(900) {
            return Err(format!(
                "{k}.linger: must be at most 900s, got {:?}",
                self.linger
            ));
        }
        if let Some(o) = self
            .options
            .keys()
            .find(|o| OWNED_OPTIONS.contains(&o.as_str()))
        {
            return Err(format!(
                "{k}.options.{o}: set by edgelog for its delivery guarantee"
            ));
        }
        Ok(())
    }

    /// The librdkafka properties of the producer.
    pub fn client_properties(&self, client_id: &str) -> BTreeMap<String, String> {
        let mut p: BTreeMap<String, String> = [
            ("bootstrap.servers", self.bootstrap_servers.clone()),
            ("client.id", client_id.to_owned()),
            // Exactly once per partition across librdkafka's own retries, in order.
            ("enable.idempotence", "true".into()),
            ("acks", "all".into()),
            // Never give up on a message: an outage delays records, it does not drop them.
            ("message.timeout.ms", "0".into()),
            ("compression.type", self.compression.clone()),
            ("linger.ms", self.linger.as_millis().to_string()),
            (
                "queue.buffering.max.messages",
                self.max_in_flight_messages.to_string(),
            ),
            (
                "queue.buffering.max.kbytes",
                (self.max_in_flight_bytes / 1024).to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        p.extend(self.options.clone());
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_key() {
        let mut c = RealtimeConfig {
            fields: vec!["sc-status".into(), "cs-hots".into()],
            ..RealtimeConfig::default()
        };
        assert!(
            c.validate("sinks.realtime")
                .is_err_and(|e| e.contains("sinks.realtime.fields"))
        );
        c.fields.clear();
        c.kafka = Some(KafkaConfig::default());
        assert!(
            c.validate("sinks.realtime")
                .is_err_and(|e| e.contains("bootstrap_servers"))
        );
        let kafka = KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            options: [("acks".to_owned(), "1".to_owned())].into(),
            ..KafkaConfig::default()
        };
        c.kafka = Some(kafka);
        assert!(
            c.validate("sinks.realtime")
                .is_err_and(|e| e.contains("sinks.realtime.kafka.options.acks"))
        );
    }
}
