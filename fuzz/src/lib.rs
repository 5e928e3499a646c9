//! What the fuzz targets share: the options they parse with, the invariants every parse
//! must keep, and the collector's body decoding (gzip and zstd with its bounds).

use std::io::{Read, Write};

use edgelog_record::{
    DEFAULT_MAX_FIELD_BYTES, DEFAULT_MAX_LINE_BYTES, FIELDS, Field, Format, KeyCache,
    MAX_REASON_BYTES, MAX_SECONDS, ParseOptions, Parsed, RejectKind, Value, check_distribution_id,
    parse_body, parse_json_line, time, write_json,
};

/// The collector's defaults, and tight limits that make every limit path reachable.
pub const OPTIONS: [ParseOptions<'static>; 2] = [
    ParseOptions {
        default_distribution: Some("E1"),
        max_listed: 100,
        max_line_bytes: DEFAULT_MAX_LINE_BYTES,
        max_field_bytes: DEFAULT_MAX_FIELD_BYTES,
        allowed_distributions: None,
    },
    ParseOptions {
        default_distribution: Some("E1"),
        max_listed: 3,
        max_line_bytes: 120,
        max_field_bytes: 12,
        allowed_distributions: None,
    },
];

/// Checks what every parse of any body must hold: every line is a record, a refusal or
/// nothing (blank, or a W3C header); refusals are in order, bounded and of a known kind;
/// every record is within the limits and ranges, and writes and parses back equal.
pub fn check(body: &[u8], opts: &ParseOptions<'_>, parsed: &Parsed) {
    let lines = body.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    let total = parsed.records.len() as u64 + parsed.rejected_count();
    assert!(total <= lines, "{total} outcomes for {lines} lines");
    assert!(parsed.rejected.len() <= opts.max_listed);
    let mut last = 0;
    for r in &parsed.rejected {
        assert!(
            r.line > last && r.line <= lines,
            "line {} after {last}",
            r.line
        );
        last = r.line;
        assert!(!r.reason.is_empty());
        assert!(r.reason.len() <= MAX_REASON_BYTES + 3, "{}", r.reason.len());
        assert_ne!(r.kind, RejectKind::Other, "{}", r.reason);
    }
    let mut keys = KeyCache::default();
    let mut out = Vec::new();
    for rec in &parsed.records {
        assert!(
            (time::MIN_TIMESTAMP_MS..time::MAX_TIMESTAMP_MS).contains(&rec.timestamp_ms),
            "{}",
            rec.timestamp_ms
        );
        assert!(check_distribution_id(&rec.distribution_id).is_ok());
        assert!(!rec.request_id().is_empty());
        for i in 0..FIELDS.len() {
            match rec.get(i) {
                // A derived request id is not a value the sender gave.
                Value::Str(Some(s)) if i != Field::x_edge_request_id as usize => {
                    assert!(s.len() <= opts.max_field_bytes, "{} bytes", s.len());
                    assert_ne!(s, "-");
                }
                Value::U64(Some(n)) => assert!(i64::try_from(n).is_ok(), "{n}"),
                Value::F64(Some(x)) => {
                    assert!(
                        (0.0..=MAX_SECONDS).contains(&x) && x.is_sign_positive(),
                        "{x}"
                    )
                }
                _ => {}
            }
        }
        out.clear();
        write_json(rec, &mut out);
        let back = parse_json_line(&out, None, &mut keys).expect("a written record parses");
        assert_eq!(&back, rec);
    }
}

/// Largest decompressed body (the collector's `max_decompressed_bytes`, smaller here to keep
/// each input fast).
pub const MAX_DECODED: u64 = 1 << 20;

/// As the collector reads a decoder: at most `limit` bytes, one more to tell it is over.
fn read_limited(r: impl Read, limit: u64) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    r.take(limit + 1).read_to_end(&mut out).ok()?;
    (out.len() as u64 <= limit).then_some(out)
}

/// gzip (several members, as `MultiGzDecoder`), bounded.
pub fn gunzip(body: &[u8]) -> Option<Vec<u8>> {
    read_limited(flate2::read::MultiGzDecoder::new(body), MAX_DECODED)
}

/// zstd with the collector's window limit (2^24 bytes), bounded.
pub fn unzstd(body: &[u8]) -> Option<Vec<u8>> {
    let mut d = zstd::stream::read::Decoder::new(body).ok()?;
    d.window_log_max(24).ok()?;
    read_limited(d, MAX_DECODED)
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(body).expect("gzip into memory");
    e.finish().expect("gzip into memory")
}

/// One request body. `mode` (the first byte) chooses:
/// - bits 0-1: 0 as is, 1 gunzip, 2 unzstd, 3 compress the rest and decompress it again
///   (bit 2: gzip or zstd), which must give it back;
/// - bits 3-4: NDJSON, W3C, or sniffed as the collector does without `?format=`;
/// - bit 5: which [`OPTIONS`].
pub fn body(data: &[u8]) {
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    let decoded = match mode & 3 {
        0 => Some(payload.to_vec()),
        1 => gunzip(payload),
        2 => unzstd(payload),
        _ => {
            let back = if mode & 4 == 0 {
                gunzip(&gzip(payload))
            } else {
                unzstd(&zstd::stream::encode_all(payload, 1).expect("zstd into memory"))
            };
            assert_eq!(
                back.as_deref(),
                Some(payload),
                "a round trip gives the body back"
            );
            back
        }
    };
    let Some(body) = decoded else {
        return;
    };
    let format = match (mode >> 3) & 3 {
        0 => Some(Format::Ndjson),
        1 => Some(Format::W3c),
        _ => Format::sniff(&body),
    };
    let Some(format) = format else {
        return;
    };
    let opts = &OPTIONS[usize::from(mode >> 5) & 1];
    check(&body, opts, &parse_body(format, &body, opts));
}
