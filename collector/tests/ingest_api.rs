//! The ingest API through `tower::ServiceExt::oneshot`, plus one real socket.
//!
//! Just over 500 lines: every refusal of the API, each a short test.

use std::io::Write;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use edgelog_collector::{AppState, CollectorConfig, IngestResponse, Wal, WalConfig, app};
use http_body_util::BodyExt;
use tower::ServiceExt;

mod common;

const TOKEN: &str = "test-token-0123456789";

fn config() -> CollectorConfig {
    CollectorConfig {
        tokens: vec![TOKEN.into()],
        max_body_bytes: 1 << 20,
        max_decompressed_bytes: 8 << 20,
        ..CollectorConfig::default()
    }
}

fn setup(cfg: CollectorConfig) -> (tempfile::TempDir, Wal, axum::Router) {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), cfg.wal.clone()).expect("open wal");
    let router = app(AppState::new(cfg, wal.clone(), Vec::new()));
    (dir, wal, router)
}

fn line(i: u64) -> String {
    format!(
        r#"{{"timestamp(ms)":{},"DistributionId":"E1","x-edge-request-id":"req-{i}","sc-status":"200","sc-bytes":{},"cs-method":"GET","cs-uri-stem":"/p/{i}"}}"#,
        1_700_000_000_000u64 + i,
        100 + i
    )
}

fn ndjson(n: u64) -> String {
    (0..n).map(|i| line(i) + "\n").collect()
}

async fn post(
    router: &axum::Router,
    uri: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (StatusCode, serde_json::Value, axum::http::HeaderMap) {
    let mut req = Request::post(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::from(body)).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::String(
        String::from_utf8_lossy(&bytes).into(),
    ));
    (status, json, headers)
}

const AUTH: (&str, &str) = ("authorization", "Bearer test-token-0123456789");

/// `body` to `/v1/records` with the token, compressed as `encoding` says.
async fn post_encoded(
    router: &axum::Router,
    body: Vec<u8>,
    encoding: &str,
) -> (StatusCode, serde_json::Value) {
    let headers = [AUTH, ("content-encoding", encoding)];
    let (s, body, _) = post(router, "/v1/records", body, &headers).await;
    (s, body)
}

/// The reason of a refusal, "" without one.
fn error(body: &serde_json::Value) -> &str {
    body["error"].as_str().unwrap_or("")
}

async fn records_in(wal: &Wal) -> Vec<edgelog_record::Record> {
    let mut r = wal.reader("check");
    let mut out = Vec::new();
    while !r.caught_up() {
        for e in r.read_available(1000).expect("read") {
            out.extend(e.records.iter().cloned());
        }
    }
    out
}

#[tokio::test]
async fn tokens_are_required_and_checked() {
    let (_d, _wal, router) = setup(config());
    let (s, body, h) = post(&router, "/v1/records", ndjson(1).into_bytes(), &[]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(error(&body).contains("missing bearer token"), "{body}");
    assert_eq!(
        h.get(header::WWW_AUTHENTICATE).map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    let (s, body, _) = post(
        &router,
        "/v1/records",
        ndjson(1).into_bytes(),
        &[("authorization", "Bearer wrong-token-0123456789")],
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid bearer token");
    let (s, body, _) = post(&router, "/v1/records", ndjson(1).into_bytes(), &[AUTH]).await;
    assert_eq!(s, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn three_bad_lines_among_a_thousand_are_named_and_the_rest_kept() {
    let (_d, wal, router) = setup(config());
    let mut lines: Vec<String> = (0..1000).map(line).collect();
    lines[99] = r#"{"timestamp(ms)":1700000000000,"DistributionId":"E1","sc-bytes":"lots"}"#.into();
    lines[499] = "this is not json".into();
    lines[899] = r#"{"DistributionId":"E1","sc-status":200}"#.into();
    let (s, body, _) = post(
        &router,
        "/v1/records",
        lines.join("\n").into_bytes(),
        &[AUTH],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let resp: IngestResponse = serde_json::from_value(body).expect("answer shape");
    assert_eq!(resp.accepted, 997);
    assert_eq!(resp.rejected_total, 3);
    let lines: Vec<u64> = resp.rejected.iter().map(|r| r.line).collect();
    assert_eq!(lines, [100, 500, 900]);
    assert!(
        resp.rejected[0].reason.contains("field `sc-bytes`"),
        "{:?}",
        resp.rejected[0]
    );
    assert!(
        resp.rejected[2].reason.contains("missing timestamp"),
        "{:?}",
        resp.rejected[2]
    );
    let stored = records_in(&wal).await;
    assert_eq!(stored.len(), 997);
    assert!(stored.iter().all(|r| r.request_id() != "req-99"));
}

#[tokio::test]
async fn gzip_and_zstd_bodies_are_accepted() {
    let (_d, wal, router) = setup(config());
    let plain = ndjson(500);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(plain.as_bytes()).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let zs = zstd::encode_all(plain.as_bytes(), 3).expect("zstd");
    for (compressed, encoding) in [(gz, "gzip"), (zs, "zstd")] {
        let (s, body) = post_encoded(&router, compressed, encoding).await;
        assert_eq!(
            (s, body["accepted"].as_u64()),
            (StatusCode::OK, Some(500)),
            "{encoding}: {body}"
        );
    }
    let (s, body) = post_encoded(&router, b"garbage".to_vec(), "gzip").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        error(&body).contains("cannot decompress gzip body"),
        "{body}"
    );
    let (s, _) = post_encoded(&router, b"{}".to_vec(), "br").await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(records_in(&wal).await.len(), 1000);
}

#[tokio::test]
async fn oversize_bodies_and_compression_bombs_get_413() {
    let (_d, _wal, router) = setup(config());
    let big = vec![b' '; (1 << 20) + 1];
    let (s, body, _) = post(&router, "/v1/records", big, &[AUTH]).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error(&body).contains("exceeds 1048576 bytes"), "{body}");

    // 1 GiB of zeros: about 1 MiB gzip'd, 32 KiB zstd'd; both must stop at the 8 MiB bound.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..1000 {
        gz.write_all(&chunk).expect("gzip");
    }
    let gz = gz.finish().expect("gzip");
    assert!(gz.len() < 1 << 20, "bomb is {} bytes", gz.len());
    let (s, body) = post_encoded(&router, gz, "gzip").await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(error(&body).contains("decompressed body exceeds"), "{body}");

    let mut zs = zstd::stream::write::Encoder::new(Vec::new(), 19).expect("zstd");
    for _ in 0..1000 {
        zs.write_all(&chunk).expect("zstd");
    }
    let zs = zs.finish().expect("zstd");
    let (s, body) = post_encoded(&router, zs, "zstd").await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
}

#[tokio::test]
async fn w3c_bodies_take_the_distribution_from_the_query() {
    let (_d, wal, router) = setup(config());
    let body =
        include_bytes!("../../record/testdata/EMLARXS9EXAMPLE.2019-12-04-21.RT4KCN4SGK9.log")
            .to_vec();
    let (s, resp, _) = post(&router, "/v1/records", body.clone(), &[AUTH]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        resp["rejected"][0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("missing distribution id"),
        "{resp}"
    );
    let (s, resp, _) = post(
        &router,
        "/v1/records?distribution=EMLARXS9EXAMPLE",
        body,
        &[AUTH],
    )
    .await;
    assert_eq!(
        (s, resp["accepted"].as_u64()),
        (StatusCode::OK, Some(6)),
        "{resp}"
    );
    let stored = records_in(&wal).await;
    assert!(
        stored
            .iter()
            .all(|r| r.distribution_id == "EMLARXS9EXAMPLE")
    );
    let (s, resp, _) = post(
        &router,
        "/v1/records?distribution=../../x",
        b"{}".to_vec(),
        &[AUTH],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        error(&resp).contains("query parameter distribution"),
        "{resp}"
    );
}

#[tokio::test]
async fn a_full_log_answers_503_with_retry_after() {
    let cfg = CollectorConfig {
        wal: WalConfig {
            segment_bytes: 4096,
            max_bytes: 8192,
            fsync: false,
        },
        ..config()
    };
    let (_d, _wal, router) = setup(cfg);
    let mut full = false;
    for _ in 0..50 {
        let (s, _, h) = post(&router, "/v1/records", ndjson(20).into_bytes(), &[AUTH]).await;
        if s == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(
                h.get(header::RETRY_AFTER).map(|v| v.as_bytes()),
                Some(&b"1"[..])
            );
            full = true;
            break;
        }
        assert_eq!(s, StatusCode::OK);
    }
    assert!(full, "the log never filled");
    let resp = router
        .clone()
        .oneshot(Request::get("/readyz").body(Body::empty()).expect("req"))
        .await
        .expect("resp");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let (_d, _wal, router) = setup(config());
    let _ = post(&router, "/v1/records", ndjson(3).into_bytes(), &[AUTH]).await;
    for (path, want) in [
        ("/healthz", "ok"),
        ("/readyz", "\"status\":\"ready\""),
        ("/metrics", "edgelog_wal_bytes"),
    ] {
        let resp = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).expect("req"))
            .await
            .expect("resp");
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let text = String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes()
                .to_vec(),
        )
        .expect("utf8");
        assert!(text.contains(want), "{path}: {text}");
    }
}

#[tokio::test]
async fn a_real_socket_serves_and_shuts_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let served = common::serve(config(), dir.path()).await;
    let (addr, wal) = (served.addr, served.wal.clone());
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let body = ndjson(2);
    let req = format!(
        "POST /v1/records HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, req.as_bytes())
        .await
        .expect("write");
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut answer)
        .await
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"accepted\":2"), "{answer}");
    served.stop().await;
    assert_eq!(wal.committed(), 1);
    let _ = Arc::new(());
}

/// Bodies sent in small chunks without a length (read into kept buffers, one after the
/// other): whole at the limit, refused with 413 one byte past it, each body's records
/// exactly its own.
#[tokio::test]
async fn chunked_bodies_are_read_whole_up_to_the_limit() {
    let at_limit = ndjson(40).into_bytes();
    let mut cfg = config();
    cfg.max_body_bytes = at_limit.len() as u64;
    let (_dir, wal, router) = setup(cfg);
    let send = |bytes: Vec<u8>| {
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = bytes
            .chunks(7)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        let req = Request::post("/v1/records")
            .header(AUTH.0, AUTH.1)
            .body(Body::from_stream(futures::stream::iter(chunks)))
            .expect("request");
        let r = router.clone();
        async move {
            let resp = r.oneshot(req).await.expect("answer");
            let status = resp.status();
            let bytes = resp.into_body().collect().await.expect("body").to_bytes();
            (status, String::from_utf8_lossy(&bytes).into_owned())
        }
    };
    for _ in 0..3 {
        let (s, body) = send(at_limit.clone()).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert!(body.contains("\"accepted\":40"), "{body}");
    }
    let mut past = at_limit.clone();
    past.push(b'\n');
    let (s, body) = send(past).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    let (s, body) = send(ndjson(3).into_bytes()).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let ids: Vec<String> = records_in(&wal)
        .await
        .iter()
        .map(|r| r.request_id().to_owned())
        .collect();
    let want: Vec<String> = (0..3)
        .flat_map(|_| (0..40).map(|i| format!("req-{i}")))
        .chain((0..3).map(|i| format!("req-{i}")))
        .collect();
    assert_eq!(ids, want);
}

#[tokio::test]
async fn refusals_are_json_with_a_reason_and_limits_hold() {
    let mut cfg = config();
    cfg.max_records_per_body = 10;
    let (_dir, _wal, router) = setup(cfg);
    let call = |req: Request<Body>| {
        let r = router.clone();
        async move {
            let resp = r.oneshot(req).await.expect("answer");
            let status = resp.status();
            let retry = resp.headers().contains_key(header::RETRY_AFTER);
            let bytes = resp.into_body().collect().await.expect("body").to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!("{status}: not JSON: {:?}", String::from_utf8_lossy(&bytes))
            });
            assert!(v["error"].is_string(), "{status}: {v}");
            (status, v, retry)
        }
    };
    let post = |uri: &str, body: String| {
        Request::post(uri)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .body(Body::from(body))
            .expect("request")
    };
    // The query extractor's refusal is JSON too (a repeated parameter).
    let (s, v, _) = call(post("/v1/records?distribution=E1&distribution=E2", line(1))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // Unknown paths and methods.
    let (s, _, _) = call(Request::get("/nope").body(Body::empty()).expect("req")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = call(
        Request::get("/v1/records")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    // More lines than a body may hold.
    let body: String = (0..11).map(|i| line(i) + "\n").collect();
    let (s, v, _) = call(post("/v1/records", body)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    // A Content-Encoding that is not ASCII is refused, not read as identity.
    let mut req = post("/v1/records", line(2));
    req.headers_mut().insert(
        header::CONTENT_ENCODING,
        header::HeaderValue::from_bytes(b"gz\xffip").expect("header"),
    );
    let (s, _, _) = call(req).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // The auth scheme is case-insensitive.
    let req = Request::post("/v1/records")
        .header(header::AUTHORIZATION, format!("BEARER {TOKEN}"))
        .body(Body::from(line(3)))
        .expect("request");
    let resp = router.clone().oneshot(req).await.expect("answer");
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn bodies_beyond_the_memory_budget_get_503_with_retry_after() {
    let mut cfg = config();
    // Room for the biggest body allowed, and little more.
    cfg.max_records_per_body = 1000;
    let record = std::mem::size_of::<edgelog_record::Record>() as u64;
    cfg.max_inflight_bytes =
        cfg.max_body_bytes + (1 << 20) + 2 * cfg.max_decompressed_bytes + 2000 * record;
    cfg.validate().expect("valid");
    let (_dir, _wal, router) = setup(cfg.clone());
    // A gzip body that decompresses to the limit holds most of the budget while it is
    // parsed; many at once cannot all fit: the rest are told to come back.
    let mut big = String::new();
    let mut i = 0;
    while big.len() + 11_000 < cfg.max_decompressed_bytes as usize {
        big.push_str(&" ".repeat(10_000));
        big.push_str(&line(i));
        big.push('\n');
        i += 1;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, big.as_bytes()).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let r = router.clone();
        let body = gz.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::post("/v1/records")
                .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
                .header(header::CONTENT_ENCODING, "gzip")
                .body(Body::from(body))
                .expect("request");
            let resp = r.oneshot(req).await.expect("answer");
            (
                resp.status(),
                resp.headers().contains_key(header::RETRY_AFTER),
            )
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        let (s, retry) = t.await.expect("task");
        if s == StatusCode::SERVICE_UNAVAILABLE {
            assert!(retry, "503 without Retry-After");
        } else {
            assert_eq!(s, StatusCode::OK);
        }
        statuses.push(s);
    }
    // Alone, the same body fits.
    let req = Request::post("/v1/records")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_ENCODING, "gzip")
        .body(Body::from(gz))
        .expect("request");
    let resp = router.clone().oneshot(req).await.expect("answer");
    assert_eq!(resp.status(), StatusCode::OK, "after {statuses:?}");
}
