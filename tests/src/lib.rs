//! Harness for edgelog's end-to-end tests: the real `edgelog` binary as a child process,
//! real sockets on loopback, real files.

pub mod harness;
pub mod monitoring;
pub mod nginx;
pub mod process;
pub mod scenarios;
pub mod servers;

pub use harness::{Kind, ServerConfig, TestServer};
pub use process::{ChildProc, signal, wait_for, wait_until, wait_until_every, within};

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use arrow_array::{Array, RecordBatch, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The `edgelog` binary built next to this test (`cargo build -p edgelog` first; the
/// test scripts do).
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let bin = dir.join("edgelog");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p edgelog` before the end-to-end tests",
        bin.display()
    );
    bin
}

/// A free TCP port on loopback (for servers that cannot say which port they bound; the
/// port may be taken again before they bind it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub const TOKEN: &str = "e2e-token-0123456789abcdef";

/// Runs `edgelog edge` with `args` against `url`; returns stdout, failing on a non-zero exit.
pub fn run_edge(url: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(binary())
        .args(["edge", "--to", url, "--token", TOKEN, "--progress", "0s"])
        .args(args)
        .output()
        .context("cannot run edgelog edge")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "edgelog edge failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// Starts `edgelog edge` in the background.
pub fn spawn_edge(url: &str, args: &[&str]) -> anyhow::Result<Child> {
    Command::new(binary())
        .args(["edge", "--to", url, "--token", TOKEN, "--progress", "0s"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start edgelog edge")
}

/// Every file under `dir`, recursively, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Every Parquet file under `dir`.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect()
}

/// All record batches of one Parquet file.
pub fn read_parquet(path: &Path) -> anyhow::Result<Vec<RecordBatch>> {
    let f = fs::File::open(path)?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)?.build()?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

/// How often each `x_edge_request_id` occurs in the Parquet files under `dir`.
pub fn stored_ids(dir: &Path) -> anyhow::Result<HashMap<String, u32>> {
    let mut ids = HashMap::new();
    for f in parquet_files(dir) {
        for b in read_parquet(&f)? {
            let col = b
                .column_by_name("x_edge_request_id")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .context("x_edge_request_id column")?;
            for i in 0..col.len() {
                *ids.entry(col.value(i).to_owned()).or_insert(0) += 1;
            }
        }
    }
    Ok(ids)
}

/// A plain GET over a raw socket, returning the body: enough for loopback checks.
pub fn http_get(url: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").context("http only")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = std::net::TcpStream::connect(host)?;
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let Some((head, body)) = out.split_once("\r\n\r\n") else {
        return Ok(out);
    };
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(body.to_owned());
    }
    // Chunked: Go's servers (Prometheus, Alertmanager) send large bodies so.
    Ok(dechunk(body))
}

/// An HTTP answer: status, headers (names lowercase) and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// POSTs an NDJSON `body` to `url` (http only) with the test token, over a raw socket.
pub fn http_post(url: &str, body: &[u8]) -> anyhow::Result<Answer> {
    http_post_with(url, &[], body)
}

/// The peak RSS of process `pid` so far (`VmHWM`), in KiB.
pub fn vm_hwm_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("VmHWM")
}

/// [`http_post`] with more request headers (`content-encoding: gzip`, ...).
pub fn http_post_with(url: &str, headers: &[(&str, &str)], body: &[u8]) -> anyhow::Result<Answer> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").context("http only")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "POST /{path} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/x-ndjson\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    )?;
    for (k, v) in headers {
        write!(s, "{k}: {v}\r\n")?;
    }
    s.write_all(b"\r\n")?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no end of headers in {} bytes: {text:?}", raw.len()))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// The payload of a chunked HTTP/1.1 body.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// What a test sent, to hold against what comes out.
#[derive(Debug, Default)]
pub struct Sent {
    pub count: u64,
    pub by_status: BTreeMap<u16, u64>,
    pub by_distribution: BTreeMap<String, u64>,
    pub sc_bytes: u64,
    /// Every `sample_every`-th record, whole.
    pub sample: Vec<edgelog_record::Record>,
    /// (distribution, event hour in ms) of every record.
    pub partitions: BTreeMap<(String, i64), u64>,
    /// The records [`send_generated_keeping`]'s predicate kept, whole, in order.
    pub kept: Vec<edgelog_record::Record>,
}

/// Generates `total` records for `distributions` distributions, event times spread evenly
/// over the past `hours` hours, and posts them as 1,000-record NDJSON bodies to `url`,
/// `concurrency` requests at a time (1 keeps the log in generation order). Fails unless
/// every record is acknowledged.
pub fn send_generated(
    url: &str,
    total: u64,
    distributions: usize,
    hours: i64,
    sample_every: u64,
    concurrency: usize,
) -> anyhow::Result<Sent> {
    send_generated_seeded(
        url,
        total,
        distributions,
        hours,
        sample_every,
        concurrency,
        7,
    )
}

/// [`send_generated`] with the records drawn from `seed` (the distributions stay those of
/// seed 7): another edge server of the same fleet.
pub fn send_generated_seeded(
    url: &str,
    total: u64,
    distributions: usize,
    hours: i64,
    sample_every: u64,
    concurrency: usize,
    seed: u64,
) -> anyhow::Result<Sent> {
    let keep: Keep = Box::new(|_| false);
    send(
        url,
        total,
        (distributions, hours),
        sample_every,
        concurrency,
        seed,
        keep,
    )
}

/// [`send_generated`] that also keeps, whole, every record `keep` holds (in
/// [`Sent::kept`]): what a sampled destination should receive.
pub fn send_generated_keeping(
    url: &str,
    total: u64,
    distributions: usize,
    hours: i64,
    concurrency: usize,
    keep: impl Fn(&edgelog_record::Record) -> bool + Send + 'static,
) -> anyhow::Result<Sent> {
    send(
        url,
        total,
        (distributions, hours),
        total,
        concurrency,
        7,
        Box::new(keep),
    )
}

type Keep = Box<dyn Fn(&edgelog_record::Record) -> bool + Send>;

fn send(
    url: &str,
    total: u64,
    (distributions, hours): (usize, i64),
    sample_every: u64,
    concurrency: usize,
    seed: u64,
    keep: Keep,
) -> anyhow::Result<Sent> {
    use edgelog_edge::{Compression, ErrorMix, Generator, OutBody, Target};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (tx, rx) = tokio::sync::mpsc::channel::<OutBody>(8);
    let producer = std::thread::spawn(move || {
        let mut g = Generator::new(7, distributions, 8);
        if seed != 7 {
            g.reseed(seed);
        }
        let mut sent = Sent::default();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let span = hours * 3_600_000;
        let start = now - span;
        let mut i = 0u64;
        while i < total {
            let n = (total - i).min(1000);
            let mut body = Vec::with_capacity(n as usize * 1000);
            for _ in 0..n {
                let ts = start + (i as i128 * span as i128 / total as i128) as i64;
                let r = g.record(ts, i as usize, ErrorMix::default());
                edgelog_record::write_json(&r, &mut body);
                body.push(b'\n');
                sent.count += 1;
                *sent.by_status.entry(r.sc_status.unwrap_or(0)).or_default() += 1;
                *sent
                    .by_distribution
                    .entry(r.distribution_id.clone())
                    .or_default() += 1;
                *sent
                    .partitions
                    .entry((r.distribution_id.clone(), ts - ts.rem_euclid(3_600_000)))
                    .or_default() += 1;
                sent.sc_bytes += r.sc_bytes.unwrap_or(0);
                if keep(&r) {
                    sent.kept.push(r.clone());
                }
                if i.is_multiple_of(sample_every) {
                    sent.sample.push(r);
                }
                i += 1;
            }
            let out = OutBody {
                raw_len: body.len(),
                body: body.into(),
                records: n,
                format: edgelog_edge::WireFormat::Ndjson,
                distribution: None,
                ids: Vec::new(),
            };
            if tx.blocking_send(out).is_err() {
                break;
            }
        }
        sent
    });
    let target = Target {
        url: url.to_owned(),
        token: TOKEN.to_owned(),
        compression: Compression::None,
        concurrency,
        max_tries: 20,
        timeout: Duration::from_secs(60),
        ack_log: None,
        progress: None,
    };
    let report = rt.block_on(edgelog_edge::send_all(target, rx));
    let sent = producer
        .join()
        .map_err(|_| anyhow::anyhow!("generator thread panicked"))?;
    if report.acked_records != total || report.rejected_records != 0 {
        bail!("sent {total}, acknowledged {report:?}");
    }
    Ok(sent)
}

/// One request over a raw socket: status and body.
pub fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let rest = url.strip_prefix("http://").context("http only")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!("{method} /{path} HTTP/1.1\r\nconnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("host: {host}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    ));
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status")?;
    Ok((status, body.to_owned()))
}
