//! The Kafka sink's in-flight bookkeeping without a broker (one that never answers): an
//! entry counts as delivered only once every message of it is acknowledged, whatever was
//! handed to the producer after it; entries with nothing sampled move the position at
//! once; and a flush says how many messages are still waiting.

use std::sync::Arc;

use edgelog_collector::{Batch, Entry, Sink};
use edgelog_edge::{ErrorMix, Generator};
use edgelog_sink_stream::{KafkaConfig, KafkaSink, RealtimeConfig};

fn entry(seq: u64, n: usize) -> Entry {
    let mut g = Generator::new(seq, 2, 2);
    Entry {
        seq,
        appended_ms: 0,
        records: Arc::new(
            (0..n)
                .map(|i| g.record(1_764_000_000_000, i % 2, ErrorMix::default()))
                .collect(),
        ),
    }
}

fn unanswered_sink() -> KafkaSink {
    // Port 9 (discard) on loopback: nothing answers, so nothing is ever acknowledged.
    let kafka = KafkaConfig {
        bootstrap_servers: "127.0.0.1:9".into(),
        ..KafkaConfig::default()
    };
    let rt = RealtimeConfig {
        kafka: Some(kafka.clone()),
        ..RealtimeConfig::default()
    };
    rt.validate("sinks.realtime").expect("valid");
    KafkaSink::new(&rt, &kafka, "c1").expect("producer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_messages_hold_the_position_and_a_flush_counts_them() {
    let mut sink = unanswered_sink();
    // Nothing in flight: an entry with no records is delivered as soon as it is written.
    sink.write(&Batch::all(&entry(1, 0))).await.expect("write");
    assert_eq!(sink.delivered(), 1);
    sink.write(&Batch::all(&entry(2, 3)))
        .await
        .expect("handed over");
    assert_eq!(sink.delivered(), 1, "entry 2 is not acknowledged");
    // A later entry with nothing to send does not move past the one still in flight.
    sink.write(&Batch::all(&entry(3, 0))).await.expect("write");
    assert_eq!(sink.delivered(), 1);
    // The same entry again (a retry after an error, say) is not produced twice.
    sink.write(&Batch::all(&entry(2, 3))).await.expect("again");
    let err = sink.flush().await.expect_err("nothing is acknowledged");
    assert!(
        err.to_string()
            .contains("3 kafka messages not delivered yet"),
        "{err}"
    );
    assert_eq!(sink.delivered(), 1);
}
