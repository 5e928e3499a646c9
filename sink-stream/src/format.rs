//! Real-time message bodies: JSON (CloudFront's standard-log field names) or CloudFront's
//! real-time log format (tab-separated, the selected fields in CloudFront's fixed order).

use std::fmt::Write as _;

use edgelog_record::{FIELDS, Record, Value, field_index, time, write_json};
use serde::{Deserialize, Serialize};

/// How a record becomes a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageFormat {
    /// One JSON object: `timestamp(ms)`, `DistributionId` and the selected fields, named
    /// as in CloudFront's standard logs (what `POST /v1/records` takes).
    #[default]
    Json,
    /// CloudFront's real-time log line: the selected fields, tab-separated, in CloudFront's
    /// order, `-` for empty; `timestamp` is seconds with milliseconds (`1605142100.123`).
    Tsv,
}

impl MessageFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageFormat::Json => "json",
            MessageFormat::Tsv => "tsv",
        }
    }
}

/// CloudFront's real-time log fields that records carry, in CloudFront's order, with
/// the standard-log name where it differs.
pub const REALTIME_FIELDS: &[(&str, &str)] = &[
    ("timestamp", "timestamp"),
    ("c-ip", "c-ip"),
    ("time-to-first-byte", "time-to-first-byte"),
    ("sc-status", "sc-status"),
    ("sc-bytes", "sc-bytes"),
    ("cs-method", "cs-method"),
    ("cs-protocol", "cs-protocol"),
    ("cs-host", "cs(Host)"),
    ("cs-uri-stem", "cs-uri-stem"),
    ("cs-bytes", "cs-bytes"),
    ("x-edge-location", "x-edge-location"),
    ("x-edge-request-id", "x-edge-request-id"),
    ("x-host-header", "x-host-header"),
    ("time-taken", "time-taken"),
    ("cs-protocol-version", "cs-protocol-version"),
    ("cs-user-agent", "cs(User-Agent)"),
    ("cs-referer", "cs(Referer)"),
    ("cs-cookie", "cs(Cookie)"),
    ("cs-uri-query", "cs-uri-query"),
    ("x-edge-response-result-type", "x-edge-response-result-type"),
    ("x-forwarded-for", "x-forwarded-for"),
    ("ssl-protocol", "ssl-protocol"),
    ("ssl-cipher", "ssl-cipher"),
    ("x-edge-result-type", "x-edge-result-type"),
    ("fle-encrypted-fields", "fle-encrypted-fields"),
    ("fle-status", "fle-status"),
    ("sc-content-type", "sc-content-type"),
    ("sc-content-len", "sc-content-len"),
    ("sc-range-start", "sc-range-start"),
    ("sc-range-end", "sc-range-end"),
    ("c-port", "c-port"),
    ("x-edge-detailed-result-type", "x-edge-detailed-result-type"),
    ("c-country", "c-country"),
    ("cache-behavior-path-pattern", "cache-behavior-path-pattern"),
    ("asn", "asn"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Timestamp,
    Field(usize),
}

/// Fields chosen for one distribution, in CloudFront's real-time order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    slots: Vec<Slot>,
    all: bool,
    /// [`Selection::names`], comma-separated: the TSV header, made once.
    columns: String,
}

impl Selection {
    /// Field names in any of CloudFront's spellings (real-time `cs-host`, standard
    /// `cs(Host)`) or Athena's (`cs_host`); empty means every field. Returns the unknown
    /// name on error.
    pub fn parse(names: &[String]) -> Result<Selection, String> {
        let mut wanted = vec![names.is_empty(); REALTIME_FIELDS.len()];
        for n in names {
            let pos = REALTIME_FIELDS
                .iter()
                .position(|(rt, std)| rt == n || std == n)
                .or_else(|| {
                    let i = field_index(n)?;
                    REALTIME_FIELDS
                        .iter()
                        .position(|(_, std)| *std == FIELDS[i].cloudfront)
                })
                .ok_or_else(|| n.clone())?;
            wanted[pos] = true;
        }
        let slots: Vec<Slot> = REALTIME_FIELDS
            .iter()
            .zip(&wanted)
            .filter(|(_, w)| **w)
            .map(|((_, std), _)| match field_index(std) {
                Some(i) => Slot::Field(i),
                None => Slot::Timestamp,
            })
            .collect();
        let mut sel = Selection {
            slots,
            all: names.is_empty(),
            columns: String::new(),
        };
        sel.columns = sel.names().join(",");
        Ok(sel)
    }

    /// [`Selection::names`], comma-separated.
    pub fn columns(&self) -> &str {
        &self.columns
    }

    /// The selected fields' real-time names, in message order (the TSV columns).
    pub fn names(&self) -> Vec<&'static str> {
        self.slots
            .iter()
            .map(|s| match s {
                Slot::Timestamp => "timestamp",
                Slot::Field(i) => REALTIME_FIELDS
                    .iter()
                    .find(|(_, std)| *std == FIELDS[*i].cloudfront)
                    .map_or(FIELDS[*i].cloudfront, |(rt, _)| rt),
            })
            .collect()
    }

    /// Appends `r` as a message body.
    pub fn encode(&self, format: MessageFormat, r: &Record, out: &mut Vec<u8>) {
        match format {
            MessageFormat::Json if self.all => write_json(r, out),
            MessageFormat::Json => self.json(r, out),
            MessageFormat::Tsv => self.tsv(r, out),
        }
    }

    fn json(&self, r: &Record, out: &mut Vec<u8>) {
        let mut s = String::with_capacity(512);
        let _ = write!(s, "{{\"timestamp(ms)\":{}", r.timestamp_ms);
        s.push_str(",\"DistributionId\":");
        push_json_str(&mut s, &r.distribution_id);
        for slot in &self.slots {
            let Slot::Field(i) = *slot else { continue };
            let v = r.get(i);
            if v.is_null() {
                continue;
            }
            s.push(',');
            push_json_str(&mut s, FIELDS[i].cloudfront);
            s.push(':');
            match v {
                Value::Str(Some(t)) => push_json_str(&mut s, t),
                other => write_plain(other, &mut s),
            }
        }
        s.push('}');
        out.extend_from_slice(s.as_bytes());
    }

    fn tsv(&self, r: &Record, out: &mut Vec<u8>) {
        let mut s = String::with_capacity(512);
        for (n, slot) in self.slots.iter().enumerate() {
            if n > 0 {
                s.push('\t');
            }
            match *slot {
                Slot::Timestamp => {
                    let ms = r.timestamp_ms;
                    let _ = write!(s, "{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000));
                }
                Slot::Field(i) => match r.get(i) {
                    Value::Str(Some(t)) => push_tsv_text(&mut s, t),
                    v if v.is_null() => s.push('-'),
                    v => write_plain(v, &mut s),
                },
            }
        }
        out.extend_from_slice(s.as_bytes());
    }
}

fn push_json_str(s: &mut String, t: &str) {
    // A String's Display cannot fail.
    let _ = write!(s, "{}", serde_json::Value::from(t));
}

/// Tabs and line breaks would split the line; CloudFront URL-encodes them the same way.
fn push_tsv_text(s: &mut String, t: &str) {
    if t.is_empty() {
        s.push('-');
        return;
    }
    for c in t.chars() {
        match c {
            '\t' => s.push_str("%09"),
            '\n' => s.push_str("%0A"),
            '\r' => s.push_str("%0D"),
            c => s.push(c),
        }
    }
}

fn write_plain(v: Value<'_>, s: &mut String) {
    let _ = match v {
        Value::U16(Some(n)) => write!(s, "{n}"),
        Value::U32(Some(n)) => write!(s, "{n}"),
        Value::U64(Some(n)) => write!(s, "{n}"),
        Value::I64(Some(n)) => write!(s, "{n}"),
        Value::F64(Some(x)) => write!(s, "{x}"),
        _ => write!(s, "null"),
    };
}

/// Milliseconds of a TSV `timestamp` (`1605142100.123`).
pub fn parse_tsv_timestamp(t: &str) -> Option<i64> {
    time::parse_epoch_seconds(t).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgelog_record::{FIELD_COUNT, KeyCache, parse_json_line};

    fn record() -> Record {
        let mut g = Record {
            timestamp_ms: 1_605_142_100_123,
            distribution_id: "E123EXAMPLE".into(),
            ..Record::default()
        };
        g.set_text(field_index("c-ip").unwrap_or(0), "192.0.2.1")
            .expect("c-ip");
        g.set_text(field_index("sc-status").unwrap_or(0), "503")
            .expect("status");
        g.set_text(field_index("time-taken").unwrap_or(0), "0.25")
            .expect("time");
        g.set_text(field_index("cs(User-Agent)").unwrap_or(0), "a\tb")
            .expect("ua");
        g
    }

    #[test]
    fn every_record_field_has_a_real_time_name() {
        let all = Selection::parse(&[]).expect("every field");
        assert_eq!(all.names().len(), FIELD_COUNT + 1);
        assert_eq!(
            all.names()[..3],
            ["timestamp", "c-ip", "time-to-first-byte"]
        );
    }

    #[test]
    fn selection_takes_any_spelling_and_keeps_cloudfront_order() {
        let names = ["sc_status", "cs(Host)", "timestamp", "c-ip"].map(String::from);
        let sel = Selection::parse(&names).expect("known names");
        assert_eq!(sel.names(), ["timestamp", "c-ip", "sc-status", "cs-host"]);
        assert_eq!(sel.columns(), "timestamp,c-ip,sc-status,cs-host");
        assert_eq!(
            Selection::parse(&["nope".to_owned()]),
            Err("nope".to_owned())
        );
    }

    #[test]
    fn tsv_and_json_carry_the_values() {
        let r = record();
        let names = [
            "timestamp",
            "c-ip",
            "sc-status",
            "time-taken",
            "cs-user-agent",
            "cs-referer",
        ]
        .map(String::from);
        let sel = Selection::parse(&names).expect("names");
        let mut out = Vec::new();
        sel.encode(MessageFormat::Tsv, &r, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "1605142100.123\t192.0.2.1\t503\t0.25\ta%09b\t-"
        );
        assert_eq!(parse_tsv_timestamp("1605142100.123"), Some(r.timestamp_ms));

        out.clear();
        sel.encode(MessageFormat::Json, &r, &mut out);
        let mut keys = KeyCache::default();
        let back = parse_json_line(&out, None, &mut keys).expect("parses back");
        assert_eq!(back, r);
    }
}
