//! Ingest tokens limited to distributions, and tokens given by their SHA-256.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use edgelog_collector::{AppState, CollectorConfig, ScopedToken, Wal, app};
use http_body_util::BodyExt;
use tower::ServiceExt;

const ALL: &str = "all-distributions-token-0123";
const SCOPED: &str = "scoped-token-0123456789abcdef";
/// printf %s hashed-token-0123456789abcdef | sha256sum
const HASHED: &str = "hashed-token-0123456789abcdef";

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn config() -> CollectorConfig {
    CollectorConfig {
        tokens: vec![format!("sha256:{}", sha256_hex(ALL))],
        scoped_tokens: vec![
            ScopedToken {
                token: Some(SCOPED.into()),
                sha256: None,
                distributions: vec!["EALLOWED".into(), "EPRE*".into()],
            },
            ScopedToken {
                token: None,
                sha256: Some(sha256_hex(HASHED).to_uppercase()),
                distributions: vec!["EHASHED".into()],
            },
        ],
        ..CollectorConfig::default()
    }
}

fn body(dists: &[&str]) -> Vec<u8> {
    dists
        .iter()
        .enumerate()
        .map(|(i, d)| {
            format!(
                "{{\"timestamp(ms)\":1700000000000,\"DistributionId\":\"{d}\",\"x-edge-request-id\":\"r{i}\"}}\n"
            )
        })
        .collect::<String>()
        .into_bytes()
}

async fn post(token: &str, body: Vec<u8>) -> (StatusCode, serde_json::Value) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config();
    let wal = Wal::open(dir.path(), cfg.wal.clone()).expect("open wal");
    let router = app(AppState::new(cfg, wal, Vec::new()));
    let resp = router
        .oneshot(
            Request::post("/v1/records?format=ndjson")
                .header("authorization", format!("Bearer {token}"))
                .body(Body::from(body))
                .expect("request"),
        )
        .await
        .expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn a_scoped_token_writes_its_distributions_and_only_those() {
    let (status, a) = post(
        SCOPED,
        body(&["EALLOWED", "EOTHER", "EPRE42", "EPR", "EALLOWEDX"]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert_eq!(a["accepted"], 2, "{a}");
    assert_eq!(a["rejected_total"], 3, "{a}");
    let lines: Vec<u64> = a["rejected"]
        .as_array()
        .map(|v| v.iter().filter_map(|r| r["line"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(lines, [2, 4, 5]);
    for r in a["rejected"].as_array().into_iter().flatten() {
        assert_eq!(r["kind"], "distribution_not_allowed", "{r}");
        assert!(
            r["reason"]
                .as_str()
                .is_some_and(|s| s.contains("may not write distribution")),
            "{r}"
        );
    }
    // Only foreign lines: the body is refused as a whole, with the reasons.
    let (status, a) = post(SCOPED, body(&["EOTHER"])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{a}");
    assert_eq!(a["accepted"], 0);
}

#[tokio::test]
async fn tokens_given_as_hashes_work_and_others_do_not() {
    let (status, a) = post(HASHED, body(&["EHASHED", "EALLOWED"])).await;
    assert_eq!(
        (status, a["accepted"].as_u64()),
        (StatusCode::OK, Some(1)),
        "{a}"
    );
    let (status, a) = post(ALL, body(&["EANY", "EOTHER"])).await;
    assert_eq!(
        (status, a["accepted"].as_u64()),
        (StatusCode::OK, Some(2)),
        "{a}"
    );
    // The hash itself is not a token.
    let (status, _) = post(&sha256_hex(ALL), body(&["EANY"])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = post("scoped-token-0123456789abcdeX", body(&["EALLOWED"])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[test]
fn scoped_token_mistakes_are_refused_with_the_key_named() {
    let with = |t: ScopedToken| CollectorConfig {
        scoped_tokens: vec![t],
        ..CollectorConfig::default()
    };
    let token = |t: Option<&str>, h: Option<&str>, d: &[&str]| ScopedToken {
        token: t.map(str::to_owned),
        sha256: h.map(str::to_owned),
        distributions: d.iter().map(|s| (*s).to_owned()).collect(),
    };
    for (cfg, needle) in [
        (with(token(None, None, &["E1"])), "give token or sha256"),
        (
            with(token(Some(SCOPED), Some(&sha256_hex(SCOPED)), &["E1"])),
            "give token or sha256",
        ),
        (with(token(Some("short"), None, &["E1"])), "16 at least"),
        (with(token(None, Some("abc"), &["E1"])), "64 hex digits"),
        (
            with(token(None, Some(&"g".repeat(64)), &["E1"])),
            "64 hex digits",
        ),
        (
            with(token(Some(SCOPED), None, &[])),
            "list the distributions",
        ),
        (with(token(Some(SCOPED), None, &["has space"])), "neither"),
        (with(token(Some(SCOPED), None, &["E*1"])), "neither"),
        (
            CollectorConfig {
                tokens: vec!["sha256:0123".into()],
                ..CollectorConfig::default()
            },
            "64 hex digits",
        ),
    ] {
        let e = cfg
            .validate()
            .err()
            .unwrap_or_else(|| panic!("{needle}: accepted"));
        assert!(e.contains(needle), "{needle}: {e}");
        assert!(e.contains("collector."), "{e}");
    }
    // A scoped token alone is enough to run.
    assert_eq!(with(token(Some(SCOPED), None, &["*"])).validate(), Ok(()));
}
