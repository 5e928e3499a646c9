//! The HTML pages: the overview, and a page per distribution with its charts, both from
//! the templates under `pages/`.

use axum::Extension;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use crate::api::{Dashboard, RANGES, range_ms};
use crate::auth::Scope;
use crate::charts::{self, Chart};
use crate::error::{ApiError, Path, Query};
use crate::metrics::{Metric, MinutePoint};
use crate::store::{last_complete_minute, now_ms, window};

pub(crate) const STYLE: &str = include_str!("pages/style.css");
const OVERVIEW: &str = include_str!("pages/overview.html");
const DISTRIBUTION: &str = include_str!("pages/distribution.html");
const DISTRIBUTION_JS: &str = include_str!("pages/distribution.js");
const TAIL: &str = include_str!("pages/tail.html");
const TAIL_JS: &str = include_str!("pages/tail.js");

/// `template` with each `{{name}}` replaced by its value. One pass: a value (which may
/// hold anything a distribution id holds) is never read as a template.
pub(crate) fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some((name, tail)) = rest[start + 2..].split_once("}}") else {
            break;
        };
        out.push_str(&rest[..start]);
        match values.iter().find(|(n, _)| *n == name) {
            Some((_, v)) => out.push_str(v),
            None => out.push_str(&rest[start..start + name.len() + 4]),
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// `s` without the characters that could hide or reorder what a page shows (controls,
/// bidirectional marks and overrides, separators, BOM): each becomes U+FFFD.
pub(crate) fn visible(s: &str) -> std::borrow::Cow<'_, str> {
    let hidden = |c: char| {
        (c.is_control() && c != '\t' && c != '\n')
            || matches!(
                c,
                '\u{200e}'
                    | '\u{200f}'
                    | '\u{061c}'
                    | '\u{2028}'
                    | '\u{2029}'
                    | '\u{feff}'
                    | '\u{202a}'..='\u{202e}'
                    | '\u{2066}'..='\u{2069}'
            )
    };
    if s.chars().any(hidden) {
        s.chars()
            .map(|c| if hidden(c) { '\u{fffd}' } else { c })
            .collect::<String>()
            .into()
    } else {
        s.into()
    }
}

/// Text for HTML: markup escaped, and only [`visible`] characters.
pub(crate) fn escape(s: &str) -> String {
    let s = visible(s);
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One chart of `points` over the last `range` ms, and how many minutes in it have data.
pub(crate) fn chart_svg(points: &[MinutePoint], chart: Chart, range: i64) -> (String, usize) {
    let (from, to) = window(points, range);
    let shown = points
        .iter()
        .filter(|p| (from..to).contains(&p.minute_ms))
        .filter(|p| chart.lines().iter().any(|m| (m.get)(p).is_some()))
        .count();
    let svg = charts::render(chart, points, from, to, (640, 260))
        .unwrap_or_else(|e| format!("<p class=error>cannot draw this chart: {e}</p>"));
    (svg, shown)
}

fn chart_card(points: &[MinutePoint], id: &str, c: Chart, range: &str, range_ms: i64) -> String {
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
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Response, ApiError> {
    scope.check(&id)?;
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
    let cards = |list: &[Chart]| -> String {
        list.iter()
            .map(|c| chart_card(&points, &id, *c, &range, ms))
            .collect()
    };
    let script = fill(
        DISTRIBUTION_JS,
        &[
            ("id_json", &script_json(&id)),
            ("range_json", &script_json(&range)),
        ],
    );
    let page = fill(
        DISTRIBUTION,
        &[
            ("id", &eid),
            ("style", STYLE),
            ("ranges", &ranges),
            ("alarm_rows", &alarm_rows(&d, &scope, Some(&id))),
            ("default_charts", &cards(&charts::DEFAULT_CHARTS)),
            ("additional_charts", &cards(&charts::ADDITIONAL_CHARTS)),
            ("script", &script),
        ],
    );
    Ok(Html(page).into_response())
}

/// A distribution's live tail (records arrive through `/api/distributions/{id}/tail`).
pub(crate) async fn tail(
    State(d): State<Dashboard>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    scope.check(&id)?;
    edgelog_record::check_distribution_id(&id).map_err(ApiError::BadTail)?;
    let script = fill(TAIL_JS, &[("id_json", &script_json(&id))]);
    let page = fill(
        TAIL,
        &[
            ("id", &escape(&id)),
            ("style", STYLE),
            ("rate", &d.tail_limits.max_per_second.to_string()),
            ("script", &script),
        ],
    );
    Ok(Html(page).into_response())
}

/// `0.4 %, 12.1 %, –`: the datapoints of the last evaluation.
fn datapoints_text(points: &[Option<f64>]) -> String {
    points
        .iter()
        .map(|p| p.map_or("–".to_owned(), |v| format!("{v:.1}")))
        .collect::<Vec<_>>()
        .join(", ")
}

fn alarm_rows(d: &Dashboard, scope: &Scope, only: Option<&str>) -> String {
    let mut rows = String::new();
    for a in d.alarms.statuses() {
        if only.is_some_and(|id| id != a.distribution) || !scope.sees(&a.distribution) {
            continue;
        }
        let st = a.state.name();
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

/// How a column of the overview shows a minute.
type Show = fn(&MinutePoint) -> String;

/// The overview's metric columns.
const OVERVIEW_COLUMNS: [(Metric, Show); 5] = [
    (Metric::Requests, |p| p.requests.to_string()),
    (Metric::BytesDownloaded, |p| bytes(p.bytes_downloaded)),
    (Metric::ErrorRate4xx, |p| percent_text(p.error_rate_4xx)),
    (Metric::ErrorRate5xx, |p| percent_text(p.error_rate_5xx)),
    (Metric::TotalErrorRate, |p| percent_text(p.total_error_rate)),
];

/// `/`: every distribution's last complete minute and alarms, and every alarm.
pub(crate) async fn overview(
    State(d): State<Dashboard>,
    Extension(scope): Extension<Scope>,
) -> Html<String> {
    let states = d.alarms.statuses();
    let mut rows = String::new();
    for id in d
        .store
        .distributions()
        .into_iter()
        .filter(|id| scope.sees(id))
    {
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
            .map(|s| s.state.name())
            .max_by_key(|s| match *s {
                "ALARM" => 2,
                "INSUFFICIENT_DATA" => 1,
                _ => 0,
            })
            .unwrap_or("");
        let eid = escape(&id);
        let cells: String = OVERVIEW_COLUMNS
            .iter()
            .map(|(_, show)| format!("<td>{}</td>", show(&last)))
            .collect();
        rows.push_str(&format!(
            "<tr><td><a href=\"/distributions/{eid}\">{eid}</a></td><td>{}</td>{cells}<td class={worst}>{worst}</td></tr>",
            charts::sparkline(&recent, 160, 28),
        ));
    }
    let headers: String = OVERVIEW_COLUMNS
        .iter()
        .map(|(m, _)| format!("<th>{}</th>", m.name()))
        .collect();
    Html(fill(
        OVERVIEW,
        &[
            ("style", STYLE),
            ("metric_headers", &headers),
            ("rows", &rows),
            ("alarm_rows", &alarm_rows(&d, &scope, None)),
        ],
    ))
}

/// `1.25 %`, or `–` for no data.
fn percent_text(p: Option<f64>) -> String {
    p.map_or_else(|| "–".to_owned(), |v| format!("{v:.2} %"))
}

pub(crate) fn bytes(n: u64) -> String {
    let n = n as f64;
    match n {
        n if n >= 1e9 => format!("{:.1} GB", n / 1e9),
        n if n >= 1e6 => format!("{:.1} MB", n / 1e6),
        n if n >= 1e3 => format!("{:.1} kB", n / 1e3),
        n => format!("{n} B"),
    }
}

/// A string as a JavaScript literal that is safe inside `<script>`: `<` is escaped, so
/// an id holding `</script>` (one read from a metrics topic is not checked by a
/// collector) cannot end the script.
fn script_json(s: &str) -> String {
    serde_json::to_string(s)
        .unwrap_or_default()
        .replace('<', "\\u003c")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_filled_in_one_pass() {
        assert_eq!(
            fill("a{{x}}b{{y}}c", &[("x", "{{y}}"), ("y", "2")]),
            "a{{y}}b2c"
        );
        assert_eq!(fill("{{unknown}} {{x", &[("x", "1")]), "{{unknown}} {{x");
        for (template, names) in [
            (
                OVERVIEW,
                &["style", "metric_headers", "rows", "alarm_rows"][..],
            ),
            (
                DISTRIBUTION,
                &[
                    "id",
                    "style",
                    "ranges",
                    "alarm_rows",
                    "default_charts",
                    "additional_charts",
                    "script",
                ],
            ),
            (DISTRIBUTION_JS, &["id_json", "range_json"]),
        ] {
            let values: Vec<(&str, &str)> = names.iter().map(|n| (*n, "")).collect();
            assert!(!fill(template, &values).contains("{{"), "{template}");
            for n in names {
                assert!(template.contains(&format!("{{{{{n}}}}}")), "{n} unused");
            }
        }
    }
}
