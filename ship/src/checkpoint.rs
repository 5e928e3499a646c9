//! Where each file stands: its identity (fingerprint of its first line, plus the device
//! and inode last seen), the offset up to which the collector acknowledged its lines, and
//! the range of a batch in flight. Saved before a batch is sent (its range) and after it
//! is answered (the new offset), so a restart resends exactly the range whose answer it
//! may have missed, with the same idempotency key.
//!
//! A save appends only the entries that changed to a journal (one write, one fsync),
//! since thousands of followed files made rewriting them all twice per batch the cost of
//! shipping; the journal is folded into the snapshot, rewritten atomically, once it
//! outgrows it. The journal names the snapshot's generation: one left from before the
//! last snapshot is ignored.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};
use xxhash_rust::xxh3::xxh3_64;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileState {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    /// Lines before this byte are acknowledged (or could not be mapped, and were counted).
    pub offset: u64,
    /// A batch sent and not yet answered: `[start, end)`.
    pub pending: Option<(u64, u64)>,
    /// A file read to its end that will not grow (a CloudFront `.gz`).
    #[serde(default)]
    pub done: bool,
    /// Last time this file was seen, ms since the epoch (for forgetting old entries).
    pub seen_ms: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Checkpoints {
    /// By input and fingerprint: `input/0123456789abcdef` (two inputs may read one file).
    pub files: BTreeMap<String, FileState>,
    /// Counts snapshots; the journal applies to the snapshot of its generation only.
    #[serde(default)]
    generation: u64,
    /// Entries changed (or forgotten) since the last save.
    #[serde(skip)]
    dirty: BTreeSet<String>,
    /// The journal open for appending, and its length; `None` until the first save
    /// writes a snapshot (and after a failed append).
    #[serde(skip)]
    journal: Option<(File, u64)>,
    /// The snapshot's length when written.
    #[serde(skip)]
    snapshot_bytes: u64,
    #[serde(skip)]
    forgot_ms: u64,
    /// Why the last save failed (logged when it starts or changes, until one succeeds).
    #[serde(skip)]
    failing: Option<String>,
    /// The newest `seen_ms` when loaded, and when: the week counts ship's running time,
    /// not the time it was stopped (a restart after a week away, its files not found by
    /// the first scans, a mount not up yet, forgets nothing).
    #[serde(skip)]
    resumed: (u64, u64),
}

/// An entry's new state, or `None` when it was forgotten.
#[derive(Serialize, Deserialize)]
struct Change {
    k: String,
    v: Option<FileState>,
}

/// One save: one journal line, so that a save cut short (a crash, a full disk, even a
/// power loss leaving zeros) can only be the last line.
#[derive(Serialize, Deserialize)]
struct Save {
    c: Vec<Change>,
}

#[derive(Serialize, Deserialize)]
struct JournalHeader {
    generation: u64,
}

pub fn file_key(input: &str, fp: u64) -> String {
    format!("{input}/{fp:016x}")
}

/// Entries not seen for this long are forgotten.
const FORGET_MS: u64 = 7 * 24 * 3600 * 1000;

/// `seen_ms` alone moving by less than this is not a change worth a write.
const SEEN_STEP_MS: u64 = 3600 * 1000;

/// The journal is folded into a new snapshot once it is longer than the snapshot and
/// this.
const JOURNAL_MIN_BYTES: u64 = 256 << 10;

impl Checkpoints {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("checkpoints.json")
    }

    fn journal_path(state_dir: &Path) -> PathBuf {
        state_dir.join("checkpoints.journal")
    }

    pub fn load(state_dir: &Path) -> Result<Checkpoints, String> {
        let mut cp = Self::read(state_dir)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let last = cp.files.values().map(|f| f.seen_ms).max().unwrap_or(0);
        cp.resumed = (last, now);
        Ok(cp)
    }

    fn read(state_dir: &Path) -> Result<Checkpoints, String> {
        let p = Self::path(state_dir);
        let mut cp: Checkpoints = match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| format!("checkpoint file {} is unreadable: {e}", p.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Checkpoints::default(),
            Err(e) => return Err(format!("cannot read {}: {e}", p.display())),
        };
        let j = Self::journal_path(state_dir);
        let text = match std::fs::read(&j) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(cp),
            Err(e) => return Err(format!("cannot read {}: {e}", j.display())),
        };
        let unreadable =
            |e: String| format!("checkpoint journal {} is unreadable: {e}", j.display());
        let mut lines = text.split_inclusive(|&b| b == b'\n').peekable();
        // Torn (a crash during its first write): as if there were none.
        let Some(Ok(head)) = lines
            .next()
            .filter(|l| l.ends_with(b"\n"))
            .map(serde_json::from_slice::<JournalHeader>)
        else {
            return Ok(cp);
        };
        if head.generation != cp.generation {
            // From before the snapshot, which holds all of it.
            return Ok(cp);
        }
        let mut n = 1;
        while let Some(line) = lines.next() {
            n += 1;
            match serde_json::from_slice::<Save>(line) {
                Ok(save) => {
                    for c in save.c {
                        match c.v {
                            Some(v) => {
                                cp.files.insert(c.k, v);
                            }
                            None => {
                                cp.files.remove(&c.k);
                            }
                        }
                    }
                }
                // The last save cut short: it never returned, so its batch was never sent
                // (or, for an offset, is resent with its key).
                Err(_) if lines.peek().is_none() => {}
                Err(e) => return Err(unreadable(format!("line {n}: {e}"))),
            }
        }
        Ok(cp)
    }

    /// Sets an entry, marking it for the next save if it changed (`seen_ms` only when it
    /// moved by an hour or more).
    pub fn set(&mut self, key: String, state: FileState) {
        match self.files.get_mut(&key) {
            Some(old)
                if FileState {
                    seen_ms: old.seen_ms,
                    ..state.clone()
                } == *old
                    && state.seen_ms.saturating_sub(old.seen_ms) < SEEN_STEP_MS => {}
            _ => {
                self.files.insert(key.clone(), state);
                self.dirty.insert(key);
            }
        }
    }

    /// Marks an entry seen now (a finished file still there keeps its entry).
    pub fn touch(&mut self, key: &str, now_ms: u64) {
        if let Some(f) = self.files.get(key)
            && now_ms.saturating_sub(f.seen_ms) >= SEEN_STEP_MS
        {
            let f = FileState {
                seen_ms: now_ms,
                ..f.clone()
            };
            self.set(key.to_owned(), f);
        }
    }

    /// Forgets the entries not seen for a week (at most once an hour), but never one
    /// whose file is still `present` (device and inode, as the scans found them): after
    /// a week stopped, files a scan has not matched to their entries yet (a `.gz` waiting
    /// for its size to hold, or for another to finish) keep them.
    pub fn forget_old(&mut self, now_ms: u64, present: &HashSet<(u64, u64)>) {
        if now_ms.saturating_sub(self.forgot_ms) < SEEN_STEP_MS {
            return;
        }
        self.forgot_ms = now_ms;
        let old: Vec<String> = self
            .files
            .iter()
            .filter(|(_, f)| {
                let (last, start) = self.resumed;
                let unseen = if f.seen_ms <= last {
                    now_ms.saturating_sub(start) + (last - f.seen_ms)
                } else {
                    now_ms.saturating_sub(f.seen_ms)
                };
                unseen >= FORGET_MS && !present.contains(&(f.dev, f.ino))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in old {
            self.files.remove(&k);
            self.dirty.insert(k);
        }
    }

    /// Makes every change since the last save durable. A failure is logged when it
    /// starts (a full disk fails every file's saves) and its end too.
    pub fn save(&mut self, state_dir: &Path) -> Result<(), String> {
        let r = self.save_changes(state_dir);
        match &r {
            Err(e) => {
                metrics::counter!("edgelog_ship_checkpoint_save_errors_total").increment(1);
                if self.failing.as_ref() != Some(e) {
                    tracing::error!(error = %e, "cannot save checkpoints: batches wait until they can be saved");
                }
            }
            Ok(()) if self.failing.is_some() => tracing::info!("checkpoints saved again"),
            Ok(()) => {}
        }
        self.failing = r.as_ref().err().cloned();
        r
    }

    fn save_changes(&mut self, state_dir: &Path) -> Result<(), String> {
        if self.dirty.is_empty() && self.journal.is_some() {
            return Ok(());
        }
        let save = Save {
            c: self
                .dirty
                .iter()
                .map(|k| Change {
                    k: k.clone(),
                    v: self.files.get(k).cloned(),
                })
                .collect(),
        };
        let mut lines = serde_json::to_vec(&save).map_err(|e| e.to_string())?;
        lines.push(b'\n');
        let j = Self::journal_path(state_dir);
        match &mut self.journal {
            Some((f, len))
                if *len + lines.len() as u64 <= self.snapshot_bytes.max(JOURNAL_MIN_BYTES) =>
            {
                let r = edgelog_wal::state_file::blocking(|| {
                    f.write_all(&lines)?;
                    f.sync_data()
                });
                if let Err(e) = r {
                    // Maybe part of a line written: no more appends after it; the next
                    // save writes a snapshot, and until then a restart ignores the torn
                    // line (its batch was never sent).
                    self.journal = None;
                    return Err(format!("cannot save {}: {e}", j.display()));
                }
                *len += lines.len() as u64;
            }
            _ => self.snapshot(state_dir)?,
        }
        self.dirty.clear();
        Ok(())
    }

    /// Writes every entry into the snapshot, the journal emptied (on a clean stop).
    pub fn fold(&mut self, state_dir: &Path) -> Result<(), String> {
        self.snapshot(state_dir)?;
        self.dirty.clear();
        Ok(())
    }

    /// Writes every entry anew and starts an empty journal for them.
    fn snapshot(&mut self, state_dir: &Path) -> Result<(), String> {
        self.journal = None;
        // Not a count: a snapshot deleted or rewritten by an older build must not start
        // again at a number a journal left behind carries.
        let old = self.generation;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        self.generation = xxh3_64(
            &[nanos, u64::from(std::process::id()), old]
                .map(u64::to_le_bytes)
                .concat(),
        )
        .max(1);
        let data = serde_json::to_vec(self).map_err(|e| e.to_string())?;
        let p = Self::path(state_dir);
        let failed = |p: &Path, e: std::io::Error| format!("cannot save {}: {e}", p.display());
        if let Err(e) = edgelog_wal::state_file::write_atomic(&p, &data) {
            self.generation = old;
            return Err(failed(&p, e));
        }
        self.snapshot_bytes = data.len() as u64;
        let j = Self::journal_path(state_dir);
        let mut head = serde_json::to_vec(&JournalHeader {
            generation: self.generation,
        })
        .map_err(|e| e.to_string())?;
        head.push(b'\n');
        // A crash before the new journal is in place leaves the old one, of the last
        // generation: ignored.
        edgelog_wal::state_file::write_atomic(&j, &head).map_err(|e| failed(&j, e))?;
        let f = OpenOptions::new()
            .append(true)
            .open(&j)
            .map_err(|e| failed(&j, e))?;
        self.journal = Some((f, head.len() as u64));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(offset: u64, seen_ms: u64) -> FileState {
        FileState {
            path: "/var/log/a.log".into(),
            dev: 1,
            ino: 2,
            offset,
            pending: Some((offset, offset + 10)),
            done: false,
            seen_ms,
        }
    }

    fn journal_len(dir: &Path) -> u64 {
        std::fs::metadata(Checkpoints::journal_path(dir)).map_or(0, |m| m.len())
    }

    #[test]
    fn a_save_appends_what_changed_and_a_restart_sees_every_save() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let d = dir.path();
        let mut cp = Checkpoints::default();
        for i in 0..2000 {
            cp.set(format!("in/{i:016x}"), state(i, 1000));
        }
        cp.save(d).unwrap_or_else(|e| panic!("{e}"));
        let snapshot = std::fs::read(Checkpoints::path(d)).unwrap_or_default();
        // One entry changed: one line appended, the snapshot untouched.
        let before = journal_len(d);
        cp.set("in/0000000000000007".into(), state(700, 1000));
        cp.save(d).unwrap_or_else(|e| panic!("{e}"));
        let line = journal_len(d) - before;
        assert!(line < 300, "{line} bytes for one entry");
        assert_eq!(
            std::fs::read(Checkpoints::path(d)).unwrap_or_default(),
            snapshot
        );
        // Seen a minute later, nothing else: no write.
        cp.set("in/0000000000000007".into(), state(700, 61_000));
        cp.save(d).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(journal_len(d) - before, line);
        // Many saves: the journal is folded into a snapshot once it outgrows it.
        for n in 0..5000u64 {
            cp.set(format!("in/{:016x}", n % 2000), state(10_000 + n, 1000));
            cp.save(d).unwrap_or_else(|e| panic!("{e}"));
        }
        let snap = std::fs::metadata(Checkpoints::path(d)).map_or(0, |m| m.len());
        assert!(journal_len(d) <= snap.max(JOURNAL_MIN_BYTES) + 300);
        let back = Checkpoints::load(d).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.files, cp.files);
        assert_eq!(back.files["in/0000000000000007"].offset, 10_000 + 4007);
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_a_stale_journal_too() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let d = dir.path();
        let mut cp = Checkpoints::default();
        cp.set("in/a".into(), state(1, 1000));
        cp.save(d).unwrap_or_else(|e| panic!("{e}"));
        cp.set("in/a".into(), state(2, 1000));
        cp.save(d).unwrap_or_else(|e| panic!("{e}"));
        let j = Checkpoints::journal_path(d);
        let whole = std::fs::read(&j).unwrap_or_default();
        // A crash in the middle of the next append.
        let mut torn = whole.clone();
        torn.extend_from_slice(br#"{"k":"in/a","v":{"path":"/var/log/a.log","dev":1,"#);
        std::fs::write(&j, &torn).unwrap_or_else(|e| panic!("{e}"));
        let back = Checkpoints::load(d).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.files["in/a"].offset, 2);
        // A power loss during it: zeros where a page was not written, then the rest of
        // the line with its line break.
        let mut zeros = whole.clone();
        zeros.extend_from_slice(&[0u8; 100]);
        zeros.extend_from_slice(br#"ffset":7,"pending":null,"done":false,"seen_ms":1000}}]}"#);
        zeros.push(b'\n');
        std::fs::write(&j, &zeros).unwrap_or_else(|e| panic!("{e}"));
        let back = Checkpoints::load(d).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.files["in/a"].offset, 2);
        // Garbage before the last line is not a torn write: refused, as a corrupt snapshot.
        let mut bad = whole.clone();
        bad.extend_from_slice(b"garbage\n");
        bad.extend_from_slice(
            &whole[whole.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1)..],
        );
        std::fs::write(&j, &bad).unwrap_or_else(|e| panic!("{e}"));
        let e = Checkpoints::load(d).err().unwrap_or_default();
        assert!(e.contains("line 3"), "{e}");
        // A journal of an older generation (a crash between a snapshot and its journal)
        // is ignored: the snapshot holds everything.
        std::fs::write(&j, &whole).unwrap_or_else(|e| panic!("{e}"));
        let mut cp = Checkpoints::load(d).unwrap_or_else(|e| panic!("{e}"));
        cp.set("in/a".into(), state(3, 1000));
        cp.save(d).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&j, &whole).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Checkpoints::load(d).map(|c| c.files["in/a"].offset), Ok(3));
    }

    #[test]
    fn entries_unseen_for_a_week_are_forgotten_across_a_restart_and_only_when_asked() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let d = dir.path();
        let mut cp = Checkpoints::default();
        cp.set("in/old".into(), state(1, 0));
        cp.set("in/new".into(), state(1, 0));
        cp.save(d).unwrap_or_else(|e| panic!("{e}"));
        // A week later one file's place is saved: the other is not forgotten by that.
        cp.set("in/new".into(), state(2, FORGET_MS));
        cp.save(d).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Checkpoints::load(d).map(|c| c.files.len()), Ok(2));
        // Its file still there (found by a scan, not yet matched to its entry): kept.
        cp.forget_old(FORGET_MS, &HashSet::from([(1, 2)]));
        cp.save(d).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Checkpoints::load(d).map(|c| c.files.len()), Ok(2));
        cp.forgot_ms = 0;
        cp.forget_old(FORGET_MS, &HashSet::new());
        cp.save(d).unwrap_or_else(|e| panic!("{e}"));
        let back = Checkpoints::load(d).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.files.keys().collect::<Vec<_>>(), ["in/new"]);
        assert_eq!(back.files["in/new"].offset, 2);
    }

    /// Ship stopped for over a week and its files not found by the first scans (a mount
    /// not up yet): nothing is forgotten, since the week counts ship's running time; an
    /// entry a week older than the others still is.
    #[test]
    fn a_week_stopped_does_not_count_towards_forgetting() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let d = dir.path();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |t| t.as_millis() as u64);
        let mut cp = Checkpoints::default();
        cp.set("in/recent".into(), state(1, now - FORGET_MS - 1000));
        cp.set("in/stale".into(), state(1, now - 2 * FORGET_MS - 1000));
        cp.save(d).unwrap_or_else(|e| panic!("{e}"));
        let mut cp = Checkpoints::load(d).unwrap_or_else(|e| panic!("{e}"));
        cp.forget_old(now, &HashSet::new());
        assert_eq!(cp.files.keys().collect::<Vec<_>>(), ["in/recent"]);
    }

    /// `checkpoints.json` deleted (as for a corrupt one) with its journal left: the
    /// journal is not applied to the new state, now or after the next snapshot.
    #[test]
    fn a_journal_left_without_its_snapshot_is_ignored() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let d = dir.path();
        let mut cp = Checkpoints::default();
        cp.set("in/a".into(), state(1, 0));
        cp.save(d).unwrap_or_else(|e| panic!("{e}"));
        cp.set("in/a".into(), state(99, 0));
        cp.save(d).unwrap_or_else(|e| panic!("{e}"));
        let stale = std::fs::read(Checkpoints::journal_path(d)).unwrap_or_default();
        std::fs::remove_file(Checkpoints::path(d)).unwrap_or_else(|e| panic!("{e}"));
        let mut cp = Checkpoints::load(d).unwrap_or_else(|e| panic!("{e}"));
        assert!(cp.files.is_empty());
        cp.set("in/a".into(), state(5, 0));
        cp.save(d).unwrap_or_else(|e| panic!("{e}"));
        // A crash between the new snapshot and its journal: the old journal is back.
        std::fs::write(Checkpoints::journal_path(d), &stale).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Checkpoints::load(d).map(|c| c.files["in/a"].offset), Ok(5));
    }
}
