//! UTC calendar arithmetic for CloudFront's `date` and `time` fields.
//!
//! Hand-rolled because it sits on the ingest hot path and only needs the proleptic
//! Gregorian calendar in UTC (Howard Hinnant's `days_from_civil`).

use std::fmt::Write;

use crate::reject::{Fault, RejectKind};
use crate::value::{IntError, is_decimal, parse_digits, parse_int, shown};

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

/// Fixed-width digit groups of a date or a time (at most 4 digits: no overflow).
fn digits(s: &[u8]) -> Option<u32> {
    parse_digits(s).ok().and_then(|n| u32::try_from(n).ok())
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

fn outside(shown_value: &str) -> Fault {
    Fault::new(
        RejectKind::TimestampOutOfRange,
        format!("timestamp {shown_value} is outside 2000-01-01 to 2100-01-01"),
    )
}

/// Epoch seconds as a double (a JSON number) to milliseconds, rounded; a value past `i64`
/// milliseconds is out of range. The range itself is not checked.
pub(crate) fn epoch_seconds_f64(s: f64) -> Result<i64, Fault> {
    let ms = (s * 1000.0).round();
    // Bounds exactly representable as doubles: anything between is a valid i64.
    if (-9.2e18..9.2e18).contains(&ms) {
        Ok(ms as i64)
    } else {
        Err(outside(&format!("{s:e} s")))
    }
}

/// Epoch seconds, `-?digits(.digits)?`, to milliseconds rounded to the nearest one (as a
/// JSON number is), with checked arithmetic: a value past `i64` milliseconds is out of
/// range, never wrapped. With an exponent (`1.7e9`), read as a JSON number would be. The
/// range itself is not checked.
pub(crate) fn epoch_seconds_ms(text: &str) -> Result<i64, Fault> {
    let bad = || Fault::bad(format!("expected epoch seconds, got {}", shown(text)));
    if text.contains(['e', 'E']) {
        return match text.parse::<f64>() {
            Ok(s) if is_decimal(text) => epoch_seconds_f64(s),
            _ => Err(bad()),
        };
    }
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, frac) = match unsigned.split_once('.') {
        Some((w, f)) if !f.is_empty() => (w, f.as_bytes()),
        Some(_) => return Err(bad()),
        None => (unsigned, &b""[..]),
    };
    if !frac.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let secs = match parse_digits(whole.as_bytes()) {
        Ok(s) => i128::from(s),
        Err(IntError::Syntax) => return Err(bad()),
        Err(IntError::Overflow) => return Err(outside(&format!("{} s", shown(text)))),
    };
    // Milliseconds from the first three digits, rounded half up on the fourth.
    let ms = frac
        .iter()
        .chain(std::iter::repeat(&b'0'))
        .take(3)
        .fold(0i128, |n, d| n * 10 + i128::from(d - b'0'))
        + i128::from(frac.get(3).is_some_and(|&d| d >= b'5'));
    let total = secs * 1000 + ms;
    i64::try_from(if negative { -total } else { total })
        .map_err(|_| outside(&format!("{} s", shown(text))))
}

/// Parses epoch seconds with up to millisecond precision (`1575493351.123`), exactly;
/// further digits round to the nearest millisecond. The range is not checked.
pub fn parse_epoch_seconds(text: &str) -> Result<i64, String> {
    epoch_seconds_ms(text).map_err(String::from)
}

/// Epoch milliseconds as integer text (`-?digits`, no `+`), checked.
pub(crate) fn epoch_ms(text: &str) -> Result<i64, Fault> {
    match parse_int(text) {
        Ok(n) => i64::try_from(n).map_err(|_| outside(&format!("{} ms", shown(text)))),
        Err(IntError::Overflow) => Err(outside(&format!("{} ms", shown(text)))),
        Err(IntError::Syntax) => Err(Fault::bad(format!(
            "expected epoch milliseconds, got {}",
            shown(text)
        ))),
    }
}

/// Checks that a timestamp is within the accepted range.
pub fn check_range(ts_ms: i64) -> Result<i64, String> {
    in_range(ts_ms).map_err(String::from)
}

pub(crate) fn in_range(ts_ms: i64) -> Result<i64, Fault> {
    if (MIN_TIMESTAMP_MS..MAX_TIMESTAMP_MS).contains(&ts_ms) {
        Ok(ts_ms)
    } else {
        Err(outside(&format!("{ts_ms} ms")))
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
        assert_eq!(
            parse_epoch_seconds("1575493351.1235"),
            Ok(1_575_493_351_124)
        );
        assert_eq!(
            parse_epoch_seconds("1575493351.9999"),
            Ok(1_575_493_352_000)
        );
        assert_eq!(parse_epoch_seconds("-1.5"), Ok(-1_500));
        let mut s = String::new();
        write_date(&mut s, 1_575_493_351_123);
        s.push(' ');
        write_time(&mut s, 1_575_493_351_123);
        assert_eq!(s, "2019-12-04 21:02:31");
    }

    #[test]
    fn epoch_text_never_wraps() {
        // Past u32 seconds: used to wrap into 2019 (and panic in debug builds).
        assert_eq!(epoch_seconds_ms("5870000000"), Ok(5_870_000_000_000));
        assert!(in_range(5_870_000_000_000).is_err());
        // Milliseconds under `timestamp`: seconds in the year 55,900, not 2067.
        assert_eq!(epoch_seconds_ms("1764000000000"), Ok(1_764_000_000_000_000));
        for text in [
            "9223372036854776",
            "9223372036854775808",
            "18446744073709551616",
            "99999999999999999999999999999",
        ] {
            let f = epoch_seconds_ms(text).expect_err(text);
            assert_eq!(f.kind, RejectKind::TimestampOutOfRange, "{text}");
        }
        assert_eq!(
            epoch_seconds_ms("9223372036854775.807"),
            Ok(i64::MAX),
            "the largest representable"
        );
        assert_eq!(epoch_seconds_ms("1.7e9"), Ok(1_700_000_000_000));
        assert_eq!(
            epoch_seconds_ms("1e400").map_err(|f| f.kind),
            Err(RejectKind::TimestampOutOfRange)
        );
        for text in [
            "", ".", "1.", ".5", "+1", "1e", "e9", " 1", "1.2.3", "--1", "1.x", "inf",
        ] {
            let f = epoch_seconds_ms(text).expect_err(text);
            assert_eq!(f.kind, RejectKind::BadValue, "{text}");
        }
        assert_eq!(epoch_ms("1764000000000"), Ok(1_764_000_000_000));
        assert_eq!(
            epoch_ms("9223372036854775808").map_err(|f| f.kind),
            Err(RejectKind::TimestampOutOfRange)
        );
        assert_eq!(
            epoch_ms("+1764000000000").map_err(|f| f.kind),
            Err(RejectKind::BadValue)
        );
    }
}
