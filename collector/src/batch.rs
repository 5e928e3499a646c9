//! What a sink is handed: one log entry's records sampled for it ([`Batch`]), chosen once
//! by the sink's [`Sampler`] before the sink sees the entry.

use std::collections::HashMap;

use edgelog_record::{Record, SamplingConfig, keep};

use crate::wal::{Entry, Seq};

/// One log entry as a sink sees it: the records sampled for this sink, each with the rate
/// it was kept at. Sinks never sample themselves.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    pub entry: &'a Entry,
    /// Indexes into `entry.records` with their rate; `None`: every record at 100 %.
    kept: Option<&'a [(u32, f64)]>,
}

/// One record of a [`Batch`].
#[derive(Debug, Clone, Copy)]
pub struct Kept<'a> {
    /// Position in the entry (stable across retries and restarts).
    pub index: usize,
    pub record: &'a Record,
    /// Percent of this distribution's records the sink is given.
    pub rate: f64,
}

impl<'a> Batch<'a> {
    /// Every record of `entry`, at 100 %.
    pub fn all(entry: &'a Entry) -> Batch<'a> {
        Batch { entry, kept: None }
    }

    pub fn seq(&self) -> Seq {
        self.entry.seq
    }

    /// When the collector logged (and acknowledged) the entry, ms since the epoch.
    pub fn appended_ms(&self) -> u64 {
        self.entry.appended_ms
    }

    pub fn len(&self) -> usize {
        self.kept.map_or(self.entry.records.len(), <[_]>::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn records(&self) -> impl Iterator<Item = Kept<'a>> + 'a {
        let (entry, kept) = (self.entry, self.kept);
        let all = kept.is_none().then(|| {
            entry
                .records
                .iter()
                .enumerate()
                .map(|(index, record)| Kept {
                    index,
                    record,
                    rate: 100.0,
                })
        });
        let some = kept.map(|k| {
            k.iter().map(move |&(i, rate)| Kept {
                index: i as usize,
                record: &entry.records[i as usize],
                rate,
            })
        });
        all.into_iter().flatten().chain(some.into_iter().flatten())
    }
}

/// Applies the sampling rates of one sink (keyed by its name) to entries, once, before
/// the sink sees them.
#[derive(Debug, Clone)]
pub struct Sampler {
    default: f64,
    distributions: HashMap<String, f64>,
    /// Every rate is 100 %: entries are handed whole, without a lookup per record.
    keeps_all: bool,
    kept: Vec<(u32, f64)>,
}

impl Sampler {
    /// The rates `sampling` gives sink `name`.
    pub fn new(sampling: &SamplingConfig, name: &str) -> Sampler {
        let default = sampling.default.rate(name);
        // A distribution's table overrides only the sinks it names.
        let distributions: HashMap<String, f64> = sampling
            .distributions
            .keys()
            .map(|id| (id.clone(), sampling.rate(id, name)))
            .collect();
        Sampler {
            keeps_all: default >= 100.0 && distributions.values().all(|r| *r >= 100.0),
            default,
            distributions,
            kept: Vec::new(),
        }
    }

    /// Every record, at 100 % (the metrics aggregator counts them all).
    pub fn all() -> Sampler {
        Sampler {
            default: 100.0,
            distributions: HashMap::new(),
            keeps_all: true,
            kept: Vec::new(),
        }
    }

    /// The records of `entry` this sink is given.
    pub fn batch<'a>(&'a mut self, entry: &'a Entry) -> Batch<'a> {
        if self.keeps_all {
            return Batch::all(entry);
        }
        self.kept.clear();
        for (i, r) in entry.records.iter().enumerate() {
            let rate = self
                .distributions
                .get(&r.distribution_id)
                .copied()
                .unwrap_or(self.default);
            if keep(r.request_id(), rate) {
                self.kept.push((i as u32, rate));
            }
        }
        Batch {
            entry,
            kept: Some(&self.kept),
        }
    }
}
