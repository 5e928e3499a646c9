//! Idempotency keys in the log: recorded with their records, found after a restart, kept
//! in the journal once their segment is gone, cut with a group that is not whole.

use std::fs::OpenOptions;

use edgelog_wal::{KEY_JOURNAL, KeyAnswer, KeyLimits, KeyedBody, Wal, WalConfig};

mod common;
use common::{records, small};

fn one(n: usize, tag: &str) -> KeyedBody {
    let r = records(n, tag);
    let payload = Wal::encode(&r).expect("encode");
    KeyedBody::One(r, payload)
}

fn many(entries: usize, n: usize, tag: &str) -> KeyedBody {
    KeyedBody::Many(
        (0..entries)
            .map(|i| {
                let r = records(n, &format!("{tag}{i}"));
                let payload = Wal::encode(&r).expect("encode");
                (r, payload)
            })
            .collect(),
    )
}

/// Every entry from the start: (seq, request ids).
fn entries(wal: &Wal, sink: &str) -> Vec<(u64, Vec<String>)> {
    let mut r = wal.reader(sink);
    let mut out = Vec::new();
    while !r.caught_up() {
        for e in r.read_available(100).expect("read") {
            let ids = e
                .records
                .iter()
                .map(|r| r.request_id().to_owned())
                .collect();
            out.push((e.seq, ids));
        }
    }
    out
}

fn ids(entries: &[(u64, Vec<String>)]) -> Vec<String> {
    entries.iter().flat_map(|(_, ids)| ids.clone()).collect()
}

#[tokio::test]
async fn a_key_is_a_marker_entry_without_records_before_its_records_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("open");
    wal.append(records(2, "plain")).await.expect("append");
    let last = wal
        .append_keyed("k-1", 3, 1, one(3, "keyed"))
        .await
        .expect("keyed");
    assert_eq!(last, 3, "marker at 2, records at 3");
    let found = wal.lookup_key("k-1").expect("remembered");
    assert_eq!((found.accepted, found.rejected_total), (3, 1));
    assert_eq!(wal.lookup_key("k-2"), None);
    // Live readers (from the cache) and readers from disk see the same entries.
    let live = entries(&wal, "live");
    wal.close().await;
    drop(wal);
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("reopen");
    let disk = entries(&wal, "disk");
    for got in [&live, &disk] {
        let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [1, 2, 3], "gapless");
        assert!(got[1].1.is_empty(), "the marker has no records");
        assert_eq!(
            ids(got),
            ["plain-0", "plain-1", "keyed-0", "keyed-1", "keyed-2"]
        );
    }
    let found = wal.lookup_key("k-1").expect("remembered after a restart");
    assert_eq!((found.accepted, found.rejected_total), (3, 1));
}

#[tokio::test]
async fn a_huge_keyed_body_of_many_entries_is_found_after_a_restart_even_without_the_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("open");
    wal.append_keyed("big", 40, 0, many(4, 10, "b"))
        .await
        .expect("keyed");
    wal.close().await;
    drop(wal);
    // The journal lost (never synced, say): the marker in the segment is enough.
    std::fs::remove_file(dir.path().join(KEY_JOURNAL)).expect("rm journal");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("reopen");
    assert_eq!(wal.lookup_key("big").map(|a| a.accepted), Some(40));
    let got = entries(&wal, "s");
    assert_eq!(got.len(), 5);
    assert_eq!(ids(&got).len(), 40);
    assert!(
        dir.path().join(KEY_JOURNAL).exists(),
        "rewritten on open from the markers"
    );
}

#[tokio::test]
async fn a_keyed_group_torn_by_a_crash_is_cut_whole_key_and_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("open");
    wal.append(records(2, "before")).await.expect("append");
    wal.append_keyed("torn", 30, 0, many(3, 10, "t"))
        .await
        .expect("keyed");
    wal.close().await;
    drop(wal);
    // A crash mid-write: the last entry lost its tail, the marker and two entries whole.
    std::fs::remove_file(dir.path().join(KEY_JOURNAL)).expect("rm journal");
    let seg = dir.path().join(format!("{:020}.wal", 1));
    let len = std::fs::metadata(&seg).expect("stat").len();
    let f = OpenOptions::new().write(true).open(&seg).expect("open seg");
    f.set_len(len - 5).expect("truncate");
    drop(f);
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("reopen");
    assert_eq!(
        wal.lookup_key("torn"),
        None,
        "the key goes with its records"
    );
    assert_eq!(ids(&entries(&wal, "s")), ["before-0", "before-1"]);
    assert_eq!(wal.committed(), 1);
    // The resend is taken anew, and the numbers go on from there.
    let last = wal
        .append_keyed("torn", 30, 0, many(3, 10, "t"))
        .await
        .expect("keyed again");
    assert_eq!(last, 5);
    assert!(wal.lookup_key("torn").is_some());
}

#[tokio::test]
async fn a_key_outlives_its_deleted_segment_through_the_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), small()).expect("open");
    let mut r = wal.reader("sink");
    wal.append_keyed("gone", 5, 2, one(5, "g"))
        .await
        .expect("keyed");
    // Fill past a few segments so the keyed one is not the active one.
    for i in 0..40 {
        wal.append(records(20, &format!("fill{i}")))
            .await
            .expect("fill");
    }
    let mut last = 0;
    while !r.caught_up() {
        for e in r.read_available(100).expect("read") {
            last = e.seq;
        }
    }
    wal.commit_cursor("sink", last).expect("commit");
    let first = std::fs::read_dir(dir.path())
        .expect("ls")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".wal"))
        .min()
        .expect("a segment");
    assert_ne!(
        first,
        format!("{:020}.wal", 1),
        "the keyed segment is deleted"
    );
    wal.close().await;
    drop(wal);
    let wal = Wal::open(dir.path(), small()).expect("reopen");
    let found = wal.lookup_key("gone").expect("remembered from the journal");
    assert_eq!((found.accepted, found.rejected_total), (5, 2));
}

#[tokio::test]
async fn keys_are_bounded_and_expire_also_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = KeyLimits {
        ttl_ms: 86_400_000,
        max_keys: 3,
    };
    let wal = Wal::open_with_keys(dir.path(), WalConfig::default(), limits).expect("open");
    for i in 0..5 {
        wal.append_keyed(&format!("k{i}"), 1, 0, one(1, &format!("r{i}")))
            .await
            .expect("keyed");
    }
    assert_eq!(wal.key_count(), 3);
    assert_eq!(wal.lookup_key("k1"), None, "the oldest went first");
    assert!(wal.lookup_key("k4").is_some());
    wal.close().await;
    drop(wal);
    // Every marker is still in the log; the bound holds on open too.
    let wal = Wal::open_with_keys(dir.path(), WalConfig::default(), limits).expect("reopen");
    assert_eq!(wal.key_count(), 3);
    assert_eq!(wal.lookup_key("k1"), None);
    assert!(wal.lookup_key("k2").is_some());
    wal.close().await;
    drop(wal);
    // A ttl shorter than the keys' age: none is remembered.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let short = KeyLimits {
        ttl_ms: 10,
        max_keys: 3,
    };
    let wal = Wal::open_with_keys(dir.path(), WalConfig::default(), short).expect("reopen");
    assert_eq!(wal.key_count(), 0);
    assert_eq!(wal.lookup_key("k4"), None::<KeyAnswer>);
}

#[tokio::test]
async fn an_invalid_key_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("open");
    for bad in ["", "a b", "é", &"x".repeat(201)] {
        assert!(wal.append_keyed(bad, 1, 0, one(1, "x")).await.is_err());
    }
    assert_eq!(wal.committed(), 0);
}
