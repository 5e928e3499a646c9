//! The sink contract and the loop that feeds a sink from the write-ahead log.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use serde::Serialize;
use tokio::sync::watch;

pub use crate::batch::{Batch, Kept, Sampler};
use crate::bus::Bus;
use crate::dead_letter::DeadLetters;
use crate::wal::{Seq, Wal, WalReader};

/// What kind of failure a [`SinkError`] is; both are retried, since records must not be
/// dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SinkErrorKind {
    /// The destination is unreachable or refused for now.
    Unavailable,
    /// The destination refuses in a way that needs an operator (authorization, a missing
    /// topic or bucket, a record it can never take).
    Misconfigured,
}

/// Why a sink could not deliver: a kind, what was being done, and the cause.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    kind: SinkErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl SinkError {
    /// The destination is unreachable or refused for now; retried with backoff.
    pub fn unavailable(message: impl Into<String>) -> SinkError {
        SinkError {
            kind: SinkErrorKind::Unavailable,
            message: message.into(),
            source: None,
        }
    }

    /// The destination needs an operator; still retried.
    pub fn misconfigured(message: impl Into<String>) -> SinkError {
        SinkError {
            kind: SinkErrorKind::Misconfigured,
            message: message.into(),
            source: None,
        }
    }

    /// Keeps `source` as the cause; the message (shown in logs and `/readyz`) ends with
    /// it.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.message = format!("{}: {source}", self.message);
        self.source = Some(Box::new(source));
        self
    }

    pub fn kind(&self) -> SinkErrorKind {
        self.kind
    }
}

/// A destination fed from the write-ahead log.
///
/// The loop hands entries in order, sampled for this sink; a sink may buffer them and
/// reports, through [`Sink::delivered`], the position at or below which everything is
/// delivered. An entry handed again after an error (or after a restart) must not be
/// delivered twice where the destination can tell.
#[async_trait]
pub trait Sink: Send {
    /// Takes one entry's records (possibly none: the position still moves).
    async fn write(&mut self, batch: &Batch<'_>) -> Result<(), SinkError>;
    /// Delivers what time makes due (batch age); called every `LoopSettings::tick` (500 ms).
    async fn tick(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    /// Delivers everything buffered (on shutdown).
    async fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    /// Every entry at or below this position is delivered.
    fn delivered(&self) -> Seq;
    /// The loop saved `seq` as this sink's position: a restart resumes after it.
    fn cursor_saved(&mut self, _seq: Seq) {}
}

/// What a sink's config gets to build the sink.
#[derive(Clone)]
pub struct SinkContext {
    /// The sink's name: its log position, sampling rates, metrics and dead letters.
    pub name: String,
    pub collector_id: String,
    pub data_dir: PathBuf,
    /// Where records the destination can never take go.
    pub dead_letters: DeadLetters,
    /// The in-process stream (for sinks that feed the dashboard or a local tail).
    pub bus: Bus,
    /// The sink's settings after each reload (its own [`SinkConfig`] type, validated),
    /// for a sink that changes some of them without a restart.
    pub settings: watch::Receiver<Option<ReloadedSettings>>,
}

/// A sink's settings as reloaded: its [`SinkConfig`] type, to downcast.
pub type ReloadedSettings = Arc<dyn std::any::Any + Send + Sync>;

/// A sink's configuration: it builds the sink. Adding a destination is a module with one
/// of these plus one variant in the binary's sink enum.
pub trait SinkConfig {
    /// Builds the sink; `Err` says why it cannot start (in words for the operator).
    fn build(&self, cx: &SinkContext) -> Result<Box<dyn Sink>, SinkError>;
    /// Where it delivers, for the start-up log line.
    fn describe(&self, cx: &SinkContext) -> String;
    /// Whether it is switched on.
    fn enabled(&self) -> bool {
        true
    }
    /// Checks the settings; `key` is the config path (`sinks.NAME`) errors start with.
    fn validate(&self, key: &str) -> Result<(), String>;
    /// Where it writes, if anywhere of its own: no two sinks may share a place, and a
    /// local one may not be inside edgelog's own directories of the data dir.
    fn place(&self) -> Option<Place> {
        None
    }
}

/// Where a sink writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A path (relative: under the data dir), set by the setting `key` (`path`, `prefix`).
    Local { key: &'static str, path: PathBuf },
    /// Anywhere else, named so that equal names are the same place (`s3://...`).
    Remote { key: &'static str, name: String },
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
    dead_letters: Option<DeadLetters>,
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
    /// Records moved to the dead-letter store since start.
    pub dead_letters: u64,
}

impl SinkStatus {
    pub fn new(name: &str) -> SinkStatus {
        SinkStatus {
            name: name.to_owned(),
            ..SinkStatus::default()
        }
    }

    /// A status that also reports the sink's dead letters.
    pub fn with_dead_letters(name: &str, dead_letters: Option<DeadLetters>) -> SinkStatus {
        SinkStatus {
            name: name.to_owned(),
            dead_letters,
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
            dead_letters: self.dead_letters.as_ref().map_or(0, DeadLetters::records),
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
    /// Sampling rates that may change (a reload): the sampler is made again from them
    /// before the next entry. `None`: the sampler given stays.
    pub sampling: Option<watch::Receiver<edgelog_record::SamplingConfig>>,
}

impl Default for LoopSettings {
    fn default() -> Self {
        LoopSettings {
            tick: Duration::from_millis(500),
            cursor_interval: Duration::from_millis(200),
            drain_timeout: Duration::from_secs(30),
            read_batch: 4,
            sampling: None,
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
///
/// `shutdown` turns to the drain deadline when shutdown begins: the loop delivers what it
/// can until then, and gives up at it whatever the sink is doing (a call under way is
/// dropped); what is undelivered stays in the log for the next start.
pub async fn run_sink(
    mut sink: Box<dyn Sink>,
    mut sampler: Sampler,
    wal: Wal,
    status: Arc<SinkStatus>,
    mut shutdown: watch::Receiver<Option<Instant>>,
    settings: LoopSettings,
) {
    let name = status.name.clone();
    let mut sampling = settings.sampling.clone();
    if let Some(rx) = &mut sampling {
        // Rates reloaded before this task began count too.
        sampler = Sampler::new(&rx.borrow_and_update(), &name);
    }
    let reader = wal.reader(&name);
    let mut saved = reader.position().saturating_sub(1);
    // The next entry the sink has not been handed.
    let mut next = reader.position();
    let mut ahead = Prefetch::start(reader, settings.read_batch, name.clone());
    status.delivered.store(saved, Ordering::Relaxed);
    let mut last_save = Instant::now();
    let mut last_tick = Instant::now();
    let mut drain = Drain {
        deadline: None,
        shutdown: &mut shutdown,
    };
    // (seq, appended_ms) of entries handed over but not yet delivered.
    let mut pending: std::collections::VecDeque<(Seq, u64)> = Default::default();
    let mut timed_out = false;

    loop {
        drain.check();
        let draining = drain.deadline.is_some();
        if draining && (next > wal.committed() || ahead.ended) {
            break;
        }
        let until_tick = settings.tick.saturating_sub(last_tick.elapsed());
        let read = tokio::select! {
            biased;
            read = ahead.rx.recv(), if !ahead.ended => read,
            () = tokio::time::sleep(until_tick) => None,
            changed = drain.shutdown.changed(), if !draining => {
                // The collector is gone without a word: stop now (this would spin).
                if changed.is_err() {
                    drain.deadline = Some(Instant::now());
                }
                None
            }
        };
        let mut ok = true;
        match read {
            Some(Ok(entries)) => {
                for e in &entries {
                    next = e.seq + 1;
                    pending.push_back((e.seq, e.appended_ms));
                    if let Some(rx) = &mut sampling
                        && rx.has_changed().unwrap_or(false)
                    {
                        sampler = Sampler::new(&rx.borrow_and_update(), &name);
                        tracing::info!(sink = %name, from_seq = e.seq, "sampling rates changed");
                    }
                    let batch = sampler.batch(e);
                    ok = retry(&name, &status, &mut drain, sink.as_mut(), Op::Write(&batch)).await;
                    if !ok {
                        break;
                    }
                }
            }
            Some(Err(e)) => {
                tracing::error!(sink = %name, error = %e, "cannot read the write-ahead log");
                status.set_error(Some(
                    &SinkError::unavailable("cannot read the write-ahead log").with_source(e),
                ));
            }
            None => ahead.ended = ahead.ended || ahead.rx.is_closed() && ahead.rx.is_empty(),
        }
        // Ticks run even under sustained load, so batch ages are honoured.
        if ok && last_tick.elapsed() >= settings.tick {
            ok = retry(&name, &status, &mut drain, sink.as_mut(), Op::Tick).await;
            last_tick = Instant::now();
        }

        if ahead.panicked.load(Ordering::Relaxed) {
            // Said after every tick, which would clear it.
            status.set_error(Some(&SinkError::unavailable(
                "the log reader stopped; restart the collector",
            )));
        }
        let delivered = sink.delivered();
        while pending.front().is_some_and(|(s, _)| *s <= delivered) {
            pending.pop_front();
        }
        status
            .oldest_pending_ms
            .store(pending.front().map_or(0, |p| p.1), Ordering::Relaxed);
        if delivered > saved && last_save.elapsed() >= settings.cursor_interval {
            save_cursor(&wal, &name, delivered, &status, &mut saved).await;
            sink.cursor_saved(saved);
            last_save = Instant::now();
        }
        if !ok || drain.deadline.is_some_and(|d| Instant::now() >= d) {
            timed_out = true;
            break;
        }
    }
    drop(ahead);

    if drain.deadline.is_none() {
        drain.deadline = Some(Instant::now() + settings.drain_timeout);
    }
    if !timed_out && retry(&name, &status, &mut drain, sink.as_mut(), Op::Flush).await {
        tracing::info!(sink = %name, delivered = sink.delivered(), "sink flushed");
    } else {
        // Past the deadline: what is undelivered stays in the log for next time.
        tracing::warn!(
            sink = %name, delivered = sink.delivered(), committed = wal.committed(),
            "drain timed out; undelivered records stay in the write-ahead log for the next start"
        );
    }
    save_cursor(&wal, &name, sink.delivered(), &status, &mut saved).await;
}

/// Batches read ahead of a sink (each at most `read_batch` entries and about
/// [`READ_RECORDS`](crate::wal::READ_RECORDS) records): one was not enough to
/// keep a lagging standard sink busy.
const READ_AHEAD: usize = 2;

/// Reads the log ahead of the sink, on the blocking pool, so that decoding
/// entries from disk (when the sink lags behind) overlaps the sink's own work. Holds at
/// most [`READ_AHEAD`] batches beyond the one the sink is on.
struct Prefetch {
    rx: tokio::sync::mpsc::Receiver<Result<Vec<crate::wal::Entry>, crate::wal::WalError>>,
    /// The reader has stopped: the log is closed and every entry was read (or the reader
    /// panicked, which it logged).
    ended: bool,
    /// The reader panicked: nothing more reaches the sink until a restart.
    panicked: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Prefetch {
    fn start(mut r: WalReader, batch: usize, name: String) -> Prefetch {
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
        let panicked = Arc::new(AtomicBool::new(false));
        let failed = panicked.clone();
        let task = tokio::spawn(async move {
            loop {
                // Room for the batch first: no more than READ_AHEAD are read ahead.
                let Ok(permit) = tx.reserve().await else {
                    return;
                };
                if !r.wait().await {
                    return;
                }
                let Ok((back, read)) = tokio::task::spawn_blocking(move || {
                    let b = r.read_available(batch);
                    (r, b)
                })
                .await
                else {
                    tracing::error!(sink = %name, "log reader task panicked");
                    failed.store(true, Ordering::Relaxed);
                    return;
                };
                r = back;
                let failed = read.is_err();
                permit.send(read);
                if failed {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
        Prefetch {
            rx,
            ended: false,
            panicked,
            task,
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The drain deadline, once shutdown has begun.
struct Drain<'a> {
    deadline: Option<Instant>,
    shutdown: &'a mut watch::Receiver<Option<Instant>>,
}

impl Drain<'_> {
    /// Takes the deadline if shutdown has begun.
    fn check(&mut self) {
        if self.deadline.is_none() {
            self.deadline = *self.shutdown.borrow_and_update();
        }
    }

    /// Resolves when shutdown begins (at once if it has), with its deadline.
    async fn started(&mut self) -> Instant {
        loop {
            self.check();
            if let Some(d) = self.deadline {
                return d;
            }
            if self.shutdown.changed().await.is_err() {
                // The collector is gone without a word: stop now.
                let now = Instant::now();
                self.deadline = Some(now);
                return now;
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Op<'a> {
    Write(&'a Batch<'a>),
    Tick,
    Flush,
}

async fn save_cursor(wal: &Wal, name: &str, delivered: Seq, status: &SinkStatus, saved: &mut Seq) {
    if delivered <= *saved {
        return;
    }
    let (w, n) = (wal.clone(), name.to_owned());
    let result = tokio::task::spawn_blocking(move || w.commit_cursor(&n, delivered)).await;
    match result {
        Ok(Ok(())) => {
            *saved = delivered;
            status.delivered.store(delivered, Ordering::Relaxed);
        }
        Ok(Err(e)) => tracing::error!(sink = %name, error = %e, "cannot save the sink position"),
        Err(e) => tracing::error!(sink = %name, error = %e, "saving the sink position panicked"),
    }
}

async fn call(sink: &mut dyn Sink, op: Op<'_>) -> Result<(), SinkError> {
    match op {
        Op::Write(e) => sink.write(e).await,
        Op::Tick => sink.tick().await,
        Op::Flush => sink.flush().await,
    }
}

/// Calls the sink until it succeeds, backing off between tries (forever while not
/// draining). Once shutdown has begun, neither a try nor a wait outlasts the drain
/// deadline: past it, the call under way is dropped. Returns whether it succeeded.
async fn retry(
    name: &str,
    status: &SinkStatus,
    drain: &mut Drain<'_>,
    sink: &mut dyn Sink,
    op: Op<'_>,
) -> bool {
    let mut delays = backoff();
    loop {
        let result = {
            let mut attempt = std::pin::pin!(call(sink, op));
            loop {
                drain.check();
                match drain.deadline {
                    Some(d) => match tokio::time::timeout_at(d.into(), &mut attempt).await {
                        Ok(r) => break r,
                        Err(_) => return false,
                    },
                    None => tokio::select! {
                        r = &mut attempt => break r,
                        _ = drain.started() => {}
                    },
                }
            }
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
                drain.check();
                match drain.deadline {
                    // Draining: keep trying until the deadline, at shorter waits if need
                    // be, so a destination back within the budget still gets the records.
                    Some(d) => {
                        let left = d.saturating_duration_since(Instant::now());
                        if left < Duration::from_millis(100) {
                            return false;
                        }
                        tokio::time::sleep(delay.min(left / 2)).await;
                    }
                    None => tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        // Shutdown began: one more try right away, within the deadline.
                        _ = drain.started() => {}
                    },
                }
            }
        }
    }
}
