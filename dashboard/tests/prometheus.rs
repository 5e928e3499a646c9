//! The dashboard's `/metrics` read by a real Prometheus text-format parser (Python's
//! `prometheus_client`, which `scripts/install-test-deps.sh` installs), with distribution
//! ids and alarm names that would forge series or break the format if written unescaped.
//! Without the parser the test fails: it never skips.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::body::Body;
use axum::http::StatusCode;
use common::{alarm, merge, now_ms};
use edgelog_dashboard::alarms::{AlarmBoard, Metric};
use edgelog_dashboard::{Dashboard, DashboardConfig, MetricsStore, app, prometheus_label};
use edgelog_record::MinuteAggregate;

/// Distribution ids as a hostile or broken producer of the metrics topic could send them
/// (the API refuses such alarm names; alarms built in code are not checked, so they are
/// here too).
const HOSTILE: &[&str] = &[
    "E1\"} 1\nevil 2",
    "back\\slash",
    "trailing\\",
    "new\nline",
    "quote\"d",
    "\\n literally",
    "ünïcödé {x=\"y\"} # not a comment",
    "E2QWRUHAPOMQZL",
];

/// Parses `text` with prometheus_client and returns every sample as
/// `(family, family type, sample name, labels, value)`.
type Sample = (String, String, String, BTreeMap<String, String>, f64);

fn parse_with_prometheus_client(text: &str) -> Vec<Sample> {
    let script = r#"
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append([fam.name, fam.type, s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    common::prometheus_client(script, text)
}

async fn metrics_text(router: &axum::Router) -> String {
    let a = common::call(router, "GET", "/metrics", &[], Body::empty()).await;
    assert_eq!(a.status, StatusCode::OK);
    let ct = a.content_type;
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    String::from_utf8(a.bytes).expect("utf8")
}

#[tokio::test]
async fn hostile_names_are_escaped_and_a_real_parser_reads_back_exactly_them() {
    let store = Arc::new(MetricsStore::new(60));
    let now = now_ms();
    let minute = now - now.rem_euclid(60_000) - 60_000;
    for (i, id) in HOSTILE.iter().enumerate() {
        // Some cacheable requests, so every gauge has a value (CacheHitRate without any
        // is NaN: tests/quiet.rs).
        let mut aggregate = MinuteAggregate {
            requests: 100 + i as u64,
            status_5xx: 7,
            cacheable: 10,
            cache_hits: 4,
            ..MinuteAggregate::default()
        };
        aggregate.origin_latency.add_seconds(0.02);
        merge(&store, id, minute, aggregate);
    }
    let alarm_names = ["plain-name", "a\"} 1\nevil 3", "x\\y"];
    let alarms = Arc::new(AlarmBoard::new(
        alarm_names
            .iter()
            .map(|n| alarm(n, Metric::Requests))
            .collect(),
    ));
    alarms.evaluate(&store, now);
    let router = app(Dashboard::new(store, alarms, &DashboardConfig::default()));
    let text = metrics_text(&router).await;

    let samples = parse_with_prometheus_client(&text);
    // And line by line: every sample line starts with one of our metric names, so no line
    // was forged by a value that broke out of its quotes.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("edgelog_"), "a forged line: {line:?}");
    }

    let names: BTreeSet<&str> = samples.iter().map(|s| s.2.as_str()).collect();
    let expected: BTreeSet<&str> = [
        "edgelog_distribution_requests",
        "edgelog_distribution_bytes_downloaded",
        "edgelog_distribution_bytes_uploaded",
        "edgelog_distribution_error_rate_4xx_percent",
        "edgelog_distribution_error_rate_5xx_percent",
        "edgelog_distribution_total_error_rate_percent",
        "edgelog_distribution_cache_hit_rate_percent",
        "edgelog_distribution_error_rate_401_percent",
        "edgelog_distribution_error_rate_403_percent",
        "edgelog_distribution_error_rate_404_percent",
        "edgelog_distribution_error_rate_502_percent",
        "edgelog_distribution_error_rate_503_percent",
        "edgelog_distribution_error_rate_504_percent",
        "edgelog_distribution_origin_latency_ms",
        "edgelog_alarm_state",
    ]
    .into();
    // The dashboard's own: report memory, without a distribution.
    let own = [
        ("edgelog_dashboard_report_bytes", "gauge"),
        (
            "edgelog_dashboard_report_summaries_dropped_total",
            "counter",
        ),
    ];
    let all: BTreeSet<&str> = expected.iter().copied().chain(own.map(|o| o.0)).collect();
    assert_eq!(names, all, "only our series, nothing forged");
    for s in &samples {
        let kind = own.iter().find(|o| o.0 == s.2).map_or("gauge", |o| o.1);
        assert_eq!(s.1, kind, "{}", s.2);
    }

    // Each distribution label reads back as exactly the id, for every gauge.
    let want: BTreeSet<String> = HOSTILE.iter().map(|s| (*s).to_owned()).collect();
    for name in &expected {
        let got: BTreeSet<String> = samples
            .iter()
            .filter(|s| s.2 == *name)
            .map(|s| s.3.get("distribution").cloned().unwrap_or_default())
            .collect();
        assert_eq!(got, want, "{name}");
    }
    // Values went with the right distribution.
    for (i, id) in HOSTILE.iter().enumerate() {
        let requests = samples
            .iter()
            .find(|s| s.2 == "edgelog_distribution_requests" && s.3["distribution"] == *id)
            .map(|s| s.4);
        assert_eq!(requests, Some(100.0 + i as f64), "{id:?}");
    }
    // OriginLatency: three quantiles per distribution.
    let quantiles = samples
        .iter()
        .filter(|s| s.2 == "edgelog_distribution_origin_latency_ms")
        .count();
    assert_eq!(quantiles, 3 * HOSTILE.len());

    // Alarm states: for each alarm and distribution, three states, exactly one at 1.
    let mut states: BTreeMap<(String, String), Vec<(String, f64)>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.2 == "edgelog_alarm_state") {
        assert_eq!(
            s.3.keys().map(String::as_str).collect::<Vec<_>>(),
            ["alarm", "distribution", "state"],
            "labels"
        );
        states
            .entry((s.3["alarm"].clone(), s.3["distribution"].clone()))
            .or_default()
            .push((s.3["state"].clone(), s.4));
    }
    let want_pairs: BTreeSet<(String, String)> = alarm_names
        .iter()
        .flat_map(|a| HOSTILE.iter().map(|d| ((*a).to_owned(), (*d).to_owned())))
        .collect();
    assert_eq!(states.keys().cloned().collect::<BTreeSet<_>>(), want_pairs);
    for (key, v) in &states {
        assert_eq!(v.len(), 3, "{key:?}");
        assert_eq!(v.iter().filter(|(_, x)| *x == 1.0).count(), 1, "{key:?}");
        // Requests > 5 breaches: ALARM.
        assert!(v.contains(&("ALARM".to_owned(), 1.0)), "{key:?}: {v:?}");
    }
}

#[test]
fn label_values_are_escaped_as_the_text_format_says() {
    assert_eq!(prometheus_label("E1"), "E1");
    assert_eq!(prometheus_label("a\"b"), "a\\\"b");
    assert_eq!(prometheus_label("a\\b"), "a\\\\b");
    assert_eq!(prometheus_label("a\nb"), "a\\nb");
    assert_eq!(prometheus_label("\\n"), "\\\\n");
    assert_eq!(prometheus_label("ünï {}=,#"), "ünï {}=,#");
}
