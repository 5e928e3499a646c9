//! Field types: how a value is parsed from text or JSON, and viewed without copying.

use std::borrow::Cow;

use crate::fields::FieldType;
use crate::reject::Fault;
#[cfg(test)]
use crate::reject::RejectKind;

/// The type of a field, as stored in Parquet or JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Str,
    U16,
    U32,
    U64,
    I64,
    /// Seconds, as a float.
    F64,
}

/// A borrowed view of one field's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Str(Option<&'a str>),
    U16(Option<u16>),
    U32(Option<u32>),
    U64(Option<u64>),
    I64(Option<i64>),
    F64(Option<f64>),
}

impl Value<'_> {
    pub fn is_null(&self) -> bool {
        matches!(
            self,
            Value::Str(None)
                | Value::U16(None)
                | Value::U32(None)
                | Value::U64(None)
                | Value::I64(None)
                | Value::F64(None)
        )
    }
}

/// A JSON scalar as it came off the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum ParseValue<'a> {
    Null,
    Bool(bool),
    Str(Cow<'a, str>),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// Quotes at most 40 characters of a bad value for an error message.
pub(crate) fn shown(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((cut, _)) => format!("{:?}...", &text[..cut]),
        None => format!("{text:?}"),
    }
}

fn describe(v: &ParseValue<'_>) -> String {
    match v {
        ParseValue::Null => "null".into(),
        ParseValue::Bool(b) => b.to_string(),
        ParseValue::Str(s) => shown(s),
        ParseValue::U64(n) => n.to_string(),
        ParseValue::I64(n) => n.to_string(),
        ParseValue::F64(x) => describe_f64(*x),
    }
}

/// A double for an error message: short even for 1e302.
fn describe_f64(x: f64) -> String {
    if x.is_finite() && x.abs() < 1e16 {
        shown(&x.to_string())
    } else {
        format!("{x:e}")
    }
}

fn is_dash(text: &str) -> bool {
    text == "-" || text.is_empty()
}

/// Why integer text did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IntError {
    /// Not an integer at all.
    Syntax,
    /// An integer whose magnitude is past `u64::MAX`.
    Overflow,
}

/// One or more ASCII digits (leading zeros allowed), with checked arithmetic.
pub(crate) fn parse_digits(b: &[u8]) -> Result<u64, IntError> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return Err(IntError::Syntax);
    }
    b.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or(IntError::Overflow)
    })
}

/// Integer text as every codec spells it: an optional `-`, then ASCII digits. No `+`, no
/// spaces, no `_`, no exponent: stricter than `str::parse`, which takes a leading `+`.
pub(crate) fn parse_int(text: &str) -> Result<i128, IntError> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let magnitude = i128::from(parse_digits(digits.as_bytes())?);
    Ok(if negative { -magnitude } else { magnitude })
}

fn expected_int(min: i128, max: i128) -> String {
    format!("expected an integer from {min} to {max}")
}

fn int_out_of_range(min: i128, max: i128, got: &str) -> Fault {
    Fault::range(format!(
        "{}, got {got} (out of range)",
        expected_int(min, max)
    ))
}

/// An integer of `min..=max` from text (`-` and empty are null).
fn int_from_text(text: &str, min: i128, max: i128) -> Result<Option<i128>, Fault> {
    if is_dash(text) {
        return Ok(None);
    }
    match parse_int(text) {
        Ok(v) if (min..=max).contains(&v) => Ok(Some(v)),
        Ok(_) | Err(IntError::Overflow) => Err(int_out_of_range(min, max, &shown(text))),
        Err(IntError::Syntax) => Err(Fault::bad(format!(
            "{}, got {}",
            expected_int(min, max),
            shown(text)
        ))),
    }
}

const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;

/// An integer of `min..=max` from a JSON scalar. A JSON number with a fraction or an
/// exponent is not an integer, except an integral one past the range, which is out of it.
fn int_from_value(v: ParseValue<'_>, min: i128, max: i128) -> Result<Option<i128>, Fault> {
    let in_range = |n: i128| {
        if (min..=max).contains(&n) {
            Ok(Some(n))
        } else {
            Err(int_out_of_range(min, max, &n.to_string()))
        }
    };
    match v {
        ParseValue::Null => Ok(None),
        ParseValue::Str(s) => int_from_text(&s, min, max),
        ParseValue::U64(n) => in_range(i128::from(n)),
        ParseValue::I64(n) => in_range(i128::from(n)),
        // serde_json reads `-0` as a double (so `0.0`, `-0.0` and `0e0` read as 0; the pattern takes -0.0).
        ParseValue::F64(0.0) => in_range(0),
        // serde_json reads an integer past u64 or i64 as a double; and an integral double
        // past the column is out of range however it was spelled.
        ParseValue::F64(x)
            if x.is_finite()
                && x.fract() == 0.0
                && (x < min as f64 || x >= (max + 1) as f64 || x <= -TWO_POW_63) =>
        {
            Err(int_out_of_range(min, max, &describe_f64(x)))
        }
        other => Err(Fault::bad(format!(
            "{}, got {}",
            expected_int(min, max),
            describe(&other)
        ))),
    }
}

/// Marker types for [`FieldType`].
pub struct Str;
pub struct U16;
pub struct U32;
pub struct U64;
pub struct I64;
pub struct F64;

impl FieldType for Str {
    type Owned = String;
    const KIND: FieldKind = FieldKind::Str;
    fn view(v: &Option<String>) -> Value<'_> {
        Value::Str(v.as_deref())
    }
    fn from_view(v: Value<'_>) -> Option<Option<String>> {
        match v {
            Value::Str(s) => Some(s.map(str::to_owned)),
            _ => None,
        }
    }
    fn from_text(text: &str) -> Result<Option<String>, Fault> {
        Ok((text != "-").then(|| text.to_owned()))
    }
    fn from_value(v: ParseValue<'_>) -> Result<Option<String>, Fault> {
        match v {
            ParseValue::Null => Ok(None),
            ParseValue::Str(s) if s == "-" => Ok(None),
            ParseValue::Str(s) => Ok(Some(s.into_owned())),
            // A number where text is expected (an IP-less port, an id) is kept as its text.
            ParseValue::U64(n) => Ok(Some(n.to_string())),
            ParseValue::I64(n) => Ok(Some(n.to_string())),
            other => Err(Fault::bad(format!(
                "expected a string, got {}",
                describe(&other)
            ))),
        }
    }
}

macro_rules! int_type {
    ($marker:ident, $t:ty, $variant:ident, $max:expr) => {
        impl FieldType for $marker {
            type Owned = $t;
            const KIND: FieldKind = FieldKind::$variant;
            fn view(v: &Option<$t>) -> Value<'_> {
                Value::$variant(*v)
            }
            fn from_view(v: Value<'_>) -> Option<Option<$t>> {
                match v {
                    Value::$variant(x) => Some(x),
                    _ => None,
                }
            }
            fn from_text(text: &str) -> Result<Option<$t>, Fault> {
                Self::narrow(int_from_text(text, Self::MIN, Self::MAX)?)
            }
            fn from_value(v: ParseValue<'_>) -> Result<Option<$t>, Fault> {
                Self::narrow(int_from_value(v, Self::MIN, Self::MAX)?)
            }
        }

        impl $marker {
            /// The smallest and largest value the field accepts.
            pub const MIN: i128 = <$t>::MIN as i128;
            pub const MAX: i128 = $max as i128;

            fn narrow(v: Option<i128>) -> Result<Option<$t>, Fault> {
                v.map(|n| {
                    <$t>::try_from(n)
                        .map_err(|_| int_out_of_range(Self::MIN, Self::MAX, &n.to_string()))
                })
                .transpose()
            }
        }
    };
}

int_type!(U16, u16, U16, u16::MAX);
int_type!(U32, u32, U32, u32::MAX);
// Byte counts: Parquet and Athena columns are BIGINT, and sums must not wrap.
int_type!(U64, u64, U64, i64::MAX);
int_type!(I64, i64, I64, i64::MAX);

/// The largest duration accepted, in seconds: one day.
pub const MAX_SECONDS: f64 = 86_400.0;

/// A decimal number as JSON spells it (leading zeros allowed):
/// `-?digits(.digits)?([eE][+-]?digits)?`. Unlike `str::parse::<f64>`, no `+`, `inf`,
/// `NaN`, `.5` or `5.`.
pub(crate) fn is_decimal(text: &str) -> bool {
    let b = text.as_bytes();
    let b = b.strip_prefix(b"-").unwrap_or(b);
    let (mantissa, exponent) = match b.iter().position(|&c| c == b'e' || c == b'E') {
        Some(i) => (&b[..i], Some(&b[i + 1..])),
        None => (b, None),
    };
    let (whole, frac) = match mantissa.iter().position(|&c| c == b'.') {
        Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
        None => (mantissa, &b""[..]),
    };
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    let has_point = whole.len() < mantissa.len();
    let mantissa_ok =
        digits(whole) && digits(frac) && !whole.is_empty() && (!has_point || !frac.is_empty());
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e
            .strip_prefix(b"-")
            .or_else(|| e.strip_prefix(b"+"))
            .unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exponent_ok
}

const EXPECTED_SECONDS: &str = "expected seconds (a number from 0 to 86400)";

/// Seconds within `0..=MAX_SECONDS`; `-0` becomes `0`.
fn seconds(x: f64) -> Result<f64, Fault> {
    if (0.0..=MAX_SECONDS).contains(&x) {
        Ok(x + 0.0)
    } else {
        Err(Fault::range(format!(
            "{EXPECTED_SECONDS}, got {} (out of range)",
            describe_f64(x)
        )))
    }
}

impl FieldType for F64 {
    type Owned = f64;
    const KIND: FieldKind = FieldKind::F64;
    fn view(v: &Option<f64>) -> Value<'_> {
        Value::F64(*v)
    }
    fn from_view(v: Value<'_>) -> Option<Option<f64>> {
        match v {
            Value::F64(x) => Some(x),
            _ => None,
        }
    }
    fn from_text(text: &str) -> Result<Option<f64>, Fault> {
        if is_dash(text) {
            return Ok(None);
        }
        match text.parse::<f64>() {
            Ok(x) if is_decimal(text) => seconds(x).map(Some),
            _ => Err(Fault::bad(format!(
                "{EXPECTED_SECONDS}, got {}",
                shown(text)
            ))),
        }
    }
    fn from_value(v: ParseValue<'_>) -> Result<Option<f64>, Fault> {
        match v {
            ParseValue::Null => Ok(None),
            ParseValue::Str(s) => Self::from_text(&s),
            ParseValue::U64(n) => seconds(n as f64).map(Some),
            ParseValue::I64(n) => seconds(n as f64).map(Some),
            ParseValue::F64(x) => seconds(x).map(Some),
            other => Err(Fault::bad(format!(
                "{EXPECTED_SECONDS}, got {}",
                describe(&other)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_text_is_strict_and_checked() {
        assert_eq!(parse_int("0"), Ok(0));
        assert_eq!(parse_int("007"), Ok(7));
        assert_eq!(parse_int("-5"), Ok(-5));
        assert_eq!(parse_int("18446744073709551615"), Ok(i128::from(u64::MAX)));
        assert_eq!(parse_int("18446744073709551616"), Err(IntError::Overflow));
        assert_eq!(parse_int(&"9".repeat(10_000)), Err(IntError::Overflow));
        for bad in [
            "", "-", "+5", " 5", "5 ", "1_000", "1e3", "0x10", "--5", "5-", "١",
        ] {
            assert_eq!(parse_int(bad), Err(IntError::Syntax), "{bad:?}");
        }
        // What `str::parse` would have taken.
        assert_eq!("+5".parse::<u16>(), Ok(5));
    }

    #[test]
    fn decimal_text_is_what_json_would_spell() {
        for ok in ["0", "0.5", "1e3", "1E-3", "1e+3", "-0", "007.250", "1.5e2"] {
            assert!(is_decimal(ok), "{ok:?}");
        }
        for bad in [
            "", ".", "-", "+1", "inf", "NaN", "infinity", "1e", "1e+", "1.2.3", "0x1", " 1", "1 ",
            "e5", ".5", "5.", "-.5", "1.e5",
        ] {
            assert!(!is_decimal(bad), "{bad:?}");
        }
    }

    #[test]
    fn seconds_are_finite_and_at_most_a_day() {
        assert_eq!(F64::from_text("86400"), Ok(Some(86_400.0)));
        assert_eq!(F64::from_text("-0"), Ok(Some(0.0)));
        assert!(F64::from_text("-0").is_ok_and(|x| x.is_some_and(f64::is_sign_positive)));
        for (text, kind) in [
            ("86400.001", RejectKind::OutOfRange),
            ("1e302", RejectKind::OutOfRange),
            ("1e400", RejectKind::OutOfRange),
            ("-0.001", RejectKind::OutOfRange),
            ("inf", RejectKind::BadValue),
            ("NaN", RejectKind::BadValue),
            ("+1", RejectKind::BadValue),
        ] {
            assert_eq!(
                F64::from_text(text).map_err(|f| f.kind),
                Err(kind),
                "{text}"
            );
        }
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e302, -1.0] {
            assert_eq!(
                F64::from_value(ParseValue::F64(x)).map_err(|f| f.kind),
                Err(RejectKind::OutOfRange),
                "{x}"
            );
        }
        let e = F64::from_value(ParseValue::F64(1e302)).expect_err("refused");
        assert!(e.reason.len() < 100, "{}", e.reason);
    }

    #[test]
    fn integers_fit_their_column() {
        assert_eq!(U16::from_text("65535"), Ok(Some(65_535)));
        assert_eq!(
            U16::from_text("65536").map_err(|f| f.kind),
            Err(RejectKind::OutOfRange)
        );
        assert_eq!(
            U16::from_text("+1").map_err(|f| f.kind),
            Err(RejectKind::BadValue)
        );
        assert_eq!(
            U64::from_value(ParseValue::U64(u64::MAX)).map_err(|f| f.kind),
            Err(RejectKind::OutOfRange)
        );
        assert_eq!(
            U64::from_value(ParseValue::U64(i64::MAX as u64)),
            Ok(Some(i64::MAX as u64))
        );
        assert_eq!(
            U64::from_value(ParseValue::I64(-1)).map_err(|f| f.kind),
            Err(RejectKind::OutOfRange)
        );
        assert_eq!(
            U32::from_value(ParseValue::F64(1e30)).map_err(|f| f.kind),
            Err(RejectKind::OutOfRange)
        );
        assert_eq!(
            U32::from_value(ParseValue::F64(2.5)).map_err(|f| f.kind),
            Err(RejectKind::BadValue)
        );
        assert_eq!(U32::from_value(ParseValue::F64(-0.0)), Ok(Some(0)));
        assert_eq!(I64::from_text("-9223372036854775808"), Ok(Some(i64::MIN)));
        assert_eq!(
            I64::from_text("-9223372036854775809").map_err(|f| f.kind),
            Err(RejectKind::OutOfRange)
        );
    }
}
