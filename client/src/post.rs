//! One batch to the collector, retried until it is answered: [`Poster`].

use std::io::Write;
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::ClientError;

/// Compression of request bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    #[default]
    Gzip,
    Zstd,
}

impl Compression {
    fn header(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some("gzip"),
            Compression::Zstd => Some("zstd"),
        }
    }
}

/// Compresses a body.
pub fn compress(raw: &[u8], c: Compression) -> Bytes {
    match c {
        Compression::None => Bytes::copy_from_slice(raw),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(
                Vec::with_capacity(raw.len() / 4),
                flate2::Compression::fast(),
            );
            let _ = e.write_all(raw);
            Bytes::from(e.finish().unwrap_or_default())
        }
        Compression::Zstd => Bytes::from(zstd::bulk::compress(raw, 1).unwrap_or_default()),
    }
}

/// Format of a batch's lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Ndjson,
    W3c,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Ndjson => "ndjson",
            Format::W3c => "w3c",
        }
    }
}

/// Lines for one request, uncompressed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Batch {
    #[serde(skip)]
    pub body: Bytes,
    pub format: Format,
    /// The distribution of lines that name none (`?distribution=`); W3C needs it.
    pub distribution: Option<String>,
    /// Lines in the body.
    pub records: u64,
    /// Sent as `Idempotency-Key`: a resend with the same key is recognized by the
    /// collector and not stored twice, so a batch whose answer was lost can be resent.
    pub key: Option<String>,
}

/// A refused line, as the collector lists it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct RefusedLine {
    pub line: u64,
    pub reason: String,
}

/// The collector's answer to a batch.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Answer {
    /// Records made durable.
    pub accepted: u64,
    /// Refused lines (up to the collector's listing limit).
    #[serde(default)]
    pub rejected: Vec<RefusedLine>,
    #[serde(default)]
    pub rejected_total: u64,
    /// The collector had this batch's key already: nothing was stored again.
    #[serde(default)]
    pub duplicate: bool,
}

/// How long to wait between tries.
#[derive(Debug, Clone)]
pub struct Retry {
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Give up after this many tries; `None` tries until the future is dropped.
    pub max_tries: Option<u32>,
    /// A `Retry-After` longer than this is cut to it.
    pub max_retry_after: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            max_tries: Some(8),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// What one try came to.
enum Try {
    Answered(Answer),
    /// Worth another try; with the server's `Retry-After`, if any.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    Refused {
        status: u16,
        reason: String,
    },
}

/// Posts batches to `POST /v1/records`, with retries.
#[derive(Debug, Clone)]
pub struct Poster {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
    compression: Compression,
    retry: Retry,
}

/// Builds a [`Poster`].
#[derive(Debug, Clone)]
pub struct PosterBuilder {
    url: String,
    token: Option<String>,
    compression: Compression,
    retry: Retry,
    timeout: Duration,
    pool: usize,
}

impl PosterBuilder {
    /// `url` is the collector's base address, e.g. `http://127.0.0.1:8080`.
    pub fn new(url: impl Into<String>) -> Self {
        PosterBuilder {
            url: url.into(),
            token: None,
            compression: Compression::Gzip,
            retry: Retry::default(),
            timeout: Duration::from_secs(30),
            pool: 4,
        }
    }
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into()).filter(|t: &String| !t.is_empty());
        self
    }
    pub fn compression(mut self, c: Compression) -> Self {
        self.compression = c;
        self
    }
    pub fn retry(mut self, r: Retry) -> Self {
        self.retry = r;
        self
    }
    /// Time allowed for one try (connect, send, answer).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    /// Idle connections kept open.
    pub fn pool(mut self, n: usize) -> Self {
        self.pool = n;
        self
    }
    pub fn build(self) -> Result<Poster, ClientError> {
        let base = self.url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::invalid(format!(
                "collector url {:?} must start with http:// or https://",
                self.url
            )));
        }
        if self.timeout.is_zero() {
            return Err(ClientError::invalid("timeout must be more than 0"));
        }
        let http = reqwest::Client::builder()
            .timeout(self.timeout)
            .pool_max_idle_per_host(self.pool)
            .build()
            .map_err(|e| ClientError::invalid("cannot build the HTTP client").with_source(e))?;
        Ok(Poster {
            http,
            url: format!("{base}/v1/records"),
            token: self.token,
            compression: self.compression,
            retry: self.retry,
        })
    }
}

impl Poster {
    pub fn builder(url: impl Into<String>) -> PosterBuilder {
        PosterBuilder::new(url)
    }

    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Posts `batch` until the collector answers it (records accepted, or lines refused),
    /// refuses it as a whole (4xx), or the tries run out. Connection errors, timeouts, 408,
    /// 409 (the same key in progress), 429 and 5xx are retried with jittered exponential
    /// backoff, never sooner than the server's `Retry-After`. `retries` counts the
    /// tries after the first.
    pub async fn post(&self, batch: &Batch, retries: &mut u64) -> Result<Answer, ClientError> {
        let wire = compress(&batch.body, self.compression);
        self.post_wire(batch, &wire, retries).await
    }

    /// [`Poster::post`] for a body compressed already (with this poster's compression);
    /// `batch.body` is not used.
    pub async fn post_wire(
        &self,
        batch: &Batch,
        wire: &Bytes,
        retries: &mut u64,
    ) -> Result<Answer, ClientError> {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.retry.min_delay)
            .with_max_delay(self.retry.max_delay)
            .with_jitter()
            // Each process its own: clients retrying after an outage must not do so in step.
            .with_jitter_seed(rand::random())
            .without_max_times()
            .build();
        let mut tries = 0u32;
        loop {
            tries += 1;
            match self.try_once(batch, wire).await {
                Try::Answered(a) => return Ok(a),
                Try::Refused { status, reason } => {
                    return Err(ClientError::refused(status, reason));
                }
                Try::Transient {
                    reason,
                    retry_after,
                } => {
                    if self.retry.max_tries.is_some_and(|m| tries >= m) {
                        return Err(ClientError::unavailable(format!(
                            "gave up after {tries} tries: {reason}"
                        )));
                    }
                    let backoff = delays.next().unwrap_or(self.retry.max_delay);
                    let wait = retry_after
                        .map(|r| r.min(self.retry.max_retry_after))
                        .map_or(backoff, |r| r.max(backoff));
                    tracing::debug!(error = %reason, wait_ms = wait.as_millis() as u64, "retrying a batch");
                    *retries += 1;
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn try_once(&self, batch: &Batch, wire: &Bytes) -> Try {
        let mut req = self
            .http
            .post(&self.url)
            .query(&[("format", batch.format.as_str())])
            .header(
                "content-type",
                match batch.format {
                    Format::Ndjson => "application/x-ndjson",
                    Format::W3c => "text/plain",
                },
            )
            .body(wire.clone());
        if let Some(d) = &batch.distribution {
            req = req.query(&[("distribution", d)]);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(enc) = self.compression.header() {
            req = req.header("content-encoding", enc);
        }
        if let Some(k) = &batch.key {
            req = req.header("idempotency-key", k);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return Try::Transient {
                    reason: format!("request failed: {e}"),
                    retry_after: None,
                };
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) => {
                return Try::Transient {
                    reason: format!("answer not read: {e}"),
                    retry_after,
                };
            }
        };
        let answer = || serde_json::from_str::<Answer>(&text).ok();
        match status {
            200..=299 => match answer() {
                Some(a) => Try::Answered(a),
                None => Try::Transient {
                    reason: format!("unreadable answer (HTTP {status}): {}", short(&text)),
                    retry_after,
                },
            },
            // Every line refused: an answer, not a failure of the batch.
            400 if answer().is_some() => Try::Answered(answer().unwrap_or_default()),
            408 | 409 | 429 | 500..=599 => Try::Transient {
                reason: format!("HTTP {status}: {}", short(&text)),
                retry_after,
            },
            _ => Try::Refused {
                status,
                reason: short(&text).to_owned(),
            },
        }
    }
}

fn short(s: &str) -> &str {
    let mut end = s.len().min(300);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].trim()
}

/// `Retry-After`: delay-seconds or an HTTP date.
pub(crate) fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("1e3"), None);
        assert_eq!(parse_retry_after(""), None);
        let later = SystemTime::now() + Duration::from_secs(30);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap_or_default();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        // A date in the past: retry now.
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(Duration::ZERO)
        );
        // 2^64 seconds does not parse as u64; neither as a date.
        assert_eq!(parse_retry_after("18446744073709551616"), None);
    }

    #[test]
    fn bad_urls_are_refused_at_build() {
        assert!(Poster::builder("127.0.0.1:8080").build().is_err());
        assert!(Poster::builder("").build().is_err());
        assert!(
            Poster::builder("http://x")
                .timeout(Duration::ZERO)
                .build()
                .is_err()
        );
        assert!(Poster::builder("http://127.0.0.1:1/").build().is_ok());
    }
}
