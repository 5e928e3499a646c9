//! A whole request body: lines in, records and per-line refusals out.

use base64::Engine;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128_with_seed;

use crate::fields::Record;
use crate::json::{self, KeyCache};
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

/// One refused line: its 1-based number in the body, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub line: u64,
    pub reason: String,
}

/// The outcome of parsing one body.
#[derive(Debug, Default)]
pub struct Parsed {
    pub records: Vec<Record>,
    pub rejected: Vec<Rejection>,
    /// How many refusals were counted but not listed (beyond `max_listed`).
    pub rejected_unlisted: u64,
}

impl Parsed {
    fn reject(&mut self, line: u64, reason: String, max_listed: usize) {
        if self.rejected.len() < max_listed {
            self.rejected.push(Rejection { line, reason });
        } else {
            self.rejected_unlisted += 1;
        }
    }

    /// Total refused lines, listed or not.
    pub fn rejected_count(&self) -> u64 {
        self.rejected.len() as u64 + self.rejected_unlisted
    }
}

const ID_SEED: u64 = 0x6564_6765_6c6f_6731;

/// A request id for a record that came without one: a function of the line and its
/// position, so a resent body gets the same ids (and the same sampling decisions).
pub fn derive_request_id(line: &[u8], line_no: u64) -> String {
    let h = xxh3_128_with_seed(line, ID_SEED ^ line_no);
    base64::engine::general_purpose::URL_SAFE.encode(h.to_be_bytes())
}

/// Parses a body. `default_distribution` applies to lines that name none; at most
/// `max_listed` refusals are listed individually.
pub fn parse_body(
    format: Format,
    body: &[u8],
    default_distribution: Option<&str>,
    max_listed: usize,
) -> Parsed {
    let lines = memchr::memchr_iter(b'\n', body).count() + 1;
    let mut out = Parsed {
        records: Vec::with_capacity(lines),
        ..Parsed::default()
    };
    let mut keys = KeyCache::default();
    let mut header: Option<Header> = None;
    let mut start = 0;
    for i in 0..lines {
        let end = memchr::memchr(b'\n', &body[start..]).map_or(body.len(), |n| start + n);
        let raw = &body[start..end];
        start = (end + 1).min(body.len());
        let line_no = i as u64 + 1;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed = match format {
            Format::Ndjson => json::parse_line(line, default_distribution, &mut keys),
            Format::W3c => match std::str::from_utf8(line) {
                Err(e) => Err(format!(
                    "line is not valid UTF-8 (byte {})",
                    e.valid_up_to()
                )),
                Ok(text) => {
                    if let Some(rest) = text.strip_prefix("#Fields:") {
                        match Header::parse(rest) {
                            Ok(h) => header = Some(h),
                            Err(e) => {
                                header = None;
                                out.reject(line_no, e, max_listed);
                            }
                        }
                        continue;
                    }
                    if text.starts_with('#') {
                        continue;
                    }
                    match &header {
                        Some(h) => h.parse_line(text, default_distribution),
                        None => Err("data line without a valid #Fields header before it".into()),
                    }
                }
            },
        };
        match parsed {
            Ok(mut rec) => {
                if rec.x_edge_request_id.as_deref().is_none_or(str::is_empty) {
                    rec.x_edge_request_id = Some(derive_request_id(line, line_no));
                }
                out.records.push(rec);
            }
            Err(reason) => out.reject(line_no, reason, max_listed),
        }
    }
    out
}
