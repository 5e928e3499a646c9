//! The Parquet schema of standard logs: Athena's column names, real types.

use std::sync::Arc;

use arrow_array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use edgelog_record::{FIELDS, FieldKind, Record, Value};

/// Name of the sample-rate column (percent of records kept for this destination).
pub const SAMPLE_RATE_COLUMN: &str = "sample_rate";

fn arrow_type(kind: FieldKind) -> DataType {
    match kind {
        FieldKind::Str => DataType::Utf8,
        // Unsigned Parquet types trip Athena and Spark; these values fit the signed ones.
        FieldKind::U16 => DataType::Int32,
        FieldKind::U32 | FieldKind::U64 | FieldKind::I64 => DataType::Int64,
        FieldKind::F64 => DataType::Float64,
    }
}

/// `timestamp`, every record field in CloudFront's order, then `sample_rate`. The
/// partition columns (DistributionId, year, month, day, hour) live in the path only.
pub fn schema() -> SchemaRef {
    let mut fields = vec![Field::new(
        "timestamp",
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        false,
    )];
    fields.extend(
        FIELDS
            .iter()
            .map(|f| Field::new(f.column, arrow_type(f.kind), true)),
    );
    fields.push(Field::new(SAMPLE_RATE_COLUMN, DataType::Float64, false));
    Arc::new(Schema::new(fields))
}

/// Builds one record batch from rows that all share `sample_rate`.
pub fn to_batch(
    schema: &SchemaRef,
    rows: &[&Record],
    sample_rate: f64,
) -> Result<RecordBatch, ArrowError> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(FIELDS.len() + 2);
    columns.push(Arc::new(
        TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.timestamp_ms))
            .with_timezone("UTC"),
    ));
    for (i, f) in FIELDS.iter().enumerate() {
        let col: ArrayRef = match f.kind {
            FieldKind::Str => Arc::new(StringArray::from_iter(rows.iter().map(
                |r| match r.get(i) {
                    Value::Str(s) => s,
                    _ => None,
                },
            ))),
            FieldKind::U16 => {
                Arc::new(Int32Array::from_iter(rows.iter().map(|r| match r.get(i) {
                    Value::U16(v) => v.map(i32::from),
                    _ => None,
                })))
            }
            FieldKind::U32 | FieldKind::U64 | FieldKind::I64 => {
                Arc::new(Int64Array::from_iter(rows.iter().map(|r| match r.get(i) {
                    Value::U32(v) => v.map(i64::from),
                    // sc-bytes beyond i64::MAX is not a real response size; keep it as max.
                    Value::U64(v) => v.map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
                    Value::I64(v) => v,
                    _ => None,
                })))
            }
            FieldKind::F64 => Arc::new(Float64Array::from_iter(rows.iter().map(
                |r| match r.get(i) {
                    Value::F64(v) => v,
                    _ => None,
                },
            ))),
        };
        columns.push(col);
    }
    columns.push(Arc::new(Float64Array::from_iter_values(
        rows.iter().map(|_| sample_rate),
    )));
    RecordBatch::try_new(schema.clone(), columns)
}
