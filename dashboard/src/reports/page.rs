//! A report's page: its tables and charts (plotters, as the metrics pages), linked from
//! the distribution's page.

use crate::api::RANGES;
use crate::charts::{Line, PALETTE, bars_svg, lines_svg};
use crate::pages::{STYLE, bytes, escape, fill};

use super::Report;
use super::view::{Body, Named, ReportView, Timeline};

const TEMPLATE: &str = include_str!("../pages/report.html");
/// Bars a chart shows (the tables show more).
const BARS: usize = 10;

fn pct(v: f64) -> String {
    format!("{v:.1} %")
}

fn chart(slug: &str, svg: Result<String, String>) -> String {
    let svg = svg
        .unwrap_or_else(|e| format!("<p class=error>cannot draw this chart: {}</p>", escape(&e)));
    format!("<div class=chart data-chart=\"{slug}\"><div class=svg>{svg}</div></div>")
}

fn bars(slug: &str, caption: &str, rows: impl Iterator<Item = (String, f64)>) -> String {
    let rows: Vec<(String, f64)> = rows.take(BARS).collect();
    chart(
        slug,
        bars_svg(caption, &rows, (560, 60 + 26 * rows.len().max(1) as u32)),
    )
}

fn named_table(id: &str, what: &str, rows: &[Named]) -> String {
    let mut t = format!(
        "<table id={id}><tr><th>{what}</th><th>Requests</th><th>Share</th><th>Bytes</th></tr>"
    );
    for n in rows {
        t.push_str(&format!(
            "<tr><td class=key>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&n.name),
            n.requests,
            pct(n.share),
            bytes(n.bytes)
        ));
    }
    if rows.is_empty() {
        t.push_str("<tr><td colspan=4 class=muted>no requests in this range</td></tr>");
    }
    t.push_str("</table>");
    t
}

fn named_section(id: &str, title: &str, what: &str, rows: &[Named]) -> String {
    format!(
        "<h2>{title}</h2><div class=grid>{}<div>{}</div></div>",
        bars(
            id,
            &format!("{title} (requests)"),
            rows.iter().map(|n| (n.name.clone(), n.requests as f64))
        ),
        named_table(id, what, rows)
    )
}

/// `title` over time, per minute or per hour as the range is kept.
fn over_time(slug: &str, title: &str, t: &Timeline, bytes: bool, v: &ReportView) -> String {
    let caption = format!("{title} ({})", per(v));
    let lines: Vec<Line> = t
        .names
        .iter()
        .enumerate()
        .map(|(i, name)| Line {
            label: (*name).to_owned(),
            color: PALETTE[i % PALETTE.len()],
            data: t
                .points
                .iter()
                .map(|p| {
                    let x = if bytes { p.bytes[i] } else { p.requests[i] };
                    (p.start_ms, x as f64)
                })
                .collect(),
        })
        .collect();
    chart(
        slug,
        lines_svg(&caption, false, &lines, v.from_ms, v.to_ms, (640, 260)),
    )
}

fn per(v: &ReportView) -> &'static str {
    if v.step_ms >= 3_600_000 {
        "per hour"
    } else {
        "per minute"
    }
}

fn body(v: &ReportView, range: &str) -> String {
    let id = escape(&v.distribution);
    match &v.body {
        Body::Objects {
            sort,
            exact,
            others_at_most,
            objects,
        } => {
            let link = |s: &str| {
                let on = if s == *sort { " class=on" } else { "" };
                format!(
                    "<a{on} href=\"/distributions/{id}/reports/popular-objects?range={range}&amp;sort={s}\">{s}</a>"
                )
            };
            let mut t = String::from(
                "<table id=objects><tr><th>Object</th><th>Requests</th><th>Hits</th><th>Misses</th><th>Hit %</th><th>4xx</th><th>5xx</th><th>Bytes</th><th>Bytes from misses</th></tr>",
            );
            for o in objects {
                let req = if o.requests_max_error > 0 {
                    format!(
                        "{} <span class=muted>±{}</span>",
                        o.requests, o.requests_max_error
                    )
                } else {
                    o.requests.to_string()
                };
                t.push_str(&format!(
                    "<tr><td class=key>{}</td><td>{req}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&o.object),
                    o.hits,
                    o.misses,
                    o.hit_rate.map_or("–".into(), pct),
                    o.errors_4xx,
                    o.errors_5xx,
                    bytes(o.bytes),
                    bytes(o.miss_bytes)
                ));
            }
            if objects.is_empty() {
                t.push_str("<tr><td colspan=9 class=muted>no requests in this range</td></tr>");
            }
            t.push_str("</table>");
            let counts = if *exact {
                "Counts are exact"
            } else {
                "Counts are upper bounds, within the ± shown"
            };
            let bound =
                format!("{counts}; an object not listed had at most {others_at_most} requests.");
            let top = objects.iter().map(|o| {
                let v = if *sort == "bytes" {
                    o.bytes
                } else {
                    o.requests
                };
                (o.object.clone(), v as f64)
            });
            format!(
                "<p>Top {} by {} · sort by {} {} <span class=muted>{bound}</span></p><div class=grid>{}</div>{t}",
                objects.len(),
                sort,
                link("requests"),
                link("bytes"),
                bars("objects", &format!("Top objects ({sort})"), top)
            )
        }
        Body::Referrers {
            exact,
            others_at_most,
            referrers,
        } => {
            let mut t = String::from(
                "<table id=referrers><tr><th>Referrer domain</th><th>Requests</th><th>Share</th></tr>",
            );
            for r in referrers {
                let name = if r.referrer == "-" {
                    "- (direct)".to_owned()
                } else {
                    r.referrer.clone()
                };
                let req = if r.requests_max_error > 0 {
                    format!(
                        "{} <span class=muted>±{}</span>",
                        r.requests, r.requests_max_error
                    )
                } else {
                    r.requests.to_string()
                };
                t.push_str(&format!(
                    "<tr><td class=key>{}</td><td>{req}</td><td>{}</td></tr>",
                    escape(&name),
                    pct(r.share)
                ));
            }
            if referrers.is_empty() {
                t.push_str("<tr><td colspan=3 class=muted>no requests in this range</td></tr>");
            }
            t.push_str("</table>");
            let counts = if *exact {
                "Counts are exact"
            } else {
                "Counts are upper bounds, within the ± shown"
            };
            let bound =
                format!("{counts}; a domain not listed had at most {others_at_most} requests.");
            format!(
                "<p class=muted>{bound}</p><div class=grid>{}</div>{t}",
                bars(
                    "referrers",
                    "Top referrer domains (requests)",
                    referrers
                        .iter()
                        .map(|r| (r.referrer.clone(), r.requests as f64))
                )
            )
        }
        Body::Viewers {
            devices,
            browsers,
            operating_systems,
            countries,
            edge_locations,
        } => [
            named_section("devices", "Devices", "Device", devices),
            named_section("browsers", "Browsers", "Browser", browsers),
            named_section(
                "operating-systems",
                "Operating systems",
                "Operating system",
                operating_systems,
            ),
            named_section("countries", "Countries", "Country", countries),
            named_section(
                "edge-locations",
                "Edge locations",
                "Edge location",
                edge_locations,
            ),
        ]
        .concat(),
        Body::Cache {
            result_types,
            status_classes,
            gets,
            incomplete_gets,
            incomplete_get_rate,
            result_types_over_time,
            status_classes_over_time,
        } => format!(
            "<p id=incomplete>GET requests that did not finish: <b>{incomplete_gets}</b> of {gets} ({})</p>\
             <div class=grid>{}{}{}</div>\
             <div class=grid><div>{}</div><div>{}</div></div>",
            pct(*incomplete_get_rate),
            over_time(
                "result-types",
                "Requests by result type",
                result_types_over_time,
                false,
                v
            ),
            over_time(
                "result-types-bytes",
                "Bytes by result type",
                result_types_over_time,
                true,
                v
            ),
            over_time(
                "status-classes",
                "Status classes",
                status_classes_over_time,
                false,
                v
            ),
            named_table("result-types", "Result type", result_types),
            named_table("status-classes", "Status class", status_classes),
        ),
        Body::Usage {
            methods,
            protocols,
            http_versions,
            status_classes,
            methods_over_time,
            protocols_over_time,
            status_classes_over_time,
        } => format!(
            "<div class=grid>{}{}{}</div>\
             <div class=grid><div>{}</div><div>{}</div><div>{}</div><div>{}</div></div>",
            over_time("methods", "Requests by method", methods_over_time, false, v),
            over_time(
                "protocols",
                "Requests by protocol",
                protocols_over_time,
                false,
                v
            ),
            over_time(
                "status-classes",
                "Status classes",
                status_classes_over_time,
                false,
                v
            ),
            named_table("methods", "Method", methods),
            named_table("protocols", "Protocol", protocols),
            named_table("http-versions", "HTTP version", http_versions),
            named_table("status-classes", "Status class", status_classes),
        ),
    }
}

pub(crate) fn render(report: Report, v: &ReportView, range: &str) -> String {
    let id = escape(&v.distribution);
    let slug = report.slug();
    let nav: String = Report::ALL
        .iter()
        .map(|r| {
            let on = if *r == report { " class=on" } else { "" };
            format!(
                "<a{on} href=\"/distributions/{id}/reports/{}?range={range}\">{}</a>",
                r.slug(),
                r.title()
            )
        })
        .collect();
    let ranges: String = RANGES
        .iter()
        .map(|(r, _)| {
            let on = if *r == range { " class=on" } else { "" };
            format!("<a{on} href=\"/distributions/{id}/reports/{slug}?range={r}\">{r}</a>")
        })
        .collect();
    let mut note = format!("{} requests, UTC", v.requests);
    if v.step_ms >= 3_600_000 {
        note.push_str("; past the last hour, summaries are kept by the hour, so whole hours count");
    }
    if let Some(t) = v.dropped_before_ms {
        note.push_str(&format!(
            "; incomplete: summaries before {} were dropped to stay within dashboard.reports_max_bytes",
            crate::notify::rfc3339(t)
        ));
    }
    let api = format!("/api/distributions/{id}/reports/{slug}?range={range}");
    fill(
        TEMPLATE,
        &[
            ("title", report.title()),
            ("id", &id),
            ("style", STYLE),
            ("nav", &nav),
            ("ranges", &ranges),
            ("note", &note),
            ("body", &body(v, range)),
            ("api", &api),
            ("slug", slug),
        ],
    )
}
