//! A sink's view of the log: entries in order from its cursor, from the decoded cache
//! when it keeps up, else from disk.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::sync::Arc;

use edgelog_record::Record;
use tokio::sync::watch;

use crate::error::{WalError, io_err};
use crate::format::{HEADER, MAX_ENTRY, entry_crc, segment_path};
use crate::keys::is_marker;
use crate::{Entry, Seq, Shared};

/// A reader stops adding entries to a batch once they hold this many records.
pub const READ_RECORDS: usize = 8_192;

pub(crate) struct OpenSegment {
    first_seq: Seq,
    reader: BufReader<File>,
    offset: u64,
    /// [`State::rewinds`] when the buffer was last filled from a known position.
    rewinds: u64,
}

/// A sink's view of the log: entries in order, from its cursor on.
pub struct WalReader {
    pub(crate) pos: crate::pace::Place,
    pub(crate) shared: Arc<Shared>,
    pub(crate) committed: watch::Receiver<Seq>,
    pub(crate) next: Seq,
    pub(crate) open: Option<OpenSegment>,
    /// Where the entry before `next` ended, when known from the cache.
    pub(crate) hint: Option<(Seq, u64)>,
    /// Entries are decompressed here, reusing its context and buffer: a fresh buffer of
    /// the largest entry's size per entry cost a mapping and its page faults each time.
    pub(crate) unpacked: Unpacker,
}

/// A zstd context and an output buffer, reused from entry to entry.
pub(crate) struct Unpacker {
    context: Option<zstd::bulk::Decompressor<'static>>,
    buf: Vec<u8>,
}

impl Default for Unpacker {
    fn default() -> Self {
        Unpacker {
            context: zstd::bulk::Decompressor::new().ok(),
            buf: Vec::new(),
        }
    }
}

impl Unpacker {
    /// An entry's records: columns after their tag, or (written before them) postcard.
    pub(crate) fn records(&mut self, payload: &[u8]) -> Result<Vec<Record>, String> {
        let (columns, frame) = match payload.split_first() {
            Some((&crate::entry::COLUMNS_TAG, frame)) => (true, frame),
            _ => (false, payload),
        };
        let raw = self
            .unpack(frame)
            .map_err(|e| format!("undecompressable entry: {e}"))?;
        match columns {
            true => crate::entry::decode(raw),
            false => postcard::from_bytes(raw).map_err(|e| e.to_string()),
        }
        .map_err(|e| format!("undecodable entry: {e}"))
    }

    /// The decompressed payload (at most [`MAX_ENTRY`] bytes, as its frame says).
    fn unpack(&mut self, payload: &[u8]) -> Result<&[u8], String> {
        let size = zstd::zstd_safe::get_frame_content_size(payload)
            .map_err(|e| format!("{e:?}"))?
            .ok_or("the frame does not say its size")?;
        let size = usize::try_from(size).map_err(|e| e.to_string())?;
        if size > MAX_ENTRY {
            return Err(format!(
                "{size} bytes decompressed, more than an entry may hold"
            ));
        }
        self.buf.clear();
        // Keep a large buffer only while entries are large.
        if self.buf.capacity() > 4 * size.max(1 << 20) {
            self.buf = Vec::new();
        }
        self.buf.reserve(size);
        let context = match &mut self.context {
            Some(c) => c,
            None => self
                .context
                .insert(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?),
        };
        context
            .decompress_to_buffer(payload, &mut self.buf)
            .map_err(|e| e.to_string())?;
        Ok(&self.buf)
    }
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
        if !out.is_empty() {
            self.pos.moved(self.next);
            self.shared.trim_read();
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
                        Some(f) => {
                            // Entries lost to a corrupt spot (cut at start) leave a gap
                            // between segments: say so, and go on after it rather than
                            // stall this sink forever.
                            tracing::error!(
                                from = want,
                                to = f - 1,
                                "write-ahead log entries are missing (lost to corruption found at start); skipping them"
                            );
                            metrics::counter!("edgelog_wal_missing_entries_total")
                                .increment(f - want);
                            self.next = f;
                            self.next_from_disk()
                        }
                        None => Err(missing),
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
            if is_marker(&payload) {
                // An idempotency key: an entry without records, so positions stay gapless.
                self.next += 1;
                return Ok(Entry {
                    seq,
                    appended_ms,
                    records: Arc::new(Vec::new()),
                });
            }
            let records = self
                .unpacked
                .records(&payload)
                .map_err(|e| corrupt(at, e))?;
            self.next += 1;
            return Ok(Entry {
                seq,
                appended_ms,
                records: Arc::new(records),
            });
        }
    }
}
