//! Every field, with its type, survives the trip through HTTP: NDJSON and W3C, each plain,
//! gzip'd and zstd'd, compared with what lands in the write-ahead log.

use std::io::Write;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use edgelog_collector::{AppState, CollectorConfig, Wal, app};
use edgelog_edge::{ErrorMix, Generator};
use edgelog_record::{Record, w3c, write_json};
use http_body_util::BodyExt;
use tower::ServiceExt;

const TOKEN: &str = "test-token-0123456789";

fn generated(n: usize, whole_seconds: bool) -> Vec<Record> {
    let mut g = Generator::new(11, 1, 16);
    (0..n)
        .map(|i| {
            let ts = 1_764_000_000_123 + i as i64 * 7_777;
            g.record(
                if whole_seconds { ts - ts % 1000 } else { ts },
                0,
                ErrorMix {
                    pct_4xx: 5.0,
                    pct_5xx: 5.0,
                },
            )
        })
        .collect()
}

fn compress(raw: &[u8], encoding: &str) -> Vec<u8> {
    match encoding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(raw).expect("gzip");
            e.finish().expect("gzip")
        }
        "zstd" => zstd::encode_all(raw, 3).expect("zstd"),
        _ => raw.to_vec(),
    }
}

#[tokio::test]
async fn every_field_round_trips_in_both_formats_and_all_encodings() {
    for format in ["ndjson", "w3c"] {
        for encoding in ["identity", "gzip", "zstd"] {
            let dir = tempfile::tempdir().expect("tempdir");
            let cfg = CollectorConfig {
                tokens: vec![TOKEN.into()],
                ..CollectorConfig::default()
            };
            let wal = Wal::open(dir.path(), cfg.wal.clone()).expect("wal");
            let router = app(AppState::new(cfg, wal.clone(), Vec::new()));
            // W3C has whole seconds only; NDJSON carries milliseconds.
            let sent = generated(500, format == "w3c");
            let (raw, uri) = if format == "ndjson" {
                let mut raw = Vec::new();
                for r in &sent {
                    write_json(r, &mut raw);
                    raw.push(b'\n');
                }
                (raw, "/v1/records".to_owned())
            } else {
                let mut text = String::new();
                w3c::write_header(&mut text);
                for r in &sent {
                    w3c::write_line(r, &mut text);
                }
                (
                    text.into_bytes(),
                    format!(
                        "/v1/records?format=w3c&distribution={}",
                        sent[0].distribution_id
                    ),
                )
            };
            let req = Request::post(uri)
                .header("authorization", format!("Bearer {TOKEN}"))
                .header("content-encoding", encoding)
                .body(Body::from(compress(&raw, encoding)))
                .expect("request");
            let resp = router.oneshot(req).await.expect("response");
            let status = resp.status();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(
                status,
                StatusCode::OK,
                "{format}/{encoding}: {}",
                String::from_utf8_lossy(&body)
            );

            let mut reader = wal.reader("check");
            let mut got = Vec::new();
            while !reader.caught_up() {
                for e in reader.read_available(10).expect("read") {
                    got.extend(e.records.iter().cloned());
                }
            }
            assert_eq!(got.len(), sent.len(), "{format}/{encoding}");
            for (a, b) in got.iter().zip(&sent) {
                assert_eq!(a, b, "{format}/{encoding}");
            }
            wal.close().await;
        }
    }
}
