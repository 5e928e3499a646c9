//! The write-ahead log on its own: recovery, cursors, deletion.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Arc;

use edgelog_record::Record;
use edgelog_wal::{Wal, WalConfig};

mod common;
use common::{records, small};

/// Opens the log again after this process closed it, as a restart does. Another test here
/// starting a process (`mount`) may hold a copy of the lock's descriptor until it execs:
/// a `Locked` for a moment is that, not a lock left behind.
fn reopen(dir: &std::path::Path, cfg: WalConfig) -> Wal {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Wal::open(dir, cfg.clone()) {
            Err(edgelog_wal::WalError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            r => return r.expect("reopen"),
        }
    }
}

/// Appends `batches` groups of `n` records, group `i` tagged `{tag}{i}`.
async fn append_groups(wal: &Wal, batches: usize, n: usize, tag: &str) {
    for i in 0..batches {
        wal.append(records(n, &format!("{tag}{i}")))
            .await
            .expect("append");
    }
}

/// A new directory holding a log of `batches` groups of `n` records (as
/// [`append_groups`] writes them), closed.
async fn written(cfg: WalConfig, batches: usize, n: usize, tag: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), cfg).expect("open");
    append_groups(&wal, batches, n, tag).await;
    wal.close().await;
    dir
}

fn read_all(wal: &Wal, sink: &str) -> Vec<(u64, String)> {
    let mut r = wal.reader(sink);
    let mut out = Vec::new();
    while !r.caught_up() {
        for e in r.read_available(100).expect("read") {
            for rec in e.records.iter() {
                out.push((e.seq, rec.request_id().to_owned()));
            }
        }
    }
    out
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_everything_before_it_kept() {
    let dir = written(WalConfig::default(), 10, 5, "b").await;
    // A crash mid-write: half an entry header and some junk at the end.
    let seg = std::fs::read_dir(dir.path())
        .expect("ls")
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(".wal"))
        .expect("segment")
        .path();
    let len = std::fs::metadata(&seg).expect("stat").len();
    OpenOptions::new()
        .append(true)
        .open(&seg)
        .expect("open")
        .write_all(&[7u8; 13])
        .expect("write");

    let wal = reopen(dir.path(), WalConfig::default());
    assert_eq!(wal.committed(), 10);
    assert_eq!(std::fs::metadata(&seg).expect("stat").len(), len);
    let got = read_all(&wal, "s");
    assert_eq!(got.len(), 50);
    assert_eq!(got[0], (1, "b0-0".to_owned()));
    // New appends continue the sequence.
    assert_eq!(wal.append(records(1, "after")).await.expect("append"), 11);
    wal.close().await;
}

#[tokio::test]
async fn a_corrupt_entry_is_cut_with_what_follows() {
    let dir = written(WalConfig::default(), 4, 3, "c").await;
    let seg = dir.path().join(format!("{:020}.wal", 1));
    let mut bytes = std::fs::read(&seg).expect("read");
    let n = bytes.len();
    bytes[n - 3] ^= 0xff; // flip a bit in the last entry's payload
    std::fs::write(&seg, bytes).expect("write");
    let wal = reopen(dir.path(), WalConfig::default());
    assert_eq!(wal.committed(), 3);
    assert_eq!(read_all(&wal, "s").len(), 9);
    wal.close().await;
}

#[tokio::test]
async fn segments_go_only_when_every_sink_is_past_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), small()).expect("open");
    let mut a = wal.reader("a");
    let _b = wal.reader("b");
    // Entries are compressed: enough of them to span several 4 KiB segments.
    append_groups(&wal, 400, 10, "d").await;
    let segments = wal.stats().segments;
    assert!(segments > 3, "only {segments} segments");
    let mut last = 0;
    while !a.caught_up() {
        for e in a.read_available(100).expect("read") {
            last = e.seq;
        }
    }
    wal.commit_cursor("a", last).expect("cursor");
    assert_eq!(
        wal.stats().segments,
        segments,
        "b has delivered nothing yet"
    );
    wal.commit_cursor("b", 100).expect("cursor");
    let after = wal.stats().segments;
    assert!(after < segments && after > 1, "{after} of {segments}");
    wal.commit_cursor("b", last).expect("cursor");
    assert_eq!(wal.stats().segments, 1);
    wal.close().await;
    drop(wal); // a restart is a new process: the old one's lock is gone

    // A restart resumes each sink after its saved cursor, and the sequence goes on.
    let wal = reopen(dir.path(), small());
    assert!(wal.reader("a").caught_up());
    assert_eq!(
        wal.append(records(1, "new")).await.expect("append"),
        last + 1
    );
    assert_eq!(read_all(&wal, "b"), vec![(last + 1, "new-0".to_owned())]);
    wal.close().await;
}

#[tokio::test]
async fn the_cache_lets_go_of_what_every_reader_has_read_and_later_readers_read_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("open");
    let mut a = wal.reader("a");
    let mut b = wal.reader("b");
    let batches: Vec<_> = (0..5).map(|i| records(3, &format!("c{i}"))).collect();
    for r in &batches {
        wal.append(r.clone()).await.expect("append");
    }
    // Each batch: ours and the cache's.
    assert!(batches.iter().all(|r| Arc::strong_count(r) == 2));
    let from_a = a.read_available(3).expect("read");
    assert_eq!(from_a.len(), 3);
    // b has read none of them: the cache keeps all five.
    assert!(batches.iter().all(|r| Arc::strong_count(r) >= 2));
    let from_b = b.read_available(2).expect("read");
    assert_eq!(from_b.len(), 2);
    // The two both have read are held by a and b (and us), no longer by the cache.
    for r in &batches[..2] {
        assert_eq!(Arc::strong_count(r), 3);
    }
    assert_eq!(
        Arc::strong_count(&batches[2]),
        3,
        "a's copy, the cache's, ours"
    );
    drop((from_a, from_b));
    assert!(batches[..2].iter().all(|r| Arc::strong_count(r) == 1));
    // Both read the rest; a reader whose sink registers only now reads everything, from
    // disk, as written.
    while !a.caught_up() {
        a.read_available(100).expect("read");
    }
    while !b.caught_up() {
        b.read_available(100).expect("read");
    }
    assert!(batches.iter().all(|r| Arc::strong_count(r) == 1));
    let late = read_all(&wal, "late");
    let want: Vec<(u64, String)> = (0..5)
        .flat_map(|i| (0..3).map(move |j| (i as u64 + 1, format!("c{i}-{j}"))))
        .collect();
    assert_eq!(late, want);
    // A reader that goes away holds nothing back.
    let c = wal.reader("c");
    let more = records(1, "d");
    wal.append(more.clone()).await.expect("append");
    drop(c);
    while !a.caught_up() {
        a.read_available(100).expect("read");
    }
    assert_eq!(Arc::strong_count(&more), 2, "b has not read it");
    b.read_available(100).expect("read");
    assert_eq!(Arc::strong_count(&more), 1);
    wal.close().await;
}

#[tokio::test]
async fn readers_cross_segments_from_disk_after_a_restart() {
    let dir = written(small(), 200, 2, "e").await;
    let wal = reopen(dir.path(), small());
    let got = read_all(&wal, "fresh");
    assert_eq!(got.len(), 400);
    for (i, (seq, id)) in got.iter().enumerate() {
        assert_eq!(*seq, i as u64 / 2 + 1);
        assert_eq!(*id, format!("e{}-{}", i / 2, i % 2));
    }
    wal.close().await;
}

#[tokio::test]
async fn a_second_writer_on_the_same_log_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("open");
    let err = Wal::open(dir.path(), WalConfig::default())
        .err()
        .expect("second open must fail");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    wal.close().await;
    drop(wal);
    // Released with the last handle: a restart can take it.
    let again = Wal::open(dir.path(), WalConfig::default()).expect("reopen after release");
    again.close().await;
}

/// A small tmpfs mounted for one test (root only, as CI runs); lazily unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mkdir");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount")
            .success();
        assert!(
            ok,
            "cannot mount a tmpfs (this test needs root, as CI runs)"
        );
        Tmpfs(dir.to_owned())
    }

    fn resize(&self, size: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("run mount")
            .success();
        assert!(ok, "cannot resize the tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Records whose payload barely compresses, so the log really grows.
fn bulky(n: usize, tag: &str) -> Arc<Vec<Record>> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for c in tag.bytes() {
        x = x.wrapping_mul(131).wrapping_add(u64::from(c));
    }
    Arc::new(
        (0..n)
            .map(|i| {
                let mut noise = String::new();
                for _ in 0..8 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    noise.push_str(&format!("{x:016x}"));
                }
                Record {
                    timestamp_ms: 1_700_000_000_000 + i as i64,
                    distribution_id: "E1".into(),
                    x_edge_request_id: Some(format!("{tag}-{i}")),
                    cs_user_agent: Some(noise),
                    ..Record::default()
                }
            })
            .collect(),
    )
}

/// The tags of the groups in what [`read_all`] read, in order.
fn groups(got: &[(u64, String)]) -> Vec<String> {
    got.iter()
        .filter(|(_, id)| id.ends_with("-0"))
        .map(|(_, id)| id.trim_end_matches("-0").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_appends_cleanly_and_the_log_stays_whole() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("wal");
    let fs = Tmpfs::mount(&dir, "1m");
    let cfg = WalConfig {
        segment_bytes: 64 << 10,
        max_bytes: 1 << 30,
        fsync: true,
    };
    let mut acked = Vec::new();
    let mut refusals = 0;
    {
        let wal = Wal::open(&dir, cfg.clone()).expect("open");
        for i in 0..400 {
            let tag = format!("a{i}");
            match wal.append(bulky(50, &tag)).await {
                Ok(_) => acked.push(tag),
                Err(e) => {
                    let no_space = matches!(&e, edgelog_wal::WalError::Io { source, .. }
                        if edgelog_wal::is_no_space(source));
                    assert!(no_space, "not a no-space error: {e}");
                    refusals += 1;
                }
            }
        }
        assert!(
            refusals > 10,
            "the disk never filled ({} appended)",
            acked.len()
        );
        // Space returns: appends go through again, without reopening.
        fs.resize("16m");
        for i in 0..50 {
            let tag = format!("b{i}");
            wal.append(bulky(50, &tag))
                .await
                .expect("append after space returned");
            acked.push(tag);
        }
        // Readers see exactly the acknowledged groups, in order.
        assert_eq!(groups(&read_all(&wal, "s")), acked, "live reader");
        wal.close().await;
    }
    // Reopened: nothing cut, everything acknowledged is there, nothing else.
    let wal = Wal::open(&dir, cfg).expect("reopen");
    let got = read_all(&wal, "s");
    assert_eq!(groups(&got), acked, "after reopen");
    assert_eq!(got.len(), acked.len() * 50);
    eprintln!(
        "{} groups acknowledged, {refusals} refused for lack of space",
        acked.len()
    );
}

#[tokio::test]
async fn a_corrupt_spot_loses_only_what_it_covers_and_never_stalls_readers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = WalConfig::default();
    {
        let wal = Wal::open(dir.path(), cfg.clone()).expect("open");
        let _ = wal.reader("rt");
        append_groups(&wal, 20, 5, "a").await;
        // One sink had delivered past where the damage will be.
        wal.commit_cursor("rt", 15).expect("cursor");
        wal.close().await;
    }
    let seg = dir.path().join(format!("{:020}.wal", 1));
    let mut bytes = std::fs::read(&seg).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid..mid + 4].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    std::fs::write(&seg, &bytes).expect("corrupt");
    {
        let wal = Wal::open(dir.path(), cfg.clone()).expect("reopen after corruption");
        let _ = wal.reader("rt");
        append_groups(&wal, 5, 5, "b").await;
        wal.close().await;
    }
    let seg_len = std::fs::metadata(&seg).expect("meta").len();
    // Reopened once more: nothing new is cut, and a reader that was behind reads what
    // survived, skips the lost entries, and reaches everything written since.
    let wal = Wal::open(dir.path(), cfg).expect("reopen");
    assert_eq!(
        std::fs::metadata(&seg).expect("meta").len(),
        seg_len,
        "cut again"
    );
    let got = read_all(&wal, "std");
    let ids: Vec<&str> = got.iter().map(|(_, id)| id.as_str()).collect();
    assert!(ids.contains(&"a0-0"), "{ids:?}");
    for i in 0..5 {
        let id = format!("b{i}-4");
        assert!(ids.contains(&id.as_str()), "{id} missing: {ids:?}");
    }
    let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] <= w[1]),
        "out of order: {seqs:?}"
    );
    assert_eq!(
        *seqs.last().expect("some"),
        20,
        "new entries numbered after the cursor"
    );
}

/// Records with every kind of field set, some null.
fn full(n: usize, tag: &str) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            timestamp_ms: 1_700_000_000_000 + (i as i64 % 5) * 7 - 9,
            distribution_id: format!("E{}", i % 3),
            x_edge_request_id: Some(format!("{tag}-{i}")),
            cs_host: Some("d111111abcdef8.cloudfront.net".into()),
            cs_uri_stem: (i % 2 == 0).then(|| format!("/img/{i}.png")),
            sc_status: Some(200 + (i % 4) as u16 * 100),
            sc_bytes: Some(u64::MAX - i as u64),
            fle_encrypted_fields: (i % 3 == 0).then_some(u32::MAX),
            sc_range_start: Some(i64::MIN + i as i64),
            sc_range_end: (i % 2 == 1).then_some(i64::MAX),
            time_taken: Some(0.001 * i as f64),
            time_to_first_byte: (i % 2 == 0).then_some(1e300),
            ..Record::default()
        })
        .collect()
}

/// A log's entries as (header, payload) from one segment file.
fn entries_of(bytes: &[u8]) -> Vec<([u8; 24], Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 8;
    while at < bytes.len() {
        let h: [u8; 24] = bytes[at..at + 24].try_into().expect("header");
        let len = u32::from_le_bytes(h[0..4].try_into().expect("len")) as usize;
        out.push((h, bytes[at + 24..at + 24 + len].to_vec()));
        at += 24 + len;
    }
    out
}

#[tokio::test]
async fn entries_written_before_the_columnar_format_are_read_after_an_upgrade() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = full(300, "old");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("open");
    wal.append(Arc::new(old.clone())).await.expect("append");
    wal.close().await;
    drop(wal);
    // The entry as the build before wrote it: postcard, zstd, no tag.
    let segment = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|x| x == "wal"))
        .expect("a segment");
    let bytes = std::fs::read(&segment).expect("read");
    let [(mut h, payload)] = entries_of(&bytes).try_into().expect("one entry");
    assert_eq!(payload[0], 0x01, "this build writes columns after a tag");
    let legacy =
        zstd::bulk::compress(&postcard::to_allocvec(&old).expect("postcard"), 1).expect("zstd");
    h[0..4].copy_from_slice(&(legacy.len() as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h[8..]);
    crc.update(&legacy);
    h[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
    let mut rewritten = bytes[..8].to_vec();
    rewritten.extend_from_slice(&h);
    rewritten.extend_from_slice(&legacy);
    std::fs::write(&segment, rewritten).expect("write");

    // Upgraded: the old entry is read, new ones are appended after it.
    let new = full(200, "new");
    let wal = reopen(dir.path(), WalConfig::default());
    wal.append(Arc::new(new.clone())).await.expect("append");
    wal.close().await;
    drop(wal);
    let wal = reopen(dir.path(), WalConfig::default());
    let mut r = wal.reader("standard");
    let mut got = Vec::new();
    while !r.caught_up() {
        for e in r.read_available(100).expect("read") {
            got.extend(e.records.iter().cloned());
        }
    }
    assert_eq!(got, [old, new].concat());
    let kinds: Vec<u8> = entries_of(&std::fs::read(&segment).expect("read"))
        .iter()
        .map(|(_, p)| p[0])
        .collect();
    assert_eq!(kinds, [0x28, 0x01], "a zstd frame, then a tagged entry");
    wal.close().await;
}

/// An entry as the builds before `e92b1e5` wrote it (postcard, zstd level 1; made by
/// that build): logs written then must stay readable. postcard is not self-describing,
/// so a field added to `Record` breaks this: old entries would then need the old layout.
#[test]
fn an_entry_written_by_the_build_before_the_columns_is_read() {
    let payload = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/postcard-entry.bin"
    ))
    .expect("fixture");
    let records = Wal::decode(&payload).expect("decode");
    let ids: Vec<&str> = records.iter().map(Record::request_id).collect();
    assert_eq!(ids, ["legacy-0", "legacy-1", "legacy-2"]);
    let r = &records[1];
    assert_eq!(r.timestamp_ms, 1_764_000_001_000);
    assert_eq!(r.distribution_id, "E2QWRUHAPOMQZL1");
    assert_eq!(r.x_edge_location.as_deref(), Some("DFW3-C1"));
    assert_eq!(r.sc_bytes, Some(2_501));
    assert_eq!(r.cs_uri_stem.as_deref(), Some("/index-1.html"));
    assert_eq!(r.sc_status, Some(201));
    assert_eq!(r.time_taken, Some(0.125));
    assert_eq!(r.sc_range_start, Some(-5));
    assert_eq!(records[0].sc_range_start, None);
    assert_eq!((r.c_country.as_deref(), r.asn), (Some("US"), Some(64_496)));
    assert_eq!(r.cs_cookie, None);
}
