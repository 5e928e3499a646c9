//! The request record and its field table, defined once.
//!
//! `record_fields!` turns one table (CloudFront name, Athena column name, type) into the
//! [`Record`] struct, the [`FIELDS`] list in CloudFront's documented order, and typed
//! accessors, so the codecs, the Parquet writer and the stream formats never restate it.

use serde::{Deserialize, Serialize};

use crate::reject::Fault;
use crate::value::{FieldKind, ParseValue, Value};

/// One column of the record as the outside world names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    /// CloudFront's name, as in a W3C `#Fields` header or CloudFront's JSON output.
    pub cloudfront: &'static str,
    /// Athena's convention: hyphens and parentheses become underscores.
    pub column: &'static str,
    pub kind: FieldKind,
    /// The position in CloudFront's standard-log field list (1-based); `None` for fields
    /// that only standard logging v2 knows.
    pub standard_position: Option<u8>,
}

macro_rules! record_fields {
    ($( $(#[doc = $doc:literal])* $ident:ident : $ty:ident = $cf:literal, $col:literal, $pos:expr ;)*) => {
        /// One HTTP request served by an edge node.
        ///
        /// `timestamp_ms` and `distribution_id` are always present; every other field is
        /// `None` where CloudFront would write `-`. String values are kept exactly as
        /// CloudFront writes them (URL-encoded where it URL-encodes).
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        pub struct Record {
            /// When the request completed, milliseconds since the Unix epoch, UTC.
            pub timestamp_ms: i64,
            /// The distribution (CloudFront: `DistributionId`) that served the request.
            pub distribution_id: String,
            $( $(#[doc = $doc])* pub $ident: Option<<$ty as FieldType>::Owned>, )*
        }

        /// Index of each field in [`FIELDS`].
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub enum Field { $( $ident, )* }

        /// Every optional field, in CloudFront's documented order (date and time, which
        /// CloudFront lists first, are derived from `timestamp_ms`).
        pub const FIELDS: &[FieldSpec] = &[
            $( FieldSpec { cloudfront: $cf, column: $col, kind: <$ty as FieldType>::KIND, standard_position: $pos }, )*
        ];

        impl Record {
            /// The value of field `i` (an index into [`FIELDS`]).
            pub fn get(&self, i: usize) -> Value<'_> {
                const IDS: &[Field] = &[ $( Field::$ident, )* ];
                match IDS[i] { $( Field::$ident => <$ty as FieldType>::view(&self.$ident), )* }
            }

            /// Calls `f` with field `i` of each record in turn: one dispatch for the
            /// column instead of one a value (the log writes its entries this way).
            pub fn each_value<'a>(records: &'a [Record], i: usize, mut f: impl FnMut(Value<'a>)) {
                const IDS: &[Field] = &[ $( Field::$ident, )* ];
                match IDS[i] {
                    $( Field::$ident => for r in records { f(<$ty as FieldType>::view(&r.$ident)) }, )*
                }
            }

            /// Sets field `i` to a value of its own kind, as [`Record::get`] gives it (the
            /// log's entries are decoded this way); false, and the field unchanged, when
            /// the value is of another kind.
            pub fn set(&mut self, i: usize, v: Value<'_>) -> bool {
                const IDS: &[Field] = &[ $( Field::$ident, )* ];
                match IDS[i] {
                    $( Field::$ident => match <$ty as FieldType>::from_view(v) {
                        Some(x) => { self.$ident = x; true }
                        None => false,
                    }, )*
                }
            }

            /// Sets field `i` from its text form (W3C value, or a JSON string).
            pub fn set_text(&mut self, i: usize, text: &str) -> Result<(), String> {
                self.put_text(i, text).map_err(String::from)
            }

            /// Sets field `i` from a JSON scalar.
            pub fn set_value(&mut self, i: usize, v: ParseValue<'_>) -> Result<(), String> {
                self.put_value(i, v).map_err(String::from)
            }

            pub(crate) fn put_text(&mut self, i: usize, text: &str) -> Result<(), Fault> {
                const IDS: &[Field] = &[ $( Field::$ident, )* ];
                match IDS[i] { $( Field::$ident => self.$ident = <$ty as FieldType>::from_text(text)?, )* }
                Ok(())
            }

            pub(crate) fn put_value(&mut self, i: usize, v: ParseValue<'_>) -> Result<(), Fault> {
                const IDS: &[Field] = &[ $( Field::$ident, )* ];
                match IDS[i] { $( Field::$ident => self.$ident = <$ty as FieldType>::from_value(v)?, )* }
                Ok(())
            }
        }
    };
}

/// How one field's type is stored, parsed and viewed.
pub trait FieldType {
    type Owned;
    const KIND: FieldKind;
    fn view(v: &Option<Self::Owned>) -> Value<'_>;
    /// The field's value from its view; `None` when the view is of another kind.
    fn from_view(v: Value<'_>) -> Option<Option<Self::Owned>>;
    fn from_text(text: &str) -> Result<Option<Self::Owned>, Fault>;
    fn from_value(v: ParseValue<'_>) -> Result<Option<Self::Owned>, Fault>;
}

pub use crate::value::{F64, I64, Str, U16, U32, U64};

record_fields! {
    /// Edge location that served the request, e.g. `DFW3`.
    x_edge_location: Str = "x-edge-location", "x_edge_location", Some(3);
    /// Bytes the server sent to the viewer, headers included.
    sc_bytes: U64 = "sc-bytes", "sc_bytes", Some(4);
    /// Viewer IP address.
    c_ip: Str = "c-ip", "c_ip", Some(5);
    /// HTTP method.
    cs_method: Str = "cs-method", "cs_method", Some(6);
    /// The distribution's domain name.
    cs_host: Str = "cs(Host)", "cs_host", Some(7);
    /// Path of the request, without the query string.
    cs_uri_stem: Str = "cs-uri-stem", "cs_uri_stem", Some(8);
    /// HTTP status code of the response (0 when the viewer went away first).
    sc_status: U16 = "sc-status", "sc_status", Some(9);
    /// The Referer header.
    cs_referer: Str = "cs(Referer)", "cs_referer", Some(10);
    /// The User-Agent header, URL-encoded.
    cs_user_agent: Str = "cs(User-Agent)", "cs_user_agent", Some(11);
    /// The query string, without `?`.
    cs_uri_query: Str = "cs-uri-query", "cs_uri_query", Some(12);
    /// The Cookie header.
    cs_cookie: Str = "cs(Cookie)", "cs_cookie", Some(13);
    /// How the request was classified: Hit, RefreshHit, Miss, LimitExceeded, CapacityExceeded, Error, Redirect.
    x_edge_result_type: Str = "x-edge-result-type", "x_edge_result_type", Some(14);
    /// Unique request id; one is derived at ingest when a record comes without.
    x_edge_request_id: Str = "x-edge-request-id", "x_edge_request_id", Some(15);
    /// The Host header the viewer sent.
    x_host_header: Str = "x-host-header", "x_host_header", Some(16);
    /// `http`, `https`, `ws` or `wss`.
    cs_protocol: Str = "cs-protocol", "cs_protocol", Some(17);
    /// Bytes the viewer sent, headers included.
    cs_bytes: U64 = "cs-bytes", "cs_bytes", Some(18);
    /// Seconds from receiving the request to sending the last byte.
    time_taken: F64 = "time-taken", "time_taken", Some(19);
    /// The X-Forwarded-For header.
    x_forwarded_for: Str = "x-forwarded-for", "x_forwarded_for", Some(20);
    /// TLS protocol version, for HTTPS requests.
    ssl_protocol: Str = "ssl-protocol", "ssl_protocol", Some(21);
    /// TLS cipher, for HTTPS requests.
    ssl_cipher: Str = "ssl-cipher", "ssl_cipher", Some(22);
    /// How the response was classified just before it was returned.
    x_edge_response_result_type: Str = "x-edge-response-result-type", "x_edge_response_result_type", Some(23);
    /// HTTP version of the request, e.g. `HTTP/2.0`.
    cs_protocol_version: Str = "cs-protocol-version", "cs_protocol_version", Some(24);
    /// Field-level encryption status.
    fle_status: Str = "fle-status", "fle_status", Some(25);
    /// Number of field-level-encrypted fields forwarded to the origin.
    fle_encrypted_fields: U32 = "fle-encrypted-fields", "fle_encrypted_fields", Some(26);
    /// Port of the viewer's connection.
    c_port: U16 = "c-port", "c_port", Some(27);
    /// Seconds from receiving the request to sending the first byte of the response.
    time_to_first_byte: F64 = "time-to-first-byte", "time_to_first_byte", Some(28);
    /// Detailed result type, e.g. `OriginDnsError` or `MissGeneratedResponse`.
    x_edge_detailed_result_type: Str = "x-edge-detailed-result-type", "x_edge_detailed_result_type", Some(29);
    /// The response's Content-Type.
    sc_content_type: Str = "sc-content-type", "sc_content_type", Some(30);
    /// The response's Content-Length.
    sc_content_len: U64 = "sc-content-len", "sc_content_len", Some(31);
    /// First byte of a range response.
    sc_range_start: I64 = "sc-range-start", "sc_range_start", Some(32);
    /// Last byte of a range response.
    sc_range_end: I64 = "sc-range-end", "sc_range_end", Some(33);
    /// Viewer's country, ISO 3166-1 alpha-2 (standard logging v2).
    c_country: Str = "c-country", "c_country", None;
    /// Viewer's autonomous system number (standard logging v2).
    asn: U32 = "asn", "asn", None;
    /// Path pattern of the cache behavior that matched (standard logging v2).
    cache_behavior_path_pattern: Str = "cache-behavior-path-pattern", "cache_behavior_path_pattern", None;
}

/// Number of optional fields in [`FIELDS`].
pub const FIELD_COUNT: usize = FIELDS.len();

/// Index in [`FIELDS`] of a field named the CloudFront way (`cs(Host)`) or the Athena way
/// (`cs_host`).
pub fn field_index(name: &str) -> Option<usize> {
    FIELDS
        .iter()
        .position(|f| f.cloudfront == name || f.column == name)
}

impl Record {
    /// The request id; empty only before ingest has assigned one.
    pub fn request_id(&self) -> &str {
        self.x_edge_request_id.as_deref().unwrap_or("")
    }

    /// Bytes the record holds in memory, about: itself and the bytes of its texts.
    pub fn memory(&self) -> usize {
        let texts: usize = (0..FIELD_COUNT)
            .map(|i| match self.get(i) {
                Value::Str(Some(s)) => s.len(),
                _ => 0,
            })
            .sum();
        std::mem::size_of::<Record>() + self.distribution_id.capacity() + texts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_fields_are_in_cloudfront_order() {
        let standard: Vec<_> = FIELDS.iter().filter_map(|f| f.standard_position).collect();
        assert_eq!(standard, (3..=33).collect::<Vec<u8>>());
        assert_eq!(FIELDS[Field::sc_status as usize].cloudfront, "sc-status");
        assert_eq!(field_index("cs(User-Agent)"), field_index("cs_user_agent"));
    }
}
