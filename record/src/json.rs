//! NDJSON: one JSON object per line, keys as in CloudFront's JSON log output.
//!
//! Values may be JSON numbers or strings (CloudFront writes numbers as strings); `-` and
//! `null` are null. Unknown keys are ignored, so newer CloudFront fields don't break ingest.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::fields::{FIELD_COUNT, FIELDS, Record, field_index};
use crate::time;
use crate::value::{ParseValue, Value, shown};

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
    record: Record,
    ts_ms: Option<i64>,
    date: Option<Cow<'a, str>>,
    time: Option<Cow<'a, str>>,
    distribution: Option<Cow<'a, str>>,
}

struct LineSeed<'c> {
    keys: &'c mut KeyCache,
}

impl<'de> DeserializeSeed<'de> for LineSeed<'_> {
    type Value = Partial<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

fn value_text<'a>(v: ParseValue<'a>) -> Result<Cow<'a, str>, String> {
    match v {
        ParseValue::Str(s) => Ok(s),
        ParseValue::U64(n) => Ok(Cow::Owned(n.to_string())),
        other => Err(format!("expected a string, got {other:?}")),
    }
}

impl<'de> Visitor<'de> for LineSeed<'_> {
    type Value = Partial<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object with CloudFront log fields")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut p = Partial::default();
        let mut prev = 0;
        while let Some(CowStr(key)) = map.next_key::<CowStr<'de>>()? {
            let slot = self.keys.resolve(prev, &key);
            prev = slot_index(slot);
            if slot == Slot::Unknown {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let value: ParseValue<'de> = map.next_value()?;
            let bad = |msg: String| de::Error::custom(format!("field `{key}`: {msg}"));
            match slot {
                Slot::Field(i) => p.record.set_value(usize::from(i), value).map_err(bad)?,
                Slot::Timestamp => {
                    p.ts_ms = Some(match value {
                        ParseValue::U64(s) => s.saturating_mul(1000) as i64,
                        ParseValue::F64(s) => (s * 1000.0).round() as i64,
                        ParseValue::Str(s) => time::parse_epoch_seconds(&s).map_err(bad)?,
                        other => return Err(bad(format!("expected epoch seconds, got {other:?}"))),
                    })
                }
                Slot::TimestampMs => {
                    p.ts_ms = Some(match value {
                        ParseValue::U64(ms) => ms as i64,
                        ParseValue::Str(s) => s.parse().map_err(|_| {
                            bad(format!("expected epoch milliseconds, got {}", shown(&s)))
                        })?,
                        other => {
                            return Err(bad(format!("expected epoch milliseconds, got {other:?}")));
                        }
                    })
                }
                Slot::Date => p.date = Some(value_text(value).map_err(bad)?),
                Slot::Time => p.time = Some(value_text(value).map_err(bad)?),
                Slot::Distribution => match value {
                    ParseValue::Null => {}
                    v => p.distribution = Some(value_text(v).map_err(bad)?),
                },
                Slot::Unknown => {}
            }
        }
        Ok(p)
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
fn finish(mut p: Partial<'_>, default_distribution: Option<&str>) -> Result<Record, String> {
    let ts = match (p.ts_ms, &p.date, &p.time) {
        (Some(ts), _, _) => ts,
        (None, Some(d), Some(t)) => {
            time::parse_date(d).map_err(|e| format!("field `date`: {e}"))? * time::MS_PER_DAY
                + time::parse_time(t).map_err(|e| format!("field `time`: {e}"))?
        }
        _ => {
            return Err(
                "missing timestamp: give `timestamp`, `timestamp(ms)`, or `date` and `time`".into(),
            );
        }
    };
    p.record.timestamp_ms = time::check_range(ts)?;
    p.record.distribution_id = match (p.distribution, default_distribution) {
        (Some(d), _) => d.into_owned(),
        (None, Some(d)) => d.to_owned(),
        (None, None) => {
            return Err(
                "missing distribution id: give `DistributionId` in the record or `?distribution=` on the request"
                    .into(),
            );
        }
    };
    check_distribution_id(&p.record.distribution_id)?;
    Ok(p.record)
}

/// Parses one NDJSON line.
pub fn parse_line(
    line: &[u8],
    default_distribution: Option<&str>,
    keys: &mut KeyCache,
) -> Result<Record, String> {
    let mut de = serde_json::Deserializer::from_slice(line);
    let partial = LineSeed { keys }
        .deserialize(&mut de)
        .and_then(|p| de.end().map(|()| p))
        .map_err(|e| json_error(&e))?;
    finish(partial, default_distribution)
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
