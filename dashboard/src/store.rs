//! The merged minutes of every distribution, and the clock arithmetic of their windows.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use edgelog_record::{MinuteAggregate, MinuteUpdate};

use crate::metrics::MinutePoint;

/// Merged minutes per distribution, and their reports.
pub struct MetricsStore {
    series: RwLock<Series>,
    history_minutes: usize,
    reports: crate::reports::ReportStore,
}

/// Default of `dashboard.reports_max_bytes`.
pub const DEFAULT_REPORTS_MAX_BYTES: usize = 512 << 20;

/// Every distribution's minutes, and a counter of changes.
#[derive(Default)]
pub(crate) struct Series {
    pub(crate) distributions: BTreeMap<String, Minutes>,
    /// Number of the latest change (a merge or a minute dropped from history).
    pub(crate) last_change: u64,
}

/// Changes to one distribution listed for incremental alarm evaluation; older ones are
/// forgotten (an evaluation that missed them looks at its whole window again).
const CHANGE_LOG: usize = 512;

/// One distribution's minutes, and which of them changed lately.
#[derive(Default)]
pub(crate) struct Minutes {
    pub(crate) by_minute: BTreeMap<i64, MinuteAggregate>,
    /// `(change number, minute)` of the latest changes, oldest first.
    pub(crate) changes: VecDeque<(u64, i64)>,
    /// Changes numbered up to this one are no longer listed.
    pub(crate) forgotten: u64,
}

impl Minutes {
    fn changed(&mut self, change: u64, minute: i64) {
        match self.changes.back_mut() {
            // A minute in progress changes again and again: listed once, with its latest.
            Some(last) if last.1 == minute => last.0 = change,
            _ => self.changes.push_back((change, minute)),
        }
        while self.changes.len() > CHANGE_LOG {
            if let Some((n, _)) = self.changes.pop_front() {
                self.forgotten = n;
            }
        }
    }
}

/// Minutes further than this from 1970 (about 285,000 years) are ignored: no arithmetic
/// on them can overflow, and they convert to f64 exactly.
const MAX_ABS_MINUTE_MS: i64 = 1 << 53;

impl MetricsStore {
    pub fn new(history_minutes: usize) -> MetricsStore {
        MetricsStore {
            series: RwLock::default(),
            history_minutes,
            reports: crate::reports::ReportStore::new(history_minutes, DEFAULT_REPORTS_MAX_BYTES),
        }
    }

    /// Keeps at most about `max_bytes` of report summaries (the oldest go first).
    pub fn with_reports_max_bytes(mut self, max_bytes: usize) -> MetricsStore {
        self.reports = crate::reports::ReportStore::new(self.history_minutes, max_bytes);
        self
    }

    /// The reports of one distribution over the window a chart of `range_ms` shows, and
    /// that window; `None` for an unknown distribution.
    pub fn reports(
        &self,
        distribution: &str,
        range_ms: i64,
    ) -> Option<(crate::reports::Merged, (i64, i64))> {
        let last = {
            let s = self.read();
            let d = s.distributions.get(distribution)?;
            d.by_minute.last_key_value().map(|(m, _)| *m)
        };
        let (from, to) = window_of(last, range_ms);
        Some((self.reports.range(distribution, from, to), (from, to)))
    }

    /// Estimated bytes of report summaries held, and how many were dropped to stay
    /// within `reports_max_bytes`.
    pub fn report_bytes(&self) -> (usize, u64) {
        (self.reports.bytes(), self.reports.dropped())
    }

    // A panic while the lock was held leaves at worst one merge half applied (sums
    // saturate, maps stay valid): better than dropping every later merge and read.
    fn write(&self) -> RwLockWriteGuard<'_, Series> {
        self.series.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Read access (alarm evaluation reads the minutes in place).
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Series> {
        self.series.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds one collector's partial aggregate (sums saturate, they never wrap). A minute
    /// that does not start on a minute, or lies beyond ±285,000 years, is ignored.
    pub fn merge(&self, u: &MinuteUpdate) {
        if u.minute_ms.rem_euclid(60_000) != 0 || u.minute_ms.abs() > MAX_ABS_MINUTE_MS {
            tracing::debug!(minute_ms = u.minute_ms, distribution = %u.distribution_id, "implausible minute ignored");
            return;
        }
        if let Some(r) = &u.report {
            self.reports.merge(&u.distribution_id, u.minute_ms, r);
        }
        let mut s = self.write();
        s.last_change += 1;
        let change = s.last_change;
        let dist = s
            .distributions
            .entry(u.distribution_id.clone())
            .or_default();
        dist.by_minute
            .entry(u.minute_ms)
            .or_default()
            .merge(&u.aggregate);
        dist.changed(change, u.minute_ms);
        while dist.by_minute.len() > self.history_minutes {
            if let Some((minute, _)) = dist.by_minute.pop_first() {
                dist.changed(change, minute);
            }
        }
    }

    /// Distribution ids seen.
    pub fn distributions(&self) -> Vec<String> {
        self.read().distributions.keys().cloned().collect()
    }

    /// One minute of one distribution: `None` for an unknown distribution, a quiet minute
    /// (no requests, no rates) when it has no data in that minute.
    pub fn minute(&self, distribution: &str, minute_ms: i64) -> Option<MinutePoint> {
        let s = self.read();
        let d = s.distributions.get(distribution)?;
        Some(d.by_minute.get(&minute_ms).map_or_else(
            || MinutePoint::quiet(minute_ms),
            |a| MinutePoint::of(minute_ms, a),
        ))
    }

    /// The minutes of one distribution, by start time.
    pub fn series_map(&self, distribution: &str) -> BTreeMap<i64, MinutePoint> {
        self.read()
            .distributions
            .get(distribution)
            .map(|m| {
                m.by_minute
                    .iter()
                    .map(|(k, a)| (*k, MinutePoint::of(*k, a)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The minutes with data of one distribution in the window a chart of `range_ms`
    /// shows (see [`window`]), oldest first.
    pub fn recent(&self, distribution: &str, range_ms: i64) -> Option<Vec<MinutePoint>> {
        let s = self.read();
        let d = s.distributions.get(distribution)?;
        let (from, to) = window_of(d.by_minute.last_key_value().map(|(m, _)| *m), range_ms);
        Some(
            d.by_minute
                .range(from..to)
                .map(|(m, a)| MinutePoint::of(*m, a))
                .collect(),
        )
    }

    /// The series of one distribution, oldest first (minutes with data).
    pub fn series(&self, distribution: &str) -> Option<Vec<MinutePoint>> {
        let s = self.read();
        Some(
            s.distributions
                .get(distribution)?
                .by_minute
                .iter()
                .map(|(m, a)| MinutePoint::of(*m, a))
                .collect(),
        )
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The start of the last complete minute at `now_ms`: the one before the minute in
/// progress.
pub fn last_complete_minute(now_ms: i64) -> i64 {
    now_ms - now_ms.rem_euclid(60_000) - 60_000
}

/// The window a chart shows: the last `range` up to now, or up to the last minute with
/// data when the distribution has been quiet for longer (a replay of old logs).
pub(crate) fn window(points: &[MinutePoint], range: i64) -> (i64, i64) {
    window_of(points.last().map(|p| p.minute_ms), range)
}

/// [`window`] for a distribution whose last minute with data is `last_minute`.
fn window_of(last_minute: Option<i64>, range: i64) -> (i64, i64) {
    let now = now_ms();
    let now_end = now - now.rem_euclid(60_000) + 60_000;
    let to = match last_minute {
        Some(m) if m + 60_000 <= now_end - range => m + 60_000,
        _ => now_end,
    };
    (to - range, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_holding_the_lock_loses_no_later_merge() {
        let store = std::sync::Arc::new(MetricsStore::new(60));
        let poisoner = store.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.write();
            panic!("poison the lock");
        })
        .join();
        assert!(store.series.is_poisoned());
        store.merge(&MinuteUpdate {
            collector_id: "c".into(),
            distribution_id: "E1".into(),
            minute_ms: 60_000,
            aggregate: MinuteAggregate {
                requests: 3,
                ..MinuteAggregate::default()
            },
            report: None,
        });
        assert_eq!(store.distributions(), ["E1"]);
        assert_eq!(store.minute("E1", 60_000).map(|p| p.requests), Some(3));
    }
}
