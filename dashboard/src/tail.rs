//! Live tail: a distribution's real-time records as they are logged, filtered by the
//! server, newest to the browser as server-sent events, at most `tail_max_per_second` to
//! each (the rest counted as skipped). Records come from the in-process stream
//! (`edgelog demo`) or the real-time topic (`edgelog dashboard`), parsed once while a
//! page follows their distribution, filtered for each page and queued to it within
//! [`PAGE_BYTES`]: a page that stops reading misses records (counted) and holds no more.
//!
//! Long (about 800 lines): half of it is tests, of the filters and of the hub's bounds.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::{Extension, response::IntoResponse, response::Response};
use edgelog_collector::{StreamMessage, Streamed};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};

use crate::api::Dashboard;
use crate::auth::Scope;
use crate::error::{ApiError, Path};

/// A real-time record as the tail reads it: parsed once, for every page.
#[derive(Debug)]
pub struct TailRecord {
    /// Its distribution.
    pub key: String,
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// The CloudFront-named JSON, as sent to pages.
    pub payload: Vec<u8>,
    /// Its URL lowercased, made once for every page with a text filter.
    url: OnceLock<String>,
}

impl TailRecord {
    /// `None` for a message that is not a JSON object.
    pub fn parse(m: &StreamMessage) -> Option<TailRecord> {
        match serde_json::from_slice(&m.payload) {
            Ok(serde_json::Value::Object(fields)) => Some(TailRecord {
                key: m.key.clone(),
                fields,
                payload: m.payload.clone(),
                url: OnceLock::new(),
            }),
            _ => None,
        }
    }

    /// About what it holds in memory: the JSON three times (as text, parsed, and the
    /// lowered URL at most) and each field's map entry.
    fn memory(&self) -> usize {
        // A BTreeMap entry with its key and value allocations: 160-210 bytes measured.
        std::mem::size_of::<TailRecord>()
            + self.key.len()
            + 3 * self.payload.len()
            + 192 * self.fields.len()
    }
}

/// Bytes of matched records waiting for one page. A page that stops reading (a laptop
/// asleep with the tab open) misses records past this, counted, instead of holding them.
pub const PAGE_BYTES: usize = 2 << 20;

/// Matched records waiting for one page, at most.
const PAGE_RECORDS: usize = 4096;

/// The pages following real-time records. Each record is parsed once, only when a page
/// follows its distribution, and queued to each page whose filter it matches, within
/// the page's bytes: a page that does not read misses records and holds no more.
pub struct TailHub {
    pages: Mutex<Vec<Arc<Page>>>,
    page_bytes: usize,
    /// Records the stream dropped before any page could see them, since the start.
    lost: AtomicU64,
}

/// Where real-time records come from.
pub type TailSource = Arc<TailHub>;

/// One page following a distribution.
struct Page {
    dist: String,
    filter: Filter,
    tx: mpsc::Sender<Arc<TailRecord>>,
    /// Bytes of records queued for it.
    queued: AtomicUsize,
    matched: AtomicU64,
    /// Records that matched but that it missed: its queue was full.
    behind: AtomicU64,
    /// The hub's `lost` when it began following.
    lost_before: u64,
}

/// A page's place in the hub: its records; it leaves the hub when dropped.
pub struct Follower {
    hub: Arc<TailHub>,
    page: Arc<Page>,
    rx: mpsc::Receiver<Arc<TailRecord>>,
}

impl Follower {
    /// The next record that matched (it waits for one: the page holds its own sender).
    pub async fn next(&mut self) -> Option<Arc<TailRecord>> {
        let r = self.rx.recv().await?;
        self.page.queued.fetch_sub(r.memory(), Ordering::Relaxed);
        Some(r)
    }

    /// Records that matched its filter so far, and of those the ones it missed because it
    /// did not read them in time: `sent + skipped + behind`, plus those still queued.
    pub fn counts(&self) -> (u64, u64) {
        // `behind` first: each is counted after its `matched` (Release), so a count read
        // here never shows more missed than matched.
        let behind = self.page.behind.load(Ordering::Acquire);
        (self.page.matched.load(Ordering::Acquire), behind)
    }

    /// Records of any distribution the stream dropped before the filters, while it followed.
    pub fn lost(&self) -> u64 {
        self.hub
            .lost
            .load(Ordering::Relaxed)
            .saturating_sub(self.page.lost_before)
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.hub.lock().retain(|p| !Arc::ptr_eq(p, &self.page));
    }
}

impl TailHub {
    /// A hub with [`PAGE_BYTES`] for each page.
    pub fn new() -> Arc<TailHub> {
        TailHub::with_page_bytes(PAGE_BYTES)
    }

    /// With `page_bytes` of records waiting for each page at most.
    pub fn with_page_bytes(page_bytes: usize) -> Arc<TailHub> {
        Arc::new(TailHub {
            pages: Mutex::default(),
            page_bytes,
            lost: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Page>>> {
        // A panic while holding the lock leaves a plain list behind; keep going.
        self.pages.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows `dist`'s records that pass `filter`, from now on.
    pub fn follow(self: &Arc<TailHub>, dist: String, filter: Filter) -> Follower {
        let (tx, rx) = mpsc::channel(PAGE_RECORDS);
        let page = Arc::new(Page {
            dist,
            filter,
            tx,
            queued: AtomicUsize::new(0),
            matched: AtomicU64::new(0),
            behind: AtomicU64::new(0),
            lost_before: self.lost.load(Ordering::Relaxed),
        });
        self.lock().push(page.clone());
        Follower {
            hub: self.clone(),
            page,
            rx,
        }
    }

    /// Pages following now.
    pub fn pages(&self) -> usize {
        self.lock().len()
    }

    /// `n` records were dropped before reaching the hub (its reader fell behind the
    /// stream): every page open counts them as `lost`.
    pub fn lose(&self, n: u64) {
        self.lost.fetch_add(n, Ordering::Relaxed);
    }

    /// Feeds the pages from the in-process stream until it closes. What the stream drops
    /// before this reader has it (`Lagged`, or refused for the stream's bytes, counted in
    /// `refused`) is lost for every page open then.
    pub async fn follow_stream(
        self: Arc<TailHub>,
        mut records: broadcast::Receiver<Arc<Streamed>>,
        refused: Arc<AtomicU64>,
    ) {
        use broadcast::error::RecvError;
        let mut seen = refused.load(Ordering::Relaxed);
        loop {
            match records.recv().await {
                Ok(m) => {
                    let now = refused.load(Ordering::Relaxed);
                    self.lose(now.saturating_sub(seen));
                    seen = now;
                    self.feed(&m);
                }
                Err(RecvError::Lagged(n)) => {
                    metrics::counter!("edgelog_realtime_stream_missed_total").increment(n);
                    self.lose(n);
                }
                Err(RecvError::Closed) => break,
            }
        }
    }

    /// Hands a real-time message to the pages following its distribution.
    pub fn feed(&self, m: &StreamMessage) {
        let pages: Vec<Arc<Page>> = self
            .lock()
            .iter()
            .filter(|p| p.dist == m.key)
            .cloned()
            .collect();
        if pages.is_empty() {
            return;
        }
        let Some(r) = TailRecord::parse(m) else {
            return;
        };
        let (r, bytes) = {
            let bytes = r.memory();
            (Arc::new(r), bytes)
        };
        for p in pages {
            if !p.filter.matches_with(&r.fields, &r.url) {
                continue;
            }
            p.matched.fetch_add(1, Ordering::Release);
            // Counted before it is sent, so the reader never takes back more than this.
            if p.queued.fetch_add(bytes, Ordering::Relaxed) + bytes > self.page_bytes {
                p.queued.fetch_sub(bytes, Ordering::Relaxed);
                p.behind.fetch_add(1, Ordering::Release);
                continue;
            }
            if let Err(e) = p.tx.try_send(r.clone()) {
                p.queued.fetch_sub(bytes, Ordering::Relaxed);
                if matches!(e, mpsc::error::TrySendError::Full(_)) {
                    p.behind.fetch_add(1, Ordering::Release);
                }
            }
        }
    }
}

/// The longest a page's stream lasts: the browser reconnects, and a page that stopped
/// reading gives its slot back.
const MAX_TAIL: Duration = Duration::from_secs(30 * 60);

/// How often the counts go to the browser.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// Filters of `GET /api/distributions/{id}/tail`; all given must match.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TailQuery {
    /// `5xx` (a class) or `503` (a status).
    pub status: Option<String>,
    /// The URL path starts with this.
    pub path: Option<String>,
    /// `x-edge-location` is this (ignoring case).
    pub location: Option<String>,
    /// `c-ip` is this address or in this prefix (`203.0.113.0/24`, `2001:db8::/32`).
    pub ip: Option<String>,
    /// `x-edge-result-type` is this (ignoring case): Hit, Miss, Error...
    pub result: Option<String>,
    /// The URL (path and query) holds this text (ignoring case).
    pub q: Option<String>,
}

#[derive(Debug)]
enum Status {
    Class(u16),
    Exact(u16),
}

/// A parsed [`TailQuery`].
#[derive(Debug)]
pub struct Filter {
    status: Option<Status>,
    path: Option<String>,
    location: Option<String>,
    ip: Option<(IpAddr, u8)>,
    result: Option<String>,
    text: Option<String>,
}

/// Longest filter value taken.
const MAX_FILTER_BYTES: usize = 1024;

impl Filter {
    pub fn parse(q: &TailQuery) -> Result<Filter, String> {
        let given = |v: &Option<String>, name: &str| -> Result<Option<String>, String> {
            match v.as_deref().map(str::trim) {
                None | Some("") => Ok(None),
                Some(s) if s.len() > MAX_FILTER_BYTES => {
                    Err(format!("{name}: at most {MAX_FILTER_BYTES} bytes"))
                }
                Some(s) => Ok(Some(s.to_owned())),
            }
        };
        let status = match given(&q.status, "status")? {
            None => None,
            Some(s) => {
                let lower = s.to_ascii_lowercase();
                let bad = || {
                    format!("status: {s:?} is not a class (1xx to 5xx) or a status (100 to 599)")
                };
                let digits =
                    |t: &str, n: usize| t.len() == n && t.bytes().all(|b| b.is_ascii_digit());
                if let Some(c) = lower.strip_suffix("xx") {
                    match c.parse::<u16>() {
                        Ok(class @ 1..=5) if digits(c, 1) => Some(Status::Class(class)),
                        _ => return Err(bad()),
                    }
                } else {
                    match lower.parse::<u16>() {
                        Ok(n @ 100..=599) if digits(&lower, 3) => Some(Status::Exact(n)),
                        _ => return Err(bad()),
                    }
                }
            }
        };
        let ip = match given(&q.ip, "ip")? {
            None => None,
            Some(s) => Some(parse_prefix(&s).ok_or_else(|| {
                format!("ip: {s:?} is not an address or a prefix such as 203.0.113.0/24")
            })?),
        };
        Ok(Filter {
            status,
            path: given(&q.path, "path")?,
            location: given(&q.location, "location")?.map(|s| s.to_ascii_lowercase()),
            ip,
            result: given(&q.result, "result")?.map(|s| s.to_ascii_lowercase()),
            text: given(&q.q, "q")?.map(|s| s.to_lowercase()),
        })
    }

    /// Whether the record (CloudFront-named JSON) passes.
    pub fn matches(&self, r: &serde_json::Map<String, serde_json::Value>) -> bool {
        self.matches_with(r, &OnceLock::new())
    }

    /// [`Filter::matches`], with the record's URL lowercased once for every page (it was
    /// made for each page and each record: a few pages searching text stalled the tail).
    fn matches_with(
        &self,
        r: &serde_json::Map<String, serde_json::Value>,
        url: &OnceLock<String>,
    ) -> bool {
        let text = |k: &str| r.get(k).and_then(|v| v.as_str());
        if let Some(s) = &self.status {
            let Some(n) = r.get("sc-status").and_then(|v| v.as_u64()) else {
                return false;
            };
            let ok = match s {
                Status::Class(c) => n / 100 == u64::from(*c),
                Status::Exact(e) => n == u64::from(*e),
            };
            if !ok {
                return false;
            }
        }
        if let Some(p) = &self.path
            && !text("cs-uri-stem").is_some_and(|u| u.starts_with(p.as_str()))
        {
            return false;
        }
        if let Some(l) = &self.location
            && !text("x-edge-location").is_some_and(|x| x.eq_ignore_ascii_case(l))
        {
            return false;
        }
        if let Some(t) = &self.result
            && !text("x-edge-result-type").is_some_and(|x| x.eq_ignore_ascii_case(t))
        {
            return false;
        }
        if let Some((net, bits)) = &self.ip {
            let Some(ip) = text("c-ip").and_then(|s| s.parse::<IpAddr>().ok()) else {
                return false;
            };
            // ::ffff:203.0.113.9 is 203.0.113.9.
            let ip = ip.to_canonical();
            if !in_prefix(ip, *net, *bits) {
                return false;
            }
        }
        if let Some(q) = &self.text {
            let url = url.get_or_init(|| {
                let stem = text("cs-uri-stem").unwrap_or_default();
                let query = text("cs-uri-query").unwrap_or_default();
                format!("{stem}?{query}").to_lowercase()
            });
            if !url.contains(q.as_str()) {
                return false;
            }
        }
        true
    }
}

fn parse_prefix(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, bits) = match s.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        Some(b) if !b.is_empty() && b.len() <= 3 && b.bytes().all(|c| c.is_ascii_digit()) => {
            b.parse::<u8>().ok().filter(|b| *b <= max)?
        }
        Some(_) => return None,
        None => max,
    };
    // An IPv4-mapped prefix (::ffff:a.b.c.d/120) means the IPv4 one.
    match ip {
        IpAddr::V6(v6) if bits >= 96 => match v6.to_ipv4_mapped() {
            Some(v4) => Some((IpAddr::V4(v4), bits - 96)),
            None => Some((ip, bits)),
        },
        _ => Some((ip, bits)),
    }
}

fn in_prefix(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// At most `rate` in each second (the seconds between two `stats` events).
struct Bucket {
    rate: u64,
    used: u64,
}

impl Bucket {
    fn take(&mut self) -> bool {
        if self.used < self.rate {
            self.used += 1;
            true
        } else {
            false
        }
    }

    fn next_second(&mut self) {
        self.used = 0;
    }
}

struct Tail {
    follower: Follower,
    /// The token sees every distribution.
    full_scope: bool,
    bucket: Bucket,
    next_stats: Instant,
    ends: Instant,
    closing: tokio::sync::watch::Receiver<bool>,
    _viewer: tokio::sync::OwnedSemaphorePermit,
    sent: u64,
    skipped: u64,
}

/// `GET /api/distributions/{id}/tail?status=&path=&location=&ip=&result=&q=`: server-sent
/// events, `record` (the record as CloudFront-named JSON) and, every second, `stats`
/// (`sent`, `matched`, `skipped`: matched but over the rate; `behind`: matched but missed
/// because the page was not reading them, past [`PAGE_BYTES`] waiting for it; `lost`, to
/// a token that sees every distribution: records of any distribution dropped before the
/// filters, the in-process stream's reader behind).
pub(crate) async fn tail(
    State(d): State<Dashboard>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
    q: Result<Query<TailQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    scope.check(&id)?;
    edgelog_record::check_distribution_id(&id).map_err(ApiError::BadTail)?;
    let Query(q) = q.map_err(|e| ApiError::BadTail(e.body_text()))?;
    let filter = Filter::parse(&q).map_err(ApiError::BadTail)?;
    let source = d.tail.clone().ok_or(ApiError::NoTail)?;
    let viewer = d
        .tail_viewers
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::TooManyTails(d.tail_limits.max_viewers))?;
    let state = Tail {
        follower: source.follow(id, filter),
        full_scope: scope.is_full(),
        bucket: Bucket {
            rate: u64::from(d.tail_limits.max_per_second),
            used: 0,
        },
        next_stats: Instant::now(),
        ends: Instant::now() + MAX_TAIL,
        closing: d.closing.clone(),
        _viewer: viewer,
        sent: 0,
        skipped: 0,
    };
    let events = futures::stream::unfold(state, |mut t| async move {
        loop {
            if *t.closing.borrow() || Instant::now() >= t.ends {
                return None;
            }
            let wait = t.next_stats.saturating_duration_since(Instant::now());
            tokio::select! {
                r = t.follower.next() => match r {
                    Some(m) => {
                        if !t.bucket.take() {
                            t.skipped += 1;
                            continue;
                        }
                        t.sent += 1;
                        let data = String::from_utf8_lossy(&m.payload).into_owned();
                        return Some((Ok::<_, Infallible>(Event::default().event("record").data(data)), t));
                    }
                    None => return None,
                },
                () = tokio::time::sleep(wait) => {
                    t.next_stats = Instant::now() + STATS_EVERY;
                    t.bucket.next_second();
                    let (matched, behind) = t.follower.counts();
                    let mut stats = serde_json::json!({"sent": t.sent, "matched": matched, "skipped": t.skipped, "behind": behind});
                    // Any distribution's: not for a token that sees only some.
                    if t.full_scope {
                        stats["lost"] = t.follower.lost().into();
                    }
                    return Some((Ok(Event::default().event("stats").data(stats.to_string())), t));
                }
                _ = t.closing.changed() => return None,
            }
        }
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Limits of the live tail.
#[derive(Debug, Clone, Copy)]
pub struct TailLimits {
    pub max_per_second: u32,
    pub max_viewers: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        match v {
            serde_json::Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn filter(q: TailQuery) -> Filter {
        Filter::parse(&q).expect("filter")
    }

    #[test]
    fn filters_match_what_they_say() {
        let r = rec(
            serde_json::json!({"sc-status": 503, "cs-uri-stem": "/img/a.png", "cs-uri-query": "v=2",
            "x-edge-location": "IAD89-C1", "c-ip": "203.0.113.7", "x-edge-result-type": "Error"}),
        );
        let yes = [
            TailQuery {
                status: Some("5xx".into()),
                ..Default::default()
            },
            TailQuery {
                status: Some("503".into()),
                ..Default::default()
            },
            TailQuery {
                status: Some("5XX".into()),
                path: Some("/img".into()),
                ..Default::default()
            },
            TailQuery {
                location: Some("iad89-c1".into()),
                ..Default::default()
            },
            TailQuery {
                ip: Some("203.0.113.0/24".into()),
                ..Default::default()
            },
            TailQuery {
                ip: Some("203.0.113.7".into()),
                ..Default::default()
            },
            TailQuery {
                ip: Some("0.0.0.0/0".into()),
                ..Default::default()
            },
            TailQuery {
                result: Some("error".into()),
                ..Default::default()
            },
            TailQuery {
                q: Some("A.PNG?V=2".into()),
                ..Default::default()
            },
            TailQuery {
                status: Some("".into()),
                ..Default::default()
            },
        ];
        for q in yes {
            assert!(filter(q).matches(&r));
        }
        let no = [
            TailQuery {
                status: Some("4xx".into()),
                ..Default::default()
            },
            TailQuery {
                status: Some("500".into()),
                ..Default::default()
            },
            TailQuery {
                path: Some("/css".into()),
                ..Default::default()
            },
            TailQuery {
                ip: Some("203.0.114.0/24".into()),
                ..Default::default()
            },
            TailQuery {
                ip: Some("2001:db8::/32".into()),
                ..Default::default()
            },
            TailQuery {
                result: Some("Hit".into()),
                ..Default::default()
            },
        ];
        for q in no {
            assert!(!filter(q).matches(&r));
        }
        for bad in ["6xx", "0xx", "99", "600", "abc", "-1", "1e3", "5x"] {
            assert!(
                Filter::parse(&TailQuery {
                    status: Some(bad.into()),
                    ..Default::default()
                })
                .is_err(),
                "{bad}"
            );
        }
        for bad in ["1.2.3", "203.0.113.0/33", "::/129", "x/8", "203.0.113.0/-1"] {
            assert!(
                Filter::parse(&TailQuery {
                    ip: Some(bad.into()),
                    ..Default::default()
                })
                .is_err(),
                "{bad}"
            );
        }
        let long = "a".repeat(MAX_FILTER_BYTES + 1);
        assert!(
            Filter::parse(&TailQuery {
                q: Some(long),
                ..Default::default()
            })
            .is_err()
        );
        // A record without the field does not match a filter on it.
        assert!(
            !filter(TailQuery {
                status: Some("5xx".into()),
                ..Default::default()
            })
            .matches(&rec(serde_json::json!({})))
        );
    }

    #[test]
    fn tail_limits_at_and_past_their_ends() {
        let with = |per_second: u32, viewers: usize| {
            crate::DashboardConfig {
                tail_max_per_second: per_second,
                tail_max_viewers: viewers,
                ..Default::default()
            }
            .validate()
        };
        assert!(with(1, 1).is_ok() && with(10_000, 1_000).is_ok());
        for (r, v) in [
            (0, 32),
            (10_001, 32),
            (u32::MAX, 32),
            (200, 0),
            (200, 1_001),
            (200, usize::MAX),
        ] {
            let e = with(r, v).expect_err("refused");
            assert!(e.contains("dashboard.tail_max_"), "{e}");
        }
    }

    #[test]
    fn the_bucket_lets_the_rate_through_each_second() {
        let mut b = Bucket { rate: 200, used: 0 };
        assert_eq!((0..1000).filter(|_| b.take()).count(), 200);
        b.next_second();
        assert_eq!((0..1000).filter(|_| b.take()).count(), 200);
    }

    #[test]
    fn mapped_addresses_and_strict_numbers() {
        let r = rec(serde_json::json!({"c-ip": "::ffff:203.0.113.9", "sc-status": 503}));
        for ip in ["203.0.113.0/24", "0.0.0.0/0", "::ffff:203.0.113.0/120"] {
            assert!(
                filter(TailQuery {
                    ip: Some(ip.into()),
                    ..Default::default()
                })
                .matches(&r),
                "{ip}"
            );
        }
        let v4 = rec(serde_json::json!({"c-ip": "203.0.113.9"}));
        assert!(
            filter(TailQuery {
                ip: Some("::ffff:203.0.113.0/120".into()),
                ..Default::default()
            })
            .matches(&v4)
        );
        for bad in ["+503", "0503", "05xx", "+5xx", "5xxx"] {
            assert!(
                Filter::parse(&TailQuery {
                    status: Some(bad.into()),
                    ..Default::default()
                })
                .is_err(),
                "{bad}"
            );
        }
        for bad in ["1.2.3.4/+8", "1.2.3.4/", "1.2.3.4/0008"] {
            assert!(
                Filter::parse(&TailQuery {
                    ip: Some(bad.into()),
                    ..Default::default()
                })
                .is_err(),
                "{bad}"
            );
        }
    }

    fn message(dist: &str, status: u16, filler: usize) -> StreamMessage {
        let payload = serde_json::json!({"DistributionId": dist, "sc-status": status,
            "cs-uri-query": "q".repeat(filler)})
        .to_string()
        .into_bytes();
        StreamMessage {
            key: dist.into(),
            sample_rate: 100.0,
            schema_version: 1,
            payload,
        }
    }

    fn now<T>(f: impl std::future::Future<Output = T>) -> Option<T> {
        use futures::FutureExt;
        f.now_or_never()
    }

    #[test]
    fn a_page_that_does_not_read_misses_records_and_holds_no_more_than_its_bytes() {
        let one = TailRecord::parse(&message("EA", 503, 10_000))
            .expect("json")
            .memory();
        let hub = TailHub::with_page_bytes(10 * one);
        let mut asleep = hub.follow("EA".into(), filter(TailQuery::default()));
        let mut awake = hub.follow(
            "EA".into(),
            filter(TailQuery {
                status: Some("5xx".into()),
                ..Default::default()
            }),
        );
        for i in 0..100 {
            hub.feed(&message("EA", if i % 2 == 0 { 503 } else { 200 }, 10_000));
            // The awake page reads as it goes; the other never does.
            if i % 2 == 0 {
                assert!(now(awake.next()).flatten().is_some(), "record {i}");
            }
        }
        assert_eq!(asleep.counts(), (100, 90));
        assert_eq!(awake.counts(), (50, 0));
        assert_eq!(asleep.page.queued.load(Ordering::Relaxed), 10 * one);
        // What it reads gives its bytes back, and it gets records again.
        for _ in 0..10 {
            assert!(now(asleep.next()).flatten().is_some());
        }
        assert_eq!(asleep.page.queued.load(Ordering::Relaxed), 0);
        assert!(now(asleep.next()).is_none(), "nothing more queued");
        hub.feed(&message("EA", 200, 10));
        assert!(now(asleep.next()).flatten().is_some());
        assert_eq!(asleep.counts(), (101, 90));
    }

    #[test]
    fn a_record_past_the_bytes_is_missed_not_held() {
        let hub = TailHub::with_page_bytes(1000);
        let mut page = hub.follow("EA".into(), filter(TailQuery::default()));
        hub.feed(&message("EA", 200, 5000));
        assert_eq!(page.counts(), (1, 1));
        assert!(now(page.next()).is_none());
        hub.feed(&message("EA", 200, 10));
        assert!(now(page.next()).flatten().is_some());
    }

    #[test]
    fn records_go_only_to_pages_of_their_distribution_and_a_page_leaves_when_dropped() {
        let hub = TailHub::with_page_bytes(PAGE_BYTES);
        // Not JSON: dropped if parsed; unfollowed, it is not even looked at.
        let bad = StreamMessage {
            payload: b"not json".to_vec(),
            ..message("EB", 200, 0)
        };
        hub.feed(&bad);
        let mut page = hub.follow("EA".into(), filter(TailQuery::default()));
        let other = hub.follow("EB".into(), filter(TailQuery::default()));
        assert_eq!(hub.pages(), 2);
        hub.feed(&message("EC", 200, 0));
        hub.feed(&bad);
        hub.feed(&message("EA", 200, 0));
        assert_eq!((page.counts().0, other.counts().0), (1, 0));
        assert!(now(page.next()).flatten().is_some());
        drop(other);
        assert_eq!(hub.pages(), 1);
        drop(page);
        assert_eq!(hub.pages(), 0);
        hub.feed(&message("EA", 200, 0));
    }

    #[test]
    fn a_full_queue_counts_as_behind() {
        let hub = TailHub::with_page_bytes(usize::MAX / 2);
        let page = hub.follow("EA".into(), filter(TailQuery::default()));
        for _ in 0..PAGE_RECORDS + 5 {
            hub.feed(&message("EA", 200, 0));
        }
        assert_eq!(page.counts(), ((PAGE_RECORDS + 5) as u64, 5));
    }

    #[test]
    fn what_the_stream_dropped_counts_as_lost_for_pages_open_then() {
        let hub = TailHub::with_page_bytes(PAGE_BYTES);
        hub.lose(3);
        let early = hub.follow("EA".into(), filter(TailQuery::default()));
        hub.lose(5);
        let late = hub.follow("EB".into(), filter(TailQuery::default()));
        hub.lose(2);
        assert_eq!((early.lost(), late.lost()), (7, 2));
    }

    #[test]
    fn the_text_filter_lowers_a_record_once_for_every_page() {
        // What each page computed before, for every record.
        let before = |r: &serde_json::Map<String, serde_json::Value>, q: &str| {
            let t = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or_default();
            let url = format!("{}?{}", t("cs-uri-stem"), t("cs-uri-query")).to_lowercase();
            url.contains(&q.trim().to_lowercase())
        };
        for r in [
            serde_json::json!({"cs-uri-stem": "/ÄBC", "cs-uri-query": "Q=Straße"}),
            serde_json::json!({"cs-uri-query": "ΟΔΟΣ"}),
            serde_json::json!({"cs-uri-stem": 5, "cs-uri-query": "İx"}),
            serde_json::json!({}),
        ] {
            let r = rec(r);
            let url = OnceLock::new();
            // A page whose status does not match stops before the text: no URL made.
            let status = filter(TailQuery {
                status: Some("5xx".into()),
                q: Some("x".into()),
                ..Default::default()
            });
            assert!(!status.matches_with(&r, &url));
            assert!(url.get().is_none());
            for q in [
                "äbc", "straße", "/äbc?q=", "nope", "οδος", "οδοσ", "i̇x", "?", "ix",
            ] {
                let f = filter(TailQuery {
                    q: Some(q.into()),
                    ..Default::default()
                });
                assert_eq!(f.matches_with(&r, &url), before(&r, q), "{q:?} in {r:?}");
            }
            assert!(url.get().is_some());
        }
    }

    #[tokio::test]
    async fn follow_stream_counts_what_the_stream_refused_and_what_it_overwrote() {
        use edgelog_collector::Bus;
        let one = message("EA", 200, 1000).memory();
        // 4 messages at most, 3 of these in bytes.
        let bus = Bus::with_bytes(4, 3 * one);
        let hub = TailHub::with_page_bytes(PAGE_BYTES);
        let page = hub.follow("EA".into(), filter(TailQuery::default()));
        let records = bus.subscribe_records();
        let task = tokio::spawn(hub.clone().follow_stream(records, bus.refusals()));
        // The reader waits for its first message (this test's runtime has one thread).
        tokio::task::yield_now().await;
        // Before it runs again: 3 held, 2 refused for the bytes.
        for _ in 0..5 {
            bus.send_record(message("EA", 200, 1000));
        }
        assert_eq!(bus.refused(), 2);
        tokio::time::timeout(Duration::from_secs(10), async {
            while page.counts().0 < 3 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the 3 held are fed");
        assert_eq!((page.counts().0, page.lost()), (3, 2));
        // Past the count with small messages: the oldest are overwritten, then lagged.
        let small = Bus::with_bytes(4, usize::MAX / 2);
        let records = small.subscribe_records();
        for _ in 0..10 {
            small.send_record(message("EA", 200, 0));
        }
        drop(small);
        hub.clone().follow_stream(records, Arc::default()).await;
        assert_eq!(page.lost(), 2 + 6);
        assert_eq!(page.counts().0, 3 + 4);
        drop(bus);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("ends when the stream closes")
            .expect("task");
    }
}
