//! Pacing: ingest waits for a live reader that is falling out of the cache, and never for
//! one that is far behind, stuck, or caught up.

use std::time::Duration;

use edgelog_wal::{PACE_AHEAD, PACE_FAR, PACE_IDLE_MS, Wal, WalConfig};

mod common;
use common::{records, small};

/// Generous: only ever reached by a wait that should not have happened.
const LONG: Duration = Duration::from_secs(60);

async fn append(wal: &Wal, n: u64) {
    for i in 0..n {
        wal.append(records(2, &format!("p{i}")))
            .await
            .expect("append");
    }
}

async fn paced_at_once(wal: &Wal) -> bool {
    tokio::time::timeout(Duration::from_secs(5), wal.pace(LONG, 1))
        .await
        .is_ok_and(|a| a.waited < Duration::from_secs(5))
}

#[tokio::test]
async fn without_readers_or_with_readers_keeping_up_nobody_waits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("open");
    append(&wal, PACE_AHEAD * 3).await;
    assert!(paced_at_once(&wal).await, "no reader: no wait");
    let mut r = wal.reader("a");
    while !r.caught_up() {
        r.read_available(100).expect("read");
    }
    assert!(paced_at_once(&wal).await, "a reader caught up: no wait");
    // Exactly PACE_AHEAD unread: still admitted.
    append(&wal, PACE_AHEAD).await;
    assert!(
        paced_at_once(&wal).await,
        "{PACE_AHEAD} behind is within bounds"
    );
}

#[tokio::test]
async fn a_live_reader_too_far_behind_holds_requests_until_it_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("open");
    append(&wal, PACE_AHEAD + 4).await;
    // Made after the appends (each fsynced): it has moved, for pacing, just now.
    let mut r = wal.reader("slow");
    // The wait ends when the reader moves, not at its bound.
    let waiting = tokio::spawn({
        let wal = wal.clone();
        async move { wal.pace(LONG, 1).await.waited }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "a request went ahead of a lagging reader"
    );
    while !r.caught_up() {
        r.read_available(100).expect("read");
    }
    let waited = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("released when the reader read")
        .expect("join");
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    assert!(waited < LONG);
}

#[tokio::test]
async fn admitted_requests_count_as_ahead_and_the_wait_has_its_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("open");
    let _r = wal.reader("slow");
    // Admitted and not yet written: each counts as an entry ahead of the reader.
    let mut held = Vec::new();
    for _ in 0..=PACE_AHEAD {
        held.push(wal.pace(LONG, 1).await);
    }
    let bound = Duration::from_millis(300);
    let a = wal.pace(bound, 1).await;
    assert!(a.waited >= bound, "{:?}", a.waited);
    // A request done (answered or failed) leaves room again.
    drop(a);
    drop(held.pop());
    assert!(paced_at_once(&wal).await);
    // Zero: pacing is off.
    let z = tokio::time::timeout(Duration::from_secs(5), wal.pace(Duration::ZERO, 1))
        .await
        .expect("pace_wait 0s never waits");
    assert_eq!(z.waited, Duration::ZERO);
}

#[tokio::test]
async fn readers_far_behind_or_stuck_never_hold_ingest_back() {
    // Catching up after a restart: far behind (over many small segments).
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), small()).expect("open");
    let _far = wal.reader("far");
    append(&wal, PACE_FAR + 1).await;
    assert!(
        paced_at_once(&wal).await,
        "a reader catching up held ingest"
    );
    // Just behind but not moving for longer than PACE_IDLE_MS: its destination is failing.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let wal2 = Wal::open(dir2.path(), WalConfig::default()).expect("open");
    let _stuck = wal2.reader("stuck");
    append(&wal2, PACE_AHEAD + 4).await;
    tokio::time::sleep(Duration::from_millis(PACE_IDLE_MS + 200)).await;
    assert!(paced_at_once(&wal2).await, "a stuck reader held ingest");
    // A dropped reader (its sink ended) does not count either.
    let dir3 = tempfile::tempdir().expect("tempdir");
    let wal3 = Wal::open(dir3.path(), WalConfig::default()).expect("open");
    drop(wal3.reader("gone"));
    append(&wal3, PACE_AHEAD + 4).await;
    assert!(paced_at_once(&wal3).await, "a dropped reader held ingest");
}

#[tokio::test]
async fn with_big_bodies_the_cache_holds_fewer_entries_and_pacing_counts_that() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("open");
    // 8,192-record entries: the cache (32,768 records) holds four, so two is the most a
    // reader may be behind, far fewer than PACE_AHEAD.
    for i in 0..3 {
        wal.append(records(8_192, &format!("big{i}")))
            .await
            .expect("append");
    }
    let _r = wal.reader("slow");
    let bound = Duration::from_millis(300);
    let a = wal.pace(bound, 1).await;
    assert!(
        a.waited >= bound,
        "three big entries behind, not held: {:?}",
        a.waited
    );
}

#[tokio::test]
async fn the_bound_goes_by_the_last_entries_sizes_not_by_what_is_left_unread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("open");
    let mut fast = wal.reader("fast");
    let mut slow = wal.reader("slow");
    append(&wal, 15).await;
    for r in [&mut fast, &mut slow] {
        while !r.caught_up() {
            r.read_available(100).expect("read");
        }
    }
    // Both have read everything: the cache lets all of it go. The last 16 entries then
    // hold 16,410 records, so a reader may still be PACE_AHEAD behind; by the three
    // entries left unread alone (two of 8,192 records) it would be 2.
    for tag in ["big0", "big1"] {
        wal.append(records(8_192, tag)).await.expect("append");
    }
    append(&wal, 1).await;
    while !fast.caught_up() {
        fast.read_available(100).expect("read");
    }
    let a = wal.pace(Duration::from_millis(300), 1).await;
    assert!(
        a.waited.is_zero(),
        "3 behind, within {PACE_AHEAD}, held {:?}",
        a.waited
    );
}
