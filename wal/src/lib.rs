//! The write-ahead log: what ingest acknowledges is here, on disk, checksummed.
//!
//! Layout: `{dir}/{first_seq:020}.wal` segments, each an 8-byte magic followed by entries
//! `len:u32 crc32:u32 seq:u64 appended_ms:u64 payload`, the crc covering seq, time and
//! payload; the payload is a tag byte and the records column by column, zstd-compressed
//! (`entry`; records repeat hosts, agents and paths, so the log is several times smaller
//! than the input). Entries written before the columns are read too: postcard,
//! zstd-compressed, untagged.
//! One writer thread appends and fsyncs groups of entries (group commit); every
//! sink reads with its own [`WalReader`] and reports how far it has delivered with
//! [`Wal::commit_cursor`]. A segment is deleted once every sink is past it.
//!
//! Idempotency keys ([`Wal::append_keyed`]) are marker entries in the same group as their
//! records, plus a journal `{dir}/idempotency-keys` that outlives deleted segments (see
//! `keys`).
//!
//! Modules: [`config`] (settings and their ranges), `format` (entry layout, checksums,
//! the scan on open), `keys` (idempotency keys: markers, journal, bounds), `writer`
//! (group commit and what a failed write leaves), `reader`
//! (a sink's view, the decoded cache), [`state_file`] (atomic state files).

mod config;
mod entry;
mod error;
mod format;
mod keys;
mod pace;
mod reader;
pub mod state_file;
mod writer;

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use edgelog_record::Record;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

pub use config::{MAX_LOG_BYTES, MAX_SEGMENT_BYTES, MIN_SEGMENT_BYTES, WalConfig};
pub use entry::MAX_ENTRY_RECORDS;
pub use error::{WalError, is_no_space};
pub use keys::{KEY_JOURNAL, KeyAnswer, KeyLimits, MAX_KEY_BYTES, check_key};
pub use pace::{Admission, PACE_AHEAD, PACE_FAR, PACE_IDLE_MS};
pub use reader::{READ_RECORDS, WalReader};

use error::io_err;
use format::{MAGIC, cut_marker_path, scan_segment, segment_path};

/// A segment of this size holds no entry.
const MAGIC_LEN: u64 = MAGIC.len() as u64;
use keys::{KeyIndex, Marker, encode_marker};
use state_file::write_atomic;
use writer::{ActiveSegment, Append, Keyed, Part, WriterMsg, writer_loop};

/// Position of an entry in the log; entries are numbered from 1 without gaps.
pub type Seq = u64;

/// Decoded entries kept in memory so live sinks skip the disk and the decoding: at most
/// this many entries, holding at most [`CACHE_RECORDS`] records in all (a huge body is
/// read back from disk rather than pinned in memory), and none every reader has read
/// (`Shared::trim_read`).
const CACHE_ENTRIES: usize = 16;
const CACHE_RECORDS: usize = 32_768;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One entry as a reader sees it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: Seq,
    /// When the entry was appended, milliseconds since the epoch.
    pub appended_ms: u64,
    pub records: Arc<Vec<Record>>,
}

#[derive(Debug)]
struct Segment {
    first_seq: Seq,
    path: PathBuf,
    bytes: u64,
}

struct CachedEntry {
    entry: Entry,
    segment_first: Seq,
    end_offset: u64,
}

struct State {
    segments: Vec<Segment>,
    total_bytes: u64,
    cache: VecDeque<CachedEntry>,
    /// Records held by `cache`.
    cached_records: usize,
    /// Sizes of the entries the cache would hold were none read yet, and their sum: for
    /// pacing, which goes by the sizes of the last entries, not by what is left unread.
    recent: VecDeque<usize>,
    recent_records: usize,
    /// Bumped whenever a failed group is cut from the active segment, so readers drop
    /// bytes of it they may have buffered past the committed end.
    rewinds: u64,
    /// When the last group failed, why, and whether for lack of space; cleared by a
    /// group written.
    write_error: Option<(u64, String, bool)>,
    /// Delivered position of each registered sink.
    cursors: BTreeMap<String, Seq>,
    /// Positions saved on disk at open, by sink; a sink takes part once it registers.
    saved: BTreeMap<String, Seq>,
}

struct Shared {
    dir: PathBuf,
    cfg: WalConfig,
    committed: watch::Sender<Seq>,
    state: Mutex<State>,
    /// Idempotency keys; may be locked while holding `state`, never the other way.
    keys: Mutex<KeyIndex>,
    /// The readers' positions, for [`Wal::pace`].
    pacer: pace::Pacer,
}

impl Shared {
    fn keys(&self) -> MutexGuard<'_, KeyIndex> {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Lets the cache go of the entries every reader has read. Readers never go back, so
    /// the cache would only keep them for a reader that registers later (which reads
    /// from disk); freed now, their records go while still in the CPU's caches, by the
    /// last reader to drop them, and hold no memory meanwhile.
    fn trim_read(&self) {
        let slowest = self.pacer.slowest();
        let mut gone = Vec::new();
        {
            let mut st = self.lock();
            while st.cache.front().is_some_and(|c| c.entry.seq < slowest) {
                if let Some(c) = st.cache.pop_front() {
                    st.cached_records -= c.entry.records.len();
                    gone.push(c);
                }
            }
        }
        drop(gone);
    }
}

/// Sizes and positions, for `/metrics` and `/readyz`.
#[derive(Debug, Clone, Serialize)]
pub struct WalStats {
    pub bytes: u64,
    pub max_bytes: u64,
    pub segments: usize,
    pub committed: Seq,
    pub cursors: BTreeMap<String, Seq>,
    /// The last write error, while the last group written failed (within the last
    /// [`WRITE_ERROR_SHOWN_MS`]): ingest is refusing.
    pub write_error: Option<String>,
    /// Whether that error is a full disk or quota.
    pub no_space: bool,
}

/// How long a failed write keeps the log reported as failing without a newer success:
/// long enough for a load balancer to notice, short enough that it sends traffic again
/// (the next write is what tells whether space returned).
pub const WRITE_ERROR_SHOWN_MS: u64 = 5_000;

/// A keyed request's entries: see [`Wal::append_keyed`].
pub enum KeyedBody {
    /// One entry, with its records for the log's cache (from [`Wal::encode`]).
    One(Arc<Vec<Record>>, Vec<u8>),
    /// Several entries, each with its records for the cache (from [`Wal::encode`]).
    Many(Vec<(Arc<Vec<Record>>, Vec<u8>)>),
}

/// Handle to the log; cheap to clone.
#[derive(Clone)]
pub struct Wal {
    shared: Arc<Shared>,
    tx: mpsc::Sender<WriterMsg>,
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// Held open for the life of the log: the exclusive lock on `{dir}/LOCK`.
    _lock: Arc<File>,
}

fn cursor_path(dir: &Path, sink: &str) -> PathBuf {
    dir.join("cursors").join(sink)
}

impl Wal {
    /// Opens (or creates) the log in `dir`, cutting a torn tail left by a crash; keys are
    /// remembered as [`KeyLimits::default`] says.
    pub fn open(dir: &Path, cfg: WalConfig) -> Result<Wal, WalError> {
        Wal::open_with_keys(dir, cfg, KeyLimits::default())
    }

    /// Opens (or creates) the log in `dir`, cutting a torn tail left by a crash (and a
    /// keyed group that is not whole); idempotency keys are remembered within `limits`.
    pub fn open_with_keys(dir: &Path, cfg: WalConfig, limits: KeyLimits) -> Result<Wal, WalError> {
        fs::create_dir_all(dir.join("cursors")).map_err(io_err(dir))?;
        // One writer per log: a second collector on the same data dir would interleave.
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(WalError::Locked {
                    dir: dir.to_owned(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        let mut firsts: Vec<Seq> = Vec::new();
        for e in fs::read_dir(dir).map_err(io_err(dir))? {
            let e = e.map_err(io_err(dir))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if let Some(first) = name.strip_suffix(".wal").and_then(|s| s.parse().ok()) {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();

        let mut cursors = BTreeMap::new();
        for e in fs::read_dir(dir.join("cursors")).map_err(io_err(dir))? {
            let e = e.map_err(io_err(dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                continue;
            }
            let text = fs::read_to_string(e.path()).map_err(io_err(&e.path()))?;
            if let Ok(seq) = text.trim().parse::<Seq>() {
                cursors.insert(name, seq);
            }
        }
        let max_cursor = cursors.values().copied().max().unwrap_or(0);

        let mut segments = Vec::new();
        let mut markers = Vec::new();
        let mut last_seq = 0;
        for (i, &first) in firsts.iter().enumerate() {
            let path = segment_path(dir, first);
            // A segment ends where the next one holding entries begins (one left behind
            // by a failed write may hold a cut-off group past that point).
            let limit = firsts[i + 1..]
                .iter()
                .copied()
                .find(|&f| fs::metadata(segment_path(dir, f)).is_ok_and(|m| m.len() > 8));
            // A failed group that could not be cut at run time left a marker of where the
            // segment ends.
            let marker = cut_marker_path(dir, first);
            let end = fs::read_to_string(&marker)
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok());
            let scan = scan_segment(&path, first, limit, end)?;
            if let Some(problem) = &scan.problem {
                let len = fs::metadata(&path).map_err(io_err(&path))?.len();
                tracing::warn!(
                    segment = %path.display(), offset = scan.valid_len, cut_bytes = len - scan.valid_len,
                    last_segment = i + 1 == firsts.len(), %problem,
                    "cutting write-ahead log after the last good entry"
                );
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                f.set_len(scan.valid_len).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
            }
            if marker.exists() {
                fs::remove_file(&marker).map_err(io_err(&marker))?;
            }
            // An empty segment is kept only as the last one, where the next entry goes.
            let stray = scan.last_seq.is_none() && (i + 1 < firsts.len() || first <= last_seq);
            if scan.valid_len < 8 || stray {
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            if let Some(l) = scan.last_seq {
                last_seq = l;
            }
            markers.extend(scan.keys);
            segments.push(Segment {
                first_seq: first,
                path,
                bytes: scan.valid_len,
            });
        }
        let next = last_seq
            .max(max_cursor)
            .max(segments.last().map_or(0, |s| s.first_seq.saturating_sub(1)))
            + 1;
        // Append to the last segment if it is not full and the next entry follows its last
        // one; else start a new one. After a cut that lost entries some sink had already
        // delivered, the numbers go on past them: a new segment keeps every segment a
        // gapless sequence (appending would put them behind the cut, to be cut again).
        let follows = |s: &Segment| {
            if s.bytes > MAGIC_LEN {
                last_seq + 1 == next
            } else {
                s.first_seq == next
            }
        };
        let active = match segments.last() {
            Some(s) if s.bytes < cfg.segment_bytes && follows(s) => {
                let f = OpenOptions::new()
                    .append(true)
                    .open(&s.path)
                    .map_err(io_err(&s.path))?;
                ActiveSegment {
                    first_seq: s.first_seq,
                    file: f,
                    bytes: s.bytes,
                    pending_cut: None,
                }
            }
            _ => {
                let seg = ActiveSegment::create(dir, next)?;
                segments.push(Segment {
                    first_seq: next,
                    path: segment_path(dir, next),
                    bytes: seg.bytes,
                });
                seg
            }
        };
        let total_bytes = segments.iter().map(|s| s.bytes).sum();
        let keys = KeyIndex::open(dir, limits, markers, now_ms())?;

        let (committed, _) = watch::channel(next - 1);
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            cfg,
            committed,
            // Cursors of sinks that are gone must not pin segments forever: only sinks
            // that register a reader take part.
            state: Mutex::new(State {
                segments,
                total_bytes,
                cache: VecDeque::new(),
                cached_records: 0,
                recent: VecDeque::new(),
                recent_records: 0,
                rewinds: 0,
                write_error: None,
                cursors: BTreeMap::new(),
                saved: cursors,
            }),
            keys: Mutex::new(keys),
            pacer: pace::Pacer::default(),
        });
        let (tx, rx) = mpsc::channel(4096);
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer_loop(rx, active, next, writer_shared))
            .map_err(io_err(dir))?;
        tracing::info!(dir = %dir.display(), next_seq = next, "write-ahead log open");
        Ok(Wal {
            shared,
            tx,
            writer: Arc::new(Mutex::new(Some(writer))),
            _lock: Arc::new(lock),
        })
    }

    /// Encodes records into an entry payload. CPU work: callers on an async runtime may
    /// run it on a blocking thread and hand the result to [`Wal::append_encoded`].
    pub fn encode(records: &[Record]) -> Result<Vec<u8>, WalError> {
        /// A context and two buffers, reused: a fresh context, or a buffer grown by
        /// doubling, cost an allocation, copies and page faults per entry.
        #[derive(Default)]
        struct Packer {
            zstd: Option<zstd::bulk::Compressor<'static>>,
            raw: Vec<u8>,
            packed: Vec<u8>,
        }
        /// Packers kept between entries. Shared, not one per thread: the blocking pool
        /// runs up to eight threads, and a packer holds a context and up to 4 MiB of
        /// buffers. More may be in use at once; those past four are dropped after.
        static PACKERS: std::sync::Mutex<Vec<Packer>> = std::sync::Mutex::new(Vec::new());
        const KEEP_PACKERS: usize = 4;
        /// Buffers past this size are not kept for the next entry (a 1,000-record body
        /// needs about 0.5 MiB).
        const KEEP: usize = 2 << 20;
        let taken = PACKERS.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut p = taken.unwrap_or_default();
        let out = (|| {
            let Packer { zstd, raw, packed } = &mut p;
            raw.clear();
            entry::encode(records, raw).map_err(WalError::Encode)?;
            let c = match zstd {
                Some(c) => c,
                None => zstd.insert(
                    zstd::bulk::Compressor::new(1).map_err(|e| WalError::Encode(e.to_string()))?,
                ),
            };
            packed.clear();
            packed.reserve(zstd::zstd_safe::compress_bound(raw.len()));
            c.compress_to_buffer(raw.as_slice(), &mut *packed)
                .map_err(|e| WalError::Encode(e.to_string()))?;
            // Exactly its size: the log's cache holds the payload a while.
            let mut payload = Vec::with_capacity(1 + packed.len());
            payload.push(entry::COLUMNS_TAG);
            payload.extend_from_slice(packed);
            Ok(payload)
        })();
        for buf in [&mut p.raw, &mut p.packed] {
            if buf.capacity() > KEEP {
                *buf = Vec::new();
            }
        }
        let mut kept = PACKERS.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < KEEP_PACKERS {
            kept.push(p);
        }
        out
    }

    /// The records of a payload [`Wal::encode`] made (or an earlier build's), as a reader
    /// decodes an entry from disk.
    pub fn decode(payload: &[u8]) -> Result<Vec<Record>, WalError> {
        reader::Unpacker::default()
            .records(payload)
            .map_err(WalError::Decode)
    }

    /// Appends the records as one entry; returns once they are durable.
    pub async fn append(&self, records: Arc<Vec<Record>>) -> Result<Seq, WalError> {
        let payload = Wal::encode(&records)?;
        self.append_encoded(records, payload).await
    }

    /// Appends records already encoded by [`Wal::encode`]; returns once they are durable.
    pub async fn append_encoded(
        &self,
        records: Arc<Vec<Record>>,
        payload: Vec<u8>,
    ) -> Result<Seq, WalError> {
        self.send(
            vec![Part {
                records: Some(records),
                payload,
            }],
            None,
        )
        .await
    }

    /// Appends several entries already encoded by [`Wal::encode`], each with its records,
    /// in one group: all become durable or none does. Each is cached like one appended
    /// alone (the cache counts entries and records: callers keep entries small, as ingest
    /// does, so that no sink holds a huge body at once). Returns the last one.
    pub async fn append_entries(
        &self,
        entries: Vec<(Arc<Vec<Record>>, Vec<u8>)>,
    ) -> Result<Seq, WalError> {
        let parts = entries
            .into_iter()
            .map(|(records, payload)| Part {
                records: Some(records),
                payload,
            })
            .collect();
        self.send(parts, None).await
    }

    /// Appends a request's entries with its idempotency key, in one group: a marker entry
    /// holding the key and the answer given (`accepted`, `rejected_total`), then the
    /// entries. The records and the key become durable together or not at all (a group
    /// not whole is cut on open); once durable, [`Wal::lookup_key`] finds the key, also
    /// after a restart, for at least the limits' time (unless more keys come after it
    /// than the limits keep). Returns the last entry.
    pub async fn append_keyed(
        &self,
        key: &str,
        accepted: u64,
        rejected_total: u64,
        body: KeyedBody,
    ) -> Result<Seq, WalError> {
        let key = check_key(key.as_bytes())
            .map_err(|e| WalError::Encode(format!("idempotency key: {e}")))?
            .to_owned();
        let entries = match &body {
            KeyedBody::One(..) => 1,
            KeyedBody::Many(p) => p.len(),
        };
        let marker = encode_marker(&Marker {
            key: key.clone(),
            entries: u32::try_from(entries)
                .map_err(|_| WalError::Encode("too many entries in one group".into()))?,
            accepted,
            rejected_total,
        });
        let mut parts = Vec::with_capacity(entries + 1);
        // Cached as an entry without records, so the body's entry may be cached after it.
        parts.push(Part {
            records: Some(Arc::new(Vec::new())),
            payload: marker,
        });
        match body {
            KeyedBody::One(records, payload) => parts.push(Part {
                records: Some(records),
                payload,
            }),
            KeyedBody::Many(entries) => {
                parts.extend(entries.into_iter().map(|(records, payload)| Part {
                    records: Some(records),
                    payload,
                }))
            }
        }
        let keyed = Keyed {
            key,
            accepted,
            rejected_total,
        };
        self.send(parts, Some(keyed)).await
    }

    /// The answer given to the request that recorded `key`, if it is remembered.
    pub fn lookup_key(&self, key: &str) -> Option<KeyAnswer> {
        self.shared.keys().lookup(key, now_ms())
    }

    /// Idempotency keys remembered.
    pub fn key_count(&self) -> usize {
        self.shared.keys().len()
    }

    async fn send(&self, parts: Vec<Part>, key: Option<Keyed>) -> Result<Seq, WalError> {
        let (used, max) = (self.shared.lock().total_bytes, self.shared.cfg.max_bytes);
        if used >= max {
            return Err(WalError::Full { used, max });
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(WriterMsg::Append(Append { parts, key, reply }))
            .await
            .map_err(|_| WalError::Closed)?;
        rx.await.map_err(|_| WalError::Closed)?
    }

    /// Whether the log has reached its size bound.
    pub fn is_full(&self) -> bool {
        self.shared.lock().total_bytes >= self.shared.cfg.max_bytes
    }

    /// Highest durable position.
    pub fn committed(&self) -> Seq {
        *self.shared.committed.borrow()
    }

    /// A reader for a sink, starting after the sink's saved position.
    pub fn reader(&self, sink: &str) -> WalReader {
        let mut st = self.shared.lock();
        let saved = st.saved.get(sink).copied().unwrap_or(0);
        let oldest = st.segments.first().map_or(1, |s| s.first_seq);
        let start = (saved + 1).max(oldest);
        st.cursors.insert(sink.to_owned(), start - 1);
        drop(st);
        let pos = pace::Place::new(&self.shared, start);
        WalReader {
            pos,
            shared: self.shared.clone(),
            committed: self.shared.committed.subscribe(),
            next: start,
            open: None,
            hint: None,
            unpacked: Default::default(),
        }
    }

    /// Records that `sink` has delivered everything up to `seq`; persists it and deletes
    /// segments every sink is past.
    pub fn commit_cursor(&self, sink: &str, seq: Seq) -> Result<(), WalError> {
        let path = cursor_path(&self.shared.dir, sink);
        write_atomic(&path, seq.to_string().as_bytes()).map_err(io_err(&path))?;
        let doomed: Vec<PathBuf> = {
            let mut st = self.shared.lock();
            st.cursors.insert(sink.to_owned(), seq);
            let min = st.cursors.values().copied().min().unwrap_or(0);
            if st.segments.len() > 1 && st.segments[1].first_seq <= min + 1 {
                // The keys in the segments' markers must outlive them: in the journal.
                // Under the state lock, so no segment rolls over meanwhile.
                self.shared.keys().sync()?;
            }
            let mut doomed = Vec::new();
            // A segment ends where the next begins; the active (last) one always stays.
            while st.segments.len() > 1 && st.segments[1].first_seq <= min + 1 {
                let seg = st.segments.remove(0);
                st.total_bytes -= seg.bytes;
                doomed.push(seg.path);
            }
            doomed
        };
        for p in doomed {
            fs::remove_file(&p).map_err(io_err(&p))?;
            tracing::debug!(segment = %p.display(), "deleted delivered segment");
        }
        Ok(())
    }

    pub fn stats(&self) -> WalStats {
        let st = self.shared.lock();
        let recent = st
            .write_error
            .as_ref()
            .filter(|(at, _, _)| now_ms().saturating_sub(*at) < WRITE_ERROR_SHOWN_MS);
        WalStats {
            bytes: st.total_bytes,
            max_bytes: self.shared.cfg.max_bytes,
            segments: st.segments.len(),
            committed: self.committed(),
            cursors: st.cursors.clone(),
            write_error: recent.map(|(_, e, _)| e.clone()),
            no_space: recent.is_some_and(|(_, _, n)| *n),
        }
    }

    /// Stops the writer after the appends already queued; waits for it.
    pub async fn close(&self) {
        // Other clones may still hold senders, so say it rather than drop ours.
        let _ = self.tx.send(WriterMsg::Close).await;
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}
