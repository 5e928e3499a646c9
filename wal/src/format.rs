//! The on-disk format: segment files, entry headers, checksums, and the scan on open that
//! finds where a segment's good entries end.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::Seq;
use crate::error::{WalError, io_err};
use crate::keys::{KeyAnswer, decode_marker, is_marker};

/// Version 2: payloads are zstd-compressed postcard, or (tagged `0x01`, see `entry`) columns.
pub(crate) const MAGIC: &[u8; 8] = b"EDGWAL02";
pub(crate) const HEADER: usize = 24;
/// No single entry may exceed this; a bigger length field means corruption.
pub(crate) const MAX_ENTRY: usize = 512 << 20;

pub(crate) fn segment_path(dir: &Path, first_seq: Seq) -> PathBuf {
    dir.join(format!("{first_seq:020}.wal"))
}

pub(crate) fn cut_marker_path(dir: &Path, first_seq: Seq) -> PathBuf {
    dir.join(format!("{first_seq:020}.cut"))
}

/// Result of scanning one segment at open.
pub(crate) struct Scan {
    pub(crate) last_seq: Option<Seq>,
    pub(crate) valid_len: u64,
    pub(crate) problem: Option<String>,
    /// Keys of the whole keyed groups found, with their answers.
    pub(crate) keys: Vec<(String, KeyAnswer)>,
}

/// A keyed group whose entries have not all been seen yet.
struct OpenGroup {
    /// Where its marker starts, and its sequence number.
    offset: u64,
    seq: Seq,
    /// The group's last entry.
    last: Seq,
    key: String,
    answer: KeyAnswer,
}

/// Scans a segment from its start; `limit` is the next segment's first entry, where a
/// segment left behind after a failed write must end.
/// `end`: the byte offset a cut marker gives, past which entries belong to a refused group.
/// A keyed group (a key marker and the entries it counts) that is not whole is cut: its
/// records and its key are durable together or not at all.
pub(crate) fn scan_segment(
    path: &Path,
    first_seq: Seq,
    limit: Option<Seq>,
    end: Option<u64>,
) -> Result<Scan, WalError> {
    let mut group = None;
    let mut scan = scan_entries(path, first_seq, limit, end, &mut group)?;
    if let Some(g) = group {
        scan.valid_len = g.offset;
        scan.last_seq = (g.seq > first_seq).then(|| g.seq - 1);
        let why = format!(
            "keyed group of entries {} to {} is not whole",
            g.seq, g.last
        );
        scan.problem = Some(match scan.problem.take() {
            Some(p) => format!("{p}; {why}"),
            None => why,
        });
    }
    Ok(scan)
}

fn scan_entries(
    path: &Path,
    first_seq: Seq,
    limit: Option<Seq>,
    end: Option<u64>,
    group: &mut Option<OpenGroup>,
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
            keys: Vec::new(),
        });
    }
    let mut offset = 8u64;
    let mut last = None;
    let mut expect = first_seq;
    let mut payload = Vec::new();
    let mut keys = Vec::new();
    loop {
        if offset == len {
            return Ok(Scan {
                last_seq: last,
                valid_len: offset,
                problem: None,
                keys,
            });
        }
        if end.is_some_and(|e| offset >= e) {
            return Ok(Scan {
                last_seq: last,
                valid_len: offset,
                problem: Some("bytes of a refused group past a cut marker".into()),
                keys,
            });
        }
        let mut h = [0u8; HEADER];
        let problem = match r.read_exact(&mut h) {
            Err(_) => Some("torn entry header".to_owned()),
            Ok(()) => {
                let n = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
                let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
                let seq = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
                let appended_ms = u64::from_le_bytes(h[16..24].try_into().unwrap_or_default());
                if n > MAX_ENTRY {
                    Some(format!("entry length {n} is implausible"))
                } else {
                    payload.resize(n, 0);
                    let problem = if r.read_exact(&mut payload).is_err() {
                        Some("torn entry payload".to_owned())
                    } else if entry_crc(&h[8..], &payload) != crc {
                        Some("checksum mismatch".to_owned())
                    } else if seq != expect {
                        Some(format!("sequence {seq} where {expect} was expected"))
                    } else if limit.is_some_and(|l| seq >= l) {
                        Some(format!("entry {seq} belongs to the next segment"))
                    } else if is_marker(&payload) && group.is_some() {
                        Some(format!("key marker {seq} inside a keyed group"))
                    } else if is_marker(&payload) {
                        match decode_marker(&payload) {
                            Err(e) => Some(e),
                            Ok(m) => {
                                *group = Some(OpenGroup {
                                    offset,
                                    seq,
                                    last: seq + u64::from(m.entries),
                                    key: m.key,
                                    answer: KeyAnswer {
                                        accepted: m.accepted,
                                        rejected_total: m.rejected_total,
                                        appended_ms,
                                    },
                                });
                                None
                            }
                        }
                    } else {
                        None
                    };
                    if problem.is_none() {
                        if group.as_ref().is_some_and(|g| g.last == seq)
                            && let Some(g) = group.take()
                        {
                            keys.push((g.key, g.answer));
                        }
                        last = Some(seq);
                        expect = seq + 1;
                        offset += (HEADER + n) as u64;
                    }
                    problem
                }
            }
        };
        if let Some(p) = problem {
            return Ok(Scan {
                last_seq: last,
                valid_len: offset,
                problem: Some(p),
                keys,
            });
        }
    }
}

pub(crate) fn entry_crc(seq_and_time: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(seq_and_time);
    h.update(payload);
    h.finalize()
}
