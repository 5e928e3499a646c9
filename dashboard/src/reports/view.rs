//! A report over a range as JSON and CSV: what the API returns and the pages show.

use edgelog_record::report::{
    DEVICES, HTTP_VERSIONS, METHODS, PROTOCOLS, RESULT_TYPES, STATUS_CLASSES, Usage,
};
use serde::Serialize;

use super::Report;
use super::store::{Merged, Moment};

/// The table rows the pages and API show.
pub const TOP_OBJECTS: usize = 50;
pub const TOP_REFERRERS: usize = 25;

/// How the popular objects are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Requests,
    Bytes,
}

#[derive(Debug, Serialize)]
pub struct ReportView {
    pub distribution: String,
    pub report: &'static str,
    /// Where the figures start: the range's start, or the start of its first hour when
    /// the range reaches past the last hour (whole hours count then).
    pub from_ms: i64,
    pub to_ms: i64,
    /// Length of a timeline step: 60000 (a minute) or 3600000 (an hour).
    pub step_ms: i64,
    pub requests: u64,
    /// Summaries before this were dropped to stay within `dashboard.reports_max_bytes`:
    /// the figures are incomplete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped_before_ms: Option<i64>,
    #[serde(flatten)]
    pub body: Body,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Body {
    Objects {
        sort: &'static str,
        /// Any count shown may exceed the true count by at most its `requests_max_error`;
        /// an object not shown had at most `others_at_most` requests. `exact`: every
        /// count is.
        exact: bool,
        others_at_most: u64,
        objects: Vec<ObjectRow>,
    },
    Referrers {
        exact: bool,
        others_at_most: u64,
        referrers: Vec<ReferrerRow>,
    },
    Viewers {
        devices: Vec<Named>,
        browsers: Vec<Named>,
        operating_systems: Vec<Named>,
        countries: Vec<Named>,
        edge_locations: Vec<Named>,
    },
    Cache {
        result_types: Vec<Named>,
        status_classes: Vec<Named>,
        gets: u64,
        incomplete_gets: u64,
        /// Percent of GET requests that did not finish.
        incomplete_get_rate: f64,
        result_types_over_time: Timeline,
        status_classes_over_time: Timeline,
    },
    Usage {
        methods: Vec<Named>,
        protocols: Vec<Named>,
        http_versions: Vec<Named>,
        status_classes: Vec<Named>,
        methods_over_time: Timeline,
        protocols_over_time: Timeline,
        status_classes_over_time: Timeline,
    },
}

#[derive(Debug, Serialize)]
pub struct ObjectRow {
    pub object: String,
    pub requests: u64,
    pub requests_max_error: u64,
    pub hits: u64,
    pub misses: u64,
    /// Hits over hits and misses, percent; none without either.
    pub hit_rate: Option<f64>,
    pub errors_4xx: u64,
    pub errors_5xx: u64,
    pub bytes: u64,
    pub miss_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct ReferrerRow {
    pub referrer: String,
    pub requests: u64,
    pub requests_max_error: u64,
    /// Percent of all requests.
    pub share: f64,
}

/// A category's requests and bytes, and its share of the requests (percent).
#[derive(Debug, Serialize)]
pub struct Named {
    pub name: String,
    pub requests: u64,
    pub bytes: u64,
    pub share: f64,
}

/// Series over time: `requests[i]` and `bytes[i]` of each point belong to `names[i]`.
#[derive(Debug, Serialize)]
pub struct Timeline {
    pub names: Vec<&'static str>,
    pub points: Vec<TimelinePoint>,
}

#[derive(Debug, Serialize)]
pub struct TimelinePoint {
    pub start_ms: i64,
    pub requests: Vec<u64>,
    pub bytes: Vec<u64>,
}

fn share(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 * 100.0 / of as f64
    }
}

fn named<'a>(items: impl IntoIterator<Item = (&'a str, Usage)>, total: u64) -> Vec<Named> {
    let mut v: Vec<Named> = items
        .into_iter()
        .filter(|(_, u)| u.requests > 0)
        .map(|(n, u)| Named {
            name: n.to_owned(),
            requests: u.requests,
            bytes: u.bytes,
            share: share(u.requests, total),
        })
        .collect();
    v.sort_by(|a, b| {
        b.requests
            .cmp(&a.requests)
            .then_with(|| a.name.cmp(&b.name))
    });
    v
}

fn fixed<const N: usize>(names: &[&'static str; N], values: &[Usage; N], total: u64) -> Vec<Named> {
    named(names.iter().copied().zip(values.iter().copied()), total)
}

/// The series of `names` that are not zero throughout.
fn timeline<const N: usize>(
    names: &[&'static str; N],
    points: &[(i64, Moment)],
    get: fn(&Moment) -> &[Usage; N],
) -> Timeline {
    let used: Vec<usize> = (0..N)
        .filter(|i| points.iter().any(|(_, m)| get(m)[*i].requests > 0))
        .collect();
    Timeline {
        names: used.iter().map(|i| names[*i]).collect(),
        points: points
            .iter()
            .map(|(t, m)| TimelinePoint {
                start_ms: *t,
                requests: used.iter().map(|i| get(m)[*i].requests).collect(),
                bytes: used.iter().map(|i| get(m)[*i].bytes).collect(),
            })
            .collect(),
    }
}

pub fn build(
    report: Report,
    distribution: &str,
    m: &Merged,
    sort: Sort,
    (_, to_ms): (i64, i64),
) -> ReportView {
    // Where counting started: the window's start, or its hour's when whole hours count.
    let from_ms = m.from_ms;
    let r = &m.report;
    let total = r.requests();
    let body = match report {
        Report::PopularObjects => {
            let mut all = r.objects.sorted();
            if sort == Sort::Bytes {
                all.sort_by(|a, b| {
                    b.value
                        .bytes
                        .cmp(&a.value.bytes)
                        .then_with(|| a.key.cmp(&b.key))
                });
            }
            // Not shown: a monitored object lighter than the last row, or one not
            // monitored (at most the floor). By bytes, any monitored one may be left out.
            let others = match (sort, all.get(TOP_OBJECTS)) {
                (_, None) => r.objects.floor(),
                (Sort::Requests, Some(_)) => all[TOP_OBJECTS - 1].count.max(r.objects.floor()),
                (Sort::Bytes, Some(_)) => all.iter().map(|c| c.count).max().unwrap_or(0),
            };
            Body::Objects {
                sort: if sort == Sort::Bytes {
                    "bytes"
                } else {
                    "requests"
                },
                exact: r.objects.floor() == 0,
                others_at_most: others,
                objects: all
                    .into_iter()
                    .take(TOP_OBJECTS)
                    .map(|c| {
                        let v = &c.value;
                        let cacheable = v.hits.saturating_add(v.misses);
                        ObjectRow {
                            object: c.key.clone(),
                            requests: c.count,
                            requests_max_error: c.error,
                            hits: v.hits,
                            misses: v.misses,
                            hit_rate: (cacheable > 0).then(|| share(v.hits, cacheable)),
                            errors_4xx: v.errors_4xx,
                            errors_5xx: v.errors_5xx,
                            bytes: v.bytes,
                            miss_bytes: v.miss_bytes,
                        }
                    })
                    .collect(),
            }
        }
        Report::TopReferrers => {
            let all = r.referrers.sorted();
            let others = match all.get(TOP_REFERRERS) {
                None => r.referrers.floor(),
                Some(_) => all[TOP_REFERRERS - 1].count.max(r.referrers.floor()),
            };
            Body::Referrers {
                exact: r.referrers.floor() == 0,
                others_at_most: others,
                referrers: all
                    .into_iter()
                    .take(TOP_REFERRERS)
                    .map(|c| ReferrerRow {
                        referrer: c.key.clone(),
                        requests: c.count,
                        requests_max_error: c.error,
                        share: share(c.count, total),
                    })
                    .collect(),
            }
        }
        Report::Viewers => Body::Viewers {
            devices: fixed(&DEVICES, &r.devices, total),
            browsers: named(r.browsers.sorted(), total),
            operating_systems: named(r.operating_systems.sorted(), total),
            countries: named(r.countries.sorted(), total),
            edge_locations: named(r.locations.sorted(), total),
        },
        Report::CacheStatistics => Body::Cache {
            result_types: fixed(&RESULT_TYPES, &r.result_types, total),
            status_classes: fixed(&STATUS_CLASSES, &r.status_classes, total),
            gets: r.gets,
            incomplete_gets: r.incomplete_gets,
            incomplete_get_rate: share(r.incomplete_gets, r.gets),
            result_types_over_time: timeline(&RESULT_TYPES, &m.timeline, |m| &m.result_types),
            status_classes_over_time: timeline(&STATUS_CLASSES, &m.timeline, |m| &m.status_classes),
        },
        Report::Usage => Body::Usage {
            methods: fixed(&METHODS, &r.methods, total),
            protocols: fixed(&PROTOCOLS, &r.protocols, total),
            http_versions: fixed(&HTTP_VERSIONS, &r.http_versions, total),
            status_classes: fixed(&STATUS_CLASSES, &r.status_classes, total),
            methods_over_time: timeline(&METHODS, &m.timeline, |m| &m.methods),
            protocols_over_time: timeline(&PROTOCOLS, &m.timeline, |m| &m.protocols),
            status_classes_over_time: timeline(&STATUS_CLASSES, &m.timeline, |m| &m.status_classes),
        },
    };
    ReportView {
        distribution: distribution.to_owned(),
        report: report.slug(),
        from_ms,
        to_ms,
        step_ms: m.step_ms,
        requests: total,
        dropped_before_ms: m.dropped_before,
        body,
    }
}

/// A CSV field: quoted, and a text a spreadsheet would run as a formula (`=`, `+`, `@`,
/// or `-` followed by more) prefixed with `'`.
fn field(s: &str) -> String {
    let risky = s.starts_with(['=', '+', '@', '\t', '\r']) || (s.starts_with('-') && s.len() > 1);
    let s = if risky { format!("'{s}") } else { s.to_owned() };
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn named_rows(out: &mut String, table: &str, rows: &[Named]) {
    for n in rows {
        out.push_str(&format!(
            "{table},,{},{},{},{:.3}\n",
            field(&n.name),
            n.requests,
            n.bytes,
            n.share
        ));
    }
}

fn timeline_rows(out: &mut String, table: &str, t: &Timeline) {
    for p in &t.points {
        for (i, name) in t.names.iter().enumerate() {
            out.push_str(&format!(
                "{table},{},{},{},{},\n",
                p.start_ms,
                field(name),
                p.requests[i],
                p.bytes[i]
            ));
        }
    }
}

/// The report as CSV: objects and referrers a row each; the others as
/// `table,start_ms,name,requests,bytes,share`, totals without a start, series over time
/// with one.
pub fn csv(v: &ReportView) -> String {
    let mut out = String::new();
    match &v.body {
        Body::Objects { objects, .. } => {
            out.push_str("object,requests,requests_max_error,hits,misses,hit_rate,errors_4xx,errors_5xx,bytes,miss_bytes\n");
            for o in objects {
                out.push_str(&format!(
                    "{},{},{},{},{},{},{},{},{},{}\n",
                    field(&o.object),
                    o.requests,
                    o.requests_max_error,
                    o.hits,
                    o.misses,
                    o.hit_rate.map_or(String::new(), |r| format!("{r:.3}")),
                    o.errors_4xx,
                    o.errors_5xx,
                    o.bytes,
                    o.miss_bytes
                ));
            }
        }
        Body::Referrers { referrers, .. } => {
            out.push_str("referrer,requests,requests_max_error,share\n");
            for r in referrers {
                out.push_str(&format!(
                    "{},{},{},{:.3}\n",
                    field(&r.referrer),
                    r.requests,
                    r.requests_max_error,
                    r.share
                ));
            }
        }
        Body::Viewers {
            devices,
            browsers,
            operating_systems,
            countries,
            edge_locations,
        } => {
            out.push_str("table,start_ms,name,requests,bytes,share\n");
            named_rows(&mut out, "devices", devices);
            named_rows(&mut out, "browsers", browsers);
            named_rows(&mut out, "operating_systems", operating_systems);
            named_rows(&mut out, "countries", countries);
            named_rows(&mut out, "edge_locations", edge_locations);
        }
        Body::Cache {
            result_types,
            status_classes,
            gets,
            incomplete_gets,
            result_types_over_time,
            status_classes_over_time,
            ..
        } => {
            out.push_str("table,start_ms,name,requests,bytes,share\n");
            named_rows(&mut out, "result_types", result_types);
            named_rows(&mut out, "status_classes", status_classes);
            out.push_str(&format!("gets,,\"GET\",{gets},,\n"));
            out.push_str(&format!("gets,,\"incomplete\",{incomplete_gets},,\n"));
            timeline_rows(&mut out, "result_types", result_types_over_time);
            timeline_rows(&mut out, "status_classes", status_classes_over_time);
        }
        Body::Usage {
            methods,
            protocols,
            http_versions,
            status_classes,
            methods_over_time,
            protocols_over_time,
            status_classes_over_time,
        } => {
            out.push_str("table,start_ms,name,requests,bytes,share\n");
            named_rows(&mut out, "methods", methods);
            named_rows(&mut out, "protocols", protocols);
            named_rows(&mut out, "http_versions", http_versions);
            named_rows(&mut out, "status_classes", status_classes);
            timeline_rows(&mut out, "methods", methods_over_time);
            timeline_rows(&mut out, "protocols", protocols_over_time);
            timeline_rows(&mut out, "status_classes", status_classes_over_time);
        }
    }
    out
}
