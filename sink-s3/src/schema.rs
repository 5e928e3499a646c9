//! The Parquet schema of standard logs: Athena's column names, real types.

use std::sync::Arc;

use arrow_array::builder::{Float64Builder, Int32Builder, Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, Float64Array, RecordBatch, TimestampMillisecondArray, UInt32Array};
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

enum Column {
    Str(StringBuilder),
    I32(Int32Builder),
    I64(Int64Builder),
    F64(Float64Builder),
}

/// Rows on their way into a record batch, column by column.
pub struct Columns {
    timestamps: Vec<i64>,
    columns: Vec<Column>,
    /// Bytes the builders hold, roughly.
    bytes: usize,
}

impl Default for Columns {
    /// No builders until a row comes: thousands of open files each start this way, and
    /// return to it after every row group or run.
    fn default() -> Self {
        Columns {
            timestamps: Vec::new(),
            columns: Vec::new(),
            bytes: 0,
        }
    }
}

/// What a file's empty builders cost, counted in [`Columns::bytes`] so that the memory
/// bound also covers many files holding a few rows each.
const BUILDERS_BYTES: usize = 4096;

fn builders() -> Vec<Column> {
    FIELDS
        .iter()
        .map(|f| match f.kind {
            FieldKind::Str => Column::Str(StringBuilder::with_capacity(0, 0)),
            FieldKind::U16 => Column::I32(Int32Builder::with_capacity(0)),
            FieldKind::U32 | FieldKind::U64 | FieldKind::I64 => {
                Column::I64(Int64Builder::with_capacity(0))
            }
            FieldKind::F64 => Column::F64(Float64Builder::with_capacity(0)),
        })
        .collect()
}

impl Columns {
    pub fn len(&self) -> usize {
        self.timestamps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.timestamps.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn push(&mut self, r: &Record) {
        if self.columns.is_empty() {
            self.columns = builders();
            self.bytes += BUILDERS_BYTES;
        }
        self.timestamps.push(r.timestamp_ms);
        self.bytes += 8;
        for (i, col) in self.columns.iter_mut().enumerate() {
            match (col, r.get(i)) {
                (Column::Str(b), Value::Str(s)) => {
                    self.bytes += s.map_or(0, str::len) + 5;
                    b.append_option(s);
                }
                (Column::I32(b), Value::U16(v)) => b.append_option(v.map(i32::from)),
                (Column::I64(b), Value::U32(v)) => b.append_option(v.map(i64::from)),
                // sc-bytes beyond i64::MAX is not a real response size; keep it as max.
                (Column::I64(b), Value::U64(v)) => {
                    b.append_option(v.map(|n| i64::try_from(n).unwrap_or(i64::MAX)))
                }
                (Column::I64(b), Value::I64(v)) => b.append_option(v),
                (Column::F64(b), Value::F64(v)) => b.append_option(v),
                // The builders are made from the same table as the values.
                (Column::Str(b), _) => b.append_null(),
                (Column::I32(b), _) => b.append_null(),
                (Column::I64(b), _) => b.append_null(),
                (Column::F64(b), _) => b.append_null(),
            }
            self.bytes += 9;
        }
    }

    /// Takes the rows as one batch, sorted by time, and empties the builders (their
    /// buffers move into the batch: nothing is copied unless the rows need sorting).
    pub fn finish(
        &mut self,
        schema: &SchemaRef,
        sample_rate: f64,
    ) -> Result<RecordBatch, ArrowError> {
        self.finish_as(schema, sample_rate, true)
    }

    /// [`finish`](Self::finish), sorting the rows by time only with `sort`.
    pub fn finish_as(
        &mut self,
        schema: &SchemaRef,
        sample_rate: f64,
        sort: bool,
    ) -> Result<RecordBatch, ArrowError> {
        if self.columns.is_empty() {
            self.columns = builders();
        }
        let ts = std::mem::take(&mut self.timestamps);
        let n = ts.len();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(FIELDS.len() + 2);
        // The order that sorts the rows by time, when they are not sorted already.
        let order = (sort && !ts.is_sorted()).then(|| {
            let mut order: Vec<u32> = (0..n as u32).collect();
            order.sort_by_key(|&i| ts[i as usize]);
            UInt32Array::from(order)
        });
        columns.push(Arc::new(
            TimestampMillisecondArray::from(ts).with_timezone("UTC"),
        ));
        for col in &mut self.columns {
            columns.push(match col {
                Column::Str(b) => Arc::new(b.finish()),
                Column::I32(b) => Arc::new(b.finish()),
                Column::I64(b) => Arc::new(b.finish()),
                Column::F64(b) => Arc::new(b.finish()),
            });
        }
        self.clear();
        columns.push(Arc::new(Float64Array::from(vec![sample_rate; n])));
        if let Some(order) = order {
            // Each column's unsorted copy goes as soon as its sorted one is made.
            columns = columns
                .into_iter()
                .map(|c| arrow_select::take::take(c.as_ref(), &order, None))
                .collect::<Result<_, _>>()?;
        }
        RecordBatch::try_new(schema.clone(), columns)
    }

    /// Drops the rows and the memory they held.
    pub fn clear(&mut self) {
        *self = Columns::default();
    }
}

/// `b`'s rows sorted by time: `b` itself when they are, unless `copy` (a batch of its own,
/// not a slice of a larger one).
pub(crate) fn by_time(b: RecordBatch, copy: bool) -> Result<RecordBatch, ArrowError> {
    let ts = b
        .column(0)
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .ok_or_else(|| ArrowError::SchemaError("the first column is not the timestamp".into()))?
        .values();
    let order = match ts.is_sorted() {
        true if !copy => return Ok(b),
        true => UInt32Array::from_iter_values(0..b.num_rows() as u32),
        false => {
            let mut order: Vec<u32> = (0..b.num_rows() as u32).collect();
            order.sort_by_key(|&i| ts[i as usize]);
            UInt32Array::from(order)
        }
    };
    arrow_select::take::take_record_batch(&b, &order)
}

/// Builds one record batch from rows that all share `sample_rate` (sorted by time).
pub fn to_batch(
    schema: &SchemaRef,
    rows: &[&Record],
    sample_rate: f64,
) -> Result<RecordBatch, ArrowError> {
    let mut c = Columns::default();
    for r in rows {
        c.push(r);
    }
    c.finish(schema, sample_rate)
}

/// Refuses a record that cannot be written as a row. Every record that passed ingest's
/// checks fits the schema today; the test hook `EDGELOG_TEST_UNENCODABLE_ID_PREFIX` makes
/// records whose request id starts with it unencodable, to exercise the dead letters.
pub fn check_encodable(r: &edgelog_record::Record) -> Result<(), String> {
    static PREFIX: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(|| {
        std::env::var("EDGELOG_TEST_UNENCODABLE_ID_PREFIX")
            .ok()
            .filter(|p| !p.is_empty())
    });
    match prefix {
        Some(p) if r.request_id().starts_with(p.as_str()) => Err(format!(
            "record {} cannot be encoded (injected by EDGELOG_TEST_UNENCODABLE_ID_PREFIX)",
            r.request_id()
        )),
        _ => Ok(()),
    }
}
