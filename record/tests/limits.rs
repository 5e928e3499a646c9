//! Every value checked for range and overflow, in both codecs and every spelling (JSON
//! number, JSON string, W3C column), against an oracle written from the rules; and the
//! line and field limits. Whatever the input: accepted with exactly the right value, or
//! refused with a reason that names the field; never a panic.
//!
//! Long (about 1,000 lines): the oracle and a case table for every field and spelling.

use edgelog_record::{
    FIELDS, FieldKind, Format, ParseOptions, Parsed, RejectKind, Rejection, Value, field_index,
    parse_body, time,
};
use proptest::prelude::*;

const TS_MS: i64 = 1_700_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spelling {
    JsonNumber,
    JsonString,
    W3c,
}

const SPELLINGS: [Spelling; 3] = [Spelling::JsonNumber, Spelling::JsonString, Spelling::W3c];

/// What the oracle says a value must give.
#[derive(Debug, Clone, PartialEq)]
enum Want {
    Null,
    Int(i128),
    Float(f64),
    /// A record time, in milliseconds.
    Ts(i64),
    /// A record time from a JSON double: within a millisecond of this.
    TsNear(f64),
    Str(String),
    /// Refused, of this kind (or of any kind, for `None`).
    Refused(Option<RejectKind>),
}

fn is_time_field(name: &str) -> bool {
    name == "timestamp" || name == "timestamp(ms)"
}

/// One body carrying `literal` as `name`'s value, spelled one way.
fn body(spelling: Spelling, name: &str, literal: &str) -> (Format, String) {
    match spelling {
        Spelling::JsonNumber | Spelling::JsonString => {
            let value = if spelling == Spelling::JsonNumber {
                literal.to_owned()
            } else {
                serde_json::to_string(literal).expect("a string serializes")
            };
            let time = if is_time_field(name) {
                String::new()
            } else {
                format!("\"timestamp(ms)\":{TS_MS},")
            };
            (
                Format::Ndjson,
                format!("{{\"DistributionId\":\"E1\",{time}\"{name}\":{value}}}\n"),
            )
        }
        Spelling::W3c => {
            let (fields, line) = if is_time_field(name) {
                (format!("{name} sc-status"), format!("{literal}\t200"))
            } else {
                (
                    format!("timestamp(ms) {name}"),
                    format!("{TS_MS}\t{literal}"),
                )
            };
            (
                Format::W3c,
                format!("#Version: 1.0\n#Fields: {fields}\n{line}\n"),
            )
        }
    }
}

fn parse_one(format: Format, body: &str, opts: &ParseOptions<'_>) -> Parsed {
    parse_body(format, body.as_bytes(), opts)
}

/// `-?digits`: integer text.
fn is_int_text(t: &str) -> bool {
    let d = t.strip_prefix('-').unwrap_or(t);
    !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())
}

/// `-?digits(.digits)?([eE][+-]?digits)?`, with or without JSON's rule on leading zeros.
fn is_number(t: &str, json: bool) -> bool {
    let t = t.strip_prefix('-').unwrap_or(t);
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let (whole, frac) = match mantissa.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (mantissa, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let exp_ok = exp.is_none_or(|e| digits(e.strip_prefix(['+', '-']).unwrap_or(e)));
    let leading_ok = !json || whole == "0" || !whole.starts_with('0');
    digits(whole) && frac.is_none_or(digits) && exp_ok && leading_ok
}

fn int_range(kind: FieldKind) -> (i128, i128) {
    match kind {
        FieldKind::U16 => (0, u16::MAX.into()),
        FieldKind::U32 => (0, u32::MAX.into()),
        // Byte counts: at most i64::MAX.
        FieldKind::U64 => (0, i64::MAX.into()),
        FieldKind::I64 => (i64::MIN.into(), i64::MAX.into()),
        _ => unreachable!("not an integer field"),
    }
}

fn want_int(kind: FieldKind, spelling: Spelling, literal: &str) -> Want {
    let (min, max) = int_range(kind);
    let int_rule = |t: &str| match t.parse::<i128>() {
        Ok(v) if (min..=max).contains(&v) => Want::Int(v),
        _ => Want::Refused(Some(RejectKind::OutOfRange)),
    };
    if spelling == Spelling::JsonNumber {
        let t = literal.trim_matches(' ');
        if !is_number(t, true) {
            return Want::Refused(None);
        }
        if is_int_text(t) {
            return int_rule(t);
        }
        let v: f64 = t.parse().expect("a JSON number parses");
        return if !v.is_finite() {
            Want::Refused(Some(RejectKind::OutOfRange))
        } else if v == 0.0 {
            Want::Int(0)
        } else if v.fract() == 0.0
            && (v < min as f64 || v >= (max + 1) as f64 || v <= -9_223_372_036_854_775_808.0)
        {
            Want::Refused(Some(RejectKind::OutOfRange))
        } else {
            Want::Refused(Some(RejectKind::BadValue))
        };
    }
    if literal.is_empty() || literal == "-" {
        Want::Null
    } else if is_int_text(literal) {
        int_rule(literal)
    } else {
        Want::Refused(Some(RejectKind::BadValue))
    }
}

fn want_seconds(spelling: Spelling, literal: &str) -> Want {
    let t = if spelling == Spelling::JsonNumber {
        let t = literal.trim_matches(' ');
        if !is_number(t, true) {
            return Want::Refused(None);
        }
        t
    } else if literal.is_empty() || literal == "-" {
        return Want::Null;
    } else if !is_number(literal, false) {
        return Want::Refused(Some(RejectKind::BadValue));
    } else {
        literal
    };
    let v: f64 = t.parse().expect("a number parses");
    if (0.0..=86_400.0).contains(&v) {
        Want::Float(v + 0.0)
    } else {
        Want::Refused(Some(RejectKind::OutOfRange))
    }
}

fn in_ts_range(ms: i128) -> Want {
    if (i128::from(time::MIN_TIMESTAMP_MS)..i128::from(time::MAX_TIMESTAMP_MS)).contains(&ms) {
        Want::Ts(ms as i64)
    } else {
        Want::Refused(Some(RejectKind::TimestampOutOfRange))
    }
}

/// Exact milliseconds of `-?digits(.digits)?` seconds, rounded half up on the fourth
/// decimal; `None` past i128.
fn exact_ms(t: &str) -> Option<i128> {
    let (neg, t) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t),
    };
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    let whole: i128 = whole.parse().ok()?;
    let f: Vec<i128> = frac.bytes().map(|b| i128::from(b - b'0')).collect();
    let digit = |i: usize| f.get(i).copied().unwrap_or(0);
    let ms = whole.checked_mul(1000)?
        + digit(0) * 100
        + digit(1) * 10
        + digit(2)
        + i128::from(digit(3) >= 5);
    Some(if neg { -ms } else { ms })
}

fn want_timestamp(name: &str, spelling: Spelling, literal: &str) -> Want {
    let seconds = name == "timestamp";
    let text_ok = |t: &str| {
        if seconds {
            is_number(t, false) && !t.contains(['e', 'E'])
        } else {
            is_int_text(t)
        }
    };
    let exact = |t: &str| {
        let ms = if seconds {
            exact_ms(t)
        } else {
            t.parse::<i128>().ok()
        };
        ms.map_or(
            Want::Refused(Some(RejectKind::TimestampOutOfRange)),
            in_ts_range,
        )
    };
    if spelling != Spelling::JsonNumber {
        if seconds && is_number(literal, false) && literal.contains(['e', 'E']) {
            // With an exponent, read as a JSON number is.
            let v: f64 = literal.parse().expect("a number parses");
            return if v.is_finite() {
                Want::TsNear((v * 1000.0).round())
            } else {
                Want::Refused(Some(RejectKind::TimestampOutOfRange))
            };
        }
        return if text_ok(literal) {
            exact(literal)
        } else {
            Want::Refused(Some(RejectKind::BadValue))
        };
    }
    let t = literal.trim_matches(' ');
    if !is_number(t, true) {
        return Want::Refused(None);
    }
    if is_int_text(t) {
        return exact(t);
    }
    let v: f64 = t.parse().expect("a JSON number parses");
    if !v.is_finite() {
        return Want::Refused(Some(RejectKind::TimestampOutOfRange));
    }
    if seconds {
        Want::TsNear((v * 1000.0).round())
    } else if v == 0.0 || (v.fract() == 0.0 && v.abs() >= 9.2e18) {
        Want::Refused(Some(RejectKind::TimestampOutOfRange))
    } else {
        Want::Refused(Some(RejectKind::BadValue))
    }
}

fn want_for(name: &str, spelling: Spelling, literal: &str) -> Want {
    if is_time_field(name) {
        return want_timestamp(name, spelling, literal);
    }
    let kind = FIELDS[field_index(name).expect("known field")].kind;
    match kind {
        FieldKind::F64 => want_seconds(spelling, literal),
        FieldKind::Str => unreachable!("numeric fields only"),
        k => want_int(k, spelling, literal),
    }
}

fn got_value(name: &str, parsed: &Parsed) -> Result<Want, Rejection> {
    if let Some(r) = parsed.rejected.first() {
        return Err(r.clone());
    }
    let rec = parsed.records.first().expect("a record or a refusal");
    if is_time_field(name) {
        return Ok(Want::Ts(rec.timestamp_ms));
    }
    Ok(match rec.get(field_index(name).expect("known field")) {
        Value::U16(v) => v.map_or(Want::Null, |n| Want::Int(n.into())),
        Value::U32(v) => v.map_or(Want::Null, |n| Want::Int(n.into())),
        Value::U64(v) => v.map_or(Want::Null, |n| Want::Int(n.into())),
        Value::I64(v) => v.map_or(Want::Null, |n| Want::Int(n.into())),
        Value::F64(v) => v.map_or(Want::Null, Want::Float),
        Value::Str(v) => v.map_or(Want::Null, |s| Want::Str(s.to_owned())),
    })
}

/// Checks one value in one spelling against the oracle.
fn check(name: &str, spelling: Spelling, literal: &str) -> Result<(), TestCaseError> {
    let (format, body) = body(spelling, name, literal);
    let parsed = parse_one(format, &body, &ParseOptions::with_distribution(Some("E1")));
    let total = parsed.records.len() as u64 + parsed.rejected_count();
    prop_assert_eq!(total, 1, "{:?}: {}", parsed.rejected, body);
    let want = want_for(name, spelling, literal);
    let got = got_value(name, &parsed);
    let ctx = format!("{name} {spelling:?} {literal:?}: want {want:?}, got {got:?}");
    match (&want, &got) {
        (Want::Refused(kind), Err(r)) => {
            if let Some(k) = kind {
                prop_assert_eq!(*k, r.kind, "{}", ctx);
            }
            if r.kind == RejectKind::TimestampOutOfRange {
                prop_assert!(r.reason.starts_with("timestamp "), "{}", ctx);
            } else {
                prop_assert!(r.reason.contains(&format!("`{name}`")), "{}", ctx);
            }
            prop_assert!(r.reason.len() < 400, "{}", ctx);
        }
        (Want::Float(w), Ok(Want::Float(g))) => {
            prop_assert!(w.to_bits() == g.to_bits(), "{}", ctx);
        }
        (Want::TsNear(w), Ok(Want::Ts(g))) => {
            prop_assert!((*g as f64 - w).abs() <= 1.0, "{}", ctx);
            prop_assert!(
                (time::MIN_TIMESTAMP_MS..time::MAX_TIMESTAMP_MS).contains(g),
                "{}",
                ctx
            );
        }
        (Want::TsNear(w), Err(r)) => {
            let inside = (time::MIN_TIMESTAMP_MS as f64 + 1.0..time::MAX_TIMESTAMP_MS as f64 - 1.0)
                .contains(w);
            prop_assert!(!inside, "{}", ctx);
            prop_assert_eq!(r.kind, RejectKind::TimestampOutOfRange, "{}", ctx);
        }
        (w, Ok(g)) => prop_assert_eq!(w, g, "{}", ctx),
        (_, Err(_)) => prop_assert!(false, "{}", ctx),
    }
    Ok(())
}

fn numeric_fields() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = FIELDS
        .iter()
        .filter(|f| f.kind != FieldKind::Str)
        .map(|f| f.cloudfront)
        .collect();
    names.extend(["timestamp", "timestamp(ms)"]);
    names
}

/// Values at every boundary that matters, spelled as text.
fn boundary_literals() -> Vec<String> {
    let mut v: Vec<String> = [
        "",
        "-",
        "0",
        "-0",
        "00",
        "007",
        "+5",
        " 5",
        "5 ",
        "NaN",
        "nan",
        "inf",
        "-inf",
        "Infinity",
        "1e400",
        "-1e400",
        "1e302",
        "1e-400",
        "0x10",
        "1_000",
        "1.5",
        "1.",
        ".5",
        "1e3",
        "2E2",
        "0.0",
        "-0.0",
        "\u{661}",
        "1.0e1",
        "86400",
        "86400.0001",
        "86400.000",
        "-0.001",
        "0.001",
        "1e5",
        "1e-7",
    ]
    .map(String::from)
    .to_vec();
    let ints: [i128; 24] = [
        1,
        65_535,
        65_536,
        (1 << 31) - 1,
        1 << 31,
        (1 << 32) - 1,
        1 << 32,
        (1 << 53) + 1,
        (1 << 63) - 1,
        1 << 63,
        (1 << 64) - 1,
        1 << 64,
        -1,
        -(1 << 31),
        -(1 << 63),
        -(1 << 63) - 1,
        -(1 << 64),
        10_i128.pow(20),
        10_i128.pow(38),
        // Seconds past u32 (the bug: filed in 2019), and milliseconds under `timestamp`.
        5_870_000_000,
        1_764_000_000_000,
        946_684_800,
        4_102_444_800,
        1_700_000_000,
    ];
    v.extend(ints.iter().map(i128::to_string));
    v.extend([
        "946684799.999".into(),
        "946684799.9995".into(),
        "4102444799.999".into(),
        "4102444799.9995".into(),
        "1700000000.1234".into(),
        "946684800000".into(),
        "4102444800000".into(),
        "4102444799999".into(),
        "9".repeat(40),
        "1".repeat(400),
    ]);
    v
}

#[test]
fn every_numeric_field_every_spelling_every_boundary() {
    for name in numeric_fields() {
        for spelling in SPELLINGS {
            for literal in boundary_literals() {
                if let Err(e) = check(name, spelling, &literal) {
                    panic!("{e}");
                }
            }
        }
    }
}

fn literal() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(boundary_literals()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i128>().prop_map(|n| n.to_string()),
        any::<u16>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|x| x.to_string()),
        any::<f64>().prop_map(|x| format!("{x:e}")),
        (0u64..100_000, 0u32..10_000).prop_map(|(s, f)| format!("{s}.{f:04}")),
        (0u64..100_000, 0u32..1_000).prop_map(|(s, f)| format!("{s}.{f}")),
        (900_000_000i64..4_200_000_000, 0u32..1000).prop_map(|(s, f)| format!("{s}.{f:03}")),
        (900_000_000_000i64..4_200_000_000_000).prop_map(|n| n.to_string()),
        "[-+.eE0-9 ]{0,24}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn numbers_in_every_spelling_are_exact_or_refused(
        name in prop::sample::select(numeric_fields()),
        spelling in prop::sample::select(SPELLINGS.to_vec()),
        literal in literal(),
    ) {
        check(name, spelling, &literal)?;
    }
}

/// A string value within or past the field limit, in both codecs.
fn check_string(name: &str, value: &str, max_field: usize) -> Result<(), TestCaseError> {
    let opts = ParseOptions {
        max_field_bytes: max_field,
        ..ParseOptions::with_distribution(Some("E1"))
    };
    let want = if value.len() > max_field {
        Want::Refused(Some(RejectKind::FieldTooLong))
    } else if value == "-" {
        Want::Null
    } else {
        Want::Str(value.to_owned())
    };
    let mut spellings = vec![Spelling::JsonString];
    if !value.contains(['\t', '\n', '\r']) {
        spellings.push(Spelling::W3c);
    }
    for spelling in spellings {
        let (format, body) = body(spelling, name, value);
        let parsed = parse_one(format, &body, &opts);
        let got = got_value(name, &parsed);
        match (&want, &got) {
            (Want::Refused(k), Err(r)) => {
                prop_assert_eq!(Some(r.kind), *k);
                prop_assert!(r.reason.contains(&format!("`{name}`")), "{}", r.reason);
            }
            (w, Ok(g)) => prop_assert_eq!(w, g, "{:?} {:?}", spelling, value),
            (w, Err(r)) => prop_assert!(
                false,
                "{:?} {:?}: want {:?}, got {:?}",
                spelling,
                value,
                w,
                r
            ),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn string_fields_keep_the_field_limit(
        field in prop::sample::select(
            FIELDS
                .iter()
                // An empty request id is replaced by a derived one.
                .filter(|f| f.kind == FieldKind::Str && f.cloudfront != "x-edge-request-id")
                .map(|f| f.cloudfront)
                .collect::<Vec<_>>()
        ),
        value in "[a-z\"\\\\\t\u{1}é😀 /%-]{0,60}",
        max_field in 13usize..100,
    ) {
        check_string(field, &value, max_field)?;
    }

    #[test]
    fn lines_past_the_limit_are_refused_unparsed(pad in 0usize..300, max_line in 40usize..300) {
        let line = format!(
            "{{\"DistributionId\":\"E1\",\"timestamp(ms)\":{TS_MS},\"x-pad\":\"{}\"}}",
            "p".repeat(pad)
        );
        let opts = ParseOptions { max_line_bytes: max_line, max_field_bytes: max_line, ..ParseOptions::default() };
        // CRLF line ends don't count.
        let parsed = parse_body(Format::Ndjson, format!("{line}\r\n").as_bytes(), &opts);
        if line.len() > max_line {
            prop_assert_eq!(parsed.rejected.len(), 1);
            prop_assert_eq!(parsed.rejected[0].kind, RejectKind::LineTooLong);
            prop_assert!(parsed.rejected[0].reason.contains(&line.len().to_string()));
        } else {
            prop_assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
            prop_assert_eq!(parsed.records.len(), 1);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_every_line_is_counted(
        bytes in prop::collection::vec(
            prop_oneof![any::<u8>(), Just(b'\n'), Just(b'{'), Just(b'"'), Just(b'\t'), Just(b'#')],
            0..400,
        ),
        max_line in 1usize..200,
        max_field in 1usize..200,
        max_listed in 0usize..5,
    ) {
        let max_field = max_field.min(max_line);
        let opts = ParseOptions {
            default_distribution: Some("E1"),
            max_listed,
            max_line_bytes: max_line,
            max_field_bytes: max_field,
            allowed_distributions: None,
        };
        let parsed = parse_body(Format::Ndjson, &bytes, &opts);
        let lines = bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace) || l.strip_suffix(b"\r").unwrap_or(l).len() > max_line)
            .count() as u64;
        prop_assert_eq!(parsed.records.len() as u64 + parsed.rejected_count(), lines);
        prop_assert!(parsed.rejected.len() <= max_listed);
        let mut w3c = b"#Fields: date time sc-status cs(Host)\n".to_vec();
        w3c.extend_from_slice(&bytes);
        let parsed = parse_body(Format::W3c, &w3c, &opts);
        let numbers: Vec<u64> = parsed.rejected.iter().map(|r| r.line).collect();
        prop_assert!(numbers.windows(2).all(|w| w[0] < w[1]));
    }
}

fn reject_of(format: Format, body: &str) -> Rejection {
    let parsed = parse_body(
        format,
        body.as_bytes(),
        &ParseOptions::with_distribution(Some("E1")),
    );
    assert!(
        parsed.records.is_empty(),
        "accepted {body}: {:?}",
        parsed.records
    );
    parsed.rejected.first().cloned().expect("refused")
}

#[test]
fn known_bugs_stay_fixed() {
    // Seconds past u32 wrapped into 2019; milliseconds under `timestamp` landed in 2067.
    for body in [
        r#"{"DistributionId":"E1","timestamp":"5870000000"}"#,
        r#"{"DistributionId":"E1","timestamp":"1764000000000"}"#,
        r#"{"DistributionId":"E1","timestamp":"99999999999999999999999"}"#,
        r#"{"DistributionId":"E1","timestamp":5870000000}"#,
        r#"{"DistributionId":"E1","timestamp(ms)":"99999999999999999999"}"#,
    ] {
        let r = reject_of(Format::Ndjson, body);
        assert_eq!(r.kind, RejectKind::TimestampOutOfRange, "{body}: {r:?}");
        assert!(
            r.reason.contains("outside 2000-01-01 to 2100-01-01"),
            "{r:?}"
        );
    }
    for value in ["5870000000", "1764000000000", "99999999999999999999999"] {
        let body = format!("#Version: 1.0\n#Fields: timestamp sc-status\n{value}\t200\n");
        let r = reject_of(Format::W3c, &body);
        assert_eq!(r.kind, RejectKind::TimestampOutOfRange, "{value}: {r:?}");
    }
    // A time-to-first-byte of 1e302 hung the dashboard's charts.
    let r = reject_of(
        Format::Ndjson,
        &format!(r#"{{"DistributionId":"E1","timestamp(ms)":{TS_MS},"time-to-first-byte":1e302}}"#),
    );
    assert_eq!(r.kind, RejectKind::OutOfRange);
    assert!(
        r.reason.starts_with("field `time-to-first-byte`: "),
        "{r:?}"
    );
    // Byte counts past i64::MAX would wrap Athena's BIGINT sums.
    let r = reject_of(
        Format::Ndjson,
        &format!(
            r#"{{"DistributionId":"E1","timestamp(ms)":{TS_MS},"sc-bytes":9223372036854775808}}"#
        ),
    );
    assert_eq!(r.kind, RejectKind::OutOfRange);
    assert!(r.reason.starts_with("field `sc-bytes`: "), "{r:?}");
}

#[test]
fn json_syntax_errors_inside_a_value_name_the_field() {
    for (value, kind) in [
        ("1e400", RejectKind::OutOfRange),
        ("NaN", RejectKind::InvalidJson),
        ("{}", RejectKind::BadValue),
        ("[1]", RejectKind::BadValue),
        ("true", RejectKind::BadValue),
    ] {
        let body =
            format!(r#"{{"DistributionId":"E1","timestamp(ms)":{TS_MS},"time-taken":{value}}}"#);
        let r = reject_of(Format::Ndjson, &body);
        assert_eq!(r.kind, kind, "{value}: {r:?}");
        assert!(
            r.reason.starts_with("field `time-taken`: "),
            "{value}: {r:?}"
        );
    }
    // Outside any value it is the line's syntax.
    let r = reject_of(Format::Ndjson, "{not json");
    assert_eq!(r.kind, RejectKind::InvalidJson);
    let r = reject_of(Format::Ndjson, "\"just a string\"");
    assert_eq!(r.kind, RejectKind::InvalidJson);
    // serde quotes the whole string; the answer does not.
    let r = reject_of(Format::Ndjson, &format!("\"{}\"", "é".repeat(20_000)));
    assert_eq!(r.kind, RejectKind::InvalidJson);
    assert!(
        r.reason.len() <= 303 && r.reason.ends_with("..."),
        "{}",
        r.reason.len()
    );
}

#[test]
fn every_refusal_has_its_kind() {
    let ndjson: &[(&str, RejectKind)] = &[
        (
            "{\"DistributionId\":\"E1\",\"sc-status\":200}",
            RejectKind::MissingTimestamp,
        ),
        (
            "{\"timestamp(ms)\":1700000000000}",
            RejectKind::MissingDistribution,
        ),
        (
            "{\"DistributionId\":\"../x\",\"timestamp(ms)\":1700000000000}",
            RejectKind::BadDistribution,
        ),
        (
            "{\"DistributionId\":\"E1\",\"timestamp(ms)\":1700000000000,\"sc-status\":\"abc\"}",
            RejectKind::BadValue,
        ),
        (
            "{\"DistributionId\":\"E1\",\"date\":\"2019-13-01\",\"time\":\"00:00:00\"}",
            RejectKind::BadValue,
        ),
        (
            "{\"DistributionId\":\"E1\",\"date\":\"1999-12-31\",\"time\":\"23:59:59\"}",
            RejectKind::TimestampOutOfRange,
        ),
        ("[1,2]", RejectKind::InvalidJson),
    ];
    let parse = |format, body: &str| {
        parse_body(format, body.as_bytes(), &ParseOptions::default())
            .rejected
            .first()
            .cloned()
            .expect("refused")
    };
    for (body, kind) in ndjson {
        let r = parse(Format::Ndjson, body);
        assert_eq!(r.kind, *kind, "{body}: {r:?}");
    }
    let w3c: &[(&str, RejectKind)] = &[
        ("#Fields: sc-status\n", RejectKind::W3cHeader),
        ("2019-12-04\t21:02:31\n", RejectKind::W3cHeader),
        ("#Fields: date time\n2019-12-04\n", RejectKind::ColumnCount),
        (
            "#Fields: date time\n2019-12-04\t21:02:31\n",
            RejectKind::MissingDistribution,
        ),
    ];
    for (body, kind) in w3c {
        let r = parse(Format::W3c, body);
        assert_eq!(r.kind, *kind, "{body}: {r:?}");
    }
    let not_utf8 = b"#Fields: date time\n\xff\xfe\n";
    let parsed = parse_body(Format::W3c, not_utf8, &ParseOptions::default());
    assert_eq!(parsed.rejected[0].kind, RejectKind::NotUtf8);
}

#[test]
fn answers_keep_their_shape_with_a_kind() {
    let r = Rejection {
        line: 3,
        reason: "field `sc-status`: ...".into(),
        kind: RejectKind::OutOfRange,
    };
    let json = serde_json::to_string(&r).expect("serializes");
    assert_eq!(
        json,
        r#"{"line":3,"reason":"field `sc-status`: ...","kind":"out_of_range"}"#
    );
    // An answer from before kinds, or with a kind this version does not know.
    let old: Rejection = serde_json::from_str(r#"{"line":1,"reason":"x"}"#).expect("old");
    assert_eq!(old.kind, RejectKind::Other);
    let new: Rejection =
        serde_json::from_str(r#"{"line":1,"reason":"x","kind":"later"}"#).expect("new");
    assert_eq!(new.kind, RejectKind::Other);
}

#[test]
fn a_long_line_is_refused_without_being_parsed() {
    // Not JSON at all: refused for its length, not its syntax.
    let long = "x".repeat(70_000);
    let body = format!("{long}\n{{\"DistributionId\":\"E1\",\"timestamp(ms)\":{TS_MS}}}\n");
    let parsed = parse_body(Format::Ndjson, body.as_bytes(), &ParseOptions::default());
    assert_eq!(parsed.records.len(), 1);
    assert_eq!(parsed.rejected.len(), 1);
    assert_eq!(parsed.rejected[0].line, 1);
    assert_eq!(parsed.rejected[0].kind, RejectKind::LineTooLong);
    // Exactly at the limit is fine.
    let at = format!(
        "{{\"DistributionId\":\"E1\",\"timestamp(ms)\":{TS_MS},\"x\":\"{}\"}}",
        "p".repeat(100)
    );
    let opts = ParseOptions {
        max_line_bytes: at.len(),
        max_field_bytes: 100,
        ..ParseOptions::default()
    };
    assert_eq!(
        parse_body(Format::Ndjson, at.as_bytes(), &opts)
            .records
            .len(),
        1
    );
    let opts = ParseOptions {
        max_line_bytes: at.len() - 1,
        ..opts
    };
    assert_eq!(
        parse_body(Format::Ndjson, at.as_bytes(), &opts).rejected[0].kind,
        RejectKind::LineTooLong
    );
}

#[test]
fn a_long_w3c_header_drops_the_header_before_it() {
    let body = format!(
        "#Fields: date time sc-status\n2019-12-04\t21:02:31\t200\n#Fields: date time {}\n2019-12-04\t21:02:31\t200\n",
        "x ".repeat(100)
    );
    let opts = ParseOptions {
        default_distribution: Some("E1"),
        max_line_bytes: 100,
        max_field_bytes: 100,
        ..ParseOptions::default()
    };
    let parsed = parse_body(Format::W3c, body.as_bytes(), &opts);
    assert_eq!(parsed.records.len(), 1);
    let kinds: Vec<(u64, RejectKind)> = parsed.rejected.iter().map(|r| (r.line, r.kind)).collect();
    assert_eq!(
        kinds,
        [(3, RejectKind::LineTooLong), (4, RejectKind::W3cHeader)]
    );
}

#[test]
fn field_limit_applies_to_every_value_in_both_codecs() {
    let opts = ParseOptions {
        default_distribution: Some("E1"),
        max_field_bytes: 10,
        ..ParseOptions::default()
    };
    // The JSON limit is on the value as stored, after unescaping.
    // A number where a string is expected is kept as its text, which counts.
    let number = format!(r#"{{"DistributionId":"E1","timestamp(ms)":{TS_MS},"c-ip":-1234567890}}"#);
    let parsed = parse_body(Format::Ndjson, number.as_bytes(), &opts);
    assert_eq!(parsed.rejected[0].kind, RejectKind::FieldTooLong);
    assert!(
        parsed.rejected[0]
            .reason
            .starts_with("field `c-ip`: value of 11 bytes")
    );
    let number = format!(r#"{{"DistributionId":"E1","timestamp(ms)":{TS_MS},"c-ip":1234567890}}"#);
    assert_eq!(
        parse_body(Format::Ndjson, number.as_bytes(), &opts)
            .records
            .len(),
        1
    );
    let ok = format!(
        r#"{{"DistributionId":"E1","timestamp(ms)":{TS_MS},"cs-method":"\u00e9\u00e9\u00e9\u00e9"}}"#
    );
    assert_eq!(
        parse_body(Format::Ndjson, ok.as_bytes(), &opts)
            .records
            .len(),
        1
    );
    for (key, value) in [
        ("cs-method", "\"GETGETGETGET\""),
        ("date", "\"2019-12-04xx\""),
        ("sc-status", "\"000000000200\""),
        (
            "x-edge-location",
            "\"\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\"",
        ),
    ] {
        let line = format!(r#"{{"DistributionId":"E1","timestamp(ms)":{TS_MS},"{key}":{value}}}"#);
        let parsed = parse_body(Format::Ndjson, line.as_bytes(), &opts);
        assert_eq!(parsed.rejected.len(), 1, "{line}");
        assert_eq!(parsed.rejected[0].kind, RejectKind::FieldTooLong, "{line}");
        assert!(
            parsed.rejected[0]
                .reason
                .starts_with(&format!("field `{key}`: "))
        );
    }
    let w3c = "#Fields: date time cs-method sc-status\n2019-12-04\t21:02:31\tGETGETGETGET\t200\n2019-12-04\t21:02:31\tGET\t000000000200\n";
    let parsed = parse_body(Format::W3c, w3c.as_bytes(), &opts);
    let reasons: Vec<&str> = parsed.rejected.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].starts_with("field `cs-method`: value of 12 bytes"));
    assert!(reasons[1].starts_with("field `sc-status`: value of 12 bytes"));
}

#[test]
fn blank_bodies_allocate_little() {
    let body = vec![b'\n'; 4 << 20];
    let parsed = parse_body(Format::Ndjson, &body, &ParseOptions::default());
    assert!(parsed.records.is_empty() && parsed.rejected.is_empty());
    assert!(
        parsed.records.capacity() <= 1 << 16,
        "{}",
        parsed.records.capacity()
    );
}

/// `date` + `time` as text, in both codecs: exact, or refused naming the field.
fn check_date_time(date: &str, tm: &str) -> Result<(), TestCaseError> {
    let days = (|| {
        let b = date.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        let num = |s: &str| {
            s.bytes()
                .all(|c| c.is_ascii_digit())
                .then(|| s.parse::<u32>().ok())
                .flatten()
        };
        let (y, m, d) = (num(&date[..4])?, num(&date[5..7])?, num(&date[8..])?);
        let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let len = [
            31,
            if leap { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        (1..=12).contains(&m).then_some(())?;
        (1..=len[m as usize - 1]).contains(&d).then_some(())?;
        Some(time::days_from_civil(i64::from(y), m, d))
    })();
    let tod = (|| {
        let (hms, frac) = tm.split_once('.').unwrap_or((tm, ""));
        let p: Vec<&str> = hms.split(':').collect();
        if p.len() != 3
            || p.iter()
                .any(|x| x.len() != 2 || !x.bytes().all(|c| c.is_ascii_digit()))
        {
            return None;
        }
        let (h, m, s): (i64, i64, i64) =
            (p[0].parse().ok()?, p[1].parse().ok()?, p[2].parse().ok()?);
        if h > 23 || m > 59 || s > 60 {
            return None;
        }
        if tm.contains('.') && !(1..=3).contains(&frac.len()) {
            return None;
        }
        if !frac.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let ms = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<3}").parse::<i64>().ok()?
        };
        Some(((h * 60 + m) * 60 + s) * 1000 + ms)
    })();
    let want = match (days, tod) {
        (None, _) => Err("`date`"),
        (_, None) => Err("`time`"),
        (Some(d), Some(t)) => {
            let ts = d * 86_400_000 + t;
            if (time::MIN_TIMESTAMP_MS..time::MAX_TIMESTAMP_MS).contains(&ts) {
                Ok(ts)
            } else {
                Err("timestamp ")
            }
        }
    };
    let ndjson = format!(
        "{{\"DistributionId\":\"E1\",\"date\":{},\"time\":{}}}",
        serde_json::to_string(date).expect("json"),
        serde_json::to_string(tm).expect("json")
    );
    let mut bodies = vec![(Format::Ndjson, ndjson)];
    if !date.contains(['\t', '\n', '\r']) && !tm.contains(['\t', '\n', '\r']) {
        bodies.push((Format::W3c, format!("#Fields: date time\n{date}\t{tm}\n")));
    }
    for (format, body) in bodies {
        let parsed = parse_one(format, &body, &ParseOptions::with_distribution(Some("E1")));
        match (&want, parsed.records.first(), parsed.rejected.first()) {
            (Ok(ts), Some(r), None) => prop_assert_eq!(r.timestamp_ms, *ts, "{}", body),
            (Err(name), None, Some(r)) => {
                prop_assert!(r.reason.contains(name), "{}: {:?}", body, r);
                let kind = if name.starts_with("timestamp") {
                    RejectKind::TimestampOutOfRange
                } else {
                    RejectKind::BadValue
                };
                prop_assert_eq!(r.kind, kind, "{}", body);
            }
            (w, rec, rej) => prop_assert!(false, "{}: want {:?}, got {:?} {:?}", body, w, rec, rej),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn dates_and_times_are_exact_or_refused(
        y in prop_oneof![1999u32..2101, 0u32..10_000],
        m in 0u32..14,
        d in 0u32..33,
        h in 0u32..26,
        mi in 0u32..62,
        s in 0u32..62,
        frac in prop_oneof![Just(String::new()), "\\.[0-9]{0,5}", "[.:x ]?[0-9a]{0,2}"],
        mangle in prop_oneof![4 => Just(None), 1 => Just(Some("")), 1 => Just(Some(" ")), 1 => Just(Some("+")), 1 => Just(Some("00"))],
    ) {
        let mut date = format!("{y:04}-{m:02}-{d:02}");
        let tm = format!("{h:02}:{mi:02}:{s:02}{frac}");
        if let Some(extra) = mangle {
            date.insert_str(0, extra);
        }
        check_date_time(&date, &tm)?;
    }
}

#[test]
fn ndjson_lines_that_are_not_utf8_are_refused_alone() {
    let mut body = Vec::new();
    body.extend_from_slice(
        b"{\"timestamp\":1700000000,\"DistributionId\":\"E1\",\"cs-uri-stem\":\"/a\xff\"}\n",
    );
    body.extend_from_slice(
        b"{\"timestamp\":1700000000,\"DistributionId\":\"E1\",\"cs-uri-\xc3\":\"/b\"}\n",
    );
    // An unknown key's value is skipped, not read: its bytes don't matter.
    body.extend_from_slice(b"{\"timestamp\":1700000000,\"DistributionId\":\"E1\",\"x-new\":\"\xff\",\"cs-uri-stem\":\"/c\"}\n");
    body.extend_from_slice("{\"timestamp\":1700000000,\"DistributionId\":\"E1\",\"cs-uri-stem\":\"/d\u{e9}\\u00e9\"}\n".as_bytes());
    let parsed = parse_body(Format::Ndjson, &body, &ParseOptions::default());
    let refused: Vec<_> = parsed
        .rejected
        .iter()
        .map(|r| (r.line, r.kind, r.reason.as_str()))
        .collect();
    assert_eq!(
        refused,
        [
            (
                1,
                RejectKind::InvalidJson,
                "field `cs-uri-stem`: invalid unicode code point (column 64)"
            ),
            (
                2,
                RejectKind::InvalidJson,
                "after field `DistributionId`: invalid unicode code point (column 55)"
            ),
        ]
    );
    let stems: Vec<_> = parsed
        .records
        .iter()
        .map(|r| r.cs_uri_stem.as_deref())
        .collect();
    assert_eq!(stems, [Some("/c"), Some("/d\u{e9}\u{e9}")]);
}
