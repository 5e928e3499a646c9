//! The edgelog collector: receives request records over HTTP, makes them durable in a
//! write-ahead log before acknowledging, and feeds every sink from that log.
//!
//! It knows no S3 and no Kafka: sinks implement [`Sink`], and finished per-minute
//! aggregates go to a [`Publisher`] that the binary plugs in.

mod admin;
mod aggregator;
mod batch;
mod budget;
mod buffers;
pub mod bus;
mod config;
pub mod dead_letter;
mod ingest;
pub mod privacy;
mod refusals;
pub mod serve;
mod sink;
mod stall;
pub mod viewer;
pub use edgelog_wal as wal;
pub use edgelog_wal::state_file;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use edgelog_record::SamplingConfig;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use admin::{AdminSettings, MAX_SETTINGS_BYTES, SettingsError};
pub use aggregator::{MetricsAggregator, Publisher};
pub use bus::{Bus, STREAM_BYTES, StreamMessage, Streamed};
pub use config::{CollectorConfig, ScopedToken};
pub use dead_letter::DeadLetters;
pub use ingest::{AppState, IngestError, IngestResponse, Readiness, app, matching_tokens};
pub use privacy::{FieldRule, IpRule, Privacy, PrivacyConfig, PrivacyRule};
pub use sink::{
    Batch, Kept, LoopSettings, Place, ReloadedSettings, Sampler, Sink, SinkConfig, SinkContext,
    SinkError, SinkErrorKind, SinkReport, SinkStatus, run_sink,
};
pub use wal::{Entry, Seq, Wal, WalConfig, WalError};

/// The process-wide Prometheus recorder; installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Another recorder may be installed already (tests); ours then renders nothing
        // from the macros, which is acceptable there.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("ingest server failed: {0}")]
    Serve(std::io::Error),
    #[error("sinks stopped early: {0}; their records stay in the write-ahead log")]
    SinkStopped(String),
}

/// A collector with its log and sinks, ready to serve.
pub struct Collector {
    cfg: CollectorConfig,
    data_dir: PathBuf,
    wal: Wal,
    sinks: Vec<Added>,
    dead_letters: BTreeMap<String, DeadLetters>,
    sampling: SamplingConfig,
    reloader: Reloader,
    admin: Option<Arc<dyn AdminSettings>>,
}

/// A sink added, with its sampler and whether that follows a reload.
struct Added {
    status: Arc<SinkStatus>,
    sink: Box<dyn Sink>,
    sampler: Sampler,
    sampled: bool,
}

/// Changes what may change without a restart: tokens, scoped tokens, privacy rules and
/// sampling rates. A configuration that does not validate is refused whole, and the one in
/// effect stays.
#[derive(Clone)]
pub struct Reloader {
    access: Arc<ingest::AccessCell>,
    sampling: Arc<watch::Sender<SamplingConfig>>,
    /// Names of the sinks sampling applies to (what a rate may name).
    sampled: Arc<std::sync::Mutex<Vec<String>>>,
    generation: Arc<std::sync::atomic::AtomicU64>,
    /// Each sink's reloaded settings, by name.
    sinks: Arc<std::sync::Mutex<BTreeMap<String, watch::Sender<Option<ReloadedSettings>>>>>,
}

impl Reloader {
    fn new(sampling: SamplingConfig) -> Reloader {
        Reloader {
            access: Arc::default(),
            sampling: Arc::new(watch::channel(sampling).0),
            sampled: Arc::default(),
            generation: Arc::default(),
            sinks: Arc::default(),
        }
    }

    /// Hands sink `name` its settings as reloaded (validated with the configuration);
    /// the sink applies what it can change without a restart at its next write.
    pub fn reload_sink(&self, name: &str, settings: ReloadedSettings) {
        if let Some(tx) = self
            .sinks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
        {
            tx.send_replace(Some(settings));
        }
    }

    /// Puts `cfg`'s tokens and privacy rules and `sampling`'s rates in effect, for the
    /// next request and the next log entry each sink takes; returns what changed
    /// (`tokens`, `privacy`, `sampling`). The rest of `cfg` is not looked at beyond its
    /// validation: it needs a restart.
    pub fn reload(
        &self,
        cfg: &CollectorConfig,
        sampling: &SamplingConfig,
    ) -> Result<Vec<&'static str>, String> {
        cfg.validate()?;
        // Rates are checked; one for a sink that is configured but not running (off) is
        // let through, as it was at start.
        let mut names = self
            .sampled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mentioned = std::iter::once(&sampling.default)
            .chain(sampling.distributions.values())
            .flat_map(|r| r.0.keys().cloned());
        names.extend(mentioned);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        sampling
            .validate(&names)
            .map_err(|e| format!("sampling.{e}"))?;
        let generation = self.generation.load(std::sync::atomic::Ordering::Relaxed) + 1;
        let access = ingest::Access::new(cfg.clone(), generation)?;
        let mut changed = Vec::new();
        if let Some(old) = self.access.get() {
            let (o, n) = (old.config(), access.config());
            if (&o.tokens, &o.scoped_tokens, o.allow_unauthenticated)
                != (&n.tokens, &n.scoped_tokens, n.allow_unauthenticated)
            {
                changed.push("tokens");
            }
            if o.privacy != cfg.privacy {
                changed.push("privacy");
            }
        }
        if *self.sampling.borrow() != *sampling {
            changed.push("sampling");
        }
        self.generation
            .store(generation, std::sync::atomic::Ordering::Relaxed);
        self.access.set(access);
        self.sampling.send_replace(sampling.clone());
        metrics::counter!("edgelog_config_reloads_total").increment(1);
        Ok(changed)
    }
}

/// In-flight requests get at most this long after a shutdown signal (and at most half the
/// shutdown budget); the rest of the budget is the sinks'.
const REQUESTS_GRACE: Duration = Duration::from_secs(10);

impl Collector {
    /// Validates the settings and opens the write-ahead log under `data_dir/wal`.
    pub fn open(cfg: CollectorConfig, data_dir: &Path) -> Result<Collector, CollectorError> {
        cfg.validate().map_err(CollectorError::Config)?;
        let wal = Wal::open_with_keys(&data_dir.join("wal"), cfg.wal.clone(), cfg.key_limits())?;
        Ok(Collector {
            cfg,
            data_dir: data_dir.to_owned(),
            wal,
            sinks: Vec::new(),
            dead_letters: BTreeMap::new(),
            sampling: SamplingConfig::default(),
            reloader: Reloader::new(SamplingConfig::default()),
            admin: None,
        })
    }

    /// Serves `/admin/settings` (for `collector.admin_tokens` holders), kept by `admin`.
    pub fn with_admin(mut self, admin: Arc<dyn AdminSettings>) -> Collector {
        self.admin = Some(admin);
        self
    }

    /// Sampling rates, keyed by sink name; every sink added after this gets its own.
    pub fn with_sampling(mut self, sampling: SamplingConfig) -> Collector {
        self.reloader.sampling.send_replace(sampling.clone());
        self.sampling = sampling;
        self
    }

    /// What changes the settings that may change while it runs (keep it past `serve`).
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// The dead-letter store of sink `name`, under `{data_dir}/dead-letter/{name}`; give it
    /// to the sink, then add the sink under the same name (`/readyz` then counts them).
    pub fn dead_letters(&mut self, name: &str) -> Result<DeadLetters, CollectorError> {
        if let Some(d) = self.dead_letters.get(name) {
            return Ok(d.clone());
        }
        let dir = self.data_dir.join("dead-letter").join(name);
        let d = DeadLetters::open(&dir, name, self.cfg.dead_letter_max_bytes).map_err(|e| {
            CollectorError::Config(format!(
                "cannot open the dead-letter store {}: {e}",
                dir.display()
            ))
        })?;
        self.dead_letters.insert(name.to_owned(), d.clone());
        Ok(d)
    }

    /// Adds a sink under a stable name (its position in the log is saved under it); it is
    /// given the records the sampling rates for `name` keep.
    pub fn add_sink(&mut self, name: &str, sink: Box<dyn Sink>) {
        let sampler = Sampler::new(&self.sampling, name);
        self.push_sink(name, sink, sampler, true);
        self.reloader
            .sampled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(name.to_owned());
    }

    /// Adds a sink that is given every record, whatever the sampling (metrics count all).
    pub fn add_unsampled_sink(&mut self, name: &str, sink: Box<dyn Sink>) {
        self.push_sink(name, sink, Sampler::all(), false);
    }

    fn push_sink(&mut self, name: &str, sink: Box<dyn Sink>, sampler: Sampler, sampled: bool) {
        let status = SinkStatus::with_dead_letters(name, self.dead_letters.get(name).cloned());
        self.sinks.push(Added {
            status: Arc::new(status),
            sink,
            sampler,
            sampled,
        });
    }

    /// Builds sink `name` from its settings and adds it; says where it delivers. A
    /// disabled sink is skipped (`Ok(None)`).
    pub fn build_sink(
        &mut self,
        name: &str,
        cfg: &dyn SinkConfig,
        bus: &Bus,
    ) -> Result<Option<String>, CollectorError> {
        if !cfg.enabled() {
            return Ok(None);
        }
        let (settings_tx, settings) = watch::channel(None);
        self.reloader
            .sinks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned(), settings_tx);
        let cx = SinkContext {
            name: name.to_owned(),
            collector_id: self.cfg.id.clone(),
            data_dir: self.data_dir.clone(),
            dead_letters: self.dead_letters(name)?,
            bus: bus.clone(),
            settings,
        };
        let sink = cfg
            .build(&cx)
            .map_err(|e| CollectorError::Config(format!("cannot set up sink {name}: {e}")))?;
        self.add_sink(name, sink);
        Ok(Some(cfg.describe(&cx)))
    }

    pub fn config(&self) -> &CollectorConfig {
        &self.cfg
    }

    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// Serves ingest on `listener` and runs the sinks until `shutdown` resolves; then
    /// stops accepting, finishes in-flight requests, and drains the sinks, all within
    /// `shutdown_timeout` of the signal (plus a second or two to close the log): what is
    /// undelivered by then stays in the log for the next start.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), CollectorError> {
        let (stop_tx, stop_rx) = watch::channel(None::<Instant>);
        let statuses: Vec<_> = self.sinks.iter().map(|a| a.status.clone()).collect();
        let settings = LoopSettings {
            drain_timeout: self.cfg.shutdown_timeout,
            ..LoopSettings::default()
        };
        let mut runners = Vec::new();
        for Added {
            status,
            sink,
            sampler,
            sampled,
        } in self.sinks
        {
            let settings = LoopSettings {
                sampling: sampled.then(|| self.reloader.sampling.subscribe()),
                ..settings.clone()
            };
            let task = tokio::spawn(run_sink(
                sink,
                sampler,
                self.wal.clone(),
                status.clone(),
                stop_rx.clone(),
                settings,
            ));
            runners.push((status.name.clone(), tokio::spawn(supervise(task, status))));
        }
        let state = AppState::reloadable(
            self.cfg.clone(),
            self.wal.clone(),
            statuses,
            self.reloader.access.clone(),
            Some(self.reloader.sampling.subscribe()),
            self.admin.clone(),
        );
        let router = app(state.clone());
        let stopping = state.clone();
        let progress = tokio::spawn(log_progress(state.clone()));
        let addr = listener.local_addr().map_err(CollectorError::Serve)?;
        if self.cfg.tokens.is_empty() && !addr.ip().is_loopback() {
            tracing::warn!(listen = %addr, "ingest takes records WITHOUT authentication on a network address (collector.allow_unauthenticated = true): anyone who can reach it can write records; give collector.tokens");
        }
        tracing::info!(listen = %addr, collector = %self.cfg.id, "collector accepting records");
        let budget = self.cfg.shutdown_timeout;
        let (signalled_tx, mut signalled) = watch::channel(None::<Instant>);
        let limits = serve::HttpLimits {
            max_connections: serve::fit_connections(self.cfg.max_connections),
            header_timeout: self.cfg.header_timeout,
            write_timeout: self.cfg.write_timeout,
        };
        let served = serve::serve(listener, router, limits, "ingest", async move {
            shutdown.await;
            tracing::info!(
                budget_ms = budget.as_millis() as u64,
                "shutting down: finishing requests in flight"
            );
            let _ = signalled_tx.send(Some(Instant::now()));
            stopping.stop_accepting();
        });
        let served = tokio::select! {
            r = served => r,
            // Requests still in flight after their grace are cut: none was acknowledged.
            () = async {
                let at = signalled.wait_for(Option::is_some).await.ok().and_then(|t| *t);
                let at = at.unwrap_or_else(Instant::now);
                tokio::time::sleep_until((at + REQUESTS_GRACE.min(budget / 2)).into()).await;
            } => {
                tracing::warn!("requests still in flight at the end of their grace; closing them");
                Ok(())
            }
        };
        let signalled_at = signalled.borrow().unwrap_or_else(Instant::now);
        let deadline = signalled_at + budget;
        progress.abort();
        self.wal.close().await;
        tracing::info!(
            remaining_ms = deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as u64,
            "draining sinks"
        );
        let _ = stop_tx.send(Some(deadline));
        let mut stopped = Vec::new();
        for (name, mut r) in runners {
            // The loops stop at the deadline themselves; this is the backstop for a sink
            // whose code blocks a thread.
            let until = (deadline + Duration::from_secs(1)).into();
            match tokio::time::timeout_at(until, &mut r).await {
                Ok(Ok(true)) => {}
                Ok(_) => stopped.push(name),
                Err(_) => {
                    tracing::error!(sink = %name, "sink did not stop by the shutdown deadline; leaving it (its records stay in the write-ahead log)");
                    r.abort();
                }
            }
        }
        tracing::info!(committed = self.wal.committed(), "collector stopped");
        served.map_err(CollectorError::Serve)?;
        if stopped.is_empty() {
            Ok(())
        } else {
            Err(CollectorError::SinkStopped(stopped.join(", ")))
        }
    }
}

/// Waits for a sink's loop; a panic in it leaves the sink stopped, and says so in the
/// log, `/readyz` and `/metrics` (its records stay in the write-ahead log for the next
/// start). Returns whether the loop ended normally.
async fn supervise(task: tokio::task::JoinHandle<()>, status: Arc<SinkStatus>) -> bool {
    match task.await {
        Ok(()) => true,
        Err(e) => {
            let why = if e.is_panic() {
                "panicked"
            } else {
                "was cancelled"
            };
            tracing::error!(sink = %status.name, "sink stopped: its task {why}; undelivered records stay in the write-ahead log");
            status.set_error(Some(&SinkError::misconfigured(format!(
                "sink stopped: its task {why}; restart the collector"
            ))));
            metrics::counter!("edgelog_sink_errors_total", "sink" => status.name.clone())
                .increment(1);
            false
        }
    }
}

/// Every 10 s: what came in, how full the log is, how far behind each sink is.
async fn log_progress(state: AppState) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    tick.tick().await;
    let mut last = state.accepted_records();
    loop {
        tick.tick().await;
        let now = state.accepted_records();
        let r = state.readiness();
        let lag: Vec<String> = r
            .sinks
            .iter()
            .map(|s| format!("{}={:.1}s", s.name, s.lag_seconds))
            .collect();
        tracing::info!(
            accepted = now,
            per_second = (now - last) / 10,
            wal_bytes = r.wal.bytes,
            wal_segments = r.wal.segments,
            sink_lag = %lag.join(","),
            status = r.status,
            "progress"
        );
        last = now;
    }
}
