//! A group's rows: decoded, merged, told apart and encoded again.

use std::collections::HashMap;

use arrow_array::{Array, RecordBatch, TimestampMillisecondArray, UInt32Array};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};

use super::{CompactionError, parquet_err};

/// The files' rows, sorted by time, as one Parquet file.
pub(super) fn encode(
    files: Vec<bytes::Bytes>,
    footers: Vec<(ArrowReaderMetadata, String)>,
    props: parquet::file::properties::WriterProperties,
    what: &str,
) -> Result<Vec<u8>, CompactionError> {
    let arrow = |source| CompactionError::Arrow {
        path: what.to_owned(),
        source,
    };
    let schema = footers[0].0.schema().clone();
    let mut batches = Vec::new();
    // An error names the input that caused it.
    for (file, (footer, name)) in files.into_iter().zip(footers) {
        batches.extend(decode(file, footer, &name)?);
    }
    let all = arrow_select::concat::concat_batches(&schema, &batches).map_err(arrow)?;
    drop(batches);
    let sorted = sort_by_time(&all).map_err(arrow)?;
    drop(all);
    encode_batch(&sorted, props, what)
}

const REQUEST_ID: &str = "x_edge_request_id";

/// Each row's (request id, time): what says two rows are the same record.
pub(super) fn row_keys(
    file: bytes::Bytes,
    footer: ArrowReaderMetadata,
    what: &str,
) -> Result<Vec<(String, i64)>, CompactionError> {
    let mut out = Vec::new();
    for b in decode(file, footer, what)? {
        let (ids, ts) = key_columns(&b, what)?;
        out.extend((0..b.num_rows()).map(|n| (ids.value(n).to_owned(), ts.value(n))));
    }
    Ok(out)
}

fn key_columns<'a>(
    b: &'a RecordBatch,
    what: &str,
) -> Result<(&'a arrow_array::StringArray, &'a TimestampMillisecondArray), CompactionError> {
    let ids = b
        .column_by_name(REQUEST_ID)
        .and_then(|c| c.as_any().downcast_ref::<arrow_array::StringArray>());
    let ts = b
        .column_by_name("timestamp")
        .and_then(|c| c.as_any().downcast_ref::<TimestampMillisecondArray>());
    match (ids, ts) {
        (Some(i), Some(t)) => Ok((i, t)),
        _ => Err(CompactionError::Arrow {
            path: what.to_owned(),
            source: arrow_schema::ArrowError::SchemaError(format!(
                "no {REQUEST_ID} or timestamp column: rows cannot be told apart"
            )),
        }),
    }
}

/// The file's rows not in `held` (each held key matches one row, once); `None` when none
/// are left. Returns what is left of `held`, and how many rows were dropped.
#[allow(clippy::type_complexity)]
pub(super) fn new_rows(
    file: bytes::Bytes,
    footer: ArrowReaderMetadata,
    mut held: HashMap<(String, i64), u32>,
    what: &str,
) -> Result<(Option<RecordBatch>, u64, HashMap<(String, i64), u32>), CompactionError> {
    let schema = footer.schema().clone();
    let mut kept = Vec::new();
    let mut dropped = 0u64;
    for b in decode(file, footer, what)? {
        let (ids, ts) = key_columns(&b, what)?;
        let keep: arrow_array::BooleanArray = (0..b.num_rows())
            .map(|n| {
                let key = (ids.value(n).to_owned(), ts.value(n));
                match held.get_mut(&key) {
                    Some(c) if *c > 0 => {
                        *c -= 1;
                        dropped += 1;
                        Some(false)
                    }
                    _ => Some(true),
                }
            })
            .collect();
        let b = arrow_select::filter::filter_record_batch(&b, &keep).map_err(|source| {
            CompactionError::Arrow {
                path: what.to_owned(),
                source,
            }
        })?;
        if b.num_rows() > 0 {
            kept.push(b);
        }
    }
    if kept.is_empty() {
        return Ok((None, dropped, held));
    }
    let rest = arrow_select::concat::concat_batches(&schema, &kept).map_err(|source| {
        CompactionError::Arrow {
            path: what.to_owned(),
            source,
        }
    })?;
    Ok((Some(rest), dropped, held))
}

pub(super) fn decode(
    file: bytes::Bytes,
    footer: ArrowReaderMetadata,
    what: &str,
) -> Result<Vec<RecordBatch>, CompactionError> {
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, footer)
        .with_batch_size(64 * 1024)
        .build()
        .map_err(parquet_err(&what))?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| CompactionError::Arrow {
            path: what.to_owned(),
            source,
        })
}

pub(super) fn encode_batch(
    batch: &RecordBatch,
    props: parquet::file::properties::WriterProperties,
    what: &str,
) -> Result<Vec<u8>, CompactionError> {
    let mut out = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut out, batch.schema(), Some(props)).map_err(parquet_err(&what))?;
    writer.write(batch).map_err(parquet_err(&what))?;
    writer.close().map_err(parquet_err(&what))?;
    Ok(out)
}

/// Rows in time order; rows of one millisecond keep their order (stable).
pub(super) fn sort_by_time(batch: &RecordBatch) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let Some(ts) = batch.schema().index_of("timestamp").ok().and_then(|n| {
        batch
            .column(n)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .cloned()
    }) else {
        return Ok(batch.clone());
    };
    let mut order: Vec<u32> = (0..batch.num_rows() as u32).collect();
    order.sort_by_key(|&n| (ts.is_null(n as usize), ts.value(n as usize)));
    arrow_select::take::take_record_batch(batch, &UInt32Array::from(order))
}
