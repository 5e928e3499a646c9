//! Bodies out, acknowledgements in: the sending side shared by traffic and replay.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use edgelog_client::{Answer, Batch, ErrorKind, Poster, Retry};
use edgelog_record::{w3c, write_json};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

use crate::{Compression, Generator, TrafficConfig, WireFormat, compress};

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
    pub format: WireFormat,
    /// The distribution of lines that name none (`?distribution=`).
    pub distribution: Option<String>,
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
    let mut pool: Vec<Template> = Vec::new();
    let mut ids = IdStamp::new(cfg.seed);
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
            if n < batch {
                // The last body of a --total run: shorter than the pooled ones.
                Template::new(cfg, &mut generator, &mut rng, start, body_no, n)
                    .stamp(&mut ids, compression)
            } else {
                if pool.len() < size {
                    let t = Template::new(cfg, &mut generator, &mut rng, start, body_no, n);
                    pool.push(t);
                }
                pool[body_no % pool.len()].stamp(&mut ids, compression)
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

/// Characters of a generator's request id (56 URL-safe base64 characters) before its `==`
/// padding: what a resend writes anew.
const ID_CHARS: usize = 54;
/// Of these, the last ones: the record's number in the run, as scrambled hex.
const ID_COUNTER_DIGITS: usize = 16;
const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A pregenerated body, resent with fresh request ids: its uncompressed bytes, and where
/// in them each request id is. A send copies the bytes and writes a new id over each.
pub(crate) struct Template {
    raw: Vec<u8>,
    /// Byte offsets of the request ids (their first `ID_CHARS` characters).
    ids: Vec<usize>,
    records: u64,
    format: WireFormat,
    distribution: Option<String>,
}

impl Template {
    /// Generates a body of `n` records and notes where their request ids are.
    pub(crate) fn new(
        cfg: &TrafficConfig,
        generator: &mut Generator,
        rng: &mut rand::rngs::SmallRng,
        start: Instant,
        body_no: usize,
        n: usize,
    ) -> Template {
        let raw = make_raw(cfg, generator, rng, start, body_no, n, true);
        Template {
            raw: raw.bytes,
            ids: raw.id_offsets,
            records: n as u64,
            format: raw.format,
            distribution: raw.distribution,
        }
    }

    /// A copy of the body with the next request ids from `ids`.
    pub(crate) fn stamp(&self, ids: &mut IdStamp, compression: Compression) -> OutBody {
        let mut raw = self.raw.clone();
        for &at in &self.ids {
            ids.write(&mut raw[at..at + ID_CHARS]);
        }
        let raw_len = raw.len();
        OutBody {
            body: match compression {
                Compression::None => Bytes::from(raw),
                c => compress(&raw, c),
            },
            raw_len,
            records: self.records,
            format: self.format,
            distribution: self.distribution.clone(),
            ids: Vec::new(),
        }
    }
}

/// Makes the request ids of resent bodies: each is random URL-safe base64 characters
/// followed by the record's number in the run (a counter through a bijective mix, so
/// no two are equal and none looks like its neighbour), as hex.
pub(crate) struct IdStamp {
    next: u64,
    rng: rand::rngs::SmallRng,
}

impl IdStamp {
    pub(crate) fn new(seed: u64) -> IdStamp {
        IdStamp {
            next: 0,
            rng: rand::rngs::SmallRng::seed_from_u64(seed ^ 0x1d5),
        }
    }

    /// Writes the next id over `out` (`ID_CHARS` bytes).
    fn write(&mut self, out: &mut [u8]) {
        let (random, counter) = out.split_at_mut(ID_CHARS - ID_COUNTER_DIGITS);
        for chunk in random.chunks_mut(10) {
            let mut bits: u64 = self.rng.random();
            for b in chunk {
                *b = BASE64URL[(bits & 63) as usize];
                bits >>= 6;
            }
        }
        let mut v = mix(self.next);
        self.next += 1;
        for b in counter.iter_mut().rev() {
            *b = b"0123456789abcdef"[(v & 0xf) as usize];
            v >>= 4;
        }
    }
}

/// splitmix64's finalizer: a bijection of u64 (each step can be undone).
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Where in `line` the request id `id` is, if it is a generator's (`ID_CHARS` long
/// before its padding).
fn id_offset(line: &[u8], id: &str) -> Option<usize> {
    if id.trim_end_matches('=').len() != ID_CHARS {
        return None;
    }
    line.windows(id.len()).position(|w| w == id.as_bytes())
}

/// An uncompressed body.
struct RawBody {
    bytes: Vec<u8>,
    /// Request ids by line (None for a header line).
    ids: Vec<Option<String>>,
    format: WireFormat,
    distribution: Option<String>,
    /// With `id_offsets` asked for: where each request id is in `bytes`.
    id_offsets: Vec<usize>,
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
    let raw = make_raw(cfg, generator, rng, start, body_no, n, false);
    OutBody {
        body: compress(&raw.bytes, compression),
        raw_len: raw.bytes.len(),
        records: n as u64,
        format: raw.format,
        distribution: raw.distribution,
        ids: raw.ids,
    }
}

fn make_raw(
    cfg: &TrafficConfig,
    generator: &mut Generator,
    rng: &mut rand::rngs::SmallRng,
    start: Instant,
    body_no: usize,
    n: usize,
    id_offsets: bool,
) -> RawBody {
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
    let mut offsets = Vec::with_capacity(if id_offsets { n } else { 0 });
    // Remembers where `id` is, in the line written from `line_start` on.
    let mut note = |bytes: &[u8], line_start: usize, id: &Option<String>| {
        if let (true, Some(id)) = (id_offsets, id)
            && let Some(at) = id_offset(&bytes[line_start..], id)
        {
            offsets.push(line_start + at);
        }
    };
    let (bytes, ids, distribution) = match cfg.format {
        WireFormat::Ndjson => {
            let mut raw = Vec::with_capacity(n * 1000);
            let mut ids = Vec::with_capacity(n);
            for i in 0..n {
                let ts = time(rng);
                let r = generator.record(ts, body_no * n + i, errors);
                let line_start = raw.len();
                write_json(&r, &mut raw);
                raw.push(b'\n');
                note(&raw, line_start, &r.x_edge_request_id);
                ids.push(r.x_edge_request_id);
            }
            (raw, ids, None)
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
                let line_start = text.len();
                w3c::write_line(&r, &mut text);
                note(text.as_bytes(), line_start, &r.x_edge_request_id);
                ids.push(r.x_edge_request_id);
            }
            (text.into_bytes(), ids, Some(id))
        }
    };
    RawBody {
        bytes,
        ids,
        format: cfg.format,
        distribution,
        id_offsets: offsets,
    }
}

enum Outcome {
    Acked { answer: Answer, latency: Duration },
    Refused { status: u16, text: String },
    GaveUp { last: String },
}

async fn send_one(poster: &Poster, b: &OutBody, retries: &mut u64) -> Outcome {
    let batch = Batch {
        body: Bytes::new(),
        format: b.format,
        distribution: b.distribution.clone(),
        records: b.records,
        key: None,
    };
    let t0 = Instant::now();
    match poster.post_wire(&batch, &b.body, retries).await {
        Ok(answer) => Outcome::Acked {
            answer,
            latency: t0.elapsed(),
        },
        Err(e) if e.kind == ErrorKind::Refused => Outcome::Refused {
            status: e.status.unwrap_or(0),
            text: e.message,
        },
        Err(e) => Outcome::GaveUp { last: e.message },
    }
}

/// Sends every body from `rx` with `target.concurrency` requests in flight.
pub async fn send_all(target: Target, rx: mpsc::Receiver<OutBody>) -> Report {
    let poster = match Poster::builder(target.url.clone())
        .token(target.token.clone())
        .compression(target.compression)
        .timeout(target.timeout)
        .pool(target.concurrency)
        .retry(Retry {
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
            max_tries: Some(target.max_tries.max(1) as u32),
            max_retry_after: Duration::from_secs(2),
        })
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
        let (shared, poster) = (shared.clone(), poster.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let Some(b) = shared.2.lock().await.recv().await else {
                    break;
                };
                let mut retries = 0;
                let outcome = send_one(&poster, &b, &mut retries).await;
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use edgelog_record::{Format, ParseOptions, parse_body};

    use super::*;

    /// The request ids of a body, by line, and its lines with each id blanked out.
    fn ids_and_rest(format: WireFormat, body: &OutBody) -> (Vec<String>, Vec<String>) {
        let (format, dist) = match format {
            WireFormat::Ndjson => (Format::Ndjson, None),
            WireFormat::W3c => (Format::W3c, body.distribution.as_deref()),
        };
        let parsed = parse_body(format, &body.body, &ParseOptions::with_distribution(dist));
        assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
        let ids: Vec<String> = parsed
            .records
            .iter()
            .map(|r| r.request_id().to_owned())
            .collect();
        let text = std::str::from_utf8(&body.body).expect("utf-8");
        let mut rest = Vec::new();
        let mut data = 0;
        for line in text.lines() {
            if line.starts_with('#') {
                rest.push(line.to_owned());
            } else {
                rest.push(line.replacen(&ids[data], "<id>", 1));
                data += 1;
            }
        }
        assert_eq!(data, ids.len());
        (ids, rest)
    }

    #[test]
    fn resent_pregenerated_bodies_get_fresh_request_ids() {
        for format in [WireFormat::Ndjson, WireFormat::W3c] {
            let cfg = TrafficConfig {
                format,
                batch: 200,
                pregenerate: Some(1),
                ..TrafficConfig::default()
            };
            let mut generator = Generator::new(7, 3, 8);
            let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
            let t = Template::new(&cfg, &mut generator, &mut rng, Instant::now(), 0, 200);
            assert_eq!(t.ids.len(), 200);
            let mut ids = IdStamp::new(7);
            let a = t.stamp(&mut ids, Compression::None);
            let b = t.stamp(&mut ids, Compression::None);
            assert_eq!(ids.next, 400);
            assert_eq!((a.records, a.raw_len), (200, b.body.len()));
            assert_eq!((a.format, &a.distribution), (b.format, &b.distribution));
            let (ids_a, rest_a) = ids_and_rest(format, &a);
            let (ids_b, rest_b) = ids_and_rest(format, &b);
            assert_eq!(ids_a.len(), 200);
            let set_a: HashSet<&String> = ids_a.iter().collect();
            let set_b: HashSet<&String> = ids_b.iter().collect();
            assert_eq!((set_a.len(), set_b.len()), (200, 200), "{format:?}");
            assert!(set_a.is_disjoint(&set_b), "{format:?}");
            // Ids look like the generator's: 56 URL-safe base64 characters.
            for id in ids_a.iter().chain(&ids_b) {
                assert_eq!(id.len(), 56, "{id}");
                assert!(
                    id.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"-_=".contains(&c)),
                    "{id}"
                );
            }
            // Everything but the ids is the same.
            assert_eq!(rest_a, rest_b, "{format:?}");
            // A compressed send carries the next ids too.
            let c = t.stamp(&mut ids, Compression::Zstd);
            let raw = zstd::decode_all(&c.body[..]).expect("zstd");
            assert_eq!(raw.len(), c.raw_len);
            assert!(!raw.windows(56).any(|w| w == ids_a[0].as_bytes()));
        }
    }

    #[test]
    fn every_request_id_of_a_pregenerated_run_is_unique() {
        for format in [WireFormat::Ndjson, WireFormat::W3c] {
            let cfg = TrafficConfig {
                format,
                rate: 0.0,
                batch: 100,
                total: Some(1050),
                pregenerate: Some(3),
                ..TrafficConfig::default()
            };
            let (tx, mut rx) = mpsc::channel(100);
            produce(&cfg, Compression::None, &tx);
            drop(tx);
            let mut seen = HashSet::new();
            let mut records = 0;
            while let Ok(body) = rx.try_recv() {
                let (ids, _) = ids_and_rest(format, &body);
                records += ids.len();
                seen.extend(ids);
            }
            assert_eq!((records, seen.len()), (1050, 1050), "{format:?}");
        }
    }
}
