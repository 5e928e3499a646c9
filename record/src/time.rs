//! UTC calendar arithmetic for CloudFront's `date` and `time` fields.
//!
//! Hand-rolled because it sits on the ingest hot path and only needs the proleptic
//! Gregorian calendar in UTC (Howard Hinnant's `days_from_civil`).

use std::fmt::Write;

use crate::value::shown;

pub const MS_PER_DAY: i64 = 86_400_000;
/// Records must fall within these bounds (2000-01-01 to 2100-01-01) to be accepted.
pub const MIN_TIMESTAMP_MS: i64 = 946_684_800_000;
pub const MAX_TIMESTAMP_MS: i64 = 4_102_444_800_000;

/// Days since 1970-01-01 of a civil date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil date (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

fn digits(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0, |n, b| n * 10 + u32::from(b - b'0')))
}

/// Parses `YYYY-MM-DD` into days since the epoch.
pub fn parse_date(text: &str) -> Result<i64, String> {
    let b = text.as_bytes();
    let bad = || format!("expected a date as YYYY-MM-DD, got {}", shown(text));
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let (y, m, d) = (
        digits(&b[..4]).ok_or_else(bad)?,
        digits(&b[5..7]).ok_or_else(bad)?,
        digits(&b[8..]).ok_or_else(bad)?,
    );
    let days_in_month = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if d == 0 || d > days_in_month {
        return Err(bad());
    }
    Ok(days_from_civil(i64::from(y), m, d))
}

/// Parses `HH:MM:SS` (optionally `.fff`) into milliseconds since midnight.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let b = text.as_bytes();
    let bad = || format!("expected a time as HH:MM:SS, got {}", shown(text));
    if b.len() < 8 || b[2] != b':' || b[5] != b':' {
        return Err(bad());
    }
    let (h, m, s) = (
        digits(&b[..2]).ok_or_else(bad)?,
        digits(&b[3..5]).ok_or_else(bad)?,
        digits(&b[6..8]).ok_or_else(bad)?,
    );
    if h > 23 || m > 59 || s > 60 {
        return Err(bad());
    }
    let ms = match &b[8..] {
        [] => 0,
        [b'.', frac @ ..] if (1..=3).contains(&frac.len()) => {
            digits(frac).ok_or_else(bad)? * 10u32.pow(3 - frac.len() as u32)
        }
        _ => return Err(bad()),
    };
    Ok(i64::from(((h * 60 + m) * 60 + s) * 1000 + ms))
}

/// Parses epoch seconds with up to millisecond precision (`1575493351.123`), exactly.
pub fn parse_epoch_seconds(text: &str) -> Result<i64, String> {
    let bad = || format!("expected epoch seconds, got {}", shown(text));
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs = i64::from(digits(whole.as_bytes()).ok_or_else(bad)?);
    let frac = frac.as_bytes();
    let ms = match frac.len() {
        0 => 0,
        n => {
            let head = &frac[..n.min(3)];
            if !frac.iter().all(u8::is_ascii_digit) {
                return Err(bad());
            }
            i64::from(digits(head).ok_or_else(bad)? * 10u32.pow(3 - head.len() as u32))
        }
    };
    Ok(secs * 1000 + ms)
}

/// Checks that a timestamp is within the accepted range.
pub fn check_range(ts_ms: i64) -> Result<i64, String> {
    if (MIN_TIMESTAMP_MS..MAX_TIMESTAMP_MS).contains(&ts_ms) {
        Ok(ts_ms)
    } else {
        Err(format!(
            "timestamp {ts_ms} ms is outside 2000-01-01 to 2100-01-01"
        ))
    }
}

/// Appends `YYYY-MM-DD` for a timestamp.
pub fn write_date(out: &mut String, ts_ms: i64) {
    let (y, m, d) = civil_from_days(ts_ms.div_euclid(MS_PER_DAY));
    let _ = write!(out, "{y:04}-{m:02}-{d:02}");
}

/// Appends `HH:MM:SS` for a timestamp.
pub fn write_time(out: &mut String, ts_ms: i64) {
    let s = ts_ms.rem_euclid(MS_PER_DAY) / 1000;
    let _ = write!(out, "{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
}

/// The UTC (year, month, day, hour) of a timestamp, for partitioning by event hour.
pub fn hour_parts(ts_ms: i64) -> (i64, u32, u32, u32) {
    let (y, m, d) = civil_from_days(ts_ms.div_euclid(MS_PER_DAY));
    (y, m, d, (ts_ms.rem_euclid(MS_PER_DAY) / 3_600_000) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        for days in [-1, 0, 1, 10_957, 18_234, 47_482, 51_134] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(parse_date("2019-12-04"), Ok(18_234));
        assert!(parse_date("2019-02-29").is_err());
        assert_eq!(parse_date("2020-02-29"), Ok(18_321));
    }

    #[test]
    fn times_parse() {
        assert_eq!(parse_time("21:02:31"), Ok(75_751_000));
        assert_eq!(parse_time("21:02:31.5"), Ok(75_751_500));
        assert!(parse_time("24:00:00").is_err());
        assert_eq!(parse_epoch_seconds("1575493351.123"), Ok(1_575_493_351_123));
        assert_eq!(parse_epoch_seconds("1575493351"), Ok(1_575_493_351_000));
        let mut s = String::new();
        write_date(&mut s, 1_575_493_351_123);
        s.push(' ');
        write_time(&mut s, 1_575_493_351_123);
        assert_eq!(s, "2019-12-04 21:02:31");
    }
}
