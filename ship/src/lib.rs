//! `edgelog ship`: follows the access logs real web servers write (nginx, Caddy, Envoy,
//! CloudFront standard log files) and delivers their lines to a collector as records.
//!
//! Exactly once: a batch's byte range is saved before it is sent and the new offset after
//! it is answered; the batch carries an idempotency key made of the file's fingerprint and
//! the range, so resending a batch whose answer a crash lost is recognized by the
//! collector. Lines that cannot be mapped are counted and logged, never dropped silently.
//! While the collector is unreachable, the log files themselves are the spool: ship
//! retries without end and keeps files renamed or deleted by rotation open until read.

mod checkpoint;
pub mod config;
pub mod mapping;
mod tail;

use std::fs::File;
use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use edgelog_client::{Batch, ErrorKind, Format, Poster, Retry};
use edgelog_record::w3c::distribution_from_file_name;
use edgelog_record::write_json;

pub use checkpoint::{Checkpoints, FileState};
pub use config::{InputConfig, ShipConfig};
pub use mapping::{Mapping, Preset};

use tail::{Chunk, Files};

/// Why ship stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShipError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("state directory {path}: {reason}")]
    State { path: String, reason: String },
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Totals since start, for the progress line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Progress {
    pub lines_read: u64,
    pub lines_sent: u64,
    pub accepted: u64,
    pub refused: u64,
    pub unmapped: u64,
    pub duplicates: u64,
}

struct Input {
    cfg: InputConfig,
    mapping: Mapping,
    files: Files,
}

/// A chunk turned into a request body.
struct Prepared {
    body: Vec<u8>,
    lines: u64,
    unmapped: u64,
    format: Format,
    distribution: Option<String>,
    /// The first line not mapped: its offset and why.
    first_unmapped: Option<(u64, String)>,
}

/// Runs until `shutdown` completes. A batch in flight then is abandoned; its range stays
/// saved as pending and is resent, with the same key, on the next start.
pub async fn run(
    cfg: ShipConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<Progress, ShipError> {
    cfg.validate().map_err(ShipError::Config)?;
    let state_err = |reason: String| ShipError::State {
        path: cfg.state_dir.display().to_string(),
        reason,
    };
    std::fs::create_dir_all(&cfg.state_dir).map_err(|e| state_err(e.to_string()))?;
    let lock = File::create(cfg.state_dir.join("lock")).map_err(|e| state_err(e.to_string()))?;
    lock.try_lock()
        .map_err(|_| state_err("another edgelog ship uses it (its lock is held)".into()))?;
    let mut cp = Checkpoints::load(&cfg.state_dir).map_err(state_err)?;
    let poster = Poster::builder(cfg.collector.clone())
        .token(cfg.token.clone())
        .compression(cfg.compression)
        .timeout(cfg.request_timeout)
        .pool(2)
        .retry(Retry {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            // Bounded, so the loop goes back to scanning (rotations during an outage
            // are followed); the batch stays pending and is resent with its key.
            max_tries: Some(5),
            max_retry_after: Duration::from_secs(60),
        })
        .build()
        .map_err(|e| ShipError::Config(e.to_string()))?;
    let mut inputs = Vec::new();
    for i in &cfg.inputs {
        inputs.push(Input {
            cfg: i.clone(),
            mapping: i.mapping().map_err(ShipError::Config)?,
            files: Files::new(
                &i.name,
                i.paths.clone(),
                i.format == Preset::Cloudfront,
                cfg.rotate_wait,
                cfg.max_gz_bytes,
            ),
        });
    }
    tracing::info!(collector = %cfg.collector, inputs = inputs.len(), state_dir = %cfg.state_dir.display(), "shipping");
    let mut shutdown = pin!(shutdown);
    let mut progress = Progress::default();
    let mut last_progress = Instant::now();
    let mut last_problems: Vec<String> = Vec::new();
    // Halved when the collector says a batch is too large (413), down to one line.
    let mut batch_limit = cfg.batch_bytes;
    // Files stay open while they may still grow: raise the soft limit to the hard one,
    // and keep some descriptors for the checkpoint file and the connections.
    let nofile = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let per_input = (nofile.saturating_sub(64) / inputs.len().max(1) as u64).max(1);
    for input in &mut inputs {
        input
            .files
            .set_max_open(usize::try_from(per_input).unwrap_or(usize::MAX));
    }
    loop {
        let now = Instant::now();
        let mut problems = Vec::new();
        for k in 0..inputs.len() {
            // A file matched by two inputs is followed by the first only.
            let claimed: std::collections::HashSet<(u64, u64)> = inputs
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != k)
                .flat_map(|(_, i)| i.files.tracked.iter().map(|t| (t.dev, t.ino)))
                .collect();
            problems.extend(inputs[k].files.scan(&cp, now, &claimed));
        }
        if problems != last_problems {
            for p in &problems {
                tracing::warn!(problem = %p, "cannot follow a file");
            }
            last_problems = problems;
        }
        let mut worked = false;
        for k in 0..inputs.len() {
            let mut i = 0;
            while i < inputs[k].files.tracked.len() {
                // A file that failed waits on its own; the others go on.
                if inputs[k].files.tracked[i]
                    .retry_at
                    .is_some_and(|at| at > Instant::now())
                {
                    i += 1;
                    continue;
                }
                // A few chunks per file per round, so one busy file does not starve others.
                let mut removed = false;
                for _ in 0..8 {
                    let stop = tokio::select! {
                        r = ship_one(&cfg, &poster, &mut inputs, k, i, &mut cp, &mut progress, &mut batch_limit) => match r {
                            Ok(true) => { worked = true; false }
                            Ok(false) => true,
                            Err(Later::SetAside) => {
                                metrics::counter!("edgelog_ship_files_set_aside_total", "input" => inputs[k].cfg.name.clone()).increment(1);
                                inputs[k].files.set_aside(i);
                                removed = true;
                                true
                            }
                            Err(Later::After(wait)) => {
                                inputs[k].files.tracked[i].retry_at = Some(Instant::now() + wait);
                                true
                            }
                        },
                        _ = &mut shutdown => return Ok(stopped(progress, &mut cp, &inputs, &cfg.state_dir)),
                    };
                    if stop {
                        break;
                    }
                }
                if !removed {
                    i += 1;
                }
            }
        }
        // Renames and moves the scans saw, for files with nothing to send.
        // (A failure is logged by the checkpoints.)
        let _ = save(&mut cp, &inputs, &cfg.state_dir);
        publish_gauges(&inputs);
        if !cfg.progress_interval.is_zero() && last_progress.elapsed() >= cfg.progress_interval {
            last_progress = Instant::now();
            let lag: u64 = inputs
                .iter()
                .flat_map(|i| &i.files.tracked)
                .map(|t| t.len.saturating_sub(t.offset))
                .sum();
            let files: usize = inputs.iter().map(|i| i.files.tracked.len()).sum();
            // Each file's lag, the first ten.
            let by_file: Vec<String> = inputs
                .iter()
                .flat_map(|i| &i.files.tracked)
                .take(10)
                .map(|t| format!("{}={}", t.path.display(), t.len.saturating_sub(t.offset)))
                .collect();
            tracing::info!(
                lines_read = progress.lines_read,
                lines_sent = progress.lines_sent,
                accepted = progress.accepted,
                refused = progress.refused,
                unmapped = progress.unmapped,
                files,
                lag_bytes = lag,
                lag_by_file = %by_file.join(","),
                "progress"
            );
        }
        if !worked {
            tokio::select! {
                _ = tokio::time::sleep(cfg.poll_interval) => {}
                _ = &mut shutdown => return Ok(stopped(progress, &mut cp, &inputs, &cfg.state_dir)),
            }
        }
    }
}

/// The wait after a failure that may pass (a read error, the collector away).
const RETRY: Duration = Duration::from_secs(5);

/// When a file that could not go now is tried again.
enum Later {
    /// After this long (the state could not be saved, the collector is away, the batch
    /// was refused as a whole; its range stays pending).
    After(Duration),
    /// Not until it changes: another try would read the same bytes (see
    /// [`tail::Files::set_aside`]).
    SetAside,
}

/// On a clean stop every place goes into `checkpoints.json` (the journal emptied).
fn stopped(p: Progress, cp: &mut Checkpoints, inputs: &[Input], state_dir: &Path) -> Progress {
    if let Err(e) = save(cp, inputs, state_dir).and_then(|()| cp.fold(state_dir)) {
        tracing::warn!(error = %e, "checkpoints not folded into checkpoints.json: the journal is read on start");
    }
    tracing::info!(
        lines_read = p.lines_read,
        accepted = p.accepted,
        refused = p.refused,
        unmapped = p.unmapped,
        "stopped"
    );
    p
}

fn publish_gauges(inputs: &[Input]) {
    for i in inputs {
        let lag: u64 = i
            .files
            .tracked
            .iter()
            .map(|t| t.len.saturating_sub(t.offset))
            .sum();
        let name = i.cfg.name.clone();
        metrics::gauge!("edgelog_ship_lag_bytes", "input" => name.clone()).set(lag as f64);
        metrics::gauge!("edgelog_ship_files", "input" => name).set(i.files.tracked.len() as f64);
    }
}

/// A batch's idempotency key: the file, the range, and the bytes' hash (a file truncated
/// and written again sends other lines over the same range, which the collector must not
/// take for a resend). The hash leaves out the line break added to a last line without
/// one, which a resend of the range does not read.
fn batch_key(input: &str, fp: u64, chunk: &Chunk) -> String {
    let range = usize::try_from(chunk.end - chunk.start).unwrap_or(usize::MAX);
    let bytes = &chunk.bytes[..chunk.bytes.len().min(range)];
    format!(
        "ship-{input}-{fp:016x}-{}-{}-{:016x}",
        chunk.start,
        chunk.end,
        xxhash_rust::xxh3::xxh3_64(bytes)
    )
}

/// Every file's place, saved: finished files still there keep their entry, so they are
/// never sent again. Only what changed is written (see [`Checkpoints::save`]).
fn save(cp: &mut Checkpoints, inputs: &[Input], state_dir: &Path) -> Result<(), String> {
    let now = now_ms();
    for input in inputs {
        for fp in &input.files.seen_done {
            cp.touch(&checkpoint::file_key(&input.cfg.name, *fp), now);
        }
        for t in &input.files.tracked {
            place(cp, &input.cfg.name, t, now);
        }
    }
    let present: std::collections::HashSet<(u64, u64)> = inputs
        .iter()
        .flat_map(|i| i.files.present.iter().copied())
        .collect();
    cp.forget_old(now, &present);
    cp.save(state_dir)
}

/// File `i` of `input`'s place, saved (before and after each of its batches).
fn save_file(
    cp: &mut Checkpoints,
    input: &Input,
    i: usize,
    state_dir: &Path,
) -> Result<(), String> {
    let now = now_ms();
    place(cp, &input.cfg.name, &input.files.tracked[i], now);
    cp.save(state_dir)
}

fn place(cp: &mut Checkpoints, input: &str, t: &tail::Tracked, now: u64) {
    cp.set(
        checkpoint::file_key(input, t.fp),
        FileState {
            path: t.path.clone(),
            dev: t.dev,
            ino: t.ino,
            offset: t.offset,
            pending: t.pending,
            done: t.done,
            seen_ms: now,
        },
    );
}

/// Ships the next chunk of file `i` of input `k`. `Ok(false)`: nothing to send now.
/// `Err(later)`: see [`Later`] (the state could not be saved, or the batch was
/// refused as a whole; its range stays pending).
#[allow(clippy::too_many_arguments)]
async fn ship_one(
    cfg: &ShipConfig,
    poster: &Poster,
    inputs: &mut [Input],
    k: usize,
    i: usize,
    cp: &mut Checkpoints,
    progress: &mut Progress,
    batch_limit: &mut usize,
) -> Result<bool, Later> {
    let input = &mut inputs[k];
    let name = input.cfg.name.clone();
    let chunk = match edgelog_wal::state_file::blocking(|| {
        input
            .files
            .read(i, *batch_limit, cfg.batch_bytes, Instant::now())
    }) {
        Ok(Some(c)) => c,
        Ok(None) => {
            if input.files.tracked[i].done {
                save(cp, inputs, &cfg.state_dir).map_err(|_| Later::After(RETRY))?;
            }
            return Ok(false);
        }
        Err(e) => {
            let t = &input.files.tracked[i];
            if t.is_gz {
                // Corrupt, truncated or too big: another try reads the same bytes.
                tracing::error!(input = %name, path = %t.path.display(), error = %e, "cannot read a .gz: set aside until it changes; the other files go on");
                return Err(Later::SetAside);
            }
            tracing::error!(input = %name, path = %t.path.display(), error = %e, "cannot read a file");
            return Err(Later::After(RETRY));
        }
    };
    let t = &input.files.tracked[i];
    let prepared = if chunk.oversized {
        tracing::error!(input = %name, path = %t.path.display(), offset = chunk.start, max = cfg.batch_bytes, "a line longer than batch_bytes is skipped");
        Prepared {
            body: Vec::new(),
            lines: 0,
            unmapped: 1,
            format: Format::Ndjson,
            distribution: None,
            first_unmapped: None,
        }
    } else {
        match edgelog_wal::state_file::blocking(|| prepare(&input.mapping, t, &chunk)) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(input = %name, path = %t.path.display(), error = %e, "cannot send this file: set aside until it changes; the other files go on");
                return Err(Later::SetAside);
            }
        }
    };
    if let Some((offset, reason)) = &prepared.first_unmapped {
        // The first ones, then one in each power of ten: a file of garbage must not
        // flood the log. Every one is counted.
        let before = progress.unmapped;
        let after = before + prepared.unmapped;
        if before < 10 || after.ilog10() > before.ilog10() {
            tracing::warn!(input = %name, path = %t.path.display(), offset, reason = %reason, in_batch = prepared.unmapped, total = after, "line not mapped; counted and skipped");
        }
    }
    if prepared.lines > 0 {
        let key = batch_key(&name, t.fp, &chunk);
        if !chunk.resend {
            input.files.tracked[i].pending = Some((chunk.start, chunk.end));
            if save_file(cp, &inputs[k], i, &cfg.state_dir).is_err() {
                // Not sent: a range is sent only once saved as pending.
                inputs[k].files.tracked[i].pending = None;
                return Err(Later::After(RETRY));
            }
        }
        let batch = Batch {
            body: Bytes::from(prepared.body),
            format: prepared.format,
            distribution: prepared.distribution,
            records: prepared.lines,
            key: Some(key),
        };
        let mut retries = 0;
        let r = poster.post(&batch, &mut retries).await;
        metrics::counter!("edgelog_ship_retries_total", "input" => name.clone()).increment(retries);
        match r {
            Ok(a) => {
                let refused = a.rejected_total.max(a.rejected.len() as u64);
                progress.lines_sent += prepared.lines;
                progress.accepted += a.accepted;
                progress.refused += refused;
                if a.duplicate {
                    progress.duplicates += a.accepted;
                }
                metrics::counter!("edgelog_ship_lines_sent_total", "input" => name.clone())
                    .increment(prepared.lines);
                metrics::counter!("edgelog_ship_records_accepted_total", "input" => name.clone())
                    .increment(a.accepted);
                metrics::counter!("edgelog_ship_records_refused_total", "input" => name.clone())
                    .increment(refused);
                for r in a.rejected.iter().take(3) {
                    tracing::warn!(input = %name, line = r.line, reason = %r.reason, "collector refused a line");
                }
            }
            Err(e) if e.status == Some(413) && prepared.lines > 1 => {
                // Nothing of it was stored: drop the pending range and send less, down
                // to a line at a time.
                *batch_limit = (*batch_limit / 2).max(1);
                tracing::warn!(input = %name, error = %e, batch_bytes = *batch_limit, "collector says the batch is too large; sending smaller ones");
                inputs[k].files.tracked[i].pending = None;
                save_file(cp, &inputs[k], i, &cfg.state_dir).map_err(|_| Later::After(RETRY))?;
                return Err(Later::After(Duration::ZERO));
            }
            Err(e) if e.status == Some(413) => {
                // One line the collector will never take: counted, logged, passed.
                progress.refused += prepared.lines;
                metrics::counter!("edgelog_ship_records_refused_total", "input" => name.clone())
                    .increment(prepared.lines);
                tracing::error!(input = %name, error = %e, offset = chunk.start, "collector refuses a single line as too large; skipped");
            }
            Err(e) if e.kind == ErrorKind::Refused => {
                tracing::error!(input = %name, error = %e, "collector refused a batch as a whole; retrying it later");
                return Err(Later::After(Duration::from_secs(10)));
            }
            Err(e) => {
                tracing::warn!(input = %name, error = %e, "batch not delivered; retrying");
                return Err(Later::After(RETRY));
            }
        }
    }
    // Counted once the range is done: a batch retried is read again, not more lines.
    progress.lines_read += prepared.lines + prepared.unmapped;
    progress.unmapped += prepared.unmapped;
    metrics::counter!("edgelog_ship_lines_read_total", "input" => name.clone())
        .increment(prepared.lines + prepared.unmapped);
    metrics::counter!("edgelog_ship_lines_unmapped_total", "input" => name.clone())
        .increment(prepared.unmapped);
    inputs[k].files.tracked[i].advance(&chunk);
    if save_file(cp, &inputs[k], i, &cfg.state_dir).is_err() {
        // The batch is in; a restart resends it with its key and the collector says so.
        return Err(Later::After(RETRY));
    }
    Ok(true)
}

fn prepare(mapping: &Mapping, t: &tail::Tracked, chunk: &Chunk) -> Result<Prepared, String> {
    let mut p = Prepared {
        body: Vec::with_capacity(chunk.bytes.len() + chunk.bytes.len() / 2),
        lines: 0,
        unmapped: 0,
        format: Format::Ndjson,
        distribution: mapping.distribution().map(str::to_owned),
        first_unmapped: None,
    };
    let mut at = chunk.start;
    match mapping.preset() {
        Preset::Cloudfront => {
            p.format = Format::W3c;
            if p.distribution.is_none() {
                p.distribution = Some(distribution_from_file_name(&t.path).ok_or_else(|| {
                    "no distribution: name the file <ID>.YYYY-MM-DD-HH.<unique>.gz as CloudFront does, or set the input's distribution".to_owned()
                })?);
            }
            p.body = t.w3c_header().map_err(|e| e.to_string())?;
            for line in chunk.bytes.split_inclusive(|&b| b == b'\n') {
                if !line.starts_with(b"#") && !line.trim_ascii().is_empty() {
                    p.body.extend_from_slice(line);
                    p.lines += 1;
                }
            }
        }
        Preset::Ndjson => {
            for line in chunk.bytes.split_inclusive(|&b| b == b'\n') {
                if !line.trim_ascii().is_empty() {
                    p.body.extend_from_slice(line);
                    p.lines += 1;
                }
            }
        }
        _ => {
            for line in chunk.bytes.split_inclusive(|&b| b == b'\n') {
                let offset = at;
                at += line.len() as u64;
                let text = line.strip_suffix(b"\n").unwrap_or(line);
                let text = text.strip_suffix(b"\r").unwrap_or(text);
                if text.trim_ascii().is_empty() {
                    continue;
                }
                match mapping.map_line(text, t.fp ^ offset) {
                    Ok(rec) => {
                        write_json(&rec, &mut p.body);
                        p.body.push(b'\n');
                        p.lines += 1;
                    }
                    Err(reason) => {
                        p.unmapped += 1;
                        p.first_unmapped.get_or_insert((offset, reason));
                    }
                }
            }
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(start: u64, end: u64, bytes: &[u8]) -> Chunk {
        Chunk {
            start,
            end,
            bytes: bytes.to_vec(),
            resend: false,
            oversized: false,
        }
    }

    #[test]
    fn a_batch_key_names_its_bytes_and_a_resend_of_the_range_gets_the_same() {
        let a = batch_key("nginx", 7, &chunk(0, 6, b"abcde\n"));
        assert_eq!(a, batch_key("nginx", 7, &chunk(0, 6, b"abcde\n")));
        // Other lines over the same range (a file truncated and written again).
        assert_ne!(a, batch_key("nginx", 7, &chunk(0, 6, b"vwxyz\n")));
        // A last line sent with a line break added, then resent as the file holds it.
        assert_eq!(
            batch_key("nginx", 7, &chunk(6, 9, b"end\n")),
            batch_key("nginx", 7, &chunk(6, 9, b"end"))
        );
    }
}
