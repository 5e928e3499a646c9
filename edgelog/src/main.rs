//! `edgelog`: request logs and real-time metrics for edge and CDN traffic.
//!
//! Long (about 1,150 lines, a third of them flags and their help) because every
//! subcommand's flags and wiring live here; each `run_*` function is one subcommand.

mod admin;
mod compact;
mod config;
mod sinks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use edgelog_collector::{Collector, MetricsAggregator};
use edgelog_dashboard::MetricsStore;
use edgelog_edge::{Compression, ErrorMix, Target, TrafficConfig, WireFormat};
use edgelog_ship::ShipConfig;
use edgelog_sink_stream::{Bus, KafkaPublisher, follow_metrics, follow_realtime};
use figment::value::Value;
use tokio::net::TcpListener;

use crate::config::Config;

// Ingest allocates many small strings per record; mimalloc handles that far better than
// the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "edgelog",
    version,
    about = "Request logs and real-time metrics for edge and CDN traffic",
    long_about = "edgelog collects one structured record per HTTP request from edge servers, makes it \
                  durable, and fans it out to standard logs (Parquet), real-time logs (a stream) and \
                  per-minute metrics (a dashboard with alarms).\n\n\
                  Configuration comes from a TOML file (--config), then EDGELOG_* environment variables \
                  (EDGELOG_COLLECTOR__LISTEN=0.0.0.0:8080: sections joined by two underscores), then flags."
)]
struct Cli {
    /// Log format on stderr. The level comes from RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a collector: receive records on POST /v1/records and feed the sinks.
    Collector(CollectorArgs),
    /// Run the dashboard on its own, reading every collector's minute aggregates from the Kafka
    /// metrics topic ([metrics.kafka]).
    Dashboard(DashboardArgs),
    /// Play a fleet of edge servers against a collector, or replay a CloudFront log file.
    Edge(EdgeArgs),
    /// Run the whole pipeline in one process on embedded defaults, with generated traffic.
    Demo(DemoArgs),
    /// Check a configuration and print it as edgelog will use it.
    Config(ConfigArgs),
    /// Follow web servers' access logs (nginx, Caddy, Envoy, CloudFront files) and deliver
    /// their lines to a collector as records, exactly once.
    #[command(
        long_about = "Follow web servers' access logs (nginx, Caddy, Envoy, CloudFront standard log \
                      files) and deliver their lines to a collector as records, exactly once: \
                      offsets are saved only after the collector answered, and a batch resent \
                      after a crash carries the same idempotency key.\n\n\
                      Settings come from a TOML file (--config: collector, token, state_dir, \
                      [[inputs]]), then EDGELOG_SHIP_* environment variables (EDGELOG_SHIP_TOKEN, \
                      EDGELOG_SHIP_COLLECTOR, ...), then flags. Paths given as arguments make one \
                      more input, named cli.",
        after_help = "Example:\n  edgelog ship --collector http://10.0.0.5:8080 --token $TOKEN \\\n    \
                      --format nginx_json --distribution E2EXAMPLE '/var/log/nginx/access.log*'"
    )]
    Ship(ShipArgs),
    /// Merge small standard-log files: per partition, a closed hour's files into files of
    /// a target size sorted by time. Safe to interrupt; run again to go on.
    #[command(
        long_about = "Merge small standard-log files: per partition (distribution and hour), the \
                      files of an hour that ended at least min_age ago are merged into files of \
                      about target_bytes, sorted by timestamp, with the same schema and path. \
                      Works on a bucket and on local disk.\n\n\
                      Crash-safe: a manifest (_edgelog-compaction-*.json, skipped by Athena and \
                      DuckDB's *.parquet) names each group's inputs and output; a run that was \
                      killed is finished or undone by the next. While a group is merged, readers \
                      may see its rows twice for the time it takes to delete its inputs.\n\n\
                      Run one compaction per bucket prefix at a time. Prints one JSON line per \
                      sink: what was merged."
    )]
    Compact(compact::CompactArgs),
}

#[derive(Args)]
pub(crate) struct ConfigFile {
    /// TOML configuration file.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Args)]
struct CollectorArgs {
    #[command(flatten)]
    file: ConfigFile,
    /// Directory for the write-ahead log (and local standard logs).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on (collector.listen).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Accept this bearer token (repeatable; replaces collector.tokens).
    #[arg(long = "token", value_name = "TOKEN")]
    tokens: Vec<String>,
    /// Name of this collector in a fleet (collector.id).
    #[arg(long, value_name = "NAME")]
    id: Option<String>,
}

#[derive(Args)]
struct DashboardArgs {
    #[command(flatten)]
    file: ConfigFile,
    /// Address to listen on (dashboard.listen).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
}

#[derive(Args)]
struct ShipArgs {
    /// TOML file: collector, token, state_dir, [[inputs]] (see README).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Base URL of the collector (collector).
    #[arg(long, value_name = "URL")]
    collector: Option<String>,
    /// Bearer token for the collector (token; better: EDGELOG_SHIP_TOKEN).
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Where checkpoints are kept (state_dir) [default: edgelog-ship].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Serve Prometheus /metrics and /healthz on this address (metrics_listen).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Format of the files given as arguments: nginx_json, nginx_combined, caddy, envoy,
    /// cloudfront or ndjson.
    #[arg(long, value_name = "FORMAT", default_value = "nginx_json")]
    format: String,
    /// Distribution of the lines of the files given as arguments.
    #[arg(long, value_name = "ID")]
    distribution: Option<String>,
    /// x-edge-location for lines of the files given as arguments that carry none.
    #[arg(long, value_name = "NAME")]
    edge_location: Option<String>,
    /// Files to follow (globs, quoted), as one input named cli.
    #[arg(value_name = "PATH")]
    paths: Vec<String>,
}

#[derive(Args)]
struct ConfigArgs {
    #[command(flatten)]
    file: ConfigFile,
}

#[derive(Args)]
struct DemoArgs {
    #[command(flatten)]
    file: ConfigFile,
    /// Where the write-ahead log and the Parquet standard logs go [default: edgelog-demo,
    /// unless the configuration sets data_dir].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address of the ingest API [default: 127.0.0.1:8080, unless the configuration sets
    /// collector.listen].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Address of the dashboard [default: 127.0.0.1:8081, unless the configuration sets
    /// dashboard.listen].
    #[arg(long, value_name = "ADDR")]
    dashboard_listen: Option<SocketAddr>,
    /// Don't generate traffic; only serve.
    #[arg(long)]
    no_traffic: bool,
    /// Records per second of built-in traffic.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Ingest token to accept (default: the configuration's, else a random one, printed at
    /// start).
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum CompressionArg {
    None,
    Gzip,
    Zstd,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Ndjson,
    W3c,
}

#[derive(Args)]
struct EdgeArgs {
    /// Collector base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, value_name = "URL")]
    to: String,
    /// Bearer token for the collector.
    #[arg(
        long,
        env = "EDGELOG_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: String,
    /// Replay this CloudFront standard log file (plain or .gz), or an NDJSON file of records
    /// such as a dead-letter file, instead of generating traffic.
    #[arg(long, value_name = "FILE")]
    replay: Option<PathBuf>,
    /// Distribution id for --replay (default: from the file name <ID>.YYYY-MM-DD-HH.<unique>.gz).
    #[arg(long, value_name = "ID")]
    distribution: Option<String>,
    /// Records per second in total (0: as fast as the collector takes them).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Stop sending after this long (e.g. 30s, 5m); retries of what was sent may go on
    /// 30 s more, then the run ends whatever is left.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many records.
    #[arg(long)]
    total: Option<u64>,
    /// Records per request body.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Number of distributions.
    #[arg(long, default_value_t = 3)]
    distributions: usize,
    /// Number of edge locations.
    #[arg(long, default_value_t = 8)]
    locations: usize,
    /// Body format.
    #[arg(long, value_enum, default_value_t = FormatArg::Ndjson)]
    format: FormatArg,
    /// Body compression.
    #[arg(long, value_enum, default_value_t = CompressionArg::Gzip)]
    compression: CompressionArg,
    /// Seed of the traffic generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Spread event times over this many past hours.
    #[arg(long, default_value_t = 0.0)]
    backfill_hours: f64,
    /// Percent of extra 4xx answers, all the time.
    #[arg(long, default_value_t = 0.0)]
    error_4xx: f64,
    /// Percent of extra 5xx answers, all the time.
    #[arg(long, default_value_t = 0.0)]
    error_5xx: f64,
    /// Inject an error burst this often (e.g. 5m).
    #[arg(long, value_parser = humantime::parse_duration)]
    burst_every: Option<Duration>,
    /// How long each burst lasts.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    burst_length: Duration,
    /// Percent of 5xx answers during a burst.
    #[arg(long, default_value_t = 20.0)]
    burst_5xx: f64,
    /// Percent of 4xx answers during a burst.
    #[arg(long, default_value_t = 0.0)]
    burst_4xx: f64,
    /// Generate this many bodies once and resend them (load tests: the generator is not
    /// measured). Every send gets fresh request ids, unique over the run (random, ending in
    /// the record's number in the run); the other fields repeat. With --compression gzip or
    /// zstd each send is compressed anew; --ack-log gets no ids.
    #[arg(long)]
    pregenerate: Option<usize>,
    /// Append the request ids of acknowledged records to this file.
    #[arg(long, value_name = "FILE")]
    ack_log: Option<PathBuf>,
    /// Tries per body before giving up.
    #[arg(long, default_value_t = 30)]
    max_tries: usize,
    /// Timeout of one request.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    timeout: Duration,
    /// Print a progress line this often (0s: never).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    progress: Duration,
    /// Print the closing report as JSON.
    #[arg(long)]
    json: bool,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a person at a terminal, never in files or journals.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        // A log that cannot be written (stderr on a full disk) must not take the process
        // down: tracing would otherwise report it with eprintln!, which panics.
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Counts SIGHUPs: a service that can reload watches it.
static RELOAD: std::sync::OnceLock<tokio::sync::watch::Sender<u64>> = std::sync::OnceLock::new();

static SHUTDOWN: std::sync::OnceLock<tokio::sync::watch::Receiver<bool>> =
    std::sync::OnceLock::new();

/// The shutdown budget (`collector.shutdown_timeout`) once the configuration is loaded.
static SHUTDOWN_BUDGET_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(30_000);

/// How long past its budget a shutdown may run before the process exits anyway: the
/// drain stops at the budget, this covers closing the log and a client library that
/// blocks a thread.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);

fn set_shutdown_budget(budget: Duration) {
    let ms = u64::try_from(budget.as_millis()).unwrap_or(u64::MAX);
    SHUTDOWN_BUDGET_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
}

/// Watches SIGTERM and SIGINT from the moment the process starts, so a signal that comes
/// while it is still starting (the listener already bound) shuts it down cleanly instead
/// of killing it. SIGHUP makes the collector reload what it can (see [`reload_on_hup`]);
/// other services log and ignore it; for the commands one runs in a terminal (`edge`,
/// `demo`), a closed terminal's SIGHUP stops them like SIGTERM. Once shutdown has begun, a watchdog ends the process at the
/// budget plus [`SHUTDOWN_MARGIN`] whatever is still running: everything undelivered is
/// in the write-ahead log.
fn watch_signals(hup_stops: bool) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let reload = RELOAD
        .get_or_init(|| tokio::sync::watch::channel(0).0)
        .clone();
    tokio::spawn(async move {
        let name = loop {
            tokio::select! {
                _ = term.recv() => break "SIGTERM",
                _ = int.recv() => break "SIGINT",
                _ = hup.recv() => {
                    if hup_stops {
                        break "SIGHUP";
                    }
                    if reload.receiver_count() > 0 {
                        tracing::info!("SIGHUP received: reloading the configuration");
                        reload.send_modify(|n| *n += 1);
                    } else {
                        tracing::warn!("SIGHUP received and ignored: this command does not reload its configuration; restart it to apply changes");
                    }
                }
            }
        };
        let budget =
            Duration::from_millis(SHUTDOWN_BUDGET_MS.load(std::sync::atomic::Ordering::Relaxed));
        tracing::info!(
            signal = name,
            budget_ms = budget.as_millis() as u64,
            "signal received, shutting down"
        );
        let _ = tx.send(true);
        let _ = std::thread::Builder::new()
            .name("shutdown-watchdog".into())
            .spawn(move || {
                std::thread::sleep(budget.saturating_add(SHUTDOWN_MARGIN));
                tracing::error!("shutdown did not finish within its budget plus the margin; exiting now (undelivered records stay in the write-ahead log)");
                std::process::exit(1);
            });
        loop {
            tokio::select! {
                _ = hup.recv() => tracing::warn!("SIGHUP ignored while shutting down"),
                _ = term.recv() => tracing::info!("shutdown already under way"),
                _ = int.recv() => tracing::info!("shutdown already under way"),
            }
        }
    });
    let _ = SHUTDOWN.set(rx);
    Ok(())
}

/// Resolves once SIGTERM or SIGINT has arrived (at any time since the start).
async fn shutdown_signal() {
    match SHUTDOWN.get().cloned() {
        Some(mut rx) => {
            let _ = rx.wait_for(|stop| *stop).await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// Wires a collector with the sinks the configuration asks for.
fn build_collector(cfg: &Config, bus: &Bus) -> anyhow::Result<Collector> {
    let mut collector = Collector::open(cfg.collector.clone(), &cfg.data_dir)
        .with_context(|| format!("cannot start the collector in {}", cfg.data_dir.display()))?
        .with_sampling(cfg.sampling.clone());
    cfg.sinks.build_into(&mut collector, bus)?;
    let publisher: Arc<dyn edgelog_collector::Publisher> = match &cfg.metrics.kafka {
        Some(k) => {
            tracing::info!(brokers = %k.bootstrap_servers, topic = %k.topic, "minute aggregates go to kafka");
            Arc::new(
                KafkaPublisher::new(k, &cfg.collector.id)
                    .context("cannot set up the kafka metrics publisher")?,
            )
        }
        None => Arc::new(bus.clone()),
    };
    let published = cfg.data_dir.join("state").join("metrics-published");
    let mut aggregator =
        MetricsAggregator::new(&cfg.collector.id, publisher, cfg.collector.metrics_interval)
            .with_state_file(&published)
            .with_context(|| format!("cannot read {}", published.display()))?;
    if !cfg.collector.reports {
        aggregator = aggregator.without_reports();
    }
    collector.add_unsampled_sink("metrics", Box::new(aggregator));
    Ok(collector)
}

/// Real-time records for the dashboard's live tail: the real-time topic when there is
/// one, else the in-process stream (`bus`, when the collector runs in this process).
fn tail_source(cfg: &Config, bus: Option<&Bus>) -> Option<edgelog_dashboard::TailSource> {
    let source = edgelog_dashboard::TailHub::new();
    let hub = source.clone();
    if let Some(k) = cfg.sinks.realtime_kafka() {
        tokio::spawn(async move {
            if let Err(e) = follow_realtime(&k, |m| hub.feed(&m)).await {
                tracing::error!(error = %e, "cannot read the real-time topic: no live tail");
            }
        });
        return Some(source);
    }
    let bus = bus?;
    tokio::spawn(hub.follow_stream(bus.subscribe_records(), bus.refusals()));
    Some(source)
}

/// A refusal of `edgelog ship`'s metrics endpoint: JSON with a reason, like every other.
fn refusal(status: axum::http::StatusCode, error: String) -> axum::response::Response {
    use axum::response::IntoResponse;
    (status, axum::Json(serde_json::json!({ "error": error }))).into_response()
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the {what}"))
}

fn s(v: impl Into<String>) -> Value {
    Value::from(v.into())
}

async fn run_collector(args: CollectorArgs) -> anyhow::Result<()> {
    // Watched from the start: a SIGHUP while starting reloads once started.
    let hups = RELOAD.get().map(|t| t.subscribe());
    let mut overrides = Vec::new();
    if let Some(d) = &args.data_dir {
        overrides.push(("data_dir", s(d.display().to_string())));
    }
    if let Some(l) = args.listen {
        overrides.push(("collector.listen", s(l.to_string())));
    }
    if let Some(id) = &args.id {
        overrides.push(("collector.id", s(id.clone())));
    }
    if !args.tokens.is_empty() {
        overrides.push(("collector.tokens", Value::from(args.tokens.clone())));
    }
    // Settings made through the admin API go over the file, environment and flags.
    let file = args.file.config.clone();
    let base = Config::load(file.as_deref(), &overrides)?;
    let settings_path = admin::settings_path(&base.data_dir);
    let load: Arc<admin::Load> =
        Arc::new(move |settings| Config::load_with(file.as_deref(), &overrides, settings));
    let kept = admin::read_settings(&settings_path)?;
    let cfg = load(kept.as_ref()).with_context(|| {
        format!(
            "with the settings made through the admin API ({}; delete it to start without them)",
            settings_path.display()
        )
    })?;
    set_shutdown_budget(cfg.collector.shutdown_timeout);
    let bus = Bus::new(cfg.sinks.bus_capacity());
    let reloads_lock = Arc::new(std::sync::Mutex::new(()));
    let collector = build_collector(&cfg, &bus)?;
    // What a reload puts in effect: tokens, privacy, rates, and the real-time sinks'
    // field selections.
    let reloader = collector.reloader();
    let applied = std::sync::Mutex::new(cfg.sinks.clone());
    let apply: Arc<admin::Apply> = Arc::new(move |new: &Config| {
        let mut changed: Vec<String> = reloader
            .reload(&new.collector, &new.sampling)?
            .into_iter()
            .map(str::to_owned)
            .collect();
        let mut last = applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        changed.extend(new.sinks.reload_into(&reloader, &last));
        *last = new.sinks.clone();
        Ok(changed)
    });
    let settings = admin::Settings::new(
        settings_path.clone(),
        load.clone(),
        apply.clone(),
        reloads_lock.clone(),
    );
    let collector = collector.with_admin(Arc::new(settings));
    let listener = bind(cfg.collector.listen, "ingest API").await?;
    let compactions = compact::spawn_compactions(&cfg)?;
    let mut reloadable: Vec<String> = admin::SETTABLE.iter().map(|s| (*s).to_owned()).collect();
    reloadable.push("collector.admin_tokens".into());
    reloadable.extend(cfg.sinks.reloadable());
    let reloads = tokio::spawn(reload_on_hup(
        hups,
        cfg,
        move || {
            let _held = reloads_lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let new = load(admin::read_settings(&settings_path)?.as_ref())?;
            let changed = apply(&new).map_err(anyhow::Error::msg)?;
            Ok((new, changed))
        },
        reloadable,
    ));
    collector.serve(listener, shutdown_signal()).await?;
    reloads.abort();
    // An interrupted compaction is finished or undone by the next.
    compactions.iter().for_each(|t| t.abort());
    Ok(())
}

/// On each SIGHUP, `reload` loads the configuration again (same file, environment and
/// flags) and puts the `reloadable` settings in effect, saying which changed. A
/// configuration that does not load or validate is refused and logged, and the one in
/// effect stays; other changes (against the configuration started with) are
/// logged as needing a restart.
async fn reload_on_hup(
    hups: Option<tokio::sync::watch::Receiver<u64>>,
    started: Config,
    reload: impl Fn() -> anyhow::Result<(Config, Vec<String>)>,
    reloadable: Vec<String>,
) {
    let reloadable: Vec<&str> = reloadable.iter().map(String::as_str).collect();
    let Some(mut hups) = hups else {
        return;
    };
    while hups.changed().await.is_ok() {
        match reload() {
            Ok((new, changed)) => {
                tracing::info!(changed = ?changed, "configuration reloaded");
                let restart = needs_restart(&started, &new, &reloadable);
                if !restart.is_empty() {
                    tracing::warn!(settings = ?restart, "configuration changes that need a restart were not applied");
                }
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "configuration refused on reload; the one in effect stays");
                metrics::counter!("edgelog_config_reload_failures_total").increment(1);
            }
        }
    }
}

/// The settings (`section.key`) that differ between `old` and `new` beyond what a
/// reload applies.
fn needs_restart(old: &Config, new: &Config, reloadable: &[&str]) -> Vec<String> {
    let (Ok(a), Ok(b)) = (serde_json::to_value(old), serde_json::to_value(new)) else {
        return vec!["(cannot compare)".into()];
    };
    let mut out = Vec::new();
    differences("", &a, &b, reloadable, &mut out);
    out
}

/// The names (`section.key`, two levels down at most) under which `a` and `b` differ,
/// keys missing on either side included, leaving out `reloadable` names and what is
/// under them.
fn differences(
    at: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    reloadable: &[&str],
    out: &mut Vec<String>,
) {
    let covered = |name: &str| {
        reloadable
            .iter()
            .any(|r| name == *r || name.starts_with(&format!("{r}.")))
    };
    if covered(at) || a == b {
        return;
    }
    // Two levels down, or deeper where a reloadable name lies below.
    let deeper =
        at.matches('.').count() < 1 || reloadable.iter().any(|r| r.starts_with(&format!("{at}.")));
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) if deeper => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let name = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                let null = serde_json::Value::Null;
                differences(
                    &name,
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    reloadable,
                    out,
                );
            }
        }
        _ => out.push(at.to_owned()),
    }
}

async fn run_ship(args: ShipArgs) -> anyhow::Result<()> {
    use figment::providers::{Env, Format, Serialized, Toml};
    use figment::value::{Dict, Map};
    let mut fig = figment::Figment::from(Serialized::defaults(ShipConfig::default()));
    if let Some(f) = &args.config {
        if !f.is_file() {
            bail!("config file {} does not exist", f.display());
        }
        fig = fig.merge(Toml::file(f));
    }
    fig = fig.merge(Env::prefixed("EDGELOG_SHIP_"));
    let mut flags = Dict::new();
    if let Some(c) = &args.collector {
        flags.insert("collector".into(), s(c.clone()));
    }
    if let Some(t) = &args.token {
        flags.insert("token".into(), s(t.clone()));
    }
    if let Some(d) = &args.state_dir {
        flags.insert("state_dir".into(), s(d.display().to_string()));
    }
    if let Some(m) = args.metrics_listen {
        flags.insert("metrics_listen".into(), s(m.to_string()));
    }
    fig = fig.merge(Serialized::defaults(flags));
    let mut cfg: ShipConfig = fig
        .extract()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    if !args.paths.is_empty() {
        let mut input = Map::new();
        input.insert("name".to_owned(), s("cli"));
        input.insert("paths".to_owned(), Value::from(args.paths.clone()));
        input.insert("format".to_owned(), s(args.format.clone()));
        if let Some(d) = &args.distribution {
            input.insert("distribution".to_owned(), s(d.clone()));
        }
        if let Some(l) = &args.edge_location {
            input.insert("edge_location".to_owned(), s(l.clone()));
        }
        let input: edgelog_ship::InputConfig = figment::Figment::from(Serialized::defaults(input))
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid command-line input: {e}"))?;
        cfg.inputs.push(input);
    }
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    if let Some(addr) = cfg.metrics_listen {
        let handle = edgelog_collector::prometheus().clone();
        let listener = bind(addr, "ship metrics").await?;
        tracing::info!(address = %listener.local_addr()?, "serving /metrics and /healthz");
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let h = handle.clone();
                    async move { h.render() }
                }),
            )
            .route("/healthz", axum::routing::get(|| async { "ok\n" }))
            .fallback(|m: axum::http::Method, u: axum::http::Uri| async move {
                refusal(
                    axum::http::StatusCode::NOT_FOUND,
                    format!("no such endpoint: {m} {}", u.path()),
                )
            })
            .method_not_allowed_fallback(|m: axum::http::Method, u: axum::http::Uri| async move {
                refusal(
                    axum::http::StatusCode::METHOD_NOT_ALLOWED,
                    format!("{} does not take {m}: use GET", u.path()),
                )
            });
        // The collector's loop: its connection limits and JSON for hyper's own refusals.
        let limits = edgelog_collector::serve::HttpLimits {
            max_connections: edgelog_collector::serve::fit_connections(64),
            ..Default::default()
        };
        tokio::spawn(async move {
            let forever = std::future::pending::<()>();
            let served = edgelog_collector::serve::serve(listener, app, limits, "ship", forever);
            if let Err(e) = served.await {
                tracing::error!(error = %e, "metrics endpoint failed");
            }
        });
    }
    edgelog_ship::run(cfg, shutdown_signal()).await?;
    Ok(())
}

async fn run_dashboard(args: DashboardArgs) -> anyhow::Result<()> {
    let hups = RELOAD.get().map(|t| t.subscribe());
    let mut overrides = Vec::new();
    if let Some(l) = args.listen {
        overrides.push(("dashboard.listen", s(l.to_string())));
    }
    // The standalone dashboard has no collector to validate against; allow a token-less one.
    overrides.push(("collector.allow_unauthenticated", Value::from(true)));
    let cfg = Config::load(args.file.config.as_deref(), &overrides)?;
    let store = Arc::new(
        MetricsStore::new(cfg.dashboard.history_minutes)
            .with_reports_max_bytes(cfg.dashboard.reports_max_bytes as usize),
    );
    match cfg.metrics.kafka.clone() {
        Some(k) => {
            let feed = store.clone();
            tokio::spawn(async move {
                // Every aggregate is merged as it is read: none can be dropped.
                let merged = follow_metrics(&k, |u| feed.merge(&u)).await;
                if let Err(e) = merged {
                    tracing::error!(error = %e, "cannot read the metrics topic");
                }
            });
        }
        None => tracing::warn!(
            "no metrics source: set [metrics.kafka] to read the collectors' minute aggregates \
             (`edgelog demo` runs a collector and the dashboard in one process)"
        ),
    }
    let tail = tail_source(&cfg, None);
    let listener = bind(cfg.dashboard.listen, "dashboard").await?;
    let (alarms_tx, alarms_rx) = tokio::sync::watch::channel(cfg.dashboard.alarms.clone());
    let file = args.file.config.clone();
    let reloads = tokio::spawn(reload_on_hup(
        hups,
        cfg.clone(),
        move || {
            let new = Config::load(file.as_deref(), &overrides)?;
            let changed = *alarms_tx.borrow() != new.dashboard.alarms;
            alarms_tx.send_replace(new.dashboard.alarms.clone());
            Ok((
                new,
                if changed {
                    vec!["dashboard.alarms".to_owned()]
                } else {
                    vec![]
                },
            ))
        },
        vec!["dashboard.alarms".to_owned()],
    ));
    let mut dash_cfg = cfg.dashboard.clone();
    dash_cfg
        .api_alarms_file
        .get_or_insert_with(|| cfg.data_dir.join("state").join("api-alarms.json"));
    edgelog_dashboard::run_reloading(
        listener,
        store,
        &dash_cfg,
        shutdown_signal(),
        Some(alarms_rx),
        tail,
    )
    .await?;
    reloads.abort();
    Ok(())
}

fn edge_target(args: &EdgeArgs) -> Target {
    Target {
        url: args.to.clone(),
        token: args.token.clone(),
        compression: match args.compression {
            CompressionArg::None => Compression::None,
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Zstd => Compression::Zstd,
        },
        concurrency: args.concurrency.max(1),
        max_tries: args.max_tries,
        timeout: args.timeout,
        ack_log: args.ack_log.clone(),
        progress: (!args.progress.is_zero()).then_some(args.progress),
    }
}

/// How long `edgelog edge` may go on retrying past `--duration`.
const EDGE_RETRY_GRACE: Duration = Duration::from_secs(30);

async fn run_edge(args: EdgeArgs) -> anyhow::Result<()> {
    let target = edge_target(&args);
    let report = if let Some(file) = &args.replay {
        edgelog_edge::replay(file, args.distribution.clone(), args.batch, target).await?
    } else {
        if args.duration.is_none() && args.total.is_none() {
            tracing::info!("no --duration or --total: sending until interrupted");
        }
        let cfg = TrafficConfig {
            distributions: args.distributions,
            locations: args.locations,
            rate: args.rate,
            duration: args.duration,
            total: args.total,
            batch: args.batch,
            format: match args.format {
                FormatArg::Ndjson => WireFormat::Ndjson,
                FormatArg::W3c => WireFormat::W3c,
            },
            seed: args.seed,
            backfill_hours: args.backfill_hours,
            errors: ErrorMix {
                pct_4xx: args.error_4xx,
                pct_5xx: args.error_5xx,
            },
            burst_every: args.burst_every,
            burst_length: args.burst_length,
            burst: ErrorMix {
                pct_4xx: args.burst_4xx,
                pct_5xx: args.burst_5xx,
            },
            pregenerate: args.pregenerate,
        };
        // --duration bounds the whole run, retries included (a collector that never
        // comes back must not keep this running forever).
        let limit = args.duration.map(|d| d.saturating_add(EDGE_RETRY_GRACE));
        tokio::select! {
            r = edgelog_edge::run_traffic(cfg, target) => r,
            () = shutdown_signal() => bail!("interrupted"),
            () = async {
                match limit {
                    Some(l) => tokio::time::sleep(l).await,
                    None => std::future::pending().await,
                }
            } => bail!(
                "stopped {}s after --duration with requests still being retried",
                EDGE_RETRY_GRACE.as_secs()
            ),
        }
    };
    if args.json {
        let secs = report.elapsed.as_secs_f64().max(1e-9);
        let q = |p: f64| report.latency_us.value_at_quantile(p) as f64 / 1000.0;
        println!(
            "{}",
            serde_json::json!({
                "sent": report.sent_records, "acknowledged": report.acked_records,
                "refused": report.rejected_records, "given_up": report.failed_records,
                "requests": report.requests, "retries": report.retries,
                "elapsed_s": secs, "records_per_s": report.acked_records as f64 / secs,
                "mb_per_s": report.raw_bytes as f64 / secs / 1e6, "wire_mb_per_s": report.wire_bytes as f64 / secs / 1e6,
                "latency_ms": { "p50": q(0.5), "p99": q(0.99), "max": report.latency_us.max() as f64 / 1000.0 },
            })
        );
    } else {
        println!("{report}");
    }
    if report.failed_records > 0 {
        bail!("{} records were given up on", report.failed_records);
    }
    Ok(())
}

fn random_token() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..32)
        .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
        .collect()
}

/// The demo's settings, in the documented order: built-in defaults, then the demo's own
/// defaults where the file and the environment say nothing, then the flags given.
fn demo_config(args: &DemoArgs) -> anyhow::Result<(Config, String)> {
    let mut given = Vec::new();
    if let Some(d) = &args.data_dir {
        given.push(("data_dir", s(d.display().to_string())));
    }
    if let Some(l) = args.listen {
        given.push(("collector.listen", s(l.to_string())));
    }
    if let Some(l) = args.dashboard_listen {
        given.push(("dashboard.listen", s(l.to_string())));
    }
    if let Some(t) = &args.token {
        given.push(("collector.tokens", Value::from(vec![t.clone()])));
    }
    // What the file and the environment set, read without insisting on a token yet.
    let mut probe = given.clone();
    probe.push(("collector.allow_unauthenticated", Value::from(true)));
    let seen = Config::load(args.file.config.as_deref(), &probe)?;
    let builtin = Config::default();
    let mut overrides = Vec::new();
    if seen.data_dir == builtin.data_dir {
        overrides.push(("data_dir", s("edgelog-demo")));
    }
    if seen.dashboard.listen == builtin.dashboard.listen {
        overrides.push(("dashboard.listen", s("127.0.0.1:8081")));
    }
    // A token from the file stays unprinted: shown as a placeholder.
    let token = match (&args.token, seen.collector.tokens.first()) {
        (Some(t), _) => t.clone(),
        (None, Some(_)) => "<one of collector.tokens>".to_owned(),
        (None, None) => {
            let t = random_token();
            overrides.push(("collector.tokens", Value::from(vec![t.clone()])));
            t
        }
    };
    overrides.extend(given);
    let cfg = Config::load(args.file.config.as_deref(), &overrides)?;
    Ok((cfg, token))
}

async fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    let (mut cfg, token) = demo_config(&args)?;
    if args.file.config.is_none() {
        // Quick feedback for a first look: files within seconds, minutes published often.
        if let Some(standard) = cfg.sinks.standard_mut() {
            standard.max_age = Duration::from_secs(10);
        }
        cfg.collector.metrics_interval = Duration::from_secs(2);
        cfg.dashboard.alarm_interval = Duration::from_secs(5);
        // The alarm a new user should see fire and clear with the built-in 5xx bursts.
        cfg.dashboard
            .alarms
            .push(edgelog_dashboard::alarms::AlarmConfig {
                name: "5xx-error-rate".into(),
                distribution: "*".into(),
                metric: edgelog_dashboard::alarms::Metric::ErrorRate5xx,
                comparison: edgelog_dashboard::alarms::Comparison::GreaterThanThreshold,
                threshold: 5.0,
                period_minutes: 1,
                evaluation_periods: 3,
                datapoints_to_alarm: 2,
                treat_missing_data: edgelog_dashboard::alarms::MissingData::Missing,
            });
    }
    set_shutdown_budget(cfg.collector.shutdown_timeout);
    let bus = Bus::new(cfg.sinks.bus_capacity());
    let collector = build_collector(&cfg, &bus)?;
    let ingest = bind(cfg.collector.listen, "ingest API").await?;
    let dashboard = bind(cfg.dashboard.listen, "dashboard").await?;
    // The addresses really bound (port 0 picks one).
    let url = format!(
        "http://{}",
        ingest.local_addr().unwrap_or(cfg.collector.listen)
    );
    let dash = dashboard.local_addr().unwrap_or(cfg.dashboard.listen);
    let traffic_token = cfg.collector.tokens.first().cloned().unwrap_or_default();
    let logs = cfg.data_dir.join("standard-logs");
    println!(
        "edgelog demo is running\n  \
         ingest:        {url}/v1/records  (Authorization: Bearer {token})\n  \
         dashboard:     http://{dash}/\n  \
         health:        {url}/readyz  metrics: {url}/metrics\n  \
         standard logs: {logs}/  (Parquet, Hive-partitioned)\n  \
         query them:    duckdb -c \"SELECT count(*) FROM read_parquet('{logs}/**/*.parquet', hive_partitioning=true)\"\n  \
         traffic:       {traffic}\n  \
         stop with Ctrl-C or SIGTERM: everything is flushed to {dir} first",
        logs = logs.display(),
        dir = cfg.data_dir.display(),
        traffic = if args.no_traffic {
            "off (--no-traffic)".to_owned()
        } else {
            format!("{} records/s, a 5xx burst every 5 minutes", args.rate)
        },
    );
    let mut dash_cfg = cfg.dashboard.clone();
    dash_cfg
        .api_alarms_file
        .get_or_insert_with(|| cfg.data_dir.join("state").join("api-alarms.json"));
    let store = Arc::new(
        MetricsStore::new(dash_cfg.history_minutes)
            .with_reports_max_bytes(dash_cfg.reports_max_bytes as usize),
    );
    let merging = store.clone();
    // Merged in place as the aggregator publishes: a backfill cannot overflow anything.
    bus.on_minutes(move |u| merging.merge(u));
    let (tail_cfg, tail_bus) = (cfg.clone(), bus.clone());
    tokio::spawn(async move {
        let tail = tail_source(&tail_cfg, Some(&tail_bus));
        if let Err(e) =
            edgelog_dashboard::run(dashboard, store, &dash_cfg, shutdown_signal(), tail).await
        {
            tracing::error!(error = %e, "dashboard stopped");
        }
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let traffic = (!args.no_traffic).then(|| {
        let target = Target {
            url: url.clone(),
            token: traffic_token.clone(),
            compression: Compression::Gzip,
            concurrency: 2,
            max_tries: 1000,
            timeout: Duration::from_secs(30),
            ack_log: None,
            progress: None,
        };
        let cfg = TrafficConfig {
            rate: args.rate,
            batch: (args.rate as usize / 2).clamp(1, 1000),
            burst_every: Some(Duration::from_secs(300)),
            burst_length: Duration::from_secs(120),
            burst: ErrorMix {
                pct_4xx: 0.0,
                pct_5xx: 15.0,
            },
            ..TrafficConfig::default()
        };
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = edgelog_edge::run_traffic(cfg, target) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        })
    });
    let shutdown = async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    };
    collector.serve(ingest, shutdown).await?;
    if let Some(t) = traffic {
        t.abort();
    }
    println!(
        "edgelog demo stopped; standard logs are in {}",
        logs.display()
    );
    Ok(())
}

fn run_config(args: ConfigArgs) -> anyhow::Result<()> {
    let cfg = Config::load(args.file.config.as_deref(), &[])?;
    // `edgelog config | head` closes the pipe early: not an error worth a panic.
    use std::io::Write;
    match writeln!(std::io::stdout(), "{}", cfg.to_pretty()?) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(e).context("cannot print the configuration");
        }
        _ => {}
    }
    Ok(())
}

/// mimalloc's defaults keep freed memory for a second (v3's purge delay) and commit whole
/// arenas up front: under load that is 100+ MiB of RSS holding nothing. Its options are
/// read from the environment before `main`, so the binary sets its own defaults and runs
/// itself again, once (same process id). `MIMALLOC_*` variables set by the operator win.
fn with_allocator_defaults() {
    use std::os::unix::process::CommandExt;
    const DEFAULTS: &[(&str, &str)] = &[
        ("MIMALLOC_PURGE_DELAY", "25"),
        ("MIMALLOC_ARENA_EAGER_COMMIT", "0"),
    ];
    let missing: Vec<_> = DEFAULTS
        .iter()
        .filter(|(k, _)| std::env::var_os(k).is_none())
        .copied()
        .collect();
    if missing.is_empty() {
        return;
    }
    let mut args = std::env::args_os();
    let (Some(arg0), Ok(exe)) = (args.next(), std::env::current_exe()) else {
        return;
    };
    // Returns only if it failed (the binary was replaced, say): go on as we are.
    let _ = std::process::Command::new(exe)
        .arg0(arg0)
        .args(args)
        .envs(missing)
        .exec();
}

fn main() -> std::process::ExitCode {
    with_allocator_defaults();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = tokio::runtime::Builder::new_multi_thread()
        // Parsing runs on the blocking pool; a small pool keeps allocator heaps few.
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| {
            let result = rt.block_on(async move {
                watch_signals(matches!(cli.command, Command::Edge(_) | Command::Demo(_)))?;
                match cli.command {
                    Command::Collector(a) => run_collector(a).await,
                    Command::Dashboard(a) => run_dashboard(a).await,
                    Command::Edge(a) => run_edge(a).await,
                    Command::Demo(a) => run_demo(a).await,
                    Command::Config(a) => run_config(a),
                    Command::Ship(a) => run_ship(a).await,
                    Command::Compact(a) => compact::run_compact(a).await,
                }
            });
            // Work left on the blocking pool (a client library's flush) must not hold
            // the exit: everything undelivered is in the write-ahead log.
            rt.shutdown_timeout(Duration::from_secs(1));
            result
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_a_reload_cannot_apply_needs_a_restart() {
        let old = Config::default();
        let mut new = old.clone();
        new.sampling.default.0.insert("standard".into(), 50.0);
        new.collector.privacy.hash_key = "x".repeat(20);
        let reloadable = &["sampling", "collector.privacy"];
        assert!(needs_restart(&old, &new, reloadable).is_empty());
        new.collector.max_body_bytes += 1;
        new.sinks.0.remove("realtime");
        assert_eq!(
            needs_restart(&old, &new, reloadable),
            ["collector.max_body_bytes", "sinks.realtime"]
        );

        // A real-time sink's fields reload; its format does not.
        let old = Config::default();
        let mut new = old.clone();
        let reloadable: Vec<String> = old.sinks.reloadable();
        let reloadable: Vec<&str> = reloadable.iter().map(String::as_str).collect();
        if let Some(crate::sinks::SinkKind::Realtime(r)) = new.sinks.0.get_mut("realtime") {
            r.fields = vec!["sc-status".into()];
            r.distributions.insert("E1".into(), Default::default());
        }
        assert!(needs_restart(&old, &new, &reloadable).is_empty());
        if let Some(crate::sinks::SinkKind::Realtime(r)) = new.sinks.0.get_mut("realtime") {
            r.format = edgelog_sink_stream::MessageFormat::Tsv;
        }
        assert_eq!(
            needs_restart(&old, &new, &reloadable),
            ["sinks.realtime.format"]
        );
    }
}
