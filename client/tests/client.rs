//! The client against a collector stand-in that misbehaves on purpose: busy with
//! `Retry-After`, down, slow, refusing. (End-to-end delivery into the real collector is
//! tested in the tests crate.)

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use edgelog_client::{Client, ClientConfig, Compression, ErrorKind, Overflow, Retry};
use edgelog_record::Record;

#[derive(Default)]
struct Stub {
    /// Answer 503 with `Retry-After: 1` to this many requests first.
    busy: AtomicU64,
    /// Stall every request this long.
    stall_ms: AtomicU64,
    refuse: std::sync::atomic::AtomicBool,
    requests: AtomicU64,
    /// Record lines received, once per idempotency key.
    lines: Mutex<Vec<String>>,
    keys: Mutex<HashSet<String>>,
}

async fn handler(
    axum::extract::State(s): axum::extract::State<Arc<Stub>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    s.requests.fetch_add(1, Ordering::Relaxed);
    let stall = s.stall_ms.load(Ordering::Relaxed);
    if stall > 0 {
        tokio::time::sleep(Duration::from_millis(stall)).await;
    }
    if s.refuse.load(Ordering::Relaxed) {
        return (
            StatusCode::UNAUTHORIZED,
            r#"{"error":"invalid bearer token"}"#,
        )
            .into_response();
    }
    if s.busy
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
        .is_ok()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "1")],
            r#"{"error":"busy"}"#,
        )
            .into_response();
    }
    let raw = match headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
    {
        Some("gzip") => {
            let mut out = Vec::new();
            let _ =
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut out);
            out
        }
        Some("zstd") => zstd::decode_all(&body[..]).unwrap_or_default(),
        _ => body.to_vec(),
    };
    let text = String::from_utf8_lossy(&raw).into_owned();
    let n = text.lines().count() as u64;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let dup = !key.is_empty() && !s.keys.lock().unwrap_or_else(|e| e.into_inner()).insert(key);
    if !dup {
        s.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(text.lines().map(str::to_owned));
    }
    let answer =
        format!(r#"{{"accepted":{n},"rejected":[],"rejected_total":0,"duplicate":{dup}}}"#);
    (StatusCode::OK, answer).into_response()
}

async fn serve_on(listener: tokio::net::TcpListener, s: Arc<Stub>) {
    let app = Router::new()
        .route("/v1/records", post(handler))
        .with_state(s);
    let _ = axum::serve(listener, app).await;
}

async fn stub() -> (SocketAddr, Arc<Stub>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let s = Arc::new(Stub::default());
    tokio::spawn(serve_on(listener, s.clone()));
    (addr, s)
}

fn record(n: u64) -> Record {
    Record {
        timestamp_ms: 1_700_000_000_000 + n as i64,
        distribution_id: "E2EXAMPLE".into(),
        x_edge_request_id: Some(format!("id-{n}")),
        sc_status: Some(200),
        ..Record::default()
    }
}

fn cfg(addr: SocketAddr) -> ClientConfig {
    let mut c = ClientConfig::new(format!("http://{addr}"));
    c.batch_records = 100;
    c.batch_age = Duration::from_millis(50);
    c.retry = Retry {
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(100),
        max_tries: Some(20),
        max_retry_after: Duration::from_secs(5),
    };
    c
}

fn ids(s: &Stub) -> Vec<String> {
    let mut v: Vec<String> = s
        .lines
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            v["x-edge-request-id"].as_str().unwrap_or("").to_owned()
        })
        .collect();
    v.sort();
    v
}

fn expected(n: u64) -> Vec<String> {
    let mut v: Vec<String> = (0..n).map(|i| format!("id-{i}")).collect();
    v.sort();
    v
}

#[tokio::test]
async fn every_record_arrives_once_in_every_compression() {
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let (addr, s) = stub().await;
        let mut conf = cfg(addr);
        conf.compression = c;
        let client = Client::new(conf).unwrap_or_else(|e| panic!("{e}"));
        for n in 0..1234 {
            client
                .send(&record(n))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let st = client.shutdown().await;
        assert_eq!(
            (st.queued, st.acked, st.failed, st.dropped),
            (1234, 1234, 0, 0),
            "{c:?}"
        );
        assert_eq!(ids(&s), expected(1234), "{c:?}");
        assert!(st.batches >= 13, "batches of at most 100: {st:?}");
    }
}

#[tokio::test]
async fn a_busy_collector_is_retried_no_sooner_than_retry_after() {
    let (addr, s) = stub().await;
    s.busy.store(2, Ordering::Relaxed);
    let client = Client::new(cfg(addr)).unwrap_or_else(|e| panic!("{e}"));
    let t0 = Instant::now();
    client
        .send(&record(0))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    client.flush().await;
    let waited = t0.elapsed();
    let st = client.shutdown().await;
    assert_eq!((st.acked, st.retries), (1, 2), "{st:?}");
    // Two Retry-After: 1 answers; the backoff alone would be ~30 ms.
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    assert_eq!(ids(&s), expected(1));
}

#[tokio::test]
async fn an_age_bound_sends_a_lone_record_without_a_flush() {
    let (addr, s) = stub().await;
    let client = Client::new(cfg(addr)).unwrap_or_else(|e| panic!("{e}"));
    client
        .send(&record(0))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let t0 = Instant::now();
    while s.requests.load(Ordering::Relaxed) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "never sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(client.shutdown().await.acked, 1);
}

#[tokio::test]
async fn a_refusal_is_counted_not_retried() {
    let (addr, s) = stub().await;
    s.refuse.store(true, Ordering::Relaxed);
    let client = Client::new(cfg(addr)).unwrap_or_else(|e| panic!("{e}"));
    for n in 0..10 {
        client
            .send(&record(n))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let st = client.shutdown().await;
    assert_eq!((st.acked, st.refused, st.retries), (0, 10, 0), "{st:?}");
    assert_eq!(s.requests.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn drop_overflow_counts_what_did_not_fit_and_delivers_the_rest() {
    let (addr, s) = stub().await;
    s.stall_ms.store(300, Ordering::Relaxed);
    let mut conf = cfg(addr).overflow(Overflow::Drop);
    conf.queue_bytes = 20_000;
    conf.concurrency = 1;
    let client = Client::new(conf).unwrap_or_else(|e| panic!("{e}"));
    let (mut ok, mut full) = (0u64, 0u64);
    for n in 0..2000 {
        match client.send(&record(n)).await {
            Ok(()) => ok += 1,
            Err(e) if e.kind == ErrorKind::QueueFull => full += 1,
            Err(e) => panic!("{e}"),
        }
    }
    let st = client.shutdown().await;
    assert!(
        full > 0,
        "a 20 kB queue took 2,000 records behind a stalled collector"
    );
    assert_eq!(
        (st.acked, st.dropped, st.acked + st.dropped),
        (ok, full, 2000),
        "{st:?}"
    );
    assert_eq!(ids(&s).len() as u64, ok);
}

#[tokio::test]
async fn block_overflow_keeps_memory_bounded_and_loses_nothing() {
    let (addr, s) = stub().await;
    s.stall_ms.store(20, Ordering::Relaxed);
    let mut conf = cfg(addr);
    conf.queue_bytes = 10_000;
    let client = Client::new(conf).unwrap_or_else(|e| panic!("{e}"));
    for n in 0..500 {
        client
            .send(&record(n))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let st = client.shutdown().await;
    assert_eq!((st.acked, st.dropped), (500, 0));
    assert_eq!(ids(&s), expected(500));
    assert!(
        s.requests.load(Ordering::Relaxed) > 5,
        "the bound forced small batches"
    );
}

#[tokio::test]
async fn a_record_bigger_than_the_queue_is_refused_not_waited_on_forever() {
    let (addr, _s) = stub().await;
    let mut conf = cfg(addr);
    conf.queue_bytes = 100;
    let client = Client::new(conf).unwrap_or_else(|e| panic!("{e}"));
    let e = client
        .send(&record(0))
        .await
        .err()
        .unwrap_or_else(|| panic!("taken"));
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert!(e.to_string().contains("does not fit"), "{e}");
    let st = client.shutdown().await;
    assert_eq!((st.oversized, st.dropped), (1, 0));
}

#[tokio::test]
async fn shutdown_gives_up_on_a_stalled_collector_at_its_deadline() {
    let (addr, s) = stub().await;
    s.stall_ms.store(10_000, Ordering::Relaxed);
    let mut conf = cfg(addr);
    conf.shutdown_timeout = Duration::from_millis(300);
    let client = Client::new(conf).unwrap_or_else(|e| panic!("{e}"));
    for n in 0..250 {
        client
            .send(&record(n))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let t0 = Instant::now();
    let st = client.shutdown().await;
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!((st.acked, st.failed), (0, 250), "{st:?}");
}

#[tokio::test]
async fn settings_at_their_extremes_are_refused_with_a_reason() {
    let base = || ClientConfig::new("http://127.0.0.1:9");
    for (what, c) in [
        (
            "batch_records",
            ClientConfig {
                batch_records: 0,
                ..base()
            },
        ),
        (
            "batch_bytes",
            ClientConfig {
                batch_bytes: 0,
                ..base()
            },
        ),
        (
            "concurrency",
            ClientConfig {
                concurrency: 0,
                ..base()
            },
        ),
        (
            "queue_bytes",
            ClientConfig {
                queue_bytes: 0,
                ..base()
            },
        ),
        (
            "queue_bytes",
            ClientConfig {
                queue_bytes: usize::MAX,
                ..base()
            },
        ),
        ("url", ClientConfig::new("ftp://x")),
        (
            "timeout",
            ClientConfig {
                timeout: Duration::ZERO,
                ..base()
            },
        ),
    ] {
        let e = Client::new(c)
            .err()
            .unwrap_or_else(|| panic!("{what} accepted"));
        assert_eq!(e.kind, ErrorKind::Invalid, "{what}");
    }
}

#[tokio::test]
async fn an_unreachable_collector_spools_and_the_spool_delivers_once_it_is_back() {
    // Take a port, then free it: the collector is "down" at that address.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    drop(listener);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut conf = cfg(addr).spool(dir.path().join("spool"), 1 << 20);
    conf.retry.max_tries = Some(2);
    let client = Client::new(conf.clone()).unwrap_or_else(|e| panic!("{e}"));
    for n in 0..300 {
        client
            .send(&record(n))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let st = client.shutdown().await;
    assert_eq!((st.acked, st.spooled, st.failed), (0, 300, 0), "{st:?}");

    // Back up; a new client (a restart) sends the spool first.
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let s = Arc::new(Stub::default());
    tokio::spawn(serve_on(listener, s.clone()));
    let client = Client::new(conf).unwrap_or_else(|e| panic!("{e}"));
    let t0 = Instant::now();
    while client.stats().acked < 300 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{:?}",
            client.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.shutdown().await;
    assert_eq!(ids(&s), expected(300));
    let left = std::fs::read_dir(dir.path().join("spool"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "batch"))
                .count()
        })
        .unwrap_or(99);
    assert_eq!(left, 0, "the spool is empty once delivered");
}
