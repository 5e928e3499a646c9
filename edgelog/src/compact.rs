//! `edgelog compact`, and the same work in a collector every `compaction.interval`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use clap::Args;
use edgelog_sink_s3::{CompactionReport, StandardLogsConfig};
use figment::value::Value;

use crate::ConfigFile;
use crate::config::Config;

#[derive(Args)]
pub struct CompactArgs {
    #[command(flatten)]
    file: ConfigFile,
    /// Directory of the collector's data (local standard logs are under it).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Compact this Parquet sink only [default: every enabled one].
    #[arg(long, value_name = "NAME")]
    sink: Option<String>,
    /// A compacted file holds inputs up to about this many bytes (compaction.target_bytes).
    #[arg(long, value_name = "BYTES")]
    target_bytes: Option<u64>,
    /// ...and at most this many rows (compaction.max_rows).
    #[arg(long, value_name = "ROWS")]
    max_rows: Option<u64>,
    /// Only hours that ended, and files written, at least this long ago (compaction.min_age).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    min_age: Option<Duration>,
    /// Print what would be merged; change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// The Parquet sinks to compact, with the flags applied and checked.
fn sinks(cfg: &Config, only: Option<&str>) -> anyhow::Result<Vec<(String, StandardLogsConfig)>> {
    let all = cfg.sinks.parquet();
    if let Some(name) = only
        && !all.iter().any(|(n, _)| n == name)
    {
        bail!("no enabled parquet sink is named {name:?}");
    }
    Ok(all
        .into_iter()
        .filter(|(n, _)| only.is_none_or(|o| o == n))
        .collect())
}

/// One compactor at a time per sink on this machine (two planning different groups over
/// the same files would write rows twice).
fn lock(data_dir: &Path, sink: &str) -> anyhow::Result<Option<std::fs::File>> {
    let dir = data_dir.join("state");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("compaction-{sink}.lock"));
    let f =
        std::fs::File::create(&path).with_context(|| format!("cannot open {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

pub async fn run_compact(args: CompactArgs) -> anyhow::Result<()> {
    // Compaction serves nothing: the collector's rule that ingest needs a token is not
    // its concern, so a file holding only the sink's settings does.
    let mut overrides = vec![("collector.allow_unauthenticated", Value::from(true))];
    if let Some(d) = &args.data_dir {
        overrides.push(("data_dir", Value::from(d.display().to_string())));
    }
    let cfg = Config::load(args.file.config.as_deref(), &overrides)?;
    let mut failed = false;
    for (name, mut standard) in sinks(&cfg, args.sink.as_deref())? {
        let c = &mut standard.compaction;
        c.target_bytes = args.target_bytes.unwrap_or(c.target_bytes);
        c.max_rows = args.max_rows.unwrap_or(c.max_rows);
        c.min_age = args.min_age.unwrap_or(c.min_age);
        let key = format!("sinks.{name}.compaction");
        c.validate(&key).map_err(anyhow::Error::msg)?;
        let Some(_lock) = lock(&cfg.data_dir, &name)? else {
            bail!("another compaction of sink {name} is running on this machine");
        };
        let compactor = standard
            .compactor(&cfg.data_dir)
            .with_context(|| format!("cannot compact sink {name}"))?
            .dry_run(args.dry_run);
        tracing::info!(sink = %name, dry_run = args.dry_run, "compacting");
        match compactor.run(SystemTime::now()).await {
            Ok(report) => {
                record(&name, &report);
                let mut line = serde_json::to_value(&report)?;
                line["sink"] = name.clone().into();
                line["dry_run"] = args.dry_run.into();
                println!("{line}");
                // A partition left as it was is a failure to report, not a success: cron
                // and monitoring go by the exit status.
                if report.failed_partitions > 0 {
                    failed = true;
                    tracing::error!(sink = %name, failed_partitions = report.failed_partitions, last_error = report.last_error.as_deref().unwrap_or(""), "partitions left as they were; run it again once the cause is fixed");
                }
            }
            Err(e) => {
                failed = true;
                tracing::error!(sink = %name, error = %format!("{:#}", anyhow::Error::new(e)), "compaction stopped; run it again to go on");
            }
        }
    }
    if failed {
        bail!("compaction did not finish everywhere (nothing is lost; run it again)");
    }
    Ok(())
}

fn record(sink: &str, r: &CompactionReport) {
    let sink = sink.to_owned();
    metrics::counter!("edgelog_compaction_files_total", "sink" => sink.clone(), "side" => "in")
        .increment(r.files_in);
    metrics::counter!("edgelog_compaction_files_total", "sink" => sink.clone(), "side" => "out")
        .increment(r.files_out);
    metrics::counter!("edgelog_compaction_duplicates_removed_total", "sink" => sink)
        .increment(r.duplicates_removed);
}

/// Runs compaction every `compaction.interval` for each Parquet sink that sets one.
pub fn spawn_compactions(cfg: &Config) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    for (name, standard) in cfg.sinks.parquet() {
        let every = standard.compaction.interval;
        if every.is_zero() {
            continue;
        }
        let compactor = standard
            .compactor(&cfg.data_dir)
            .with_context(|| format!("cannot compact sink {name}"))?;
        let data_dir = cfg.data_dir.clone();
        tracing::info!(sink = %name, every = %humantime::format_duration(every), "compaction on");
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let _lock = match lock(&data_dir, &name) {
                    Ok(Some(l)) => l,
                    Ok(None) => {
                        tracing::info!(sink = %name, "compaction skipped: another one is running");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(sink = %name, error = %format!("{e:#}"), "compaction skipped");
                        continue;
                    }
                };
                match compactor.run(SystemTime::now()).await {
                    Ok(r) => {
                        record(&name, &r);
                        if r.files_in > 0 || r.repaired > 0 || r.duplicates_removed > 0 {
                            tracing::info!(sink = %name, files_in = r.files_in, files_out = r.files_out, rows = r.rows, repaired = r.repaired, duplicates_removed = r.duplicates_removed, "compaction done");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(sink = %name, error = %format!("{:#}", anyhow::Error::new(e)), "compaction stopped; the next run goes on");
                    }
                }
            }
        }));
    }
    Ok(tasks)
}
