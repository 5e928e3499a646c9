//! Charts drawn on the server with plotters, as SVG: one per metric, per minute, with
//! labelled axes and units.

use std::fmt::Write as _;

use plotters::prelude::*;
use serde::Serialize;

use crate::metrics::{METRICS, MetricDef, MinutePoint, Unit};

/// What one chart shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Chart {
    Requests,
    BytesDownloaded,
    BytesUploaded,
    ErrorRate4xx,
    ErrorRate5xx,
    TotalErrorRate,
    CacheHitRate,
    OriginLatency,
    ErrorRatesByStatus,
}

/// CloudFront's six default metrics, in CloudFront's order.
pub const DEFAULT_CHARTS: [Chart; 6] = [
    Chart::Requests,
    Chart::BytesDownloaded,
    Chart::BytesUploaded,
    Chart::ErrorRate4xx,
    Chart::ErrorRate5xx,
    Chart::TotalErrorRate,
];

/// The additional metrics.
pub const ADDITIONAL_CHARTS: [Chart; 3] = [
    Chart::CacheHitRate,
    Chart::OriginLatency,
    Chart::ErrorRatesByStatus,
];

impl Chart {
    /// The name in URLs and the API (`requests`, `5xx-error-rate`, ...).
    pub fn slug(self) -> &'static str {
        match self {
            Chart::Requests => "requests",
            Chart::BytesDownloaded => "bytes-downloaded",
            Chart::BytesUploaded => "bytes-uploaded",
            Chart::ErrorRate4xx => "4xx-error-rate",
            Chart::ErrorRate5xx => "5xx-error-rate",
            Chart::TotalErrorRate => "total-error-rate",
            Chart::CacheHitRate => "cache-hit-rate",
            Chart::OriginLatency => "origin-latency",
            Chart::ErrorRatesByStatus => "error-rates-by-status",
        }
    }

    pub fn from_slug(s: &str) -> Option<Chart> {
        DEFAULT_CHARTS
            .iter()
            .chain(&ADDITIONAL_CHARTS)
            .copied()
            .find(|c| c.slug() == s)
    }

    /// CloudFront's metric name.
    pub fn title(self) -> &'static str {
        match self {
            Chart::OriginLatency => "OriginLatency",
            Chart::ErrorRatesByStatus => "401 to 504 error rates",
            _ => self.first_line().map_or("", |m| m.label),
        }
    }

    /// What the y axis measures.
    pub fn unit(self) -> &'static str {
        self.first_line().map_or("", |m| m.unit.axis())
    }

    fn first_line(self) -> Option<&'static MetricDef> {
        METRICS.iter().find(|m| m.chart == self)
    }

    /// The series drawn (their `column`s name them in JSON and CSV).
    pub fn lines(self) -> Vec<&'static MetricDef> {
        METRICS.iter().filter(|m| m.chart == self).collect()
    }
}

/// `1.5k`, `2.3M`, `4.1G`: short tick labels (`2.5e18` past 10^15).
fn si(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() || a >= 1e15 {
        return format!("{v:.1e}");
    }
    let (x, suffix) = if a >= 1e12 {
        (v / 1e12, "T")
    } else if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    if x.fract().abs() < 1e-9 {
        format!("{x:.0}{suffix}")
    } else {
        format!("{x:.1}{suffix}")
    }
}

fn hh_mm(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (h, m) = (secs.rem_euclid(86_400) / 3600, secs.rem_euclid(3600) / 60);
    format!("{h:02}:{m:02}")
}

/// The largest value a chart's axis goes to. Axis ticks are computed by dividing the
/// range by powers of ten: with an infinite or overflowing range that never ends, so
/// every value is brought within this first.
const Y_CAP: f64 = 1e300;

/// The longest span a chart shows: a month, in ms.
const MAX_SPAN_MS: i64 = 31 * 86_400_000;

/// A value as a chart draws it: within `[0, cap]`; NaN is no point.
fn drawable(v: f64, cap: f64) -> Option<f64> {
    (!v.is_nan()).then(|| v.clamp(0.0, cap))
}

/// The top of the y axis for the largest value drawn: 15 % of headroom, at least 1 (a
/// flat zero line stays visible), percentages at most 100, never past [`Y_CAP`].
#[cfg(test)]
fn y_top(chart: Chart, largest: f64) -> f64 {
    y_top_of(is_percent(chart), largest)
}

fn is_percent(chart: Chart) -> bool {
    matches!(chart.first_line().map(|m| m.unit), Some(Unit::Percent))
}

fn y_top_of(percent: bool, largest: f64) -> f64 {
    let top = (largest * 1.15).clamp(1.0, Y_CAP);
    if percent { top.min(100.0) } else { top }
}

/// One series of a line chart.
pub struct Line {
    pub label: String,
    pub color: RGBColor,
    /// `(ms, value)`, any values (see [`lines_svg`]).
    pub data: Vec<(i64, f64)>,
}

/// Colours of the series of a report's charts, in order.
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
];

/// Draws `chart` over `[from_ms, to_ms)` as an SVG document. Any values are fine: NaN is
/// left out, infinities and values past 10^300 (or past 100 for a percentage) are drawn at
/// the top, negative ones at 0; an empty or reversed span becomes a minute, a span
/// longer than a month is cut to its last month.
pub fn render(
    chart: Chart,
    points: &[MinutePoint],
    from_ms: i64,
    to_ms: i64,
    size: (u32, u32),
) -> Result<String, String> {
    let defs = chart.lines();
    let lines: Vec<Line> = defs
        .iter()
        .map(|m| Line {
            label: m
                .column
                .trim_start_matches("origin_latency_")
                .trim_start_matches("error_rate_")
                .to_owned(),
            color: m.color,
            data: points
                .iter()
                .filter_map(|p| Some((p.minute_ms, (m.get)(p)?)))
                .collect(),
        })
        .collect();
    let percent = is_percent(chart);
    let caption = format!("{} ({})", chart.title(), chart.unit());
    lines_svg(&caption, percent, &lines, from_ms, to_ms, size)
}

/// Draws `lines` over `[from_ms, to_ms)` as an SVG document, with a legend when there
/// are several. Values are brought within bounds as [`render`] says.
pub fn lines_svg(
    caption: &str,
    percent: bool,
    lines: &[Line],
    from_ms: i64,
    to_ms: i64,
    size: (u32, u32),
) -> Result<String, String> {
    let to_ms = to_ms.max(from_ms.saturating_add(60_000));
    let from_ms = from_ms.max(to_ms.saturating_sub(MAX_SPAN_MS));
    let in_span = |(x, _): &&(i64, f64)| (from_ms..to_ms).contains(x);
    let largest = lines
        .iter()
        .flat_map(|l| l.data.iter().filter(in_span))
        .filter_map(|(_, v)| drawable(*v, Y_CAP))
        .fold(0.0, f64::max);
    let y_max = y_top_of(percent, largest);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut ctx = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 17))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(52)
            .build_cartesian_2d(from_ms..to_ms, 0.0..y_max)
            .map_err(|e| e.to_string())?;
        ctx.configure_mesh()
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(0xe4, 0xe4, 0xe4))
            .x_labels(7)
            .y_labels(6)
            .x_label_formatter(&|ms| hh_mm(*ms))
            .y_label_formatter(&|v| si(*v))
            .x_desc("UTC")
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| e.to_string())?;
        for l in lines {
            let color = l.color;
            let data: Vec<(i64, f64)> = l
                .data
                .iter()
                .filter(in_span)
                .filter_map(|(x, v)| Some((*x, drawable(*v, y_max)?)))
                .collect();
            // Dots too: a lone minute (a new distribution) has no line to draw.
            ctx.draw_series(
                data.iter()
                    .map(|(x, y)| Circle::new((*x, *y), 2, color.filled())),
            )
            .map_err(|e| e.to_string())?;
            let series = ctx
                .draw_series(LineSeries::new(data, color.stroke_width(2)))
                .map_err(|e| e.to_string())?;
            if lines.len() > 1 {
                series
                    .label(crate::pages::visible(&l.label))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
                    });
            }
        }
        if lines.len() > 1 {
            ctx.configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(0xcc, 0xcc, 0xcc))
                .label_font(("sans-serif", 11))
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Horizontal bars, one per `(label, value)` in order, as an SVG document (values
/// brought within bounds as in [`render`]; labels cut to 40 characters).
pub fn bars_svg(caption: &str, bars: &[(String, f64)], size: (u32, u32)) -> Result<String, String> {
    let n = bars.len().max(1) as i32;
    let largest = bars
        .iter()
        .filter_map(|(_, v)| drawable(*v, Y_CAP))
        .fold(0.0, f64::max);
    let x_max = (largest * 1.1).clamp(1.0, Y_CAP);
    // Segment 0 is at the bottom: the first bar goes at the top. Labels show only visible
    // characters (plotters escapes markup, not bidirectional overrides).
    let label = |seg: i32| -> String {
        let i = n - 1 - seg;
        let Some((l, _)) = usize::try_from(i).ok().and_then(|i| bars.get(i)) else {
            return String::new();
        };
        let l = crate::pages::visible(l);
        match l.char_indices().nth(40) {
            Some((cut, _)) => format!("{}…", &l[..cut]),
            None => l.into_owned(),
        }
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut ctx = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 17))
            .margin(8)
            .x_label_area_size(24)
            .y_label_area_size(170)
            .build_cartesian_2d(0.0..x_max, (0..n).into_segmented())
            .map_err(|e| e.to_string())?;
        ctx.configure_mesh()
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(0xe4, 0xe4, 0xe4))
            .disable_y_mesh()
            .x_labels(5)
            .y_labels(bars.len().max(1))
            .x_label_formatter(&|v| si(*v))
            .y_label_formatter(&|seg| match seg {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => label(*i),
                SegmentValue::Last => String::new(),
            })
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(|e| e.to_string())?;
        ctx.draw_series(bars.iter().enumerate().filter_map(|(i, (_, v))| {
            let v = drawable(*v, x_max)?;
            let i = n - 1 - i as i32;
            let mut r = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(i)),
                    (v, SegmentValue::Exact(i + 1)),
                ],
                PALETTE[0].filled(),
            );
            r.set_margin(3, 3, 0, 0);
            Some(r)
        }))
        .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// A tiny requests-per-minute line for the overview table.
pub fn sparkline(points: &[MinutePoint], width: u32, height: u32) -> String {
    let max = points.iter().map(|p| p.requests).max().unwrap_or(0).max(1) as f64;
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return String::new();
    };
    let span = (last.minute_ms as f64 - first.minute_ms as f64).max(1.0);
    let (w, h) = (
        f64::from(width.saturating_sub(2)),
        f64::from(height.saturating_sub(2)),
    );
    let mut pts = String::new();
    for p in points {
        let x = (p.minute_ms as f64 - first.minute_ms as f64) / span * w + 1.0;
        let y = h * (1.0 - p.requests as f64 / max) + 1.0;
        let _ = write!(pts, "{x:.1},{y:.1} ");
    }
    format!(
        "<svg class=\"spark\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\"><polyline fill=\"none\" stroke=\"#1f6fb4\" stroke-width=\"1.5\" points=\"{}\"/></svg>",
        pts.trim_end()
    )
}

/// The points of a chart as CSV: `minute` (RFC 3339), `minute_ms`, then its columns.
pub fn csv(chart: Option<Chart>, points: &[MinutePoint]) -> String {
    let lines = chart.map_or_else(
        || {
            DEFAULT_CHARTS
                .iter()
                .chain(&ADDITIONAL_CHARTS)
                .flat_map(|c| c.lines())
                .collect()
        },
        Chart::lines,
    );
    let mut out = String::from("minute,minute_ms");
    for m in &lines {
        out.push(',');
        out.push_str(m.column);
    }
    out.push('\n');
    for p in points {
        let mut date = String::new();
        edgelog_record::time::write_date(&mut date, p.minute_ms);
        let _ = write!(out, "{date}T{}:00Z,{}", hh_mm(p.minute_ms), p.minute_ms);
        for m in &lines {
            out.push(',');
            if let Some(v) = (m.get)(p) {
                let _ = write!(out, "{v}");
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points() -> Vec<MinutePoint> {
        (0..60)
            .map(|i| MinutePoint {
                minute_ms: i * 60_000,
                requests: 1000 + i as u64 * 10,
                error_rate_5xx: Some(if i > 40 { 12.5 } else { 0.5 }),
                origin_latency_p50_ms: Some(20.0),
                origin_latency_p99_ms: Some(180.0),
                ..all(i * 60_000, 1.5)
            })
            .collect()
    }

    #[test]
    fn bars_draw_absurd_values_within_bounds() {
        for v in [f64::NAN, f64::INFINITY, -1.0, 1e302, u64::MAX as f64, 0.0] {
            let svg = bars_svg("t", &[("a".into(), v), ("b".into(), 1.0)], (400, 120));
            assert!(svg.is_ok_and(|s| s.contains("<svg")), "{v}");
        }
        assert!(bars_svg("t", &[], (400, 120)).is_ok(), "no bars");
    }

    #[test]
    fn chart_labels_show_no_hidden_characters() {
        let hostile = "/a\u{202e}gnp.exe\u{1b}[31m\u{0}\u{2067}x\u{feff}";
        let bars = bars_svg("t", &[(hostile.to_owned(), 3.0)], (400, 120)).unwrap_or_default();
        let lines = lines_svg(
            "t",
            false,
            &[
                Line {
                    label: hostile.to_owned(),
                    color: PALETTE[0],
                    data: vec![(0, 1.0)],
                },
                Line {
                    label: "b".into(),
                    color: PALETTE[1],
                    data: vec![(0, 2.0)],
                },
            ],
            0,
            60_000,
            (400, 200),
        )
        .unwrap_or_default();
        for svg in [bars, lines] {
            assert!(svg.contains("gnp.exe"), "the label is drawn");
            for c in ['\u{202e}', '\u{1b}', '\u{0}', '\u{2067}', '\u{feff}'] {
                assert!(!svg.contains(c), "{c:?} in the chart");
            }
        }
    }

    #[test]
    fn every_chart_renders_an_svg_with_its_title_and_unit() {
        for c in DEFAULT_CHARTS.iter().chain(&ADDITIONAL_CHARTS) {
            let svg = render(*c, &points(), 0, 3_600_000, (640, 280)).expect("renders");
            assert!(svg.starts_with("<svg"), "{c:?}");
            assert!(svg.contains(c.title()) && svg.contains(c.unit()), "{c:?}");
            assert!(svg.contains("<polyline"), "{c:?} draws no line");
            assert!(svg.contains("<circle"), "{c:?} draws no points");
            assert_eq!(Chart::from_slug(c.slug()), Some(*c));
        }
    }

    #[test]
    fn csv_has_one_row_per_minute_and_the_chart_columns() {
        let text = csv(Some(Chart::ErrorRate5xx), &points());
        let mut rows = text.lines();
        assert_eq!(rows.next(), Some("minute,minute_ms,error_rate_5xx"));
        assert_eq!(rows.next(), Some("1970-01-01T00:00:00Z,0,0.5"));
        assert_eq!(text.lines().count(), 61);
        assert_eq!(si(2_500_000.0), "2.5M");
        assert_eq!(si(2.5e18), "2.5e18");
    }

    /// Every metric of a minute set to `v`.
    fn all(minute_ms: i64, v: f64) -> MinutePoint {
        MinutePoint {
            minute_ms,
            requests: if v.is_finite() && v >= 0.0 {
                v as u64
            } else {
                u64::MAX
            },
            bytes_downloaded: v.abs().min(u64::MAX as f64) as u64,
            bytes_uploaded: u64::MAX,
            error_rate_4xx: Some(v),
            error_rate_5xx: Some(v),
            total_error_rate: Some(v),
            cache_hit_rate: Some(v),
            error_rate_401: Some(v),
            error_rate_403: Some(v),
            error_rate_404: Some(v),
            error_rate_502: Some(v),
            error_rate_503: Some(v),
            error_rate_504: Some(v),
            origin_latency_p50_ms: Some(v),
            origin_latency_p90_ms: Some(v),
            origin_latency_p99_ms: Some(v),
        }
    }

    /// Series that once made the axis code loop forever or draw garbage.
    fn extreme_series() -> Vec<(&'static str, Vec<MinutePoint>)> {
        let specials = [
            1e302,
            f64::MAX,
            -f64::MAX,
            f64::MIN_POSITIVE,
            1e-300,
            5e-324,
            0.0,
            -0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e15,
            u64::MAX as f64,
        ];
        let mut out: Vec<(&'static str, Vec<MinutePoint>)> = Vec::new();
        for v in specials {
            out.push(("a single point", vec![all(0, v)]));
            out.push(("all equal", (0..60).map(|i| all(i * 60_000, v)).collect()));
        }
        out.push((
            "a huge range",
            (0..60)
                .map(|i| all(i * 60_000, if i % 2 == 0 { 1e-300 } else { 1e302 }))
                .collect(),
        ));
        out.push((
            "everything at once",
            specials
                .iter()
                .enumerate()
                .map(|(i, v)| all(i as i64 * 60_000, *v))
                .collect(),
        ));
        out.push(("nothing", Vec::new()));
        out.push((
            "no data in any minute",
            (0..60).map(|i| MinutePoint::quiet(i * 60_000)).collect(),
        ));
        out
    }

    #[test]
    fn every_chart_draws_extreme_series_in_bounded_time() {
        // A hang detector, not a benchmark: the drawing runs on its own thread and the
        // test fails if it is not done in 10 s (it takes milliseconds).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let spans = [
                (0, 3_600_000),
                (0, 0),
                (3_600_000, 0),
                (i64::MIN, i64::MAX),
                (i64::MAX - 1, i64::MAX),
            ];
            for (what, points) in extreme_series() {
                for c in DEFAULT_CHARTS.iter().chain(&ADDITIONAL_CHARTS) {
                    for (from, to) in spans {
                        let svg = render(*c, &points, from, to, (640, 260))
                            .unwrap_or_else(|e| panic!("{c:?}, {what}, {from}..{to}: {e}"));
                        assert!(svg.starts_with("<svg"), "{c:?}, {what}");
                        assert!(
                            !svg.contains("NaN") && !svg.contains("inf"),
                            "{c:?}, {what}"
                        );
                    }
                }
                let line = sparkline(&points, 160, 28);
                assert!(!line.contains("NaN") && !line.contains("inf"), "{what}");
                sparkline(&points, 0, 0);
                csv(None, &points);
            }
            let _ = tx.send(());
        });
        match rx.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(()) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("drawing extreme series did not finish in 10 s")
            }
            Err(e) => panic!("drawing extreme series failed: {e}"),
        }
    }

    #[test]
    fn axes_stay_finite_and_bounded() {
        for c in DEFAULT_CHARTS.iter().chain(&ADDITIONAL_CHARTS) {
            for v in [0.0, 1e-300, 1.0, 1e302, f64::MAX, f64::INFINITY] {
                let top = y_top(*c, drawable(v, Y_CAP).unwrap_or(0.0));
                assert!(
                    top.is_finite() && (1.0..=Y_CAP).contains(&top),
                    "{c:?} {v}: {top}"
                );
            }
        }
        assert_eq!(y_top(Chart::ErrorRate5xx, 250.0), 100.0);
        assert_eq!(drawable(f64::NAN, 1.0), None);
        assert_eq!(drawable(-5.0, 1.0), Some(0.0));
    }
}
