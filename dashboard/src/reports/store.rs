//! Every distribution's report summaries: by the minute for the last
//! [`MINUTE_RESOLUTION_MS`], by the hour before that, within a byte bound. Kept encoded
//! (postcard, about a quarter of their decoded size), but for the few that merges still
//! reach (the newest minutes, the hour minutes are folded into), which stay decoded; a
//! range decodes the ones it needs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{PoisonError, RwLock};

use edgelog_record::MinuteReport;
use edgelog_record::report::Usage;

/// Summaries younger than this (from a distribution's newest minute) stay by the minute;
/// older ones are merged into their hour.
pub const MINUTE_RESOLUTION_MS: i64 = 3_600_000;
const HOUR_MS: i64 = 3_600_000;

/// A summary as kept: postcard bytes.
struct Packed(Box<[u8]>);

impl Packed {
    fn of(r: &MinuteReport) -> Packed {
        Packed(
            postcard::to_allocvec(r)
                .unwrap_or_default()
                .into_boxed_slice(),
        )
    }

    /// What was packed (an empty summary if the bytes were somehow not one).
    fn open(&self) -> MinuteReport {
        postcard::from_bytes(&self.0).unwrap_or_default()
    }
}

/// A summary merges may still reach (decoded, with the bytes it was counted at), or one
/// they no longer do (encoded).
enum Slot {
    Open(Box<MinuteReport>, usize),
    Packed(Packed),
}

impl Slot {
    fn open(r: Box<MinuteReport>) -> Slot {
        let bytes = r.heap_bytes() + SLOT_BYTES;
        Slot::Open(r, bytes)
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Slot::Open(_, b) => *b,
            Slot::Packed(p) => p.0.len() + SLOT_BYTES,
        }
    }

    fn report(&self) -> std::borrow::Cow<'_, MinuteReport> {
        match self {
            Slot::Open(r, _) => std::borrow::Cow::Borrowed(r),
            Slot::Packed(p) => std::borrow::Cow::Owned(p.open()),
        }
    }

    fn into_report(self) -> MinuteReport {
        match self {
            Slot::Open(r, _) => *r,
            Slot::Packed(p) => p.open(),
        }
    }

    /// Encodes an open summary; the change in bytes.
    fn pack(&mut self) -> isize {
        let Slot::Open(r, before) = self else {
            return 0;
        };
        let before = *before as isize;
        *self = Slot::Packed(Packed::of(r));
        self.heap_bytes() as isize - before
    }
}

/// Minutes this close to the newest stay decoded (collectors still send them).
const OPEN_MINUTES_MS: i64 = 2 * 60_000;

#[derive(Default)]
struct Dist {
    minutes: BTreeMap<i64, Slot>,
    hours: BTreeMap<i64, Slot>,
    /// Keys of the open slots of each map, to encode them once cold.
    open_minutes: Vec<i64>,
    open_hours: Vec<i64>,
    /// The newest minute seen, the clock's at most: minutes older than an hour before it
    /// go to their hour.
    newest: Option<i64>,
}

impl Dist {
    /// The start of its oldest summary.
    fn oldest(&self) -> Option<i64> {
        match (self.hours.keys().next(), self.minutes.keys().next()) {
            (Some(h), Some(m)) => Some((*h).min(*m)),
            (h, m) => h.or(m).copied(),
        }
    }
}

/// What a distribution costs besides its summaries (its id, maps and their first
/// nodes), and each summary besides its bytes (its place in a map): counted in the bound.
const DIST_BYTES: usize = 1024;
const SLOT_BYTES: usize = 64;
/// Summaries for minutes further ahead of the clock than this are not kept (the minute
/// aggregates still count them): one skewed record cannot move a distribution's reports.
const MAX_AHEAD_MS: i64 = 3_600_000;

#[derive(Default)]
struct Inner {
    dists: BTreeMap<String, Dist>,
    /// `(start of its oldest summary, id)` of every distribution: what goes first.
    oldest: BTreeSet<(i64, String)>,
    bytes: usize,
    /// Summaries dropped to stay within the bound, since the start.
    dropped: u64,
    /// Every summary before this was dropped (the oldest go first, whichever distribution
    /// they belong to).
    dropped_before: Option<i64>,
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
    /// Where the summaries merged start: the range's start, or the start of its hour when
    /// whole hours count.
    pub from_ms: i64,
    /// Reports from before this were dropped to stay within the byte bound.
    pub dropped_before: Option<i64>,
}

fn hour_of(ms: i64) -> i64 {
    ms - ms.rem_euclid(HOUR_MS)
}

/// Adds `r` into the summary at `at` (left decoded); the change in bytes held.
fn put(map: &mut BTreeMap<i64, Slot>, open: &mut Vec<i64>, at: i64, r: &MinuteReport) -> isize {
    let (before, merged) = match map.remove(&at) {
        Some(slot) => {
            let before = slot.heap_bytes() as isize;
            let mut old = match slot {
                Slot::Open(r, _) => r,
                Slot::Packed(p) => Box::new(p.open()),
            };
            old.merge(r);
            // What merging left spare is given back: the bytes counted are the bytes held.
            old.compact();
            (before, old)
        }
        None => {
            let mut fresh = Box::new(r.clone());
            fresh.compact();
            (0, fresh)
        }
    };
    let slot = Slot::open(merged);
    let after = slot.heap_bytes() as isize;
    map.insert(at, slot);
    if !open.contains(&at) {
        open.push(at);
    }
    after - before
}

/// Encodes the open slots of `map` that `cold` says merges no longer reach.
fn pack_cold(
    map: &mut BTreeMap<i64, Slot>,
    open: &mut Vec<i64>,
    cold: impl Fn(i64) -> bool,
) -> isize {
    let mut delta = 0;
    open.retain(|at| {
        if !cold(*at) {
            return true;
        }
        if let Some(slot) = map.get_mut(at) {
            delta += slot.pack();
        }
        false
    });
    delta
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
        let now = crate::store::now_ms();
        if minute_ms > now.saturating_add(MAX_AHEAD_MS) {
            tracing::debug!(
                distribution,
                minute_ms,
                "a report summary too far ahead of the clock is not kept"
            );
            return;
        }
        let now_minute = now - now.rem_euclid(60_000);
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let inner = &mut *inner;
        let mut delta: isize = 0;
        let dist = match inner.dists.get_mut(distribution) {
            Some(d) => d,
            None => {
                delta += (DIST_BYTES + distribution.len()) as isize;
                inner.dists.entry(distribution.to_owned()).or_default()
            }
        };
        let before = dist.oldest();
        // A minute ahead of the clock does not push the others out.
        let newest = dist
            .newest
            .map_or(minute_ms, |n| n.max(minute_ms))
            .min(now_minute);
        let evicted = inner.dropped_before.is_some_and(|t| minute_ms < t);
        if evicted {
            // As if kept and dropped at once: older than what the bound already let go.
            inner.dropped += 1;
        }
        if minute_ms < newest - self.history_ms || evicted {
            if before.is_none() && dist.newest.is_none() {
                inner.dists.remove(distribution);
            }
            return;
        }
        dist.newest = Some(newest);
        delta += if minute_ms >= newest - MINUTE_RESOLUTION_MS {
            put(&mut dist.minutes, &mut dist.open_minutes, minute_ms, r)
        } else {
            put(&mut dist.hours, &mut dist.open_hours, hour_of(minute_ms), r)
        };
        // Minutes past the resolution go to their hour; hours past the history go.
        while let Some(entry) = dist.minutes.first_entry() {
            if *entry.key() >= newest - MINUTE_RESOLUTION_MS {
                break;
            }
            let (m, old) = entry.remove_entry();
            delta -= old.heap_bytes() as isize;
            dist.open_minutes.retain(|k| *k != m);
            delta += put(
                &mut dist.hours,
                &mut dist.open_hours,
                hour_of(m),
                &old.into_report(),
            );
        }
        while let Some(entry) = dist.hours.first_entry() {
            if *entry.key() + HOUR_MS > newest - self.history_ms {
                break;
            }
            let (h, old) = entry.remove_entry();
            delta -= old.heap_bytes() as isize;
            dist.open_hours.retain(|k| *k != h);
        }
        // What merges no longer reach is encoded: minutes a little behind the newest,
        // hours but the one minutes are folded into.
        let folding = hour_of(newest - MINUTE_RESOLUTION_MS);
        delta += pack_cold(&mut dist.minutes, &mut dist.open_minutes, |m| {
            m < newest - OPEN_MINUTES_MS
        });
        delta += pack_cold(&mut dist.hours, &mut dist.open_hours, |h| h != folding);
        let after = dist.oldest();
        if before != after {
            if let Some(t) = before {
                inner.oldest.remove(&(t, distribution.to_owned()));
            }
            if let Some(t) = after {
                inner.oldest.insert((t, distribution.to_owned()));
            }
        }
        inner.bytes = inner.bytes.saturating_add_signed(delta);
        while inner.bytes > self.max_bytes && drop_oldest(inner) {}
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

    /// Summaries of `[from_ms, to_ms)` merged (hours that overlap it count whole), with
    /// the timeline by the minute when the range lies within the minute resolution.
    pub fn range(&self, distribution: &str, from_ms: i64, to_ms: i64) -> Merged {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let mut out = Merged {
            report: MinuteReport::default(),
            timeline: Vec::new(),
            step_ms: 60_000,
            from_ms,
            dropped_before: None,
        };
        out.dropped_before = inner.dropped_before.filter(|t| *t > from_ms);
        let Some(d) = inner.dists.get(distribution) else {
            return out;
        };
        let Some(newest) = d.newest else { return out };
        // By the minute when every minute of the range still is; else whole hours.
        let by_minute = from_ms >= newest - MINUTE_RESOLUTION_MS;
        let start = if by_minute { from_ms } else { hour_of(from_ms) };
        out.from_ms = start;
        out.step_ms = if by_minute { 60_000 } else { HOUR_MS };
        let hours = if by_minute {
            None
        } else {
            Some(d.hours.range(start..to_ms))
        };
        for (h, slot) in hours.into_iter().flatten() {
            let r = &*slot.report();
            out.report.merge(r);
            let mut moment = Moment::default();
            moment.add(r);
            out.timeline.push((*h, moment));
        }
        for (m, slot) in d.minutes.range(start..to_ms) {
            let r = &*slot.report();
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

/// Drops the oldest summary of any distribution (and the distribution, once it has
/// none); false when there is none.
fn drop_oldest(inner: &mut Inner) -> bool {
    let Some((at, id)) = inner.oldest.pop_first() else {
        return false;
    };
    let Some(d) = inner.dists.get_mut(&id) else {
        return true;
    };
    let (slot, span) = match (d.hours.first_key_value(), d.minutes.first_key_value()) {
        (Some((h, _)), _) if *h == at => {
            d.open_hours.retain(|k| *k != at);
            (d.hours.pop_first(), HOUR_MS)
        }
        _ => {
            let slot = d.minutes.pop_first();
            if let Some((m, _)) = &slot {
                d.open_minutes.retain(|k| k != m);
            }
            (slot, 60_000)
        }
    };
    let mut freed = slot.map_or(0, |(_, s)| s.heap_bytes());
    match d.oldest() {
        Some(t) => {
            inner.oldest.insert((t, id.clone()));
        }
        None => {
            inner.dists.remove(&id);
            freed += DIST_BYTES + id.len();
        }
    }
    inner.bytes = inner.bytes.saturating_sub(freed);
    inner.dropped_before = Some(inner.dropped_before.unwrap_or(at).max(at + span));
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
        // The last hour by the minute (newest is 5:59, so 4:59 on are minutes).
        let recent = s.range("E1", 5 * HOUR_MS, 6 * HOUR_MS);
        assert_eq!(recent.step_ms, 60_000);
        assert_eq!(recent.timeline.len(), 60);
        assert_eq!(recent.report.requests(), 60);
        // A range reaching past that counts whole hours, once each.
        let wider = s.range("E1", 4 * HOUR_MS + 30 * 60_000, 6 * HOUR_MS);
        assert_eq!(wider.step_ms, HOUR_MS);
        assert_eq!(wider.from_ms, 4 * HOUR_MS, "where counting started");
        assert_eq!(wider.report.requests(), 120);
        assert_eq!(wider.timeline.len(), 2);
    }

    #[test]
    fn history_and_bytes_stay_bounded() {
        let s = ReportStore::new(60, usize::MAX);
        s.merge("E1", 0, &report("/a", 1));
        s.merge("E1", 10 * HOUR_MS, &report("/a", 1));
        s.merge("E1", 0, &report("/a", 1));
        assert_eq!(s.range("E1", 0, 11 * HOUR_MS).report.requests(), 1);

        let bound = 20_000;
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
            .iter()
            .map(|(id, d)| {
                DIST_BYTES
                    + id.len()
                    + d.minutes
                        .values()
                        .chain(d.hours.values())
                        .map(Slot::heap_bytes)
                        .sum::<usize>()
            })
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

    #[test]
    fn a_minute_ahead_of_the_clock_moves_nothing() {
        let now = crate::store::now_ms();
        let minute = now - now.rem_euclid(60_000);
        let s = ReportStore::new(24 * 60, usize::MAX);
        s.merge("E1", minute - 60_000, &report("/a", 1));
        // Days ahead: not kept. Twenty minutes ahead: kept, the present stays by the minute.
        s.merge("E1", minute + 3 * 86_400_000, &report("/far", 1));
        s.merge("E1", minute + 20 * 60_000, &report("/near", 1));
        s.merge("E1", minute, &report("/b", 1));
        let r = s.range("E1", minute - 30 * 60_000, minute + 30 * 60_000);
        assert_eq!(r.step_ms, 60_000);
        assert_eq!(r.report.requests(), 3);
        assert!(r.report.objects.entries().iter().all(|e| e.key != "/far"));
    }

    #[test]
    fn many_distributions_under_a_small_bound_stay_within_it() {
        let now = crate::store::now_ms();
        let minute = now - now.rem_euclid(60_000);
        let bound = 1 << 20;
        let s = ReportStore::new(24 * 60, bound);
        let one = report("/a", 1);
        for d in 0..30_000 {
            s.merge(&format!("EMANY{d}"), minute - (d % 600) * 60_000, &one);
        }
        assert!(s.bytes() <= bound, "{} bytes", s.bytes());
        let inner = s.inner.read().unwrap_or_else(PoisonError::into_inner);
        assert_eq!(
            inner.oldest.len(),
            inner.dists.len(),
            "one oldest per distribution"
        );
        assert!(
            inner.dists.values().all(|d| d.oldest().is_some()),
            "no empty distribution kept"
        );
        let watermark = inner.dropped_before.unwrap_or(i64::MIN);
        assert!(
            inner
                .dists
                .values()
                .all(|d| d.oldest().is_some_and(|t| t >= watermark - HOUR_MS)),
            "everything older than the watermark went"
        );
    }
}
