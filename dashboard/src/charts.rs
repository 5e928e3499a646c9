//! Charts drawn on the server with plotters, as SVG: one per metric, per minute, with
//! labelled axes and units.

use std::fmt::Write as _;

use plotters::prelude::*;
use serde::Serialize;

use crate::MinutePoint;

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

type Line = (&'static str, fn(&MinutePoint) -> Option<f64>, RGBColor);

const BLUE: RGBColor = RGBColor(0x1f, 0x6f, 0xb4);
const ORANGE: RGBColor = RGBColor(0xe6, 0x7e, 0x22);
const RED: RGBColor = RGBColor(0xc0, 0x39, 0x2b);
const PURPLE: RGBColor = RGBColor(0x8e, 0x44, 0xad);
const GREEN: RGBColor = RGBColor(0x27, 0xae, 0x60);
const GREY: RGBColor = RGBColor(0x7f, 0x8c, 0x8d);

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
            Chart::Requests => "Requests",
            Chart::BytesDownloaded => "BytesDownloaded",
            Chart::BytesUploaded => "BytesUploaded",
            Chart::ErrorRate4xx => "4xxErrorRate",
            Chart::ErrorRate5xx => "5xxErrorRate",
            Chart::TotalErrorRate => "TotalErrorRate",
            Chart::CacheHitRate => "CacheHitRate",
            Chart::OriginLatency => "OriginLatency",
            Chart::ErrorRatesByStatus => "401 to 504 error rates",
        }
    }

    /// What the y axis measures.
    pub fn unit(self) -> &'static str {
        match self {
            Chart::Requests => "requests per minute",
            Chart::BytesDownloaded | Chart::BytesUploaded => "bytes per minute",
            Chart::OriginLatency => "milliseconds",
            _ => "percent of requests",
        }
    }

    /// The series drawn, with their JSON/CSV column names.
    pub fn lines(self) -> Vec<Line> {
        match self {
            Chart::Requests => vec![("requests", |p| Some(p.requests as f64), BLUE)],
            Chart::BytesDownloaded => {
                vec![(
                    "bytes_downloaded",
                    |p| Some(p.bytes_downloaded as f64),
                    BLUE,
                )]
            }
            Chart::BytesUploaded => {
                vec![("bytes_uploaded", |p| Some(p.bytes_uploaded as f64), BLUE)]
            }
            Chart::ErrorRate4xx => vec![("error_rate_4xx", |p| Some(p.error_rate_4xx), ORANGE)],
            Chart::ErrorRate5xx => vec![("error_rate_5xx", |p| Some(p.error_rate_5xx), RED)],
            Chart::TotalErrorRate => {
                vec![("total_error_rate", |p| Some(p.total_error_rate), PURPLE)]
            }
            Chart::CacheHitRate => vec![("cache_hit_rate", |p| Some(p.cache_hit_rate), GREEN)],
            Chart::OriginLatency => vec![
                ("origin_latency_p50_ms", |p| p.origin_latency_p50_ms, BLUE),
                ("origin_latency_p90_ms", |p| p.origin_latency_p90_ms, ORANGE),
                ("origin_latency_p99_ms", |p| p.origin_latency_p99_ms, RED),
            ],
            Chart::ErrorRatesByStatus => vec![
                ("error_rate_401", |p| Some(p.error_rate_401), GREY),
                ("error_rate_403", |p| Some(p.error_rate_403), PURPLE),
                ("error_rate_404", |p| Some(p.error_rate_404), ORANGE),
                ("error_rate_502", |p| Some(p.error_rate_502), RED),
                ("error_rate_503", |p| Some(p.error_rate_503), BLUE),
                ("error_rate_504", |p| Some(p.error_rate_504), GREEN),
            ],
        }
    }
}

/// `1.5k`, `2.3M`, `4.1G`: short tick labels.
fn si(v: f64) -> String {
    let a = v.abs();
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

/// Draws `chart` over `[from_ms, to_ms)` as an SVG document.
pub fn render(
    chart: Chart,
    points: &[MinutePoint],
    from_ms: i64,
    to_ms: i64,
    size: (u32, u32),
) -> Result<String, String> {
    let lines = chart.lines();
    let mut y_max: f64 = 0.0;
    for p in points {
        for (_, get, _) in &lines {
            if let Some(v) = get(p) {
                y_max = y_max.max(v);
            }
        }
    }
    let y_max = match chart.unit() {
        "percent of requests" => (y_max * 1.15).clamp(1.0, 100.0),
        _ => (y_max * 1.15).max(1.0),
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut ctx = ChartBuilder::on(&root)
            .caption(
                format!("{} ({})", chart.title(), chart.unit()),
                ("sans-serif", 17),
            )
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
        for (name, get, color) in &lines {
            let data: Vec<(i64, f64)> = points
                .iter()
                .filter(|p| (from_ms..to_ms).contains(&p.minute_ms))
                .filter_map(|p| Some((p.minute_ms, get(p)?)))
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
                    .label(
                        name.trim_start_matches("origin_latency_")
                            .trim_start_matches("error_rate_"),
                    )
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

/// A tiny requests-per-minute line for the overview table.
pub fn sparkline(points: &[MinutePoint], width: u32, height: u32) -> String {
    let max = points.iter().map(|p| p.requests).max().unwrap_or(0).max(1) as f64;
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return String::new();
    };
    let span = (last.minute_ms - first.minute_ms).max(1) as f64;
    let mut pts = String::new();
    for p in points {
        let x = (p.minute_ms - first.minute_ms) as f64 / span * f64::from(width - 2) + 1.0;
        let y = f64::from(height - 2) * (1.0 - p.requests as f64 / max) + 1.0;
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
    for (name, _, _) in &lines {
        out.push(',');
        out.push_str(name);
    }
    out.push('\n');
    for p in points {
        let mut date = String::new();
        edgelog_record::time::write_date(&mut date, p.minute_ms);
        let _ = write!(out, "{date}T{}:00Z,{}", hh_mm(p.minute_ms), p.minute_ms);
        for (_, get, _) in &lines {
            out.push(',');
            if let Some(v) = get(p) {
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
                error_rate_5xx: if i > 40 { 12.5 } else { 0.5 },
                origin_latency_p50_ms: Some(20.0),
                origin_latency_p99_ms: Some(180.0),
                ..MinutePoint::default()
            })
            .collect()
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
    }
}
