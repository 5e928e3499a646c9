//! The edgelog collector: receives request records over HTTP, makes them durable in a
//! write-ahead log before acknowledging, and feeds every sink from that log.
//!
//! It knows no S3 and no Kafka: sinks implement [`Sink`], and finished per-minute
//! aggregates go to a [`Publisher`] that the binary plugs in.

mod aggregator;
mod config;
mod ingest;
mod sink;
pub mod wal;

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use aggregator::{MetricsAggregator, Publisher};
pub use config::CollectorConfig;
pub use ingest::{AppState, IngestError, IngestResponse, Readiness, app};
pub use sink::{LoopSettings, Sink, SinkError, SinkReport, SinkStatus, run_sink};
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
    wal: Wal,
    sinks: Vec<(Arc<SinkStatus>, Box<dyn Sink>)>,
}

impl Collector {
    /// Validates the settings and opens the write-ahead log under `data_dir/wal`.
    pub fn open(cfg: CollectorConfig, data_dir: &Path) -> Result<Collector, CollectorError> {
        cfg.validate().map_err(CollectorError::Config)?;
        let wal = Wal::open(&data_dir.join("wal"), cfg.wal.clone())?;
        Ok(Collector {
            cfg,
            wal,
            sinks: Vec::new(),
        })
    }

    /// Adds a sink under a stable name (its position in the log is saved under it).
    pub fn add_sink(&mut self, name: &str, sink: Box<dyn Sink>) {
        self.sinks.push((Arc::new(SinkStatus::new(name)), sink));
    }

    pub fn config(&self) -> &CollectorConfig {
        &self.cfg
    }

    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// Serves ingest on `listener` and runs the sinks until `shutdown` resolves; then
    /// stops accepting, finishes in-flight requests, and drains the sinks.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), CollectorError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let statuses: Vec<_> = self.sinks.iter().map(|(s, _)| s.clone()).collect();
        let settings = LoopSettings {
            drain_timeout: self.cfg.shutdown_timeout,
            ..LoopSettings::default()
        };
        let mut runners = Vec::new();
        for (status, sink) in self.sinks {
            let task = tokio::spawn(run_sink(
                sink,
                self.wal.clone(),
                status.clone(),
                stop_rx.clone(),
                settings.clone(),
            ));
            runners.push((status.name.clone(), tokio::spawn(supervise(task, status))));
        }
        let state = AppState::new(self.cfg.clone(), self.wal.clone(), statuses);
        let router = app(state.clone());
        let stopping = state.clone();
        let progress = tokio::spawn(log_progress(state.clone()));
        tracing::info!(listen = %listener.local_addr().map_err(CollectorError::Serve)?, collector = %self.cfg.id, "collector accepting records");
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                tracing::info!("shutting down: finishing requests in flight");
                stopping.stop_accepting();
            })
            .await;
        progress.abort();
        self.wal.close().await;
        tracing::info!("draining sinks");
        let _ = stop_tx.send(true);
        let mut stopped = Vec::new();
        for (name, r) in runners {
            if !r.await.unwrap_or(false) {
                stopped.push(name);
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
            status.set_error(Some(&SinkError::Misconfigured(format!(
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
