//! CloudFront's reports as mergeable per-minute summaries: popular objects and top
//! referrers in Space-Saving sketches, viewers, cache statistics and usage in small exact
//! tallies. Computed by each collector from every record, like the minute aggregates, and
//! summed wherever they meet.
//!
//! Size: a summary holds at most [`OBJECTS`] objects of at most [`MAX_OBJECT_BYTES`],
//! [`REFERRERS`] referrer hosts of at most [`MAX_HOST_BYTES`], and bounded tallies, so
//! its encoding (postcard, base64 in the JSON of the metrics topic) stays under
//! [`MAX_ENCODED_BYTES`] whatever the records hold (tested with the worst case).

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};
use serde::{Deserialize, Serialize};

use crate::fields::Record;
use crate::topk::{Payload, TopK};

/// Objects a summary monitors (the pages show the top 50).
pub const OBJECTS: usize = 100;
/// Referrer hosts a summary monitors (the pages show the top 25).
pub const REFERRERS: usize = 64;
/// Longer object paths are cut (at a character boundary) to this many bytes.
pub const MAX_OBJECT_BYTES: usize = 160;
/// Longer referrer hosts are cut to this many bytes.
pub const MAX_HOST_BYTES: usize = 100;
/// Longer names in a tally (browser, country, edge location) are cut to this.
pub const MAX_NAME_BYTES: usize = 32;
/// The most a summary takes on the metrics topic, as base64 text.
pub const MAX_ENCODED_BYTES: usize = 64 * 1024;

/// Distinct names a tally keeps before counting the rest as [`OTHER`].
pub const BROWSERS: usize = 48;
pub const SYSTEMS: usize = 48;
pub const COUNTRIES: usize = 96;
pub const LOCATIONS: usize = 64;

/// Where values beyond a tally's size, or outside a fixed list, are counted.
pub const OTHER: &str = "(other)";
/// A missing value, as in the standard logs.
pub const NONE: &str = "-";

pub const DEVICES: [&str; 5] = ["desktop", "mobile", "tablet", "bot", "other"];
pub const RESULT_TYPES: [&str; 8] = [
    "Hit",
    "RefreshHit",
    "Miss",
    "LimitExceeded",
    "CapacityExceeded",
    "Error",
    "Redirect",
    OTHER,
];
pub const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", OTHER];
pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", OTHER,
];
pub const PROTOCOLS: [&str; 5] = ["http", "https", "ws", "wss", OTHER];
pub const HTTP_VERSIONS: [&str; 5] = ["HTTP/1.0", "HTTP/1.1", "HTTP/2.0", "HTTP/3.0", OTHER];

/// Requests and the bytes served to them (sc-bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub requests: u64,
    pub bytes: u64,
}

impl Usage {
    fn add(&mut self, bytes: u64) {
        self.requests = self.requests.saturating_add(1);
        self.bytes = self.bytes.saturating_add(bytes);
    }

    pub fn merge(&mut self, o: &Usage) {
        self.requests = self.requests.saturating_add(o.requests);
        self.bytes = self.bytes.saturating_add(o.bytes);
    }
}

/// What the popular-objects report shows of an object besides its requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectStats {
    pub hits: u64,
    pub misses: u64,
    pub errors_4xx: u64,
    pub errors_5xx: u64,
    pub bytes: u64,
    pub miss_bytes: u64,
}

impl Payload for ObjectStats {
    fn merge(&mut self, o: &Self) {
        self.hits = self.hits.saturating_add(o.hits);
        self.misses = self.misses.saturating_add(o.misses);
        self.errors_4xx = self.errors_4xx.saturating_add(o.errors_4xx);
        self.errors_5xx = self.errors_5xx.saturating_add(o.errors_5xx);
        self.bytes = self.bytes.saturating_add(o.bytes);
        self.miss_bytes = self.miss_bytes.saturating_add(o.miss_bytes);
    }
}

/// Exact requests and bytes per name: while counting, up to `4 N` names (later ones go to
/// [`OTHER`]); compacted and merged, the `N` heaviest, the rest folded into [`OTHER`]. So
/// arrival order decides nothing unless a minute brings more than `4 N` names.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tally<const N: usize>(
    Vec<(String, Usage)>,
    /// Positions by name hash, for counting; built on first use, not sent.
    #[serde(skip)]
    HashTable<u32>,
    #[serde(skip)] DefaultHashBuilder,
);

impl<const N: usize> PartialEq for Tally<N> {
    fn eq(&self, o: &Self) -> bool {
        self.0 == o.0
    }
}

impl<const N: usize> Eq for Tally<N> {}

impl<const N: usize> Tally<N> {
    fn slot(&mut self, name: &str) -> &mut Usage {
        let name = cut(name, MAX_NAME_BYTES);
        let Tally(names, index, hasher) = self;
        if index.len() != names.len() {
            index.clear();
            for (i, (n, _)) in names.iter().enumerate() {
                index.insert_unique(hasher.hash_one(n.as_str()), i as u32, |&j| {
                    hasher.hash_one(names[j as usize].0.as_str())
                });
            }
        }
        let h = hasher.hash_one(name);
        let i = match index.find(h, |&i| names[i as usize].0 == name) {
            Some(&i) => i as usize,
            None if names.len() < 4 * N || name == OTHER => {
                names.push((name.to_owned(), Usage::default()));
                index.insert_unique(h, (names.len() - 1) as u32, |&j| {
                    hasher.hash_one(names[j as usize].0.as_str())
                });
                names.len() - 1
            }
            None => return self.slot(OTHER),
        };
        &mut self.0[i].1
    }

    fn add(&mut self, name: &str, bytes: u64) {
        self.slot(name).add(bytes);
    }

    pub fn merge(&mut self, o: &Tally<N>) {
        for (name, u) in &o.0 {
            self.slot(name).merge(u);
        }
        self.fold();
    }

    /// Keeps the `N` heaviest names (ties by name), the others' usage in [`OTHER`].
    fn fold(&mut self) {
        let named = self.0.iter().filter(|(n, _)| n != OTHER).count();
        if named <= N {
            return;
        }
        let mut all = std::mem::take(&mut self.0);
        all.sort_by(|a, b| {
            (a.0 == OTHER)
                .cmp(&(b.0 == OTHER))
                .then(b.1.requests.cmp(&a.1.requests))
                .then_with(|| a.0.cmp(&b.0))
        });
        let mut other = Usage::default();
        for (_, u) in all.drain(N..) {
            other.merge(&u);
        }
        all.push((OTHER.to_owned(), other));
        self.0 = all;
        self.1.clear();
    }

    /// Names with their usage, most requests first (ties by name).
    pub fn sorted(&self) -> Vec<(&str, Usage)> {
        let mut v: Vec<(&str, Usage)> = self.0.iter().map(|(n, u)| (n.as_str(), *u)).collect();
        v.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then_with(|| a.0.cmp(b.0)));
        v
    }

    /// Brings a tally from elsewhere within this one's shape (names cut, at most `N`
    /// plus [`OTHER`], each once).
    fn sanitize(&mut self) {
        let all = std::mem::take(&mut self.0);
        self.1.clear();
        for (name, u) in &all {
            self.slot(name).merge(u);
        }
        self.fold();
    }

    /// Keeps the heaviest names and drops the lookup index (a tally kept only to be read
    /// and merged).
    fn compact(&mut self) {
        self.fold();
        self.0.shrink_to_fit();
        self.1 = HashTable::new();
    }

    fn heap_bytes(&self) -> usize {
        self.0.iter().map(|(n, _)| n.capacity() + 40).sum::<usize>() + self.1.capacity() * 8
    }
}

/// What a user agent says of the viewer (see the collector's classifier).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Viewer<'a> {
    /// Index in [`DEVICES`].
    pub device: usize,
    pub browser: &'a str,
    pub os: &'a str,
}

/// One distribution's minute of reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinuteReport {
    pub objects: TopK<ObjectStats, OBJECTS>,
    pub referrers: TopK<(), REFERRERS>,
    pub devices: [Usage; 5],
    pub browsers: Tally<BROWSERS>,
    pub operating_systems: Tally<SYSTEMS>,
    pub countries: Tally<COUNTRIES>,
    pub locations: Tally<LOCATIONS>,
    pub result_types: [Usage; 8],
    pub status_classes: [Usage; 6],
    pub methods: [Usage; 8],
    pub protocols: [Usage; 5],
    pub http_versions: [Usage; 5],
    /// GET requests, and those of them that did not finish (see [`incomplete`]).
    pub gets: u64,
    pub incomplete_gets: u64,
}

// Inlined with each constant list, so the comparisons are too.
#[inline(always)]
fn index_of<const N: usize>(list: &[&str; N], v: Option<&str>) -> usize {
    v.and_then(|v| list.iter().position(|x| *x == v))
        .unwrap_or(N - 1)
}

/// Index in [`STATUS_CLASSES`] of a status (none, 0 or past 599: the last).
pub fn status_class(status: Option<u16>) -> usize {
    match status {
        Some(s @ 100..=599) => usize::from(s / 100 - 1),
        _ => STATUS_CLASSES.len() - 1,
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The host of a Referer, as the README's DuckDB expression takes it: after a leading
/// `scheme://`, before the first `/`, `?` or `#`, after the first `@`, before a `:` (an
/// IPv6 host keeps its brackets); `-` when there is none (a direct request).
pub fn referrer_host(referer: Option<&str>) -> &str {
    let Some(r) = referer.filter(|r| !r.is_empty() && *r != NONE) else {
        return NONE;
    };
    let b = r.as_bytes();
    let stop = |c: &u8| matches!(c, b':' | b'/' | b'?' | b'#');
    let start = match b.iter().position(stop) {
        Some(p) if p > 0 && b[p] == b':' && b[p + 1..].starts_with(b"//") => p + 3,
        _ => 0,
    };
    // ASCII positions: every slice below is at a character boundary.
    let rest = &r[start..];
    let end = rest
        .bytes()
        .position(|c| matches!(c, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority.split_once('@').map_or(authority, |(_, h)| h);
    let host = match (host.starts_with('['), host.find(']')) {
        (true, Some(e)) => &host[..=e],
        _ => host.split_once(':').map_or(host, |(h, _)| h),
    };
    if host.is_empty() { NONE } else { host }
}

/// Whether a GET response ended early: the viewer went away (status 0), or fewer bytes
/// were sent than the body holds (its range, else its Content-Length). sc-bytes counts
/// headers too, so a complete body never falls short.
pub fn incomplete(r: &Record) -> bool {
    if r.sc_status == Some(0) {
        return true;
    }
    let want = match (r.sc_range_start, r.sc_range_end) {
        (Some(s), Some(e)) if e >= s => {
            Some(u64::try_from(i128::from(e) - i128::from(s) + 1).unwrap_or(u64::MAX))
        }
        _ => r.sc_content_len,
    };
    matches!((r.sc_bytes, want), (Some(sent), Some(want)) if sent < want)
}

impl MinuteReport {
    /// Counts one record.
    pub fn add(&mut self, r: &Record, viewer: &Viewer<'_>) {
        let bytes = r.sc_bytes.unwrap_or(0);
        let result = index_of(&RESULT_TYPES, r.x_edge_result_type.as_deref());
        let class = status_class(r.sc_status);
        let stats = ObjectStats {
            hits: u64::from(result <= 1),
            misses: u64::from(result == 2),
            errors_4xx: u64::from(class == 3),
            errors_5xx: u64::from(class == 4),
            bytes,
            miss_bytes: if result == 2 { bytes } else { 0 },
        };
        let path = r.cs_uri_stem.as_deref().unwrap_or(NONE);
        self.objects.add(cut(path, MAX_OBJECT_BYTES), &stats);
        let host = referrer_host(r.cs_referer.as_deref());
        self.referrers.add(cut(host, MAX_HOST_BYTES), &());
        self.devices[viewer.device.min(DEVICES.len() - 1)].add(bytes);
        self.browsers.add(viewer.browser, bytes);
        self.operating_systems.add(viewer.os, bytes);
        self.countries
            .add(r.c_country.as_deref().unwrap_or(NONE), bytes);
        self.locations
            .add(r.x_edge_location.as_deref().unwrap_or(NONE), bytes);
        self.result_types[result].add(bytes);
        self.status_classes[class].add(bytes);
        let method = index_of(&METHODS, r.cs_method.as_deref());
        self.methods[method].add(bytes);
        self.protocols[index_of(&PROTOCOLS, r.cs_protocol.as_deref())].add(bytes);
        self.http_versions[index_of(&HTTP_VERSIONS, r.cs_protocol_version.as_deref())].add(bytes);
        if method == 0 {
            self.gets = self.gets.saturating_add(1);
            if incomplete(r) {
                self.incomplete_gets = self.incomplete_gets.saturating_add(1);
            }
        }
    }

    /// Adds another summary of the same distribution (any minutes).
    pub fn merge(&mut self, o: &MinuteReport) {
        self.objects.merge(&o.objects);
        self.referrers.merge(&o.referrers);
        merge_all(&mut self.devices, &o.devices);
        self.browsers.merge(&o.browsers);
        self.operating_systems.merge(&o.operating_systems);
        self.countries.merge(&o.countries);
        self.locations.merge(&o.locations);
        merge_all(&mut self.result_types, &o.result_types);
        merge_all(&mut self.status_classes, &o.status_classes);
        merge_all(&mut self.methods, &o.methods);
        merge_all(&mut self.protocols, &o.protocols);
        merge_all(&mut self.http_versions, &o.http_versions);
        self.gets = self.gets.saturating_add(o.gets);
        self.incomplete_gets = self.incomplete_gets.saturating_add(o.incomplete_gets);
    }

    /// Requests counted.
    pub fn requests(&self) -> u64 {
        self.objects.total()
    }

    /// Brings a summary read from the topic within the bounds this build keeps.
    pub fn sanitize(&mut self) {
        self.objects.sanitize(MAX_OBJECT_BYTES);
        self.referrers.sanitize(MAX_HOST_BYTES);
        self.browsers.sanitize();
        self.operating_systems.sanitize();
        self.countries.sanitize();
        self.locations.sanitize();
        self.incomplete_gets = self.incomplete_gets.min(self.gets);
    }

    /// Drops what only counting needs (lookup indexes), for a summary kept to be read.
    pub fn compact(&mut self) {
        self.objects.compact();
        self.referrers.compact();
        self.browsers.compact();
        self.operating_systems.compact();
        self.countries.compact();
        self.locations.compact();
    }

    /// Bytes held in memory, roughly (what the dashboard's bound counts).
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of::<MinuteReport>()
            + self.objects.heap_bytes()
            + self.referrers.heap_bytes()
            + self.browsers.heap_bytes()
            + self.operating_systems.heap_bytes()
            + self.countries.heap_bytes()
            + self.locations.heap_bytes()
    }
}

fn merge_all<const N: usize>(a: &mut [Usage; N], b: &[Usage; N]) {
    for (x, y) in a.iter_mut().zip(b) {
        x.merge(y);
    }
}

/// The summary on the metrics topic: base64 of a version byte and postcard.
pub mod wire {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::MinuteReport;

    const VERSION: u8 = 1;

    pub fn encode(r: &MinuteReport) -> String {
        let mut bytes = vec![VERSION];
        // Writing to a Vec cannot fail; an empty summary is the fallback all the same.
        bytes.extend(postcard::to_allocvec(r).unwrap_or_default());
        STANDARD.encode(bytes)
    }

    /// `None` for anything that is not a summary of a version this build reads.
    pub fn decode(text: &str) -> Option<MinuteReport> {
        let bytes = STANDARD.decode(text).ok()?;
        let (&version, body) = bytes.split_first()?;
        if version != VERSION {
            return None;
        }
        let mut r: MinuteReport = postcard::from_bytes(body).ok()?;
        r.sanitize();
        Some(r)
    }

    pub fn serialize<S: Serializer>(
        r: &Option<Box<MinuteReport>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match r {
            Some(r) => s.serialize_str(&encode(r)),
            None => s.serialize_none(),
        }
    }

    /// A summary that cannot be read is left out: the minute's aggregate still counts.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Box<MinuteReport>>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        Ok(text.and_then(|t| decode(&t)).map(Box::new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &str, referer: &str, status: u16, result: &str, bytes: u64) -> Record {
        Record {
            timestamp_ms: 0,
            distribution_id: "E1".into(),
            cs_uri_stem: Some(path.into()),
            cs_referer: Some(referer.into()),
            sc_status: Some(status),
            x_edge_result_type: Some(result.into()),
            sc_bytes: Some(bytes),
            cs_method: Some("GET".into()),
            ..Record::default()
        }
    }

    const DESKTOP: Viewer<'static> = Viewer {
        device: 0,
        browser: "Chrome",
        os: "Linux",
    };

    #[test]
    fn referrer_hosts() {
        for (r, want) in [
            (None, "-"),
            (Some("-"), "-"),
            (Some(""), "-"),
            (Some("https://www.example.com/a?b"), "www.example.com"),
            (Some("http://user:pw@example.org:8080/x"), "example.org"),
            (Some("https://[2001:db8::1]:443/"), "[2001:db8::1]"),
            (Some("https://[2001:db8::1/"), "[2001"),
            (Some("https://a@b@c.com/"), "b@c.com"),
            (Some("example.net/p?u=http://x.org/"), "example.net"),
            (Some("://x.org/"), "-"),
            (Some("ftp:/x"), "ftp"),
            (Some("é.example/ü"), "é.example"),
            (Some("example.net/path"), "example.net"),
            (Some("https://"), "-"),
            (
                Some("android-app://com.google.android.gm/"),
                "com.google.android.gm",
            ),
        ] {
            assert_eq!(referrer_host(r), want, "{r:?}");
        }
    }

    #[test]
    fn incomplete_gets() {
        let mut r = record("/a", "-", 200, "Hit", 100);
        r.sc_content_len = Some(1000);
        assert!(incomplete(&r));
        r.sc_bytes = Some(1300);
        assert!(!incomplete(&r));
        r.sc_range_start = Some(0);
        r.sc_range_end = Some(9_999);
        assert!(incomplete(&r), "a range of 10,000 bytes, 1,300 sent");
        r.sc_range_end = Some(i64::MAX);
        r.sc_range_start = Some(i64::MIN);
        assert!(incomplete(&r), "absurd range");
        r.sc_status = Some(0);
        r.sc_range_start = None;
        assert!(incomplete(&r));
        r.sc_status = Some(200);
        r.sc_content_len = None;
        assert!(!incomplete(&r), "nothing to compare with");
    }

    #[test]
    fn counts_and_merges() {
        let mut a = MinuteReport::default();
        a.add(&record("/a", "https://x.com/", 200, "Hit", 10), &DESKTOP);
        a.add(&record("/a", "-", 503, "Miss", 5), &DESKTOP);
        let mut b = MinuteReport::default();
        b.add(&record("/b", "https://x.com/p", 404, "Error", 1), &DESKTOP);
        a.merge(&b);
        assert_eq!(a.requests(), 3);
        let top = a.objects.sorted();
        assert_eq!(top[0].key, "/a");
        assert_eq!(top[0].count, 2);
        assert_eq!(
            top[0].value,
            ObjectStats {
                hits: 1,
                misses: 1,
                errors_4xx: 0,
                errors_5xx: 1,
                bytes: 15,
                miss_bytes: 5
            }
        );
        assert_eq!(a.referrers.sorted()[0].key, "x.com");
        assert_eq!(
            a.result_types[0],
            Usage {
                requests: 1,
                bytes: 10
            }
        );
        assert_eq!(a.status_classes[4].requests, 1);
        assert_eq!(a.methods[0].requests, 3);
        assert_eq!(a.devices[0].requests, 3);
        assert_eq!(
            a.browsers.sorted(),
            [(
                "Chrome",
                Usage {
                    requests: 3,
                    bytes: 16
                }
            )]
        );
        assert_eq!(a.countries.sorted()[0].0, "-");
    }

    #[test]
    fn names_that_came_first_do_not_push_out_heavier_ones() {
        let mut r = MinuteReport::default();
        for i in 0..COUNTRIES {
            let mut rec = record("/a", "-", 200, "Hit", 1);
            rec.c_country = Some(format!("J{i:02}"));
            r.add(&rec, &DESKTOP);
        }
        for _ in 0..1000 {
            let mut rec = record("/a", "-", 200, "Hit", 1);
            rec.c_country = Some("US".into());
            r.add(&rec, &DESKTOP);
        }
        r.compact();
        let top = r.countries.sorted();
        assert_eq!(
            top[0],
            (
                "US",
                Usage {
                    requests: 1000,
                    bytes: 1000
                }
            )
        );
        assert_eq!(top.len(), COUNTRIES + 1, "the heaviest and (other)");
        assert!(top.iter().any(|(n, u)| *n == OTHER && u.requests == 1));
        // Merged the other way round, the same.
        let mut m = MinuteReport::default();
        m.merge(&r);
        assert_eq!(m.countries.sorted(), top);
    }

    #[test]
    fn the_topic_round_trips_and_refuses_garbage() {
        let mut a = MinuteReport::default();
        a.add(&record("/a", "https://x.com/", 200, "Hit", 10), &DESKTOP);
        assert_eq!(wire::decode(&wire::encode(&a)), Some(a));
        for bad in ["", "AA==", "not base64!", "Ag==", "AQ=="] {
            assert_eq!(wire::decode(bad), None, "{bad}");
        }
    }

    /// Every bound at once: the longest keys, every place taken, every count at its
    /// largest (varints at their longest).
    #[test]
    fn the_worst_summary_stays_under_its_bound() {
        let mut r = MinuteReport::default();
        let long = |i: usize, n: usize| format!("{i:05}{}", "é".repeat(n));
        for i in 0..OBJECTS * 2 {
            let mut rec = record(
                &long(i, 200),
                &format!("https://{}/", long(i, 100)),
                503,
                "Miss",
                u64::MAX,
            );
            rec.c_country = Some(long(i, 20));
            rec.x_edge_location = Some(long(i, 20));
            let b = long(i, 20);
            r.add(
                &rec,
                &Viewer {
                    device: 9,
                    browser: &b,
                    os: &b,
                },
            );
        }
        // Every count to u64::MAX (varints at their longest), through merges that saturate.
        for _ in 0..70 {
            let c = r.clone();
            r.merge(&c);
        }
        assert_eq!(r.gets, u64::MAX);
        r.compact();
        assert_eq!(r.objects.entries().len(), OBJECTS);
        assert_eq!(r.referrers.entries().len(), REFERRERS);
        let encoded = wire::encode(&r);
        assert!(
            encoded.len() <= MAX_ENCODED_BYTES,
            "{} bytes",
            encoded.len()
        );
        assert!(wire::decode(&encoded).is_some());
        println!("worst summary: {} bytes as base64", encoded.len());
    }
}
