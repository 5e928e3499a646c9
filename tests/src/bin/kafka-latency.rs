//! The real-time latency benchmark's consumer (`scripts/bench-kafka-latency.sh`): reads a
//! topic from its start and notes, for each message, how long ago the collector stamped
//! it (the message's timestamp is when the collector logged the record). A Python
//! consumer could not keep up with 100,000 messages a second on the benchmark machine.
//!
//! `kafka-latency BOOTSTRAP TOPIC OUT.json`: waits up to 40 s for the first message, then
//! reads until 8 s pass without one; writes `{"count", "p50", "p99", "max"}` (ms) to OUT.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bootstrap, topic, out] = args.as_slice() else {
        anyhow::bail!("usage: kafka-latency BOOTSTRAP TOPIC OUT.json");
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("latency-{topic}-{}", std::process::id()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .context("kafka consumer")?;
    consumer.subscribe(&[topic]).context("subscribe")?;
    let start = Instant::now();
    let mut last: Option<Instant> = None;
    let mut lat: Vec<f64> = Vec::new();
    loop {
        match last {
            None if start.elapsed() > Duration::from_secs(40) => break,
            Some(l) if l.elapsed() > Duration::from_secs(8) => break,
            _ => {}
        }
        let Some(m) = consumer.poll(Duration::from_millis(10)) else {
            continue;
        };
        let Ok(m) = m else { continue };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        if let Some(ts) = m.timestamp().to_millis() {
            lat.push(now_ms - ts as f64);
        }
        last = Some(Instant::now());
    }
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| {
        lat.get(((p * lat.len() as f64) as usize).min(lat.len().saturating_sub(1)))
            .copied()
    };
    let report = serde_json::json!({
        "count": lat.len(),
        "p50": q(0.5),
        "p99": q(0.99),
        "max": lat.last(),
    });
    std::fs::write(out, report.to_string()).with_context(|| format!("write {out}"))?;
    Ok(())
}
