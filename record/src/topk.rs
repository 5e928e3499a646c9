//! Space-Saving heavy hitters (Metwally, Agrawal, El Abbadi 2005) with a payload per key,
//! mergeable by the rule of Cafaro, Pulimeno and Tempesta (2016): a key missing from one
//! side counts as that side's floor.
//!
//! Written here rather than taken from a crate: the ones published keep neither a payload
//! per key (an object's hits and bytes) nor serde state that merges across processes.
//!
//! Guarantees, kept through any number of adds and merges (tested below):
//! - a monitored key's `count` is an upper bound: `count - error <= true <= count`;
//! - a key not monitored has a true count of at most [`TopK::floor`];
//! - hence every key whose true count exceeds the floor is monitored, and while fewer than
//!   `K` distinct keys were seen every count is exact (`error == 0`, floor 0).
//!
//! A payload is counted from when its key was last admitted, so it is a lower bound that
//! misses at most `error` requests.

use std::cmp::Ordering;
use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};
use serde::{Deserialize, Serialize};

/// What travels with a key's count (e.g. an object's hits and bytes).
pub trait Payload: Default + Clone {
    /// Adds another payload of the same key.
    fn merge(&mut self, other: &Self);
}

impl Payload for () {
    fn merge(&mut self, _: &Self) {}
}

/// One monitored key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter<V> {
    pub key: String,
    /// Upper bound of the key's true count.
    pub count: u64,
    /// How much `count` may exceed the true count.
    pub error: u64,
    pub value: V,
}

/// Heaviest first, ties by key: the same inputs keep the same keys.
fn heavier<V>(a: &Counter<V>, b: &Counter<V>) -> Ordering {
    b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key))
}

/// At most `K` monitored keys. Merged summaries keep them sorted by key (a merge is then
/// one pass over both); while counting, an index finds them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(deserialize = "V: Deserialize<'de>", serialize = "V: Serialize"))]
pub struct TopK<V, const K: usize> {
    /// Weight counted in all (monitored or not).
    total: u64,
    /// Whether a key was ever let go (by a replacement or a merge): until then every count
    /// is exact.
    lossy: bool,
    entries: Vec<Counter<V>>,
    /// Positions in `entries` by key hash; built on the first add, not sent.
    #[serde(skip)]
    index: HashTable<u32>,
    /// Each entry's key hash, beside the index.
    #[serde(skip)]
    hashes: Vec<u64>,
    #[serde(skip)]
    hasher: DefaultHashBuilder,
    /// Positions whose count was `lightest_count`, the least, when last looked at: the
    /// next to be replaced (counts only grow, so one still at it is still the least).
    #[serde(skip)]
    lightest: Vec<u32>,
    #[serde(skip)]
    lightest_count: u64,
}

impl<V, const K: usize> Default for TopK<V, K> {
    fn default() -> Self {
        TopK {
            total: 0,
            lossy: false,
            entries: Vec::new(),
            index: HashTable::new(),
            hashes: Vec::new(),
            hasher: DefaultHashBuilder::default(),
            lightest: Vec::new(),
            lightest_count: 0,
        }
    }
}

impl<V: Eq, const K: usize> Eq for TopK<V, K> {}

impl<V: PartialEq, const K: usize> PartialEq for TopK<V, K> {
    fn eq(&self, o: &Self) -> bool {
        self.total == o.total && self.lossy == o.lossy && self.entries == o.entries
    }
}

impl<V: Payload, const K: usize> TopK<V, K> {
    /// Counts `key` once, with `value` for its payload.
    pub fn add(&mut self, key: &str, value: &V) {
        self.total = self.total.saturating_add(1);
        if self.index.len() != self.entries.len() {
            self.reindex();
        }
        let h = self.hasher.hash_one(key);
        let entries = &mut self.entries;
        if let Some(&i) = self.index.find(h, |&i| entries[i as usize].key == key) {
            let e = &mut entries[i as usize];
            e.count = e.count.saturating_add(1);
            e.value.merge(value);
            return;
        }
        if entries.len() < K {
            entries.push(Counter {
                key: key.to_owned(),
                count: 1,
                error: 0,
                value: value.clone(),
            });
            self.hashes.push(h);
            let hashes = &self.hashes;
            self.index
                .insert_unique(h, (hashes.len() - 1) as u32, |&j| hashes[j as usize]);
            return;
        }
        // Replace the lightest key: the newcomer inherits its count as error.
        let Some(i) = self.take_lightest() else {
            return;
        };
        self.lossy = true;
        if let Ok(slot) = self.index.find_entry(self.hashes[i], |&j| j as usize == i) {
            slot.remove();
        }
        self.hashes[i] = h;
        let e = &mut self.entries[i];
        e.key.clear();
        e.key.push_str(key);
        e.error = e.count;
        e.count = e.count.saturating_add(1);
        e.value = value.clone();
        let hashes = &self.hashes;
        self.index
            .insert_unique(h, i as u32, |&j| hashes[j as usize]);
    }

    /// A position holding the least count.
    fn take_lightest(&mut self) -> Option<usize> {
        loop {
            while let Some(i) = self.lightest.pop() {
                let i = i as usize;
                if self
                    .entries
                    .get(i)
                    .is_some_and(|e| e.count == self.lightest_count)
                {
                    return Some(i);
                }
            }
            let least = self.entries.iter().map(|e| e.count).min()?;
            self.lightest_count = least;
            self.lightest = (0..self.entries.len() as u32)
                .rev()
                .filter(|i| self.entries[*i as usize].count == least)
                .collect();
        }
    }

    fn reindex(&mut self) {
        self.index.clear();
        self.lightest.clear();
        self.hashes = self
            .entries
            .iter()
            .map(|e| self.hasher.hash_one(&e.key))
            .collect();
        let hashes = &self.hashes;
        for (i, h) in hashes.iter().enumerate() {
            self.index
                .insert_unique(*h, i as u32, |&j| hashes[j as usize]);
        }
    }

    /// The most any key not monitored may have been counted: the lightest count once a
    /// key was let go, else 0.
    pub fn floor(&self) -> u64 {
        if !self.lossy {
            0
        } else {
            self.entries.iter().map(|e| e.count).min().unwrap_or(0)
        }
    }

    /// Weight counted in all.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Monitored keys, in no particular order.
    pub fn entries(&self) -> &[Counter<V>] {
        &self.entries
    }

    fn by_key(entries: &[Counter<V>]) -> bool {
        entries.is_sorted_by(|a, b| a.key <= b.key)
    }

    /// Adds another summary: a key one side lacks counts as that side's floor there (an
    /// upper bound of what it missed, which becomes error); the `K` heaviest are kept,
    /// sorted by key.
    pub fn merge(&mut self, o: &TopK<V, K>) {
        if o.total == 0 && o.entries.is_empty() {
            return;
        }
        let (fa, fb) = (self.floor(), o.floor());
        let mut ours = std::mem::take(&mut self.entries);
        if !Self::by_key(&ours) {
            ours.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        }
        let mut theirs: Vec<&Counter<V>> = o.entries.iter().collect();
        if !Self::by_key(&o.entries) {
            theirs.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        }
        let mut all: Vec<Counter<V>> = Vec::with_capacity(ours.len() + theirs.len());
        let mut b = theirs.into_iter().peekable();
        for mut e in ours {
            while let Some(t) = b.next_if(|t| t.key < e.key) {
                all.push(Counter {
                    key: t.key.clone(),
                    count: t.count.saturating_add(fa),
                    error: t.error.saturating_add(fa),
                    value: t.value.clone(),
                });
            }
            match b.next_if(|t| t.key == e.key) {
                Some(t) => {
                    e.count = e.count.saturating_add(t.count);
                    e.error = e.error.saturating_add(t.error);
                    e.value.merge(&t.value);
                }
                None => {
                    e.count = e.count.saturating_add(fb);
                    e.error = e.error.saturating_add(fb);
                }
            }
            all.push(e);
        }
        for t in b {
            all.push(Counter {
                key: t.key.clone(),
                count: t.count.saturating_add(fa),
                error: t.error.saturating_add(fa),
                value: t.value.clone(),
            });
        }
        self.lossy |= o.lossy || all.len() > K;
        if all.len() > K {
            all.select_nth_unstable_by(K - 1, heavier);
            all.truncate(K);
            all.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        }
        self.entries = all;
        self.index.clear();
        self.hashes.clear();
        self.lightest.clear();
        self.total = self.total.saturating_add(o.total);
    }

    /// Monitored keys, heaviest first (ties by key).
    pub fn sorted(&self) -> Vec<&Counter<V>> {
        let mut v: Vec<&Counter<V>> = self.entries.iter().collect();
        v.sort_by(|x, y| heavier(x, y));
        v
    }

    /// Drops the lookup index and sorts by key (a summary kept only to be read and
    /// merged).
    pub fn compact(&mut self) {
        self.index = HashTable::new();
        self.hashes = Vec::new();
        self.lightest = Vec::new();
        if !Self::by_key(&self.entries) {
            self.entries.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        }
        self.entries.shrink_to_fit();
    }

    /// Brings a summary from elsewhere within this one's shape: at most `K` keys, the
    /// heaviest, each at most `max_key` bytes long (cut at a character boundary), each
    /// once, sorted by key.
    pub fn sanitize(&mut self, max_key: usize) {
        if self.entries.len() > K {
            self.entries.select_nth_unstable_by(K - 1, heavier);
            self.entries.truncate(K);
            self.lossy = true;
        }
        for e in &mut self.entries {
            let cut = crate::report::cut(&e.key, max_key).len();
            e.key.truncate(cut);
            e.error = e.error.min(e.count);
        }
        // Keys made equal by the cut (or sent twice) become one.
        self.entries.sort_by(|x, y| x.key.cmp(&y.key));
        self.entries.dedup_by(|b, a| {
            let same = a.key == b.key;
            if same {
                a.count = a.count.saturating_add(b.count);
                a.error = a.error.saturating_add(b.error);
                a.value.merge(&b.value);
            }
            same
        });
        self.index = HashTable::new();
        self.hashes = Vec::new();
        self.lightest = Vec::new();
    }

    /// Bytes this summary holds in memory, roughly.
    pub fn heap_bytes(&self) -> usize {
        self.entries
            .iter()
            .map(|e| e.key.capacity() + std::mem::size_of::<Counter<V>>())
            .sum::<usize>()
            + self.index.capacity() * 8
            + self.hashes.capacity() * 8
            + self.lightest.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn exact(keys: &[u8]) -> HashMap<String, u64> {
        let mut m = HashMap::new();
        for k in keys {
            *m.entry(k.to_string()).or_insert(0) += 1;
        }
        m
    }

    fn check<const K: usize>(
        s: &TopK<(), K>,
        truth: &HashMap<String, u64>,
    ) -> Result<(), TestCaseError> {
        let n: u64 = truth.values().sum();
        prop_assert_eq!(s.total(), n);
        prop_assert!(s.entries().len() <= K);
        for e in s.entries() {
            let t = truth.get(&e.key).copied().unwrap_or(0);
            prop_assert!(e.count >= t, "{} counted {} < true {}", e.key, e.count, t);
            prop_assert!(
                e.count - e.error <= t,
                "{}: {} - {} > {}",
                e.key,
                e.count,
                e.error,
                t
            );
            // Stated in README: within twice the mean share of a place.
            prop_assert!(
                e.error <= 2 * n / K as u64 + 1,
                "error {} for n {}",
                e.error,
                n
            );
        }
        for (k, t) in truth {
            if !s.entries().iter().any(|e| &e.key == k) {
                prop_assert!(
                    *t <= s.floor(),
                    "{k} ({t}) unmonitored above the floor {}",
                    s.floor()
                );
            }
        }
        Ok(())
    }

    fn zipfish() -> impl Strategy<Value = Vec<u8>> {
        // Small keys are frequent, large ones rare.
        prop::collection::vec(
            (0u8..8, 0u8..60).prop_map(|(a, b)| if b < 30 { a } else { b }),
            0..600,
        )
    }

    proptest! {
        #[test]
        fn one_stream_keeps_its_bounds(keys in zipfish()) {
            let mut s = TopK::<(), 16>::default();
            keys.iter().for_each(|k| s.add(&k.to_string(), &()));
            check(&s, &exact(&keys))?;
        }

        #[test]
        fn merged_parts_keep_their_bounds(parts in prop::collection::vec(zipfish(), 1..8)) {
            let mut merged = TopK::<(), 16>::default();
            let mut all = Vec::new();
            for p in &parts {
                let mut s = TopK::<(), 16>::default();
                p.iter().for_each(|k| s.add(&k.to_string(), &()));
                merged.merge(&s);
                all.extend_from_slice(p);
            }
            check(&merged, &exact(&all))?;
        }

        #[test]
        fn a_tree_of_merges_keeps_the_bounds(parts in prop::collection::vec(zipfish(), 2..8)) {
            let sketches: Vec<TopK<(), 12>> = parts.iter().map(|p| {
                let mut s = TopK::default();
                p.iter().for_each(|k| s.add(&k.to_string(), &()));
                s
            }).collect();
            let mut left = TopK::<(), 12>::default();
            let mut right = TopK::<(), 12>::default();
            for (i, s) in sketches.iter().enumerate() {
                if i % 2 == 0 { left.merge(s) } else { right.merge(s) }
            }
            left.merge(&right);
            check(&left, &exact(&parts.concat()))?;
        }

        #[test]
        fn adding_after_merging_keeps_the_bounds(parts in prop::collection::vec(zipfish(), 1..6)) {
            // A counting summary that takes merges between adds (its index is rebuilt).
            let mut s = TopK::<(), 10>::default();
            let mut all = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                if i % 2 == 0 {
                    p.iter().for_each(|k| s.add(&k.to_string(), &()));
                } else {
                    let mut other = TopK::<(), 10>::default();
                    p.iter().for_each(|k| other.add(&k.to_string(), &()));
                    s.merge(&other);
                }
                all.extend_from_slice(p);
            }
            check(&s, &exact(&all))?;
        }

        #[test]
        fn under_capacity_everything_is_exact(keys in prop::collection::vec(0u8..16, 0..300), split in 0usize..300) {
            let split = split.min(keys.len());
            let (mut a, mut b) = (TopK::<(), 16>::default(), TopK::<(), 16>::default());
            keys[..split].iter().for_each(|k| a.add(&k.to_string(), &()));
            keys[split..].iter().for_each(|k| b.add(&k.to_string(), &()));
            a.merge(&b);
            let truth = exact(&keys);
            prop_assert_eq!(a.entries().len(), truth.len());
            for e in a.entries() {
                prop_assert_eq!(e.error, 0);
                prop_assert_eq!(Some(&e.count), truth.get(&e.key));
            }
        }
    }

    #[test]
    fn merging_is_deterministic_whatever_the_order_of_equal_parts() {
        let mut a = TopK::<(), 2>::default();
        let mut b = TopK::<(), 2>::default();
        for k in ["x", "y", "z"] {
            a.add(k, &());
        }
        for k in ["z", "y", "x"] {
            b.add(k, &());
        }
        let (mut ab, mut ba) = (a.clone(), b.clone());
        ab.merge(&b);
        ba.merge(&a);
        assert_eq!(ab.sorted(), ba.sorted());
    }

    #[test]
    fn counts_saturate() {
        let mut a = TopK::<(), 2>::default();
        a.add("x", &());
        a.entries[0].count = u64::MAX;
        a.total = u64::MAX;
        let b = a.clone();
        a.merge(&b);
        assert_eq!(a.entries()[0].count, u64::MAX);
        assert_eq!(a.total(), u64::MAX);
    }
}
