//! Per-distribution, per-minute partial aggregates: computed by each collector from every
//! record (before sampling), merged by summing wherever they meet.

use serde::{Deserialize, Serialize};

use crate::fields::Record;
use crate::sketch::LatencySketch;

/// Counters for one distribution and one minute of event time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinuteAggregate {
    /// All requests.
    pub requests: u64,
    /// sc-bytes of GET, HEAD and OPTIONS requests.
    pub bytes_downloaded: u64,
    /// cs-bytes of POST and PUT requests.
    pub bytes_uploaded: u64,
    /// Responses with a 4xx status.
    pub status_4xx: u64,
    /// Responses with a 5xx status.
    pub status_5xx: u64,
    /// Responses with status 401, 403, 404, 502, 503, 504, in that order.
    pub status_detail: [u64; 6],
    /// Requests served from cache (Hit, RefreshHit).
    pub cache_hits: u64,
    /// Requests that could have been served from cache (Hit, RefreshHit, Miss).
    pub cacheable: u64,
    /// time-to-first-byte of requests served from the origin (Miss), for OriginLatency.
    pub origin_latency: LatencySketch,
}

const DETAIL_STATUSES: [u16; 6] = [401, 403, 404, 502, 503, 504];

impl MinuteAggregate {
    /// Counts one record (sums saturate at `u64::MAX`).
    pub fn add(&mut self, r: &Record) {
        self.requests = self.requests.saturating_add(1);
        match r.cs_method.as_deref() {
            Some("GET" | "HEAD" | "OPTIONS") => {
                self.bytes_downloaded = self
                    .bytes_downloaded
                    .saturating_add(r.sc_bytes.unwrap_or(0))
            }
            Some("POST" | "PUT") => {
                self.bytes_uploaded = self.bytes_uploaded.saturating_add(r.cs_bytes.unwrap_or(0))
            }
            _ => {}
        }
        if let Some(status) = r.sc_status {
            match status {
                400..=499 => self.status_4xx = self.status_4xx.saturating_add(1),
                500..=599 => self.status_5xx = self.status_5xx.saturating_add(1),
                _ => {}
            }
            if let Some(i) = DETAIL_STATUSES.iter().position(|&s| s == status) {
                self.status_detail[i] = self.status_detail[i].saturating_add(1);
            }
        }
        match r.x_edge_result_type.as_deref() {
            Some("Hit" | "RefreshHit") => {
                self.cache_hits = self.cache_hits.saturating_add(1);
                self.cacheable = self.cacheable.saturating_add(1);
            }
            Some("Miss") => {
                self.cacheable = self.cacheable.saturating_add(1);
                if let Some(t) = r.time_to_first_byte {
                    self.origin_latency.add_seconds(t);
                }
            }
            _ => {}
        }
    }

    /// Adds another partial aggregate of the same distribution and minute. Sums saturate
    /// at `u64::MAX`: they never wrap, whatever a producer sends.
    pub fn merge(&mut self, o: &MinuteAggregate) {
        self.requests = self.requests.saturating_add(o.requests);
        self.bytes_downloaded = self.bytes_downloaded.saturating_add(o.bytes_downloaded);
        self.bytes_uploaded = self.bytes_uploaded.saturating_add(o.bytes_uploaded);
        self.status_4xx = self.status_4xx.saturating_add(o.status_4xx);
        self.status_5xx = self.status_5xx.saturating_add(o.status_5xx);
        for (a, b) in self.status_detail.iter_mut().zip(o.status_detail) {
            *a = a.saturating_add(b);
        }
        self.cache_hits = self.cache_hits.saturating_add(o.cache_hits);
        self.cacheable = self.cacheable.saturating_add(o.cacheable);
        self.origin_latency.merge(&o.origin_latency);
    }

    fn percent(&self, n: u64) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            n as f64 * 100.0 / self.requests as f64
        }
    }

    /// CloudFront's 4xxErrorRate, percent of all requests.
    pub fn error_rate_4xx(&self) -> f64 {
        self.percent(self.status_4xx)
    }

    /// CloudFront's 5xxErrorRate, percent of all requests.
    pub fn error_rate_5xx(&self) -> f64 {
        self.percent(self.status_5xx)
    }

    /// CloudFront's TotalErrorRate, percent of all requests.
    pub fn total_error_rate(&self) -> f64 {
        self.percent(self.status_4xx.saturating_add(self.status_5xx))
    }

    /// Percent of all requests answered with `status` (401, 403, 404, 502, 503 or 504;
    /// 0 for any other).
    pub fn status_rate(&self, status: u16) -> f64 {
        DETAIL_STATUSES
            .iter()
            .position(|&s| s == status)
            .map_or(0.0, |i| self.percent(self.status_detail[i]))
    }

    /// CacheHitRate: hits over requests that could have been served from cache, percent.
    pub fn cache_hit_rate(&self) -> f64 {
        if self.cacheable == 0 {
            0.0
        } else {
            self.cache_hits as f64 * 100.0 / self.cacheable as f64
        }
    }
}

/// One published partial aggregate: which collector, which distribution and minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinuteUpdate {
    pub collector_id: String,
    pub distribution_id: String,
    /// Start of the minute, milliseconds since the epoch.
    pub minute_ms: i64,
    pub aggregate: MinuteAggregate,
    /// The minute's reports, when the collector keeps them (base64 on the topic).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::report::wire"
    )]
    pub report: Option<Box<crate::report::MinuteReport>>,
}
