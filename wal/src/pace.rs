//! Pacing: ingest waits a little for a live sink about to fall out of the log's cache.
//!
//! The log keeps its last entries decoded ([`CACHE_ENTRIES`], [`CACHE_RECORDS`], less
//! those every reader has read); a sink within them reads from memory, one further
//! behind decodes every entry again from disk, which costs the collector more than a
//! short wait. [`Wal::pace`] holds a request while a live reader is more than half the
//! cache behind what is durable plus what is admitted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::{CACHE_ENTRIES, CACHE_RECORDS, Seq, Shared, Wal};

/// Entries a live reader may be behind (counting requests admitted) before [`Wal::pace`]
/// holds ingest back, at most: half the entries the cache holds at the sizes of the last
/// entries.
pub const PACE_AHEAD: u64 = CACHE_ENTRIES as u64 / 2;
/// A reader this far behind is catching up, not keeping up: it does not hold ingest back.
pub const PACE_FAR: u64 = 256;
/// A reader that has not moved for this long is stuck on its destination.
pub const PACE_IDLE_MS: u64 = 1_000;

/// Milliseconds on a monotonic clock: a wall clock stepping back must not make a stuck
/// reader look live.
fn mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Where a reader is.
struct Reading {
    next: AtomicU64,
    moved_ms: AtomicU64,
}

/// The readers' positions and the requests admitted, shared by the log's handles.
pub(crate) struct Pacer {
    /// How far behind a live reader may be now, from the last entries' sizes.
    limit: AtomicU64,
    readers: Mutex<Vec<Weak<Reading>>>,
    /// Notified whenever a reader moves or goes, or an admission ends.
    changed: tokio::sync::Notify,
    /// Entries of requests admitted and not yet durable (or failed).
    admitted: AtomicU64,
}

/// A reader's place in the [`Pacer`]; it stops counting when dropped.
pub(crate) struct Place {
    reading: Arc<Reading>,
    shared: Arc<Shared>,
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer {
            limit: AtomicU64::new(PACE_AHEAD),
            readers: Mutex::default(),
            changed: tokio::sync::Notify::new(),
            admitted: AtomicU64::new(0),
        }
    }
}

impl Pacer {
    /// The last `entries` (as many as the cache holds when none is read) hold `records`:
    /// half the entries the cache would hold at those sizes is how far behind a live
    /// reader may be.
    pub(crate) fn cache_changed(&self, entries: usize, records: usize) {
        let fits = match records {
            0 => CACHE_ENTRIES,
            r => (CACHE_RECORDS.saturating_mul(entries) / r).clamp(1, CACHE_ENTRIES),
        };
        self.limit
            .store((fits as u64 / 2).max(1), Ordering::Relaxed);
    }

    /// The lowest next entry of the readers there are; `Seq::MAX` with none.
    pub(crate) fn slowest(&self) -> Seq {
        self.readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(Weak::upgrade)
            .map(|r| r.next.load(Ordering::Acquire))
            .min()
            .unwrap_or(Seq::MAX)
    }
}

impl Place {
    pub(crate) fn new(shared: &Arc<Shared>, start: Seq) -> Place {
        let reading = Arc::new(Reading {
            next: AtomicU64::new(start),
            moved_ms: AtomicU64::new(mono_ms()),
        });
        let mut readers = shared
            .pacer
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        readers.retain(|r| r.strong_count() > 0);
        readers.push(Arc::downgrade(&reading));
        drop(readers);
        Place {
            reading,
            shared: shared.clone(),
        }
    }

    /// The reader's next entry is now `next`.
    pub(crate) fn moved(&self, next: Seq) {
        self.reading.next.store(next, Ordering::Release);
        self.reading.moved_ms.store(mono_ms(), Ordering::Relaxed);
        self.shared.pacer.changed.notify_waiters();
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        // Gone: nothing is behind it any more (the Arc may outlive this for a moment).
        self.reading.next.store(u64::MAX, Ordering::Release);
        self.shared.pacer.changed.notify_waiters();
    }
}

/// A request admitted by [`Wal::pace`]: its entries count as ahead of the readers until
/// this is dropped (once they are durable, or the request failed).
pub struct Admission {
    shared: Arc<Shared>,
    entries: u64,
    /// How long [`Wal::pace`] waited.
    pub waited: Duration,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let p = &self.shared.pacer;
        p.admitted.fetch_sub(self.entries, Ordering::AcqRel);
        p.changed.notify_waiters();
    }
}

impl Wal {
    /// Admits a request of `entries` log entries once no live reader is too far behind
    /// (see the module), or once `max_wait` has passed (zero: at once). Readers far
    /// behind ([`PACE_FAR`], a catch-up after a restart) or not moving for
    /// [`PACE_IDLE_MS`] (a failing destination) never hold ingest back.
    pub async fn pace(&self, max_wait: Duration, entries: u64) -> Admission {
        let p = &self.shared.pacer;
        let started = tokio::time::Instant::now();
        let deadline = started + max_wait;
        let mut slept = false;
        loop {
            let notified = p.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let admitted = p.admitted.load(Ordering::Acquire);
            let hold = match max_wait.is_zero() || tokio::time::Instant::now() >= deadline {
                true => None,
                false => self.behind(admitted),
            };
            let Some(idle_in) = hold else {
                if p.admitted
                    .compare_exchange(
                        admitted,
                        admitted + entries,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok()
                {
                    break;
                }
                continue;
            };
            slept = true;
            // Looked at again when a reader moves, or when the ones holding it back would
            // count as stuck, or at the deadline.
            let recheck =
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(idle_in));
            let _ = tokio::time::timeout_at(recheck, notified).await;
        }
        Admission {
            shared: self.shared.clone(),
            entries,
            waited: match slept {
                true => started.elapsed(),
                false => Duration::ZERO,
            },
        }
    }

    /// Whether a live reader is too far behind, and if so in how many milliseconds the
    /// last of those would count as stuck.
    fn behind(&self, admitted: u64) -> Option<u64> {
        let limit = self.shared.pacer.limit.load(Ordering::Relaxed);
        let ahead = self.committed().saturating_add(1).saturating_add(admitted);
        let now = mono_ms();
        let readers = self
            .shared
            .pacer
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        readers
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|r| {
                let lag = ahead.saturating_sub(r.next.load(Ordering::Acquire));
                let still = now.saturating_sub(r.moved_ms.load(Ordering::Relaxed));
                (lag > limit && lag <= PACE_FAR && still < PACE_IDLE_MS)
                    .then(|| PACE_IDLE_MS - still)
            })
            .max()
    }
}
