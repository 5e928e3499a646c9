//! The Kafka real-time sink: sampled records from the write-ahead log, one message each,
//! keyed by distribution id, through librdkafka's idempotent producer.
//!
//! The sink's position in the log advances only on delivery reports. They arrive out of
//! order, so it is the low-water mark: every entry below the oldest entry with a message
//! still in flight is delivered. A full producer queue is backpressure (the sink waits,
//! records wait in the log); a failed delivery is produced again.
//!
//! Long (about 520 lines): the in-flight bookkeeping (delivery reports, resends, dead
//! letters) is one piece with the producer calls it tracks.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use edgelog_collector::{Batch, DeadLetters, Kept, ReloadedSettings, Seq, Sink, SinkError};
use edgelog_record::SCHEMA_VERSION;
use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};

use crate::config::{KafkaConfig, RealtimeConfig};
use crate::format::{MessageFormat, Selection};

/// Message headers consumers can rely on.
pub const HEADER_SAMPLE_RATE: &str = "edgelog-sample-rate";
pub const HEADER_SCHEMA_VERSION: &str = "edgelog-schema-version";
pub const HEADER_FORMAT: &str = "edgelog-format";
/// For `tsv`: the real-time names of the columns, comma-separated.
pub const HEADER_FIELDS: &str = "edgelog-fields";

/// Why the Kafka sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSinkError {
    #[error("invalid kafka settings: {0}")]
    Config(String),
    #[error("cannot create the kafka producer: {0}")]
    Producer(#[from] KafkaError),
}

/// Record → message body, per distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoder {
    format: MessageFormat,
    default: Selection,
    per_distribution: HashMap<String, Selection>,
}

impl Encoder {
    /// From validated settings.
    pub fn new(cfg: &RealtimeConfig) -> Result<Encoder, String> {
        let default = Selection::parse(&cfg.fields)?;
        let mut per_distribution = HashMap::new();
        for (id, d) in &cfg.distributions {
            if !d.fields.is_empty() {
                per_distribution.insert(id.clone(), Selection::parse(&d.fields)?);
            }
        }
        Ok(Encoder {
            format: cfg.format,
            default,
            per_distribution,
        })
    }

    pub fn selection(&self, distribution: &str) -> &Selection {
        self.per_distribution
            .get(distribution)
            .unwrap_or(&self.default)
    }

    pub fn format(&self) -> MessageFormat {
        self.format
    }
}

/// What delivery reports tell, shared with librdkafka's thread.
#[derive(Default)]
struct Inflight {
    /// Messages in flight per log entry.
    outstanding: BTreeMap<Seq, usize>,
    /// Deliveries that failed, to produce again.
    failed: Vec<(Seq, OwnedMessage)>,
    /// Messages refused for good when produced again (too large): for the dead letters.
    refused: Vec<(Seq, OwnedMessage, String)>,
    /// The last error since the last successful delivery.
    error: Option<String>,
}

impl Inflight {
    /// One message of entry `seq` is out of flight (delivered, or never handed over).
    fn done(&mut self, seq: Seq) {
        if let Some(n) = self.outstanding.get_mut(&seq) {
            *n -= 1;
            if *n == 0 {
                self.outstanding.remove(&seq);
            }
        }
    }
}

struct Context {
    inflight: Arc<Mutex<Inflight>>,
    topic: String,
}

fn lock(m: &Mutex<Inflight>) -> MutexGuard<'_, Inflight> {
    // A panic elsewhere must not stop deliveries being counted.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(facility = fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(facility = fac, "librdkafka: {message}"),
            _ => tracing::debug!(facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client error");
        metrics::counter!("edgelog_kafka_errors_total").increment(1);
        lock(&self.inflight).error = Some(format!("kafka: {reason}"));
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        let seq = seq as Seq;
        let mut s = lock(&self.inflight);
        match result {
            Ok(_) => {
                s.error = None;
                s.done(seq);
                metrics::counter!("edgelog_realtime_records_total").increment(1);
            }
            Err((e, msg)) => {
                metrics::counter!("edgelog_kafka_delivery_failures_total").increment(1);
                // A broker's size refusal may be about the whole batch, not this message:
                // it is retried (and shown), never dead-lettered from here. The producer's
                // own check, at produce time, is what dead-letters an oversized record.
                if let Some(reason) = refused_for_good(e) {
                    s.error = Some(format!(
                        "{reason} (a message of {} bytes): raise the topic's max.message.bytes, or set \
                         the producer's message.max.bytes at or below it so that oversized records \
                         are dead-lettered",
                        msg.payload_len()
                    ));
                    s.failed.push((seq, msg.detach()));
                    return;
                }
                let missing = matches!(
                    e,
                    KafkaError::MessageProduction(
                        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic
                    )
                );
                s.error = Some(if missing {
                    format!(
                        "kafka topic {} does not exist; create it (records wait meanwhile)",
                        self.topic
                    )
                } else {
                    format!("kafka delivery failed: {e}")
                });
                s.failed.push((seq, msg.detach()));
            }
        }
    }
}

/// Why a message can never be delivered as it is, if that is what the error says: the
/// message itself is at fault, not the broker's state, so retrying cannot help.
fn refused_for_good(e: &KafkaError) -> Option<String> {
    match e {
        KafkaError::MessageProduction(
            code @ (RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidRecord),
        ) => Some(format!("kafka refuses this message for good: {code}")),
        _ => None,
    }
}

/// Sends sampled records to a Kafka topic.
pub struct KafkaSink {
    producer: Arc<ThreadedProducer<Context>>,
    inflight: Arc<Mutex<Inflight>>,
    topic: String,
    encoder: Encoder,
    /// Every entry up to here has all its messages handed to the producer.
    written: Seq,
    /// Records of entry `.0` before index `.1` are already handed over (a write that
    /// failed half-way resumes there, so nothing is produced twice).
    resume: (Seq, usize),
    buf: Vec<u8>,
    /// Where messages that can never be delivered go; without it they are retried.
    dead_letters: Option<DeadLetters>,
    /// Settings as reloaded: field selections change at the next write.
    settings: Option<tokio::sync::watch::Receiver<Option<ReloadedSettings>>>,
}

impl KafkaSink {
    /// Creates the producer (it connects in the background: a broker that is down delays
    /// records, it does not stop the collector). Settings must have been validated.
    pub fn new(
        cfg: &RealtimeConfig,
        kafka: &KafkaConfig,
        client_id: &str,
    ) -> Result<KafkaSink, KafkaSinkError> {
        let encoder = Encoder::new(cfg)
            .map_err(|n| KafkaSinkError::Config(format!("unknown field {n:?}")))?;
        let mut cc = ClientConfig::new();
        for (k, v) in kafka.client_properties(client_id) {
            cc.set(k, v);
        }
        let inflight = Arc::new(Mutex::new(Inflight::default()));
        let producer: ThreadedProducer<Context> = cc.create_with_context(Context {
            inflight: inflight.clone(),
            topic: kafka.topic.clone(),
        })?;
        let producer = Arc::new(producer);
        check_topic(producer.clone(), kafka.topic.clone(), inflight.clone());
        Ok(KafkaSink {
            producer,
            inflight,
            topic: kafka.topic.clone(),
            encoder,
            written: 0,
            resume: (0, 0),
            buf: Vec::with_capacity(2048),
            dead_letters: None,
            settings: None,
        })
    }

    /// Moves messages that can never be delivered (too large, refused by the broker for
    /// good) to `dead_letters` instead of retrying them forever.
    pub fn with_dead_letters(mut self, dead_letters: DeadLetters) -> Self {
        self.dead_letters = Some(dead_letters);
        self
    }

    /// Follows reloaded settings: field selections change without a restart (the format
    /// and the broker's settings need one).
    pub fn with_reloads(
        mut self,
        settings: tokio::sync::watch::Receiver<Option<ReloadedSettings>>,
    ) -> Self {
        self.settings = Some(settings);
        self
    }

    /// Takes reloaded field selections, if any came.
    fn follow_reloads(&mut self) {
        let Some(rx) = &mut self.settings else {
            return;
        };
        if !rx.has_changed().unwrap_or(false) {
            return;
        }
        let reloaded = rx.borrow_and_update().clone();
        let Some(cfg) = reloaded
            .as_deref()
            .and_then(|a| a.downcast_ref::<RealtimeConfig>())
        else {
            return;
        };
        match Encoder::new(cfg) {
            Ok(e) if e.format() == self.encoder.format() => {
                if e != self.encoder {
                    tracing::info!(topic = %self.topic, "real-time field selections reloaded");
                }
                self.encoder = e;
            }
            Ok(_) => {
                tracing::warn!(topic = %self.topic, "the real-time message format changes only at a restart");
            }
            Err(e) => {
                tracing::warn!(topic = %self.topic, error = %e, "real-time fields refused on reload")
            }
        }
    }

    fn headers(&self, rate: f64, sel: &Selection) -> OwnedHeaders {
        let rate = rate.to_string();
        let version = SCHEMA_VERSION.to_string();
        let format = self.encoder.format();
        let h = OwnedHeaders::new_with_capacity(4)
            .insert(Header {
                key: HEADER_SAMPLE_RATE,
                value: Some(rate.as_str()),
            })
            .insert(Header {
                key: HEADER_SCHEMA_VERSION,
                value: Some(version.as_str()),
            })
            .insert(Header {
                key: HEADER_FORMAT,
                value: Some(format.as_str()),
            });
        if format == MessageFormat::Tsv {
            h.insert(Header {
                key: HEADER_FIELDS,
                value: Some(sel.columns()),
            })
        } else {
            h
        }
    }

    /// Hands one message to the producer, waiting while its queue is full. `Ok(Err(why))`:
    /// the message can never be delivered (it was not handed over).
    async fn produce(
        &self,
        seq: Seq,
        timestamp_ms: i64,
        key: &[u8],
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<Result<(), String>, SinkError> {
        *lock(&self.inflight).outstanding.entry(seq).or_default() += 1;
        let mut headers = Some(headers);
        loop {
            let mut record = BaseRecord::with_opaque_to(&self.topic, seq as usize)
                .key(key)
                .payload(payload)
                .timestamp(timestamp_ms);
            if let Some(h) = headers.take() {
                record = record.headers(h);
            }
            match self.producer.send(record) {
                Ok(()) => return Ok(Ok(())),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // Backpressure: librdkafka's thread drains the queue meanwhile.
                    headers = back.headers;
                    metrics::counter!("edgelog_kafka_queue_full_total").increment(1);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => {
                    lock(&self.inflight).done(seq);
                    if self.dead_letters.is_some()
                        && let Some(why) = refused_for_good(&e)
                    {
                        return Ok(Err(why));
                    }
                    return Err(SinkError::misconfigured(format!(
                        "cannot produce to kafka topic {}",
                        self.topic
                    ))
                    .with_source(e));
                }
            }
        }
    }

    /// Produces again what failed to be delivered; moves what the broker refused for good
    /// to the dead letters.
    async fn resend_failed(&mut self) -> Result<(), SinkError> {
        self.dead_letter_refused()?;
        let failed = std::mem::take(&mut lock(&self.inflight).failed);
        let mut it = failed.into_iter();
        while let Some((seq, msg)) = it.next() {
            {
                // The failed try still counts as in flight; this try replaces it.
                let mut s = lock(&self.inflight);
                if let Some(n) = s.outstanding.get_mut(&seq) {
                    *n -= 1;
                }
            }
            let headers = msg.headers().cloned().unwrap_or_else(OwnedHeaders::new);
            let r = self
                .produce(
                    seq,
                    msg.timestamp().to_millis().unwrap_or(0),
                    msg.key().unwrap_or_default(),
                    msg.payload().unwrap_or_default(),
                    headers,
                )
                .await;
            let why = match r {
                Ok(Ok(())) => continue,
                Ok(Err(why)) => why,
                Err(e) => {
                    let mut s = lock(&self.inflight);
                    *s.outstanding.entry(seq).or_default() += 1;
                    s.failed.push((seq, msg));
                    s.failed.extend(it);
                    return Err(e);
                }
            };
            // Refused at once this time: as if the broker had refused it.
            let mut s = lock(&self.inflight);
            *s.outstanding.entry(seq).or_default() += 1;
            s.refused.push((seq, msg, why));
            s.failed.extend(it);
            drop(s);
            return self.dead_letter_refused();
        }
        Ok(())
    }

    /// Stores the messages refused for good as dead letters; they are then out of flight.
    fn dead_letter_refused(&mut self) -> Result<(), SinkError> {
        let refused = std::mem::take(&mut lock(&self.inflight).refused);
        if refused.is_empty() {
            return Ok(());
        }
        let Some(dl) = &self.dead_letters else {
            let why = refused.first().map(|r| r.2.clone()).unwrap_or_default();
            lock(&self.inflight).refused = refused;
            return Err(SinkError::misconfigured(why));
        };
        let mut it = refused.into_iter();
        while let Some((seq, msg, why)) = it.next() {
            let payload = msg.payload().unwrap_or_default();
            if let Err(e) = dl.put_message(seq, "refused_by_kafka", &why, payload) {
                let mut s = lock(&self.inflight);
                s.refused.push((seq, msg, why));
                s.refused.extend(it);
                return Err(e);
            }
            lock(&self.inflight).done(seq);
        }
        Ok(())
    }

    /// An error to show while messages wait and the last report was a failure.
    fn health(&self) -> Result<(), SinkError> {
        let s = lock(&self.inflight);
        match &s.error {
            Some(e)
                if !s.outstanding.is_empty() || !s.failed.is_empty() || !s.refused.is_empty() =>
            {
                Err(SinkError::unavailable(e.clone()))
            }
            _ => Ok(()),
        }
    }
}

/// Says clearly, early, when the topic does not exist (brokers that do not create topics
/// would otherwise hold messages until librdkafka gives up on the metadata).
fn check_topic(
    producer: Arc<ThreadedProducer<Context>>,
    topic: String,
    inflight: Arc<Mutex<Inflight>>,
) {
    std::thread::spawn(move || {
        match producer
            .client()
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
        {
            Ok(md) => {
                let missing = md
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .is_none_or(|t| t.error().is_some() || t.partitions().is_empty());
                if missing {
                    let msg = format!(
                        "kafka topic {topic} does not exist; create it (the brokers do not create topics on first use)"
                    );
                    tracing::error!(%topic, "{msg}");
                    lock(&inflight).error = Some(msg);
                }
            }
            Err(e) => {
                tracing::warn!(%topic, error = %e, "cannot read kafka metadata yet; records wait in the write-ahead log")
            }
        }
    });
}

#[async_trait]
impl Sink for KafkaSink {
    async fn write(&mut self, batch: &Batch<'_>) -> Result<(), SinkError> {
        let seq = batch.seq();
        if seq <= self.written {
            return Ok(());
        }
        // Between entries only: an entry resumed half-way keeps the fields it began with.
        if self.resume.0 != seq {
            self.follow_reloads();
        }
        self.resend_failed().await?;
        let start = if self.resume.0 == seq {
            self.resume.1
        } else {
            0
        };
        for Kept {
            index: i,
            record: r,
            rate,
        } in batch.records().filter(|k| k.index >= start)
        {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            let sel = self.encoder.selection(&r.distribution_id);
            sel.encode(self.encoder.format(), r, &mut buf);
            let headers = self.headers(rate, sel);
            // The message's timestamp is when the collector logged (and acknowledged) it.
            let result = self
                .produce(
                    seq,
                    batch.appended_ms() as i64,
                    r.distribution_id.as_bytes(),
                    &buf,
                    headers,
                )
                .await;
            let stored = match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(why)) => match &self.dead_letters {
                    Some(dl) => {
                        let why = format!("{why}; the message has {} bytes", buf.len());
                        dl.put(seq, "message_too_large", &why, &[r])
                    }
                    None => Err(SinkError::misconfigured(why)),
                },
                Err(e) => Err(e),
            };
            self.buf = buf;
            if let Err(e) = stored {
                self.resume = (seq, i);
                return Err(e);
            }
        }
        self.written = seq;
        Ok(())
    }

    async fn tick(&mut self) -> Result<(), SinkError> {
        self.resend_failed().await?;
        self.health()
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.resend_failed().await?;
        let p = self.producer.clone();
        let flushed = tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(5)))
            .await
            .map_err(|e| SinkError::unavailable("kafka flush task failed").with_source(e))?;
        self.resend_failed().await?;
        let waiting: usize = lock(&self.inflight).outstanding.values().sum();
        match flushed {
            Ok(()) if waiting == 0 => Ok(()),
            Ok(()) => Err(SinkError::unavailable(format!(
                "{waiting} kafka messages not delivered yet"
            ))),
            Err(e) => Err(SinkError::unavailable(format!(
                "{waiting} kafka messages not delivered yet"
            ))
            .with_source(e)),
        }
    }

    fn delivered(&self) -> Seq {
        let s = lock(&self.inflight);
        match s.outstanding.keys().next() {
            Some(first) => self.written.min(first.saturating_sub(1)),
            None => self.written,
        }
    }
}
