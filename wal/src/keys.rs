//! Idempotency keys: a client that retries a request it never saw answered sends the same
//! key, and the log recognizes it.
//!
//! A key is written as a *marker entry* in the same group as its records, first, saying
//! how many entries follow it: the scan on open cuts a keyed group that is not whole, so
//! the records and their key are durable together or not at all. The marker's payload is
//! `EDGKEY01`, then `entries:u32 accepted:u64 rejected_total:u64` (little-endian), then
//! the key's bytes; it can never be a zstd frame (those start `28 b5 2f fd`, skippable
//! ones `5? 2a 4d 18`). Readers hand a marker on as an entry without records, so
//! positions stay gapless.
//!
//! Segments are deleted once delivered, and the markers in them with them: every key is
//! also appended to a journal (`{dir}/idempotency-keys`, one checksummed line per key),
//! which is fsynced before any segment is deleted. On open the keys are the journal's
//! and the retained segments' markers, less the expired ones, at most the bound.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{WalError, io_err};
use crate::state_file::write_atomic;

pub(crate) const KEY_MAGIC: &[u8; 8] = b"EDGKEY01";
const FIXED: usize = KEY_MAGIC.len() + 4 + 8 + 8;
/// The longest idempotency key, in bytes.
pub const MAX_KEY_BYTES: usize = 200;
/// The journal's file name, in the log's directory.
pub const KEY_JOURNAL: &str = "idempotency-keys";

/// Checks an idempotency key: 1 to [`MAX_KEY_BYTES`] bytes of visible ASCII (0x21 to
/// 0x7e). The error says why, in lowercase words.
pub fn check_key(key: &[u8]) -> Result<&str, String> {
    if key.is_empty() {
        return Err("the key is empty".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "the key has {} bytes, at most {MAX_KEY_BYTES} are allowed",
            key.len()
        ));
    }
    if !key.iter().all(u8::is_ascii_graphic) {
        return Err("the key must be visible ascii (0x21 to 0x7e), without spaces".into());
    }
    std::str::from_utf8(key).map_err(|e| e.to_string())
}

/// What a keyed request was answered: given again to a request that repeats its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAnswer {
    pub accepted: u64,
    pub rejected_total: u64,
    /// When its records were appended, ms since the epoch.
    pub appended_ms: u64,
}

/// How long keys are remembered, and how many at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLimits {
    /// A key is remembered at least this long (unless more than `max_keys` come after it).
    pub ttl_ms: u64,
    /// Keys remembered at most; the oldest go first.
    pub max_keys: usize,
}

impl Default for KeyLimits {
    fn default() -> Self {
        KeyLimits {
            ttl_ms: 86_400_000,
            max_keys: 100_000,
        }
    }
}

/// A marker entry, decoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Marker {
    pub(crate) key: String,
    /// Entries of the group after the marker.
    pub(crate) entries: u32,
    pub(crate) accepted: u64,
    pub(crate) rejected_total: u64,
}

pub(crate) fn is_marker(payload: &[u8]) -> bool {
    payload.starts_with(KEY_MAGIC)
}

pub(crate) fn encode_marker(m: &Marker) -> Vec<u8> {
    let mut out = Vec::with_capacity(FIXED + m.key.len());
    out.extend_from_slice(KEY_MAGIC);
    out.extend_from_slice(&m.entries.to_le_bytes());
    out.extend_from_slice(&m.accepted.to_le_bytes());
    out.extend_from_slice(&m.rejected_total.to_le_bytes());
    out.extend_from_slice(m.key.as_bytes());
    out
}

pub(crate) fn decode_marker(payload: &[u8]) -> Result<Marker, String> {
    if payload.len() < FIXED || !is_marker(payload) {
        return Err("key marker too short".into());
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&payload[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let mut e = [0u8; 4];
    e.copy_from_slice(&payload[8..12]);
    let key = check_key(&payload[FIXED..]).map_err(|e| format!("key marker: {e}"))?;
    Ok(Marker {
        key: key.to_owned(),
        entries: u32::from_le_bytes(e),
        accepted: u64_at(12),
        rejected_total: u64_at(20),
    })
}

fn journal_line(key: &str, a: &KeyAnswer) -> String {
    let body = format!(
        "{} {} {} {key}",
        a.appended_ms, a.accepted, a.rejected_total
    );
    format!("{:08x} {body}\n", crc32fast::hash(body.as_bytes()))
}

fn parse_line(line: &str) -> Option<(String, KeyAnswer)> {
    let (crc, body) = line.split_once(' ')?;
    if u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(body.as_bytes()) {
        return None;
    }
    let mut f = body.splitn(4, ' ');
    let appended_ms = f.next()?.parse().ok()?;
    let accepted = f.next()?.parse().ok()?;
    let rejected_total = f.next()?.parse().ok()?;
    let key = check_key(f.next()?.as_bytes()).ok()?;
    Some((
        key.to_owned(),
        KeyAnswer {
            accepted,
            rejected_total,
            appended_ms,
        },
    ))
}

/// The keys remembered, in memory and in the journal.
pub(crate) struct KeyIndex {
    limits: KeyLimits,
    map: HashMap<Arc<str>, KeyAnswer>,
    /// Every key of `map`, oldest first.
    order: VecDeque<Arc<str>>,
    path: PathBuf,
    journal: Option<File>,
    /// Lines in the journal file.
    lines: usize,
    /// Lines appended since the last fsync.
    unsynced: bool,
    /// An append failed: the file lacks keys until it is rewritten.
    broken: bool,
}

impl KeyIndex {
    /// The journal's keys and `markers` (from the retained segments), less the expired,
    /// at most the bound; the journal is rewritten with them.
    pub(crate) fn open(
        dir: &Path,
        limits: KeyLimits,
        markers: Vec<(String, KeyAnswer)>,
        now_ms: u64,
    ) -> Result<KeyIndex, WalError> {
        let path = dir.join(KEY_JOURNAL);
        let mut found: Vec<(String, KeyAnswer)> = Vec::new();
        let mut bad = 0usize;
        match fs::read(&path) {
            Ok(bytes) => {
                for line in bytes.split(|b| *b == b'\n') {
                    if line.is_empty() {
                        continue;
                    }
                    match std::str::from_utf8(line).ok().and_then(parse_line) {
                        Some(k) => found.push(k),
                        None => bad += 1,
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        if bad > 0 {
            // A line torn by a crash: its key is in a retained segment's marker, or was
            // fsynced before (only an unsynced tail can tear).
            tracing::warn!(journal = %path.display(), lines = bad, "skipped damaged lines of the idempotency key journal");
        }
        found.extend(markers);
        // Oldest first; for a key found twice the later answer wins.
        found.sort_by_key(|(_, a)| a.appended_ms);
        let mut index = KeyIndex {
            limits,
            map: HashMap::new(),
            order: VecDeque::new(),
            path,
            journal: None,
            lines: 0,
            unsynced: false,
            broken: true,
        };
        for (k, a) in found {
            index.remember(&k, a);
        }
        index.prune(now_ms);
        index.rewrite()?;
        Ok(index)
    }

    fn remember(&mut self, key: &str, a: KeyAnswer) {
        if self.map.contains_key(key) {
            // Only a key that expired comes back: rare, so a search is fine.
            self.order.retain(|k| &**k != key);
        }
        let key: Arc<str> = Arc::from(key);
        self.map.insert(key.clone(), a);
        self.order.push_back(key);
        while self.order.len() > self.limits.max_keys {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some(k) = self.order.pop_front() {
            self.map.remove(&k);
        }
    }

    /// Forgets the keys past their time.
    fn prune(&mut self, now_ms: u64) {
        while let Some(k) = self.order.front() {
            let expired = self
                .map
                .get(k)
                .is_none_or(|a| now_ms.saturating_sub(a.appended_ms) > self.limits.ttl_ms);
            if !expired {
                break;
            }
            self.pop_oldest();
        }
    }

    pub(crate) fn lookup(&self, key: &str, now_ms: u64) -> Option<KeyAnswer> {
        self.map
            .get(key)
            .copied()
            .filter(|a| now_ms.saturating_sub(a.appended_ms) <= self.limits.ttl_ms)
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Remembers a key whose group was just written, and appends it to the journal (not
    /// fsynced: its marker is durable in the log until [`KeyIndex::sync`]).
    pub(crate) fn insert(&mut self, key: &str, a: KeyAnswer, now_ms: u64) {
        self.remember(key, a);
        self.prune(now_ms);
        if self.lines >= self.limits.max_keys.saturating_mul(2).max(1024) {
            // Rewritten to what is remembered; on failure it is tried again before any
            // segment is deleted.
            if let Err(e) = self.rewrite() {
                tracing::warn!(error = %e, "cannot rewrite the idempotency key journal");
            }
            return;
        }
        let line = journal_line(key, &a);
        let written = match &mut self.journal {
            Some(f) if !self.broken => f.write_all(line.as_bytes()),
            _ => Err(io::Error::other("journal not open")),
        };
        match written {
            Ok(()) => {
                self.lines += 1;
                self.unsynced = true;
            }
            Err(e) => {
                if !self.broken {
                    tracing::warn!(journal = %self.path.display(), error = %e, "cannot append to the idempotency key journal; it is rewritten before any segment is deleted");
                }
                self.broken = true;
            }
        }
    }

    /// Makes every remembered key durable in the journal: before a segment (and the
    /// markers in it) is deleted.
    pub(crate) fn sync(&mut self) -> Result<(), WalError> {
        if self.broken {
            return self.rewrite();
        }
        if self.unsynced
            && let Some(f) = &self.journal
        {
            f.sync_data().map_err(io_err(&self.path))?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Replaces the journal with the keys remembered, atomically.
    fn rewrite(&mut self) -> Result<(), WalError> {
        let mut text = String::new();
        for k in &self.order {
            if let Some(a) = self.map.get(k) {
                text.push_str(&journal_line(k, a));
            }
        }
        self.journal = None;
        self.broken = true;
        write_atomic(&self.path, text.as_bytes()).map_err(io_err(&self.path))?;
        let f = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io_err(&self.path))?;
        self.journal = Some(f);
        self.lines = self.order.len();
        self.unsynced = false;
        self.broken = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(ms: u64) -> KeyAnswer {
        KeyAnswer {
            accepted: 3,
            rejected_total: 1,
            appended_ms: ms,
        }
    }

    #[test]
    fn a_marker_round_trips_and_is_never_a_zstd_frame() {
        let m = Marker {
            key: "file:/var/log/a.log@0-4096".into(),
            entries: 7,
            accepted: 12,
            rejected_total: 2,
        };
        let p = encode_marker(&m);
        assert!(is_marker(&p));
        assert_eq!(decode_marker(&p).expect("decode"), m);
        let frame = zstd::bulk::compress(b"abc", 1).expect("zstd");
        assert!(!is_marker(&frame));
        assert!(decode_marker(&p[..FIXED]).is_err(), "no key");
    }

    #[test]
    fn keys_are_checked() {
        assert!(check_key(b"a").is_ok());
        assert!(check_key(&[b'~'; MAX_KEY_BYTES]).is_ok());
        assert!(check_key(b"").is_err());
        assert!(check_key(&[b'a'; MAX_KEY_BYTES + 1]).is_err());
        for bad in [&b"a b"[..], b"a\tb", b"\x7f", "é".as_bytes(), b"a\n"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_torn_or_altered_journal_line_is_skipped() {
        let line = journal_line("k1", &answer(5));
        assert_eq!(parse_line(line.trim_end()), Some(("k1".into(), answer(5))));
        // Torn inside the key: the checksum tells.
        assert_eq!(parse_line(&line[..line.len() - 2]), None);
        assert_eq!(parse_line(&line.replace(" 3 ", " 4 ")), None);
    }

    #[test]
    fn the_oldest_keys_go_past_the_bound_and_after_their_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = KeyLimits {
            ttl_ms: 1000,
            max_keys: 3,
        };
        let mut ix = KeyIndex::open(dir.path(), limits, Vec::new(), 0).expect("open");
        for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
            ix.insert(k, answer(100 + i as u64), 100 + i as u64);
        }
        assert_eq!(ix.len(), 3);
        assert_eq!(ix.lookup("a", 200), None, "evicted by the bound");
        assert_eq!(ix.lookup("b", 200), Some(answer(101)));
        // Past the ttl a key is no longer found, and the next insert forgets it.
        assert_eq!(ix.lookup("b", 1102), None);
        assert!(ix.lookup("d", 1102).is_some());
        ix.insert("e", answer(1103), 1103);
        assert_eq!(ix.len(), 2, "b and c expired");
        // A key that expired can be recorded again.
        ix.insert("d", answer(2200), 2200);
        assert_eq!(ix.lookup("d", 2200), Some(answer(2200)));
        ix.sync().expect("sync");
        drop(ix);
        let ix = KeyIndex::open(dir.path(), limits, Vec::new(), 2200).expect("reopen");
        assert_eq!(ix.len(), 1, "only d: e expired");
        assert_eq!(ix.lookup("d", 2200), Some(answer(2200)));
    }

    #[test]
    fn the_journal_is_rewritten_past_twice_the_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = KeyLimits {
            ttl_ms: u64::MAX,
            max_keys: 10,
        };
        let mut ix = KeyIndex::open(dir.path(), limits, Vec::new(), 0).expect("open");
        for i in 0..5000u64 {
            ix.insert(&format!("k{i}"), answer(i), i);
        }
        ix.sync().expect("sync");
        let lines = fs::read_to_string(dir.path().join(KEY_JOURNAL))
            .expect("read")
            .lines()
            .count();
        assert!(lines <= 1024 + 10, "{lines} lines");
        let ix = KeyIndex::open(dir.path(), limits, Vec::new(), 5000).expect("reopen");
        assert_eq!(ix.len(), 10);
        assert!(ix.lookup("k4999", 5000).is_some());
        assert!(ix.lookup("k4989", 5000).is_none());
    }
}
