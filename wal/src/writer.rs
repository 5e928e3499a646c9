//! The writer thread: groups of entries appended and fsynced together (group commit), and
//! what a failed write or fsync leaves behind (nothing).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use edgelog_record::Record;
use tokio::sync::{mpsc, oneshot};

use crate::error::{WalError, io_err};
use crate::format::{HEADER, MAGIC, cut_marker_path, entry_crc, segment_path};
use crate::keys::KeyAnswer;
use crate::state_file::{sync_dir, write_atomic};
use crate::{CACHE_ENTRIES, CACHE_RECORDS, CachedEntry, Entry, Segment, Seq, Shared, now_ms};

/// One entry to append: its payload, and its records when they should be cached.
pub(crate) struct Part {
    pub(crate) records: Option<Arc<Vec<Record>>>,
    pub(crate) payload: Vec<u8>,
}

/// The idempotency key of an append, remembered once its group is durable.
pub(crate) struct Keyed {
    pub(crate) key: String,
    pub(crate) accepted: u64,
    pub(crate) rejected_total: u64,
}

/// One request's entries, written in one group and answered together (with the last).
pub(crate) struct Append {
    pub(crate) parts: Vec<Part>,
    /// Its key, when its first part is the key's marker.
    pub(crate) key: Option<Keyed>,
    pub(crate) reply: oneshot::Sender<Result<Seq, WalError>>,
}

pub(crate) enum WriterMsg {
    Append(Append),
    Close,
}

pub(crate) struct ActiveSegment {
    pub(crate) first_seq: Seq,
    /// Opened for appending: every write lands at the end, also after a cut.
    pub(crate) file: File,
    pub(crate) bytes: u64,
    /// A failed group could not be cut from this file: where it must end. A cut marker
    /// (`{first_seq}.cut`) says so on disk too, in case the group's pages reach it anyway.
    pub(crate) pending_cut: Option<u64>,
}

impl ActiveSegment {
    pub(crate) fn create(dir: &Path, first_seq: Seq) -> Result<ActiveSegment, WalError> {
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

pub(crate) fn writer_loop(
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
            let mut evicted = Vec::new();
            {
                let mut st = shared.lock();
                st.total_bytes += added;
                st.write_error = None;
                if let Some(s) = st.segments.last_mut() {
                    s.bytes = seg.bytes;
                }
                for (i, p) in parts.enumerate() {
                    let Some(records) = &p.records else {
                        // Not cached: the cache must not hold entries from before this one.
                        evicted.extend(st.cache.drain(..).map(|c| c.entry.records));
                        st.cached_records = 0;
                        st.recent.clear();
                        st.recent_records = 0;
                        continue;
                    };
                    st.recent.push_back(records.len());
                    st.recent_records += records.len();
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
                        Some(c) => {
                            st.cached_records -= c.entry.records.len();
                            evicted.push(c.entry.records);
                        }
                        None => break,
                    }
                }
                while st.recent.len() > CACHE_ENTRIES || st.recent_records > CACHE_RECORDS {
                    match st.recent.pop_front() {
                        Some(n) => st.recent_records -= n,
                        None => break,
                    }
                }
                let (entries, records) = (st.recent.len(), st.recent_records);
                shared.pacer.cache_changed(entries, records);
            }
            // Keys are remembered before anyone sees their entries: a sink could deliver
            // them and have their segment deleted before the request is answered.
            let mut keyed = batch.iter().filter_map(|a| a.key.as_ref()).peekable();
            if keyed.peek().is_some() {
                let mut keys = shared.keys();
                for k in keyed {
                    let answer = KeyAnswer {
                        accepted: k.accepted,
                        rejected_total: k.rejected_total,
                        appended_ms,
                    };
                    keys.insert(&k.key, answer, now_ms());
                }
            }
            shared.committed.send_replace(*next - 1);
            let mut last = start_seq;
            for a in batch {
                last += a.parts.len() as u64;
                // The log is done with the records before it answers.
                drop(a.parts);
                let _ = a.reply.send(Ok(last - 1));
            }
            // Freed after the lock and the answers: thousands of strings take a while.
            drop(evicted);
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
            {
                let mut st = shared.lock();
                st.rewinds += 1;
                st.write_error = Some((now_ms(), e.to_string(), crate::is_no_space(&e)));
            }
            refuse(batch, &WalError::Io { path, source: e });
        }
    }
}
