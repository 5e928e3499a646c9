//! Bodies out, acknowledgements in: the sending side shared by traffic and replay.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use edgelog_record::{w3c, write_json};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::{Compression, Generator, TrafficConfig, WireFormat};

/// Where and how to send.
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL of the collector, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    pub token: String,
    pub compression: Compression,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Tries per body before giving up on it (each after a growing pause, capped at 2 s).
    pub max_tries: usize,
    pub timeout: Duration,
    /// Append the request ids of acknowledged records here, one per line.
    pub ack_log: Option<PathBuf>,
    /// Print a progress line this often (to stderr).
    pub progress: Option<Duration>,
}

/// One request body ready to go.
pub struct OutBody {
    pub body: Bytes,
    pub raw_len: usize,
    pub records: u64,
    /// Query string (`distribution=...&format=...`), without `?`.
    pub query: String,
    /// Request ids by line, for the ack log (None where a line is a header).
    pub ids: Vec<Option<String>>,
}

/// What happened, for the closing report.
#[derive(Debug)]
pub struct Report {
    pub sent_records: u64,
    pub acked_records: u64,
    pub rejected_records: u64,
    /// Records in bodies that were given up on after all tries.
    pub failed_records: u64,
    pub requests: u64,
    pub retries: u64,
    pub raw_bytes: u64,
    pub wire_bytes: u64,
    pub elapsed: Duration,
    /// Acknowledgement latency of successful requests, microseconds.
    pub latency_us: Histogram<u64>,
    /// Reasons of the first refusals seen.
    pub sample_rejections: Vec<String>,
}

impl Default for Report {
    fn default() -> Self {
        Report {
            sent_records: 0,
            acked_records: 0,
            rejected_records: 0,
            failed_records: 0,
            requests: 0,
            retries: 0,
            raw_bytes: 0,
            wire_bytes: 0,
            elapsed: Duration::ZERO,
            latency_us: Histogram::new_with_bounds(1, 600_000_000, 3)
                .expect("constant histogram bounds are valid"),
            sample_rejections: Vec::new(),
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let q = |p: f64| self.latency_us.value_at_quantile(p) as f64 / 1000.0;
        writeln!(f, "records sent:         {}", self.sent_records)?;
        writeln!(f, "records acknowledged: {}", self.acked_records)?;
        writeln!(f, "records refused:      {}", self.rejected_records)?;
        writeln!(f, "records given up on:  {}", self.failed_records)?;
        writeln!(
            f,
            "requests:             {} ({} retries)",
            self.requests, self.retries
        )?;
        writeln!(f, "elapsed:              {:.2} s", secs)?;
        writeln!(
            f,
            "throughput:           {:.0} records/s, {:.1} MB/s uncompressed, {:.1} MB/s on the wire",
            self.acked_records as f64 / secs,
            self.raw_bytes as f64 / secs / 1e6,
            self.wire_bytes as f64 / secs / 1e6
        )?;
        write!(
            f,
            "ack latency:          p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            q(0.5),
            q(0.99),
            self.latency_us.max() as f64 / 1000.0
        )?;
        for r in &self.sample_rejections {
            write!(f, "\nrefused: {r}")?;
        }
        Ok(())
    }
}

/// Compresses a body.
pub fn compress(raw: &[u8], c: Compression) -> Bytes {
    match c {
        Compression::None => Bytes::copy_from_slice(raw),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(
                Vec::with_capacity(raw.len() / 4),
                flate2::Compression::fast(),
            );
            let _ = e.write_all(raw);
            Bytes::from(e.finish().unwrap_or_default())
        }
        Compression::Zstd => Bytes::from(zstd::bulk::compress(raw, 1).unwrap_or_default()),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Generates bodies per `cfg` into `tx`, pacing to the rate. Runs on a blocking thread.
pub(crate) fn produce(cfg: &TrafficConfig, compression: Compression, tx: &mpsc::Sender<OutBody>) {
    let mut generator = Generator::new(cfg.seed, cfg.distributions, cfg.locations);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(cfg.seed ^ 0x5eed);
    let start = Instant::now();
    let batch = cfg.batch.max(1);
    let mut made: u64 = 0;
    let mut body_no: usize = 0;
    let mut pool: Vec<Arc<OutBody>> = Vec::new();
    loop {
        if cfg.total.is_some_and(|t| made >= t)
            || cfg.duration.is_some_and(|d| start.elapsed() >= d)
        {
            return;
        }
        if cfg.rate > 0.0 {
            let due = Duration::from_secs_f64(made as f64 / cfg.rate);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let n = cfg.total.map_or(batch, |t| batch.min((t - made) as usize));
        let body = if let Some(size) = cfg.pregenerate.filter(|&s| s > 0) {
            if pool.len() < size {
                pool.push(Arc::new(make_body(
                    cfg,
                    compression,
                    &mut generator,
                    &mut rng,
                    start,
                    body_no,
                    n,
                )));
            }
            let b = &pool[body_no % pool.len()];
            OutBody {
                body: b.body.clone(),
                raw_len: b.raw_len,
                records: b.records,
                query: b.query.clone(),
                ids: Vec::new(),
            }
        } else {
            make_body(
                cfg,
                compression,
                &mut generator,
                &mut rng,
                start,
                body_no,
                n,
            )
        };
        made += body.records;
        body_no += 1;
        if tx.blocking_send(body).is_err() {
            return;
        }
    }
}

fn make_body(
    cfg: &TrafficConfig,
    compression: Compression,
    generator: &mut Generator,
    rng: &mut rand::rngs::SmallRng,
    start: Instant,
    body_no: usize,
    n: usize,
) -> OutBody {
    let errors = match cfg.burst_every {
        Some(every) if !every.is_zero() => {
            let phase = start.elapsed().as_secs_f64() % every.as_secs_f64();
            // The burst comes at the end of each period, so the first minutes are calm.
            if phase >= every.as_secs_f64() - cfg.burst_length.as_secs_f64() {
                cfg.burst
            } else {
                cfg.errors
            }
        }
        _ => cfg.errors,
    };
    let now = now_ms();
    let time = |rng: &mut rand::rngs::SmallRng| {
        if cfg.backfill_hours > 0.0 {
            now - (rng.random::<f64>() * cfg.backfill_hours * 3_600_000.0) as i64
        } else {
            now - rng.random_range(0..500)
        }
    };
    let (raw, ids, query) = match cfg.format {
        WireFormat::Ndjson => {
            let mut raw = Vec::with_capacity(n * 1000);
            let mut ids = Vec::with_capacity(n);
            for i in 0..n {
                let ts = time(rng);
                let r = generator.record(ts, body_no * n + i, errors);
                ids.push(r.x_edge_request_id.clone());
                write_json(&r, &mut raw);
                raw.push(b'\n');
            }
            (raw, ids, String::new())
        }
        WireFormat::W3c => {
            // A W3C line carries no distribution: one distribution per body.
            let dist = body_no % cfg.distributions.max(1);
            let mut text = String::with_capacity(n * 800);
            w3c::write_header(&mut text);
            let mut ids = vec![None, None];
            let mut id = String::new();
            for _ in 0..n {
                let ts = time(rng);
                let mut r = generator.record(ts - ts.rem_euclid(1000), dist, errors);
                id = std::mem::take(&mut r.distribution_id);
                ids.push(r.x_edge_request_id.clone());
                w3c::write_line(&r, &mut text);
            }
            (
                text.into_bytes(),
                ids,
                format!("distribution={id}&format=w3c"),
            )
        }
    };
    OutBody {
        body: compress(&raw, compression),
        raw_len: raw.len(),
        records: n as u64,
        query,
        ids,
    }
}

#[derive(Deserialize)]
struct Answer {
    accepted: u64,
    #[serde(default)]
    rejected: Vec<Refused>,
    #[serde(default)]
    rejected_total: u64,
}

#[derive(Deserialize)]
struct Refused {
    line: u64,
    reason: String,
}

enum Outcome {
    Acked { answer: Answer, latency: Duration },
    Refused { status: u16, text: String },
    GaveUp { last: String },
}

async fn send_one(
    client: &reqwest::Client,
    target: &Target,
    b: &OutBody,
    retries: &mut u64,
) -> Outcome {
    let url = if b.query.is_empty() {
        format!("{}/v1/records", target.url.trim_end_matches('/'))
    } else {
        format!(
            "{}/v1/records?{}",
            target.url.trim_end_matches('/'),
            b.query
        )
    };
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times()
        .build();
    let mut last = String::new();
    for attempt in 0..target.max_tries.max(1) {
        if attempt > 0 {
            *retries += 1;
            tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(2))).await;
        }
        let mut req = client
            .post(&url)
            .bearer_auth(&target.token)
            .header(
                "content-type",
                if b.query.contains("format=w3c") {
                    "text/plain"
                } else {
                    "application/x-ndjson"
                },
            )
            .body(b.body.clone());
        match target.compression {
            Compression::Gzip => req = req.header("content-encoding", "gzip"),
            Compression::Zstd => req = req.header("content-encoding", "zstd"),
            Compression::None => {}
        }
        let t0 = Instant::now();
        match req.send().await {
            Err(e) => last = format!("request failed: {e}"),
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                match status {
                    200 | 400 if text.starts_with('{') && text.contains("\"accepted\"") => {
                        if let Ok(answer) = serde_json::from_str::<Answer>(&text) {
                            return Outcome::Acked {
                                answer,
                                latency: t0.elapsed(),
                            };
                        }
                        last = format!("unreadable answer: {text}");
                    }
                    429 | 500..=599 => last = format!("HTTP {status}: {text}"),
                    _ => return Outcome::Refused { status, text },
                }
            }
        }
    }
    Outcome::GaveUp { last }
}

/// Sends every body from `rx` with `target.concurrency` requests in flight.
pub async fn send_all(target: Target, rx: mpsc::Receiver<OutBody>) -> Report {
    let client = match reqwest::Client::builder()
        .timeout(target.timeout)
        .pool_max_idle_per_host(target.concurrency)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client");
            return Report::default();
        }
    };
    let ack_log = target.ack_log.as_ref().and_then(|p| {
        match File::options().create(true).append(true).open(p) {
            Ok(f) => Some(Mutex::new(BufWriter::new(f))),
            Err(e) => {
                tracing::error!(path = %p.display(), error = %e, "cannot open the ack log");
                None
            }
        }
    });
    let shared = Arc::new((
        Mutex::new(Report::default()),
        ack_log,
        tokio::sync::Mutex::new(rx),
    ));
    let start = Instant::now();
    let progress = target.progress.map(|every| {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Ok(r) = shared.0.lock() {
                    let secs = start.elapsed().as_secs_f64();
                    eprintln!(
                        "edge: {:.0} s, {} sent, {} acknowledged ({:.0}/s), {} refused, {} given up, {} retries",
                        secs, r.sent_records, r.acked_records, r.acked_records as f64 / secs.max(1e-9),
                        r.rejected_records, r.failed_records, r.retries
                    );
                }
            }
        })
    });
    let mut workers = Vec::new();
    for _ in 0..target.concurrency.max(1) {
        let (shared, client, target) = (shared.clone(), client.clone(), target.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let Some(b) = shared.2.lock().await.recv().await else {
                    break;
                };
                let mut retries = 0;
                let outcome = send_one(&client, &target, &b, &mut retries).await;
                let Ok(mut r) = shared.0.lock() else { break };
                r.sent_records += b.records;
                r.requests += 1 + retries;
                r.retries += retries;
                r.raw_bytes += b.raw_len as u64;
                r.wire_bytes += b.body.len() as u64;
                match outcome {
                    Outcome::Acked { answer, latency } => {
                        r.acked_records += answer.accepted;
                        r.rejected_records +=
                            answer.rejected_total.max(answer.rejected.len() as u64);
                        let _ = r.latency_us.record((latency.as_micros() as u64).max(1));
                        for x in answer
                            .rejected
                            .iter()
                            .take(5usize.saturating_sub(r.sample_rejections.len()))
                        {
                            r.sample_rejections
                                .push(format!("line {}: {}", x.line, x.reason));
                        }
                        if let Some(log) = &shared.1
                            && let Ok(mut w) = log.lock()
                        {
                            let refused: std::collections::HashSet<u64> =
                                answer.rejected.iter().map(|x| x.line).collect();
                            for (i, id) in b.ids.iter().enumerate() {
                                if let Some(id) = id
                                    && !refused.contains(&(i as u64 + 1))
                                {
                                    let _ = writeln!(w, "{id}");
                                }
                            }
                            let _ = w.flush();
                        }
                    }
                    Outcome::Refused { status, text } => {
                        r.rejected_records += b.records;
                        if r.sample_rejections.len() < 5 {
                            r.sample_rejections.push(format!("HTTP {status}: {text}"));
                        }
                    }
                    Outcome::GaveUp { last } => {
                        r.failed_records += b.records;
                        tracing::warn!(records = b.records, error = %last, "gave up on a body");
                    }
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    if let Some(p) = progress {
        p.abort();
    }
    let mut report = shared
        .0
        .lock()
        .map(|mut r| std::mem::take(&mut *r))
        .unwrap_or_default();
    report.elapsed = start.elapsed();
    report
}
