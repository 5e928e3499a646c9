//! Why a line is refused: in words for the sender, and as a kind for metrics.

use serde::{Deserialize, Serialize};

/// What kind of problem a refused line has. Serialized in snake case; [`RejectKind::label`]
/// is the same text, a low-cardinality Prometheus label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectKind {
    /// The line is longer than the line limit; it was refused without being parsed.
    LineTooLong,
    /// A value is longer than the field limit.
    FieldTooLong,
    /// A number that does not fit its field: too large for its column, negative where
    /// only non-negative values make sense, not finite, or past a field's bound.
    OutOfRange,
    /// A value of the wrong form for its field (`"abc"` for a status code).
    BadValue,
    /// The record's time is outside 2000-01-01 to 2100-01-01 (or overflows).
    TimestampOutOfRange,
    /// The record names no time.
    MissingTimestamp,
    /// The record names no distribution, and the request gave none.
    MissingDistribution,
    /// The distribution id is too long or holds characters it may not.
    BadDistribution,
    /// A W3C line has not as many values as its `#Fields` header announces.
    ColumnCount,
    /// A `#Fields` header is unusable, or a W3C data line has none before it.
    W3cHeader,
    /// A W3C line is not valid UTF-8.
    NotUtf8,
    /// An NDJSON line is not a JSON object.
    InvalidJson,
    /// The line's distribution is not one the request's token may write.
    DistributionNotAllowed,
    /// A kind this version does not know (reading an answer from a newer collector).
    #[default]
    #[serde(other)]
    Other,
}

impl RejectKind {
    /// The kind in snake case, as serialized: a Prometheus label value.
    pub fn label(self) -> &'static str {
        match self {
            RejectKind::LineTooLong => "line_too_long",
            RejectKind::FieldTooLong => "field_too_long",
            RejectKind::OutOfRange => "out_of_range",
            RejectKind::BadValue => "bad_value",
            RejectKind::TimestampOutOfRange => "timestamp_out_of_range",
            RejectKind::MissingTimestamp => "missing_timestamp",
            RejectKind::MissingDistribution => "missing_distribution",
            RejectKind::BadDistribution => "bad_distribution",
            RejectKind::ColumnCount => "column_count",
            RejectKind::W3cHeader => "w3c_header",
            RejectKind::NotUtf8 => "not_utf8",
            RejectKind::InvalidJson => "invalid_json",
            RejectKind::DistributionNotAllowed => "distribution_not_allowed",
            RejectKind::Other => "other",
        }
    }

    /// Every kind, for tests and for pre-registering metrics.
    pub const ALL: [RejectKind; 14] = [
        RejectKind::LineTooLong,
        RejectKind::FieldTooLong,
        RejectKind::OutOfRange,
        RejectKind::BadValue,
        RejectKind::TimestampOutOfRange,
        RejectKind::MissingTimestamp,
        RejectKind::MissingDistribution,
        RejectKind::BadDistribution,
        RejectKind::ColumnCount,
        RejectKind::W3cHeader,
        RejectKind::NotUtf8,
        RejectKind::InvalidJson,
        RejectKind::DistributionNotAllowed,
        RejectKind::Other,
    ];
}

/// A refusal before it is tied to a line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub kind: RejectKind,
    pub reason: String,
}

impl Fault {
    pub fn new(kind: RejectKind, reason: impl Into<String>) -> Fault {
        Fault {
            kind,
            reason: reason.into(),
        }
    }

    pub fn bad(reason: impl Into<String>) -> Fault {
        Fault::new(RejectKind::BadValue, reason)
    }

    pub fn range(reason: impl Into<String>) -> Fault {
        Fault::new(RejectKind::OutOfRange, reason)
    }

    /// Prefixes the reason with the field's name: ``field `sc-status`: ...``; but
    /// "timestamp ... is outside ..." names its field already.
    pub fn in_field(mut self, name: &str) -> Fault {
        if self.kind != RejectKind::TimestampOutOfRange {
            self.reason = format!("field `{name}`: {}", self.reason);
        }
        self
    }
}

impl From<Fault> for String {
    fn from(f: Fault) -> String {
        f.reason
    }
}

/// Default longest line accepted, in bytes (64 KiB).
pub const DEFAULT_MAX_LINE_BYTES: usize = 64 << 10;
/// Default longest value of one field, in bytes (16 KiB).
pub const DEFAULT_MAX_FIELD_BYTES: usize = 16 << 10;
/// The largest line or field limit that may be configured (16 MiB).
pub const MAX_LIMIT_BYTES: usize = 16 << 20;

/// Checks a line and a field limit: both positive, the field limit at most the line limit,
/// the line limit at most [`MAX_LIMIT_BYTES`]. Errors name the offending setting as
/// `max_line_bytes` or `max_field_bytes`.
pub fn check_limits(max_line_bytes: u64, max_field_bytes: u64) -> Result<(), String> {
    if max_line_bytes == 0 || max_line_bytes > MAX_LIMIT_BYTES as u64 {
        return Err(format!(
            "max_line_bytes: must be from 1 to {MAX_LIMIT_BYTES} (16 MiB), got {max_line_bytes}"
        ));
    }
    if max_field_bytes == 0 || max_field_bytes > max_line_bytes {
        return Err(format!(
            "max_field_bytes: must be from 1 to max_line_bytes ({max_line_bytes}), got {max_field_bytes}"
        ));
    }
    Ok(())
}

fn field_too_long(len: usize, max: usize) -> Fault {
    Fault::new(
        RejectKind::FieldTooLong,
        format!("value of {len} bytes is longer than the limit of {max} bytes"),
    )
}

/// Refuses a value of `len` bytes if it is longer than `max`.
pub(crate) fn check_field_len(len: usize, max: usize) -> Result<(), Fault> {
    if len > max {
        Err(field_too_long(len, max))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_serialized_names() {
        for k in RejectKind::ALL {
            let json = serde_json::to_string(&k).expect("serializes");
            assert_eq!(json, format!("\"{}\"", k.label()));
            let back: RejectKind = serde_json::from_str(&json).expect("deserializes");
            assert_eq!(back, k);
        }
        let unknown: RejectKind = serde_json::from_str("\"something_new\"").expect("other");
        assert_eq!(unknown, RejectKind::Other);
    }

    #[test]
    fn limits_are_checked() {
        assert!(check_limits(65_536, 16_384).is_ok());
        assert!(check_limits(1, 1).is_ok());
        assert!(check_limits(MAX_LIMIT_BYTES as u64, MAX_LIMIT_BYTES as u64).is_ok());
        for (line, field, key) in [
            (0, 0, "max_line_bytes"),
            (0, 1, "max_line_bytes"),
            (MAX_LIMIT_BYTES as u64 + 1, 1, "max_line_bytes"),
            (u64::MAX, 1, "max_line_bytes"),
            (100, 0, "max_field_bytes"),
            (100, 101, "max_field_bytes"),
            (100, u64::MAX, "max_field_bytes"),
        ] {
            let e = check_limits(line, field).expect_err("refused");
            assert!(e.starts_with(key), "{line} {field}: {e}");
        }
    }
}
