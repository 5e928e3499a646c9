//! CloudFront's reports for a distribution, from the summaries the collectors publish
//! with their minute aggregates: popular objects, top referrers, viewers, cache
//! statistics and usage, as pages, JSON and CSV.

mod page;
mod store;
mod view;

use axum::Extension;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Json, Response};
use serde::Deserialize;

pub use store::{MINUTE_RESOLUTION_MS, Merged, Moment, ReportStore};
pub use view::{ReportView, Sort, TOP_OBJECTS, TOP_REFERRERS};

use crate::api::{Dashboard, range_ms};
use crate::auth::Scope;
use crate::error::{ApiError, Path, Query};

/// One of the reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    PopularObjects,
    TopReferrers,
    Viewers,
    CacheStatistics,
    Usage,
}

impl Report {
    pub const ALL: [Report; 5] = [
        Report::PopularObjects,
        Report::TopReferrers,
        Report::Viewers,
        Report::CacheStatistics,
        Report::Usage,
    ];

    pub fn slug(self) -> &'static str {
        match self {
            Report::PopularObjects => "popular-objects",
            Report::TopReferrers => "top-referrers",
            Report::Viewers => "viewers",
            Report::CacheStatistics => "cache-statistics",
            Report::Usage => "usage",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Report::PopularObjects => "Popular objects",
            Report::TopReferrers => "Top referrers",
            Report::Viewers => "Viewers",
            Report::CacheStatistics => "Cache statistics",
            Report::Usage => "Usage",
        }
    }

    fn named(slug: &str) -> Result<Report, ApiError> {
        Report::ALL
            .into_iter()
            .find(|r| r.slug() == slug)
            .ok_or_else(|| ApiError::UnknownReport(slug.to_owned()))
    }
}

/// `?range=1h|3h|12h|24h` (default 1h), `format=json|csv`, `sort=requests|bytes`
/// (popular objects).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReportQuery {
    range: Option<String>,
    format: Option<String>,
    sort: Option<String>,
}

impl ReportQuery {
    fn sort(&self) -> Result<Sort, ApiError> {
        match self.sort.as_deref() {
            None | Some("requests") => Ok(Sort::Requests),
            Some("bytes") => Ok(Sort::Bytes),
            Some(s) => Err(ApiError::BadSort(s.to_owned())),
        }
    }
}

/// The report of `id` over the query's range, checked against the token's scope.
fn view(
    d: &Dashboard,
    scope: &Scope,
    id: &str,
    slug: &str,
    q: &ReportQuery,
) -> Result<(Report, ReportView, String), ApiError> {
    scope.check(id)?;
    let report = Report::named(slug)?;
    let range = q.range.clone().unwrap_or_else(|| "1h".into());
    let ms = range_ms(Some(&range))?.unwrap_or(3_600_000);
    let sort = q.sort()?;
    let (merged, window) = d
        .store
        .reports(id, ms)
        .ok_or_else(|| ApiError::UnknownDistribution(id.to_owned()))?;
    Ok((
        report,
        view::build(report, id, &merged, sort, window),
        range,
    ))
}

/// `GET /api/distributions/{id}/reports/{report}`.
pub(crate) async fn api(
    State(d): State<Dashboard>,
    Extension(scope): Extension<Scope>,
    Path((id, slug)): Path<(String, String)>,
    Query(q): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    let (report, v, range) = view(&d, &scope, &id, &slug, &q)?;
    match q.format.as_deref() {
        None | Some("json") => Ok(Json(v).into_response()),
        Some("csv") => {
            let name = format!("{id}-{}-{range}.csv", report.slug());
            Ok((
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{}\"", name.replace('"', "_")),
                    ),
                ],
                view::csv(&v),
            )
                .into_response())
        }
        Some(f) => Err(ApiError::BadFormat(f.to_owned())),
    }
}

/// `GET /distributions/{id}/reports/{report}`.
pub(crate) async fn page(
    State(d): State<Dashboard>,
    Extension(scope): Extension<Scope>,
    Path((id, slug)): Path<(String, String)>,
    Query(q): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    let (report, v, range) = view(&d, &scope, &id, &slug, &q)?;
    Ok(Html(page::render(report, &v, &range)).into_response())
}
