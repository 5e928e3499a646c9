//! The in-process stream between a collector and the dashboard (or a local tail) in the
//! same process: real-time records and minute aggregates.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use async_trait::async_trait;
use edgelog_record::MinuteUpdate;
use tokio::sync::broadcast;

use crate::{Publisher, SinkError};

/// Bytes of real-time messages the stream holds for readers that have not read them yet.
/// Counting messages alone let a slow reader hold gigabytes of records with long values.
pub const STREAM_BYTES: usize = 32 << 20;

/// One real-time log message.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamMessage {
    /// The distribution id: one distribution's records keep their order.
    pub key: String,
    /// Percent of this distribution's records that the stream carries.
    pub sample_rate: f64,
    pub schema_version: u32,
    /// The record as CloudFront-named JSON.
    pub payload: Vec<u8>,
}

impl StreamMessage {
    /// About what it holds in memory (a payload grown by doubling holds up to twice its
    /// length).
    pub fn memory(&self) -> usize {
        std::mem::size_of::<StreamMessage>() + self.key.capacity() + self.payload.capacity()
    }
}

/// A message in the stream: its bytes count against [`STREAM_BYTES`] until every reader
/// has it.
#[derive(Debug)]
pub struct Streamed {
    message: StreamMessage,
    held: Arc<AtomicUsize>,
    bytes: usize,
}

impl Deref for Streamed {
    type Target = StreamMessage;

    fn deref(&self) -> &StreamMessage {
        &self.message
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Something that takes every minute aggregate published in process (a dashboard's store).
type MinuteReader = Arc<dyn Fn(&MinuteUpdate) + Send + Sync>;

/// The in-process stream: real-time messages (a broadcast bounded in messages and in
/// bytes: a slow reader misses some) and minute aggregates (handed to every reader as
/// they are published, never dropped: metrics must count every record).
#[derive(Clone)]
pub struct Bus {
    records: broadcast::Sender<Arc<Streamed>>,
    held: Arc<AtomicUsize>,
    max_bytes: usize,
    /// Messages refused for the bytes held, since the start.
    refused: Arc<AtomicU64>,
    minutes: Arc<std::sync::RwLock<Vec<MinuteReader>>>,
}

impl Bus {
    /// `capacity`: real-time messages kept for slow readers, within [`STREAM_BYTES`].
    pub fn new(capacity: usize) -> Bus {
        Bus::with_bytes(capacity, STREAM_BYTES)
    }

    /// `capacity` messages and `max_bytes` of them kept for slow readers.
    pub fn with_bytes(capacity: usize, max_bytes: usize) -> Bus {
        Bus {
            records: broadcast::channel(capacity.max(1)).0,
            held: Arc::default(),
            max_bytes,
            refused: Arc::default(),
            minutes: Arc::default(),
        }
    }

    /// Follows real-time records from now on.
    pub fn subscribe_records(&self) -> broadcast::Receiver<Arc<Streamed>> {
        self.records.subscribe()
    }

    /// How many follow real-time records now.
    pub fn record_readers(&self) -> usize {
        self.records.receiver_count()
    }

    /// Bytes of messages not yet read by every reader.
    pub fn held_bytes(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Messages refused so far because readers had not taken the stream's bytes.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The count [`Bus::refused`] reads, for a reader that must not keep the stream open.
    pub fn refusals(&self) -> Arc<AtomicU64> {
        self.refused.clone()
    }

    /// Hands a real-time record to every follower. A slow one misses the oldest when the
    /// stream holds `capacity` messages, and every one misses this one when the stream
    /// holds its bytes (the slowest reader has not read them): false then, or with no
    /// follower.
    pub fn send_record(&self, message: StreamMessage) -> bool {
        let bytes = message.memory();
        if self.held.fetch_add(bytes, Ordering::Relaxed) + bytes > self.max_bytes {
            self.held.fetch_sub(bytes, Ordering::Relaxed);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        // From here its drop gives the bytes back, sent or not.
        let streamed = Arc::new(Streamed {
            message,
            held: self.held.clone(),
            bytes,
        });
        self.records.send(streamed).is_ok()
    }

    /// Hands one minute aggregate to every reader (none reading is fine).
    pub fn publish_one(&self, u: &MinuteUpdate) {
        let readers = self.minutes.read().unwrap_or_else(|p| p.into_inner());
        for r in readers.iter() {
            r(u);
        }
    }

    /// Calls `reader` with every minute aggregate published from now on, in the
    /// publisher's task (keep it quick: a merge into a map).
    pub fn on_minutes(&self, reader: impl Fn(&MinuteUpdate) + Send + Sync + 'static) {
        self.minutes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::new(reader));
    }
}

#[async_trait]
impl Publisher for Bus {
    async fn publish(&self, updates: &[MinuteUpdate]) -> Result<(), SinkError> {
        for u in updates {
            // No reader is not an error: nobody is watching yet.
            self.publish_one(u);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: usize) -> StreamMessage {
        StreamMessage {
            key: "EDEMO".into(),
            sample_rate: 100.0,
            schema_version: 1,
            payload: vec![b'x'; n],
        }
    }

    #[test]
    fn a_reader_that_does_not_read_holds_at_most_the_bytes() {
        let one = message(1000).memory();
        let bus = Bus::with_bytes(1000, 10 * one);
        let mut rx = bus.subscribe_records();
        let sent = (0..100).filter(|_| bus.send_record(message(1000))).count();
        assert_eq!((sent, bus.refused()), (10, 90));
        assert_eq!(bus.held_bytes(), 10 * one);
        // What it reads gives its bytes back; what it missed was never held.
        for _ in 0..10 {
            let m = rx.try_recv().expect("a message");
            assert_eq!(m.payload.len(), 1000);
        }
        assert!(rx.try_recv().is_err());
        assert_eq!(bus.held_bytes(), 0);
        assert!(bus.send_record(message(1000)));
    }

    #[test]
    fn the_count_bound_drops_the_oldest_and_gives_their_bytes_back() {
        let bus = Bus::with_bytes(4, usize::MAX / 2);
        let mut rx = bus.subscribe_records();
        for _ in 0..10 {
            assert!(bus.send_record(message(100)));
        }
        assert_eq!(bus.held_bytes(), 4 * message(100).memory());
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(6))
        ));
        drop(rx);
        assert_eq!(bus.held_bytes(), 0);
    }

    #[test]
    fn with_no_reader_nothing_is_held_and_a_huge_message_is_refused() {
        let bus = Bus::with_bytes(16, 10_000);
        assert!(!bus.send_record(message(100)));
        assert_eq!(bus.held_bytes(), 0);
        let _rx = bus.subscribe_records();
        assert!(!bus.send_record(message(20_000)));
        assert_eq!(bus.held_bytes(), 0);
        assert!(bus.send_record(message(100)));
    }
}
