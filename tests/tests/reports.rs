//! CloudFront's reports on the dashboard hold against the records themselves: DuckDB over
//! the standard logs of a million generated records (Zipf objects and referrers), and the
//! records two collectors were sent, read back through a Kafka metrics topic (tansu).
//! Categories agree exactly; top lists within the bounds the API states.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use edgelog_collector::viewer::classify_agent;
use edgelog_record::Record;
use edgelog_record::report::{self, HTTP_VERSIONS, METHODS, PROTOCOLS, RESULT_TYPES};
use edgelog_tests::servers::{Tansu, python_json};
use edgelog_tests::{
    ServerConfig, TOKEN, TestServer, http_get, run_edge, send_generated_seeded, wait_for, within,
};
use serde_json::Value;

/// Requests and bytes per name, per table (devices, countries, result_types...).
type Tallies = BTreeMap<String, BTreeMap<String, (u64, u64)>>;

/// What one distribution's reports must show, computed from the records.
#[derive(Debug, Default)]
struct Truth {
    requests: u64,
    /// requests, hits, misses, 4xx, 5xx, bytes, bytes from misses
    objects: HashMap<String, [u64; 7]>,
    referrers: HashMap<String, u64>,
    tallies: Tallies,
    gets: u64,
    incomplete_gets: u64,
}

fn listed(list: &[&str], v: Option<&str>) -> String {
    v.filter(|v| list.contains(v))
        .unwrap_or(report::OTHER)
        .to_owned()
}

fn class(status: Option<u16>) -> String {
    match status {
        Some(s @ 100..=599) => format!("{}xx", s / 100),
        _ => report::OTHER.to_owned(),
    }
}

impl Truth {
    fn tally(&mut self, table: &str, name: &str, bytes: u64) {
        let t = self
            .tallies
            .entry(table.to_owned())
            .or_default()
            .entry(name.to_owned())
            .or_default();
        t.0 += 1;
        t.1 += bytes;
    }

    /// Counts one record the way the README's DuckDB queries do.
    fn add(&mut self, r: &Record) {
        let b = r.sc_bytes.unwrap_or(0);
        self.requests += 1;
        let result = r.x_edge_result_type.as_deref();
        let status = r.sc_status.unwrap_or(0);
        let o = self
            .objects
            .entry(r.cs_uri_stem.clone().unwrap_or_else(|| "-".into()))
            .or_default();
        let miss = result == Some("Miss");
        for (i, yes) in [
            true,
            matches!(result, Some("Hit" | "RefreshHit")),
            miss,
            (400..500).contains(&status),
            (500..600).contains(&status),
        ]
        .into_iter()
        .enumerate()
        {
            o[i] += u64::from(yes);
        }
        o[5] += b;
        o[6] += if miss { b } else { 0 };
        *self
            .referrers
            .entry(report::referrer_host(r.cs_referer.as_deref()).to_owned())
            .or_default() += 1;
        let (device, browser, os) = classify_agent(r.cs_user_agent.as_deref());
        self.tally("devices", device, b);
        self.tally("browsers", &browser, b);
        self.tally("operating_systems", &os, b);
        self.tally("countries", r.c_country.as_deref().unwrap_or("-"), b);
        self.tally(
            "edge_locations",
            r.x_edge_location.as_deref().unwrap_or("-"),
            b,
        );
        self.tally("result_types", &listed(&RESULT_TYPES, result), b);
        self.tally("status_classes", &class(r.sc_status), b);
        self.tally("methods", &listed(&METHODS, r.cs_method.as_deref()), b);
        self.tally(
            "protocols",
            &listed(&PROTOCOLS, r.cs_protocol.as_deref()),
            b,
        );
        self.tally(
            "http_versions",
            &listed(&HTTP_VERSIONS, r.cs_protocol_version.as_deref()),
            b,
        );
        if r.cs_method.as_deref() == Some("GET") {
            self.gets += 1;
            self.incomplete_gets += u64::from(report::incomplete(r));
        }
    }
}

/// Reads a dashboard path (live, or from what was read before the demo stopped).
type Get<'a> = &'a dyn Fn(&str) -> anyhow::Result<String>;

/// The paths [`check`] reads for one distribution.
fn paths(id: &str, range: &str) -> Vec<String> {
    let mut p: Vec<String> = [
        "popular-objects",
        "top-referrers",
        "viewers",
        "cache-statistics",
        "usage",
    ]
    .iter()
    .map(|r| format!("/api/distributions/{id}/reports/{r}?range={range}"))
    .collect();
    p.push(format!(
        "/api/distributions/{id}/reports/popular-objects?range={range}&format=csv"
    ));
    p
}

/// One report of one distribution from the dashboard's API.
fn report_json(get: Get<'_>, id: &str, report: &str, range: &str) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&get(&format!(
        "/api/distributions/{id}/reports/{report}?range={range}"
    ))?)?)
}

fn live(base: &str) -> impl Fn(&str) -> anyhow::Result<String> + '_ {
    move |path| http_get(&format!("{base}{path}"))
}

fn tally_of(list: &Value) -> BTreeMap<String, (u64, u64)> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            (
                n["name"].as_str().unwrap_or("").to_owned(),
                (
                    n["requests"].as_u64().unwrap_or(0),
                    n["bytes"].as_u64().unwrap_or(0),
                ),
            )
        })
        .collect()
}

/// Figures of a check, for the closing note.
#[derive(Debug, Default)]
struct Seen {
    largest_error: u64,
    objects_exact: usize,
}

/// Every report of `id` against `t`.
fn check(get: Get<'_>, id: &str, range: &str, t: &Truth, seen: &mut Seen) -> anyhow::Result<()> {
    // Popular objects: each count an upper bound within its error; the rest a lower
    // bound that misses at most that error's requests; nothing heavier left out.
    let objects = report_json(get, id, "popular-objects", range)?;
    assert_eq!(objects["requests"].as_u64(), Some(t.requests), "{id}");
    let rows = objects["objects"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), t.objects.len().min(50), "{id}: rows");
    for row in &rows {
        let name = row["object"].as_str().unwrap_or("");
        let want = t.objects.get(name).copied().unwrap_or_default();
        let (count, err) = (
            row["requests"].as_u64().unwrap_or(0),
            row["requests_max_error"].as_u64().unwrap_or(u64::MAX),
        );
        seen.largest_error = seen.largest_error.max(err);
        seen.objects_exact += usize::from(err == 0 && count == want[0]);
        assert!(
            want[0] <= count && count - err <= want[0],
            "{id} {name}: {count} ±{err}, true {}",
            want[0]
        );
        assert!(
            err <= 2 * t.requests / report::OBJECTS as u64 + 1,
            "{id} {name}: error {err}"
        );
        for (i, key) in [
            (1, "hits"),
            (2, "misses"),
            (3, "errors_4xx"),
            (4, "errors_5xx"),
        ] {
            let got = row[key].as_u64().unwrap_or(u64::MAX);
            assert!(
                got <= want[i] && got + err >= want[i],
                "{id} {name} {key}: {got} ±{err}, true {}",
                want[i]
            );
        }
        assert!(
            row["bytes"].as_u64().unwrap_or(u64::MAX) <= want[5],
            "{id} {name} bytes"
        );
        assert!(
            row["miss_bytes"].as_u64().unwrap_or(u64::MAX) <= want[6],
            "{id} {name}"
        );
    }
    let last = rows
        .last()
        .and_then(|r| r["requests"].as_u64())
        .unwrap_or(0);
    let others = objects["others_at_most"].as_u64().unwrap_or(0);
    let shown: Vec<&str> = rows.iter().filter_map(|r| r["object"].as_str()).collect();
    for (name, want) in &t.objects {
        if want[0] > last {
            assert!(
                shown.contains(&name.as_str()),
                "{id}: {name} ({}) left out",
                want[0]
            );
        }
        if !shown.contains(&name.as_str()) {
            assert!(
                want[0] <= others,
                "{id}: {name} ({}) over the stated {others}",
                want[0]
            );
        }
    }

    // Top referrers: the same guarantees.
    let referrers = report_json(get, id, "top-referrers", range)?;
    let rows = referrers["referrers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(rows.len(), t.referrers.len().min(25), "{id}: referrer rows");
    for row in &rows {
        let name = row["referrer"].as_str().unwrap_or("");
        let want = t.referrers.get(name).copied().unwrap_or(0);
        let (count, err) = (
            row["requests"].as_u64().unwrap_or(0),
            row["requests_max_error"].as_u64().unwrap_or(u64::MAX),
        );
        assert!(
            want <= count && count - err <= want,
            "{id} {name}: {count} ±{err}, true {want}"
        );
    }
    let last = rows
        .last()
        .and_then(|r| r["requests"].as_u64())
        .unwrap_or(0);
    let others = referrers["others_at_most"].as_u64().unwrap_or(0);
    for (name, want) in &t.referrers {
        if !rows.iter().any(|r| r["referrer"] == name.as_str()) {
            assert!(
                *want <= others,
                "{id}: referrer {name} ({want}) over the stated {others}"
            );
        }
        if *want > last {
            assert!(
                rows.iter().any(|r| r["referrer"] == name.as_str()),
                "{id}: referrer {name} ({want}) left out"
            );
        }
    }

    // Viewers, cache statistics and usage: exact.
    let viewers = report_json(get, id, "viewers", range)?;
    let cache = report_json(get, id, "cache-statistics", range)?;
    let usage = report_json(get, id, "usage", range)?;
    for (table, v) in [
        ("devices", &viewers),
        ("browsers", &viewers),
        ("operating_systems", &viewers),
        ("countries", &viewers),
        ("edge_locations", &viewers),
        ("result_types", &cache),
        ("status_classes", &cache),
        ("methods", &usage),
        ("protocols", &usage),
        ("http_versions", &usage),
        ("status_classes", &usage),
    ] {
        let want = t.tallies.get(table).cloned().unwrap_or_default();
        assert_eq!(tally_of(&v[table]), want, "{id}: {table}");
    }
    assert_eq!(cache["gets"].as_u64(), Some(t.gets), "{id}: GETs");
    assert_eq!(
        cache["incomplete_gets"].as_u64(),
        Some(t.incomplete_gets),
        "{id}: incomplete GETs"
    );
    // Over time: the points add up to the totals, series by series.
    let over = &cache["result_types_over_time"];
    let names: Vec<&str> = over["names"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for (i, name) in names.iter().enumerate() {
        let sum: u64 = over["points"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["requests"][i].as_u64())
            .sum();
        assert_eq!(
            Some(&sum),
            t.tallies["result_types"].get(*name).map(|x| &x.0),
            "{id} {name}"
        );
    }
    // CSV: a header and a row per object shown.
    let csv = get(&format!(
        "/api/distributions/{id}/reports/popular-objects?range={range}&format=csv"
    ))?;
    assert_eq!(csv.lines().count(), t.objects.len().min(50) + 1, "{csv}");
    Ok(())
}

/// The dashboard's total of requests in every distribution's reports.
fn reported(base: &str, ids: &[String], range: &str) -> u64 {
    ids.iter()
        .filter_map(|id| report_json(&live(base), id, "usage", range).ok())
        .filter_map(|v| v["requests"].as_u64())
        .sum()
}

#[test]
fn a_million_records_report_what_duckdb_finds_in_the_standard_logs() -> anyhow::Result<()> {
    const TOTAL: u64 = 1_000_000;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("demo");
    let demo = TestServer::demo(&data, &["--no-traffic", "--token", TOKEN], &[])?;
    let url = demo.url();
    run_edge(
        &url,
        &[
            "--total",
            &TOTAL.to_string(),
            "--rate",
            "0",
            "--seed",
            "13",
            "--distributions",
            "4",
            "--backfill-hours",
            "0.5",
            "--error-4xx",
            "2",
            "--error-5xx",
            "1",
        ],
    )?;
    let base = demo.dashboard_url("");
    let base = base.trim_end_matches('/');
    let ids: Vec<String> = serde_json::from_str(&http_get(&format!("{base}/api/distributions"))?)?;
    assert_eq!(ids.len(), 4, "{ids:?}");
    let mut got = 0;
    wait_for(
        within(Duration::from_secs(120)),
        Duration::from_millis(500),
        "reports of every record",
        || {
            got = reported(base, &ids, "1h");
            Ok((got == TOTAL).then_some(()))
        },
    )
    .map_err(|_| anyhow::anyhow!("the reports count {got} of {TOTAL} requests"))?;
    // Read the reports, then stop the demo: its standard logs are then all written.
    let mut read = HashMap::new();
    for id in &ids {
        for p in paths(id, "1h") {
            read.insert(p.clone(), http_get(&format!("{base}{p}"))?);
        }
    }
    demo.stop()?;
    let cached = |p: &str| -> anyhow::Result<String> {
        read.get(p)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{p} was not read"))
    };

    let glob = data
        .join("standard-logs/**/*.parquet")
        .display()
        .to_string();
    let script = format!(
        r#"import duckdb, json
duckdb.sql("SET enable_progress_bar = false")
src = "read_parquet('{glob}', hive_partitioning = true)"
out = {{}}
def d(dist):
    return out.setdefault(dist, {{"objects": {{}}, "referrers": {{}}, "agents": {{}}, "tallies": {{}}}})
for row in duckdb.sql(f"""SELECT DistributionId, coalesce(cs_uri_stem, '-'), count(*),
  count(*) FILTER (WHERE x_edge_result_type IN ('Hit', 'RefreshHit')),
  count(*) FILTER (WHERE x_edge_result_type = 'Miss'),
  count(*) FILTER (WHERE sc_status BETWEEN 400 AND 499),
  count(*) FILTER (WHERE sc_status BETWEEN 500 AND 599),
  sum(coalesce(sc_bytes, 0))::UBIGINT,
  sum(CASE WHEN x_edge_result_type = 'Miss' THEN coalesce(sc_bytes, 0) ELSE 0 END)::UBIGINT
  FROM {{src}} GROUP BY ALL""").fetchall():
    d(row[0])["objects"][row[1]] = [int(x) for x in row[2:]]
for dist, host, n in duckdb.sql(rf"""SELECT DistributionId,
  CASE WHEN cs_referer IS NULL OR cs_referer IN ('', '-') THEN '-'
       ELSE coalesce(nullif(regexp_extract(cs_referer, '^(?:[^:/?#]+://)?(?:[^@/?#]*@)?(\[[^\]/?#]*\]|[^:/?#]*)', 1), ''), '-') END,
  count(*) FROM {{src}} GROUP BY ALL""").fetchall():
    d(dist)["referrers"][host] = n
for dist, agent, n, b in duckdb.sql(f"""SELECT DistributionId, coalesce(cs_user_agent, '-'), count(*),
  sum(coalesce(sc_bytes, 0))::UBIGINT FROM {{src}} GROUP BY ALL""").fetchall():
    d(dist)["agents"][agent] = [n, int(b)]
tallies = {{
  "countries": "coalesce(c_country, '-')",
  "edge_locations": "coalesce(x_edge_location, '-')",
  "result_types": "CASE WHEN x_edge_result_type IN ('Hit','RefreshHit','Miss','LimitExceeded','CapacityExceeded','Error','Redirect') THEN x_edge_result_type ELSE '(other)' END",
  "status_classes": "CASE WHEN sc_status BETWEEN 100 AND 599 THEN (sc_status // 100)::VARCHAR || 'xx' ELSE '(other)' END",
  "methods": "CASE WHEN cs_method IN ('GET','HEAD','POST','PUT','DELETE','OPTIONS','PATCH') THEN cs_method ELSE '(other)' END",
  "protocols": "CASE WHEN cs_protocol IN ('http','https','ws','wss') THEN cs_protocol ELSE '(other)' END",
  "http_versions": "CASE WHEN cs_protocol_version IN ('HTTP/1.0','HTTP/1.1','HTTP/2.0','HTTP/3.0') THEN cs_protocol_version ELSE '(other)' END",
}}
for table, expr in tallies.items():
    for dist, name, n, b in duckdb.sql(f"SELECT DistributionId, {{expr}}, count(*), sum(coalesce(sc_bytes, 0))::UBIGINT FROM {{src}} GROUP BY ALL").fetchall():
        d(dist)["tallies"].setdefault(table, {{}})[name] = [n, int(b)]
for dist, gets, incomplete in duckdb.sql(f"""SELECT DistributionId, count(*) FILTER (WHERE cs_method = 'GET'),
  count(*) FILTER (WHERE cs_method = 'GET' AND (sc_status = 0 OR sc_bytes < coalesce(
    CASE WHEN sc_range_end >= sc_range_start THEN sc_range_end::HUGEINT - sc_range_start + 1 END, sc_content_len)))
  FROM {{src}} GROUP BY ALL""").fetchall():
    d(dist)["gets"] = gets
    d(dist)["incomplete_gets"] = incomplete
print(json.dumps(out))"#
    );
    let duck = python_json(&script)?;
    let mut seen = Seen::default();
    let mut total = 0;
    for id in &ids {
        let v = &duck[id.as_str()];
        let mut t = Truth {
            gets: v["gets"].as_u64().unwrap_or(0),
            incomplete_gets: v["incomplete_gets"].as_u64().unwrap_or(0),
            ..Truth::default()
        };
        for (name, row) in v["objects"].as_object().into_iter().flatten() {
            let mut a = [0u64; 7];
            for (i, x) in row.as_array().into_iter().flatten().enumerate().take(7) {
                a[i] = x.as_u64().unwrap_or(0);
            }
            t.requests += a[0];
            t.objects.insert(name.clone(), a);
        }
        for (name, n) in v["referrers"].as_object().into_iter().flatten() {
            t.referrers.insert(name.clone(), n.as_u64().unwrap_or(0));
        }
        for (table, names) in v["tallies"].as_object().into_iter().flatten() {
            for (name, nb) in names.as_object().into_iter().flatten() {
                t.tallies.entry(table.clone()).or_default().insert(
                    name.clone(),
                    (nb[0].as_u64().unwrap_or(0), nb[1].as_u64().unwrap_or(0)),
                );
            }
        }
        // Devices, browsers and systems: DuckDB groups the agents, woothee names them.
        for (agent, nb) in v["agents"].as_object().into_iter().flatten() {
            let (device, browser, os) = classify_agent(Some(agent));
            let (n, b) = (nb[0].as_u64().unwrap_or(0), nb[1].as_u64().unwrap_or(0));
            for (table, name) in [
                ("devices", device.to_owned()),
                ("browsers", browser),
                ("operating_systems", os),
            ] {
                let e = t
                    .tallies
                    .entry(table.into())
                    .or_default()
                    .entry(name)
                    .or_default();
                e.0 += n;
                e.1 += b;
            }
        }
        total += t.requests;
        assert!(
            t.objects.len() > 1000,
            "{id}: too few objects for a sketch to be tested"
        );
        assert!(
            t.referrers.len() > report::REFERRERS,
            "{id}: too few referrers"
        );
        check(&cached, id, "1h", &t, &mut seen)?;
    }
    assert_eq!(total, TOTAL);
    println!("reports vs duckdb: {seen:?}");
    Ok(())
}

#[test]
fn two_collectors_through_the_metrics_topic_report_what_they_were_sent() -> anyhow::Result<()> {
    let tansu = Tansu::start()?;
    tansu.create_topic("edgelog-metrics", 3)?;
    let dir = tempfile::tempdir()?;
    let metrics = tansu
        .metrics_sink(ServerConfig::new())
        .without_sink("standard")
        .without_sink("realtime");
    let mut a = TestServer::collector(&dir.path().join("a"), &metrics.clone().id("collector-a"))?;
    let mut b = TestServer::collector(&dir.path().join("b"), &metrics.clone().id("collector-b"))?;
    let sent_a = send_generated_seeded(&a.url(), 20_000, 3, 1, 1, 2, 7)?;
    let sent_b = send_generated_seeded(&b.url(), 15_000, 3, 1, 1, 2, 8)?;
    assert!(
        a.terminate()? && b.terminate()?,
        "collectors did not stop cleanly"
    );

    let mut truth: BTreeMap<String, Truth> = BTreeMap::new();
    for r in sent_a.sample.iter().chain(&sent_b.sample) {
        truth.entry(r.distribution_id.clone()).or_default().add(r);
    }
    let ids: Vec<String> = truth.keys().cloned().collect();
    let read_all = |base: &str| -> anyhow::Result<BTreeMap<String, Vec<Value>>> {
        let mut got = 0;
        wait_for(
            within(Duration::from_secs(60)),
            Duration::from_millis(200),
            "reports of all 35,000 records",
            || {
                got = reported(base, &ids, "3h");
                Ok((got == 35_000).then_some(()))
            },
        )
        .map_err(|_| anyhow::anyhow!("the reports count {got} of 35000 requests"))?;
        let mut out = BTreeMap::new();
        for id in &ids {
            let mut reports = Vec::new();
            for r in [
                "popular-objects",
                "top-referrers",
                "viewers",
                "cache-statistics",
                "usage",
            ] {
                let mut v = report_json(&live(base), id, r, "3h")?;
                // The window moves with the clock between two reads.
                for key in ["from_ms", "to_ms"] {
                    v[key] = Value::Null;
                }
                reports.push(v);
            }
            out.insert(id.clone(), reports);
        }
        Ok(out)
    };

    let dashboard = TestServer::dashboard(dir.path(), &metrics)?;
    let first = read_all(&dashboard.url())?;
    let mut seen = Seen::default();
    for (id, t) in &truth {
        check(&live(&dashboard.url()), id, "3h", t, &mut seen)?;
    }
    drop(dashboard);
    // A restarted dashboard rebuilds the same reports from the topic.
    let dashboard = TestServer::dashboard(dir.path(), &metrics)?;
    assert_eq!(read_all(&dashboard.url())?, first);
    println!("two collectors: {seen:?}");
    Ok(())
}
