//! `/metrics`: each distribution's last complete minute and every alarm's state, in the
//! Prometheus text exposition format.

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use crate::alarms;
use crate::api::Dashboard;
use crate::metrics::MinutePoint;
use crate::store::{last_complete_minute, now_ms};

/// A label value as the Prometheus text exposition format wants it: backslash, double
/// quote and line feed escaped (`\\`, `\"`, `\n`); everything else, any UTF-8, as it is.
pub fn prometheus_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value as the text format spells it (`NaN`, `+Inf`, `-Inf`).
fn prometheus_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        v.to_string()
    }
}

/// A Prometheus gauge: name, help, and how to read it from a minute (`None`: no data).
type Gauge = (&'static str, &'static str, fn(&MinutePoint) -> Option<f64>);

/// Prometheus text: each distribution's last complete minute, and alarm states. A quiet
/// minute has 0 requests and bytes, and NaN rates and latencies (no data, as a 0/0
/// would be in PromQL).
pub(crate) async fn metrics(State(d): State<Dashboard>) -> Response {
    use std::fmt::Write;
    let last_complete = last_complete_minute(now_ms());
    let mut out = String::new();
    let gauges: [Gauge; 13] = [
        ("requests", "Requests in the last complete minute", |p| {
            Some(p.requests as f64)
        }),
        (
            "bytes_downloaded",
            "BytesDownloaded in the last complete minute",
            |p| Some(p.bytes_downloaded as f64),
        ),
        (
            "bytes_uploaded",
            "BytesUploaded in the last complete minute",
            |p| Some(p.bytes_uploaded as f64),
        ),
        (
            "error_rate_4xx_percent",
            "4xxErrorRate (NaN without requests)",
            |p| p.error_rate_4xx,
        ),
        (
            "error_rate_5xx_percent",
            "5xxErrorRate (NaN without requests)",
            |p| p.error_rate_5xx,
        ),
        (
            "total_error_rate_percent",
            "TotalErrorRate (NaN without requests)",
            |p| p.total_error_rate,
        ),
        (
            "cache_hit_rate_percent",
            "CacheHitRate: hits over cacheable requests (NaN when nothing was cacheable)",
            |p| p.cache_hit_rate,
        ),
        ("error_rate_401_percent", "401ErrorRate", |p| {
            p.error_rate_401
        }),
        ("error_rate_403_percent", "403ErrorRate", |p| {
            p.error_rate_403
        }),
        ("error_rate_404_percent", "404ErrorRate", |p| {
            p.error_rate_404
        }),
        ("error_rate_502_percent", "502ErrorRate", |p| {
            p.error_rate_502
        }),
        ("error_rate_503_percent", "503ErrorRate", |p| {
            p.error_rate_503
        }),
        ("error_rate_504_percent", "504ErrorRate", |p| {
            p.error_rate_504
        }),
    ];
    let last: Vec<(String, MinutePoint)> = d
        .store
        .distributions()
        .into_iter()
        .filter_map(|id| {
            let p = d.store.minute(&id, last_complete)?;
            Some((id, p))
        })
        .collect();
    for (name, help, f) in gauges {
        let _ = writeln!(
            out,
            "# HELP edgelog_distribution_{name} {help}\n# TYPE edgelog_distribution_{name} gauge"
        );
        for (id, p) in &last {
            let _ = writeln!(
                out,
                "edgelog_distribution_{name}{{distribution=\"{}\"}} {}",
                prometheus_label(id),
                prometheus_value(f(p).unwrap_or(f64::NAN))
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP edgelog_distribution_origin_latency_ms OriginLatency in the last complete minute, by quantile (NaN without requests from the origin)\n# TYPE edgelog_distribution_origin_latency_ms gauge"
    );
    for (id, p) in &last {
        for (q, v) in [
            ("0.5", p.origin_latency_p50_ms),
            ("0.9", p.origin_latency_p90_ms),
            ("0.99", p.origin_latency_p99_ms),
        ] {
            let _ = writeln!(
                out,
                "edgelog_distribution_origin_latency_ms{{distribution=\"{}\",quantile=\"{q}\"}} {}",
                prometheus_label(id),
                prometheus_value(v.unwrap_or(f64::NAN))
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP edgelog_alarm_state 1 for the state each alarm is in\n# TYPE edgelog_alarm_state gauge"
    );
    for a in d.alarms.statuses() {
        for (state, label) in [
            (alarms::AlarmState::Ok, "OK"),
            (alarms::AlarmState::Alarm, "ALARM"),
            (alarms::AlarmState::InsufficientData, "INSUFFICIENT_DATA"),
        ] {
            let _ = writeln!(
                out,
                "edgelog_alarm_state{{alarm=\"{}\",distribution=\"{}\",state=\"{label}\"}} {}",
                prometheus_label(&a.alarm),
                prometheus_label(&a.distribution),
                u8::from(a.state == state)
            );
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response()
}
