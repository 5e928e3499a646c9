//! Every distribution's report summaries: by the minute for the last
//! [`MINUTE_RESOLUTION_MS`], by the hour before that, within a byte bound.

use std::collections::BTreeMap;
use std::sync::{PoisonError, RwLock};

use edgelog_record::MinuteReport;
use edgelog_record::report::Usage;

/// Summaries younger than this (from a distribution's newest minute) stay by the minute;
/// older ones are merged into their hour.
pub const MINUTE_RESOLUTION_MS: i64 = 3 * 3_600_000;
const HOUR_MS: i64 = 3_600_000;

/// One distribution's summaries.
#[derive(Default)]
struct Dist {
    minutes: BTreeMap<i64, MinuteReport>,
    hours: BTreeMap<i64, MinuteReport>,
    newest: Option<i64>,
    bytes: usize,
    /// Summaries before this were dropped to stay within the byte bound.
    dropped_before: Option<i64>,
}

#[derive(Default)]
struct Inner {
    dists: BTreeMap<String, Dist>,
    bytes: usize,
    /// Summaries dropped to stay within the bound, since the start.
    dropped: u64,
}

/// The merged reports of every distribution.
pub struct ReportStore {
    inner: RwLock<Inner>,
    history_ms: i64,
    max_bytes: usize,
}

/// The categories a report draws over time, for one minute or hour.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Moment {
    pub result_types: [Usage; 8],
    pub status_classes: [Usage; 6],
    pub methods: [Usage; 8],
    pub protocols: [Usage; 5],
    pub http_versions: [Usage; 5],
}

fn add<const N: usize>(a: &mut [Usage; N], b: &[Usage; N]) {
    a.iter_mut().zip(b).for_each(|(x, y)| x.merge(y));
}

impl Moment {
    fn add(&mut self, r: &MinuteReport) {
        add(&mut self.result_types, &r.result_types);
        add(&mut self.status_classes, &r.status_classes);
        add(&mut self.methods, &r.methods);
        add(&mut self.protocols, &r.protocols);
        add(&mut self.http_versions, &r.http_versions);
    }
}

/// What a range of reports merged to.
pub struct Merged {
    pub report: MinuteReport,
    /// Start and summary of each minute (or hour, past the minute resolution) in range.
    pub timeline: Vec<(i64, Moment)>,
    /// Length of a timeline step: a minute or an hour.
    pub step_ms: i64,
    /// Reports from before this were dropped to stay within the byte bound.
    pub dropped_before: Option<i64>,
}

fn hour_of(ms: i64) -> i64 {
    ms - ms.rem_euclid(HOUR_MS)
}

fn put(map: &mut BTreeMap<i64, MinuteReport>, at: i64, r: &MinuteReport) -> isize {
    let before = map.get(&at).map_or(0, |r| r.heap_bytes() as isize);
    let slot = map.entry(at).or_default();
    slot.merge(r);
    slot.compact();
    slot.heap_bytes() as isize - before
}

impl ReportStore {
    pub fn new(history_minutes: usize, max_bytes: usize) -> ReportStore {
        ReportStore {
            inner: RwLock::default(),
            history_ms: history_minutes as i64 * 60_000,
            max_bytes,
        }
    }

    /// Adds one collector's summary of `minute_ms` (a valid minute: the caller checked).
    pub fn merge(&self, distribution: &str, minute_ms: i64, r: &MinuteReport) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let dist = match inner.dists.get_mut(distribution) {
            Some(d) => d,
            None => inner.dists.entry(distribution.to_owned()).or_default(),
        };
        let newest = dist.newest.map_or(minute_ms, |n| n.max(minute_ms));
        if minute_ms < newest - self.history_ms {
            return;
        }
        dist.newest = Some(newest);
        let mut delta = if minute_ms >= newest - MINUTE_RESOLUTION_MS {
            put(&mut dist.minutes, minute_ms, r)
        } else {
            put(&mut dist.hours, hour_of(minute_ms), r)
        };
        // Minutes past the resolution go to their hour; hours past the history go.
        while let Some(entry) = dist.minutes.first_entry() {
            if *entry.key() >= newest - MINUTE_RESOLUTION_MS {
                break;
            }
            let (m, old) = entry.remove_entry();
            delta -= old.heap_bytes() as isize;
            delta += put(&mut dist.hours, hour_of(m), &old);
        }
        while let Some(entry) = dist.hours.first_entry() {
            if *entry.key() + HOUR_MS > newest - self.history_ms {
                break;
            }
            delta -= entry.remove().heap_bytes() as isize;
        }
        dist.bytes = dist.bytes.saturating_add_signed(delta);
        inner.bytes = inner.bytes.saturating_add_signed(delta);
        while inner.bytes > self.max_bytes && drop_oldest(&mut inner) {}
    }

    /// Estimated bytes held.
    pub fn bytes(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes
    }

    /// Summaries dropped to stay within the byte bound, since the start.
    pub fn dropped(&self) -> u64 {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .dropped
    }

    /// The newest minute with a summary for `distribution`.
    pub fn newest(&self, distribution: &str) -> Option<i64> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        inner.dists.get(distribution)?.newest
    }

    /// Summaries of `[from_ms, to_ms)` merged (hours that overlap it count whole), with
    /// the timeline by the minute when the range lies within the minute resolution.
    pub fn range(&self, distribution: &str, from_ms: i64, to_ms: i64) -> Merged {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let mut out = Merged {
            report: MinuteReport::default(),
            timeline: Vec::new(),
            step_ms: 60_000,
            dropped_before: None,
        };
        let Some(d) = inner.dists.get(distribution) else {
            return out;
        };
        out.dropped_before = d.dropped_before.filter(|t| *t > from_ms);
        let by_minute = d.hours.range(hour_of(from_ms)..to_ms).next().is_none();
        out.step_ms = if by_minute { 60_000 } else { HOUR_MS };
        for (h, r) in d.hours.range(hour_of(from_ms)..to_ms) {
            out.report.merge(r);
            let mut moment = Moment::default();
            moment.add(r);
            out.timeline.push((*h, moment));
        }
        for (m, r) in d.minutes.range(from_ms..to_ms) {
            out.report.merge(r);
            let at = if by_minute { *m } else { hour_of(*m) };
            match out.timeline.last_mut() {
                Some((t, acc)) if *t == at => acc.add(r),
                _ => {
                    let mut moment = Moment::default();
                    moment.add(r);
                    out.timeline.push((at, moment));
                }
            }
        }
        out.report.compact();
        out
    }
}

/// Drops the oldest summary (an hour, or else a minute) of any distribution; false when
/// there is none.
fn drop_oldest(inner: &mut Inner) -> bool {
    let oldest = inner
        .dists
        .iter()
        .filter_map(|(id, d)| {
            let first = d.hours.keys().next().or(d.minutes.keys().next())?;
            Some((*first, id.clone()))
        })
        .min();
    let Some((_, id)) = oldest else { return false };
    let Some(d) = inner.dists.get_mut(&id) else {
        return false;
    };
    let (at, r, span) = match d.hours.pop_first() {
        Some((h, r)) => (h, r, HOUR_MS),
        None => match d.minutes.pop_first() {
            Some((m, r)) => (m, r, 60_000),
            None => return false,
        },
    };
    let b = r.heap_bytes();
    d.bytes = d.bytes.saturating_sub(b);
    d.dropped_before = Some(d.dropped_before.unwrap_or(at).max(at + span));
    inner.bytes = inner.bytes.saturating_sub(b);
    inner.dropped += 1;
    tracing::debug!(distribution = %id, at, "report summary dropped to stay within reports_max_bytes");
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgelog_record::Record;
    use edgelog_record::report::Viewer;

    fn report(path: &str, n: usize) -> MinuteReport {
        let mut r = MinuteReport::default();
        let rec = Record {
            cs_uri_stem: Some(path.into()),
            ..Record::default()
        };
        let v = Viewer {
            device: 0,
            browser: "b",
            os: "o",
        };
        for _ in 0..n {
            r.add(&rec, &v);
        }
        r
    }

    #[test]
    fn old_minutes_fold_into_hours_and_still_count() {
        let s = ReportStore::new(24 * 60, usize::MAX);
        for m in 0..(6 * 60) {
            s.merge("E1", m * 60_000, &report("/a", 1));
        }
        let all = s.range("E1", 0, 6 * HOUR_MS);
        assert_eq!(all.report.requests(), 360);
        assert_eq!(all.step_ms, HOUR_MS);
        assert_eq!(all.timeline.len(), 6);
        let recent = s.range("E1", 5 * HOUR_MS, 6 * HOUR_MS);
        assert_eq!(recent.step_ms, 60_000);
        assert_eq!(recent.timeline.len(), 60);
        assert_eq!(recent.report.requests(), 60);
    }

    #[test]
    fn history_and_bytes_stay_bounded() {
        let s = ReportStore::new(60, usize::MAX);
        s.merge("E1", 0, &report("/a", 1));
        s.merge("E1", 10 * HOUR_MS, &report("/a", 1));
        s.merge("E1", 0, &report("/a", 1));
        assert_eq!(s.range("E1", 0, 11 * HOUR_MS).report.requests(), 1);

        let bound = 200_000;
        let s = ReportStore::new(24 * 60, bound);
        for m in 0..2000 {
            s.merge(
                &format!("E{}", m % 7),
                m * 60_000,
                &report(&format!("/{m}"), 3),
            );
        }
        assert!(s.bytes() <= bound, "{} bytes", s.bytes());
        let inner = s.inner.read().unwrap_or_else(PoisonError::into_inner);
        let held: usize = inner
            .dists
            .values()
            .flat_map(|d| d.minutes.values().chain(d.hours.values()))
            .map(MinuteReport::heap_bytes)
            .sum();
        assert_eq!(held, inner.bytes, "the running count is what is held");
        drop(inner);
        let dropped = (0..7)
            .filter(|d| {
                s.range(&format!("E{d}"), 0, 2000 * 60_000)
                    .dropped_before
                    .is_some()
            })
            .count();
        assert!(
            dropped > 0,
            "a range that lost summaries says so ({} dropped, {} bytes)",
            s.dropped(),
            s.bytes()
        );
        assert!(s.dropped() > 0);
    }
}
