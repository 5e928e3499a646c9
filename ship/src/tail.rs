//! Finding and following the files of one input: globs scanned every poll, files known by
//! the fingerprint of their first line (so a rename, a copy or a move keeps its place), a
//! truncation (copytruncate) seen as the file's old content moving to its copy, a file
//! truncated or rewritten in place found again from its start, and a file renamed away
//! (rename-and-create) read through its open descriptor to its end.
//!
//! Long (about 1,100 lines) with its tests: every rotation case is tested on real files here.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::xxh3_64;

use crate::checkpoint::{Checkpoints, FileState, file_key};

/// The fingerprint covers the first line up to this many bytes.
const FP_BYTES: usize = 4096;

/// One file being followed.
#[derive(Debug)]
pub struct Tracked {
    /// Its identity: the fingerprint of its first line, mixed with its inode when
    /// another file starts with the same line.
    pub fp: u64,
    /// The fingerprint of its first line alone, to tell whether it is still the same file.
    line_fp: u64,
    pub path: PathBuf,
    file: File,
    pub dev: u64,
    pub ino: u64,
    /// Lines before this byte are done.
    pub offset: u64,
    /// A batch whose answer was not seen before a restart: resend exactly this range.
    pub pending: Option<(u64, u64)>,
    /// How many bytes just before `offset` and their hash, as delivered (see [`tail_at`]):
    /// to see a file rewritten in place past it; `None` until something is delivered here.
    tail: Option<(u64, u64)>,
    /// Size at the last scan.
    pub len: u64,
    /// Modification time at the last scan (ns): a rewrite to the same size changes it.
    mtime: i64,
    /// A `.gz` file's decompressed content, read as a stream once opened.
    gz: Option<GzStream>,
    pub is_gz: bool,
    pub done: bool,
    /// Since when its path no longer leads to it (renamed away or deleted).
    gone_since: Option<Instant>,
    /// When it last grew.
    grew_at: Instant,
    /// Its inode shrank below the offset, or was rewritten before it: the content read
    /// is gone from it (moved to a copy by copytruncate, or lost).
    truncated: bool,
    /// After a failure (unreadable, refused, collector away): not before then.
    pub retry_at: Option<Instant>,
}

/// A chunk of whole lines, `[start, end)` of the file.
pub struct Chunk {
    pub start: u64,
    pub end: u64,
    pub bytes: Vec<u8>,
    /// The chunk is exactly a range saved as pending before a restart.
    pub resend: bool,
    /// A single line longer than the batch size, which is skipped (counted).
    pub oversized: bool,
}

/// The files of one input.
#[derive(Debug)]
pub struct Files {
    patterns: Vec<String>,
    gz_allowed: bool,
    /// The input's name: checkpoints are per input and fingerprint.
    name: String,
    /// Files whose content is done (a finished `.gz`), by device, inode, size and mtime
    /// (an inode reused by a new file differs in those): not fingerprinted again.
    finished: HashMap<(u64, u64, u64, i64), u64>,
    /// Fingerprints of the finished files the last scan saw (their checkpoints are kept).
    pub seen_done: Vec<u64>,
    /// Device and inode of every file the last scan found (waiting or finished ones
    /// too): their checkpoints are not forgotten, however long ago they were saved.
    pub present: HashSet<(u64, u64)>,
    /// Sizes of `.gz` files at the last scan: one is taken once its size holds still.
    gz_sizes: HashMap<(u64, u64), u64>,
    /// Files set aside (unreadable, undecodable, unsendable), by device, inode, size and
    /// mtime: taken again only once they change.
    failed: HashSet<(u64, u64, u64, i64)>,
    /// At most this many files open at once (fully read ones stay open: a rotation may
    /// still write to them); more wait.
    max_open: usize,
    pub tracked: Vec<Tracked>,
    /// Files let go because their content was truncated away, by device and inode, with
    /// the identity they had: found again with it (their new first line the same as
    /// the old), they are read from their start, not from the old offset.
    truncated: HashMap<(u64, u64), u64>,
    rotate_wait: Duration,
    max_gz_bytes: u64,
}

fn fingerprint(path: &Path, gz: bool) -> std::io::Result<Option<u64>> {
    let mut buf = vec![0u8; FP_BYTES];
    let n = read_head(&File::open(path)?, &mut buf)?;
    let head = &buf[..n];
    if gz {
        // The compressed bytes; the caller waits until the file stops growing.
        return Ok((n > 0).then(|| xxh3_64(head)));
    }
    Ok(line_fingerprint(head))
}

/// The hash of the first whole line that is not blank and not a `#` header (files of one
/// format share their headers); `None` until there is one.
fn line_fingerprint(head: &[u8]) -> Option<u64> {
    let mut rest = head;
    while let Some(i) = memchr::memchr(b'\n', rest) {
        let line = &rest[..=i];
        if !line.starts_with(b"#") && !line.trim_ascii().is_empty() {
            return Some(xxh3_64(line));
        }
        rest = &rest[i + 1..];
    }
    // Headers alone filling the window: what there is.
    (head.len() == FP_BYTES).then(|| xxh3_64(head))
}

/// Whether two files hold the same bytes over the shorter one's first 64 KiB.
fn same_prefix(a: &Path, b: &Path) -> std::io::Result<bool> {
    let mut x = vec![0u8; 64 << 10];
    let mut y = vec![0u8; 64 << 10];
    let n = read_head(&File::open(a)?, &mut x)?;
    let m = read_head(&File::open(b)?, &mut y)?;
    let k = n.min(m);
    Ok(x[..k] == y[..k])
}

/// At most this many bytes before an offset are hashed: the last whole line or lines
/// delivered (a line's last fields alone are often the same on every line, so the whole
/// line, request id included), for one small read.
const TAIL_BYTES: u64 = 4096;

/// The hash of the `n` bytes of `file` before `offset`; `None` when the file no longer
/// reaches `offset` or cannot be read.
fn tail_at(file: &File, offset: u64, n: u64) -> Option<u64> {
    let n = n.min(offset).min(TAIL_BYTES);
    let mut buf = [0u8; TAIL_BYTES as usize];
    let buf = &mut buf[..n as usize];
    file.read_exact_at(buf, offset - n).ok()?;
    Some(xxh3_64(buf))
}

impl Files {
    pub fn new(
        name: &str,
        patterns: Vec<String>,
        gz_allowed: bool,
        rotate_wait: Duration,
        max_gz_bytes: u64,
    ) -> Files {
        Files {
            name: name.to_owned(),
            patterns,
            gz_allowed,
            finished: HashMap::new(),
            seen_done: Vec::new(),
            present: HashSet::new(),
            gz_sizes: HashMap::new(),
            failed: HashSet::new(),
            max_open: 512,
            tracked: Vec::new(),
            truncated: HashMap::new(),
            rotate_wait,
            max_gz_bytes,
        }
    }

    /// Looks for new, moved, truncated and vanished files.
    /// `claimed`: files other inputs follow (a file is followed by one input only).
    pub fn scan(
        &mut self,
        cp: &Checkpoints,
        now: Instant,
        claimed: &HashSet<(u64, u64)>,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let mut seen = HashSet::new();
        let mut seen_finished = HashSet::new();
        self.seen_done.clear();
        let mut paths = Vec::new();
        for pat in &self.patterns {
            match glob::glob(pat) {
                Ok(it) => paths.extend(it.flatten()),
                Err(e) => problems.push(format!("pattern {pat:?}: {e}")),
            }
        }
        paths.sort();
        paths.dedup();
        let metas: Vec<(PathBuf, std::fs::Metadata)> = paths
            .into_iter()
            .filter_map(|p| std::fs::metadata(&p).ok().map(|m| (p, m)))
            .filter(|(_, m)| m.is_file())
            .collect();
        let present: HashMap<(u64, u64), PathBuf> = metas
            .iter()
            .map(|(p, m)| ((m.dev(), m.ino()), p.clone()))
            .collect();
        self.present = present.keys().copied().collect();
        let mut waiting = 0usize;
        // Followed files by inode: thousands of them made a search per path the cost of
        // an idle scan. Kept current as files are taken or move.
        let mut by_inode: HashMap<(u64, u64), usize> = self
            .tracked
            .iter()
            .enumerate()
            .map(|(i, t)| ((t.dev, t.ino), i))
            .collect();
        for (path, meta) in metas {
            let (dev, ino, len) = (meta.dev(), meta.ino(), meta.len());
            let mtime = mtime_ns(&meta);
            let done_key = (dev, ino, len, mtime);
            seen.insert((dev, ino));
            if let Some(t) = by_inode
                .get(&(dev, ino))
                .and_then(|&i| self.tracked.get_mut(i))
                .filter(|t| (t.dev, t.ino) == (dev, ino))
            {
                t.path = path;
                t.gone_since = None;
                if len > t.len {
                    t.grew_at = now;
                }
                if !t.is_gz && len < t.offset && len < t.len {
                    t.truncated = true;
                } else if !t.is_gz
                    && len >= t.offset
                    && (len != t.len || mtime != t.mtime)
                    && t.tail
                        .is_some_and(|(n, h)| tail_at(&t.file, t.offset, n) != Some(h))
                {
                    // Truncated and written again past the offset between two scans.
                    tracing::warn!(path = %t.path.display(), offset = t.offset, "file rewritten in place: it no longer holds what was read");
                    t.truncated = true;
                }
                // A `.gz` once read has the decompressed length.
                if t.gz.is_none() {
                    t.len = len;
                }
                t.mtime = mtime;
                continue;
            }
            if let Some(fp) = self.finished.get(&done_key) {
                self.seen_done.push(*fp);
                seen_finished.insert(done_key);
                continue;
            }
            if claimed.contains(&(dev, ino)) {
                problems.push(format!(
                    "{} is matched by another input too: followed there only",
                    path.display()
                ));
                continue;
            }
            if self.failed.contains(&done_key) {
                seen_finished.insert(done_key);
                continue;
            }
            if self.tracked.len() >= self.max_open {
                waiting += 1;
                continue;
            }
            let is_gz = path.extension().is_some_and(|x| x == "gz");
            if is_gz && !self.gz_allowed {
                // A rotated, compressed copy of a file already read.
                continue;
            }
            if is_gz && self.gz_sizes.insert((dev, ino), len) != Some(len) {
                // Still being written (or new): look again next scan.
                continue;
            }
            if is_gz && self.tracked.iter().any(|t| t.is_gz && !t.done) {
                // One `.gz` at a time: a backlog of them is read in turn, each with its
                // decoder and a batch of its bytes in memory.
                continue;
            }
            let line_fp = match fingerprint(&path, is_gz) {
                Ok(Some(fp)) => fp,
                Ok(None) => continue,
                Err(e) => {
                    problems.push(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            let mut fp = line_fp;
            // Another file still there that starts with the same line: this one is its
            // copy (copytruncate, followed once the original is truncated) if their
            // contents agree, else a different file, then known by its inode too.
            let twin = self
                .tracked
                .iter()
                .find(|t| t.fp == fp && !t.truncated && t.gone_since.is_none())
                .and_then(|t| present.get(&(t.dev, t.ino)))
                .or_else(|| {
                    // Not a followed file found truncated: its content moved, maybe here.
                    let truncated = |f: &FileState| {
                        self.tracked
                            .iter()
                            .any(|t| t.truncated && (t.dev, t.ino) == (f.dev, f.ino))
                    };
                    cp.files
                        .get(&file_key(&self.name, fp))
                        .filter(|f| (f.dev, f.ino) != (dev, ino) && !truncated(f))
                        .and_then(|f| present.get(&(f.dev, f.ino)))
                });
            // Only while that file still starts with the line: a truncated original
            // (copytruncate) is not a twin of its copy.
            let twin = twin.filter(|other| {
                !is_gz && matches!(fingerprint(other, false), Ok(Some(f)) if f == line_fp)
            });
            if let Some(other) = twin {
                match same_prefix(&path, other) {
                    Ok(true) => continue,
                    Ok(false) => {
                        fp = xxh3_64(
                            &[fp.to_le_bytes(), dev.to_le_bytes(), ino.to_le_bytes()].concat(),
                        );
                    }
                    Err(e) => {
                        problems.push(format!("{}: {e}", path.display()));
                        continue;
                    }
                }
            }
            if let Some((i, t)) = self
                .tracked
                .iter_mut()
                .enumerate()
                .find(|(_, t)| t.fp == fp)
            {
                // The same content in a second place: a copy (copytruncate) or a move
                // across filesystems. Follow it once the original is truncated or gone.
                if t.truncated || t.gone_since.is_some() {
                    match File::open(&path) {
                        Ok(f) => {
                            tracing::info!(from = %t.path.display(), to = %path.display(), "file content moved; following it");
                            by_inode.insert((dev, ino), i);
                            t.file = f;
                            (t.dev, t.ino, t.len, t.mtime, t.path) = (dev, ino, len, mtime, path);
                            t.truncated = false;
                            t.gone_since = None;
                            t.grew_at = now;
                            seen.insert((dev, ino));
                        }
                        Err(e) => problems.push(format!("{}: {e}", path.display())),
                    }
                }
                continue;
            }
            let mut saved = cp
                .files
                .get(&file_key(&self.name, fp))
                .cloned()
                .unwrap_or_default();
            if self.truncated.remove(&(dev, ino)) == Some(fp) {
                // Its content was truncated away and it starts with the same line again:
                // other content, not the old file at its old offset.
                tracing::warn!(path = %path.display(), offset = saved.offset, "a truncated file starts with its old first line again: reading it from its start");
                saved = Default::default();
            }
            if saved.done {
                self.finished.insert(done_key, fp);
                self.seen_done.push(fp);
                seen_finished.insert(done_key);
                continue;
            }
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    problems.push(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            tracing::info!(path = %path.display(), offset = saved.offset, "following a file");
            by_inode.insert((dev, ino), self.tracked.len());
            self.tracked.push(Tracked {
                fp,
                line_fp,
                path,
                file,
                dev,
                ino,
                offset: saved.offset,
                pending: saved.pending,
                tail: None,
                len,
                mtime,
                gz: None,
                is_gz,
                done: false,
                gone_since: None,
                grew_at: now,
                truncated: false,
                retry_at: None,
            });
        }
        if waiting > 0 {
            problems.push(format!(
                "{waiting} files wait: {} are open already (the most at once)",
                self.max_open
            ));
        }
        self.gz_sizes.retain(|k, _| seen.contains(k));
        self.finished.retain(|k, _| seen_finished.contains(k));
        self.failed.retain(|k| seen_finished.contains(k));
        let rotate_wait = self.rotate_wait;
        for t in &mut self.tracked {
            if !seen.contains(&(t.dev, t.ino)) && t.gone_since.is_none() {
                t.gone_since = Some(now);
            }
            // A file renamed away is still written until the server reopens its log:
            // keep the size current through the descriptor.
            if let Ok(m) = t.file.metadata() {
                if m.len() > t.len {
                    t.grew_at = now;
                }
                if !t.is_gz && m.len() < t.offset && m.len() < t.len {
                    t.truncated = true;
                }
                if t.gz.is_none() {
                    t.len = m.len();
                }
            }
        }
        // Let go of files that are finished: truncated ones (their content is in the
        // copy, or lost to copytruncate's race), renamed-away or deleted ones read to
        // their end and quiet for `rotate_wait`, finished `.gz` files.
        let finished = &mut self.finished;
        let truncated = &mut self.truncated;
        truncated.retain(|k, _| seen.contains(k));
        self.tracked.retain(|t| {
            let quiet = now.duration_since(t.grew_at) >= rotate_wait;
            let at_end = t.pending.is_none() && t.offset >= t.len;
            let keep = !(t.truncated
                || t.done
                || (t.gone_since.is_some() && at_end && quiet));
            if !keep {
                if t.truncated {
                    truncated.insert((t.dev, t.ino), t.fp);
                }
                if t.done
                    && let Ok(m) = t.file.metadata()
                {
                    let mtime = mtime_ns(&m);
                    finished.insert((t.dev, t.ino, m.len(), mtime), t.fp);
                }
                tracing::info!(path = %t.path.display(), offset = t.offset, truncated = t.truncated, "no longer following a file");
            }
            keep
        });
        problems
    }

    /// The next chunk of whole lines of file `i`, at most `max` bytes (a pending range as
    /// it was). `None` when nothing whole is there yet.
    /// A line longer than `max` is returned alone if it is at most `line_max` long, and
    /// skipped (`oversized`) past that.
    pub fn read(
        &mut self,
        i: usize,
        max: usize,
        line_max: usize,
        now: Instant,
    ) -> std::io::Result<Option<Chunk>> {
        let rotate_wait = self.rotate_wait;
        let max_gz = self.max_gz_bytes;
        let t = &mut self.tracked[i];
        if t.is_gz && t.gz.is_none() {
            let g = GzStream::open(&t.file, max_gz)?;
            t.len = g.len;
            // Complete now: the fingerprint of a file taken while still being written
            // (paused longer than two scans) covered fewer bytes.
            t.fp = g.fp;
            t.gz = Some(g);
        }
        if let Some(g) = &mut t.gz {
            // Bytes before the acknowledged offset (or a pending range) are not read again.
            g.floor = t.pending.map_or(t.offset, |(a, _)| a.min(t.offset));
        }
        if !t.is_gz && !t.truncated {
            // Copytruncate while no scan ran (the collector away, several batches in a
            // row) and the file grown back past the offset: its first line says whether
            // it is still the same file.
            let mut head = vec![0u8; FP_BYTES];
            let n = t.read_at(&mut head, 0)?;
            if line_fingerprint(&head[..n]) != Some(t.line_fp) {
                t.truncated = true;
                tracing::info!(path = %t.path.display(), "file content replaced (truncated and rewritten)");
                return Ok(None);
            }
        }
        if t.truncated {
            return Ok(None);
        }
        if let Some((a, b)) = t.pending {
            if b <= t.len && a < b {
                let bytes = t.read_range(a, b)?;
                if bytes.len() as u64 == b - a {
                    return Ok(Some(Chunk {
                        start: a,
                        end: b,
                        bytes,
                        resend: true,
                        oversized: false,
                    }));
                }
            }
            // The file no longer holds that range: its content changed under us.
            tracing::warn!(path = %t.path.display(), start = a, end = b, "pending range no longer in the file; reading on from the acknowledged offset");
            t.pending = None;
        }
        if t.offset >= t.len {
            if t.is_gz {
                t.done = true;
            }
            return Ok(None);
        }
        let want = (t.len - t.offset).min(max as u64);
        let mut bytes = t.read_range(t.offset, t.offset + want)?;
        match memchr::memrchr(b'\n', &bytes) {
            Some(last) => {
                bytes.truncate(last + 1);
                Ok(Some(Chunk {
                    start: t.offset,
                    end: t.offset + bytes.len() as u64,
                    bytes,
                    resend: false,
                    oversized: false,
                }))
            }
            None if bytes.len() == max => {
                // One line longer than a batch: find its end; send it alone, or skip it.
                let mut end = t.offset + bytes.len() as u64;
                let mut buf = vec![0u8; 64 << 10];
                let finished = t.is_gz
                    || (t.gone_since.is_some() && now.duration_since(t.grew_at) >= rotate_wait);
                loop {
                    if end - t.offset > line_max as u64
                        && let Some(g) = &mut t.gz
                    {
                        // Skipped whatever follows: a `.gz` keeps none of it.
                        g.floor = end;
                    }
                    let n = t.read_at(&mut buf, end)?;
                    if n == 0 {
                        if finished {
                            // The file's last line, without a line break.
                            break;
                        }
                        return Ok(None);
                    }
                    if let Some(k) = memchr::memchr(b'\n', &buf[..n]) {
                        end += k as u64 + 1;
                        break;
                    }
                    end += n as u64;
                }
                let alone = end - t.offset <= line_max as u64;
                Ok(Some(Chunk {
                    start: t.offset,
                    end,
                    bytes: if alone {
                        t.read_range(t.offset, end)?
                    } else {
                        Vec::new()
                    },
                    resend: false,
                    oversized: !alone,
                }))
            }
            None => {
                // A last line without its line break: wait for the rest, unless the file
                // is finished (a `.gz`, or renamed away and quiet).
                let finished = t.is_gz
                    || (t.gone_since.is_some() && now.duration_since(t.grew_at) >= rotate_wait);
                if !finished {
                    return Ok(None);
                }
                bytes.push(b'\n');
                Ok(Some(Chunk {
                    start: t.offset,
                    end: t.offset + want,
                    bytes,
                    resend: false,
                    oversized: false,
                }))
            }
        }
    }
}

impl Files {
    /// Sets file `i` aside after an error that another try will not mend (a corrupt or
    /// oversized `.gz`, a name without a distribution): the others go on. It is taken
    /// again once it changes (size or mtime), or after a restart.
    pub fn set_aside(&mut self, i: usize) {
        let t = self.tracked.remove(i);
        if let Ok(m) = t.file.metadata() {
            self.failed.insert((t.dev, t.ino, m.len(), mtime_ns(&m)));
        }
    }

    pub fn set_max_open(&mut self, n: usize) {
        self.max_open = n.max(1);
    }
}

impl Tracked {
    /// Marks `chunk` delivered: the offset moves to its end, and the bytes before it are
    /// remembered (from the chunk when it holds them all, else read again).
    pub fn advance(&mut self, chunk: &Chunk) {
        self.offset = chunk.end;
        self.pending = None;
        // The chunk's own bytes (what was sent, not what the file may hold by now), else
        // (a line skipped as too long) read back.
        let whole = !chunk.bytes.is_empty() && chunk.bytes.len() as u64 == chunk.end - chunk.start;
        let n = (chunk.bytes.len() as u64).min(TAIL_BYTES);
        self.tail = match (self.is_gz, whole) {
            (true, _) => None,
            (false, true) => Some((n, xxh3_64(&chunk.bytes[chunk.bytes.len() - n as usize..]))),
            (false, false) => {
                let n = chunk.end.min(TAIL_BYTES);
                tail_at(&self.file, chunk.end, n).map(|h| (n, h))
            }
        };
    }

    fn read_at(&mut self, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
        match &mut self.gz {
            Some(g) => g.read_at(buf, at),
            None => self.file.read_at(buf, at),
        }
    }

    fn read_range(&mut self, a: u64, b: u64) -> std::io::Result<Vec<u8>> {
        let mut out = vec![0u8; (b - a) as usize];
        let mut n = 0;
        while n < out.len() {
            match self.read_at(&mut out[n..], a + n as u64)? {
                0 => break,
                k => n += k,
            }
        }
        out.truncate(n);
        Ok(out)
    }

    /// The W3C header lines (`#Version`, `#Fields`) at the start of the file.
    pub fn w3c_header(&self) -> std::io::Result<Vec<u8>> {
        if let Some(g) = &self.gz {
            return Ok(g.header.clone());
        }
        // By position, never through the descriptor's offset (which a read would move).
        let mut head = vec![0u8; self.len.min(W3C_HEADER_BYTES) as usize];
        let n = read_head(&self.file, &mut head)?;
        head.truncate(n);
        Ok(header_lines(&head))
    }
}

/// Modification time in nanoseconds: a rewrite within the same second changes it.
fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    m.mtime_nsec() + m.mtime() * 1_000_000_000
}

/// Fills `buf` from the start of `file`, by position, as far as the file goes.
fn read_head(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The header lines are looked for in this many bytes at the start of a file.
const W3C_HEADER_BYTES: u64 = 64 << 10;

/// The `#` lines that start `head`.
fn header_lines(head: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in head.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"#") && line.ends_with(b"\n") {
            out.extend_from_slice(line);
        } else {
            break;
        }
    }
    out
}

type GzDecoder = flate2::read::MultiGzDecoder<std::io::BufReader<File>>;

/// A `.gz` read as a stream: decompressed once whole to learn its length (and refuse it
/// if corrupt or too big before anything is sent), then again in order, keeping only the
/// bytes from `floor` on: memory stays about a batch whatever the file decompresses to.
struct GzStream {
    file: File,
    decoder: GzDecoder,
    /// Decompressed length.
    len: u64,
    /// Hash of the compressed file's first bytes: its identity.
    fp: u64,
    header: Vec<u8>,
    /// Decompressed bytes taken from the decoder.
    pos: u64,
    /// `window` holds `[pos - window.len(), pos)`.
    window: Vec<u8>,
    /// No byte before this is asked for again (unless the stream starts over).
    floor: u64,
    /// The compressed file's size and mtime when it was checked: a file changed since is
    /// not read on (its content would not be what was counted).
    stamp: (u64, i64),
}

impl std::fmt::Debug for GzStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GzStream")
            .field("len", &self.len)
            .field("pos", &self.pos)
            .field("window", &self.window.len())
            .finish()
    }
}

/// Decompressed bytes taken from the decoder at a time.
const GZ_STEP: usize = 64 << 10;

impl GzStream {
    fn open(file: &File, max_gz: u64) -> std::io::Result<GzStream> {
        let mut head = vec![0u8; FP_BYTES];
        let n = read_head(file, &mut head)?;
        let fp = xxh3_64(&head[..n]);
        let stamp = Self::stamp(file)?;
        let mut d = Self::decoder(file)?;
        let mut buf = vec![0u8; GZ_STEP];
        let mut len = 0u64;
        let mut first = Vec::new();
        loop {
            let n = d.read(&mut buf)?;
            if n == 0 {
                break;
            }
            if first.len() < W3C_HEADER_BYTES as usize {
                let k = n.min(W3C_HEADER_BYTES as usize - first.len());
                first.extend_from_slice(&buf[..k]);
            }
            len += n as u64;
            if len > max_gz {
                return Err(std::io::Error::other(format!(
                    "decompresses to more than max_gz_bytes ({max_gz})"
                )));
            }
        }
        Ok(GzStream {
            stamp,
            file: file.try_clone()?,
            decoder: Self::decoder(file)?,
            len,
            fp,
            header: header_lines(&first),
            pos: 0,
            window: Vec::new(),
            floor: 0,
        })
    }

    fn stamp(file: &File) -> std::io::Result<(u64, i64)> {
        let m = file.metadata()?;
        Ok((m.len(), mtime_ns(&m)))
    }

    fn decoder(file: &File) -> std::io::Result<GzDecoder> {
        let mut f = file.try_clone()?;
        f.seek(SeekFrom::Start(0))?;
        Ok(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
            f,
        )))
    }

    /// Bytes at `at`, decoding on as far as needed; from the start again for bytes
    /// already let go.
    fn read_at(&mut self, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
        let start = self.pos - self.window.len() as u64;
        if at < start {
            self.decoder = Self::decoder(&self.file)?;
            self.pos = 0;
            self.window.clear();
        }
        let want = (at + buf.len() as u64).min(self.len);
        if self.pos < want && Self::stamp(&self.file)? != self.stamp {
            return Err(std::io::Error::other(
                "the .gz changed while it was read (size or mtime)",
            ));
        }
        while self.pos < want {
            // Let go of what is not asked for again before taking more.
            let keep_from = self.floor.min(at);
            let start = self.pos - self.window.len() as u64;
            if keep_from > start {
                self.window
                    .drain(..((keep_from - start) as usize).min(self.window.len()));
            }
            let old = self.window.len();
            // Exactly: doubling would hold up to twice the batch.
            self.window.reserve_exact(GZ_STEP);
            self.window.resize(old + GZ_STEP, 0);
            let n = self.decoder.read(&mut self.window[old..])?;
            self.window.truncate(old + n);
            if n == 0 {
                return Err(std::io::Error::other(
                    "the .gz changed while it was read: it ends sooner",
                ));
            }
            self.pos += n as u64;
            if Self::stamp(&self.file)? != self.stamp {
                // Bytes decoded from the file as it was rewritten: none of them is sent.
                self.window.clear();
                return Err(std::io::Error::other(
                    "the .gz changed while it was read (size or mtime)",
                ));
            }
        }
        let start = self.pos - self.window.len() as u64;
        if at >= self.pos || at < start {
            return Ok(0);
        }
        let from = (at - start) as usize;
        let n = (self.window.len() - from).min(buf.len());
        buf[..n].copy_from_slice(&self.window[from..from + n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Write;

    use super::*;
    use crate::checkpoint::FileState;

    fn files(dir: &Path, pattern: &str) -> Files {
        Files::new(
            "t",
            vec![dir.join(pattern).display().to_string()],
            true,
            Duration::ZERO,
            1 << 20,
        )
    }

    fn append(p: &Path, s: &str) {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap_or_else(|e| panic!("{e}"));
        f.write_all(s.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Reads every chunk of file `i` and marks it done, as an acknowledgement would.
    fn drain(f: &mut Files, i: usize) -> String {
        let mut out = String::new();
        while let Some(c) = f
            .read(i, 1 << 20, 1 << 20, Instant::now())
            .unwrap_or_else(|e| panic!("{e}"))
        {
            out.push_str(&String::from_utf8_lossy(&c.bytes));
            f.tracked[i].advance(&c);
        }
        out
    }

    /// A scan, then every followed file read to its end, the places saved as ship saves
    /// them (the others' kept).
    fn scan_and_drain(f: &mut Files, cp: &mut Checkpoints) -> String {
        f.scan(cp, Instant::now(), &HashSet::new());
        let out: String = (0..f.tracked.len()).map(|i| drain(f, i)).collect();
        keep(cp, f);
        out
    }

    /// Saves the followed files' places in `cp`, the others' kept, as ship does.
    fn keep(cp: &mut Checkpoints, f: &Files) {
        for t in &f.tracked {
            cp.files.insert(
                file_key("t", t.fp),
                FileState {
                    dev: t.dev,
                    ino: t.ino,
                    offset: t.offset,
                    pending: t.pending,
                    ..FileState::default()
                },
            );
        }
    }

    fn truncate(p: &Path, len: u64) {
        fs::OpenOptions::new()
            .write(true)
            .open(p)
            .and_then(|f| f.set_len(len))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn a_file_truncated_and_written_again_with_the_same_first_line_is_read_from_its_start() {
        // Lines whose last 64 bytes are all alike (fields after the request id that rarely
        // change, as in nginx's documented format): the whole last line tells them apart.
        let suffix = ",\"status\":\"200\",\"sent_http_content_type\":\"text/plain\",\"len\":\"3\"}";
        let old: String = (1..=3)
            .map(|i| format!("{{\"id\":\"old-{i}\"{suffix}\n"))
            .collect();
        let renewed: String = (1..=4)
            .map(|i| format!("{{\"id\":\"new-{i}\"{suffix}\n"))
            .collect();
        for case in 0..5 {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let p = dir.path().join("a.log");
            let first = match case {
                4 => format!("header\n{old}"),
                _ => "header\nold 1\nold 2\nold 3\n".to_owned(),
            };
            append(&p, &first);
            let mut f = files(dir.path(), "a.log");
            let mut cp = Checkpoints::default();
            assert_eq!(scan_and_drain(&mut f, &mut cp), first);
            let renewed = format!("header\n{renewed}");
            let (new, want) = match case {
                // Truncated, seen short by a scan, then written again.
                0 => {
                    truncate(&p, 0);
                    assert_eq!(scan_and_drain(&mut f, &mut cp), "");
                    ("header\nnew 1\n", "header\nnew 1\n")
                }
                // Truncated and written again past the old offset between two scans.
                1 => {
                    truncate(&p, 0);
                    let new = "header\nnew 1, longer than the old lines\nnew 2\n";
                    (new, new)
                }
                // Written again to the very size it had, between two scans.
                3 => {
                    truncate(&p, 0);
                    std::thread::sleep(Duration::from_millis(20));
                    (
                        "header\nnew 1\nnew 2\nnew 3\n",
                        "header\nnew 1\nnew 2\nnew 3\n",
                    )
                }
                // Past the offset between two scans, every line ending alike.
                4 => {
                    truncate(&p, 0);
                    (renewed.as_str(), renewed.as_str())
                }
                // Cut to its first two lines, then written on: those two again, rather
                // than the new lines lost.
                _ => {
                    truncate(&p, 13);
                    ("new 4\n", "header\nold 1\nnew 4\n")
                }
            };
            append(&p, new);
            let mut got = scan_and_drain(&mut f, &mut cp);
            got.push_str(&scan_and_drain(&mut f, &mut cp));
            assert_eq!(got, want, "case {case}");
            append(&p, "new 5\n");
            assert_eq!(scan_and_drain(&mut f, &mut cp), "new 5\n", "case {case}");
        }
    }

    #[test]
    fn copytruncate_of_a_file_whose_first_line_never_changes_continues_in_the_copy() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("a.log");
        append(&p, "header\nline 1\n");
        let mut f = files(dir.path(), "a.log*");
        let mut cp = Checkpoints::default();
        assert_eq!(scan_and_drain(&mut f, &mut cp), "header\nline 1\n");
        append(&p, "line 2\n");
        fs::copy(&p, dir.path().join("a.log.1")).unwrap_or_else(|e| panic!("{e}"));
        truncate(&p, 0);
        append(&p, "header\nafter 1, longer than the lines before it\n");
        let mut got = String::new();
        for _ in 0..3 {
            got.push_str(&scan_and_drain(&mut f, &mut cp));
        }
        assert_eq!(
            got,
            "line 2\nheader\nafter 1, longer than the lines before it\n"
        );
        let mut g = files(dir.path(), "a.log*");
        append(&p, "after 2\n");
        assert_eq!(scan_and_drain(&mut g, &mut cp), "after 2\n");
    }

    #[test]
    fn a_copy_shorter_than_the_offset_is_not_read_again_and_a_checkpoint_past_the_end_is_kept() {
        // copytruncate copies, the server writes on, those lines are read from the
        // original, and only then is the original truncated: the copy is all delivered.
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("a.log");
        append(&p, "line 1\nline 2\n");
        let mut f = files(dir.path(), "a.log*");
        let mut cp = Checkpoints::default();
        assert_eq!(scan_and_drain(&mut f, &mut cp), "line 1\nline 2\n");
        fs::copy(&p, dir.path().join("a.log.1")).unwrap_or_else(|e| panic!("{e}"));
        append(&p, "line 3\n");
        // Only the original: the copy is not a new file while the original holds it all.
        assert_eq!(scan_and_drain(&mut f, &mut cp), "line 3\n");
        truncate(&p, 0);
        append(&p, "after 1\n");
        let mut got = String::new();
        for _ in 0..3 {
            got.push_str(&scan_and_drain(&mut f, &mut cp));
        }
        assert_eq!(got, "after 1\n");
        // A restart, the copy still there: nothing again.
        let mut g = files(dir.path(), "a.log*");
        let mut got = String::new();
        for _ in 0..3 {
            got.push_str(&scan_and_drain(&mut g, &mut cp));
        }
        assert_eq!(got, "");
        // A checkpoint past the end of its file (edited by hand, say) is kept, not let go
        // and found again at every scan: the file is read once it reaches it.
        let q = dir.path().join("b.log");
        append(&q, "first\n");
        let fp = fingerprint(&q, false)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no fingerprint"));
        let mut cp = Checkpoints::default();
        cp.files.insert(
            file_key("t", fp),
            FileState {
                offset: 12,
                ..FileState::default()
            },
        );
        let mut h = files(dir.path(), "b.log");
        assert_eq!(scan_and_drain(&mut h, &mut cp), "");
        assert_eq!(scan_and_drain(&mut h, &mut cp), "");
        assert_eq!(h.tracked.len(), 1);
        append(&q, "12345\nthird\n");
        assert_eq!(scan_and_drain(&mut h, &mut cp), "third\n");
    }

    fn cp_of(f: &Files) -> Checkpoints {
        let mut cp = Checkpoints::default();
        keep(&mut cp, f);
        cp
    }

    #[test]
    fn a_growing_file_is_read_in_whole_lines() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("a.log");
        append(&p, "one\ntwo\nthr");
        let mut f = files(dir.path(), "a.log");
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        assert_eq!(drain(&mut f, 0), "one\ntwo\n");
        append(&p, "ee\n");
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        assert_eq!(drain(&mut f, 0), "three\n");
        assert_eq!(drain(&mut f, 0), "");
    }

    #[test]
    fn a_file_without_a_whole_first_line_waits() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("a.log");
        append(&p, "no line break yet");
        let mut f = files(dir.path(), "a.log");
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        assert!(f.tracked.is_empty());
        append(&p, "\n");
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        assert_eq!(drain(&mut f, 0), "no line break yet\n");
    }

    #[test]
    fn rename_and_create_reads_the_old_file_to_its_end_then_the_new_one() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("a.log");
        append(&p, "old 1\n");
        let mut f = files(dir.path(), "a.log");
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        assert_eq!(drain(&mut f, 0), "old 1\n");
        fs::rename(&p, dir.path().join("a.log.1")).unwrap_or_else(|e| panic!("{e}"));
        // The server writes to the old file until it reopens its log.
        append(&dir.path().join("a.log.1"), "old 2\n");
        append(&p, "new 1\n");
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        assert_eq!(f.tracked.len(), 2);
        assert_eq!(drain(&mut f, 0), "old 2\n");
        assert_eq!(drain(&mut f, 1), "new 1\n");
        // Read to its end and quiet (rotate_wait 0): let go.
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        assert_eq!(f.tracked.len(), 1);
        assert_eq!(f.tracked[0].path, p);
    }

    #[test]
    fn copytruncate_continues_in_the_copy_and_restarts_the_original() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("a.log");
        append(&p, "line 1\nline 2\n");
        let mut f = files(dir.path(), "a.log*");
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        assert_eq!(drain(&mut f, 0), "line 1\nline 2\n");
        append(&p, "line 3\n");
        fs::copy(&p, dir.path().join("a.log.1")).unwrap_or_else(|e| panic!("{e}"));
        fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_len(0))
            .unwrap_or_else(|e| panic!("{e}"));
        append(&p, "after 1\n");
        let cp = cp_of(&f);
        f.scan(&cp, Instant::now(), &HashSet::new());
        let copy = f
            .tracked
            .iter()
            .position(|t| t.path.ends_with("a.log.1"))
            .unwrap_or_else(|| panic!("the copy is not followed: {:?}", f.tracked));
        assert_eq!(drain(&mut f, copy), "line 3\n");
        let cp = cp_of(&f);
        f.scan(&cp, Instant::now(), &HashSet::new());
        f.scan(&cp, Instant::now(), &HashSet::new());
        let orig = f
            .tracked
            .iter()
            .position(|t| t.path == p)
            .unwrap_or_else(|| panic!("the truncated file is not followed anew"));
        assert_eq!(drain(&mut f, orig), "after 1\n");
    }

    #[test]
    fn two_files_starting_with_the_same_line_are_two_files_across_a_restart() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
        append(&a, "health check\na1\n");
        append(&b, "health check\nb1\n");
        let mut f = files(dir.path(), "*.log");
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        assert_eq!(f.tracked.len(), 2, "{:?}", f.tracked);
        assert_ne!(f.tracked[0].fp, f.tracked[1].fp);
        assert_eq!(drain(&mut f, 0), "health check\na1\n");
        assert_eq!(drain(&mut f, 1), "health check\nb1\n");
        append(&a, "a2\n");
        append(&b, "b2\n");
        // A restart: each file finds its own checkpoint.
        let cp = cp_of(&f);
        let mut g = files(dir.path(), "*.log");
        g.scan(&cp, Instant::now(), &HashSet::new());
        assert_eq!(g.tracked.len(), 2);
        let mut got: Vec<String> = (0..2).map(|i| drain(&mut g, i)).collect();
        got.sort();
        assert_eq!(got, ["a2\n", "b2\n"]);
        // A file another input follows is left to it.
        let claimed: HashSet<(u64, u64)> = g.tracked.iter().map(|t| (t.dev, t.ino)).collect();
        let mut h = files(dir.path(), "*.log");
        let problems = h.scan(&Checkpoints::default(), Instant::now(), &claimed);
        assert!(h.tracked.is_empty());
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn a_file_set_aside_is_taken_again_once_it_changes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("E1.2026-11-26-10.x.gz");
        fs::write(&p, b"not gzip at all").unwrap_or_else(|e| panic!("{e}"));
        let mut f = files(dir.path(), "*.gz");
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        assert_eq!(f.tracked.len(), 1);
        assert!(f.read(0, 1 << 20, 1 << 20, Instant::now()).is_err());
        f.set_aside(0);
        for _ in 0..3 {
            f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
            assert!(f.tracked.is_empty());
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"l1\n").unwrap_or_else(|e| panic!("{e}"));
        fs::write(&p, gz.finish().unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        assert_eq!(f.tracked.len(), 1, "changed: taken again");
        assert_eq!(drain(&mut f, 0), "l1\n");
    }

    /// A CloudFront log that is not compressed: every batch gets the header, not only the
    /// first (a read through the descriptor's offset once left the later ones without).
    #[test]
    fn every_batch_of_a_plain_w3c_file_gets_its_header() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("E1.2026-11-26-10.x");
        let head = "#Version: 1.0\n#Fields: date time x-edge-request-id\n";
        append(&p, head);
        for k in 0..100 {
            append(&p, &format!("2026-11-26\t10:00:00\tid-{k}\n"));
        }
        let mut f = files(dir.path(), "E1.*");
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        let mut batches = 0;
        while let Some(c) = f
            .read(0, 512, 512, Instant::now())
            .unwrap_or_else(|e| panic!("{e}"))
        {
            assert_eq!(
                f.tracked[0].w3c_header().ok().as_deref(),
                Some(head.as_bytes())
            );
            f.tracked[0].advance(&c);
            batches += 1;
        }
        assert!(batches > 3);
    }

    /// Copytruncate between two batches with no scan between them (ship sends up to
    /// eight in a row, each maybe slow): the next read sees the new first line, not the
    /// new content at the old offset.
    #[test]
    fn copytruncate_between_two_reads_without_a_scan_is_seen_by_the_read() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("a.log");
        for k in 0..50 {
            append(&p, &format!("old line {k:03}\n"));
        }
        let mut f = files(dir.path(), "a.log");
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        let c = f
            .read(0, 100, 100, Instant::now())
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("nothing"));
        f.tracked[0].advance(&c);
        fs::copy(&p, dir.path().join("a.log.1")).unwrap_or_else(|e| panic!("{e}"));
        truncate(&p, 0);
        for k in 0..50 {
            append(&p, &format!("new line {k:03}\n"));
        }
        let next = f
            .read(0, 100, 100, Instant::now())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            next.is_none(),
            "read on into the new content at the old offset"
        );
        assert!(f.tracked[0].truncated);
    }

    #[test]
    fn a_pending_range_is_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("a.log");
        append(&p, "a\nbb\nccc\ndddd\n");
        let mut f = files(dir.path(), "a.log");
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        let fp = f.tracked[0].fp;
        let mut cp = Checkpoints::default();
        cp.files.insert(
            file_key("t", fp),
            FileState {
                offset: 2,
                pending: Some((2, 9)),
                ..FileState::default()
            },
        );
        let mut f = files(dir.path(), "a.log");
        f.scan(&cp, Instant::now(), &HashSet::new());
        let c = f
            .read(0, 1 << 20, 1 << 20, Instant::now())
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("nothing"));
        assert!(c.resend);
        assert_eq!((c.start, c.end, &c.bytes[..]), (2, 9, &b"bb\nccc\n"[..]));
        // A pending range past the end (the file changed): read on from the offset.
        cp.files
            .get_mut(&file_key("t", fp))
            .unwrap_or_else(|| panic!("fp"))
            .pending = Some((2, 9999));
        let mut f = files(dir.path(), "a.log");
        f.scan(&cp, Instant::now(), &HashSet::new());
        let c = f
            .read(0, 1 << 20, 1 << 20, Instant::now())
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("nothing"));
        assert!(!c.resend);
        assert_eq!(&c.bytes[..], b"bb\nccc\ndddd\n");
    }

    #[test]
    fn long_lines_go_alone_up_to_the_line_limit_and_are_skipped_past_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("a.log");
        let long = "x".repeat(20);
        let huge = "y".repeat(100_000);
        append(&p, &format!("{long}\n{huge}\nok\n"));
        let mut f = files(dir.path(), "a.log");
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        let read = |f: &mut Files| {
            let c = f
                .read(0, 16, 64, Instant::now())
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("nothing"));
            f.tracked[0].offset = c.end;
            c
        };
        let c = read(&mut f);
        assert_eq!((c.oversized, c.bytes.len()), (false, 21));
        let c = read(&mut f);
        assert!(c.oversized);
        assert_eq!(c.end - c.start, 100_001);
        let c = read(&mut f);
        assert_eq!(&c.bytes[..], b"ok\n");
    }

    #[test]
    fn a_big_gz_read_over_several_scans_is_read_whole() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut text = String::new();
        for k in 0..20_000 {
            text.push_str(&format!("line {k} with some padding to compress well\n"));
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        let bytes = gz.finish().unwrap_or_else(|e| panic!("{e}"));
        assert!(bytes.len() * 4 < text.len());
        fs::write(dir.path().join("E1.2026-11-26-10.x.gz"), &bytes)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut f = files(dir.path(), "*.gz");
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        let mut got = String::new();
        // A chunk, then a scan (which sees the compressed size on disk), and so on.
        while let Some(c) = f
            .read(0, 64 << 10, 64 << 10, Instant::now())
            .unwrap_or_else(|e| panic!("{e}"))
        {
            got.push_str(&String::from_utf8_lossy(&c.bytes));
            f.tracked[0].offset = c.end;
            f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
            assert_eq!(f.tracked.len(), 1, "let go before its end");
        }
        assert_eq!(got, text);
    }

    /// A `.gz` of 64 MiB decompressed (a few hundred KiB on disk) is read in order
    /// holding about a batch of it; a restart at a pending range reads that range back
    /// exactly; a line past the limit is skipped without being held.
    #[test]
    fn a_gz_is_streamed_holding_about_a_batch_of_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut want = xxhash_rust::xxh3::Xxh3::new();
        let mut total = 0u64;
        let mut k = 0u64;
        while total < 64 << 20 {
            let line = if k == 1000 {
                // 8 MiB without a line break: skipped (the limit is 1 MiB).
                format!("{}\n", "y".repeat(8 << 20))
            } else {
                format!("line {k:09} with some padding to compress well\n")
            };
            gz.write_all(line.as_bytes())
                .unwrap_or_else(|e| panic!("{e}"));
            if k != 1000 {
                want.update(line.as_bytes());
            }
            total += line.len() as u64;
            k += 1;
        }
        fs::write(
            dir.path().join("E1.2026-11-26-10.x.gz"),
            gz.finish().unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let big = |dir: &Path| {
            Files::new(
                "t",
                vec![dir.join("*.gz").display().to_string()],
                true,
                Duration::ZERO,
                1 << 30,
            )
        };
        let mut f = big(dir.path());
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        let mut got = xxhash_rust::xxh3::Xxh3::new();
        let mut held = 0;
        let mut skipped = 0;
        let mut restarted = false;
        while let Some(c) = f
            .read(0, 256 << 10, 1 << 20, Instant::now())
            .unwrap_or_else(|e| panic!("{e}"))
        {
            held = held.max(f.tracked[0].gz.as_ref().map_or(0, |g| g.window.capacity()));
            if c.oversized {
                skipped += c.end - c.start;
            } else if !restarted && c.start > 40 << 20 {
                // Killed with this range pending: a new ship reads it back exactly.
                restarted = true;
                let mut cp = Checkpoints::default();
                f.tracked[0].pending = Some((c.start, c.end));
                keep(&mut cp, &f);
                f = big(dir.path());
                f.scan(&cp, Instant::now(), &HashSet::new());
                f.scan(&cp, Instant::now(), &HashSet::new());
                let again = f
                    .read(0, 256 << 10, 1 << 20, Instant::now())
                    .unwrap_or_else(|e| panic!("{e}"))
                    .unwrap_or_else(|| panic!("nothing after the restart"));
                assert!(again.resend);
                assert_eq!((again.start, again.end), (c.start, c.end));
                assert!(again.bytes == c.bytes, "the pending range differs");
            }
            got.update(&c.bytes);
            f.tracked[0].advance(&c);
        }
        assert!(restarted);
        assert!(f.tracked[0].done);
        assert_eq!(skipped, (8 << 20) + 1);
        assert_eq!(
            got.digest(),
            want.digest(),
            "lines lost, changed or out of order"
        );
        assert!(
            held <= (1 << 20) + (256 << 10),
            "held {held} bytes of the stream"
        );
    }

    /// A `.gz` rewritten while it is read is not read on: its content is no longer what
    /// was checked and counted.
    #[test]
    fn a_gz_changed_while_read_is_not_read_on() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let gz_of = |tag: &str| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            for k in 0..20_000 {
                gz.write_all(format!("{tag} line {k}\n").as_bytes())
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            gz.finish().unwrap_or_else(|e| panic!("{e}"))
        };
        let p = dir.path().join("E1.2026-11-26-10.x.gz");
        fs::write(&p, gz_of("a")).unwrap_or_else(|e| panic!("{e}"));
        let mut f = files(dir.path(), "*.gz");
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        let c = f
            .read(0, 4096, 4096, Instant::now())
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("nothing"));
        assert!(c.bytes.starts_with(b"a line 0\n"));
        f.tracked[0].advance(&c);
        // Rewritten in place (same inode), longer and newer.
        std::thread::sleep(Duration::from_millis(20));
        fs::write(&p, gz_of("bb")).unwrap_or_else(|e| panic!("{e}"));
        let mut err = None;
        for _ in 0..100 {
            match f.read(0, 4096, 4096, Instant::now()) {
                Ok(Some(c)) => {
                    assert!(
                        c.bytes.starts_with(b"a line"),
                        "read on into the new content"
                    );
                    f.tracked[0].advance(&c);
                }
                Ok(None) => break,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        assert!(err.is_some_and(|e| e.to_string().contains("changed")));
    }

    #[test]
    fn a_gz_is_taken_once_complete_and_still() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"#Version: 1.0\nl1\nl2\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let bytes = gz.finish().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("E1.2026-11-26-10.x.gz");
        fs::write(&p, &bytes[..bytes.len() / 2]).unwrap_or_else(|e| panic!("{e}"));
        let mut f = files(dir.path(), "*.gz");
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        assert!(f.tracked.is_empty(), "taken at first sight");
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        assert_eq!(f.tracked.len(), 1);
        assert!(
            f.read(0, 1 << 20, 1 << 20, Instant::now()).is_err(),
            "incomplete"
        );
        append(&p, "");
        fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .and_then(|mut h| h.write_all(&bytes[bytes.len() / 2..]))
            .unwrap_or_else(|e| panic!("{e}"));
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        assert_eq!(drain(&mut f, 0), "#Version: 1.0\nl1\nl2\n");
        assert!(f.tracked[0].done);
        assert_eq!(
            f.tracked[0].fp,
            xxh3_64(&bytes[..bytes.len().min(FP_BYTES)])
        );
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        assert!(f.tracked.is_empty());
        f.scan(&Checkpoints::default(), Instant::now(), &HashSet::new());
        assert!(f.tracked.is_empty(), "a finished file is not taken again");
    }
}
