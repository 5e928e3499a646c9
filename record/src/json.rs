//! NDJSON: one JSON object per line, keys as in CloudFront's JSON log output.
//!
//! Values may be JSON numbers or strings (CloudFront writes numbers as strings); `-` and
//! `null` are null. Unknown keys are ignored, so newer CloudFront fields don't break ingest.
//!
//! Just over 500 lines: the parser, its per-field checks and their unit tests belong together.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::fields::{FIELD_COUNT, FIELDS, Record, field_index};
use crate::reject::{Fault, RejectKind, check_field_len};
use crate::time;
use crate::value::{FieldKind, ParseValue, Value, shown};

/// Where a JSON key goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Timestamp,
    TimestampMs,
    Date,
    Time,
    Distribution,
    Field(u8),
    Unknown,
}

fn slot_of(key: &str) -> Slot {
    match key {
        "timestamp" => Slot::Timestamp,
        "timestamp(ms)" | "timestamp_ms" => Slot::TimestampMs,
        "date" => Slot::Date,
        "time" => Slot::Time,
        "DistributionId" | "distribution_id" | "distributionid" => Slot::Distribution,
        other => field_index(other).map_or(Slot::Unknown, |i| Slot::Field(i as u8)),
    }
}

/// Resolves keys to slots, remembering which keys followed which in earlier lines.
/// Senders write keys in a fixed order, skipping null fields, so the key after a given
/// key is one of a few: a handful of short comparisons instead of a table scan.
pub struct KeyCache {
    successors: Vec<Ways>,
}

/// The last few keys seen after one key, with their slots.
type Ways = [Option<(Box<str>, Slot)>; 4];

impl Default for KeyCache {
    fn default() -> Self {
        KeyCache {
            successors: vec![Default::default(); SLOTS],
        }
    }
}

/// Keys longer than this are resolved but not remembered (the longest name is 30 bytes).
const MAX_CACHED_KEY: usize = 64;

/// Slots have indices 1.. (0 is the start of a line).
const SLOTS: usize = FIELD_COUNT + 8;

fn slot_index(slot: Slot) -> usize {
    match slot {
        Slot::Timestamp => 1,
        Slot::TimestampMs => 2,
        Slot::Date => 3,
        Slot::Time => 4,
        Slot::Distribution => 5,
        Slot::Unknown => 6,
        Slot::Field(i) => 7 + usize::from(i),
    }
}

impl KeyCache {
    fn resolve(&mut self, prev: usize, key: &str) -> Slot {
        let ways = &mut self.successors[prev];
        if let Some((_, slot)) = ways.iter().flatten().find(|(k, _)| **k == *key) {
            return *slot;
        }
        let slot = slot_of(key);
        if key.len() > MAX_CACHED_KEY {
            // No field is named this long: don't let a line fill the cache with it.
            return slot;
        }
        ways.rotate_right(1);
        ways[0] = Some((key.into(), slot));
        slot
    }
}

struct CowStr<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> de::Deserialize<'de> for ParseValue<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ParseValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, a number or null")
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(ParseValue::Null)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(ParseValue::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(ParseValue::Bool(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ParseValue::U64(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(ParseValue::I64(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(ParseValue::F64(v))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(ParseValue::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ParseValue::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(ParseValue::Str(Cow::Owned(v)))
            }
        }
        d.deserialize_any(V)
    }
}

/// What a line said about its own time and distribution, before they are settled.
#[derive(Default)]
struct Partial<'a> {
    ts_ms: Option<i64>,
    date: Option<Cow<'a, str>>,
    time: Option<Cow<'a, str>>,
    distribution: Option<Cow<'a, str>>,
}

struct LineSeed<'c> {
    keys: &'c mut KeyCache,
    /// Where the fields go: in place, as a record is 720 bytes to move.
    record: &'c mut Record,
    max_field_bytes: usize,
    /// Why the line was refused, when our check (not JSON syntax) refused it: serde only
    /// carries a message, this keeps the kind.
    fault: &'c mut Option<Fault>,
}

impl<'de> DeserializeSeed<'de> for LineSeed<'_> {
    type Value = Partial<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

fn value_text<'a>(v: ParseValue<'a>) -> Result<Cow<'a, str>, Fault> {
    match v {
        ParseValue::Str(s) => Ok(s),
        ParseValue::U64(n) => Ok(Cow::Owned(n.to_string())),
        other => Err(Fault::bad(format!("expected a string, got {other:?}"))),
    }
}

/// Digits of a number written in decimal.
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Milliseconds of a `timestamp` value (epoch seconds), checked; the range too.
fn timestamp_seconds(v: ParseValue<'_>) -> Result<i64, Fault> {
    let from_secs = |s: i128| {
        i64::try_from(s.saturating_mul(1000)).map_err(|_| {
            Fault::new(
                RejectKind::TimestampOutOfRange,
                format!("timestamp {s} s is outside 2000-01-01 to 2100-01-01"),
            )
        })
    };
    let ms = match v {
        ParseValue::U64(s) => from_secs(i128::from(s))?,
        ParseValue::I64(s) => from_secs(i128::from(s))?,
        ParseValue::F64(s) => time::epoch_seconds_f64(s)?,
        ParseValue::Str(s) => time::epoch_seconds_ms(&s)?,
        other => return Err(Fault::bad(format!("expected epoch seconds, got {other:?}"))),
    };
    time::in_range(ms)
}

/// Milliseconds of a `timestamp(ms)` value, checked; the range too.
fn timestamp_millis(v: ParseValue<'_>) -> Result<i64, Fault> {
    let outside = |what: String| {
        Fault::new(
            RejectKind::TimestampOutOfRange,
            format!("timestamp {what} ms is outside 2000-01-01 to 2100-01-01"),
        )
    };
    let ms = match v {
        ParseValue::U64(ms) => i64::try_from(ms).map_err(|_| outside(ms.to_string()))?,
        ParseValue::I64(ms) => ms,
        // serde_json reads `-0` as a double.
        ParseValue::F64(0.0) => 0,
        // As for integer fields: a double is not an integer, but an integral one past
        // i64 is out of range.
        ParseValue::F64(x)
            if x.is_finite() && x.fract() == 0.0 && !(-9.2e18..9.2e18).contains(&x) =>
        {
            return Err(outside(format!("{x:e}")));
        }
        ParseValue::Str(s) => time::epoch_ms(&s)?,
        other => {
            return Err(Fault::bad(format!(
                "expected epoch milliseconds, got {other:?}"
            )));
        }
    };
    time::in_range(ms)
}

/// serde_json's message for an error inside a value, made ours: the field named, the
/// position as a column, and a kind.
fn value_fault(key: &str, msg: &str) -> Fault {
    let kind = if msg.starts_with("number out of range") {
        RejectKind::OutOfRange
    } else if msg.starts_with("invalid type") {
        RejectKind::BadValue
    } else {
        RejectKind::InvalidJson
    };
    let msg = match msg.rfind(" at line ") {
        Some(cut) => {
            let column = msg[cut..].rsplit(' ').next().unwrap_or("");
            format!("{} (column {column})", &msg[..cut])
        }
        None => msg.to_owned(),
    };
    Fault::new(kind, msg).in_field(key)
}

impl<'de> Visitor<'de> for LineSeed<'_> {
    type Value = Partial<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object with CloudFront log fields")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut p = Partial::default();
        let mut prev = 0;
        let mut last_key: Option<Cow<'de, str>> = None;
        loop {
            let key = match map.next_key::<CowStr<'de>>() {
                Ok(Some(CowStr(key))) => key,
                Ok(None) => break,
                // A syntax error after a value (`"sc-status":200x`): say where.
                Err(e) => match &last_key {
                    Some(k) if !k.is_empty() => {
                        let mut f = value_fault(k, &e.to_string());
                        f.reason = format!("after {}", f.reason);
                        let err = de::Error::custom(&f.reason);
                        *self.fault = Some(f);
                        return Err(err);
                    }
                    _ => return Err(e),
                },
            };
            let slot = self.keys.resolve(prev, &key);
            prev = slot_index(slot);
            if slot == Slot::Unknown {
                map.next_value::<IgnoredAny>()?;
                last_key = None;
                continue;
            }
            let value = match map.next_value::<ParseValue<'de>>() {
                Ok(v) => v,
                Err(e) => {
                    let mut f = value_fault(&key, &e.to_string());
                    if f.kind == RejectKind::OutOfRange
                        && matches!(slot, Slot::Timestamp | Slot::TimestampMs)
                    {
                        f = Fault::new(
                            RejectKind::TimestampOutOfRange,
                            format!(
                                "timestamp is outside 2000-01-01 to 2100-01-01: {}",
                                f.reason
                            ),
                        );
                    }
                    let err = de::Error::custom(&f.reason);
                    *self.fault = Some(f);
                    return Err(err);
                }
            };
            match self.settle(&mut p, slot, value) {
                Ok(()) => {}
                Err(f) => {
                    let f = f.in_field(&key);
                    let err = de::Error::custom(&f.reason);
                    *self.fault = Some(f);
                    return Err(err);
                }
            }
            last_key = Some(key);
        }
        Ok(p)
    }
}

impl LineSeed<'_> {
    /// Puts one value where its key says.
    fn settle<'de>(
        &mut self,
        p: &mut Partial<'de>,
        slot: Slot,
        value: ParseValue<'de>,
    ) -> Result<(), Fault> {
        // A number is kept as its text in a string field: that text counts too.
        let string_field =
            matches!(slot, Slot::Field(i) if FIELDS[usize::from(i)].kind == FieldKind::Str);
        let len = match &value {
            ParseValue::Str(s) => s.len(),
            ParseValue::U64(n) if string_field => decimal_len(*n),
            ParseValue::I64(n) if string_field => {
                decimal_len(n.unsigned_abs()) + usize::from(*n < 0)
            }
            _ => 0,
        };
        check_field_len(len, self.max_field_bytes)?;
        match slot {
            Slot::Field(i) => self.record.put_value(usize::from(i), value)?,
            Slot::Timestamp => p.ts_ms = Some(timestamp_seconds(value)?),
            Slot::TimestampMs => p.ts_ms = Some(timestamp_millis(value)?),
            Slot::Date => p.date = Some(value_text(value)?),
            Slot::Time => p.time = Some(value_text(value)?),
            Slot::Distribution => match value {
                ParseValue::Null => {}
                v => p.distribution = Some(value_text(v)?),
            },
            Slot::Unknown => {}
        }
        Ok(())
    }
}

/// Checks a distribution id: it becomes a path component, so only `[A-Za-z0-9_-]`.
pub fn check_distribution_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err(format!(
            "distribution id must be 1 to 128 characters, got {}",
            shown(id)
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "distribution id may hold only letters, digits, '_' and '-', got {}",
            shown(id)
        ));
    }
    Ok(())
}

/// Settles timestamp and distribution from what a line gave.
fn finish(
    p: Partial<'_>,
    default_distribution: Option<&str>,
    record: &mut Record,
) -> Result<(), Fault> {
    let ts = match (p.ts_ms, &p.date, &p.time) {
        (Some(ts), _, _) => ts,
        (None, Some(d), Some(t)) => {
            time::parse_date(d).map_err(|e| Fault::bad(e).in_field("date"))? * time::MS_PER_DAY
                + time::parse_time(t).map_err(|e| Fault::bad(e).in_field("time"))?
        }
        _ => {
            return Err(Fault::new(
                RejectKind::MissingTimestamp,
                "missing timestamp: give `timestamp`, `timestamp(ms)`, or `date` and `time`",
            ));
        }
    };
    record.timestamp_ms = time::in_range(ts)?;
    record.distribution_id = match (p.distribution, default_distribution) {
        (Some(d), _) => d.into_owned(),
        (None, Some(d)) => d.to_owned(),
        (None, None) => {
            return Err(Fault::new(
                RejectKind::MissingDistribution,
                "missing distribution id: give `DistributionId` in the record or `?distribution=` on the request",
            ));
        }
    };
    check_distribution_id(&record.distribution_id)
        .map_err(|e| Fault::new(RejectKind::BadDistribution, e))
}

/// Parses one NDJSON line (no limit on the length of a value).
pub fn parse_line(
    line: &[u8],
    default_distribution: Option<&str>,
    keys: &mut KeyCache,
) -> Result<Record, String> {
    let mut record = Record::default();
    parse_line_limited(line, default_distribution, usize::MAX, keys, &mut record)
        .map_err(String::from)?;
    Ok(record)
}

/// Parses one NDJSON line into `record` (a default one), refusing any string value
/// longer than `max_field_bytes`. On an error, `record` holds part of the line.
pub(crate) fn parse_line_limited(
    line: &[u8],
    default_distribution: Option<&str>,
    max_field_bytes: usize,
    keys: &mut KeyCache,
    record: &mut Record,
) -> Result<(), Fault> {
    let mut fault = None;
    let seed = LineSeed {
        keys,
        record: &mut *record,
        max_field_bytes,
        fault: &mut fault,
    };
    // A line checked as UTF-8 in one pass is read as text: serde_json then skips checking
    // each string again (a tenth of the parse). Other lines keep serde_json's own message.
    let parsed = match std::str::from_utf8(line) {
        Ok(text) => {
            let mut de = serde_json::Deserializer::from_str(text);
            seed.deserialize(&mut de).and_then(|p| de.end().map(|()| p))
        }
        Err(_) => {
            let mut de = serde_json::Deserializer::from_slice(line);
            seed.deserialize(&mut de).and_then(|p| de.end().map(|()| p))
        }
    };
    match parsed {
        Ok(partial) => finish(partial, default_distribution, record),
        Err(e) => Err(fault.unwrap_or_else(|| Fault::new(RejectKind::InvalidJson, json_error(&e)))),
    }
}

/// serde_json's message without its "at line 1 column N" (the line is ours to name).
fn json_error(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let msg = match msg.rfind(" at line ") {
        Some(cut) => &msg[..cut],
        None => &msg,
    };
    format!("{msg} (column {})", e.column())
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Appends one record as a JSON object (no newline), keys as CloudFront names them.
pub fn write_record(rec: &Record, out: &mut Vec<u8>) {
    let mut date = String::with_capacity(20);
    time::write_date(&mut date, rec.timestamp_ms);
    let mut tm = String::with_capacity(8);
    time::write_time(&mut tm, rec.timestamp_ms);
    out.extend_from_slice(b"{\"timestamp(ms)\":");
    out.extend_from_slice(rec.timestamp_ms.to_string().as_bytes());
    out.extend_from_slice(b",\"date\":\"");
    out.extend_from_slice(date.as_bytes());
    out.extend_from_slice(b"\",\"time\":\"");
    out.extend_from_slice(tm.as_bytes());
    out.extend_from_slice(b"\",\"DistributionId\":");
    push_json_str(out, &rec.distribution_id);
    for (i, spec) in FIELDS.iter().enumerate().take(FIELD_COUNT) {
        let v = rec.get(i);
        if v.is_null() {
            continue;
        }
        out.push(b',');
        push_json_str(out, spec.cloudfront);
        out.push(b':');
        write_value(v, out);
    }
    out.push(b'}');
}

/// Appends one value as JSON (`null` for a null).
pub fn write_value(v: Value<'_>, out: &mut Vec<u8>) {
    let text = match v {
        Value::Str(Some(s)) => return push_json_str(out, s),
        Value::U16(Some(n)) => n.to_string(),
        Value::U32(Some(n)) => n.to_string(),
        Value::U64(Some(n)) => n.to_string(),
        Value::I64(Some(n)) => n.to_string(),
        Value::F64(Some(x)) => x.to_string(),
        _ => "null".to_owned(),
    };
    out.extend_from_slice(text.as_bytes());
}
