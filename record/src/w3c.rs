//! CloudFront's W3C standard-log format: `#Version` and `#Fields` headers, then one
//! tab-separated line per request, `-` for an empty value.

use std::fmt::Write;

use crate::fields::{FIELDS, Record, field_index};
use crate::json::check_distribution_id;
use crate::reject::{Fault, RejectKind, check_field_len};
use crate::time;
use crate::value::Value;

/// The distribution id in a CloudFront log file name, `<ID>.YYYY-MM-DD-HH.<unique>.gz`.
pub fn distribution_from_file_name(path: &std::path::Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let mut parts = name.split('.');
    let id = parts.next()?;
    let hour = parts.next()?;
    let b = hour.as_bytes();
    let hour_shaped = b.len() == 13 && b[4] == b'-' && b[7] == b'-' && b[10] == b'-';
    (hour_shaped && check_distribution_id(id).is_ok()).then(|| id.to_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Date,
    Time,
    Timestamp,
    TimestampMs,
    Distribution,
    Field(u8),
    Unknown,
}

/// The column layout announced by a `#Fields:` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    columns: Vec<Column>,
}

impl Header {
    /// Parses the part after `#Fields:`.
    pub fn parse(fields: &str) -> Result<Header, String> {
        let columns: Vec<Column> = fields
            .split_whitespace()
            .map(|name| match name {
                "date" => Column::Date,
                "time" => Column::Time,
                "timestamp" => Column::Timestamp,
                "timestamp(ms)" => Column::TimestampMs,
                "DistributionId" => Column::Distribution,
                other => field_index(other).map_or(Column::Unknown, |i| Column::Field(i as u8)),
            })
            .collect();
        let has_time = columns.contains(&Column::Timestamp)
            || columns.contains(&Column::TimestampMs)
            || (columns.contains(&Column::Date) && columns.contains(&Column::Time));
        if !has_time {
            return Err("#Fields names no time: it needs `date` and `time`, or `timestamp`".into());
        }
        Ok(Header { columns })
    }

    /// Parses one data line (no limit on the length of a value).
    pub fn parse_line(
        &self,
        line: &str,
        default_distribution: Option<&str>,
    ) -> Result<Record, String> {
        let mut record = Record::default();
        self.parse_line_limited(line, default_distribution, usize::MAX, &mut record)
            .map_err(String::from)?;
        Ok(record)
    }

    /// Parses one data line into `rec` (a default one), refusing any value longer than
    /// `max_field_bytes`. On an error, `rec` holds part of the line.
    pub(crate) fn parse_line_limited(
        &self,
        line: &str,
        default_distribution: Option<&str>,
        max_field_bytes: usize,
        rec: &mut Record,
    ) -> Result<(), Fault> {
        let (mut days, mut tod, mut ts) = (None, None, None);
        let mut distribution = None;
        let mut n = 0;
        for (i, value) in line.split('\t').enumerate() {
            n += 1;
            let Some(col) = self.columns.get(i) else {
                continue;
            };
            let name = match *col {
                Column::Field(f) => FIELDS[usize::from(f)].cloudfront,
                Column::Date => "date",
                Column::Time => "time",
                Column::Timestamp => "timestamp",
                Column::TimestampMs => "timestamp(ms)",
                Column::Distribution => "DistributionId",
                Column::Unknown => continue,
            };
            check_field_len(value.len(), max_field_bytes).map_err(|f| f.in_field(name))?;
            match *col {
                Column::Field(f) => rec
                    .put_text(usize::from(f), value)
                    .map_err(|f| f.in_field(name))?,
                Column::Date => {
                    days = Some(time::parse_date(value).map_err(|e| Fault::bad(e).in_field(name))?)
                }
                Column::Time => {
                    tod = Some(time::parse_time(value).map_err(|e| Fault::bad(e).in_field(name))?)
                }
                Column::Timestamp => {
                    ts = Some(time::in_range(
                        time::epoch_seconds_ms(value).map_err(|f| f.in_field(name))?,
                    )?)
                }
                Column::TimestampMs => {
                    ts = Some(time::in_range(
                        time::epoch_ms(value).map_err(|f| f.in_field(name))?,
                    )?)
                }
                Column::Distribution if value != "-" => distribution = Some(value),
                Column::Distribution | Column::Unknown => {}
            }
        }
        if n != self.columns.len() {
            return Err(Fault::new(
                RejectKind::ColumnCount,
                format!(
                    "expected {} tab-separated values as #Fields announces, found {n}",
                    self.columns.len()
                ),
            ));
        }
        let ts = match (ts, days, tod) {
            (Some(ts), _, _) => ts,
            (None, Some(d), Some(t)) => d * time::MS_PER_DAY + t,
            _ => {
                return Err(Fault::new(
                    RejectKind::MissingTimestamp,
                    "missing `date` or `time` value",
                ));
            }
        };
        rec.timestamp_ms = time::in_range(ts)?;
        rec.distribution_id = distribution
            .or(default_distribution)
            .ok_or_else(|| Fault::new(
                RejectKind::MissingDistribution,
                "missing distribution id: a W3C line carries none, give `?distribution=` on the request",
            ))?
            .to_owned();
        check_distribution_id(&rec.distribution_id)
            .map_err(|e| Fault::new(RejectKind::BadDistribution, e))
    }
}

/// The `#Version`/`#Fields` header the writer emits: CloudFront's 33 standard fields,
/// then the v2 fields edgelog also carries.
pub fn write_header(out: &mut String) {
    out.push_str("#Version: 1.0\n#Fields: date time");
    for f in FIELDS {
        out.push(' ');
        out.push_str(f.cloudfront);
    }
    out.push('\n');
}

/// Appends one record as a W3C line (with newline), in [`write_header`]'s layout.
pub fn write_line(rec: &Record, out: &mut String) {
    time::write_date(out, rec.timestamp_ms);
    out.push('\t');
    time::write_time(out, rec.timestamp_ms);
    for i in 0..FIELDS.len() {
        out.push('\t');
        write_text(rec.get(i), out);
    }
    out.push('\n');
}

/// Appends a value in its W3C text form (`-` for null).
pub fn write_text(v: Value<'_>, out: &mut String) {
    let _ = match v {
        Value::Str(Some(s)) => {
            out.push_str(s);
            Ok(())
        }
        Value::U16(Some(n)) => write!(out, "{n}"),
        Value::U32(Some(n)) => write!(out, "{n}"),
        Value::U64(Some(n)) => write!(out, "{n}"),
        Value::I64(Some(n)) => write!(out, "{n}"),
        Value::F64(Some(x)) => write!(out, "{x}"),
        _ => {
            out.push('-');
            Ok(())
        }
    };
}
