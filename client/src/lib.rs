//! Deliver request records to an edgelog collector.
//!
//! Two levels:
//! - [`Client`]: hand it records; it queues them (bounded in bytes), batches them by count,
//!   bytes and age, compresses, posts with retries (jittered backoff, `Retry-After`), and
//!   optionally spools what the collector cannot take to disk. When the queue is full it
//!   either waits ([`Overflow::Block`], back-pressure) or drops and counts
//!   ([`Overflow::Drop`]). [`Client::shutdown`] flushes.
//! - [`Poster`]: one batch, retried until answered; for callers that keep their own
//!   position (a log shipper saves its offsets only after an answer).
//!
//! ```no_run
//! # async fn f() -> Result<(), edgelog_client::ClientError> {
//! use edgelog_client::{Client, ClientConfig};
//! let client = Client::new(ClientConfig::new("http://127.0.0.1:8080").token("secret"))?;
//! let mut rec = edgelog_record::Record::default();
//! rec.timestamp_ms = 1_700_000_000_000;
//! rec.distribution_id = "E2EXAMPLE".into();
//! rec.sc_status = Some(200);
//! client.send(&rec).await?;
//! let stats = client.shutdown().await;
//! assert_eq!(stats.acked, 1);
//! # Ok(()) }
//! ```

mod error;
mod post;
mod spool;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use edgelog_record::{Record, write_json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

pub use error::{ClientError, ErrorKind};
pub use post::{
    Answer, Batch, Compression, Format, Poster, PosterBuilder, RefusedLine, Retry, compress,
};
pub use spool::Spool;

/// What to do with a record when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// `send` waits for room: the caller slows down to the collector's pace.
    #[default]
    Block,
    /// `send` returns [`ErrorKind::QueueFull`] at once and the record is counted as dropped.
    Drop,
}

/// Settings of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub url: String,
    pub token: Option<String>,
    pub compression: Compression,
    /// Time allowed for one try.
    pub timeout: Duration,
    pub retry: Retry,
    /// A batch is sent when it has this many records...
    pub batch_records: usize,
    /// ...or this many bytes of NDJSON...
    pub batch_bytes: usize,
    /// ...or its first record has waited this long.
    pub batch_age: Duration,
    /// Bytes of records queued or in flight, at most.
    pub queue_bytes: usize,
    pub overflow: Overflow,
    /// Batches in flight at once.
    pub concurrency: usize,
    /// Batches that exhaust their tries go here (directory, bound in bytes) and are resent
    /// from there; without a spool they are counted as failed.
    pub spool: Option<(PathBuf, u64)>,
    /// [`Client::shutdown`] waits this long for batches in flight; what is still
    /// unanswered then is counted as failed.
    pub shutdown_timeout: Duration,
}

impl ClientConfig {
    pub fn new(url: impl Into<String>) -> Self {
        ClientConfig {
            url: url.into(),
            token: None,
            compression: Compression::Gzip,
            timeout: Duration::from_secs(30),
            retry: Retry::default(),
            batch_records: 1000,
            batch_bytes: 1 << 20,
            batch_age: Duration::from_secs(1),
            queue_bytes: 16 << 20,
            overflow: Overflow::Block,
            concurrency: 2,
            spool: None,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
    pub fn token(mut self, t: impl Into<String>) -> Self {
        self.token = Some(t.into());
        self
    }
    pub fn spool(mut self, dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        self.spool = Some((dir.into(), max_bytes));
        self
    }
    pub fn overflow(mut self, o: Overflow) -> Self {
        self.overflow = o;
        self
    }
}

/// Counts since the client started.
#[derive(Debug, Default)]
struct Counters {
    queued: AtomicU64,
    acked: AtomicU64,
    refused: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    spooled: AtomicU64,
    duplicates: AtomicU64,
    oversized: AtomicU64,
    retries: AtomicU64,
    batches: AtomicU64,
    /// Records queued whose batch is not resolved yet.
    unresolved: AtomicU64,
}

/// A snapshot of a client's counts, in records (batches and retries in requests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Taken by `send`.
    pub queued: u64,
    /// Accepted by the collector (spooled records once resent).
    pub acked: u64,
    /// Refused by the collector, line by line or as a whole batch.
    pub refused: u64,
    /// Dropped because the queue was full (`Overflow::Drop`).
    pub dropped: u64,
    /// Given up on: tries exhausted and no spool, or the spool full.
    pub failed: u64,
    /// Written to the spool (some may since have been resent and acked).
    pub spooled: u64,
    /// Acknowledged earlier already (the collector recognized the batch's key).
    pub duplicates: u64,
    /// Bigger than the whole queue: never sendable.
    pub oversized: u64,
    pub retries: u64,
    pub batches: u64,
}

impl Counters {
    fn snapshot(&self) -> Stats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            queued: g(&self.queued),
            acked: g(&self.acked),
            refused: g(&self.refused),
            dropped: g(&self.dropped),
            failed: g(&self.failed),
            spooled: g(&self.spooled),
            duplicates: g(&self.duplicates),
            oversized: g(&self.oversized),
            retries: g(&self.retries),
            batches: g(&self.batches),
        }
    }
    fn answered(&self, a: &Answer) {
        self.acked.fetch_add(a.accepted, Ordering::Relaxed);
        self.refused.fetch_add(
            a.rejected_total.max(a.rejected.len() as u64),
            Ordering::Relaxed,
        );
        if a.duplicate {
            self.duplicates.fetch_add(a.accepted, Ordering::Relaxed);
        }
    }
}

enum Msg {
    Line(Bytes, OwnedSemaphorePermit),
    Flush(oneshot::Sender<()>),
}

/// Queues, batches and delivers records; see the crate docs.
pub struct Client {
    tx: mpsc::UnboundedSender<Msg>,
    room: Arc<Semaphore>,
    queue_bytes: usize,
    overflow: Overflow,
    counters: Arc<Counters>,
    worker: tokio::task::JoinHandle<()>,
    drainer: Option<tokio::task::JoinHandle<()>>,
    shutdown_timeout: Duration,
}

impl Client {
    /// Starts the client's tasks on the current Tokio runtime.
    pub fn new(cfg: ClientConfig) -> Result<Client, ClientError> {
        if cfg.batch_records == 0 || cfg.batch_bytes == 0 || cfg.concurrency == 0 {
            return Err(ClientError::invalid(
                "batch_records, batch_bytes and concurrency must be at least 1",
            ));
        }
        // Permits are taken per line as a u32.
        let max_queue = (u32::MAX as usize).min(Semaphore::MAX_PERMITS);
        if cfg.queue_bytes == 0 || cfg.queue_bytes > max_queue {
            return Err(ClientError::invalid(format!(
                "queue_bytes must be between 1 and {max_queue}"
            )));
        }
        if cfg.batch_age.is_zero() || cfg.batch_age > Duration::from_secs(3600) {
            return Err(ClientError::invalid(
                "batch_age must be between 1 ns and 1 h",
            ));
        }
        if cfg.shutdown_timeout > Duration::from_secs(86_400) {
            return Err(ClientError::invalid(
                "shutdown_timeout must be at most 1 day",
            ));
        }
        let mut b = Poster::builder(cfg.url.clone())
            .compression(cfg.compression)
            .retry(cfg.retry.clone())
            .timeout(cfg.timeout)
            .pool(cfg.concurrency);
        if let Some(t) = &cfg.token {
            b = b.token(t.clone());
        }
        let poster = b.build()?;
        let spool = match &cfg.spool {
            Some((dir, max)) => Some(Arc::new(Spool::open(dir, *max)?)),
            None => None,
        };
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = Worker {
            poster: poster.clone(),
            cfg: cfg.clone(),
            spool: spool.clone(),
            counters: counters.clone(),
            prefix: format!("c{:016x}", rand::random::<u64>()),
            next_key: 0,
        };
        let worker = tokio::spawn(worker.run(rx));
        let drainer = spool.map(|s| tokio::spawn(drain_spool(poster, s, counters.clone())));
        Ok(Client {
            tx,
            room: Arc::new(Semaphore::new(cfg.queue_bytes)),
            queue_bytes: cfg.queue_bytes,
            overflow: cfg.overflow,
            counters,
            worker,
            drainer,
            shutdown_timeout: cfg.shutdown_timeout,
        })
    }

    /// Queues a record (as one NDJSON line).
    pub async fn send(&self, rec: &Record) -> Result<(), ClientError> {
        let mut line = Vec::with_capacity(512);
        write_json(rec, &mut line);
        line.push(b'\n');
        self.send_line(Bytes::from(line)).await
    }

    /// Queues one NDJSON line (ending in `\n`), already encoded.
    pub async fn send_line(&self, line: Bytes) -> Result<(), ClientError> {
        if line.len() > self.queue_bytes {
            self.counters.oversized.fetch_add(1, Ordering::Relaxed);
            return Err(ClientError::invalid(format!(
                "a record of {} bytes does not fit a queue of {} bytes",
                line.len(),
                self.queue_bytes
            )));
        }
        let n = line.len() as u32;
        let permit = match self.overflow {
            Overflow::Block => self
                .room
                .clone()
                .acquire_many_owned(n)
                .await
                .map_err(|_| ClientError::closed())?,
            Overflow::Drop => match self.room.clone().try_acquire_many_owned(n) {
                Ok(p) => p,
                Err(_) => {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    return Err(ClientError::queue_full());
                }
            },
        };
        self.counters.unresolved.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Msg::Line(line, permit)).is_err() {
            self.counters.unresolved.fetch_sub(1, Ordering::Relaxed);
            return Err(ClientError::closed());
        }
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Sends what is queued and waits until every batch in flight is answered (or
    /// spooled, or given up on).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// Flushes, stops, and returns the final counts. Spooled batches stay on disk for the
    /// next start. Batches still unanswered after `shutdown_timeout` are given up and
    /// counted as failed.
    pub async fn shutdown(self) -> Stats {
        let done = tokio::time::timeout(self.shutdown_timeout, self.flush()).await;
        drop(self.tx);
        if done.is_err() {
            self.worker.abort();
            let left = self.counters.unresolved.swap(0, Ordering::Relaxed);
            self.counters.failed.fetch_add(left, Ordering::Relaxed);
            tracing::error!(
                records = left,
                "shutdown timed out: records in flight given up"
            );
        }
        let _ = self.worker.await;
        if let Some(d) = self.drainer {
            d.abort();
            // Its end releases the spool's lock, for the next client.
            let _ = d.await;
        }
        self.counters.snapshot()
    }
}

struct Worker {
    poster: Poster,
    cfg: ClientConfig,
    spool: Option<Arc<Spool>>,
    counters: Arc<Counters>,
    /// Keys are this prefix and a counter: a retry of a batch whose answer was lost is
    /// recognized by the collector.
    prefix: String,
    next_key: u64,
}

struct Open {
    body: BytesMut,
    records: u64,
    permits: Vec<OwnedSemaphorePermit>,
    deadline: tokio::time::Instant,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut open: Option<Open> = None;
        let mut inflight = JoinSet::new();
        loop {
            let deadline = open.as_ref().map(|o| o.deadline);
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Line(line, permit)) => {
                        let o = open.get_or_insert_with(|| Open {
                            body: BytesMut::with_capacity(self.cfg.batch_bytes.min(1 << 20)),
                            records: 0,
                            permits: Vec::new(),
                            deadline: tokio::time::Instant::now() + self.cfg.batch_age,
                        });
                        o.body.put_slice(&line);
                        o.records += 1;
                        o.permits.push(permit);
                        if o.records as usize >= self.cfg.batch_records || o.body.len() >= self.cfg.batch_bytes {
                            self.dispatch(open.take(), &mut inflight).await;
                        }
                    }
                    Some(Msg::Flush(done)) => {
                        self.dispatch(open.take(), &mut inflight).await;
                        while inflight.join_next().await.is_some() {}
                        let _ = done.send(());
                    }
                    None => {
                        self.dispatch(open.take(), &mut inflight).await;
                        while inflight.join_next().await.is_some() {}
                        return;
                    }
                },
                _ = sleep_until(deadline) => self.dispatch(open.take(), &mut inflight).await,
                Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
            }
        }
    }

    async fn dispatch(&mut self, open: Option<Open>, inflight: &mut JoinSet<()>) {
        let Some(o) = open else { return };
        while inflight.len() >= self.cfg.concurrency {
            inflight.join_next().await;
        }
        self.next_key += 1;
        let batch = Batch {
            body: o.body.freeze(),
            format: Format::Ndjson,
            distribution: None,
            records: o.records,
            key: Some(format!("{}-{}", self.prefix, self.next_key)),
        };
        let (poster, spool, counters) = (
            self.poster.clone(),
            self.spool.clone(),
            self.counters.clone(),
        );
        let permits = o.permits;
        inflight.spawn(async move {
            let mut retries = 0;
            let r = poster.post(&batch, &mut retries).await;
            counters.batches.fetch_add(1, Ordering::Relaxed);
            counters.retries.fetch_add(retries, Ordering::Relaxed);
            match r {
                Ok(a) => counters.answered(&a),
                Err(e) if e.kind == ErrorKind::Unavailable && spool.is_some() => {
                    let spool = spool.unwrap_or_else(|| unreachable!());
                    let b = batch.clone();
                    let pushed = tokio::task::spawn_blocking(move || spool.push(&b))
                        .await
                        .unwrap_or_else(|e| Err(ClientError::invalid(e.to_string())));
                    match pushed {
                        Ok(()) => {
                            counters.spooled.fetch_add(batch.records, Ordering::Relaxed);
                            tracing::warn!(records = batch.records, error = %e, "collector unavailable: batch spooled");
                        }
                        Err(s) => {
                            counters.failed.fetch_add(batch.records, Ordering::Relaxed);
                            tracing::error!(records = batch.records, error = %e, spool_error = %s, "batch lost: collector unavailable and spool refused it");
                        }
                    }
                }
                Err(e) => {
                    let field = if e.kind == ErrorKind::Refused {
                        &counters.refused
                    } else {
                        &counters.failed
                    };
                    field.fetch_add(batch.records, Ordering::Relaxed);
                    tracing::error!(records = batch.records, error = %e, "batch not delivered");
                }
            }
            counters
                .unresolved
                .fetch_sub(batch.records, Ordering::Relaxed);
            drop(permits);
        });
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Resends spooled batches, oldest first, with their keys; pauses while the collector
/// stays unavailable.
async fn drain_spool(poster: Poster, spool: Arc<Spool>, counters: Arc<Counters>) {
    loop {
        let s = spool.clone();
        let next = tokio::task::spawn_blocking(move || s.oldest())
            .await
            .ok()
            .flatten();
        let Some((path, batch)) = next else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let mut retries = 0;
        match poster.post(&batch, &mut retries).await {
            Ok(a) => {
                counters.answered(&a);
                if let Err(e) = spool.remove(&path) {
                    tracing::error!(error = %e, "cannot remove a delivered spooled batch");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
            Err(e) if e.kind == ErrorKind::Refused => {
                counters.refused.fetch_add(batch.records, Ordering::Relaxed);
                tracing::error!(path = %path.display(), error = %e, "spooled batch refused; set aside");
                if spool.set_aside(&path, "refused").is_err() {
                    let _ = spool.remove(&path);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "spool: collector still unavailable");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        counters.retries.fetch_add(retries, Ordering::Relaxed);
    }
}
