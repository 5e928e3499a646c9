//! Slow and idle clients cannot take a collector's connections or file descriptors: headers
//! have a deadline (which is also the idle keep-alive timeout), bodies have one, and
//! connections past the cap are closed at once.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::Context;
use edgelog_tests::{
    ServerConfig, TestServer, http_get, http_post, stored_ids, wait_until, within,
};

fn record(id: &str) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{{\"timestamp\":{now},\"DistributionId\":\"ESLOW\",\"x-edge-request-id\":\"{id}\",\"sc-status\":200}}\n")
        .into_bytes()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Whether the server has closed `s` (EOF or reset) by now.
fn closed(mut s: &TcpStream) -> bool {
    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => true, // an error answer, then close
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn trickling_and_idle_connections_are_cut_and_normal_clients_served() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let collector = TestServer::collector(
        dir.path(),
        &ServerConfig::new()
            .standard("max_age", "1s")
            .env("EDGELOG_COLLECTOR__HEADER_TIMEOUT", "2s")
            .env("EDGELOG_COLLECTOR__BODY_TIMEOUT", "2s"),
    )?;
    let addr = ("127.0.0.1", collector.port());
    let (n_slow, n_idle) = (2000, 2000);
    let mut slow = Vec::with_capacity(n_slow);
    for _ in 0..n_slow {
        let mut s = TcpStream::connect(addr)?;
        s.write_all(b"POST /v1/records HTTP/1.1\r\nhost: x\r\n")?;
        s.set_nonblocking(true)?;
        slow.push(s);
    }
    let mut idle = Vec::with_capacity(n_idle);
    for _ in 0..n_idle {
        idle.push(TcpStream::connect(addr)?);
    }
    // A body shorter than its Content-Length, held open.
    let mut short = TcpStream::connect(addr)?;
    write!(
        short,
        "POST /v1/records HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: 1000\r\n\r\n{{",
        edgelog_tests::TOKEN
    )?;

    // While they trickle, a normal client is served.
    let mut served = Vec::new();
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(4) {
        for s in &mut slow {
            let _ = s.write(b"x");
        }
        let t = Instant::now();
        let a = http_post(
            &format!("{}/v1/records", collector.url()),
            &record(&format!("normal-{i}")),
        )?;
        assert_eq!(a.status, 200, "{a:?}");
        served.push(t.elapsed());
        i += 1;
        // The scenario: a normal client posting every 200 ms while the others trickle.
        std::thread::sleep(Duration::from_millis(200));
    }
    let worst = served.iter().max().copied().unwrap_or_default();
    // Past the header deadline, the trickling and idle connections are gone.
    let cut_slow = slow.iter().filter(|s| closed(s)).count();
    let cut_idle = idle.iter().filter(|s| closed(s)).count();
    let mut answer = String::new();
    short.set_read_timeout(Some(Duration::from_secs(5)))?;
    let _ = short.read_to_string(&mut answer);
    let metrics = http_get(&format!("{}/metrics", collector.url()))?;
    let timeouts = metric(&metrics, "edgelog_http_timeouts_total");
    eprintln!(
        "slow clients: {n_slow} trickling ({cut_slow} cut), {n_idle} idle ({cut_idle} cut), \
         {timeouts} header timeouts counted; {} normal posts served, slowest {worst:?}",
        served.len()
    );
    assert_eq!(cut_slow, n_slow, "trickling connections still open");
    assert_eq!(cut_idle, n_idle, "idle connections still open");
    assert!(answer.starts_with("HTTP/1.1 408"), "short body: {answer:?}");
    assert!(timeouts >= (n_slow + n_idle) as f64 * 0.9, "{timeouts}");
    // The sinks could still open their files.
    let ok = wait_until(within(Duration::from_secs(10)), || {
        stored_ids(&dir.path().join("standard-logs")).is_ok_and(|ids| ids.contains_key("normal-0"))
    });
    assert!(ok, "no standard-log file written: {}", collector.log_text());
    Ok(())
}

#[test]
fn connections_past_the_cap_are_closed_and_counted() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let collector = TestServer::collector(
        dir.path(),
        &ServerConfig::new()
            .env("EDGELOG_COLLECTOR__MAX_CONNECTIONS", "50")
            .env("EDGELOG_COLLECTOR__HEADER_TIMEOUT", "2s"),
    )?;
    let addr = ("127.0.0.1", collector.port());
    // The readiness probe's connection is answered before the server's task for it ends:
    // let it end, or it counts against the cap and one of the 50 is refused.
    std::thread::sleep(Duration::from_millis(300));
    let held: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(addr))
        .collect::<Result<_, _>>()?;
    // The scenario: the server takes the 50 before the one past the cap comes.
    std::thread::sleep(Duration::from_millis(300));
    let extra = TcpStream::connect(addr)?;
    assert!(
        wait_until(within(Duration::from_millis(300)), || closed(&extra)),
        "a connection past the cap stayed open"
    );
    // Once the idle ones time out (the server closes them), clients get in again.
    wait_until(within(Duration::from_secs(10)), || held.iter().all(closed));
    let a = http_post(&format!("{}/v1/records", collector.url()), &record("after"))
        .context("a client after the idle ones were cut")?;
    assert_eq!(a.status, 200, "{a:?}");
    let metrics = http_get(&format!("{}/metrics", collector.url()))?;
    assert!(
        metric(&metrics, "edgelog_http_connections_refused_total") >= 1.0,
        "{metrics}"
    );
    drop(held);
    Ok(())
}
