//! The ingest memory budget: bytes of bodies being read, decompressed and parsed at once.
//!
//! A request reserves what it will hold before it holds it: its declared body before
//! reading it, decompressed bytes as they come out, and its parsed records before parsing.
//! What does not fit is refused with 503 and `Retry-After` (after a short wait for the
//! body), so memory stays bounded whatever clients send.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Permits are KiB, so the semaphore's count never nears its limit.
const UNIT: u64 = 1024;

fn units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX)
}

/// The budget shared by every request of a collector.
#[derive(Clone)]
pub struct Budget {
    sem: Arc<Semaphore>,
    total: u64,
}

/// The request would take the budget past its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget {
    pub budget: u64,
}

/// What one request holds; given back when dropped.
pub struct Held {
    sem: Arc<Semaphore>,
    permits: Option<OwnedSemaphorePermit>,
    total: u64,
}

impl Budget {
    pub fn new(bytes: u64) -> Budget {
        let n = units(bytes).min(u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        Budget {
            sem: Arc::new(Semaphore::new(n as usize)),
            total: u64::from(n) * UNIT,
        }
    }

    /// Bytes reserved by requests now.
    pub fn in_use(&self) -> u64 {
        self.total - self.sem.available_permits() as u64 * UNIT
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Reserves `bytes`, waiting up to `wait` for other requests to give some back.
    pub async fn reserve(&self, bytes: u64, wait: Duration) -> Result<Held, OverBudget> {
        let over = OverBudget { budget: self.total };
        let n = units(bytes);
        if u64::from(n) * UNIT > self.total {
            return Err(over);
        }
        let permits = tokio::time::timeout(wait, self.sem.clone().acquire_many_owned(n))
            .await
            .map_err(|_| over)?
            .map_err(|_| over)?;
        Ok(Held {
            sem: self.sem.clone(),
            permits: Some(permits),
            total: self.total,
        })
    }
}

impl Held {
    /// Takes `bytes` more, waiting up to `wait` for other requests to give some back.
    /// Blocking: called while the request works on a blocking thread.
    pub fn grow(&mut self, bytes: u64, wait: Duration) -> Result<(), OverBudget> {
        let over = OverBudget { budget: self.total };
        let n = units(bytes);
        if u64::from(n) * UNIT > self.total {
            return Err(over);
        }
        let start = std::time::Instant::now();
        let more = loop {
            match self.sem.clone().try_acquire_many_owned(n) {
                Ok(p) => break p,
                Err(_) if start.elapsed() < wait => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return Err(over),
            }
        };
        match &mut self.permits {
            Some(p) => p.merge(more),
            None => self.permits = Some(more),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_are_bounded_and_given_back() {
        let b = Budget::new(10 << 10);
        let mut a = b.reserve(6 << 10, Duration::ZERO).await.expect("fits");
        assert_eq!(b.in_use(), 6 << 10);
        assert!(b.reserve(6 << 10, Duration::from_millis(10)).await.is_err());
        assert!(a.grow(5 << 10, Duration::from_millis(20)).is_err());
        a.grow(4 << 10, Duration::ZERO).expect("fits");
        assert_eq!(b.in_use(), 10 << 10);
        drop(a);
        assert_eq!(b.in_use(), 0);
        assert!(
            b.reserve(11 << 10, Duration::from_secs(1)).await.is_err(),
            "never fits"
        );
        assert!(b.reserve(u64::MAX, Duration::ZERO).await.is_err());
    }
}
