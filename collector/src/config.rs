//! Collector settings.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::privacy::PrivacyConfig;
use crate::wal::{KeyLimits, WalConfig};

/// Settings of the collector: ingest API, limits, write-ahead log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// Name of this collector, unique in a fleet: it goes into object keys and published
    /// aggregates, so two collectors never overwrite each other.
    pub id: String,
    /// Address the ingest API listens on.
    pub listen: SocketAddr,
    /// Bearer tokens that may post records (`Authorization: Bearer <token>`), for every
    /// distribution. An entry `sha256:<64 hex digits>` is a token given by its SHA-256.
    pub tokens: Vec<String>,
    /// Tokens limited to some distributions (and given as hashes if wished).
    pub scoped_tokens: Vec<ScopedToken>,
    /// Accept posts without a token. For local experiments only.
    pub allow_unauthenticated: bool,
    /// Bearer tokens that may change settings through `/admin/settings` (plain or
    /// `sha256:<hex>`), and not post records. Empty: the admin API is off.
    pub admin_tokens: Vec<String>,
    /// Largest request body accepted as sent (compressed or not), in bytes.
    pub max_body_bytes: u64,
    /// Largest body after decompression, in bytes; a bigger one is refused with 413.
    pub max_decompressed_bytes: u64,
    /// At most this many refused lines are listed in an answer; the rest are counted.
    pub max_listed_rejections: usize,
    /// Most lines one body may hold; a body with more is refused with 413 (a parsed record
    /// costs about 1 KiB of memory however short its line).
    pub max_records_per_body: u64,
    /// Memory for bodies being read, decompressed and parsed at once, in bytes; requests
    /// past it wait up to 2 s, then get 503 with `Retry-After`.
    pub max_inflight_bytes: u64,
    /// Connections open at once (lowered at start to fit the open-files limit, keeping
    /// 256 for the log and the sinks); more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// A request's headers must arrive within this, and an idle keep-alive connection is
    /// closed after it.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A request's body must arrive within this (408 otherwise).
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// A client that accepts none of the answer waiting for it for this long is cut off.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Longest line of a body, in bytes (1 to 16 MiB); a longer line is refused without
    /// being parsed (`line_too_long`).
    pub max_line_bytes: u64,
    /// Longest value of one field, in bytes (1 to `max_line_bytes`); a line holding a
    /// longer one is refused (`field_too_long`).
    pub max_field_bytes: u64,
    /// How long (0s to 10s) a request may wait while a live sink is about to fall out of
    /// the log's cache of decoded entries (more than half of it behind ingest); 0s: never.
    /// A sink within the cache reads records from memory; one further behind decodes them
    /// again from disk, and the collector does less in all by waiting. Sinks far behind
    /// (catching up) or stuck for a second (failing) never hold ingest back.
    #[serde(with = "humantime_serde")]
    pub pace_wait: Duration,
    /// How long a SIGTERM may spend draining sinks before exiting (what is left stays in
    /// the write-ahead log).
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How often per-minute partial aggregates are published.
    #[serde(with = "humantime_serde")]
    pub metrics_interval: Duration,
    /// Whether the minute aggregates carry CloudFront's reports (popular objects, top
    /// referrers, viewers, cache statistics, usage) for the dashboard.
    pub reports: bool,
    /// The most bytes each sink's dead-letter store (`{data_dir}/dead-letter/{sink}/`)
    /// may hold; once full, that sink waits (its records stay in the log) until files
    /// are moved away.
    pub dead_letter_max_bytes: u64,
    /// An `Idempotency-Key` is remembered at least this long, in seconds (1 to 31536000,
    /// a year), unless more than `idempotency_max_keys` keys come after it: a request
    /// repeating it within that time is answered as the first was, without being logged
    /// again.
    pub idempotency_ttl_secs: u64,
    /// The most idempotency keys remembered (1 to 10000000; about 300 bytes of memory
    /// each at most); past it the oldest are forgotten first.
    pub idempotency_max_keys: u64,
    /// What each distribution's records keep of the viewer's address and other personal
    /// fields, applied before anything is written (see README, "Privacy at ingest").
    pub privacy: PrivacyConfig,
    /// The write-ahead log.
    pub wal: WalConfig,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            id: "collector-1".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tokens: Vec::new(),
            scoped_tokens: Vec::new(),
            allow_unauthenticated: false,
            admin_tokens: Vec::new(),
            max_body_bytes: 16 << 20,
            max_decompressed_bytes: 128 << 20,
            max_listed_rejections: 100,
            max_records_per_body: 150_000,
            max_inflight_bytes: 512 << 20,
            max_connections: 4096,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            max_line_bytes: edgelog_record::DEFAULT_MAX_LINE_BYTES as u64,
            max_field_bytes: edgelog_record::DEFAULT_MAX_FIELD_BYTES as u64,
            pace_wait: Duration::from_millis(50),
            shutdown_timeout: Duration::from_secs(30),
            metrics_interval: Duration::from_secs(5),
            reports: true,
            dead_letter_max_bytes: 1 << 30,
            idempotency_ttl_secs: 86_400,
            idempotency_max_keys: 100_000,
            privacy: PrivacyConfig::default(),
            wal: WalConfig::default(),
        }
    }
}

impl CollectorConfig {
    /// Checks the settings without touching anything; errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        edgelog_record::check_distribution_id(&self.id).map_err(|e| {
            format!(
                "collector.id: {}",
                e.replace("distribution id", "collector id")
            )
        })?;
        if self.tokens.is_empty() && self.scoped_tokens.is_empty() && !self.allow_unauthenticated {
            return Err("collector.tokens: give at least one token, or set collector.allow_unauthenticated = true".into());
        }
        check_tokens("collector.tokens", &self.tokens)?;
        for (n, t) in self.scoped_tokens.iter().enumerate() {
            t.validate(&format!("collector.scoped_tokens #{}", n + 1))?;
            if t.token.as_ref().is_some_and(|x| self.tokens.contains(x)) {
                return Err(format!(
                    "collector.scoped_tokens #{}: the token is also in collector.tokens, where it may write every distribution",
                    n + 1
                ));
            }
        }
        check_tokens("collector.admin_tokens", &self.admin_tokens)?;
        let lower = |t: &String| t.to_ascii_lowercase();
        for (n, t) in self.admin_tokens.iter().map(lower).enumerate() {
            let ingest = self.tokens.iter().map(lower).any(|x| x == t)
                || self.scoped_tokens.iter().any(|s| {
                    s.token.as_ref().map(lower) == Some(t.clone())
                        || s.sha256
                            .as_ref()
                            .map(|h| format!("sha256:{}", h.to_ascii_lowercase()))
                            == Some(t.clone())
                });
            if ingest {
                return Err(format!(
                    "collector.admin_tokens #{}: the token is also an ingest token; edge servers must not change settings",
                    n + 1
                ));
            }
        }
        in_range("collector.max_body_bytes", self.max_body_bytes, 1, 1 << 30)?;
        in_range(
            "collector.max_decompressed_bytes",
            self.max_decompressed_bytes,
            self.max_body_bytes,
            4 << 30,
        )?;
        in_range(
            "collector.max_listed_rejections",
            self.max_listed_rejections as u64,
            0,
            100_000,
        )?;
        in_range(
            "collector.max_records_per_body",
            self.max_records_per_body,
            1,
            10_000_000,
        )?;
        // The biggest body allowed must fit: as sent, decompressed, and parsed.
        let record = std::mem::size_of::<edgelog_record::Record>() as u64;
        // One more MiB: decompression reads one step past the limit to tell it was passed.
        let biggest = self
            .max_body_bytes
            .saturating_add(1 << 20)
            .saturating_add(self.max_decompressed_bytes.saturating_mul(2))
            .saturating_add(self.max_records_per_body.saturating_mul(record * 2));
        if !(biggest..=1 << 40).contains(&self.max_inflight_bytes) {
            return Err(format!(
                "collector.max_inflight_bytes: must be from {biggest} (max_body_bytes + 1 MiB + 2 x max_decompressed_bytes + max_records_per_body x 2 x {record} bytes, so the biggest body allowed fits) to {}, got {}",
                1u64 << 40,
                self.max_inflight_bytes
            ));
        }
        in_range(
            "collector.dead_letter_max_bytes",
            self.dead_letter_max_bytes,
            1 << 20,
            1 << 50,
        )?;
        in_range(
            "collector.idempotency_ttl_secs",
            self.idempotency_ttl_secs,
            1,
            MAX_IDEMPOTENCY_TTL_SECS,
        )?;
        in_range(
            "collector.idempotency_max_keys",
            self.idempotency_max_keys,
            1,
            MAX_IDEMPOTENCY_KEYS,
        )?;
        in_range(
            "collector.max_connections",
            self.max_connections as u64,
            1,
            1_000_000,
        )?;
        for (key, d) in [
            ("collector.header_timeout", self.header_timeout),
            ("collector.body_timeout", self.body_timeout),
            ("collector.write_timeout", self.write_timeout),
        ] {
            if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
                return Err(format!("{key}: must be from 1s to 1h, got {d:?}"));
            }
        }
        if self.pace_wait > Duration::from_secs(10) {
            return Err(format!(
                "collector.pace_wait: must be at most 10s, got {:?}",
                self.pace_wait
            ));
        }
        if self.shutdown_timeout > Duration::from_secs(3600) {
            return Err(format!(
                "collector.shutdown_timeout: must be at most 1h, got {:?}",
                self.shutdown_timeout
            ));
        }
        if self.metrics_interval < Duration::from_millis(100)
            || self.metrics_interval > Duration::from_secs(3600)
        {
            return Err(format!(
                "collector.metrics_interval: must be from 100ms to 1h, got {:?}",
                self.metrics_interval
            ));
        }
        edgelog_record::check_limits(self.max_line_bytes, self.max_field_bytes)
            .map_err(|e| format!("collector.{}", e.replace("to max_", "to collector.max_")))?;
        self.privacy.validate()?;
        self.wal.validate().map_err(|e| format!("collector.{e}"))
    }
}

/// The largest `collector.idempotency_ttl_secs`: a year.
pub const MAX_IDEMPOTENCY_TTL_SECS: u64 = 365 * 86_400;
/// The largest `collector.idempotency_max_keys`: at about 300 bytes a key, 3 GB.
pub const MAX_IDEMPOTENCY_KEYS: u64 = 10_000_000;

impl CollectorConfig {
    /// How long and how many idempotency keys the log remembers.
    pub fn key_limits(&self) -> KeyLimits {
        KeyLimits {
            ttl_ms: self.idempotency_ttl_secs.saturating_mul(1000),
            max_keys: usize::try_from(self.idempotency_max_keys).unwrap_or(usize::MAX),
        }
    }
}

/// `min <= value <= max`, or an error naming `key` and the range.
pub fn in_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), String> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(format!("{key}: must be from {min} to {max}, got {value}"))
    }
}

/// An ingest token limited to some distributions: `[[collector.scoped_tokens]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopedToken {
    /// The token...
    #[serde(default)]
    pub token: Option<String>,
    /// ...or its SHA-256 in hex (`printf %s "$TOKEN" | sha256sum`): the configuration
    /// then holds no usable secret.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Distribution ids, or prefixes ending in `*`; a line for another distribution is
    /// refused (`distribution_not_allowed`) and the others in the body are kept.
    pub distributions: Vec<String>,
}

fn check_sha256(key: &str, hex: &str) -> Result<(), String> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{key}: a SHA-256 is 64 hex digits"));
    }
    Ok(())
}

impl ScopedToken {
    /// Checks it; errors name `key`.
    pub fn validate(&self, key: &str) -> Result<(), String> {
        match (&self.token, &self.sha256) {
            (Some(t), None) => check_tokens(key, std::slice::from_ref(t))?,
            (None, Some(h)) => check_sha256(&format!("{key}.sha256"), h)?,
            _ => return Err(format!("{key}: give token or sha256, one of them")),
        }
        if self.distributions.is_empty() {
            return Err(format!(
                "{key}.distributions: list the distributions (ids or prefixes ending in *); an unscoped token goes in the tokens list"
            ));
        }
        for p in &self.distributions {
            let id = p.strip_suffix('*').unwrap_or(p);
            if !(p == "*" || edgelog_record::check_distribution_id(id).is_ok()) {
                return Err(format!(
                    "{key}.distributions: {p:?} is neither a distribution id nor a prefix ending in *"
                ));
            }
        }
        Ok(())
    }
}

/// Bearer tokens: printable ASCII without spaces (anything else could never match a
/// header), 16 characters at least. The error never repeats a token.
pub fn check_tokens(key: &str, tokens: &[String]) -> Result<(), String> {
    for (i, t) in tokens.iter().enumerate() {
        if let Some(h) = t.strip_prefix("sha256:") {
            check_sha256(&format!("{key}: token #{}", i + 1), h)?;
            continue;
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{key}: token #{} must be printable ASCII without spaces",
                i + 1
            ));
        }
        if t.len() < 16 {
            return Err(format!(
                "{key}: token #{} has {} characters, 16 at least are needed",
                i + 1,
                t.len()
            ));
        }
    }
    Ok(())
}
