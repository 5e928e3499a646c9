//! A whole request body: lines in, records and per-line refusals out.

use base64::Engine;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128_with_seed;

use crate::fields::Record;
use crate::json::{self, KeyCache};
use crate::reject::{DEFAULT_MAX_FIELD_BYTES, DEFAULT_MAX_LINE_BYTES, Fault, RejectKind};
use crate::w3c::Header;

/// Wire format of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line.
    Ndjson,
    /// CloudFront's tab-separated standard-log format with `#Fields`.
    W3c,
}

impl Format {
    /// Guesses from the first non-blank byte: `#` is W3C, `{` is NDJSON.
    pub fn sniff(body: &[u8]) -> Option<Format> {
        match body.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'#') => Some(Format::W3c),
            Some(b'{') => Some(Format::Ndjson),
            _ => None,
        }
    }
}

/// One refused line: its 1-based number in the body, why in words, and what kind of
/// problem it is. As JSON: `{"line": 12, "reason": "...", "kind": "out_of_range"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub line: u64,
    pub reason: String,
    /// Machine-readable kind; its [`RejectKind::label`] is the metrics label.
    #[serde(default)]
    pub kind: RejectKind,
}

/// Reasons are cut to this many bytes (and `...`): an answer stays small.
pub const MAX_REASON_BYTES: usize = 300;

/// The outcome of parsing one body.
#[derive(Debug, Default)]
pub struct Parsed {
    pub records: Vec<Record>,
    pub rejected: Vec<Rejection>,
    /// How many refusals were counted but not listed (beyond `max_listed`).
    pub rejected_unlisted: u64,
}

impl Parsed {
    fn reject(&mut self, line: u64, fault: Fault, max_listed: usize) {
        if self.rejected.len() < max_listed {
            let mut reason = fault.reason;
            if reason.len() > MAX_REASON_BYTES {
                // serde's "invalid type: string \"...\"" quotes a whole value.
                let mut cut = MAX_REASON_BYTES;
                while !reason.is_char_boundary(cut) {
                    cut -= 1;
                }
                reason.truncate(cut);
                reason.push_str("...");
            }
            self.rejected.push(Rejection {
                line,
                reason,
                kind: fault.kind,
            });
        } else {
            self.rejected_unlisted += 1;
        }
    }

    /// Total refused lines, listed or not.
    pub fn rejected_count(&self) -> u64 {
        self.rejected.len() as u64 + self.rejected_unlisted
    }
}

/// How to parse a body: see [`parse_body`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseOptions<'a> {
    /// The distribution of lines that name none (`?distribution=`).
    pub default_distribution: Option<&'a str>,
    /// At most this many refusals are listed individually; the rest are counted.
    pub max_listed: usize,
    /// A longer line (without its line break) is refused unparsed, as `line_too_long`.
    pub max_line_bytes: usize,
    /// A line with a longer value (a string after JSON unescaping, or a W3C column) is
    /// refused, as `field_too_long`.
    pub max_field_bytes: usize,
    /// The distributions the sender may write: ids, or prefixes ending in `*`; a line for
    /// another is refused, as `distribution_not_allowed`. `None`: any.
    pub allowed_distributions: Option<&'a [String]>,
}

/// Whether `id` matches one of `patterns` (an id, or a prefix ending in `*`).
pub fn distribution_allowed(patterns: &[String], id: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => id.starts_with(prefix),
        None => p == id,
    })
}

impl Default for ParseOptions<'_> {
    fn default() -> Self {
        ParseOptions {
            default_distribution: None,
            max_listed: 100,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            max_field_bytes: DEFAULT_MAX_FIELD_BYTES,
            allowed_distributions: None,
        }
    }
}

impl<'a> ParseOptions<'a> {
    /// The defaults, with a distribution for lines that name none.
    pub fn with_distribution(default_distribution: Option<&'a str>) -> Self {
        ParseOptions {
            default_distribution,
            ..ParseOptions::default()
        }
    }
}

const ID_SEED: u64 = 0x6564_6765_6c6f_6731;

/// A request id for a record that came without one: a function of the line and its
/// position, so a resent body gets the same ids (and the same sampling decisions).
pub fn derive_request_id(line: &[u8], line_no: u64) -> String {
    let h = xxh3_128_with_seed(line, ID_SEED ^ line_no);
    base64::engine::general_purpose::URL_SAFE.encode(h.to_be_bytes())
}

/// A guess at the length of the shortest record line, for the first allocation only (the
/// vector grows past it). One slot per line break alone would let a body of blank lines
/// allocate gigabytes; one slot per 32 bytes alone reserves 30 times too much for real
/// records, which the allocator then keeps.
const MIN_RECORD_LINE: usize = 32;

/// Parses a body, line by line: records out, and each refused line with its number and
/// reason. Never panics, whatever the bytes.
pub fn parse_body(format: Format, body: &[u8], opts: &ParseOptions<'_>) -> Parsed {
    let max_listed = opts.max_listed;
    let mut out = Parsed {
        // As many slots as lines (a count memchr makes cheaply), but never more than the
        // shortest possible lines could fill: a body of blank lines stays small.
        records: Vec::with_capacity(
            (memchr::memchr_iter(b'\n', body).count() + 1)
                .min(body.len() / MIN_RECORD_LINE + 1)
                .min(1 << 16),
        ),
        ..Parsed::default()
    };
    let mut keys = KeyCache::default();
    let mut header: Option<Header> = None;
    let mut start = 0;
    let mut line_no = 0u64;
    while start < body.len() {
        let end = memchr::memchr(b'\n', &body[start..]).map_or(body.len(), |n| start + n);
        let raw = &body[start..end];
        start = end + 1;
        line_no += 1;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.len() > opts.max_line_bytes {
            if format == Format::W3c && line.starts_with(b"#Fields:") {
                // Data lines after a refused header must not be read with an older one.
                header = None;
            }
            let fault = Fault::new(
                RejectKind::LineTooLong,
                format!(
                    "line of {} bytes is longer than the limit of {} bytes; not parsed",
                    line.len(),
                    opts.max_line_bytes
                ),
            );
            out.reject(line_no, fault, max_listed);
            continue;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        // Each line is parsed in its place at the end of the vector (a record is 720 bytes
        // to move), taken off again when refused.
        let kept = out.records.len();
        let parsed = match format {
            Format::Ndjson => json::parse_line_limited(
                line,
                opts.default_distribution,
                opts.max_field_bytes,
                &mut keys,
                slot(&mut out.records),
            ),
            Format::W3c => match std::str::from_utf8(line) {
                Err(e) => Err(Fault::new(
                    RejectKind::NotUtf8,
                    format!("line is not valid UTF-8 (byte {})", e.valid_up_to()),
                )),
                Ok(text) => {
                    if let Some(rest) = text.strip_prefix("#Fields:") {
                        match Header::parse(rest) {
                            Ok(h) => header = Some(h),
                            Err(e) => {
                                header = None;
                                out.reject(
                                    line_no,
                                    Fault::new(RejectKind::W3cHeader, e),
                                    max_listed,
                                );
                            }
                        }
                        continue;
                    }
                    if text.starts_with('#') {
                        continue;
                    }
                    match &header {
                        Some(h) => h.parse_line_limited(
                            text,
                            opts.default_distribution,
                            opts.max_field_bytes,
                            slot(&mut out.records),
                        ),
                        None => Err(Fault::new(
                            RejectKind::W3cHeader,
                            "data line without a valid #Fields header before it",
                        )),
                    }
                }
            },
        };
        let fault = match parsed {
            // Only a line parsed into a slot is Ok: its record is at `kept`.
            Ok(()) => {
                let rec = &mut out.records[kept];
                if opts
                    .allowed_distributions
                    .is_some_and(|p| !distribution_allowed(p, &rec.distribution_id))
                {
                    let reason = format!(
                        "this token may not write distribution {:?}",
                        rec.distribution_id
                    );
                    Fault::new(RejectKind::DistributionNotAllowed, reason)
                } else {
                    if rec.x_edge_request_id.as_deref().is_none_or(str::is_empty) {
                        rec.x_edge_request_id = Some(derive_request_id(line, line_no));
                    }
                    continue;
                }
            }
            Err(fault) => fault,
        };
        out.records.truncate(kept);
        out.reject(line_no, fault, max_listed);
    }
    out
}

/// A fresh record at the end of `records`, to parse a line into.
fn slot(records: &mut Vec<Record>) -> &mut Record {
    records.push(Record::default());
    let last = records.len() - 1;
    &mut records[last]
}
