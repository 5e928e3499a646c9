//! Staging: with hundreds of files open or more, each holds a few rows between spills,
//! and filling a set of builders per file (grown from nothing after each spill) cost more
//! than the rows. Their rows go into one set of builders instead, each row marked with its
//! file's slot; a spill sorts them by file and time once and hands each file a slice.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, RecordBatch, UInt32Array};
use arrow_schema::{ArrowError, SchemaRef};
use edgelog_record::Record;

use crate::schema::Columns;

/// Rows of many files in one set of builders, and rows sorted out of them earlier whose
/// files are still open (a closing file takes its share out; the rest waits for a run).
#[derive(Default)]
pub(crate) struct Staging {
    columns: Columns,
    /// The slot of each row's file.
    slots: Vec<u32>,
    /// Each slot's sample rate.
    rates: Vec<f64>,
    /// Slots whose rows are all taken, handed out again (the staging may never be empty
    /// at once while files keep opening).
    free: Vec<u32>,
    sorted: Vec<Sorted>,
}

/// Rows sorted out of the builders, each file's share, and the bytes the batch holds
/// (until every share is out, whatever part of it is left).
struct Sorted {
    batch: RecordBatch,
    shares: Vec<Share>,
    bytes: usize,
}

/// A file's rows in a sorted staging batch.
pub(crate) struct Share {
    pub(crate) slot: u32,
    pub(crate) start: usize,
    pub(crate) len: usize,
}

impl Staging {
    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.sorted.is_empty()
    }

    /// A slot for a file whose rows are in `sample_rate` percent.
    pub(crate) fn slot(&mut self, sample_rate: f64) -> u32 {
        if let Some(slot) = self.free.pop() {
            self.rates[slot as usize] = sample_rate;
            return slot;
        }
        self.rates.push(sample_rate);
        // Bounded by the files with rows staged, far below 2^32.
        (self.rates.len() - 1) as u32
    }

    /// Bytes held: the builders' rows and every sorted batch whole.
    pub(crate) fn memory(&self) -> usize {
        self.columns.bytes()
            + self.slots.len() * 4
            + self.sorted.iter().map(|s| s.bytes).sum::<usize>()
    }

    /// Adds a row of the file in `slot`; returns the bytes it holds.
    pub(crate) fn push(&mut self, r: &Record, slot: u32) -> usize {
        let before = self.columns.bytes();
        self.columns.push(r);
        self.slots.push(slot);
        self.columns.bytes() - before + 4
    }

    /// The rows of the files in `slots`, one batch each, sorted by time; the others'
    /// stay. A file's only share of a batch whose every share goes out is handed out as a
    /// slice, others as copies (so that what stays does not hold them).
    pub(crate) fn take_slots(
        &mut self,
        schema: &SchemaRef,
        slots: &HashSet<u32>,
    ) -> Result<Vec<(u32, RecordBatch)>, ArrowError> {
        self.sort(schema)?;
        let mut parts: HashMap<u32, Vec<(RecordBatch, bool)>> = HashMap::new();
        for sorted in &mut self.sorted {
            let all = sorted.shares.iter().all(|s| slots.contains(&s.slot));
            let mut kept = Vec::with_capacity(sorted.shares.len());
            for s in sorted.shares.drain(..) {
                match slots.contains(&s.slot) {
                    true => parts
                        .entry(s.slot)
                        .or_default()
                        .push((sorted.batch.slice(s.start, s.len), all)),
                    false => kept.push(s),
                }
            }
            sorted.shares = kept;
        }
        self.sorted.retain(|s| !s.shares.is_empty());
        let mut out = Vec::with_capacity(parts.len());
        for (slot, mut p) in parts {
            let rows = match p.as_slice() {
                [(_, true)] => p.swap_remove(0).0,
                _ => one_batch(schema, p.iter().map(|x| &x.0))?,
            };
            out.push((slot, rows));
            self.free.push(slot);
        }
        self.forget_slots_if_empty();
        Ok(out)
    }

    /// Every row, by file: slices of sorted batches (each sorted by time); the staging is
    /// empty after.
    pub(crate) fn take_all(
        &mut self,
        schema: &SchemaRef,
    ) -> Result<Vec<(u32, Vec<RecordBatch>)>, ArrowError> {
        self.sort(schema)?;
        let mut out: HashMap<u32, Vec<RecordBatch>> = HashMap::new();
        for sorted in std::mem::take(&mut self.sorted) {
            for s in sorted.shares {
                out.entry(s.slot)
                    .or_default()
                    .push(sorted.batch.slice(s.start, s.len));
            }
        }
        self.forget_slots_if_empty();
        let mut out: Vec<_> = out.into_iter().collect();
        out.sort_unstable_by_key(|(slot, _)| *slot);
        Ok(out)
    }

    fn forget_slots_if_empty(&mut self) {
        if self.is_empty() {
            self.rates.clear();
            self.free.clear();
        }
    }

    /// Sorts the rows in the builders by slot, then time, into a batch of `sorted`. Each
    /// unsorted column goes as its sorted copy is made, so the rows are not held twice.
    fn sort(&mut self, schema: &SchemaRef) -> Result<(), ArrowError> {
        if self.slots.is_empty() {
            return Ok(());
        }
        if self.columns.len() != self.slots.len() {
            return Err(ArrowError::InvalidArgumentError(format!(
                "{} staged rows with {} slots",
                self.columns.len(),
                self.slots.len()
            )));
        }
        let unsorted = self.columns.finish_as(schema, 0.0, false)?;
        let slots = std::mem::take(&mut self.slots);
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
        let rates = &self.rates;
        let sample_rates = Float64Array::from_iter_values(
            order.iter().map(|&i| rates[slots[i as usize] as usize]),
        );
        let order = UInt32Array::from(order);
        let last = unsorted.num_columns() - 1;
        let (_, unsorted_columns, _) = unsorted.into_parts();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(unsorted_columns.len());
        for (n, c) in unsorted_columns.into_iter().enumerate() {
            columns.push(match n == last {
                true => Arc::new(sample_rates.clone()),
                false => arrow_select::take::take(c.as_ref(), &order, None)?,
            });
        }
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        let bytes = crate::open_file::batch_bytes(&batch);
        self.sorted.push(Sorted {
            batch,
            shares,
            bytes,
        });
        Ok(())
    }
}

/// One batch of its own (a slice keeps the whole batch it is cut from) of a file's rows,
/// sorted by time (each of `parts` is).
pub(crate) fn one_batch<'a>(
    schema: &SchemaRef,
    parts: impl Iterator<Item = &'a RecordBatch>,
) -> Result<RecordBatch, ArrowError> {
    let parts: Vec<&RecordBatch> = parts.collect();
    let all = arrow_select::concat::concat_batches(schema, parts.iter().copied())?;
    // Concatenating one batch hands back a slice of it: copied then.
    crate::schema::by_time(all, parts.len() == 1)
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

    fn ts(b: &RecordBatch) -> Vec<i64> {
        b.column(0)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .expect("ts")
            .values()
            .to_vec()
    }

    fn ids(b: &RecordBatch) -> Vec<String> {
        b.column_by_name("x_edge_request_id")
            .expect("id")
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("strings")
            .iter()
            .map(|v| v.expect("id").to_owned())
            .collect()
    }

    fn rates(b: &RecordBatch) -> Vec<f64> {
        b.column(b.num_columns() - 1)
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("rates")
            .values()
            .to_vec()
    }

    #[test]
    fn a_closing_files_rows_come_out_alone_and_the_rest_by_file_then_time() {
        let schema = crate::schema::schema();
        let mut s = Staging::default();
        assert!(s.take_all(&schema).expect("take").is_empty());
        let (a, b) = (s.slot(100.0), s.slot(12.5));
        for (ts, id, slot) in [(5, "a5", a), (3, "b3", b), (1, "a1", a), (2, "b2", b)] {
            assert!(s.push(&rec(ts, id), slot) > 0);
        }
        // File a closes: its rows alone, sorted, a copy holding only them.
        let got = s.take_slots(&schema, &HashSet::from([a])).expect("take a");
        assert_eq!(got.len(), 1);
        let (slot, batch) = &got[0];
        assert_eq!(*slot, a);
        assert_eq!(ids(batch), ["a1", "a5"]);
        assert_eq!(rates(batch), [100.0, 100.0]);
        assert!(!s.is_empty(), "b's rows stay");
        let kept = s.memory();
        assert!(
            kept > 0,
            "the sorted batch counts whole while b's share is in it"
        );

        // More rows of b, and of a new file c, which gets a's slot again (all its rows
        // are out).
        let c = s.slot(50.0);
        assert_eq!(c, a);
        s.push(&rec(1, "b1"), b);
        s.push(&rec(9, "c9"), c);
        let all = s.take_all(&schema).expect("take all");
        assert!(s.is_empty());
        let by: Vec<_> = all
            .iter()
            .map(|(slot, bs)| {
                let rows: Vec<String> = bs.iter().flat_map(ids).collect();
                let times: Vec<i64> = bs.iter().flat_map(ts).collect();
                let r: Vec<f64> = bs.iter().flat_map(rates).collect();
                (*slot, rows, times, r)
            })
            .collect();
        assert_eq!(
            by,
            [
                (c, vec!["c9".to_owned()], vec![9], vec![50.0]),
                (
                    b,
                    vec!["b2".to_owned(), "b3".into(), "b1".into()],
                    vec![2, 3, 1],
                    vec![12.5; 3]
                ),
            ],
            "each sorted batch's share in turn (gathering sorts them together)"
        );
        assert_eq!(s.memory(), 0);
        // Slots start again once every row is taken.
        assert_eq!(s.slot(1.0), 0);
    }

    #[test]
    fn a_file_with_rows_in_several_sorted_batches_gets_one_batch_of_its_own_rows() {
        let schema = crate::schema::schema();
        let mut s = Staging::default();
        let (a, b, c) = (s.slot(1.0), s.slot(2.0), s.slot(3.0));
        s.push(&rec(4, "a4"), a);
        s.push(&rec(3, "b3"), b);
        // A file with no rows closing sorts the builders into a first batch.
        let none = s.slot(9.0);
        assert!(
            s.take_slots(&schema, &HashSet::from([none]))
                .expect("take")
                .is_empty()
        );
        s.push(&rec(1, "a1"), a);
        s.push(&rec(2, "b2"), b);
        s.push(&rec(5, "c5"), c);
        let mut got = s.take_slots(&schema, &HashSet::from([a, b])).expect("take");
        got.sort_by_key(|(slot, _)| *slot);
        let got: Vec<_> = got
            .iter()
            .map(|(slot, batch)| (*slot, ids(batch), ts(batch), rates(batch)))
            .collect();
        assert_eq!(
            got,
            [
                (
                    a,
                    vec!["a1".to_owned(), "a4".into()],
                    vec![1, 4],
                    vec![1.0; 2]
                ),
                (
                    b,
                    vec!["b2".to_owned(), "b3".into()],
                    vec![2, 3],
                    vec![2.0; 2]
                ),
            ]
        );
        assert!(s.memory() > 0, "c's rows stay");
        let rest = s.take_all(&schema).expect("take all");
        let rest: Vec<_> = rest
            .iter()
            .map(|(slot, bs)| (*slot, bs.iter().flat_map(ids).collect::<Vec<_>>()))
            .collect();
        assert_eq!(rest, [(c, vec!["c5".to_owned()])]);
        assert!(s.is_empty());
        assert_eq!(s.memory(), 0);
    }
}
