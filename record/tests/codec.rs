//! Codec round trips, the AWS documentation example, per-line refusals.

use edgelog_record::{
    FIELDS, FieldKind, Format, ParseOptions, ParseValue, Record, derive_request_id, parse_body,
    time, w3c, write_json,
};
use proptest::prelude::*;

const AWS_EXAMPLE: &str = include_str!("../testdata/EMLARXS9EXAMPLE.2019-12-04-21.RT4KCN4SGK9.log");

#[test]
fn aws_documentation_example_parses_to_documented_values() {
    let parsed = parse_body(
        Format::W3c,
        AWS_EXAMPLE.as_bytes(),
        &opts(Some("EMLARXS9EXAMPLE"), 100),
    );
    assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
    assert_eq!(parsed.records.len(), 6);
    let r = &parsed.records[0];
    let mut when = String::new();
    time::write_date(&mut when, r.timestamp_ms);
    when.push(' ');
    time::write_time(&mut when, r.timestamp_ms);
    assert_eq!(when, "2019-12-04 21:02:31");
    assert_eq!(r.timestamp_ms, 1_575_493_351_000);
    assert_eq!(r.distribution_id, "EMLARXS9EXAMPLE");
    assert_eq!(r.x_edge_location.as_deref(), Some("LAX1"));
    assert_eq!(r.sc_bytes, Some(392));
    assert_eq!(r.c_ip.as_deref(), Some("192.0.2.100"));
    assert_eq!(r.cs_method.as_deref(), Some("GET"));
    assert_eq!(r.cs_host.as_deref(), Some("d111111abcdef8.cloudfront.net"));
    assert_eq!(r.cs_uri_stem.as_deref(), Some("/index.html"));
    assert_eq!(r.sc_status, Some(200));
    assert_eq!(r.cs_referer, None);
    assert!(
        r.cs_user_agent
            .as_deref()
            .is_some_and(|ua| ua.starts_with("Mozilla/5.0%20(Windows%20NT%2010.0;"))
    );
    assert_eq!(r.cs_uri_query, None);
    assert_eq!(r.cs_cookie, None);
    assert_eq!(r.x_edge_result_type.as_deref(), Some("Hit"));
    assert_eq!(
        r.request_id(),
        "SOX4xwn4XV6Q4rgb7XiVGOHms_BGlTAC4KyHmureZmBNrjGdRLiNIQ=="
    );
    assert_eq!(
        r.x_host_header.as_deref(),
        Some("d111111abcdef8.cloudfront.net")
    );
    assert_eq!(r.cs_protocol.as_deref(), Some("https"));
    assert_eq!(r.cs_bytes, Some(23));
    assert_eq!(r.time_taken, Some(0.001));
    assert_eq!(r.x_forwarded_for, None);
    assert_eq!(r.ssl_protocol.as_deref(), Some("TLSv1.2"));
    assert_eq!(r.ssl_cipher.as_deref(), Some("ECDHE-RSA-AES128-GCM-SHA256"));
    assert_eq!(r.x_edge_response_result_type.as_deref(), Some("Hit"));
    assert_eq!(r.cs_protocol_version.as_deref(), Some("HTTP/2.0"));
    assert_eq!(r.fle_status, None);
    assert_eq!(r.fle_encrypted_fields, None);
    assert_eq!(r.c_port, Some(11040));
    assert_eq!(r.time_to_first_byte, Some(0.001));
    assert_eq!(r.x_edge_detailed_result_type.as_deref(), Some("Hit"));
    assert_eq!(r.sc_content_type.as_deref(), Some("text/html"));
    assert_eq!(r.sc_content_len, Some(78));
    assert_eq!(r.sc_range_start, None);
    assert_eq!(r.sc_range_end, None);

    let e = &parsed.records[3];
    assert_eq!(e.timestamp_ms, 1_576_276_587_000); // 2019-12-13 22:36:27
    assert_eq!(e.x_edge_location.as_deref(), Some("SEA19-C1"));
    assert_eq!(e.sc_status, Some(502));
    assert_eq!(e.cs_referer.as_deref(), Some("http://www.example.com/"));
    assert_eq!(e.x_edge_result_type.as_deref(), Some("Error"));
    assert_eq!(e.cs_protocol.as_deref(), Some("http"));
    assert_eq!(e.ssl_protocol, None);
    assert_eq!(e.time_taken, Some(0.102));
    assert_eq!(
        e.x_edge_detailed_result_type.as_deref(),
        Some("OriginDnsError")
    );
    assert_eq!(e.sc_content_len, Some(507));
    assert_eq!(
        parsed.records[5].cs_user_agent.as_deref(),
        Some("curl/7.55.1")
    );
}

fn opts(default_distribution: Option<&str>, max_listed: usize) -> ParseOptions<'_> {
    ParseOptions {
        default_distribution,
        max_listed,
        ..ParseOptions::default()
    }
}

/// A deterministic pseudo-random record from a seed: every field, every type.
fn record_from_seed(seed: u64, w3c_safe: bool) -> Record {
    let mut s = seed;
    let mut next = move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut r = Record {
        timestamp_ms: time::MIN_TIMESTAMP_MS + (next() % 3_000_000_000_000) as i64,
        distribution_id: format!("E{:X}", next() % 1_000_000),
        ..Record::default()
    };
    if w3c_safe {
        r.timestamp_ms -= r.timestamp_ms % 1000;
    }
    let alphabet: &[&str] = if w3c_safe {
        &["a", "Z", "/", "%20", "é", "0", ".", "=", "?", "&", "😀"]
    } else {
        &[
            "a", "\"", "\\", "\t", "\n", "é", "-", "😀", " ", "\u{1}", "x",
        ]
    };
    for (i, f) in FIELDS.iter().enumerate() {
        if next() % 5 == 0 {
            continue; // null
        }
        let v = match f.kind {
            FieldKind::Str => {
                let len = 1 + next() % 12;
                let mut text: String = (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect();
                if text == "-" {
                    text.push('x');
                }
                ParseValue::Str(text.into())
            }
            FieldKind::U16 => ParseValue::U64(next() % 65_536),
            FieldKind::U32 => ParseValue::U64(next() % (1 << 32)),
            FieldKind::U64 => ParseValue::U64(next() >> 1),
            FieldKind::I64 => ParseValue::U64(next() % (1 << 40)),
            FieldKind::F64 => {
                ParseValue::F64((next() % 10_000_000) as f64 / 1000.0 + 1e-9 * (next() % 7) as f64)
            }
        };
        r.set_value(i, v).expect("generated value fits its field");
    }
    // Ingest derives an id for records without one; generate records as ingest leaves them.
    r.x_edge_request_id
        .get_or_insert_with(|| format!("id{seed:x}"));
    r
}

proptest! {
    #[test]
    fn ndjson_round_trips_every_field(seed in any::<u64>()) {
        let rec = record_from_seed(seed, false);
        let mut line = Vec::new();
        write_json(&rec, &mut line);
        let parsed = parse_body(Format::Ndjson, &line, &opts(None, 10));
        prop_assert!(parsed.rejected.is_empty(), "{:?} for {}", parsed.rejected, String::from_utf8_lossy(&line));
        prop_assert_eq!(&parsed.records[0], &rec);
    }

    #[test]
    fn w3c_round_trips_every_field(seed in any::<u64>()) {
        let rec = record_from_seed(seed, true);
        let mut body = String::new();
        w3c::write_header(&mut body);
        w3c::write_line(&rec, &mut body);
        let parsed = parse_body(Format::W3c, body.as_bytes(), &opts(Some(&rec.distribution_id), 10));
        prop_assert!(parsed.rejected.is_empty(), "{:?} for {}", parsed.rejected, body);
        prop_assert_eq!(&parsed.records[0], &rec);
    }
}

#[test]
fn bad_lines_are_named_and_good_lines_kept() {
    let mut body = Vec::new();
    for i in 0..1000u64 {
        match i {
            10 => body.extend_from_slice(b"{\"DistributionId\":\"E1\",\"timestamp(ms)\":1700000000000,\"sc-status\":\"abc\"}"),
            500 => body.extend_from_slice(b"{not json"),
            998 => body.extend_from_slice(b"{\"DistributionId\":\"E1\",\"sc-status\":200}"),
            _ => write_json(&record_from_seed(i, false), &mut body),
        }
        body.push(b'\n');
    }
    let parsed = parse_body(Format::Ndjson, &body, &opts(None, 100));
    assert_eq!(parsed.records.len(), 997);
    // Lines are parsed in place: a refused one leaves nothing of itself behind.
    let kept: Vec<Record> = (0..1000)
        .filter(|i| ![10, 500, 998].contains(i))
        .map(|i| record_from_seed(i, false))
        .collect();
    assert!(
        parsed.records == kept,
        "the good lines' records, as written"
    );
    let lines: Vec<u64> = parsed.rejected.iter().map(|r| r.line).collect();
    assert_eq!(lines, [11, 501, 999]);
    // What each refusal's reason names.
    for (i, named) in [
        (0, "sc-status"),
        (0, "\"abc\""),
        (1, "key must be a string"),
        (2, "missing timestamp"),
    ] {
        let reason = &parsed.rejected[i].reason;
        assert!(reason.contains(named), "{reason} (wanted {named:?})");
    }
}

/// A line refused after its fields were read (a bad value last, a distribution the token
/// may not write or one that is not an id, a column too many or too few) leaves none of
/// them in the records of the lines around it, in either format.
#[test]
fn lines_refused_after_their_fields_were_read_leave_nothing_behind() {
    let allowed = ["E*".to_owned()];
    let options = ParseOptions {
        allowed_distributions: Some(&allowed),
        ..opts(None, 100)
    };
    let mut body = Vec::new();
    let mut want = Vec::new();
    for i in 0..60u64 {
        let mut r = record_from_seed(i, false);
        r.distribution_id = format!("E{i}");
        if i % 8 == 0 {
            // Its id is derived from its own line and number, after a refused line.
            r.x_edge_request_id = None;
        }
        match i % 4 {
            0 => want.push(r.clone()),
            1 => r.distribution_id = format!("X{i}"),
            3 => r.distribution_id = format!("E {i}"),
            _ => {}
        }
        let mut line = Vec::new();
        write_json(&r, &mut line);
        if i % 4 == 2 {
            line.pop();
            line.extend_from_slice(b",\"sc-status\":\"x\"}");
        }
        if let Some(w) = want.last_mut().filter(|w| w.x_edge_request_id.is_none()) {
            w.x_edge_request_id = Some(derive_request_id(&line, i + 1));
        }
        body.extend_from_slice(&line);
        body.push(b'\n');
    }
    let parsed = parse_body(Format::Ndjson, &body, &options);
    assert_eq!(parsed.rejected.len(), 45, "{:?}", &parsed.rejected[..4]);
    assert!(parsed.records == want);

    let mut body = String::new();
    w3c::write_header(&mut body);
    let mut want = Vec::new();
    for i in 0..60u64 {
        let mut r = record_from_seed(i, true);
        r.distribution_id = "E1".into();
        let mut line = String::new();
        w3c::write_line(&r, &mut line);
        line.pop();
        match i % 3 {
            0 => want.push(r),
            1 => line.push_str("\tmore"),
            _ => line.truncate(line.rfind('\t').expect("tab")),
        }
        body.push_str(&line);
        body.push('\n');
    }
    let parsed = parse_body(Format::W3c, body.as_bytes(), &opts(Some("E1"), 100));
    assert_eq!(parsed.rejected.len(), 40, "{:?}", &parsed.rejected[..4]);
    assert!(parsed.records == want);
}

#[test]
fn refusals_name_the_problem() {
    let cases: &[(&[u8], &str)] = &[
        (
            b"{\"DistributionId\":\"E1\",\"timestamp(ms)\":1700000000000,\"sc-bytes\":-5}",
            "field `sc-bytes`",
        ),
        (
            b"{\"DistributionId\":\"E1\",\"timestamp(ms)\":1700000000000,\"time-taken\":\"fast\"}",
            "field `time-taken`: expected seconds",
        ),
        (
            b"{\"DistributionId\":\"../etc\",\"timestamp(ms)\":1700000000000}",
            "distribution id may hold only",
        ),
        (
            b"{\"timestamp(ms)\":1700000000000}",
            "missing distribution id",
        ),
        (
            b"{\"DistributionId\":\"E1\",\"date\":\"2019-13-01\",\"time\":\"00:00:00\"}",
            "field `date`",
        ),
        (
            b"{\"DistributionId\":\"E1\",\"timestamp(ms)\":5}",
            "outside 2000-01-01",
        ),
        (b"[1,2]", "invalid type"),
    ];
    for (line, want) in cases {
        let parsed = parse_body(Format::Ndjson, line, &opts(None, 10));
        assert_eq!(
            parsed.rejected.len(),
            1,
            "{}",
            String::from_utf8_lossy(line)
        );
        assert!(
            parsed.rejected[0].reason.contains(want),
            "{} -> {}",
            String::from_utf8_lossy(line),
            parsed.rejected[0].reason
        );
    }
    let w3c_bad = "#Version: 1.0\n#Fields: date time sc-status\n2019-12-04\t21:02:31\n2019-12-04\t21:02:31\t2x0\n";
    let parsed = parse_body(Format::W3c, w3c_bad.as_bytes(), &opts(Some("E1"), 10));
    assert_eq!(parsed.rejected.len(), 2);
    assert_eq!(parsed.rejected[0].line, 3);
    assert!(
        parsed.rejected[0]
            .reason
            .contains("expected 3 tab-separated values")
    );
    assert!(parsed.rejected[1].reason.contains("field `sc-status`"));
}

#[test]
fn missing_request_ids_are_derived_stably() {
    let body = b"{\"DistributionId\":\"E1\",\"timestamp(ms)\":1700000000000}\n{\"DistributionId\":\"E1\",\"timestamp(ms)\":1700000000000}\n";
    let a = parse_body(Format::Ndjson, body, &opts(None, 10));
    let b = parse_body(Format::Ndjson, body, &opts(None, 10));
    assert_eq!(a.records[0].request_id(), b.records[0].request_id());
    assert_ne!(a.records[0].request_id(), a.records[1].request_id());
    assert!(!a.records[0].request_id().is_empty());
}

#[test]
fn values_arrive_as_strings_or_numbers() {
    let line = br#"{"DistributionId":"E1","timestamp":"1700000000.250","sc-bytes":"100","sc-status":404,"time-taken":"0.5","cs-uri-query":"-","unknown-field":{"x":1}}"#;
    let parsed = parse_body(Format::Ndjson, line, &opts(None, 10));
    assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
    let r = &parsed.records[0];
    assert_eq!(r.timestamp_ms, 1_700_000_000_250);
    assert_eq!(
        (r.sc_bytes, r.sc_status, r.time_taken),
        (Some(100), Some(404), Some(0.5))
    );
    assert_eq!(r.cs_uri_query, None);
}
