//! What the dashboard measures: one minute's metrics ([`MinutePoint`]).

use serde::{Deserialize, Serialize};

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
