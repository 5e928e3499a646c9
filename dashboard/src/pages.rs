//! The HTML pages: the overview, and a page per distribution with its charts.

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use crate::api::{Dashboard, RANGES, range_ms};
use crate::error::{ApiError, Path, Query};
use crate::metrics::MinutePoint;
use crate::store::{last_complete_minute, now_ms, window};
use crate::{alarms, charts};

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em 2em;color:#222;background:#f6f7f9}\
a{color:#1f6fb4}h1{margin:.2em 0}h2{margin-top:1.2em}\
table{border-collapse:collapse;background:#fff}td,th{padding:.35em .9em;text-align:right;border-bottom:1px solid #eee}\
td:first-child,th:first-child{text-align:left}.ALARM{color:#c0392b;font-weight:bold}.OK{color:#27ae60;font-weight:bold}\
.INSUFFICIENT_DATA{color:#7f8c8d;font-weight:bold}.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:1em}\
.chart{background:#fff;border:1px solid #e3e5e8;border-radius:6px;padding:.5em}.chart svg{width:100%;height:auto}\
.chart .links{font-size:.85em;text-align:right}.ranges a{margin-right:.8em}.ranges a.on{font-weight:bold;text-decoration:none;color:#222}\
.muted{color:#777;font-size:.9em}";

fn alarm_state_name(s: alarms::AlarmState) -> &'static str {
    match s {
        alarms::AlarmState::Ok => "OK",
        alarms::AlarmState::Alarm => "ALARM",
        alarms::AlarmState::InsufficientData => "INSUFFICIENT_DATA",
    }
}

fn chart_card(
    points: &[MinutePoint],
    id: &str,
    c: charts::Chart,
    range: &str,
    range_ms: i64,
) -> String {
    let (svg, shown) = chart_svg(points, c, range_ms);
    let base = format!("/api/distributions/{}", escape(id));
    format!(
        "<div class=chart data-chart=\"{slug}\" data-points=\"{shown}\"><div class=svg>{svg}</div>\
         <div class=links>data: <a href=\"{base}/series?range={range}&amp;format=csv&amp;chart={slug}\" download>CSV</a> \
         <a href=\"{base}/series?range={range}\" download=\"{slug}.json\">JSON</a></div></div>",
        slug = c.slug()
    )
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    range: Option<String>,
}

/// `/distributions/{id}`: its alarms and charts, redrawn every 10 s.
pub(crate) async fn distribution(
    State(d): State<Dashboard>,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let range = q.range.unwrap_or_else(|| "1h".into());
    let ms = range_ms(Some(&range))?.unwrap_or(3_600_000);
    let points = d
        .store
        .recent(&id, ms)
        .ok_or_else(|| ApiError::UnknownDistribution(id.clone()))?;
    let eid = escape(&id);
    let ranges: String = RANGES
        .iter()
        .map(|(r, _)| {
            let on = if *r == range { " class=on" } else { "" };
            format!("<a{on} href=\"/distributions/{eid}?range={r}\">{r}</a>")
        })
        .collect();
    let six: String = charts::DEFAULT_CHARTS
        .iter()
        .map(|c| chart_card(&points, &id, *c, &range, ms))
        .collect();
    let more: String = charts::ADDITIONAL_CHARTS
        .iter()
        .map(|c| chart_card(&points, &id, *c, &range, ms))
        .collect();
    let alarm_rows = alarm_rows(&d, Some(&id));
    Ok(Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><meta name=viewport content=\"width=device-width\">\
         <title>{eid} · edgelog</title><style>{STYLE}</style></head><body>\
         <p><a href=\"/\">← all distributions</a></p><h1>{eid}</h1>\
         <p class=ranges>Last: {ranges} <span class=muted>per minute, by event time, UTC; updates every 10 s</span></p>\
         <h2>Alarms</h2><table id=alarms><tr><th>Alarm</th><th>State</th><th>Last datapoints</th></tr>{alarm_rows}</table>\
         <h2>CloudFront metrics</h2><div class=grid id=default-charts>{six}</div>\
         <h2>Additional metrics</h2><div class=grid id=additional-charts>{more}</div>\
         <script>\
         const id = {id_json}, range = {range_json};\
         async function refresh() {{\
           for (const el of document.querySelectorAll('.chart')) {{\
             const r = await fetch(`/api/distributions/${{encodeURIComponent(id)}}/charts/${{el.dataset.chart}}?range=${{range}}`);\
             if (r.ok) el.querySelector('.svg').innerHTML = await r.text();\
           }}\
           const a = await fetch('/api/alarms');\
           if (a.ok) {{\
             const rows = (await a.json()).filter(s => s.distribution === id);\
             const t = document.getElementById('alarms');\
             t.querySelectorAll('tr.alarm').forEach(r => r.remove());\
             for (const s of rows) {{\
               const tr = t.insertRow(); tr.className = 'alarm';\
               const st = s.state;\
               tr.insertCell().textContent = s.alarm;\
               const c = tr.insertCell(); c.textContent = st; c.className = st;\
               tr.insertCell().textContent = s.datapoints.map(v => v === null ? '–' : v.toFixed(1)).join(', ');\
             }}\
           }}\
         }}\
         setInterval(refresh, 10000);\
         </script></body></html>",
        id_json = serde_json::to_string(&id).unwrap_or_default(),
        range_json = serde_json::to_string(&range).unwrap_or_default(),
    ))
    .into_response())
}

/// `0.4 %, 12.1 %, –`: the datapoints of the last evaluation.
fn datapoints_text(points: &[Option<f64>]) -> String {
    points
        .iter()
        .map(|p| p.map_or("–".to_owned(), |v| format!("{v:.1}")))
        .collect::<Vec<_>>()
        .join(", ")
}

fn alarm_rows(d: &Dashboard, only: Option<&str>) -> String {
    let mut rows = String::new();
    for a in d.alarms.statuses() {
        if only.is_some_and(|id| id != a.distribution) {
            continue;
        }
        let st = alarm_state_name(a.state);
        let dist = if only.is_some() {
            String::new()
        } else {
            format!("<td>{}</td>", escape(&a.distribution))
        };
        rows.push_str(&format!(
            "<tr class=alarm><td>{}</td>{dist}<td class={st}>{st}</td><td>{}</td></tr>",
            escape(&a.alarm),
            datapoints_text(&a.datapoints)
        ));
    }
    rows
}

/// One chart of `points` over the last `range` ms, and how many minutes in it have data.
pub(crate) fn chart_svg(
    points: &[MinutePoint],
    chart: charts::Chart,
    range: i64,
) -> (String, usize) {
    let (from, to) = window(points, range);
    let shown = points
        .iter()
        .filter(|p| (from..to).contains(&p.minute_ms))
        .filter(|p| chart.lines().iter().any(|(_, get, _)| get(p).is_some()))
        .count();
    let svg = charts::render(chart, points, from, to, (640, 260))
        .unwrap_or_else(|e| format!("<p class=error>cannot draw this chart: {e}</p>"));
    (svg, shown)
}

/// `/`: every distribution's last complete minute and alarms, and every alarm.
pub(crate) async fn overview(State(d): State<Dashboard>) -> Html<String> {
    let states = d.alarms.statuses();
    let mut rows = String::new();
    for id in d.store.distributions() {
        let Some(recent) = d.store.recent(&id, 3_600_000) else {
            continue;
        };
        // The last complete minute, quiet (0 requests, no rates) when it has no data.
        let last = d
            .store
            .minute(&id, last_complete_minute(now_ms()))
            .unwrap_or_default();
        let worst = states
            .iter()
            .filter(|s| s.distribution == id)
            .map(|s| alarm_state_name(s.state))
            .max_by_key(|s| match *s {
                "ALARM" => 2,
                "INSUFFICIENT_DATA" => 1,
                _ => 0,
            })
            .unwrap_or("");
        let eid = escape(&id);
        rows.push_str(&format!(
            "<tr><td><a href=\"/distributions/{eid}\">{eid}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class={worst}>{worst}</td></tr>",
            charts::sparkline(&recent, 160, 28),
            last.requests,
            bytes(last.bytes_downloaded),
            percent_text(last.error_rate_4xx),
            percent_text(last.error_rate_5xx),
            percent_text(last.total_error_rate)
        ));
    }
    let alarm_rows = alarm_rows(&d, None);
    Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=10><title>edgelog</title>\
         <style>{STYLE}</style></head><body><h1>edgelog</h1>\
         <p class=muted>Last complete minute per distribution; the line is requests per minute over the last hour.</p>\
         <table><tr><th>Distribution</th><th>Last hour</th><th>Requests</th><th>BytesDownloaded</th><th>4xxErrorRate</th><th>5xxErrorRate</th><th>TotalErrorRate</th><th>Alarms</th></tr>{rows}</table>\
         <h2>Alarms</h2><table><tr><th>Alarm</th><th>Distribution</th><th>State</th><th>Last datapoints</th></tr>{alarm_rows}</table>\
         <p class=muted><a href=\"/api/alarms/history\">alarm history</a> · <a href=\"/metrics\">Prometheus</a></p></body></html>"
    ))
}

/// `1.25 %`, or `–` for no data.
fn percent_text(p: Option<f64>) -> String {
    p.map_or_else(|| "–".to_owned(), |v| format!("{v:.2} %"))
}

fn bytes(n: u64) -> String {
    let n = n as f64;
    match n {
        n if n >= 1e9 => format!("{:.1} GB", n / 1e9),
        n if n >= 1e6 => format!("{:.1} MB", n / 1e6),
        n if n >= 1e3 => format!("{:.1} kB", n / 1e3),
        n => format!("{n} B"),
    }
}
