//! What the dashboard measures: one minute's metrics ([`MinutePoint`]) and the table
//! ([`METRICS`]) that charts, Prometheus gauges and alarm metric names are all read from.

use plotters::style::RGBColor;
use serde::{Deserialize, Serialize};

use crate::alarms::PeriodSums;
use crate::charts::Chart;

/// A percentage `n / d`, or `None` when `d` is 0 (no data, not 0 %).
pub(crate) fn percent(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| n as f64 * 100.0 / d as f64)
}

/// One minute of CloudFront's six metrics and the additional ones (rates in percent).
/// A rate is `null` when its denominator is 0: the error rates in a minute without
/// requests, CacheHitRate in a minute where nothing was cacheable.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MinutePoint {
    pub minute_ms: i64,
    pub requests: u64,
    pub bytes_downloaded: u64,
    pub bytes_uploaded: u64,
    pub error_rate_4xx: Option<f64>,
    pub error_rate_5xx: Option<f64>,
    pub total_error_rate: Option<f64>,
    /// Hits over cacheable requests (Hit, RefreshHit, Miss).
    pub cache_hit_rate: Option<f64>,
    pub error_rate_401: Option<f64>,
    pub error_rate_403: Option<f64>,
    pub error_rate_404: Option<f64>,
    pub error_rate_502: Option<f64>,
    pub error_rate_503: Option<f64>,
    pub error_rate_504: Option<f64>,
    /// OriginLatency (time-to-first-byte of requests served from the origin), ms; null
    /// in a minute without any.
    pub origin_latency_p50_ms: Option<f64>,
    pub origin_latency_p90_ms: Option<f64>,
    pub origin_latency_p99_ms: Option<f64>,
}

/// A quantile of OriginLatency in ms. The sketch's lowest bucket holds everything up to
/// 1 µs and reads as 0.001 ms; a time-to-first-byte that small is 0 ms.
fn origin_latency_ms(sketch: &edgelog_record::LatencySketch, q: f64) -> Option<f64> {
    sketch
        .quantile_ms(q)
        .map(|ms| if ms <= 0.001 { 0.0 } else { ms })
}

impl MinutePoint {
    /// The metrics of one minute's aggregate.
    pub fn of(minute_ms: i64, a: &edgelog_record::MinuteAggregate) -> MinutePoint {
        let requests = a.requests;
        let detail = |i: usize| percent(a.status_detail[i], requests);
        MinutePoint {
            minute_ms,
            requests,
            bytes_downloaded: a.bytes_downloaded,
            bytes_uploaded: a.bytes_uploaded,
            error_rate_4xx: percent(a.status_4xx, requests),
            error_rate_5xx: percent(a.status_5xx, requests),
            total_error_rate: percent(a.status_4xx.saturating_add(a.status_5xx), requests),
            cache_hit_rate: percent(a.cache_hits, a.cacheable),
            error_rate_401: detail(0),
            error_rate_403: detail(1),
            error_rate_404: detail(2),
            error_rate_502: detail(3),
            error_rate_503: detail(4),
            error_rate_504: detail(5),
            origin_latency_p50_ms: origin_latency_ms(&a.origin_latency, 0.5),
            origin_latency_p90_ms: origin_latency_ms(&a.origin_latency, 0.9),
            origin_latency_p99_ms: origin_latency_ms(&a.origin_latency, 0.99),
        }
    }

    /// A minute without records, as CloudWatch reports it: no requests, no bytes, no
    /// rates, no latency.
    pub fn quiet(minute_ms: i64) -> MinutePoint {
        MinutePoint {
            minute_ms,
            ..MinutePoint::default()
        }
    }
}

/// What a metric counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Requests,
    Bytes,
    Percent,
    Milliseconds,
}

impl Unit {
    /// What a chart's y axis says.
    pub fn axis(self) -> &'static str {
        match self {
            Unit::Requests => "requests per minute",
            Unit::Bytes => "bytes per minute",
            Unit::Percent => "percent of requests",
            Unit::Milliseconds => "milliseconds",
        }
    }
}

/// One metric of a minute: a field of [`MinutePoint`] and everything that shows it.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    /// The [`MinutePoint`] field: JSON key and CSV column.
    pub column: &'static str,
    /// CloudFront's name: chart titles, table headers, alarm `metric` values.
    pub label: &'static str,
    pub unit: Unit,
    /// The Prometheus gauge, after `edgelog_distribution_`; rows sharing one are one
    /// family told apart by `quantile`.
    pub gauge: &'static str,
    pub quantile: Option<&'static str>,
    /// The gauge's HELP (a family's first row gives it).
    pub help: &'static str,
    /// The chart that draws it, and in which colour.
    pub chart: Chart,
    pub color: RGBColor,
    /// Its value in a minute; `None` is no data.
    pub get: fn(&MinutePoint) -> Option<f64>,
    /// Its value over an alarm's period, for the metrics alarms can watch (the first
    /// rows, in [`Metric`]'s order).
    pub over_period: Option<fn(&PeriodSums) -> Option<f64>>,
}

const BLUE: RGBColor = RGBColor(0x1f, 0x6f, 0xb4);
const ORANGE: RGBColor = RGBColor(0xe6, 0x7e, 0x22);
const RED: RGBColor = RGBColor(0xc0, 0x39, 0x2b);
const PURPLE: RGBColor = RGBColor(0x8e, 0x44, 0xad);
const GREEN: RGBColor = RGBColor(0x27, 0xae, 0x60);
const GREY: RGBColor = RGBColor(0x7f, 0x8c, 0x8d);

const LATENCY_HELP: &str =
    "OriginLatency in the last complete minute, by quantile (NaN without requests from the origin)";

/// A row of [`METRICS`] with the defaults of the error rates by status.
const fn by_status(
    column: &'static str,
    label: &'static str,
    gauge: &'static str,
    color: RGBColor,
    get: fn(&MinutePoint) -> Option<f64>,
) -> MetricDef {
    MetricDef {
        column,
        label,
        unit: Unit::Percent,
        gauge,
        quantile: None,
        help: label,
        chart: Chart::ErrorRatesByStatus,
        color,
        get,
        over_period: None,
    }
}

/// A row of [`METRICS`] for a quantile of OriginLatency.
const fn latency(
    column: &'static str,
    label: &'static str,
    quantile: &'static str,
    color: RGBColor,
    get: fn(&MinutePoint) -> Option<f64>,
) -> MetricDef {
    MetricDef {
        column,
        label,
        unit: Unit::Milliseconds,
        gauge: "origin_latency_ms",
        quantile: Some(quantile),
        help: LATENCY_HELP,
        chart: Chart::OriginLatency,
        color,
        get,
        over_period: None,
    }
}

/// Every metric, in [`MinutePoint`]'s order (the order of the Prometheus gauges too).
pub const METRICS: [MetricDef; 16] = [
    MetricDef {
        column: "requests",
        label: "Requests",
        unit: Unit::Requests,
        gauge: "requests",
        quantile: None,
        help: "Requests in the last complete minute",
        chart: Chart::Requests,
        color: BLUE,
        get: |p| Some(p.requests as f64),
        over_period: Some(|s| Some(s.requests as f64)),
    },
    MetricDef {
        column: "bytes_downloaded",
        label: "BytesDownloaded",
        unit: Unit::Bytes,
        gauge: "bytes_downloaded",
        quantile: None,
        help: "BytesDownloaded in the last complete minute",
        chart: Chart::BytesDownloaded,
        color: BLUE,
        get: |p| Some(p.bytes_downloaded as f64),
        over_period: Some(|s| Some(s.bytes_downloaded as f64)),
    },
    MetricDef {
        column: "bytes_uploaded",
        label: "BytesUploaded",
        unit: Unit::Bytes,
        gauge: "bytes_uploaded",
        quantile: None,
        help: "BytesUploaded in the last complete minute",
        chart: Chart::BytesUploaded,
        color: BLUE,
        get: |p| Some(p.bytes_uploaded as f64),
        over_period: Some(|s| Some(s.bytes_uploaded as f64)),
    },
    MetricDef {
        column: "error_rate_4xx",
        label: "4xxErrorRate",
        unit: Unit::Percent,
        gauge: "error_rate_4xx_percent",
        quantile: None,
        help: "4xxErrorRate (NaN without requests)",
        chart: Chart::ErrorRate4xx,
        color: ORANGE,
        get: |p| p.error_rate_4xx,
        over_period: Some(|s| percent(s.status_4xx, s.requests)),
    },
    MetricDef {
        column: "error_rate_5xx",
        label: "5xxErrorRate",
        unit: Unit::Percent,
        gauge: "error_rate_5xx_percent",
        quantile: None,
        help: "5xxErrorRate (NaN without requests)",
        chart: Chart::ErrorRate5xx,
        color: RED,
        get: |p| p.error_rate_5xx,
        over_period: Some(|s| percent(s.status_5xx, s.requests)),
    },
    MetricDef {
        column: "total_error_rate",
        label: "TotalErrorRate",
        unit: Unit::Percent,
        gauge: "total_error_rate_percent",
        quantile: None,
        help: "TotalErrorRate (NaN without requests)",
        chart: Chart::TotalErrorRate,
        color: PURPLE,
        get: |p| p.total_error_rate,
        over_period: Some(|s| percent(s.status_4xx.saturating_add(s.status_5xx), s.requests)),
    },
    MetricDef {
        column: "cache_hit_rate",
        label: "CacheHitRate",
        unit: Unit::Percent,
        gauge: "cache_hit_rate_percent",
        quantile: None,
        help: "CacheHitRate: hits over cacheable requests (NaN when nothing was cacheable)",
        chart: Chart::CacheHitRate,
        color: GREEN,
        get: |p| p.cache_hit_rate,
        over_period: Some(|s| percent(s.cache_hits, s.cacheable)),
    },
    by_status(
        "error_rate_401",
        "401ErrorRate",
        "error_rate_401_percent",
        GREY,
        |p| p.error_rate_401,
    ),
    by_status(
        "error_rate_403",
        "403ErrorRate",
        "error_rate_403_percent",
        PURPLE,
        |p| p.error_rate_403,
    ),
    by_status(
        "error_rate_404",
        "404ErrorRate",
        "error_rate_404_percent",
        ORANGE,
        |p| p.error_rate_404,
    ),
    by_status(
        "error_rate_502",
        "502ErrorRate",
        "error_rate_502_percent",
        RED,
        |p| p.error_rate_502,
    ),
    by_status(
        "error_rate_503",
        "503ErrorRate",
        "error_rate_503_percent",
        BLUE,
        |p| p.error_rate_503,
    ),
    by_status(
        "error_rate_504",
        "504ErrorRate",
        "error_rate_504_percent",
        GREEN,
        |p| p.error_rate_504,
    ),
    latency(
        "origin_latency_p50_ms",
        "OriginLatency p50",
        "0.5",
        BLUE,
        |p| p.origin_latency_p50_ms,
    ),
    latency(
        "origin_latency_p90_ms",
        "OriginLatency p90",
        "0.9",
        ORANGE,
        |p| p.origin_latency_p90_ms,
    ),
    latency(
        "origin_latency_p99_ms",
        "OriginLatency p99",
        "0.99",
        RED,
        |p| p.origin_latency_p99_ms,
    ),
];

/// The metrics an alarm can watch: the first rows of [`METRICS`], in the same order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Requests,
    BytesDownloaded,
    BytesUploaded,
    ErrorRate4xx,
    ErrorRate5xx,
    TotalErrorRate,
    CacheHitRate,
}

/// Alarm metric names, as configurations and the API spell them.
const ALARM_METRIC_NAMES: [&str; 7] = {
    let mut names = [""; 7];
    let mut i = 0;
    while i < names.len() {
        names[i] = METRICS[i].label;
        i += 1;
    }
    names
};

// The first rows, and only those, say how alarms compute them.
const _: () = {
    let mut i = 0;
    while i < METRICS.len() {
        assert!(METRICS[i].over_period.is_some() == (i < Metric::ALL.len()));
        i += 1;
    }
};

impl Metric {
    /// Every alarm metric, by its row in [`METRICS`].
    pub const ALL: [Metric; 7] = [
        Metric::Requests,
        Metric::BytesDownloaded,
        Metric::BytesUploaded,
        Metric::ErrorRate4xx,
        Metric::ErrorRate5xx,
        Metric::TotalErrorRate,
        Metric::CacheHitRate,
    ];

    /// Its row of [`METRICS`].
    pub fn def(self) -> &'static MetricDef {
        &METRICS[self as usize]
    }

    /// CloudFront's name (`5xxErrorRate`): what configurations and the API call it.
    pub fn name(self) -> &'static str {
        self.def().label
    }

    /// The metric over a period (one minute or more): counts are summed; a rate is its
    /// numerator summed over its denominator summed, as CloudFront computes it from the
    /// requests themselves (error rates over requests, CacheHitRate over cacheable
    /// requests). `None` is no data: a period without minutes, or a rate whose
    /// denominator is 0 (CacheHitRate where nothing was cacheable).
    pub fn of(self, s: &PeriodSums) -> Option<f64> {
        if s.minutes == 0 {
            return None;
        }
        self.def().over_period.and_then(|f| f(s))
    }
}

// Spelled as serde's derive would for a unit enum renamed from the table, errors included.
impl Serialize for Metric {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit_variant("Metric", *self as u32, self.name())
    }
}

impl<'de> Deserialize<'de> for Metric {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Metric, D::Error> {
        d.deserialize_enum("Metric", &ALARM_METRIC_NAMES, MetricVisitor)
    }
}

struct MetricVisitor;

impl<'de> serde::de::Visitor<'de> for MetricVisitor {
    type Value = Metric;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("enum Metric")
    }

    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<Metric, A::Error> {
        let (VariantName(m), v) = data.variant()?;
        serde::de::VariantAccess::unit_variant(v)?;
        Ok(m)
    }
}

/// An alarm metric's name (or index) where serde expects a variant identifier.
struct VariantName(Metric);

impl<'de> Deserialize<'de> for VariantName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<VariantName, D::Error> {
        d.deserialize_identifier(VariantNameVisitor)
    }
}

struct VariantNameVisitor;

impl<'de> serde::de::Visitor<'de> for VariantNameVisitor {
    type Value = VariantName;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("variant identifier")
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<VariantName, E> {
        usize::try_from(v)
            .ok()
            .and_then(|i| Metric::ALL.get(i))
            .map(|m| VariantName(*m))
            .ok_or_else(|| {
                E::invalid_value(
                    serde::de::Unexpected::Unsigned(v),
                    &"variant index 0 <= i < 7",
                )
            })
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<VariantName, E> {
        Metric::ALL
            .into_iter()
            .find(|m| m.name() == v)
            .map(VariantName)
            .ok_or_else(|| E::unknown_variant(v, &ALARM_METRIC_NAMES))
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<VariantName, E> {
        self.visit_str(&String::from_utf8_lossy(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_metrics_read_and_write_their_table_names() {
        for m in Metric::ALL {
            let json = serde_json::to_string(&m).expect("serializes");
            assert_eq!(json, format!("\"{}\"", METRICS[m as usize].label));
            assert_eq!(serde_json::from_str::<Metric>(&json).expect("parses"), m);
        }
        assert_eq!(Metric::ErrorRate5xx.name(), "5xxErrorRate");
        let e = serde_json::from_str::<Metric>("\"Bogus\"").expect_err("unknown");
        assert!(
            e.to_string().starts_with(
                "unknown variant `Bogus`, expected one of `Requests`, `BytesDownloaded`"
            ),
            "{e}"
        );
    }
}
