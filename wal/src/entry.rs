//! An entry's records, column by column: each field's values side by side compress
//! better and faster than whole records one after another (the same host, agent or path
//! is then a few bytes back, not a record back).
//!
//! Layout, before zstd: `n` (records), `fields` (the writer's field count) and each
//! field's kind (a byte), the times as zigzag deltas, the distribution ids, then each
//! field's `n` values. A text is `len + 1` then its bytes, an integer `value + 1` (zigzag
//! for signed), both varints, 0 for null; a float is a byte 0 (null) or 1 then its 8
//! bytes, little-endian. Fields are matched by position: `FIELDS` only ever grows at its
//! end (a test pins it), and a kind that differs is refused, never read as another field.

use edgelog_record::{FIELD_COUNT, FIELDS, FieldKind, Record, Value};

/// The first byte of a columnar payload; an older payload is a zstd frame (`0x28`).
pub(crate) const COLUMNS_TAG: u8 = 0x01;

/// Records an entry may hold: ingest splits bodies past it, [`encode`] refuses more, and
/// so a damaged count allocates no more than this many records.
pub const MAX_ENTRY_RECORDS: usize = 8_192;

fn kind_code(kind: FieldKind) -> u8 {
    match kind {
        FieldKind::Str => 0,
        FieldKind::U16 => 1,
        FieldKind::U32 => 2,
        FieldKind::U64 => 3,
        FieldKind::I64 => 4,
        FieldKind::F64 => 5,
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u128) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_text(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            put_varint(out, s.len() as u128 + 1);
            out.extend_from_slice(s.as_bytes());
        }
    }
}

/// Appends the records' columns to `out`; refuses more than [`MAX_ENTRY_RECORDS`].
pub(crate) fn encode(records: &[Record], out: &mut Vec<u8>) -> Result<(), String> {
    if records.len() > MAX_ENTRY_RECORDS {
        return Err(format!(
            "{} records in one entry, more than {MAX_ENTRY_RECORDS}",
            records.len()
        ));
    }
    put_varint(out, records.len() as u128);
    put_varint(out, FIELD_COUNT as u128);
    out.extend(FIELDS.iter().map(|f| kind_code(f.kind)));
    let mut prev = 0i64;
    for r in records {
        put_varint(out, u128::from(zigzag(r.timestamp_ms.wrapping_sub(prev))));
        prev = r.timestamp_ms;
    }
    for r in records {
        put_text(out, Some(&r.distribution_id));
    }
    for i in 0..FIELD_COUNT {
        Record::each_value(records, i, |v| match v {
            Value::Str(s) => put_text(out, s),
            Value::U16(v) => put_varint(out, v.map_or(0, |v| u128::from(v) + 1)),
            Value::U32(v) => put_varint(out, v.map_or(0, |v| u128::from(v) + 1)),
            Value::U64(v) => put_varint(out, v.map_or(0, |v| u128::from(v) + 1)),
            Value::I64(v) => put_varint(out, v.map_or(0, |v| u128::from(zigzag(v)) + 1)),
            Value::F64(None) => out.push(0),
            Value::F64(Some(x)) => {
                out.push(1);
                out.extend_from_slice(&x.to_le_bytes());
            }
        });
    }
    Ok(())
}

/// Reads what [`encode`] wrote.
struct Input<'a> {
    rest: &'a [u8],
}

impl<'a> Input<'a> {
    fn varint(&mut self) -> Result<u128, String> {
        let mut v = 0u128;
        for shift in (0..).step_by(7).take(19) {
            let (&b, rest) = self.rest.split_first().ok_or("the entry ends too soon")?;
            self.rest = rest;
            v |= u128::from(b & 0x7f)
                .checked_shl(shift)
                .filter(|x| x >> shift == u128::from(b & 0x7f))
                .ok_or("a number too large")?;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("a number too long".into())
    }

    fn u64(&mut self) -> Result<u64, String> {
        u64::try_from(self.varint()?).map_err(|_| "a number too large".into())
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.rest.len() {
            return Err("the entry ends too soon".into());
        }
        let (b, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(b)
    }

    fn text(&mut self) -> Result<Option<&'a str>, String> {
        match self.u64()? {
            0 => Ok(None),
            n => {
                let len = usize::try_from(n - 1).map_err(|_| "a text too long")?;
                std::str::from_utf8(self.bytes(len)?)
                    .map(Some)
                    .map_err(|e| format!("a text that is not UTF-8: {e}"))
            }
        }
    }

    /// An optional integer of at most `max`.
    fn int(&mut self, max: u64) -> Result<Option<u64>, String> {
        match self.varint()? {
            0 => Ok(None),
            n => u64::try_from(n - 1)
                .ok()
                .filter(|v| *v <= max)
                .map(Some)
                .ok_or_else(|| format!("{} is out of its field's range", n - 1)),
        }
    }
}

/// The records of a columnar entry (without its tag, decompressed).
pub(crate) fn decode(raw: &[u8]) -> Result<Vec<Record>, String> {
    let mut input = Input { rest: raw };
    let n = usize::try_from(input.u64()?).map_err(|_| "too many records")?;
    let fields = usize::try_from(input.u64()?).map_err(|_| "too many fields")?;
    if fields > FIELD_COUNT {
        return Err(format!(
            "{fields} fields, more than the {FIELD_COUNT} this version knows"
        ));
    }
    for (i, spec) in FIELDS.iter().enumerate().take(fields) {
        let code = input.bytes(1)?[0];
        if code != kind_code(spec.kind) {
            return Err(format!(
                "field {i} ({}) written as kind {code}, read as {}",
                spec.cloudfront,
                kind_code(spec.kind)
            ));
        }
    }
    // Every record takes at least a byte in each column: a count past that, or past
    // what an entry may hold, is damage and must not allocate.
    if n > MAX_ENTRY_RECORDS || n.saturating_mul(fields + 2) > input.rest.len() {
        return Err(format!("{n} records cannot be in {} bytes", raw.len()));
    }
    let mut records = vec![Record::default(); n];
    let mut prev = 0i64;
    for r in &mut records {
        prev = prev.wrapping_add(unzigzag(input.u64()?));
        r.timestamp_ms = prev;
    }
    for r in &mut records {
        r.distribution_id = input
            .text()?
            .ok_or("a record without its distribution")?
            .to_owned();
    }
    for (i, spec) in FIELDS.iter().enumerate().take(fields) {
        for r in &mut records {
            let v = match spec.kind {
                FieldKind::Str => Value::Str(input.text()?),
                FieldKind::U16 => Value::U16(input.int(u16::MAX.into())?.map(|v| v as u16)),
                FieldKind::U32 => Value::U32(input.int(u32::MAX.into())?.map(|v| v as u32)),
                FieldKind::U64 => Value::U64(input.int(u64::MAX)?),
                FieldKind::I64 => Value::I64(input.int(u64::MAX)?.map(unzigzag)),
                FieldKind::F64 => match input.bytes(1)?[0] {
                    0 => Value::F64(None),
                    1 => {
                        let b: [u8; 8] = input.bytes(8)?.try_into().map_err(|_| "short float")?;
                        Value::F64(Some(f64::from_le_bytes(b)))
                    }
                    b => return Err(format!("a float marked {b}")),
                },
            };
            if !r.set(i, v) {
                return Err(format!("field {i} holds a value of another kind"));
            }
        }
    }
    if !input.rest.is_empty() {
        return Err(format!("{} bytes after the last column", input.rest.len()));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize) -> Record {
        let mut r = Record {
            timestamp_ms: 1_764_000_000_000 + (i as i64 % 7) * 1000 - 3000,
            distribution_id: format!("E{}", i % 3),
            ..Default::default()
        };
        r.cs_host = Some("d111.cloudfront.net".into());
        r.cs_uri_stem = i.is_multiple_of(2).then(|| format!("/p/{i}/é"));
        r.sc_status = Some(200 + i as u16);
        r.sc_bytes = Some(i as u64 * 1000);
        r.time_taken = (!i.is_multiple_of(3)).then_some(0.001 * i as f64);
        r.sc_range_start = Some(-(i as i64));
        r.x_edge_request_id = Some(format!("id{i}"));
        r
    }

    #[test]
    fn records_come_back_as_they_went() {
        let records: Vec<Record> = (0..50).map(record).collect();
        let mut raw = Vec::new();
        encode(&records, &mut raw).expect("encode");
        assert_eq!(decode(&raw).expect("decode"), records);
        let mut raw = Vec::new();
        encode(&[], &mut raw).expect("encode");
        assert_eq!(decode(&raw).expect("decode"), Vec::<Record>::new());
    }

    #[test]
    fn every_value_at_its_extremes_comes_back() {
        let mut r = Record {
            timestamp_ms: i64::MIN,
            distribution_id: String::new(),
            ..Default::default()
        };
        r.sc_bytes = Some(u64::MAX);
        r.sc_status = Some(u16::MAX);
        r.fle_encrypted_fields = Some(u32::MAX);
        r.sc_range_start = Some(i64::MIN);
        r.sc_range_end = Some(i64::MAX);
        r.time_taken = Some(f64::MAX);
        r.time_to_first_byte = Some(-0.0);
        r.cs_cookie = Some(String::new());
        let mut s = r.clone();
        s.timestamp_ms = i64::MAX;
        s.sc_bytes = Some(0);
        let records = vec![r, s, Record::default()];
        let mut raw = Vec::new();
        encode(&records, &mut raw).expect("encode");
        let back = decode(&raw).expect("decode");
        assert_eq!(back, records);
        assert!(
            back[0]
                .time_to_first_byte
                .is_some_and(|x| x.is_sign_negative())
        );
    }

    #[test]
    fn damage_is_an_error_never_a_panic_or_a_huge_allocation() {
        let records: Vec<Record> = (0..20).map(record).collect();
        let mut raw = Vec::new();
        encode(&records, &mut raw).expect("encode");
        // Cut anywhere, or any byte changed: an error or other records, never a panic.
        for cut in 0..raw.len() {
            assert!(decode(&raw[..cut]).is_err(), "cut at {cut}");
        }
        for at in 0..raw.len() {
            for b in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut bad = raw.clone();
                bad[at] = b;
                let _ = decode(&bad);
            }
        }
        // A count of 2^64 - 1 records, or more fields than known.
        // Counts past what an entry may hold, with room for them or not: refused before
        // any allocation (no fields: two bytes a record would do).
        for n in [
            MAX_ENTRY_RECORDS as u128 + 1,
            u128::from(u64::MAX),
            u128::MAX,
        ] {
            let mut huge = Vec::new();
            put_varint(&mut huge, n);
            put_varint(&mut huge, 0);
            huge.resize(huge.len() + 2 * (MAX_ENTRY_RECORDS + 1), 1);
            assert!(decode(&huge).is_err(), "{n} records");
        }
        let mut more = Vec::new();
        put_varint(&mut more, 0);
        put_varint(&mut more, FIELD_COUNT as u128 + 1);
        assert!(decode(&more).is_err_and(|e| e.contains("fields")));
        // A varint that never ends, and one past 2^128.
        assert!(decode(&[0xff; 40]).is_err());
        assert!(decode(&[0x80; 19]).is_err());
    }

    #[test]
    fn more_records_than_an_entry_holds_are_refused_when_written() {
        let records = vec![Record::default(); MAX_ENTRY_RECORDS + 1];
        assert!(encode(&records, &mut Vec::new()).is_err());
        let mut raw = Vec::new();
        encode(&records[1..], &mut raw).expect("encode");
        assert_eq!(decode(&raw).expect("decode").len(), MAX_ENTRY_RECORDS);
    }

    /// Every field set to a value of its kind that no other field holds.
    fn distinct(seed: u64) -> Record {
        let mut r = Record {
            timestamp_ms: seed as i64,
            distribution_id: format!("D{seed}"),
            ..Default::default()
        };
        for (i, f) in FIELDS.iter().enumerate() {
            let k = seed * 100 + i as u64;
            let text = format!("{}={k}", f.column);
            let v = match f.kind {
                FieldKind::Str => Value::Str(Some(&text)),
                FieldKind::U16 => Value::U16(Some(k as u16)),
                FieldKind::U32 => Value::U32(Some(k as u32)),
                FieldKind::U64 => Value::U64(Some(u64::MAX - k)),
                FieldKind::I64 => Value::I64(Some(i64::MIN + k as i64)),
                FieldKind::F64 => Value::F64(Some(f64::from_bits(0x7ff8_0000_0000_0000 | k))),
            };
            assert!(r.set(i, v));
        }
        r
    }

    #[test]
    fn every_field_comes_back_in_its_own_place_bit_for_bit() {
        let records: Vec<Record> = (0..5).map(distinct).collect();
        let mut raw = Vec::new();
        encode(&records, &mut raw).expect("encode");
        let back = decode(&raw).expect("decode");
        for (b, r) in back.iter().zip(&records) {
            for i in 0..FIELD_COUNT {
                match (b.get(i), r.get(i)) {
                    // NaN payloads: equal bits, not equal values.
                    (Value::F64(Some(x)), Value::F64(Some(y))) => {
                        assert_eq!(x.to_bits(), y.to_bits())
                    }
                    (x, y) => assert_eq!(x, y, "field {i}"),
                }
            }
        }
    }

    #[test]
    fn a_field_of_another_kind_is_refused() {
        let mut raw = Vec::new();
        encode(&[distinct(1)], &mut raw).expect("encode");
        // The first kind byte follows the count (1) and the field count (one byte).
        raw[2] = kind_code(FieldKind::F64);
        assert!(decode(&raw).is_err_and(|e| e.contains("kind")));
    }

    /// Entries in the log are read by position: a field inserted or moved would put old
    /// entries' values in the wrong columns. New fields go at the end of `FIELDS`.
    #[test]
    fn fields_only_ever_grow_at_their_end() {
        let names: Vec<&str> = FIELDS.iter().map(|f| f.column).collect();
        assert_eq!(
            names,
            [
                "x_edge_location",
                "sc_bytes",
                "c_ip",
                "cs_method",
                "cs_host",
                "cs_uri_stem",
                "sc_status",
                "cs_referer",
                "cs_user_agent",
                "cs_uri_query",
                "cs_cookie",
                "x_edge_result_type",
                "x_edge_request_id",
                "x_host_header",
                "cs_protocol",
                "cs_bytes",
                "time_taken",
                "x_forwarded_for",
                "ssl_protocol",
                "ssl_cipher",
                "x_edge_response_result_type",
                "cs_protocol_version",
                "fle_status",
                "fle_encrypted_fields",
                "c_port",
                "time_to_first_byte",
                "x_edge_detailed_result_type",
                "sc_content_type",
                "sc_content_len",
                "sc_range_start",
                "sc_range_end",
                "c_country",
                "asn",
                "cache_behavior_path_pattern",
            ]
        );
    }

    #[test]
    fn payloads_that_are_neither_format_are_errors() {
        let mut u = crate::reader::Unpacker::default();
        for bad in [
            &[][..],
            &[COLUMNS_TAG],
            &[COLUMNS_TAG, 0x28, 0xb5],
            b"EDGKEY01",
            &[0x28],
        ] {
            assert!(u.records(bad).is_err(), "{bad:?}");
        }
        // A whole zstd frame of columns without the tag is read as postcard: an error.
        let mut raw = Vec::new();
        encode(&[distinct(2)], &mut raw).expect("encode");
        let frame = zstd::bulk::compress(&raw, 1).expect("zstd");
        assert!(u.records(&frame).is_err());
        let mut tagged = vec![COLUMNS_TAG];
        tagged.extend_from_slice(&frame);
        let back = u.records(&tagged).expect("records");
        // (distinct() holds NaNs, which compare unequal: compared field by field above.)
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].request_id(), distinct(2).request_id());
    }

    #[test]
    fn an_entry_of_fewer_fields_leaves_the_rest_null() {
        let records: Vec<Record> = (0..3).map(record).collect();
        let mut raw = Vec::new();
        encode(&records, &mut raw).expect("encode");
        // The same entry as a writer knowing no fields would write it.
        let mut short = Vec::new();
        put_varint(&mut short, 3);
        put_varint(&mut short, 0);
        let mut prev = 0;
        for r in &records {
            put_varint(&mut short, u128::from(zigzag(r.timestamp_ms - prev)));
            prev = r.timestamp_ms;
        }
        for r in &records {
            put_text(&mut short, Some(&r.distribution_id));
        }
        let back = decode(&short).expect("decode");
        for (b, r) in back.iter().zip(&records) {
            assert_eq!(
                (b.timestamp_ms, &b.distribution_id),
                (r.timestamp_ms, &r.distribution_id)
            );
            assert_eq!(b.cs_host, None);
        }
    }
}
