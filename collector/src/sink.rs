//! The sink contract and the loop that feeds a sink from the write-ahead log.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use serde::Serialize;
use tokio::sync::watch;

use crate::wal::{Entry, Seq, Wal, WalReader};

/// Why a sink could not deliver.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The destination is unreachable or refused for now; retried with backoff.
    #[error("{0}")]
    Unavailable(String),
    /// The destination refuses in a way that needs an operator (authorization, a missing
    /// topic or bucket); still retried, since records must not be dropped.
    #[error("{0}")]
    Misconfigured(String),
}

/// A destination fed from the write-ahead log.
///
/// The loop hands entries in order; a sink may buffer them and reports, through
/// [`Sink::delivered`], the position at or below which everything is delivered. An
/// entry handed again after an error (or after a restart) must not be delivered twice
/// where the destination can tell.
#[async_trait]
pub trait Sink: Send {
    /// Takes one entry's records.
    async fn write(&mut self, entry: &Entry) -> Result<(), SinkError>;
    /// Delivers what time makes due (batch age); called about every second.
    async fn tick(&mut self) -> Result<(), SinkError>;
    /// Delivers everything buffered (on shutdown).
    async fn flush(&mut self) -> Result<(), SinkError>;
    /// Every entry at or below this position is delivered.
    fn delivered(&self) -> Seq;
    /// The loop saved `seq` as this sink's position: a restart resumes after it.
    fn cursor_saved(&mut self, _seq: Seq) {}
}

/// What `/readyz` and `/metrics` show of a sink.
#[derive(Debug, Default)]
pub struct SinkStatus {
    pub name: String,
    delivered: AtomicU64,
    degraded: AtomicBool,
    /// Append time (ms) of the oldest entry the sink holds undelivered; 0 when none.
    oldest_pending_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A snapshot of [`SinkStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct SinkReport {
    pub name: String,
    pub delivered: Seq,
    pub lag_entries: u64,
    pub lag_seconds: f64,
    pub degraded: bool,
    pub last_error: Option<String>,
}

impl SinkStatus {
    pub fn new(name: &str) -> SinkStatus {
        SinkStatus {
            name: name.to_owned(),
            ..SinkStatus::default()
        }
    }

    pub fn report(&self, committed: Seq, now_ms: u64) -> SinkReport {
        let delivered = self.delivered.load(Ordering::Relaxed);
        let oldest = self.oldest_pending_ms.load(Ordering::Relaxed);
        SinkReport {
            name: self.name.clone(),
            delivered,
            lag_entries: committed.saturating_sub(delivered),
            lag_seconds: if oldest == 0 {
                0.0
            } else {
                now_ms.saturating_sub(oldest) as f64 / 1000.0
            },
            degraded: self.degraded.load(Ordering::Relaxed),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }

    pub(crate) fn set_error(&self, e: Option<&SinkError>) {
        self.degraded.store(e.is_some(), Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = e.map(ToString::to_string);
        }
    }
}

/// How a sink loop behaves.
#[derive(Debug, Clone)]
pub struct LoopSettings {
    /// How often `tick` is called.
    pub tick: Duration,
    /// How often the delivered position is saved, at most.
    pub cursor_interval: Duration,
    /// How long draining may take once shutdown begins.
    pub drain_timeout: Duration,
    /// Entries read from the log at a time.
    pub read_batch: usize,
}

impl Default for LoopSettings {
    fn default() -> Self {
        LoopSettings {
            tick: Duration::from_millis(500),
            cursor_interval: Duration::from_millis(200),
            drain_timeout: Duration::from_secs(30),
            read_batch: 4,
        }
    }
}

fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Runs one sink until shutdown: reads the log from the sink's cursor, hands entries
/// over, retries failures with backoff (forever, while not draining), saves the cursor.
pub async fn run_sink(
    mut sink: Box<dyn Sink>,
    wal: Wal,
    status: Arc<SinkStatus>,
    mut shutdown: watch::Receiver<bool>,
    settings: LoopSettings,
) {
    let name = status.name.clone();
    let mut reader: Option<WalReader> = Some(wal.reader(&name));
    let mut saved = reader
        .as_ref()
        .map_or(0, |r| r.position().saturating_sub(1));
    status.delivered.store(saved, Ordering::Relaxed);
    let mut last_save = Instant::now();
    let mut last_tick = Instant::now();
    let mut drain_deadline: Option<Instant> = None;
    // (seq, appended_ms) of entries handed over but not yet delivered.
    let mut pending: std::collections::VecDeque<(Seq, u64)> = Default::default();

    while let Some(mut r) = reader.take() {
        let draining = *shutdown.borrow();
        if draining && drain_deadline.is_none() {
            drain_deadline = Some(Instant::now() + settings.drain_timeout);
        }
        if draining && r.caught_up() {
            break;
        }
        let until_tick = settings.tick.saturating_sub(last_tick.elapsed());
        let has_data = tokio::select! {
            biased;
            ready = r.wait() => ready,
            () = tokio::time::sleep(until_tick) => false,
            _ = shutdown.changed(), if !draining => false,
        };
        let mut ok = true;
        if has_data {
            let batch_size = settings.read_batch;
            let Ok((back, batch)) = tokio::task::spawn_blocking(move || {
                let b = r.read_available(batch_size);
                (r, b)
            })
            .await
            else {
                tracing::error!(sink = %name, "log reader task panicked");
                break;
            };
            r = back;
            match batch {
                Ok(entries) => {
                    for e in &entries {
                        pending.push_back((e.seq, e.appended_ms));
                        ok = retry(&name, &status, drain_deadline, sink.as_mut(), Op::Write(e))
                            .await;
                        if !ok {
                            break;
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(sink = %name, error = %e, "cannot read the write-ahead log");
                    status.set_error(Some(&SinkError::Unavailable(e.to_string())));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        // Ticks run even under sustained load, so batch ages are honoured.
        if ok && last_tick.elapsed() >= settings.tick {
            ok = retry(&name, &status, drain_deadline, sink.as_mut(), Op::Tick).await;
            last_tick = Instant::now();
        }

        let delivered = sink.delivered();
        while pending.front().is_some_and(|(s, _)| *s <= delivered) {
            pending.pop_front();
        }
        status
            .oldest_pending_ms
            .store(pending.front().map_or(0, |p| p.1), Ordering::Relaxed);
        if delivered > saved && last_save.elapsed() >= settings.cursor_interval {
            save_cursor(&wal, &name, delivered, &status, &mut saved);
            sink.cursor_saved(saved);
            last_save = Instant::now();
        }
        if !ok || drain_deadline.is_some_and(|d| Instant::now() > d) {
            // Past the deadline: what is undelivered stays in the log for next time.
            tracing::warn!(sink = %name, "drain timed out; undelivered records stay in the write-ahead log");
            break;
        }
        reader = Some(r);
    }

    if retry(
        &name,
        &status,
        drain_deadline.or(Some(Instant::now() + settings.drain_timeout)),
        sink.as_mut(),
        Op::Flush,
    )
    .await
    {
        tracing::info!(sink = %name, delivered = sink.delivered(), "sink flushed");
    }
    save_cursor(&wal, &name, sink.delivered(), &status, &mut saved);
}

#[derive(Clone, Copy)]
enum Op<'a> {
    Write(&'a Entry),
    Tick,
    Flush,
}

fn save_cursor(wal: &Wal, name: &str, delivered: Seq, status: &SinkStatus, saved: &mut Seq) {
    if delivered <= *saved {
        return;
    }
    match wal.commit_cursor(name, delivered) {
        Ok(()) => {
            *saved = delivered;
            status.delivered.store(delivered, Ordering::Relaxed);
        }
        Err(e) => tracing::error!(sink = %name, error = %e, "cannot save the sink position"),
    }
}

/// Calls `f` until it succeeds, backing off between tries; gives up only past the
/// drain deadline. Returns whether it succeeded.
async fn retry(
    name: &str,
    status: &SinkStatus,
    deadline: Option<Instant>,
    sink: &mut dyn Sink,
    op: Op<'_>,
) -> bool {
    let mut delays = backoff();
    loop {
        let result = match op {
            Op::Write(e) => sink.write(e).await,
            Op::Tick => sink.tick().await,
            Op::Flush => sink.flush().await,
        };
        match result {
            Ok(()) => {
                if status.degraded.load(Ordering::Relaxed) {
                    tracing::info!(sink = %name, "sink recovered");
                    status.set_error(None);
                }
                return true;
            }
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(30));
                tracing::warn!(sink = %name, error = %e, retry_in_ms = delay.as_millis() as u64, "sink delivery failed");
                metrics::counter!("edgelog_sink_errors_total", "sink" => name.to_owned())
                    .increment(1);
                status.set_error(Some(&e));
                if deadline.is_some_and(|d| Instant::now() + delay > d) {
                    return false;
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}
