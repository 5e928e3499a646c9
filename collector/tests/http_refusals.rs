//! Requests hyper refuses before any handler runs (it cannot parse them, or their URI or
//! headers are past its limits) get JSON with a reason too, on a real socket, and the
//! connection closes after it.

use edgelog_collector::CollectorConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

const TOKEN: &str = "test-token-0123456789";

/// Sends `request` as raw bytes and reads the answer until the server closes.
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may answer and close before it has read all of a huge request.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("the server closes the connection");
    if let Err(e) = read {
        // A reset after the answer (unread request bytes) still leaves the answer read.
        assert!(!answer.is_empty(), "no answer: {e}");
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// The last answer's status and JSON body.
fn last_answer(text: &str) -> (u16, serde_json::Value) {
    let start = text.rfind("HTTP/1.1 ").expect("an answer");
    let answer = &text[start..];
    let status = answer[9..12].parse().expect("status");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    (status, body)
}

#[tokio::test]
async fn requests_hyper_refuses_get_json_with_a_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = CollectorConfig {
        tokens: vec![TOKEN.into()],
        ..CollectorConfig::default()
    };
    let served = common::serve(cfg, dir.path()).await;
    let many_headers: String = (0..200).map(|i| format!("x-h{i}: 1\r\n")).collect();
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70_000)).into_bytes(),
            414,
            "URI",
        ),
        (
            format!("GET /healthz HTTP/1.1\r\nhost: x\r\n{many_headers}\r\n").into_bytes(),
            431,
            "headers",
        ),
        (
            format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(500_000))
                .into_bytes(),
            431,
            "headers",
        ),
        (b"GARBAGE\r\n\r\n".to_vec(), 400, "not valid HTTP"),
        (
            b"POST /v1/records HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n".to_vec(),
            400,
            "content-length",
        ),
        (
            b"POST /v1/records HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello"
                .to_vec(),
            400,
            "not valid HTTP",
        ),
        (b"GET / HTTP/1.1\r\nbad header\r\n\r\n".to_vec(), 400, "header"),
    ];
    for (request, status, says) in cases {
        let text = raw(served.addr, &request).await;
        let (s, body) = last_answer(&text);
        assert_eq!(s, status, "{text}");
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains(says)),
            "{status}: {body}"
        );
    }

    // After a good request on the same connection: the first answer as it was, then the
    // refusal.
    let text = raw(
        served.addr,
        b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\nGARBAGE\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 2, "{text}");
    assert_eq!(last_answer(&text).0, 400, "{text}");
    assert_eq!(served.wal.committed(), 0, "nothing refused was logged");
    served.stop().await;
}
