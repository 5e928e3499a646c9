//! Webhook notifications: each webhook has its own queue, so one that accepts connections
//! and never answers does not delay the others; a webhook gets its notifications in
//! order; each notification is tried a bounded number of times; retry jitter differs
//! from one process to the next.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgelog_dashboard::alarms::{AlarmState, Transition};
use edgelog_dashboard::notify::{Notifier, NotifyOptions, retry_delays};

type Got = Arc<Mutex<Vec<(Instant, serde_json::Value)>>>;

/// A webhook answering `status` to every POST, keeping what it got and when.
async fn webhook(status: u16) -> (String, Got) {
    let got: Got = Arc::default();
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let keep = keep.clone();
            async move {
                let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                keep.lock().expect("lock").push((Instant::now(), v));
                axum::http::StatusCode::from_u16(status).expect("status")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

/// A webhook that accepts connections and never answers (nor reads); counts connections.
async fn stuck_webhook() -> (String, Arc<Mutex<usize>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let count = Arc::new(Mutex::new(0));
    let keep = count.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            *keep.lock().expect("lock") += 1;
            held.push(conn);
        }
    });
    (url, count)
}

fn transition(distribution: &str, to: AlarmState) -> Transition {
    let now = common::now_ms();
    Transition {
        alarm: "5xx".into(),
        distribution: distribution.into(),
        metric: "5xxErrorRate".into(),
        from: if to == AlarmState::Alarm {
            AlarmState::Ok
        } else {
            AlarmState::Alarm
        },
        to,
        at_ms: now,
        from_since_ms: now - 60_000,
        reason: "test".into(),
    }
}

async fn wait_for(got: &Got, n: usize, within: Duration) -> Vec<(Instant, serde_json::Value)> {
    let deadline = Instant::now() + within;
    loop {
        let g = got.lock().expect("lock").clone();
        if g.len() >= n || Instant::now() > deadline {
            return g;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The distribution each notification in `got` was about.
fn distributions(got: &[(Instant, serde_json::Value)]) -> Vec<&str> {
    got.iter()
        .map(|(_, b)| {
            b["alerts"][0]["labels"]["distribution"]
                .as_str()
                .unwrap_or("")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_webhook_does_not_delay_the_others() {
    let (stuck, connections) = stuck_webhook().await;
    let (good, got) = webhook(200).await;
    // The stuck one first, with the default options (5 s per request, 6 tries).
    let notifier = Notifier::start(
        &[stuck, good],
        "http://127.0.0.1:8081",
        NotifyOptions::default(),
    )
    .expect("notifier");
    let sent = Instant::now();
    assert_eq!(notifier.send(&transition("E1", AlarmState::Alarm)), 2);
    assert_eq!(notifier.send(&transition("E2", AlarmState::Alarm)), 2);
    let g = wait_for(&got, 2, Duration::from_secs(10)).await;
    assert_eq!(g.len(), 2, "the second webhook got {g:?}");
    let delay = g[0].0 - sent;
    println!(
        "second webhook: first notification {delay:?} after it was sent, second {:?} (the first webhook never answers)",
        g[1].0 - sent
    );
    assert!(delay < Duration::from_secs(5), "{delay:?}");
    assert!(g[1].0 - sent < Duration::from_secs(5));
    assert_eq!(
        *connections.lock().expect("lock"),
        1,
        "still waiting on the first try"
    );
    // And both notifications went in order.
    assert_eq!(distributions(&g), ["E1", "E2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_webhook_gets_its_notifications_in_order() {
    let (a, got_a) = webhook(200).await;
    let (b, got_b) = webhook(200).await;
    let notifier =
        Notifier::start(&[a, b], "http://d", NotifyOptions::default()).expect("notifier");
    let mut want = Vec::new();
    for i in 0..50 {
        let to = if i % 2 == 0 {
            AlarmState::Alarm
        } else {
            AlarmState::Ok
        };
        let d = format!("E{}", i / 2);
        notifier.send(&transition(&d, to));
        want.push(format!(
            "{d}/{}",
            if to == AlarmState::Alarm {
                "firing"
            } else {
                "resolved"
            }
        ));
    }
    // Not worth a notification: not queued.
    let mut quiet = transition("E0", AlarmState::Ok);
    quiet.from = AlarmState::InsufficientData;
    assert_eq!(notifier.send(&quiet), 0);
    for got in [got_a, got_b] {
        let g = wait_for(&got, 50, Duration::from_secs(10)).await;
        let seen: Vec<String> = g
            .iter()
            .map(|(_, b)| {
                format!(
                    "{}/{}",
                    b["alerts"][0]["labels"]["distribution"]
                        .as_str()
                        .unwrap_or(""),
                    b["status"].as_str().unwrap_or("")
                )
            })
            .collect();
        assert_eq!(seen, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_is_tried_a_bounded_number_of_times() {
    let (failing, got) = webhook(500).await;
    let (stuck, connections) = stuck_webhook().await;
    let options = NotifyOptions {
        timeout: Duration::from_millis(300),
        tries: 3,
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        queue: 16,
    };
    let notifier = Notifier::start(&[failing, stuck], "http://d", options).expect("notifier");
    notifier.send(&transition("E1", AlarmState::Alarm));
    notifier.send(&transition("E2", AlarmState::Alarm));
    let g = wait_for(&got, 6, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let g2 = got.lock().expect("lock").clone();
    assert_eq!(g2.len(), 6, "3 tries for each of 2 notifications: {g:?}");
    assert_eq!(distributions(&g2), ["E1", "E1", "E1", "E2", "E2", "E2"]);
    // The stuck one: each try times out, then the next notification gets its turn.
    let deadline = Instant::now() + Duration::from_secs(10);
    while *connections.lock().expect("lock") < 6 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(*connections.lock().expect("lock"), 6);
}

/// Prints this process's first retry delays (run by the next test, in new processes).
#[test]
fn print_retry_delays_when_asked() {
    if std::env::var_os("EDGELOG_TEST_PRINT_RETRY_DELAYS").is_some() {
        let d: Vec<u128> = retry_delays(&NotifyOptions::default())
            .map(|d| d.as_micros())
            .collect();
        println!("retry delays: {d:?}");
    }
}

#[test]
fn retry_jitter_differs_from_one_process_to_the_next() {
    let run = || {
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "print_retry_delays_when_asked", "--nocapture"])
            .env("EDGELOG_TEST_PRINT_RETRY_DELAYS", "1")
            .output()
            .expect("runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("retry delays: "))
            .expect("delays printed")
            .to_owned()
    };
    let (a, b) = (run(), run());
    println!("{a}\n{b}");
    assert_ne!(a, b, "two processes jittered alike");
}
