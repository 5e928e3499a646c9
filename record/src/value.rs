//! Field types: how a value is parsed from text or JSON, and viewed without copying.

use std::borrow::Cow;

use crate::fields::FieldType;

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
        ParseValue::F64(n) => n.to_string(),
    }
}

fn is_dash(text: &str) -> bool {
    text == "-" || text.is_empty()
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
    fn from_text(text: &str) -> Result<Option<String>, String> {
        Ok((text != "-").then(|| text.to_owned()))
    }
    fn from_value(v: ParseValue<'_>) -> Result<Option<String>, String> {
        match v {
            ParseValue::Null => Ok(None),
            ParseValue::Str(s) if s == "-" => Ok(None),
            ParseValue::Str(s) => Ok(Some(s.into_owned())),
            // A number where text is expected (an IP-less port, an id) is kept as its text.
            ParseValue::U64(n) => Ok(Some(n.to_string())),
            ParseValue::I64(n) => Ok(Some(n.to_string())),
            other => Err(format!("expected a string, got {}", describe(&other))),
        }
    }
}

macro_rules! int_type {
    ($marker:ident, $t:ty, $variant:ident, $what:literal) => {
        impl FieldType for $marker {
            type Owned = $t;
            const KIND: FieldKind = FieldKind::$variant;
            fn view(v: &Option<$t>) -> Value<'_> {
                Value::$variant(*v)
            }
            fn from_text(text: &str) -> Result<Option<$t>, String> {
                if is_dash(text) {
                    return Ok(None);
                }
                text.parse::<$t>()
                    .map(Some)
                    .map_err(|_| format!(concat!("expected ", $what, ", got {}"), shown(text)))
            }
            fn from_value(v: ParseValue<'_>) -> Result<Option<$t>, String> {
                match v {
                    ParseValue::Null => Ok(None),
                    ParseValue::Str(s) => Self::from_text(&s),
                    ParseValue::U64(n) => <$t>::try_from(n).map(Some).map_err(|_| {
                        format!(concat!("expected ", $what, ", got {} (out of range)"), n)
                    }),
                    ParseValue::I64(n) => <$t>::try_from(n).map(Some).map_err(|_| {
                        format!(concat!("expected ", $what, ", got {} (out of range)"), n)
                    }),
                    other => Err(format!(
                        concat!("expected ", $what, ", got {}"),
                        describe(&other)
                    )),
                }
            }
        }
    };
}

int_type!(U16, u16, U16, "an integer from 0 to 65535");
int_type!(U32, u32, U32, "a non-negative integer");
int_type!(U64, u64, U64, "a non-negative integer");
int_type!(I64, i64, I64, "an integer");

impl FieldType for F64 {
    type Owned = f64;
    const KIND: FieldKind = FieldKind::F64;
    fn view(v: &Option<f64>) -> Value<'_> {
        Value::F64(*v)
    }
    fn from_text(text: &str) -> Result<Option<f64>, String> {
        if is_dash(text) {
            return Ok(None);
        }
        match text.parse::<f64>() {
            Ok(x) if x.is_finite() && x >= 0.0 => Ok(Some(x)),
            _ => Err(format!(
                "expected seconds (a non-negative number), got {}",
                shown(text)
            )),
        }
    }
    fn from_value(v: ParseValue<'_>) -> Result<Option<f64>, String> {
        match v {
            ParseValue::Null => Ok(None),
            ParseValue::Str(s) => Self::from_text(&s),
            ParseValue::U64(n) => Ok(Some(n as f64)),
            ParseValue::F64(x) if x.is_finite() && x >= 0.0 => Ok(Some(x)),
            other => Err(format!(
                "expected seconds (a non-negative number), got {}",
                describe(&other)
            )),
        }
    }
}
