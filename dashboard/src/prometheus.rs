//! `/metrics`: each distribution's last complete minute and every alarm's state, in the
//! Prometheus text exposition format.

use std::fmt::Write;

use axum::Extension;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::alarms::AlarmState;
use crate::api::Dashboard;
use crate::auth::Scope;
use crate::metrics::{METRICS, MinutePoint};
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

/// Prometheus text: a gauge per row of [`METRICS`] (rows sharing a gauge are one family,
/// by quantile), then alarm states. A quiet minute has 0 requests and bytes, and NaN
/// rates and latencies (no data, as a 0/0 would be in PromQL).
pub(crate) async fn metrics(
    State(d): State<Dashboard>,
    Extension(scope): Extension<Scope>,
) -> Response {
    let last_complete = last_complete_minute(now_ms());
    let last: Vec<(String, MinutePoint)> = d
        .store
        .distributions()
        .into_iter()
        .filter(|id| scope.sees(id))
        .filter_map(|id| {
            let p = d.store.minute(&id, last_complete)?;
            Some((id, p))
        })
        .collect();
    let mut out = String::new();
    for family in METRICS.chunk_by(|a, b| a.gauge == b.gauge) {
        let (name, help) = (family[0].gauge, family[0].help);
        let _ = writeln!(
            out,
            "# HELP edgelog_distribution_{name} {help}\n# TYPE edgelog_distribution_{name} gauge"
        );
        for (id, p) in &last {
            for m in family {
                let quantile = m
                    .quantile
                    .map_or_else(String::new, |q| format!(",quantile=\"{q}\""));
                let _ = writeln!(
                    out,
                    "edgelog_distribution_{name}{{distribution=\"{}\"{quantile}}} {}",
                    prometheus_label(id),
                    prometheus_value((m.get)(p).unwrap_or(f64::NAN))
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP edgelog_alarm_state 1 for the state each alarm is in\n# TYPE edgelog_alarm_state gauge"
    );
    for a in d.alarms.statuses() {
        if !scope.sees(&a.distribution) {
            continue;
        }
        for state in [
            AlarmState::Ok,
            AlarmState::Alarm,
            AlarmState::InsufficientData,
        ] {
            let _ = writeln!(
                out,
                "edgelog_alarm_state{{alarm=\"{}\",distribution=\"{}\",state=\"{}\"}} {}",
                prometheus_label(&a.alarm),
                prometheus_label(&a.distribution),
                state.name(),
                u8::from(a.state == state)
            );
        }
    }
    let (held, dropped) = d.store.report_bytes();
    let _ = writeln!(
        out,
        "# HELP edgelog_dashboard_report_bytes Estimated bytes of report summaries held\n\
         # TYPE edgelog_dashboard_report_bytes gauge\nedgelog_dashboard_report_bytes {held}\n\
         # HELP edgelog_dashboard_report_summaries_dropped_total Report summaries dropped to stay within dashboard.reports_max_bytes\n\
         # TYPE edgelog_dashboard_report_summaries_dropped_total counter\n\
         edgelog_dashboard_report_summaries_dropped_total {dropped}"
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
