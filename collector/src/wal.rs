//! The write-ahead log: what ingest acknowledges is here, on disk, checksummed.
//!
//! Layout: `{dir}/{first_seq:020}.wal` segments, each an 8-byte magic followed by entries
//! `len:u32 crc32:u32 seq:u64 appended_ms:u64 payload`, the crc covering seq, time and
//! payload; the payload is the records, postcard-encoded then zstd-compressed (records
//! repeat hosts, agents and paths, so the log is several times smaller than the input).
//! One writer thread appends and fsyncs groups of entries (group commit); every
//! sink reads with its own [`WalReader`] and reports how far it has delivered with
//! [`Wal::commit_cursor`]. A segment is deleted once every sink is past it.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use edgelog_record::Record;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::state_file::{sync_dir, write_atomic};

/// Position of an entry in the log; entries are numbered from 1 without gaps.
pub type Seq = u64;

/// Version 2: payloads are zstd-compressed postcard.
const MAGIC: &[u8; 8] = b"EDGWAL02";
const HEADER: usize = 24;
/// No single entry may exceed this; a bigger length field means corruption.
const MAX_ENTRY: usize = 512 << 20;
/// Decoded entries kept in memory so live sinks skip the disk and the decoding: at most
/// this many entries, holding at most [`CACHE_RECORDS`] records in all (a huge body is
/// read back from disk rather than pinned in memory).
const CACHE_ENTRIES: usize = 16;
const CACHE_RECORDS: usize = 32_768;
/// A reader stops adding entries to a batch once they hold this many records.
pub const READ_RECORDS: usize = 8_192;

/// Settings of the write-ahead log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalConfig {
    /// A segment file is closed and a new one started past this size, in bytes.
    pub segment_bytes: u64,
    /// Total size the log may reach; past it ingest answers 503 with Retry-After.
    pub max_bytes: u64,
    /// fsync every group commit before acknowledging. Turning this off trades crash
    /// safety of the last moments for speed; keep it on in production.
    pub fsync: bool,
}

/// The range of `wal.segment_bytes`: a segment holds at least one small entry and at most
/// what a scan on start reads in reasonable time.
pub const MIN_SEGMENT_BYTES: u64 = 4096;
pub const MAX_SEGMENT_BYTES: u64 = 4 << 30;
/// The largest `wal.max_bytes` accepted (1 PiB): beyond any disk, and far from overflow.
pub const MAX_LOG_BYTES: u64 = 1 << 50;

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            segment_bytes: 64 << 20,
            max_bytes: 4 << 30,
            fsync: true,
        }
    }
}

impl WalConfig {
    /// Checks the settings; names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return Err(format!(
                "wal.segment_bytes: must be from {MIN_SEGMENT_BYTES} to {MAX_SEGMENT_BYTES} (4 GiB), got {}",
                self.segment_bytes
            ));
        }
        // Checked: twice a huge segment size must not wrap to something small.
        let twice = self.segment_bytes.saturating_mul(2);
        if self.max_bytes < twice || self.max_bytes > MAX_LOG_BYTES {
            return Err(format!(
                "wal.max_bytes: must be from twice wal.segment_bytes ({twice}) to {MAX_LOG_BYTES} (1 PiB), got {}",
                self.max_bytes
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log is full ({used} of {max} bytes used); retry later")]
    Full { used: u64, max: u64 },
    #[error("write-ahead log is closed")]
    Closed,
    #[error(
        "write-ahead log in {dir} is in use by another process (is another collector running on this data dir?)"
    )]
    Locked { dir: PathBuf },
    #[error("write-ahead log i/o on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("corrupt write-ahead log entry in {path} at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("cannot encode records for the write-ahead log: {0}")]
    Encode(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_owned(),
        source,
    }
}

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
    /// Bumped whenever a failed group is cut from the active segment, so readers drop
    /// bytes of it they may have buffered past the committed end.
    rewinds: u64,
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
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One entry to append: its payload, and its records when they should be cached.
struct Part {
    records: Option<Arc<Vec<Record>>>,
    payload: Vec<u8>,
}

/// One request's entries, written in one group and answered together (with the last).
struct Append {
    parts: Vec<Part>,
    reply: oneshot::Sender<Result<Seq, WalError>>,
}

enum WriterMsg {
    Append(Append),
    Close,
}

/// Sizes and positions, for `/metrics` and `/readyz`.
#[derive(Debug, Clone, Serialize)]
pub struct WalStats {
    pub bytes: u64,
    pub max_bytes: u64,
    pub segments: usize,
    pub committed: Seq,
    pub cursors: BTreeMap<String, Seq>,
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

fn segment_path(dir: &Path, first_seq: Seq) -> PathBuf {
    dir.join(format!("{first_seq:020}.wal"))
}

fn cursor_path(dir: &Path, sink: &str) -> PathBuf {
    dir.join("cursors").join(sink)
}

/// Result of scanning one segment at open.
struct Scan {
    last_seq: Option<Seq>,
    valid_len: u64,
    problem: Option<String>,
}

/// Scans a segment from its start; `limit` is the next segment's first entry, where a
/// segment left behind after a failed write must end.
/// `end`: the byte offset a cut marker gives, past which entries belong to a refused group.
fn scan_segment(
    path: &Path,
    first_seq: Seq,
    limit: Option<Seq>,
    end: Option<u64>,
) -> Result<Scan, WalError> {
    let file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    if len < 8 || r.read_exact(&mut magic).is_err() || &magic != MAGIC {
        return Ok(Scan {
            last_seq: None,
            valid_len: 0,
            problem: Some("bad or missing segment header".into()),
        });
    }
    let mut offset = 8u64;
    let mut last = None;
    let mut expect = first_seq;
    let mut payload = Vec::new();
    loop {
        if offset == len {
            return Ok(Scan {
                last_seq: last,
                valid_len: offset,
                problem: None,
            });
        }
        if end.is_some_and(|e| offset >= e) {
            return Ok(Scan {
                last_seq: last,
                valid_len: offset,
                problem: Some("bytes of a refused group past a cut marker".into()),
            });
        }
        let mut h = [0u8; HEADER];
        let problem = match r.read_exact(&mut h) {
            Err(_) => Some("torn entry header".to_owned()),
            Ok(()) => {
                let n = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
                let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
                let seq = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
                if n > MAX_ENTRY {
                    Some(format!("entry length {n} is implausible"))
                } else {
                    payload.resize(n, 0);
                    if r.read_exact(&mut payload).is_err() {
                        Some("torn entry payload".to_owned())
                    } else if entry_crc(&h[8..], &payload) != crc {
                        Some("checksum mismatch".to_owned())
                    } else if seq != expect {
                        Some(format!("sequence {seq} where {expect} was expected"))
                    } else if limit.is_some_and(|l| seq >= l) {
                        Some(format!("entry {seq} belongs to the next segment"))
                    } else {
                        last = Some(seq);
                        expect = seq + 1;
                        offset += (HEADER + n) as u64;
                        None
                    }
                }
            }
        };
        if let Some(p) = problem {
            return Ok(Scan {
                last_seq: last,
                valid_len: offset,
                problem: Some(p),
            });
        }
    }
}

fn entry_crc(seq_and_time: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(seq_and_time);
    h.update(payload);
    h.finalize()
}

impl Wal {
    /// Opens (or creates) the log in `dir`, cutting a torn tail left by a crash.
    pub fn open(dir: &Path, cfg: WalConfig) -> Result<Wal, WalError> {
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
        // Append to the last segment if it is not full, else start a new one.
        let active = match segments.last() {
            Some(s) if s.bytes < cfg.segment_bytes => {
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
                rewinds: 0,
                cursors: BTreeMap::new(),
                saved: cursors,
            }),
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
        let raw = postcard::to_allocvec(records).map_err(|e| WalError::Encode(e.to_string()))?;
        zstd::bulk::compress(&raw, 1).map_err(|e| WalError::Encode(e.to_string()))
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
        self.send(vec![Part {
            records: Some(records),
            payload,
        }])
        .await
    }

    /// Appends several entries already encoded, in one group: all become durable or none
    /// does. They are not cached: a reader decodes them from disk one at a time, so a
    /// huge body is split into entries no sink must hold at once. Returns the last one.
    pub async fn append_payloads(&self, payloads: Vec<Vec<u8>>) -> Result<Seq, WalError> {
        let parts = payloads
            .into_iter()
            .map(|payload| Part {
                records: None,
                payload,
            })
            .collect();
        self.send(parts).await
    }

    async fn send(&self, parts: Vec<Part>) -> Result<Seq, WalError> {
        let (used, max) = (self.shared.lock().total_bytes, self.shared.cfg.max_bytes);
        if used >= max {
            return Err(WalError::Full { used, max });
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(WriterMsg::Append(Append { parts, reply }))
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
        WalReader {
            shared: self.shared.clone(),
            committed: self.shared.committed.subscribe(),
            next: start,
            open: None,
            hint: None,
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
        WalStats {
            bytes: st.total_bytes,
            max_bytes: self.shared.cfg.max_bytes,
            segments: st.segments.len(),
            committed: self.committed(),
            cursors: st.cursors.clone(),
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

struct ActiveSegment {
    first_seq: Seq,
    /// Opened for appending: every write lands at the end, also after a cut.
    file: File,
    bytes: u64,
    /// A failed group could not be cut from this file: where it must end. A cut marker
    /// (`{first_seq}.cut`) says so on disk too, in case the group's pages reach it anyway.
    pending_cut: Option<u64>,
}

impl ActiveSegment {
    fn create(dir: &Path, first_seq: Seq) -> Result<ActiveSegment, WalError> {
        let path = segment_path(dir, first_seq);
        let created = (|| {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)?;
            f.write_all(MAGIC)?;
            f.sync_all()?;
            sync_dir(dir)?;
            // Appending from here on: a write after a cut lands at the new end.
            OpenOptions::new().append(true).open(&path)
        })();
        match created {
            Ok(file) => Ok(ActiveSegment {
                first_seq,
                file,
                bytes: MAGIC.len() as u64,
                pending_cut: None,
            }),
            Err(e) => {
                // A half-made segment must not look like one at the next start.
                let _ = fs::remove_file(&path);
                Err(io_err(&path)(e))
            }
        }
    }
}

/// Bytes gathered into one group commit at most.
const GROUP_BYTES: usize = 16 << 20;

fn writer_loop(
    mut rx: mpsc::Receiver<WriterMsg>,
    mut seg: ActiveSegment,
    mut next: Seq,
    shared: Arc<Shared>,
) {
    let mut group = Vec::with_capacity(1 << 20);
    while let Some(first) = rx.blocking_recv() {
        let mut closing = false;
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut msg = Some(first);
        while let Some(m) = msg.take() {
            match m {
                WriterMsg::Append(a) => {
                    bytes += a.parts.iter().map(|p| p.payload.len()).sum::<usize>();
                    batch.push(a);
                }
                WriterMsg::Close => closing = true,
            }
            if bytes < GROUP_BYTES && !closing {
                msg = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            if let Err(e) = settle_cut(&mut seg, next, &shared) {
                refuse(batch, &e);
            } else {
                write_group(&mut seg, &mut next, batch, &mut group, &shared);
                if seg.bytes >= shared.cfg.segment_bytes
                    && let Err(e) = roll(&mut seg, next, &shared)
                {
                    tracing::error!(error = %e, "cannot start a new write-ahead log segment; staying on the current one");
                }
            }
        }
        if group.capacity() > 4 << 20 {
            group = Vec::with_capacity(1 << 20);
        }
        if closing {
            break;
        }
    }
    // A refused group's bytes must not be made durable here.
    if settle_cut(&mut seg, next, &shared).is_ok() {
        let _ = seg.file.sync_data();
    }
}

fn cut_marker_path(dir: &Path, first_seq: Seq) -> PathBuf {
    dir.join(format!("{first_seq:020}.cut"))
}

/// Cuts the active segment back to `at`, durably.
fn cut(seg: &ActiveSegment, at: u64) -> io::Result<()> {
    seg.file.set_len(at).and_then(|()| seg.file.sync_all())
}

/// Before a group is written: if a failed group could not be cut, try again; failing
/// that, continue in a new segment (the marker cuts the old one at the next start). No
/// group is written while a cut is pending in the active segment.
fn settle_cut(seg: &mut ActiveSegment, next: Seq, shared: &Shared) -> Result<(), WalError> {
    let Some(at) = seg.pending_cut else {
        return Ok(());
    };
    let path = segment_path(&shared.dir, seg.first_seq);
    let marker = cut_marker_path(&shared.dir, seg.first_seq);
    if cut(seg, at).is_ok() {
        match fs::remove_file(&marker) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // A marker left behind would cut this segment at `at` after entries that
            // will be acknowledged past it: go on in a new segment instead.
            Err(_) => return roll(seg, next, shared),
        }
        seg.pending_cut = None;
        tracing::info!(segment = %path.display(), "failed group cut from the write-ahead log");
        return Ok(());
    }
    roll(seg, next, shared)
}

/// Starts a new active segment at `next`. Never onto the active segment's own path: a
/// segment with no entry yet is kept (and stays cut-pending if it was).
fn roll(seg: &mut ActiveSegment, next: Seq, shared: &Shared) -> Result<(), WalError> {
    if next == seg.first_seq {
        return Err(WalError::Io {
            path: segment_path(&shared.dir, seg.first_seq),
            source: io::Error::other("a failed write could not be cut from the log yet"),
        });
    }
    let new = ActiveSegment::create(&shared.dir, next)?;
    let mut st = shared.lock();
    st.total_bytes += new.bytes;
    st.segments.push(Segment {
        first_seq: next,
        path: segment_path(&shared.dir, next),
        bytes: new.bytes,
    });
    *seg = new;
    Ok(())
}

/// Answers every append of a group with `e`: none of its records is acknowledged.
fn refuse(batch: Vec<Append>, e: &WalError) {
    for a in batch {
        let _ = a.reply.send(Err(match e {
            WalError::Io { path, source } => WalError::Io {
                path: path.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            other => WalError::Encode(other.to_string()),
        }));
    }
}

/// Whether an I/O error means the disk (or the quota) is full.
pub fn is_no_space(e: &io::Error) -> bool {
    // ENOSPC and EDQUOT on Linux.
    e.kind() == io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(28 | 122))
}

fn write_group(
    seg: &mut ActiveSegment,
    next: &mut Seq,
    batch: Vec<Append>,
    group: &mut Vec<u8>,
    shared: &Shared,
) {
    let start_bytes = seg.bytes;
    let start_seq = *next;
    let appended_ms = now_ms();
    let mut ends = Vec::with_capacity(batch.len());
    // The whole group is built in memory and handed to the kernel in one write: a
    // failure leaves nothing of it in any buffer of ours.
    group.clear();
    let mut off = seg.bytes;
    let parts = batch.iter().flat_map(|a| a.parts.iter());
    for (i, p) in parts.clone().enumerate() {
        let seq = start_seq + i as u64;
        let mut h = [0u8; HEADER];
        h[0..4].copy_from_slice(&(p.payload.len() as u32).to_le_bytes());
        h[8..16].copy_from_slice(&seq.to_le_bytes());
        h[16..24].copy_from_slice(&appended_ms.to_le_bytes());
        let crc = entry_crc(&h[8..], &p.payload);
        h[4..8].copy_from_slice(&crc.to_le_bytes());
        group.extend_from_slice(&h);
        group.extend_from_slice(&p.payload);
        off += (HEADER + p.payload.len()) as u64;
        ends.push(off);
    }
    let count = ends.len() as u64;
    let mut synced = true;
    let result = seg.file.write_all(group).and_then(|()| {
        if shared.cfg.fsync {
            synced = false;
            seg.file.sync_data()?;
            synced = true;
        }
        Ok(())
    });
    let path = segment_path(&shared.dir, seg.first_seq);
    match result {
        Ok(()) => {
            let added = off - seg.bytes;
            seg.bytes = off;
            *next = start_seq + count;
            {
                let mut st = shared.lock();
                st.total_bytes += added;
                if let Some(s) = st.segments.last_mut() {
                    s.bytes = seg.bytes;
                }
                for (i, p) in parts.enumerate() {
                    let Some(records) = &p.records else {
                        // Not cached: the cache must not hold entries from before this one.
                        st.cache.clear();
                        st.cached_records = 0;
                        continue;
                    };
                    st.cached_records += records.len();
                    st.cache.push_back(CachedEntry {
                        entry: Entry {
                            seq: start_seq + i as u64,
                            appended_ms,
                            records: records.clone(),
                        },
                        segment_first: seg.first_seq,
                        end_offset: ends[i],
                    });
                }
                while st.cache.len() > CACHE_ENTRIES || st.cached_records > CACHE_RECORDS {
                    match st.cache.pop_front() {
                        Some(c) => st.cached_records -= c.entry.records.len(),
                        None => break,
                    }
                }
            }
            shared.committed.send_replace(*next - 1);
            let mut last = start_seq;
            for a in batch {
                last += a.parts.len() as u64;
                let _ = a.reply.send(Ok(last - 1));
            }
        }
        Err(e) => {
            tracing::error!(
                segment = %path.display(), error = %e, fsync_failed = !synced,
                "write-ahead log append failed; refusing this group, nothing of it is acknowledged"
            );
            metrics::counter!("edgelog_wal_write_errors_total").increment(1);
            // Cut whatever reached the file, durably, so the log stays a clean sequence.
            // After a failed fsync the kernel may have dropped the group's pages: cutting
            // them is the only safe state. If the cut fails, a marker records where this
            // segment ends, and the next group retries the cut or starts a new segment.
            if let Err(cut_err) = cut(seg, start_bytes) {
                let marker = cut_marker_path(&shared.dir, seg.first_seq);
                let marked = write_atomic(&marker, start_bytes.to_string().as_bytes());
                tracing::error!(
                    segment = %path.display(), error = %cut_err, marker_written = marked.is_ok(),
                    "cannot cut the failed group yet; no group is written after it in this segment"
                );
                seg.pending_cut = Some(start_bytes);
            }
            shared.lock().rewinds += 1;
            refuse(batch, &WalError::Io { path, source: e });
        }
    }
}

struct OpenSegment {
    first_seq: Seq,
    reader: BufReader<File>,
    offset: u64,
    /// [`State::rewinds`] when the buffer was last filled from a known position.
    rewinds: u64,
}

/// A sink's view of the log: entries in order, from its cursor on.
pub struct WalReader {
    shared: Arc<Shared>,
    committed: watch::Receiver<Seq>,
    next: Seq,
    open: Option<OpenSegment>,
    /// Where the entry before `next` ended, when known from the cache.
    hint: Option<(Seq, u64)>,
}

impl WalReader {
    /// The next position this reader will return.
    pub fn position(&self) -> Seq {
        self.next
    }

    /// Waits until an entry past the cursor is durable. Returns false when the log is
    /// closed and drained.
    pub async fn wait(&mut self) -> bool {
        loop {
            if *self.committed.borrow_and_update() >= self.next {
                return true;
            }
            if self.committed.changed().await.is_err() {
                return *self.committed.borrow() >= self.next;
            }
        }
    }

    /// Whether every durable entry has been read.
    pub fn caught_up(&self) -> bool {
        *self.committed.borrow() < self.next
    }

    /// Reads up to `max` durable entries past the cursor, and no more once they hold
    /// [`READ_RECORDS`] records (a sink never holds many huge bodies at once). Blocking
    /// file I/O: call from a blocking context.
    pub fn read_available(&mut self, max: usize) -> Result<Vec<Entry>, WalError> {
        let committed = *self.committed.borrow();
        let mut out: Vec<Entry> = Vec::new();
        let mut records = 0;
        while self.next <= committed && out.len() < max && records < READ_RECORDS {
            if let Some(e) = out.last() {
                records += e.records.len();
                if records >= READ_RECORDS {
                    break;
                }
            }
            if let Some(e) = self.next_cached() {
                out.push(e);
                continue;
            }
            match self.next_from_disk() {
                Ok(e) => out.push(e),
                // What was read is handed over; the error comes back on the next call,
                // which starts at the entry that failed.
                Err(_) if !out.is_empty() => break,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn next_cached(&mut self) -> Option<Entry> {
        let st = self.shared.lock();
        let front = st.cache.front()?.entry.seq;
        let c = st
            .cache
            .get(usize::try_from(self.next.checked_sub(front)?).ok()?)?;
        self.hint = Some((c.segment_first, c.end_offset));
        self.next += 1;
        Some(c.entry.clone())
    }

    fn next_from_disk(&mut self) -> Result<Entry, WalError> {
        let want = self.next;
        let (seg_first, rewinds) = {
            let st = self.shared.lock();
            let oldest = st.segments.first().map_or(want, |s| s.first_seq);
            if want < oldest {
                // Deleted under us: only possible for a reader nobody waits for.
                self.next = oldest;
            }
            let first = st
                .segments
                .iter()
                .rev()
                .find(|s| s.first_seq <= self.next)
                .map_or(oldest, |s| s.first_seq);
            (first, st.rewinds)
        };
        let want = self.next;
        let dir = self.shared.dir.clone();
        if self.open.as_ref().is_none_or(|o| o.first_seq != seg_first) {
            let path = segment_path(&dir, seg_first);
            let mut f = File::open(&path).map_err(io_err(&path))?;
            let offset = match self.hint {
                Some((s, off)) if s == seg_first => off,
                _ => 8,
            };
            f.seek(SeekFrom::Start(offset)).map_err(io_err(&path))?;
            self.open = Some(OpenSegment {
                first_seq: seg_first,
                reader: BufReader::with_capacity(1 << 20, f),
                offset,
                rewinds,
            });
        } else if let Some(o) = self.open.as_mut() {
            let target = match self.hint {
                Some((s, off)) if s == seg_first => off,
                _ => o.offset,
            };
            // A failed group was cut since the buffer was filled: what it holds past the
            // committed end may be bytes of that group, not what is there now. Seeking
            // drops the buffer.
            if o.offset != target || o.rewinds != rewinds {
                let path = segment_path(&dir, seg_first);
                o.reader
                    .seek(SeekFrom::Start(target))
                    .map_err(io_err(&path))?;
                o.offset = target;
                o.rewinds = rewinds;
            }
        }
        self.hint = None;
        let path = segment_path(&dir, seg_first);
        let corrupt = |offset: u64, reason: String| WalError::Corrupt {
            path: path.clone(),
            offset,
            reason,
        };
        loop {
            let o = self.open.as_mut().ok_or(WalError::Closed)?;
            let mut h = [0u8; HEADER];
            if let Err(e) = o.reader.read_exact(&mut h) {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    // This segment is done; the entry is in the next one.
                    let missing = corrupt(o.offset, format!("entry {want} is missing"));
                    self.open = None;
                    self.hint = None;
                    let next_first = {
                        let st = self.shared.lock();
                        st.segments
                            .iter()
                            .find(|s| s.first_seq > seg_first)
                            .map(|s| s.first_seq)
                    };
                    return match next_first {
                        Some(f) if f <= want => self.next_from_disk(),
                        _ => Err(missing),
                    };
                }
                return Err(io_err(&path)(e));
            }
            let n = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
            let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
            let seq = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
            let appended_ms = u64::from_le_bytes(h[16..24].try_into().unwrap_or_default());
            let at = o.offset;
            if n > MAX_ENTRY {
                return Err(corrupt(at, format!("entry length {n} is implausible")));
            }
            o.offset += (HEADER + n) as u64;
            if seq < want {
                o.reader.seek_relative(n as i64).map_err(io_err(&path))?;
                continue;
            }
            let mut payload = vec![0u8; n];
            o.reader.read_exact(&mut payload).map_err(io_err(&path))?;
            if entry_crc(&h[8..], &payload) != crc {
                return Err(corrupt(at, "checksum mismatch".into()));
            }
            if seq != want {
                return Err(corrupt(
                    at,
                    format!("sequence {seq} where {want} was expected"),
                ));
            }
            let raw = zstd::bulk::decompress(&payload, MAX_ENTRY)
                .map_err(|e| corrupt(at, format!("undecompressable entry: {e}")))?;
            let records: Vec<Record> = postcard::from_bytes(&raw)
                .map_err(|e| corrupt(at, format!("undecodable entry: {e}")))?;
            self.next += 1;
            return Ok(Entry {
                seq,
                appended_ms,
                records: Arc::new(records),
            });
        }
    }
}
