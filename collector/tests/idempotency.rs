//! `Idempotency-Key` on `POST /v1/records`: a resend is answered as the first request was
//! and logged once, also after a restart and after the key's segment is gone; bad keys,
//! keys in progress, the bounds.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use edgelog_collector::wal::KeyLimits;
use edgelog_collector::{AppState, CollectorConfig, IngestResponse, Wal, WalConfig, app};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

mod common;

const TOKEN: &str = "test-token-0123456789";
const AUTH: (&str, &str) = ("authorization", "Bearer test-token-0123456789");

fn config() -> CollectorConfig {
    CollectorConfig {
        tokens: vec![TOKEN.into()],
        max_body_bytes: 8 << 20,
        max_decompressed_bytes: 8 << 20,
        ..CollectorConfig::default()
    }
}

fn router(cfg: CollectorConfig, wal: &Wal) -> axum::Router {
    app(AppState::new(cfg, wal.clone(), Vec::new()))
}

fn line(i: u64) -> String {
    format!(
        r#"{{"timestamp(ms)":{},"DistributionId":"E1","x-edge-request-id":"req-{i}","sc-status":"200","sc-bytes":{},"cs-method":"GET","cs-uri-stem":"/p/{i}"}}"#,
        1_700_000_000_000u64 + i,
        100 + i
    )
}

fn ndjson(from: u64, n: u64) -> String {
    (from..from + n).map(|i| line(i) + "\n").collect()
}

async fn post(
    router: &axum::Router,
    body: impl Into<Vec<u8>>,
    headers: &[(&str, &[u8])],
) -> (StatusCode, serde_json::Value, String) {
    let mut req = Request::post("/v1/records").header(AUTH.0, AUTH.1);
    for (k, v) in headers {
        req = req.header(*k, axum::http::HeaderValue::from_bytes(v).expect("value"));
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::from(body.into())).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::String(text.clone()));
    (status, json, text)
}

async fn keyed(router: &axum::Router, key: &str, body: String) -> (StatusCode, serde_json::Value) {
    let (s, j, _) = post(router, body, &[("idempotency-key", key.as_bytes())]).await;
    (s, j)
}

/// Request ids of every record in the log.
async fn ids_in(wal: &Wal) -> Vec<String> {
    let mut r = wal.reader("check");
    let mut out = Vec::new();
    while !r.caught_up() {
        for e in r.read_available(1000).expect("read") {
            out.extend(e.records.iter().map(|r| r.request_id().to_owned()));
        }
    }
    out
}

fn metric(name: &str) -> f64 {
    let text = edgelog_collector::prometheus().render();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_resend_is_a_duplicate_with_the_first_answer_and_is_logged_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("open");
    let r = router(config(), &wal);
    let body = ndjson(0, 3) + "not json\n";
    let dups = metric("edgelog_ingest_duplicate_requests_total");
    let (s, first, text) = post(&r, body.clone(), &[("idempotency-key", b"ship-1")]).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    assert!(!text.contains("duplicate"), "unchanged answer: {text}");
    assert_eq!(
        (first["accepted"].as_u64(), first["rejected_total"].as_u64()),
        (Some(3), Some(1))
    );
    let (s, again, text) = post(&r, body, &[("idempotency-key", b"ship-1")]).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(
        again,
        serde_json::json!({"accepted": 3, "rejected": [], "rejected_total": 1, "duplicate": true}),
        "{text}"
    );
    let resp: IngestResponse = serde_json::from_str(&text).expect("answer shape");
    assert!(resp.duplicate);
    assert_eq!(ids_in(&wal).await, ["req-0", "req-1", "req-2"]);
    assert!(metric("edgelog_ingest_duplicate_requests_total") >= dups + 1.0);
    // Even a different body under the same key is not logged: the key is what counts.
    let (s, j) = keyed(&r, "ship-1", ndjson(100, 5)).await;
    assert_eq!((s, j["duplicate"].as_bool()), (StatusCode::OK, Some(true)));
    assert_eq!(ids_in(&wal).await.len(), 3);
}

#[tokio::test]
async fn different_keys_and_no_key_are_each_logged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("open");
    let r = router(config(), &wal);
    let body = ndjson(0, 2);
    for key in ["a", "b"] {
        let (s, j) = keyed(&r, key, body.clone()).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(j.get("duplicate"), None, "{j}");
    }
    let (s, _, text) = post(&r, body.clone(), &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(text, r#"{"accepted":2,"rejected":[],"rejected_total":0}"#);
    assert_eq!(ids_in(&wal).await.len(), 6);
    // Keys are case-sensitive.
    let (_, j) = keyed(&r, "A", body).await;
    assert_eq!(j.get("duplicate"), None, "{j}");
}

#[tokio::test]
async fn invalid_keys_of_every_kind_are_refused_with_a_reason_and_log_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("open");
    let r = router(config(), &wal);
    let long = vec![b'k'; 201];
    let cases: Vec<(&[u8], &str)> = vec![
        (b"", "empty"),
        (&long, "at most 200"),
        ("é".as_bytes(), "visible ascii"),
        (b"a b", "visible ascii"),
        (b"a\tb", "visible ascii"),
        (b"\x80\xff", "visible ascii"),
    ];
    for (key, reason) in cases {
        let (s, j, _) = post(&r, ndjson(0, 1), &[("idempotency-key", key)]).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{key:?}: {j}");
        let e = j["error"].as_str().unwrap_or("");
        assert!(e.starts_with("invalid idempotency-key header: "), "{e}");
        assert!(e.contains(reason), "{key:?}: {e}");
        assert_eq!(e, e.to_lowercase(), "lowercase like the others");
    }
    let (s, j, _) = post(
        &r,
        ndjson(0, 1),
        &[("idempotency-key", b"a"), ("idempotency-key", b"a")],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(j["error"].as_str().unwrap_or("").contains("several"), "{j}");
    assert_eq!(wal.committed(), 0);
    // The longest key allowed is taken.
    let (s, _) = keyed(&r, &"~".repeat(200), ndjson(0, 1)).await;
    assert_eq!(s, StatusCode::OK);
}

/// A line missing its timestamp: refused.
const BAD: &str = r#"{"DistributionId":"E1","sc-status":200}"#;

#[tokio::test]
async fn a_body_whose_lines_are_all_rejected_records_no_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("open");
    let r = router(config(), &wal);
    for _ in 0..2 {
        let (s, j) = keyed(&r, "bad-body", format!("{BAD}\n{BAD}\n")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(j["rejected_total"], 2);
        assert_eq!(j.get("duplicate"), None, "processed anew: {j}");
    }
    assert_eq!(wal.key_count(), 0);
    assert_eq!(wal.committed(), 0);
    // The key is still free for a body with records.
    let (s, j) = keyed(&r, "bad-body", ndjson(0, 1)).await;
    assert_eq!((s, j.get("duplicate")), (StatusCode::OK, None));
    assert_eq!(ids_in(&wal).await.len(), 1);
}

#[tokio::test]
async fn a_huge_keyed_body_of_many_entries_is_logged_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("open");
    let r = router(config(), &wal);
    let body = ndjson(0, 20_000);
    let (s, j) = keyed(&r, "huge", body.clone()).await;
    assert_eq!(s, StatusCode::OK, "{j}");
    assert_eq!(j["accepted"], 20_000);
    // A marker and entries of at most 8192 records and about 4 MiB: three or more.
    let entries = wal.committed();
    assert!(entries >= 4, "{entries} entries");
    let (s, j) = keyed(&r, "huge", body).await;
    assert_eq!((s, j["duplicate"].as_bool()), (StatusCode::OK, Some(true)));
    assert_eq!(j["accepted"], 20_000);
    assert_eq!(wal.committed(), entries);
    // Every record once, in order, across the entries.
    let ids = ids_in(&wal).await;
    let want: Vec<String> = (0..20_000).map(|i| format!("req-{i}")).collect();
    assert_eq!(ids, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_log_it_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("open");
    let r = router(config(), &wal);
    let body = ndjson(0, 2000);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (r, body) = (r.clone(), body.clone());
            tokio::spawn(async move { keyed(&r, "race", body).await })
        })
        .collect();
    let (mut fresh, mut dup, mut busy) = (0, 0, 0);
    for t in tasks {
        let (s, j) = t.await.expect("task");
        match (s, j["duplicate"].as_bool()) {
            (StatusCode::OK, None) => fresh += 1,
            (StatusCode::OK, Some(true)) => dup += 1,
            (StatusCode::CONFLICT, _) => {
                assert_eq!(
                    j["error"],
                    "a request with this idempotency key is in progress"
                );
                busy += 1;
            }
            other => panic!("unexpected answer {other:?}: {j}"),
        }
    }
    assert_eq!(fresh, 1, "{dup} duplicates, {busy} in progress");
    assert_eq!(fresh + dup + busy, 8);
    assert_eq!(ids_in(&wal).await.len(), 2000);
    // Once it is done, every resend is a duplicate.
    let (s, j) = keyed(&r, "race", body).await;
    assert_eq!((s, j["duplicate"].as_bool()), (StatusCode::OK, Some(true)));
}

#[tokio::test]
async fn a_key_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("open");
    let (s, _) = keyed(&router(config(), &wal), "k", ndjson(0, 4)).await;
    assert_eq!(s, StatusCode::OK);
    wal.close().await;
    drop(wal);
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("reopen");
    let (s, j) = keyed(&router(config(), &wal), "k", ndjson(0, 4)).await;
    assert_eq!((s, j["duplicate"].as_bool()), (StatusCode::OK, Some(true)));
    assert_eq!(j["accepted"], 4);
    assert_eq!(ids_in(&wal).await.len(), 4);
}

#[tokio::test]
async fn a_key_survives_a_restart_after_its_segment_was_delivered_and_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = CollectorConfig {
        wal: WalConfig {
            segment_bytes: 4096,
            max_bytes: 1 << 30,
            fsync: true,
        },
        ..config()
    };
    let wal = Wal::open(dir.path(), cfg.wal.clone()).expect("open");
    let r = router(cfg.clone(), &wal);
    let mut sink = wal.reader("sink");
    let (s, _) = keyed(&r, "old", ndjson(0, 4)).await;
    assert_eq!(s, StatusCode::OK);
    for i in 0..30 {
        let (s, _, _) = post(&r, ndjson(1000 + i * 20, 20), &[]).await;
        assert_eq!(s, StatusCode::OK);
    }
    let mut last = 0;
    while !sink.caught_up() {
        for e in sink.read_available(100).expect("read") {
            last = e.seq;
        }
    }
    wal.commit_cursor("sink", last).expect("commit");
    assert!(
        !dir.path().join(format!("{:020}.wal", 1)).exists(),
        "the keyed segment is gone"
    );
    wal.close().await;
    drop((r, wal));
    let wal = Wal::open(dir.path(), cfg.wal.clone()).expect("reopen");
    let committed = wal.committed();
    let (s, j) = keyed(&router(cfg, &wal), "old", ndjson(0, 4)).await;
    assert_eq!((s, j["duplicate"].as_bool()), (StatusCode::OK, Some(true)));
    assert_eq!(wal.committed(), committed);
}

#[tokio::test]
async fn keys_are_forgotten_past_the_bound_and_after_their_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = KeyLimits {
        ttl_ms: 86_400_000,
        max_keys: 2,
    };
    let wal = Wal::open_with_keys(dir.path(), WalConfig::default(), limits).expect("open");
    let r = router(config(), &wal);
    for k in ["k1", "k2", "k3"] {
        keyed(&r, k, ndjson(0, 1)).await;
    }
    let (_, j) = keyed(&r, "k3", ndjson(0, 1)).await;
    assert_eq!(j["duplicate"].as_bool(), Some(true));
    let (_, j) = keyed(&r, "k1", ndjson(0, 1)).await;
    assert_eq!(j.get("duplicate"), None, "k1 was evicted: {j}");
    wal.close().await;
    drop((r, wal));

    let dir = tempfile::tempdir().expect("tempdir");
    let limits = KeyLimits {
        ttl_ms: 100,
        max_keys: 100,
    };
    let wal = Wal::open_with_keys(dir.path(), WalConfig::default(), limits).expect("open");
    let r = router(config(), &wal);
    keyed(&r, "t", ndjson(0, 1)).await;
    let (_, j) = keyed(&r, "t", ndjson(0, 1)).await;
    assert_eq!(j["duplicate"].as_bool(), Some(true));
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (_, j) = keyed(&r, "t", ndjson(0, 1)).await;
    assert_eq!(j.get("duplicate"), None, "expired: {j}");
    assert_eq!(ids_in(&wal).await.len(), 2);
}

/// Sends a request over `stream` with `body_part` of a body of `len` bytes.
async fn start_raw(
    addr: std::net::SocketAddr,
    key: &str,
    len: usize,
    body_part: &str,
) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/records HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\nidempotency-key: {key}\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n{body_part}"
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s
}

async fn answer(mut s: tokio::net::TcpStream) -> String {
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test]
async fn a_key_in_progress_gets_409_and_is_released_when_its_client_hangs_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let served = common::serve(config(), dir.path()).await;
    let (addr, wal) = (served.addr, served.wal.clone());
    let body = ndjson(0, 3);
    let (head, tail) = body.split_at(10);
    // The first request is stuck reading its body, its key claimed.
    let mut slow = start_raw(addr, "busy", body.len(), head).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let other = answer(start_raw(addr, "busy", body.len(), &body).await).await;
    assert!(other.starts_with("HTTP/1.1 409"), "{other}");
    assert!(other.contains("in progress"), "{other}");
    assert!(
        other.to_ascii_lowercase().contains("retry-after: 1"),
        "{other}"
    );
    slow.write_all(tail.as_bytes()).await.expect("rest");
    let first = answer(slow).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(!first.contains("duplicate"), "{first}");
    let again = answer(start_raw(addr, "busy", body.len(), &body).await).await;
    assert!(again.contains(r#""duplicate":true"#), "{again}");

    // A client that hangs up mid-body leaves its key free.
    let gone = start_raw(addr, "hangup", body.len(), head).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(gone);
    let mut retried = String::new();
    for _ in 0..50 {
        retried = answer(start_raw(addr, "hangup", body.len(), &body).await).await;
        if !retried.starts_with("HTTP/1.1 409") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(retried.starts_with("HTTP/1.1 200"), "{retried}");
    assert!(!retried.contains("duplicate"), "{retried}");
    assert_eq!(ids_in(&wal).await.len(), 6);
    served.stop().await;
}
