//! The metrics sink: per distribution and minute, from every record (before sampling).
//!
//! It counts into partial aggregates and hands them to a [`Publisher`] every interval;
//! its position advances only once a publish succeeded, so after a crash the minutes are
//! rebuilt from the log. With a state file, the last published entry is saved after each
//! publish, so a replay does not count again what was published (only a crash between
//! the publisher's acknowledgement and that save can publish one interval twice).

use hashbrown::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use edgelog_record::{MinuteAggregate, MinuteReport, MinuteUpdate};

use crate::sink::{Batch, Sink, SinkError};
use crate::wal::Seq;

/// Where finished partial aggregates go (Kafka, or the in-process bus).
#[async_trait]
pub trait Publisher: Send + Sync {
    async fn publish(&self, updates: &[MinuteUpdate]) -> Result<(), SinkError>;
}

/// Reports waiting to be published are estimated at [`NEW_REPORT_BYTES`] each, and this
/// many bytes more per record counted into them up to [`REPORT_RECORDS`] records (a
/// summary is bounded, whatever it counts). Measured: a one-record summary takes about
/// 3 KiB, one full of long names (400 records or more) about 92 KiB while counting.
const NEW_REPORT_BYTES: usize = 3072;
const REPORT_BYTES_PER_RECORD: usize = 230;
const REPORT_RECORDS: u64 = 400;
/// Reports waiting past this estimate are published before the next batch; within a batch,
/// past it, records of minutes without a report yet count in the minute's aggregate only
/// (`edgelog_report_records_skipped_total`). Memory stays bounded with any number of
/// distributions and minutes.
pub const MAX_PENDING_REPORT_BYTES: usize = 64 << 20;

/// One distribution's minute, waiting to be published.
#[derive(Default)]
struct Pending {
    aggregate: MinuteAggregate,
    report: Option<Box<MinuteReport>>,
}

/// Counts records into per-minute aggregates (and reports, unless turned off).
pub struct MetricsAggregator {
    collector_id: String,
    publisher: Arc<dyn Publisher>,
    interval: Duration,
    /// Counts not yet published, by distribution and minute.
    pending: HashMap<String, HashMap<i64, Pending>>,
    /// Reports are kept: user agents are classified by this.
    viewers: Option<crate::viewer::ViewerClassifier>,
    /// Estimated bytes of the reports in `pending`.
    report_bytes: usize,
    /// Position of the last entry counted into `pending`.
    counted: Seq,
    delivered: Seq,
    last_publish: Instant,
    /// Entries up to here are published (from the state file, after a restart).
    published: Seq,
    state_file: Option<std::path::PathBuf>,
}

impl MetricsAggregator {
    pub fn new(collector_id: &str, publisher: Arc<dyn Publisher>, interval: Duration) -> Self {
        MetricsAggregator {
            collector_id: collector_id.to_owned(),
            publisher,
            interval,
            pending: HashMap::new(),
            viewers: Some(crate::viewer::ViewerClassifier::default()),
            report_bytes: 0,
            counted: 0,
            delivered: 0,
            last_publish: Instant::now(),
            published: 0,
            state_file: None,
        }
    }

    /// Counts the minute aggregates only, without reports.
    pub fn without_reports(mut self) -> Self {
        self.viewers = None;
        self
    }

    /// Keeps the last published entry in `path` (read now, written after every publish).
    pub fn with_state_file(mut self, path: &std::path::Path) -> std::io::Result<Self> {
        self.published = match std::fs::read_to_string(path) {
            Ok(text) => text.trim().parse().map_err(std::io::Error::other)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        self.state_file = Some(path.to_owned());
        Ok(self)
    }

    fn save_published(&self) -> Result<(), SinkError> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        crate::state_file::write_atomic(path, self.counted.to_string().as_bytes()).map_err(|e| {
            SinkError::unavailable(format!("cannot save {}", path.display())).with_source(e)
        })
    }

    async fn publish(&mut self) -> Result<(), SinkError> {
        if !self.pending.is_empty() {
            let collector = &self.collector_id;
            // Moved out, not copied, and put back if the publisher fails.
            let updates: Vec<MinuteUpdate> = self
                .pending
                .drain()
                .flat_map(|(d, minutes)| {
                    minutes.into_iter().map(move |(m, p)| MinuteUpdate {
                        collector_id: collector.clone(),
                        distribution_id: d.clone(),
                        minute_ms: m,
                        aggregate: p.aggregate,
                        report: p.report.map(|mut r| {
                            // Sorted by key: readers merge it in one pass.
                            r.compact();
                            r
                        }),
                    })
                })
                .collect();
            if let Err(e) = self.publisher.publish(&updates).await {
                for u in updates {
                    let p = self
                        .pending
                        .entry(u.distribution_id)
                        .or_default()
                        .entry(u.minute_ms)
                        .or_default();
                    p.aggregate = u.aggregate;
                    p.report = u.report;
                }
                return Err(e);
            }
            self.report_bytes = 0;
            self.save_published()?;
        }
        self.delivered = self.counted;
        self.last_publish = Instant::now();
        Ok(())
    }
}

#[async_trait]
impl Sink for MetricsAggregator {
    async fn write(&mut self, batch: &Batch<'_>) -> Result<(), SinkError> {
        let entry = batch.entry;
        if entry.seq <= self.counted {
            return Ok(());
        }
        if entry.seq <= self.published {
            // Published before a restart.
            self.counted = entry.seq;
            return Ok(());
        }
        if self.report_bytes > MAX_PENDING_REPORT_BYTES {
            // Before counting more: while publishing fails, nothing more is held.
            tracing::debug!(bytes = self.report_bytes, "publishing reports early");
            self.publish().await?;
        }
        let mut skipped = 0u64;
        for r in batch.records().map(|k| k.record) {
            let minute = r.timestamp_ms - r.timestamp_ms.rem_euclid(60_000);
            // Look up before inserting: no id copied per record.
            let minutes = match self.pending.get_mut(&r.distribution_id) {
                Some(m) => m,
                None => self.pending.entry(r.distribution_id.clone()).or_default(),
            };
            let p = minutes.entry(minute).or_default();
            p.aggregate.add(r);
            if let Some(viewers) = &mut self.viewers {
                if p.report.is_none() {
                    if self.report_bytes > MAX_PENDING_REPORT_BYTES {
                        skipped += 1;
                        continue;
                    }
                    self.report_bytes += NEW_REPORT_BYTES;
                }
                let viewer = viewers.classify(r.cs_user_agent.as_deref());
                p.report.get_or_insert_default().add(r, &viewer);
                if p.aggregate.requests <= REPORT_RECORDS {
                    self.report_bytes += REPORT_BYTES_PER_RECORD;
                }
            }
        }
        if skipped > 0 {
            metrics::counter!("edgelog_report_records_skipped_total").increment(skipped);
            tracing::warn!(
                skipped,
                bytes = self.report_bytes,
                "too many minutes waiting to be published: records of new ones count in their aggregates only, not in reports"
            );
        }
        self.counted = entry.seq;
        Ok(())
    }

    async fn tick(&mut self) -> Result<(), SinkError> {
        if self.last_publish.elapsed() >= self.interval {
            self.publish().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.publish().await
    }

    fn delivered(&self) -> Seq {
        self.delivered
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use edgelog_record::Record;
    use edgelog_wal::Entry;

    use super::*;

    /// Refuses while `down`; keeps what it took.
    #[derive(Default)]
    struct Flaky {
        down: AtomicBool,
        got: Mutex<Vec<MinuteUpdate>>,
    }

    #[async_trait]
    impl Publisher for Flaky {
        async fn publish(&self, updates: &[MinuteUpdate]) -> Result<(), SinkError> {
            if self.down.load(Ordering::Relaxed) {
                return Err(SinkError::unavailable("down"));
            }
            self.got
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(updates);
            Ok(())
        }
    }

    fn entry(seq: u64, records: Vec<Record>) -> Entry {
        Entry {
            seq,
            appended_ms: 0,
            records: Arc::new(records),
        }
    }

    fn record(minute: i64, path: &str) -> Record {
        Record {
            timestamp_ms: minute * 60_000,
            distribution_id: "E1".into(),
            cs_uri_stem: Some(path.into()),
            ..Record::default()
        }
    }

    #[tokio::test]
    async fn a_refused_publish_keeps_every_count_for_the_next() {
        let p = Arc::new(Flaky::default());
        let mut agg = MetricsAggregator::new("c", p.clone(), Duration::from_secs(3600));
        agg.write(&Batch::all(&entry(
            1,
            vec![record(1, "/a"), record(2, "/b")],
        )))
        .await
        .expect("counted");
        p.down.store(true, Ordering::Relaxed);
        assert!(agg.flush().await.is_err());
        assert_eq!(agg.delivered(), 0, "nothing delivered while refused");
        agg.write(&Batch::all(&entry(2, vec![record(1, "/a")])))
            .await
            .expect("counted");
        p.down.store(false, Ordering::Relaxed);
        agg.flush().await.expect("published");
        assert_eq!(agg.delivered(), 2);
        let got = p.got.lock().unwrap_or_else(|e| e.into_inner());
        let minute1: Vec<_> = got.iter().filter(|u| u.minute_ms == 60_000).collect();
        assert_eq!(minute1.len(), 1);
        assert_eq!(minute1[0].aggregate.requests, 2);
        let report = minute1[0].report.as_deref().expect("a report");
        assert_eq!(report.requests(), 2);
        assert_eq!(report.objects.entries()[0].count, 2);
        assert_eq!(got.iter().map(|u| u.aggregate.requests).sum::<u64>(), 3);
    }

    #[tokio::test]
    async fn past_the_bound_new_minutes_count_without_reports() {
        let p = Arc::new(Flaky::default());
        let mut agg = MetricsAggregator::new("c", p.clone(), Duration::from_secs(3600));
        // One record a minute: more new summaries in one batch than the bound holds.
        let n = (MAX_PENDING_REPORT_BYTES / NEW_REPORT_BYTES + 1000) as i64;
        let records: Vec<Record> = (0..n).map(|m| record(m, "/a")).collect();
        agg.write(&Batch::all(&entry(1, records)))
            .await
            .expect("counted");
        assert!(
            agg.report_bytes
                <= MAX_PENDING_REPORT_BYTES + NEW_REPORT_BYTES + REPORT_BYTES_PER_RECORD
        );
        // The next batch publishes first, then counts with reports again.
        agg.write(&Batch::all(&entry(2, vec![record(n, "/b")])))
            .await
            .expect("counted");
        agg.flush().await.expect("published");
        let got = p.got.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(
            got.iter().map(|u| u.aggregate.requests).sum::<u64>(),
            n as u64 + 1,
            "every record in the aggregates"
        );
        let reported: u64 = got
            .iter()
            .filter_map(|u| u.report.as_ref())
            .map(|r| r.requests())
            .sum();
        assert!(reported < n as u64, "some minutes went without a report");
        assert!(
            got.iter()
                .any(|u| u.minute_ms == n * 60_000 && u.report.is_some()),
            "reports resume after a publish"
        );
    }
}
