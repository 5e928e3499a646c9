//! Staging: with hundreds of files open or more, each holds a few rows between spills,
//! and filling a set of builders per file (grown from nothing after each spill) cost more
//! than the rows. Their rows go into one set of builders instead, each row marked with its
//! file's slot; a spill sorts them by file and time once and hands each file a slice.

use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, RecordBatch, UInt32Array};
use arrow_schema::{ArrowError, SchemaRef};
use edgelog_record::Record;

use crate::schema::Columns;

/// Rows of many files in one set of builders.
#[derive(Default)]
pub(crate) struct Staging {
    columns: Columns,
    /// The slot of each row's file.
    slots: Vec<u32>,
    /// Each slot's sample rate.
    rates: Vec<f64>,
}

/// A file's rows in a sorted staging batch.
pub(crate) struct Share {
    pub(crate) slot: u32,
    pub(crate) start: usize,
    pub(crate) len: usize,
}

impl Staging {
    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// A slot for a file whose rows are in `sample_rate` percent.
    pub(crate) fn slot(&mut self, sample_rate: f64) -> u32 {
        self.rates.push(sample_rate);
        // Bounded by the rows staged, which the memory bound keeps far below 2^32.
        (self.rates.len() - 1) as u32
    }

    /// Adds a row of the file in `slot`; returns the bytes it holds.
    pub(crate) fn push(&mut self, r: &Record, slot: u32) -> usize {
        let before = self.columns.bytes();
        self.columns.push(r);
        self.slots.push(slot);
        self.columns.bytes() - before + 4
    }

    /// Takes every row as one batch sorted by slot, then time, and each slot's range in
    /// it; the staging is empty after. Each unsorted column goes as its sorted copy is
    /// made, so the rows are not held twice.
    pub(crate) fn take(
        &mut self,
        schema: &SchemaRef,
    ) -> Result<Option<(RecordBatch, Vec<Share>)>, ArrowError> {
        if self.is_empty() {
            return Ok(None);
        }
        let unsorted = self.columns.finish_as(schema, 0.0, false)?;
        let slots = std::mem::take(&mut self.slots);
        let rates = std::mem::take(&mut self.rates);
        let ts = unsorted
            .column(0)
            .as_any()
            .downcast_ref::<arrow_array::TimestampMillisecondArray>()
            .ok_or_else(|| ArrowError::SchemaError("the first column is not the timestamp".into()))?
            .values()
            .clone();
        let mut order: Vec<u32> = (0..slots.len() as u32).collect();
        order.sort_unstable_by_key(|&i| (slots[i as usize], ts[i as usize], i));
        let mut shares: Vec<Share> = Vec::new();
        for (n, &i) in order.iter().enumerate() {
            let slot = slots[i as usize];
            match shares.last_mut() {
                Some(s) if s.slot == slot => s.len += 1,
                _ => shares.push(Share {
                    slot,
                    start: n,
                    len: 1,
                }),
            }
        }
        let sample_rates: Float64Array = order
            .iter()
            .map(|&i| Some(rates[slots[i as usize] as usize]))
            .collect();
        let order = UInt32Array::from(order);
        let last = unsorted.num_columns() - 1;
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(unsorted.num_columns());
        let (_, unsorted_columns, _) = unsorted.into_parts();
        for (n, c) in unsorted_columns.into_iter().enumerate() {
            columns.push(match n == last {
                true => Arc::new(sample_rates.clone()),
                false => arrow_select::take::take(c.as_ref(), &order, None)?,
            });
        }
        Ok(Some((
            RecordBatch::try_new(schema.clone(), columns)?,
            shares,
        )))
    }
}

/// A copy of a slice that holds only its own rows (a slice keeps the whole batch).
pub(crate) fn compact(b: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let all = UInt32Array::from_iter_values(0..b.num_rows() as u32);
    arrow_select::take::take_record_batch(b, &all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, StringArray, TimestampMillisecondArray};

    fn rec(ts: i64, id: &str) -> Record {
        Record {
            timestamp_ms: ts,
            distribution_id: "E1".into(),
            x_edge_request_id: Some(id.into()),
            ..Default::default()
        }
    }

    #[test]
    fn rows_come_back_by_file_then_time_with_their_rates() {
        let schema = crate::schema::schema();
        let mut s = Staging::default();
        assert!(s.take(&schema).expect("take").is_none());
        let (a, b) = (s.slot(100.0), s.slot(12.5));
        for (ts, id, slot) in [
            (5, "a5", a),
            (3, "b3", b),
            (1, "a1", a),
            (2, "b2", b),
            (1, "b1", b),
        ] {
            assert!(s.push(&rec(ts, id), slot) > 0);
        }
        let (batch, shares) = s.take(&schema).expect("take").expect("rows");
        assert!(s.is_empty());
        let spans: Vec<_> = shares.iter().map(|x| (x.slot, x.start, x.len)).collect();
        assert_eq!(spans, [(a, 0, 2), (b, 2, 3)]);
        let ts = batch
            .column(0)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .expect("ts");
        assert_eq!(ts.values().to_vec(), [1, 5, 1, 2, 3]);
        let ids = batch
            .column_by_name("x_edge_request_id")
            .expect("id")
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("strings")
            .iter()
            .map(|v| v.expect("id").to_owned())
            .collect::<Vec<_>>();
        assert_eq!(ids, ["a1", "a5", "b1", "b2", "b3"]);
        let rates = batch
            .column(batch.num_columns() - 1)
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("rates");
        assert_eq!(rates.values().to_vec(), [100.0, 100.0, 12.5, 12.5, 12.5]);
        // A slice copied holds its rows alone.
        let part = compact(&batch.slice(2, 3)).expect("compact");
        assert_eq!(part.num_rows(), 3);
        assert!(part.get_array_memory_size() < batch.get_array_memory_size());
        assert_eq!(part.column(0).len(), 3);
        // Slots start again after a take.
        assert_eq!(s.slot(1.0), 0);
    }
}
