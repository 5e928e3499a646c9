//! The in-process stream between a collector and the dashboard (or a local tail) in the
//! same process: real-time records and minute aggregates.

use std::sync::Arc;

use async_trait::async_trait;
use edgelog_record::MinuteUpdate;
use tokio::sync::broadcast;

use crate::{Publisher, SinkError};

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

/// Something that takes every minute aggregate published in process (a dashboard's store).
type MinuteReader = Arc<dyn Fn(&MinuteUpdate) + Send + Sync>;

/// The in-process stream: real-time messages (a bounded broadcast: a slow reader misses
/// some) and minute aggregates (handed to every reader as they are published, never
/// dropped: metrics must count every record).
#[derive(Clone)]
pub struct Bus {
    records: broadcast::Sender<Arc<StreamMessage>>,
    minutes: Arc<std::sync::RwLock<Vec<MinuteReader>>>,
}

impl Bus {
    /// `capacity`: real-time messages kept for slow readers.
    pub fn new(capacity: usize) -> Bus {
        Bus {
            records: broadcast::channel(capacity.max(1)).0,
            minutes: Arc::default(),
        }
    }

    /// Follows real-time records from now on.
    pub fn subscribe_records(&self) -> broadcast::Receiver<Arc<StreamMessage>> {
        self.records.subscribe()
    }

    /// How many follow real-time records now.
    pub fn record_readers(&self) -> usize {
        self.records.receiver_count()
    }

    /// Hands a real-time record to every follower (a slow one misses the oldest).
    pub fn send_record(&self, message: Arc<StreamMessage>) {
        let _ = self.records.send(message);
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
