//! `run`: the dashboard as a service, on a real socket. It answers under the address it
//! really listens on, evaluates alarms on its own, and stops when told to.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{alarm, merge, now_ms};
use edgelog_dashboard::alarms::Metric;
use edgelog_dashboard::{DashboardConfig, MetricsStore, last_complete_minute, run};
use edgelog_record::MinuteAggregate;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One `GET` with `Connection: close`: the status line and the body.
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).await?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    Ok((status, body.to_owned()))
}

#[tokio::test]
async fn run_serves_evaluates_alarms_and_stops_on_shutdown() {
    // Port 0: the Host check must use the port really listened on, not the configured one.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let store = Arc::new(MetricsStore::new(60));
    let busy = MinuteAggregate {
        requests: 10,
        ..MinuteAggregate::default()
    };
    merge(&store, "E1", last_complete_minute(now_ms()), busy);
    let cfg = DashboardConfig {
        listen: "127.0.0.1:1".parse().expect("addr"),
        alarm_interval: Duration::from_millis(100),
        alarms: vec![alarm("busy", Metric::Requests)],
        ..DashboardConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(async move {
        run(
            listener,
            store,
            &cfg,
            async {
                let _ = stopped.await;
            },
            None,
        )
        .await
    });

    let (status, body) = get(addr, "/healthz").await.expect("healthz");
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, "ok\n");
    // The evaluation loop runs without being asked.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(addr, "/api/alarms").await.expect("alarms");
        assert!(status.contains("200"), "{status}: {body}");
        if body.contains("\"state\":\"ALARM\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the alarm was not evaluated: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let _ = stop.send(());
    let ended = tokio::time::timeout(Duration::from_secs(5), service)
        .await
        .expect("run returns once shut down")
        .expect("the task ends");
    assert!(ended.is_ok(), "{ended:?}");
    assert!(get(addr, "/healthz").await.is_err(), "still answering");
}
