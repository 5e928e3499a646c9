//! The request record every edgelog crate shares: CloudFront's standard-log fields with
//! their types, the NDJSON and W3C codecs, the sampler, and per-minute aggregates.
//!
//! No I/O lives here.

mod aggregate;
mod body;
mod fields;
mod json;
mod reject;
pub mod report;
mod sampler;
mod sketch;
pub mod time;
pub mod topk;
mod value;
pub mod w3c;

pub use aggregate::{MinuteAggregate, MinuteUpdate};
pub use body::{
    Format, MAX_REASON_BYTES, ParseOptions, Parsed, Rejection, derive_request_id,
    distribution_allowed, parse_body,
};
pub use fields::{FIELD_COUNT, FIELDS, Field, FieldSpec, Record, field_index};
pub use json::{
    KeyCache, check_distribution_id, parse_line as parse_json_line, write_record as write_json,
};
pub use reject::{
    DEFAULT_MAX_FIELD_BYTES, DEFAULT_MAX_LINE_BYTES, MAX_LIMIT_BYTES, RejectKind, check_limits,
};
pub use report::MinuteReport;
pub use sampler::{Rates, SAMPLER_SEED, SamplingConfig, keep, sample_point};
pub use sketch::LatencySketch;
pub use value::{FieldKind, MAX_SECONDS, ParseValue, Value};

/// Version of the record schema, carried in Parquet metadata and stream headers.
pub const SCHEMA_VERSION: u32 = 1;
