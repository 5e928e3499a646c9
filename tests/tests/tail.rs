//! The live tail: a distribution's real-time records as server-sent events, filtered by
//! the server, at most the configured rate to each page (the rest counted), behind the
//! dashboard's auth and scopes, bounded in pages and in memory, ended by SIGTERM; and the
//! page in headless Chromium showing records arrive, filtered, and paused.
//!
//! Over 500 lines: the raw SSE client, and the Chromium driver, are shared by the tests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::Context;
use edgelog_tests::scenarios::{sink, wait_readyz};
use edgelog_tests::{TestServer, http_post};

const DASH: &str = "dashboard-token-0123456789";
const TEAM: &str = "team-token-0123456789abcdef";

/// NDJSON of `n` records of `dist`, statuses cycling 200, 404, 503, 200, 502.
fn records(dist: &str, from: usize, n: usize) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut body = String::new();
    for k in from..from + n {
        let status = [200, 404, 503, 200, 502][k % 5];
        let (loc, result) = if k % 2 == 0 {
            ("IAD89-C1", "Hit")
        } else {
            ("FRA6-C1", "Miss")
        };
        body.push_str(&format!(
            "{{\"timestamp\":{now},\"DistributionId\":\"{dist}\",\"c-ip\":\"203.0.113.{}\",\
             \"cs-method\":\"GET\",\"cs-uri-stem\":\"/p/{k}\",\"sc-status\":{status},\
             \"x-edge-location\":\"{loc}\",\"x-edge-result-type\":\"{result}\",\
             \"x-edge-request-id\":\"{dist}-{k}\"}}\n",
            k % 250
        ));
    }
    body
}

fn post(url: &str, dist: &str, from: usize, n: usize) -> anyhow::Result<()> {
    let a = http_post(
        &format!("{url}/v1/records"),
        records(dist, from, n).as_bytes(),
    )?;
    anyhow::ensure!(a.status == 200, "{}", a.body);
    Ok(())
}

/// An open live tail: its status, and events read so far.
struct Tail {
    stream: TcpStream,
    raw: Vec<u8>,
}

impl Tail {
    fn open(base: &str, path: &str, token: Option<&str>) -> anyhow::Result<Tail> {
        let host = base.strip_prefix("http://").context("http")?;
        let mut stream = TcpStream::connect(host)?;
        let auth = token
            .map(|t| format!("authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        // HTTP/1.0: the body ends with the connection, no chunks to undo.
        write!(stream, "GET {path} HTTP/1.0\r\nhost: {host}\r\n{auth}\r\n")?;
        stream.set_read_timeout(Some(Duration::from_millis(100)))?;
        Ok(Tail {
            stream,
            raw: Vec::new(),
        })
    }

    /// Reads for `d` (or until the server closes).
    fn read_for(&mut self, d: Duration) -> anyhow::Result<bool> {
        let end = Instant::now() + d;
        let mut buf = [0u8; 65536];
        while Instant::now() < end {
            match self.stream.read(&mut buf) {
                Ok(0) => return Ok(false),
                Ok(n) => self.raw.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    fn status(&self) -> u16 {
        String::from_utf8_lossy(&self.raw)
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    fn body(&self) -> String {
        let text = String::from_utf8_lossy(&self.raw);
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default()
    }

    /// (event, data) pairs.
    fn events(&self) -> Vec<(String, serde_json::Value)> {
        let mut out = Vec::new();
        for block in self.body().split("\n\n") {
            let mut event = String::from("message");
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = e.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            if let Ok(v) = serde_json::from_str(&data) {
                out.push((event, v));
            }
        }
        out
    }

    fn records(&self) -> Vec<serde_json::Value> {
        self.events()
            .into_iter()
            .filter(|(e, _)| e == "record")
            .map(|(_, v)| v)
            .collect()
    }

    fn last_stats(&self) -> Option<serde_json::Value> {
        self.events()
            .into_iter()
            .rev()
            .find(|(e, _)| e == "stats")
            .map(|(_, v)| v)
    }
}

#[test]
fn the_tail_filters_limits_scopes_and_ends_at_sigterm() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let demo = demo_with(
        dir.path(),
        &format!(
            "tail_max_per_second = 100\ntail_max_viewers = 3\n\
             [[dashboard.scoped_tokens]]\ntoken = \"{TEAM}\"\ndistributions = [\"EOTHER\"]"
        ),
    )?;
    let (ingest, dash) = (demo.url(), demo.dashboard_url(""));

    // Only 5xx of EDEMO, as they are logged.
    let mut tail = Tail::open(
        &dash,
        "/api/distributions/EDEMO/tail?status=5xx",
        Some(DASH),
    )?;
    tail.read_for(Duration::from_millis(300))?;
    assert_eq!(tail.status(), 200, "{}", tail.body());
    post(&ingest, "EDEMO", 0, 50)?;
    post(&ingest, "EOTHER", 0, 50)?;
    tail.read_for(Duration::from_secs(2))?;
    let got = tail.records();
    assert_eq!(got.len(), 20, "the 5xx of 50 records: {}", tail.body());
    for r in &got {
        let s = r["sc-status"].as_u64().unwrap_or(0);
        assert!((500..600).contains(&s), "{r}");
        assert_eq!(r["DistributionId"], "EDEMO", "{r}");
    }

    // Every filter at once; a second page with a path, location, prefix and result.
    let mut narrow = Tail::open(
        &dash,
        "/api/distributions/EDEMO/tail?status=503&path=/p/1&location=iad89-c1&ip=203.0.113.0/25&result=hit&q=P/1",
        Some(DASH),
    )?;
    narrow.read_for(Duration::from_millis(300))?;
    post(&ingest, "EDEMO", 100, 100)?;
    narrow.read_for(Duration::from_secs(2))?;
    let ids: Vec<String> = narrow
        .records()
        .iter()
        .map(|r| r["x-edge-request-id"].as_str().unwrap_or("").to_owned())
        .collect();
    // k in 100..200 with k % 5 == 2 (503), even (IAD, Hit), stem /p/1.., k % 250 < 128.
    let want: Vec<String> = (100..200)
        .filter(|k| k % 5 == 2 && k % 2 == 0 && (k % 250) < 128)
        .map(|k| format!("EDEMO-{k}"))
        .collect();
    assert_eq!(ids, want, "{}", narrow.body());
    drop(narrow);

    // The rate: 100 a second at most, the rest counted as skipped.
    let t = Instant::now();
    post(&ingest, "EDEMO", 1000, 5000)?;
    tail.read_for(Duration::from_secs(3))?;
    let elapsed = t.elapsed().as_secs_f64();
    let stats = tail.last_stats().context("no stats")?;
    let sent = stats["sent"].as_u64().unwrap_or(0);
    assert!(
        sent as f64 <= 100.0 + 100.0 * elapsed + 20.0,
        "{stats} in {elapsed} s"
    );
    assert!(stats["skipped"].as_u64() > Some(0), "{stats}");
    // Every matching record sent, skipped over the rate, or missed by a page behind.
    assert_eq!(
        stats["sent"].as_u64().unwrap_or(0)
            + stats["skipped"].as_u64().unwrap_or(0)
            + stats["behind"].as_u64().unwrap_or(0),
        stats["matched"].as_u64().unwrap_or(0),
        "{stats}"
    );

    // Scopes, auth and bad filters: JSON refusals with a reason.
    for (path, token, status, says) in [
        ("/api/distributions/EDEMO/tail", Some(TEAM), 403, "EDEMO"),
        ("/distributions/EDEMO/tail", Some(TEAM), 403, "EDEMO"),
        ("/api/distributions/EDEMO/tail", None, 401, "authentication"),
        (
            "/api/distributions/EDEMO/tail?status=6xx",
            Some(DASH),
            400,
            "status",
        ),
        (
            "/api/distributions/EDEMO/tail?ip=1.2.3",
            Some(DASH),
            400,
            "ip",
        ),
        (
            "/api/distributions/EDEMO/tail?colour=red",
            Some(DASH),
            400,
            "colour",
        ),
        (
            "/api/distributions/bad%20id!/tail",
            Some(DASH),
            400,
            "distribution",
        ),
    ] {
        let mut t = Tail::open(&dash, path, token)?;
        t.read_for(Duration::from_millis(500))?;
        assert_eq!(t.status(), status, "{path}: {}", t.body());
        let v: serde_json::Value = serde_json::from_str(&t.body()).with_context(|| t.body())?;
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains(says)),
            "{path}: {v}"
        );
    }
    let mut theirs = Tail::open(&dash, "/api/distributions/EOTHER/tail", Some(TEAM))?;
    theirs.read_for(Duration::from_millis(300))?;
    assert_eq!(theirs.status(), 200, "{}", theirs.body());

    // Three pages open (tail, theirs, one more): a fourth is refused.
    let mut third = Tail::open(&dash, "/api/distributions/EDEMO/tail", Some(DASH))?;
    third.read_for(Duration::from_millis(300))?;
    assert_eq!(third.status(), 200);
    let mut fourth = Tail::open(&dash, "/api/distributions/EDEMO/tail", Some(DASH))?;
    fourth.read_for(Duration::from_millis(500))?;
    assert_eq!(fourth.status(), 503, "{}", fourth.body());
    assert!(
        fourth.body().contains("tail_max_viewers"),
        "{}",
        fourth.body()
    );
    drop(third);

    // SIGTERM with pages open: they end and the demo exits promptly.
    let t = Instant::now();
    demo.stop()?;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stopped in {:?}",
        t.elapsed()
    );
    assert!(!tail.read_for(Duration::from_secs(2))?, "the tail ended");
    Ok(())
}

/// `edgelog demo` without traffic, its dashboard behind [`DASH`] with `settings` (TOML
/// lines of `[dashboard]`).
fn demo_with(dir: &std::path::Path, settings: &str) -> anyhow::Result<TestServer> {
    let cfg = dir.join("tail.toml");
    std::fs::write(
        &cfg,
        format!("[dashboard]\ntokens = [\"{DASH}\"]\n{settings}\n"),
    )?;
    let cfg = cfg.display().to_string();
    TestServer::demo(
        &dir.join("data"),
        &[
            "--no-traffic",
            "--token",
            edgelog_tests::TOKEN,
            "--config",
            &cfg,
        ],
        &[],
    )
}

/// NDJSON of `n` records of `dist` with three values at the 16 KiB field limit.
fn long_records(dist: &str, from: usize, n: usize) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let long = "x".repeat(16_000);
    (from..from + n)
        .map(|k| {
            format!(
                "{{\"timestamp\":{now},\"DistributionId\":\"{dist}\",\"c-ip\":\"203.0.113.9\",\
                 \"cs-method\":\"GET\",\"cs-uri-stem\":\"/p/{k}\",\"sc-status\":503,\
                 \"cs-uri-query\":\"{long}\",\"cs(User-Agent)\":\"{long}\",\"cs(Referer)\":\"{long}\",\
                 \"x-edge-request-id\":\"{dist}-{k}\"}}\n"
            )
        })
        .collect()
}

/// Reads `stream` until the server closes it and counts its `record` events, keeping
/// none of them (the page that reads gets hundreds of megabytes).
fn count_records(mut stream: TcpStream) -> usize {
    const EVENT: &[u8] = b"event: record\n";
    let (mut count, mut tail) = (0, Vec::new());
    let mut buf = vec![0u8; 1 << 16];
    // Until the demo stops; an error ends it the same way.
    while let Ok(n @ 1..) = stream.read(&mut buf) {
        tail.extend_from_slice(&buf[..n]);
        count += tail.windows(EVENT.len()).filter(|w| *w == EVENT).count();
        // Keep what could begin an event cut in two.
        let keep = tail.len().min(EVENT.len() - 1);
        tail.drain(..tail.len() - keep);
    }
    count
}

/// A page that stops reading (a laptop asleep with the tab open) while records of long
/// values arrive: it misses them, counted, instead of the dashboard holding them (it held
/// every one of them, about 100 KB each parsed, up to the stream's 65,536 messages:
/// gigabytes); a page that reads still gets them.
#[test]
fn a_page_that_stops_reading_holds_no_records_and_the_others_still_get_theirs() -> anyhow::Result<()>
{
    const BODIES: usize = 25;
    const PER_BODY: usize = 200;
    const KIB_PER_MIB: u64 = 1024;
    let dir = tempfile::tempdir()?;
    // Never cut off here, however slow the machine: the next test does that.
    let demo = demo_with(
        dir.path(),
        "tail_max_per_second = 10000\nwrite_timeout = \"1h\"",
    )?;
    let (ingest, dash) = (demo.url(), demo.dashboard_url(""));
    let pid = demo.pid()?;
    // Posted, then handed to the stream: the peak is reached.
    let post_long = |from: usize| -> anyhow::Result<()> {
        for b in 0..BODIES {
            let body = long_records("EDEMO", from + b * PER_BODY, PER_BODY);
            let a = http_post(&format!("{ingest}/v1/records"), body.as_bytes())?;
            anyhow::ensure!(a.status == 200, "{}", a.body);
        }
        // The standard sink holds its files open for a minute: not waited for.
        wait_readyz(
            &ingest,
            Duration::from_secs(120),
            "real-time caught up",
            |r| sink(r, "realtime")["lag_entries"].as_u64() == Some(0),
        )?;
        // The stream's reader parses what the sink handed it.
        std::thread::sleep(Duration::from_secs(1));
        Ok(())
    };

    // The same records with no page open: what the collector itself takes.
    let t = Instant::now();
    post_long(0)?;
    eprintln!("alone: {:?}", t.elapsed());
    let alone = edgelog_tests::vm_hwm_kib(pid)?;

    let mut asleep = Tail::open(&dash, "/api/distributions/EDEMO/tail", Some(DASH))?;
    let mut awake = Tail::open(&dash, "/api/distributions/EDEMO/tail", Some(DASH))?;
    awake.read_for(Duration::from_millis(300))?;
    assert_eq!(awake.status(), 200, "{}", awake.body());
    // `asleep` is never read from here: the socket's buffers fill, then the page's queue.
    let reader = std::thread::spawn(move || {
        let _ = awake.stream.set_read_timeout(None);
        count_records(awake.stream)
    });
    let t = Instant::now();
    post_long(BODIES * PER_BODY)?;
    eprintln!("with pages: {:?}", t.elapsed());
    let with_pages = edgelog_tests::vm_hwm_kib(pid)?;

    // The stream's bytes, two pages' queues, and room for what one run differs from the
    // next.
    let allowed = alone
        + (edgelog_collector::STREAM_BYTES + 2 * edgelog_dashboard::PAGE_BYTES) as u64 / 1024
        + 64 * KIB_PER_MIB;
    eprintln!(
        "peak RSS: {} MiB alone, {} MiB with a page asleep (allowed {} MiB)",
        alone / KIB_PER_MIB,
        with_pages / KIB_PER_MIB,
        allowed / KIB_PER_MIB
    );
    assert!(
        with_pages <= allowed,
        "{} MiB with a page asleep, {} MiB without",
        with_pages / KIB_PER_MIB,
        alone / KIB_PER_MIB
    );

    // The sleeping page wakes: it missed records, and says how many.
    asleep.read_for(Duration::from_secs(3))?;
    let stats = asleep.last_stats().context("no stats")?;
    let behind = stats["behind"].as_u64().unwrap_or(0);
    assert!(behind > 0, "{stats}");
    assert!(
        stats["sent"].as_u64().unwrap_or(0) + behind <= stats["matched"].as_u64().unwrap_or(0),
        "{stats}"
    );
    demo.stop()?;
    let got = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    eprintln!("the page that read got {got} records, the other missed {behind}");
    assert!(got >= 100, "the reading page got {got} records");
    Ok(())
}

/// A page whose client reads nothing is cut off after `dashboard.write_timeout`, and gives
/// its place back: with one place, a second page is refused until then, then served.
#[test]
fn a_page_whose_client_reads_nothing_is_cut_off_and_gives_its_place_back() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let demo = demo_with(
        dir.path(),
        "tail_max_per_second = 10000\ntail_max_viewers = 1\nwrite_timeout = \"2s\"",
    )?;
    let (ingest, dash) = (demo.url(), demo.dashboard_url(""));
    let mut asleep = Tail::open(&dash, "/api/distributions/EDEMO/tail", Some(DASH))?;
    // Its status line only; then nothing more is read.
    let mut first = [0u8; 12];
    asleep
        .stream
        .set_read_timeout(Some(Duration::from_secs(10)))?;
    asleep.stream.read_exact(&mut first)?;
    assert!(
        first.ends_with(b" 200"),
        "{}",
        String::from_utf8_lossy(&first)
    );
    let mut second = Tail::open(&dash, "/api/distributions/EDEMO/tail", Some(DASH))?;
    second.read_for(Duration::from_millis(500))?;
    assert_eq!(second.status(), 503, "one place: {}", second.body());

    // About 40 MB of events: more than the sockets' buffers and hyper's hold.
    for b in 0..8 {
        let body = long_records("EDEMO", b * 100, 100);
        let a = http_post(&format!("{ingest}/v1/records"), body.as_bytes())?;
        anyhow::ensure!(a.status == 200, "{}", a.body);
    }
    let t = Instant::now();
    loop {
        let mut again = Tail::open(&dash, "/api/distributions/EDEMO/tail", Some(DASH))?;
        again.read_for(Duration::from_millis(300))?;
        if again.status() == 200 {
            break;
        }
        assert_eq!(again.status(), 503, "{}", again.body());
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the page that reads nothing still holds the only place"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Its connection is closed (a reset, with bytes it never read, counts too).
    asleep
        .stream
        .set_read_timeout(Some(Duration::from_millis(100)))?;
    assert!(
        !matches!(asleep.read_for(Duration::from_secs(5)), Ok(true)),
        "still open"
    );
    let metrics = edgelog_tests::http_get(&format!("{ingest}/metrics"))?;
    assert!(
        metrics.contains("edgelog_http_write_stalls_total{listener=\"dashboard\"}"),
        "{metrics}"
    );
    Ok(())
}

/// Opens `pages` in headless Chromium, driven over the DevTools protocol (a pipe, from
/// Python): each page is left to run `wait_ms`, then its DOM is read and, when a path is
/// given, a screenshot saved. A live page never finishes loading, so `--dump-dom` cannot.
fn chromium_pages(
    profile: &std::path::Path,
    pages: &[(&str, Option<&std::path::Path>)],
    wait_ms: u64,
) -> anyhow::Result<Vec<String>> {
    let bin = edgelog_tests::servers::server_binary("chromium")?;
    let pages: Vec<serde_json::Value> = pages
        .iter()
        .map(|(url, shot)| serde_json::json!([url, shot.map(|p| p.display().to_string())]))
        .collect();
    let script = format!(
        r#"import base64, json, os, subprocess, time
pages = json.loads({pages:?})
import fcntl
def high(fd):
    # Out of the way of 3 and 4, where chromium expects its pipe.
    h = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return h
r_in, w_in = map(high, os.pipe())
r_out, w_out = map(high, os.pipe())
os.dup2(r_in, 3); os.dup2(w_out, 4)
chrome = subprocess.Popen([{bin:?}, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1400,900", "--remote-debugging-pipe", "--user-data-dir=" + {profile:?},
    "about:blank"], pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
os.close(3); os.close(4); os.close(r_in); os.close(w_out)
buf, seq = b"", 0
def call(method, params=None, session=None):
    global buf, seq
    seq += 1
    msg = {{"id": seq, "method": method, "params": params or {{}}}}
    if session: msg["sessionId"] = session
    os.write(w_in, json.dumps(msg).encode() + b"\0")
    deadline = time.time() + 30
    while time.time() < deadline:
        while b"\0" in buf:
            raw, buf = buf.split(b"\0", 1)
            m = json.loads(raw)
            if m.get("id") == seq:
                if "error" in m: raise SystemExit(method + ": " + json.dumps(m["error"]))
                return m["result"]
        chunk = os.read(r_out, 1 << 20)
        if not chunk: raise SystemExit("chromium closed the pipe")
        buf += chunk
    raise SystemExit(method + ": no answer")
out = []
try:
    for url, shot in pages:
        target = call("Target.createTarget", {{"url": url}})["targetId"]
        session = call("Target.attachToTarget", {{"targetId": target, "flatten": True}})["sessionId"]
        time.sleep({wait} / 1000)
        dom = call("Runtime.evaluate", {{"expression": "document.documentElement.outerHTML", "returnByValue": True}}, session)
        out.append(dom["result"]["value"])
        if shot:
            png = call("Page.captureScreenshot", {{"format": "png"}}, session)
            with open(shot, "wb") as f: f.write(base64.b64decode(png["data"]))
        call("Target.closeTarget", {{"targetId": target}})
finally:
    chrome.kill()
print(json.dumps(out))
"#,
        pages = serde_json::to_string(&pages)?,
        bin = bin.display().to_string(),
        profile = profile.display().to_string(),
        wait = wait_ms,
    );
    let v = edgelog_tests::servers::python_json(&script)?;
    Ok(serde_json::from_value(v)?)
}

#[test]
fn the_tail_page_shows_records_arrive_filtered_and_pauses_in_chromium() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let demo = TestServer::demo(
        &dir.path().join("data"),
        &["--no-traffic", "--token", edgelog_tests::TOKEN],
        &[],
    )?;
    let ingest = demo.url();
    // Records keep coming while the browser watches.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeding = {
        let (stop, ingest) = (stop.clone(), ingest.clone());
        std::thread::spawn(move || {
            let mut k = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = post(&ingest, "EDEMO", k, 20);
                k += 20;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let page = demo.dashboard_url("/distributions/EDEMO/tail?status=5xx");
    let paused_page = format!("{page}&paused=1");
    let refused_page = demo.dashboard_url("/distributions/EDEMO/tail?status=6xx");
    let artifacts = edgelog_tests::binary()
        .parent()
        .and_then(|p| p.parent())
        .context("target dir")?
        .join("test-artifacts");
    std::fs::create_dir_all(&artifacts)?;
    let shot = artifacts.join("dashboard-live-tail.png");
    let doms = chromium_pages(
        &dir.path().join("chromium"),
        &[
            (&page, Some(&shot)),
            (&paused_page, None),
            (&refused_page, None),
        ],
        3000,
    );
    let overview = edgelog_tests::http_get(&demo.dashboard_url("/distributions/EDEMO"));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = feeding.join();
    demo.stop()?;
    let (doms, overview) = (doms?, overview?);
    let (dom, paused, refused) = (&doms[0], &doms[1], &doms[2]);
    // A refused filter is shown with the server's reason.
    assert!(
        refused.contains("stopped: live tail: status"),
        "the page says why: {refused}"
    );

    let rows: Vec<&str> = dom.split("<tr class=\"record ").skip(1).collect();
    assert!(rows.len() >= 5, "records arrived: {dom}");
    assert!(rows.iter().all(|r| r.starts_with("s5")), "only 5xx: {dom}");
    assert!(dom.contains("id=\"state\">live"), "{dom}");
    assert!(
        !paused.contains("<tr class=\"record "),
        "paused shows none: {paused}"
    );
    assert!(paused.contains("id=\"state\">paused"), "{paused}");
    assert!(
        overview.contains("/distributions/EDEMO/tail"),
        "the distribution page links to it"
    );
    assert!(
        std::fs::metadata(&shot)?.len() > 10_000,
        "screenshot looks empty"
    );
    Ok(())
}
