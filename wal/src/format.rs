//! The on-disk format: segment files, entry headers, checksums, and the scan on open that
//! finds where a segment's good entries end.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::Seq;
use crate::error::{WalError, io_err};

/// Version 2: payloads are zstd-compressed postcard.
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
}

/// Scans a segment from its start; `limit` is the next segment's first entry, where a
/// segment left behind after a failed write must end.
/// `end`: the byte offset a cut marker gives, past which entries belong to a refused group.
pub(crate) fn scan_segment(
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

pub(crate) fn entry_crc(seq_and_time: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(seq_and_time);
    h.update(payload);
    h.finalize()
}
