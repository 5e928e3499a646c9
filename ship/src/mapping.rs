//! From a line of a web server's access log to an edgelog record: built-in presets per
//! source (nginx JSON and combined, Caddy, Envoy), each a table of record field ←
//! source path and conversion, which the config can override field by field.
//!
//! Long (about 950 lines): four presets' tables, the conversions, and their tests with
//! real lines of each server.

use std::collections::BTreeMap;

use chrono::DateTime;
use edgelog_record::{FIELDS, Record, check_distribution_id, derive_request_id, field_index};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// What writes the files an input reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// nginx with the `log_format edgelog escape=json` in docs/shipping.md.
    NginxJson,
    /// nginx's predefined `combined` format.
    NginxCombined,
    /// Caddy's JSON access log (`log { format json }`).
    Caddy,
    /// Envoy's JSON access log with the `json_format` in docs/shipping.md.
    Envoy,
    /// CloudFront standard log files (W3C, usually `*.gz`), sent as they are.
    Cloudfront,
    /// edgelog's own NDJSON records, sent as they are.
    Ndjson,
}

/// How a source value becomes a field value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conv {
    /// As text; `""`, `"-"` and null are absent; the first element of an array.
    Text,
    /// An integer (number or digits).
    Int,
    /// Seconds (number or decimal text).
    Seconds,
    /// Milliseconds, stored as seconds.
    Millis,
    /// A comma- or colon-separated list of seconds (nginx `$upstream_*_time` after
    /// retries): their sum.
    SecondsSum,
    /// Seconds since the epoch, e.g. nginx `$msec` or Caddy's `ts`.
    EpochSeconds,
    /// RFC 3339, e.g. nginx `$time_iso8601` or Envoy's `%START_TIME%`.
    Rfc3339,
    /// nginx `$time_local`: `10/Oct/2000:13:55:36 -0700`.
    TimeLocal,
    /// `/path?query`: path to cs-uri-stem, query to cs-uri-query.
    RequestUri,
    /// `GET /path?query HTTP/1.1`: method, path, query and HTTP version.
    RequestLine,
    /// nginx `$upstream_cache_status` to CloudFront's result types.
    CacheStatus,
    /// `ip:port` (Envoy's downstream address): c-ip and c-port.
    Address,
    /// Present and not null means HTTPS (Caddy's `request.tls`).
    SchemeFromTls,
    /// TLS version number (Caddy: 772) to its name (`TLSv1.3`).
    TlsVersion,
    /// TLS cipher suite number (Caddy) to its OpenSSL name.
    CipherSuite,
    /// URL-encoded as CloudFront writes user agents (spaces as `%20`).
    UrlEncoded,
}

impl Conv {
    fn parse(s: &str) -> Option<Conv> {
        Some(match s {
            "text" => Conv::Text,
            "int" => Conv::Int,
            "seconds" => Conv::Seconds,
            "millis" => Conv::Millis,
            "seconds_sum" => Conv::SecondsSum,
            "epoch_seconds" => Conv::EpochSeconds,
            "rfc3339" => Conv::Rfc3339,
            "time_local" => Conv::TimeLocal,
            "request_uri" => Conv::RequestUri,
            "request_line" => Conv::RequestLine,
            "cache_status" => Conv::CacheStatus,
            "address" => Conv::Address,
            "scheme_from_tls" => Conv::SchemeFromTls,
            "tls_version" => Conv::TlsVersion,
            "cipher_suite" => Conv::CipherSuite,
            "url_encoded" => Conv::UrlEncoded,
            _ => return None,
        })
    }
}

const CONVS: &str = "text, int, seconds, millis, seconds_sum, epoch_seconds, rfc3339, \
    time_local, request_uri, request_line, cache_status, address, scheme_from_tls, \
    tls_version, cipher_suite, url_encoded";

/// `timestamp` is the request time; every other target is a record field (CloudFront or
/// Athena name). Fields set by compound conversions (request_uri, request_line, address)
/// are named by their first target.
type Table = &'static [(&'static str, &'static str, Conv)];

const NGINX_JSON: Table = &[
    ("timestamp", "time", Conv::EpochSeconds),
    ("c_ip", "remote_addr", Conv::Text),
    ("c_port", "remote_port", Conv::Int),
    ("cs_method", "request_method", Conv::Text),
    ("cs_uri_stem", "request_uri", Conv::RequestUri),
    ("cs_protocol_version", "server_protocol", Conv::Text),
    ("cs_protocol", "scheme", Conv::Text),
    ("cs_host", "host", Conv::Text),
    ("x_host_header", "http_host", Conv::Text),
    ("sc_status", "status", Conv::Int),
    ("sc_bytes", "bytes_sent", Conv::Int),
    ("cs_bytes", "request_length", Conv::Int),
    ("time_taken", "request_time", Conv::Seconds),
    (
        "time_to_first_byte",
        "upstream_header_time",
        Conv::SecondsSum,
    ),
    (
        "x_edge_result_type",
        "upstream_cache_status",
        Conv::CacheStatus,
    ),
    ("cs_referer", "http_referer", Conv::Text),
    ("cs_user_agent", "http_user_agent", Conv::UrlEncoded),
    ("cs_cookie", "http_cookie", Conv::Text),
    ("x_forwarded_for", "http_x_forwarded_for", Conv::Text),
    ("ssl_protocol", "ssl_protocol", Conv::Text),
    ("ssl_cipher", "ssl_cipher", Conv::Text),
    ("x_edge_request_id", "request_id", Conv::Text),
    ("x_edge_location", "edge_location", Conv::Text),
    ("sc_content_type", "sent_http_content_type", Conv::Text),
    ("sc_content_len", "sent_http_content_length", Conv::Int),
];

/// The fields of nginx's `combined`, named as its variables.
const NGINX_COMBINED: Table = &[
    ("timestamp", "time_local", Conv::TimeLocal),
    ("c_ip", "remote_addr", Conv::Text),
    ("cs_method", "request", Conv::RequestLine),
    ("sc_status", "status", Conv::Int),
    ("sc_bytes", "body_bytes_sent", Conv::Int),
    ("cs_referer", "http_referer", Conv::Text),
    ("cs_user_agent", "http_user_agent", Conv::UrlEncoded),
];

const CADDY: Table = &[
    ("timestamp", "ts", Conv::EpochSeconds),
    ("c_ip", "request.remote_ip", Conv::Text),
    ("c_port", "request.remote_port", Conv::Int),
    ("cs_method", "request.method", Conv::Text),
    ("cs_uri_stem", "request.uri", Conv::RequestUri),
    ("cs_protocol_version", "request.proto", Conv::Text),
    ("cs_protocol", "request.tls", Conv::SchemeFromTls),
    ("cs_host", "request.host", Conv::Text),
    ("x_host_header", "request.host", Conv::Text),
    ("ssl_protocol", "request.tls.version", Conv::TlsVersion),
    ("ssl_cipher", "request.tls.cipher_suite", Conv::CipherSuite),
    ("sc_status", "status", Conv::Int),
    ("sc_bytes", "size", Conv::Int),
    ("cs_bytes", "bytes_read", Conv::Int),
    ("time_taken", "duration", Conv::Seconds),
    (
        "cs_user_agent",
        "request.headers.User-Agent",
        Conv::UrlEncoded,
    ),
    ("cs_referer", "request.headers.Referer", Conv::Text),
    ("cs_cookie", "request.headers.Cookie", Conv::Text),
    (
        "x_forwarded_for",
        "request.headers.X-Forwarded-For",
        Conv::Text,
    ),
    (
        "x_edge_request_id",
        "request.headers.X-Request-Id",
        Conv::Text,
    ),
    ("sc_content_type", "resp_headers.Content-Type", Conv::Text),
];

const ENVOY: Table = &[
    ("timestamp", "start_time", Conv::Rfc3339),
    ("c_ip", "downstream_remote_address", Conv::Address),
    ("cs_method", "method", Conv::Text),
    ("cs_uri_stem", "path", Conv::RequestUri),
    ("cs_protocol_version", "protocol", Conv::Text),
    ("cs_protocol", "scheme", Conv::Text),
    ("cs_host", "authority", Conv::Text),
    ("x_host_header", "authority", Conv::Text),
    ("sc_status", "response_code", Conv::Int),
    ("sc_bytes", "bytes_sent", Conv::Int),
    ("cs_bytes", "bytes_received", Conv::Int),
    ("time_taken", "duration", Conv::Millis),
    ("time_to_first_byte", "response_duration", Conv::Millis),
    ("cs_user_agent", "user_agent", Conv::UrlEncoded),
    ("cs_referer", "referer", Conv::Text),
    ("x_forwarded_for", "x_forwarded_for", Conv::Text),
    ("x_edge_request_id", "request_id", Conv::Text),
    ("ssl_protocol", "tls_version", Conv::Text),
    ("ssl_cipher", "tls_cipher", Conv::Text),
    ("sc_content_type", "content_type", Conv::Text),
];

#[derive(Debug, Clone)]
enum Target {
    Timestamp,
    Field(usize),
}

#[derive(Debug, Clone)]
struct Rule {
    target: Target,
    path: Vec<String>,
    conv: Conv,
}

/// A compiled mapping for one input.
#[derive(Debug, Clone)]
pub struct Mapping {
    preset: Preset,
    rules: Vec<Rule>,
    distribution: Option<String>,
    by_host: BTreeMap<String, String>,
    edge_location: Option<String>,
    /// The source's time is when the request started (Envoy); CloudFront's is when it
    /// ended: time-taken is added.
    time_is_start: bool,
}

/// Where a mapped line's distribution comes from.
#[derive(Debug, Clone, Default)]
pub struct MappingConfig {
    /// `field = "path"` or `field = "path|conversion"`; `field = ""` drops a preset's rule.
    pub fields: BTreeMap<String, String>,
    pub distribution: Option<String>,
    /// Host (cs-host, else x-host-header) → distribution; falls back to `distribution`.
    pub distribution_by_host: BTreeMap<String, String>,
    /// x-edge-location for lines that carry none.
    pub edge_location: Option<String>,
}

impl Mapping {
    pub fn new(preset: Preset, cfg: &MappingConfig) -> Result<Mapping, String> {
        let table: Table = match preset {
            Preset::NginxJson => NGINX_JSON,
            Preset::NginxCombined => NGINX_COMBINED,
            Preset::Caddy => CADDY,
            Preset::Envoy => ENVOY,
            Preset::Cloudfront | Preset::Ndjson => &[],
        };
        if matches!(preset, Preset::Cloudfront | Preset::Ndjson) && !cfg.fields.is_empty() {
            return Err(format!(
                "fields: a {preset:?} input is sent as it is and takes no field mapping"
            ));
        }
        let target = |name: &str| -> Result<Target, String> {
            if name == "timestamp" {
                return Ok(Target::Timestamp);
            }
            field_index(name).map(Target::Field).ok_or_else(|| {
                format!("fields: {name:?} is not a record field (use CloudFront or Athena names, or timestamp)")
            })
        };
        let mut rules: Vec<(String, Rule)> = Vec::new();
        for (field, path, conv) in table {
            rules.push((
                (*field).to_owned(),
                Rule {
                    target: target(field)?,
                    path: split_path(path),
                    conv: *conv,
                },
            ));
        }
        for (field, spec) in &cfg.fields {
            let t = target(field)?;
            let canonical = match &t {
                Target::Timestamp => "timestamp".to_owned(),
                Target::Field(i) => FIELDS[*i].column.to_owned(),
            };
            rules.retain(|(f, _)| {
                f != &canonical && field_index(f).map(|i| FIELDS[i].column) != Some(&canonical)
            });
            if spec.is_empty() {
                continue;
            }
            let (path, conv) = match spec.split_once('|') {
                Some((p, c)) => (
                    p,
                    Conv::parse(c.trim()).ok_or_else(|| {
                        format!("fields.{field}: unknown conversion {c:?}; one of {CONVS}")
                    })?,
                ),
                None => (spec.as_str(), default_conv(&t)),
            };
            if path.trim().is_empty() {
                return Err(format!("fields.{field}: empty source path"));
            }
            rules.push((
                canonical,
                Rule {
                    target: t,
                    path: split_path(path.trim()),
                    conv,
                },
            ));
        }
        if !matches!(preset, Preset::Cloudfront | Preset::Ndjson)
            && !rules
                .iter()
                .any(|(_, r)| matches!(r.target, Target::Timestamp))
        {
            return Err("fields: no rule gives the timestamp".into());
        }
        for d in cfg
            .distribution
            .iter()
            .chain(cfg.distribution_by_host.values())
        {
            check_distribution_id(d).map_err(|e| format!("distribution {d:?}: {e}"))?;
        }
        Ok(Mapping {
            preset,
            rules: rules.into_iter().map(|(_, r)| r).collect(),
            distribution: cfg.distribution.clone(),
            by_host: cfg.distribution_by_host.clone(),
            edge_location: cfg.edge_location.clone(),
            time_is_start: preset == Preset::Envoy,
        })
    }

    pub fn preset(&self) -> Preset {
        self.preset
    }

    /// The fixed distribution of a CloudFront or NDJSON input.
    pub fn distribution(&self) -> Option<&str> {
        self.distribution.as_deref()
    }

    /// Maps one line (without its line break). `id_seed` (the line's identity: file
    /// fingerprint and offset) makes the request id of a line that carries none, so a
    /// resent line gets the same one.
    pub fn map_line(&self, line: &[u8], id_seed: u64) -> Result<Record, String> {
        // nginx's escape=json passes bytes >= 0x80 through as they came (a Latin-1 user
        // agent, raw bytes in a path): those that are not UTF-8 become %XX, as CloudFront
        // writes them, and the record is kept.
        let owned;
        let text = match std::str::from_utf8(line) {
            Ok(t) => t,
            Err(_) => {
                owned = percent_encode_invalid(line);
                owned.as_str()
            }
        };
        let doc = match self.preset {
            Preset::NginxCombined => parse_combined(text)?,
            _ => serde_json::from_str::<Json>(text)
                .map_err(|e| format!("line is not a JSON object: {e}"))?,
        };
        if !doc.is_object() {
            return Err("line is not a JSON object".into());
        }
        let mut rec = Record::default();
        let mut have_time = false;
        for rule in &self.rules {
            let v = lookup(&doc, &rule.path);
            match &rule.target {
                Target::Timestamp => {
                    if let Some(ms) = timestamp(v, rule.conv)
                        .map_err(|e| format!("{}: {e}", rule.path.join(".")))?
                    {
                        rec.timestamp_ms = ms;
                        have_time = true;
                    }
                }
                Target::Field(i) => apply(&mut rec, *i, v, rule.conv)
                    .map_err(|e| format!("{}: {e}", rule.path.join(".")))?,
            }
        }
        if !have_time {
            return Err("no request time in the line".into());
        }
        if self.time_is_start
            && let Some(t) = rec.time_taken
        {
            rec.timestamp_ms = rec.timestamp_ms.saturating_add((t * 1000.0).round() as i64);
        }
        // CloudFront writes HTTP/2.0 where Envoy and Caddy may write HTTP/2.
        if let Some(v) = &mut rec.cs_protocol_version
            && matches!(v.as_str(), "HTTP/2" | "HTTP/3")
        {
            v.push_str(".0");
        }
        if rec.x_edge_location.is_none() {
            rec.x_edge_location = self.edge_location.clone();
        }
        if rec.x_edge_request_id.as_deref().is_none_or(str::is_empty) {
            rec.x_edge_request_id = Some(derive_request_id(line, id_seed));
        }
        let host = rec.cs_host.as_deref().or(rec.x_host_header.as_deref());
        rec.distribution_id = host
            .and_then(|h| self.by_host.get(h))
            .or(self.distribution.as_ref())
            .cloned()
            .ok_or_else(|| {
                format!(
                    "no distribution for host {:?}: set distribution or distribution_by_host",
                    host.unwrap_or("-")
                )
            })?;
        Ok(rec)
    }
}

fn default_conv(t: &Target) -> Conv {
    match t {
        Target::Timestamp => Conv::EpochSeconds,
        Target::Field(i) => match FIELDS[*i].kind {
            edgelog_record::FieldKind::F64 => Conv::Seconds,
            edgelog_record::FieldKind::Str => Conv::Text,
            _ => Conv::Int,
        },
    }
}

fn split_path(p: &str) -> Vec<String> {
    p.split('.').map(str::to_owned).collect()
}

fn lookup<'a>(doc: &'a Json, path: &[String]) -> Option<&'a Json> {
    let mut v = doc;
    for seg in path {
        v = match v {
            Json::Object(m) => m.get(seg.as_str())?,
            Json::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// The text of a value; None for absent, null, `""` and `"-"`.
fn text(v: Option<&Json>) -> Option<String> {
    let s = match v? {
        Json::String(s) => s.clone(),
        Json::Number(n) => n.to_string(),
        Json::Bool(b) => b.to_string(),
        Json::Array(a) => return text(a.first()),
        Json::Null | Json::Object(_) => return None,
    };
    (!s.is_empty() && s != "-").then_some(s)
}

fn number(v: Option<&Json>) -> Result<Option<f64>, String> {
    match v {
        Some(Json::Number(n)) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| format!("{n} is not a finite number")),
        other => match text(other) {
            None => Ok(None),
            Some(s) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(Some)
                .ok_or_else(|| format!("{s:?} is not a number")),
        },
    }
}

fn timestamp(v: Option<&Json>, conv: Conv) -> Result<Option<i64>, String> {
    const MAX_MS: f64 = 253_402_300_799_999.0; // 9999-12-31
    let checked = |ms: f64| {
        if (0.0..=MAX_MS).contains(&ms) {
            Ok(Some(ms.round() as i64))
        } else {
            Err(format!("time {ms} ms is out of range"))
        }
    };
    match conv {
        Conv::EpochSeconds => match number(v)? {
            Some(s) => checked(s * 1000.0),
            None => Ok(None),
        },
        Conv::Millis => match number(v)? {
            Some(ms) => checked(ms),
            None => Ok(None),
        },
        Conv::Rfc3339 => match text(v) {
            Some(s) => DateTime::parse_from_rfc3339(&s)
                .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))
                .and_then(|t| checked(t.timestamp_millis() as f64)),
            None => Ok(None),
        },
        Conv::TimeLocal => match text(v) {
            Some(s) => DateTime::parse_from_str(&s, "%d/%b/%Y:%H:%M:%S %z")
                .map_err(|e| format!("{s:?} is not an nginx local time: {e}"))
                .and_then(|t| checked(t.timestamp_millis() as f64)),
            None => Ok(None),
        },
        other => Err(format!("{other:?} cannot give a time")),
    }
}

fn set(rec: &mut Record, i: usize, text: Option<String>) -> Result<(), String> {
    match text {
        Some(t) => rec
            .set_text(i, &t)
            .map_err(|e| format!("{} {t:?}: {e}", FIELDS[i].cloudfront)),
        None => Ok(()),
    }
}

fn idx(name: &str) -> usize {
    field_index(name).unwrap_or_else(|| unreachable!("{name} is a record field"))
}

fn apply(rec: &mut Record, i: usize, v: Option<&Json>, conv: Conv) -> Result<(), String> {
    let secs = |s: f64| {
        if (0.0..=edgelog_record::MAX_SECONDS).contains(&s) {
            Ok(Some(format!("{s:.3}")))
        } else {
            Err(format!("{s} seconds is out of range"))
        }
    };
    match conv {
        Conv::Text => set(rec, i, text(v)),
        // The record's parser checks the range of the field's type.
        Conv::Int => set(rec, i, text(v)),
        Conv::Seconds => match number(v)? {
            Some(s) => set(rec, i, secs(s)?),
            None => Ok(()),
        },
        Conv::Millis => match number(v)? {
            Some(ms) => set(rec, i, secs(ms / 1000.0)?),
            None => Ok(()),
        },
        Conv::SecondsSum => match text(v) {
            Some(s) => {
                let mut sum = 0.0;
                for part in s.split([',', ':']).map(str::trim) {
                    if part == "-" || part.is_empty() {
                        continue;
                    }
                    sum += part
                        .parse::<f64>()
                        .map_err(|_| format!("{part:?} is not a number of seconds"))?;
                }
                set(rec, i, secs(sum)?)
            }
            None => Ok(()),
        },
        Conv::RequestUri => {
            if let Some(uri) = text(v) {
                let (stem, query) = match uri.split_once('?') {
                    Some((s, q)) => (s.to_owned(), Some(q.to_owned()).filter(|q| !q.is_empty())),
                    None => (uri, None),
                };
                set(rec, i, Some(stem))?;
                set(rec, idx("cs_uri_query"), query)?;
            }
            Ok(())
        }
        Conv::RequestLine => {
            if let Some(line) = text(v) {
                let mut parts = line.splitn(3, ' ');
                let (m, uri, ver) = (parts.next(), parts.next(), parts.next());
                match (m, uri) {
                    (Some(m), Some(uri)) if !m.is_empty() => {
                        set(rec, i, Some(m.to_owned()))?;
                        let j: Json = Json::String(uri.to_owned());
                        apply(rec, idx("cs_uri_stem"), Some(&j), Conv::RequestUri)?;
                        set(rec, idx("cs_protocol_version"), ver.map(str::to_owned))?;
                    }
                    // nginx logs what a broken client sent (e.g. a TLS hello on a plain
                    // port) as the request: keep the record, without a method or path.
                    _ => {}
                }
            }
            Ok(())
        }
        // Anything else is left out: CloudFront's `Error` means an error response.
        Conv::CacheStatus => set(
            rec,
            i,
            text(v).and_then(|s| {
                match s.to_ascii_uppercase().as_str() {
                    "HIT" | "STALE" | "UPDATING" => Some("Hit"),
                    "EXPIRED" | "REVALIDATED" => Some("RefreshHit"),
                    "MISS" | "BYPASS" => Some("Miss"),
                    _ => None,
                }
                .map(str::to_owned)
            }),
        ),
        Conv::Address => {
            if let Some(a) = text(v) {
                let (ip, port) = match a.rsplit_once(':') {
                    // IPv6 without a port has colons but no brackets.
                    Some((ip, port)) if !ip.contains(':') || ip.ends_with(']') => (
                        ip.trim_start_matches('[').trim_end_matches(']').to_owned(),
                        Some(port.to_owned()),
                    ),
                    _ => (a, None),
                };
                set(rec, i, Some(ip))?;
                set(rec, idx("c_port"), port)?;
            }
            Ok(())
        }
        Conv::SchemeFromTls => set(
            rec,
            i,
            Some(
                if matches!(v, Some(x) if !x.is_null()) {
                    "https"
                } else {
                    "http"
                }
                .to_owned(),
            ),
        ),
        Conv::TlsVersion => set(
            rec,
            i,
            number(v)?.map(|n| match n as u32 {
                0x0301 => "TLSv1".to_owned(),
                0x0302 => "TLSv1.1".to_owned(),
                0x0303 => "TLSv1.2".to_owned(),
                0x0304 => "TLSv1.3".to_owned(),
                other => format!("0x{other:04x}"),
            }),
        ),
        Conv::CipherSuite => set(
            rec,
            i,
            number(v)?.map(|n| match n as u32 {
                0x1301 => "TLS_AES_128_GCM_SHA256".to_owned(),
                0x1302 => "TLS_AES_256_GCM_SHA384".to_owned(),
                0x1303 => "TLS_CHACHA20_POLY1305_SHA256".to_owned(),
                0xc02b => "ECDHE-ECDSA-AES128-GCM-SHA256".to_owned(),
                0xc02c => "ECDHE-ECDSA-AES256-GCM-SHA384".to_owned(),
                0xc02f => "ECDHE-RSA-AES128-GCM-SHA256".to_owned(),
                0xc030 => "ECDHE-RSA-AES256-GCM-SHA384".to_owned(),
                0xcca8 => "ECDHE-RSA-CHACHA20-POLY1305".to_owned(),
                0xcca9 => "ECDHE-ECDSA-CHACHA20-POLY1305".to_owned(),
                other => format!("0x{other:04x}"),
            }),
        ),
        Conv::UrlEncoded => set(rec, i, text(v).map(|s| url_encode(&s))),
        Conv::EpochSeconds | Conv::Rfc3339 | Conv::TimeLocal => Err(format!(
            "{conv:?} gives a time, not {}",
            FIELDS[i].cloudfront
        )),
    }
}

/// `bytes` as UTF-8 with every byte of an invalid sequence written as `%XX`.
fn percent_encode_invalid(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 16);
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// CloudFront URL-encodes user agents: spaces and other bytes that would break a
/// tab-separated line become `%XX`.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for b in s.bytes() {
        // `%` stays: bytes that were not UTF-8 arrive as `%XX` already.
        if b.is_ascii_graphic() && b != b'"' && b != b'\\' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// nginx `combined`: `$remote_addr - $remote_user [$time_local] "$request" $status
/// $body_bytes_sent "$http_referer" "$http_user_agent"`, as an object of those names.
fn parse_combined(line: &str) -> Result<Json, String> {
    let bad = || format!("not an nginx combined line: {:?}", short(line));
    let (addr, rest) = line.split_once(' ').ok_or_else(bad)?;
    let rest = rest.strip_prefix("- ").ok_or_else(bad)?;
    let (_user, rest) = rest.split_once(" [").ok_or_else(bad)?;
    let (time, rest) = rest.split_once("] \"").ok_or_else(bad)?;
    let (request, rest) = quoted(rest).ok_or_else(bad)?;
    let rest = rest.strip_prefix(' ').ok_or_else(bad)?;
    let mut it = rest.splitn(3, ' ');
    let status = it.next().ok_or_else(bad)?;
    let bytes = it.next().ok_or_else(bad)?;
    let rest = it.next().unwrap_or("");
    let (referer, rest) = match rest.strip_prefix('"') {
        Some(r) => quoted(r).ok_or_else(bad)?,
        None => ("-".to_owned(), rest),
    };
    let ua = match rest.trim_start().strip_prefix('"') {
        Some(r) => quoted(r).ok_or_else(bad)?.0,
        None => "-".to_owned(),
    };
    Ok(serde_json::json!({
        "remote_addr": addr,
        "time_local": time,
        "request": request,
        "status": status,
        "body_bytes_sent": bytes,
        "http_referer": referer,
        "http_user_agent": ua,
    }))
}

/// A value nginx wrote between quotes (the opening one consumed), with its `\xHH`
/// escapes decoded; and what follows the closing quote.
fn quoted(s: &str) -> Option<(String, &str)> {
    let end = s.find('"')?;
    let raw = &s[..end];
    let mut out = Vec::with_capacity(raw.len());
    let b = raw.as_bytes();
    let mut k = 0;
    while k < b.len() {
        if b[k] == b'\\'
            && b.get(k + 1) == Some(&b'x')
            && let Some(h) = raw.get(k + 2..k + 4)
            && let Ok(v) = u8::from_str_radix(h, 16)
        {
            out.push(v);
            k += 4;
            continue;
        }
        out.push(b[k]);
        k += 1;
    }
    Some((String::from_utf8_lossy(&out).into_owned(), &s[end + 1..]))
}

fn short(s: &str) -> &str {
    let mut end = s.len().min(120);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(preset: Preset) -> Mapping {
        Mapping::new(
            preset,
            &MappingConfig {
                distribution: Some("E1".into()),
                ..MappingConfig::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    const NGINX: &str = r#"{"time":"1700000000.123","host":"cdn.example.com","http_host":"cdn.example.com:8443","remote_addr":"192.0.2.7","remote_port":"51234","request_method":"GET","request_uri":"/img/a%20b.png?w=1&h=2","server_protocol":"HTTP/1.1","scheme":"https","status":"206","bytes_sent":"1234","request_length":"321","request_time":"0.250","upstream_header_time":"0.010, 0.020","upstream_cache_status":"EXPIRED","http_referer":"https://ref.example/","http_user_agent":"Mozilla/5.0 (X11; Linux)","http_cookie":"a=b","http_x_forwarded_for":"198.51.100.1","ssl_protocol":"TLSv1.3","ssl_cipher":"TLS_AES_128_GCM_SHA256","request_id":"0123abcd","server_port":"8443","edge_location":"edge-1","sent_http_content_type":"image/png","sent_http_content_length":"1000"}"#;

    #[test]
    fn an_nginx_json_line_fills_every_field_it_knows() {
        let r = mapping(Preset::NginxJson)
            .map_line(NGINX.as_bytes(), 7)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.timestamp_ms, 1_700_000_000_123);
        assert_eq!(r.distribution_id, "E1");
        assert_eq!(r.c_ip.as_deref(), Some("192.0.2.7"));
        assert_eq!(r.c_port, Some(51234));
        assert_eq!(r.cs_method.as_deref(), Some("GET"));
        assert_eq!(r.cs_uri_stem.as_deref(), Some("/img/a%20b.png"));
        assert_eq!(r.cs_uri_query.as_deref(), Some("w=1&h=2"));
        assert_eq!(r.cs_protocol.as_deref(), Some("https"));
        assert_eq!(r.cs_protocol_version.as_deref(), Some("HTTP/1.1"));
        assert_eq!(r.cs_host.as_deref(), Some("cdn.example.com"));
        assert_eq!(r.x_host_header.as_deref(), Some("cdn.example.com:8443"));
        assert_eq!(r.sc_status, Some(206));
        assert_eq!(r.sc_bytes, Some(1234));
        assert_eq!(r.cs_bytes, Some(321));
        assert_eq!(r.time_taken, Some(0.25));
        assert_eq!(r.time_to_first_byte, Some(0.03));
        assert_eq!(r.x_edge_result_type.as_deref(), Some("RefreshHit"));
        assert_eq!(r.cs_referer.as_deref(), Some("https://ref.example/"));
        assert_eq!(
            r.cs_user_agent.as_deref(),
            Some("Mozilla/5.0%20(X11;%20Linux)")
        );
        assert_eq!(r.cs_cookie.as_deref(), Some("a=b"));
        assert_eq!(r.x_forwarded_for.as_deref(), Some("198.51.100.1"));
        assert_eq!(r.ssl_protocol.as_deref(), Some("TLSv1.3"));
        assert_eq!(r.ssl_cipher.as_deref(), Some("TLS_AES_128_GCM_SHA256"));
        assert_eq!(r.x_edge_request_id.as_deref(), Some("0123abcd"));
        assert_eq!(r.x_edge_location.as_deref(), Some("edge-1"));
        assert_eq!(r.sc_content_type.as_deref(), Some("image/png"));
        assert_eq!(r.sc_content_len, Some(1000));
    }

    #[test]
    fn empty_dash_and_missing_values_are_absent_and_ids_are_derived_deterministically() {
        let m = mapping(Preset::NginxJson);
        let line = br#"{"time":"1700000000.000","status":"200","upstream_cache_status":"","upstream_header_time":"-","ssl_protocol":"","request_id":"","http_referer":"-"}"#;
        let a = m.map_line(line, 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.x_edge_result_type, None);
        assert_eq!(a.time_to_first_byte, None);
        assert_eq!(a.ssl_protocol, None);
        assert_eq!(a.cs_referer, None);
        let b = m.map_line(line, 1).unwrap_or_else(|e| panic!("{e}"));
        let c = m.map_line(line, 2).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.x_edge_request_id, b.x_edge_request_id);
        assert_ne!(a.x_edge_request_id, c.x_edge_request_id);
    }

    #[test]
    fn hostile_values_are_refused_with_the_field_named() {
        let m = mapping(Preset::NginxJson);
        for (line, needle) in [
            (r#"{"time":"1e302"}"#, "out of range"),
            (r#"{"time":"-1"}"#, "out of range"),
            (r#"{"time":"NaN"}"#, "not a number"),
            (r#"{"time":"inf"}"#, "not a number"),
            (r#"{"status":"200"}"#, "no request time"),
            (r#"{"time":"1","status":"70000"}"#, "sc-status"),
            (r#"{"time":"1","status":"-1"}"#, "sc-status"),
            (
                r#"{"time":"1","bytes_sent":"18446744073709551616"}"#,
                "sc-bytes",
            ),
            (r#"{"time":"1","request_time":"1e302"}"#, "out of range"),
            (r#"{"time":"1","request_time":"-0.5"}"#, "out of range"),
            (
                r#"{"time":"1","upstream_header_time":"0.1, x"}"#,
                "not a number",
            ),
            (r#"[1,2]"#, "not a JSON object"),
            ("not json", "not a JSON object"),
            ("", "not a JSON object"),
        ] {
            let e = m
                .map_line(line.as_bytes(), 0)
                .err()
                .unwrap_or_else(|| panic!("{line} mapped"));
            assert!(e.contains(needle), "{line}: {e}");
        }
        assert!(
            m.map_line(&[0xff, 0xfe], 0).is_err(),
            "not JSON, even encoded"
        );
        // Bytes nginx passed through that are not UTF-8: kept, as %XX.
        let r = m
            .map_line(b"{\"time\":\"1\",\"request_uri\":\"/raw\xff\xfepath\",\"http_user_agent\":\"Caf\xe9Browser/1.0\"}", 0)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.cs_uri_stem.as_deref(), Some("/raw%FF%FEpath"));
        assert_eq!(r.cs_user_agent.as_deref(), Some("Caf%E9Browser/1.0"));
        // Byte counts go up to 2^63-1 (Parquet's signed 64 bits); 2^64-1 is named.
        let r = m
            .map_line(br#"{"time":"1","bytes_sent":"9223372036854775807"}"#, 0)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.sc_bytes, Some(i64::MAX as u64));
        let e = m
            .map_line(br#"{"time":"1","bytes_sent":"18446744073709551615"}"#, 0)
            .err()
            .unwrap_or_default();
        assert!(
            e.contains("bytes_sent") && e.contains("out of range"),
            "{e}"
        );
    }

    #[test]
    fn nginx_combined_lines_including_broken_requests() {
        let m = mapping(Preset::NginxCombined);
        let r = m
            .map_line(
                br#"203.0.113.9 - alice [10/Oct/2023:13:55:36 -0700] "GET /a/b.html?x=1 HTTP/2.0" 404 512 "https://r.example/p" "curl/8.0 \x22quoted\x22""#,
                0,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.timestamp_ms, 1_696_971_336_000);
        assert_eq!(r.c_ip.as_deref(), Some("203.0.113.9"));
        assert_eq!(r.cs_method.as_deref(), Some("GET"));
        assert_eq!(r.cs_uri_stem.as_deref(), Some("/a/b.html"));
        assert_eq!(r.cs_uri_query.as_deref(), Some("x=1"));
        assert_eq!(r.cs_protocol_version.as_deref(), Some("HTTP/2.0"));
        assert_eq!(r.sc_status, Some(404));
        assert_eq!(r.sc_bytes, Some(512));
        assert_eq!(r.cs_referer.as_deref(), Some("https://r.example/p"));
        assert_eq!(r.cs_user_agent.as_deref(), Some("curl/8.0%20%22quoted%22"));
        // A TLS hello sent to a plain port: nginx logs the bytes as the request.
        let r = m
            .map_line(
                br#"198.51.100.2 - - [10/Oct/2023:13:55:36 +0000] "\x16\x03\x01" 400 157 "-" "-""#,
                0,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.sc_status, r.cs_method.as_deref()), (Some(400), None));
        for bad in [
            "",
            "x",
            "1.2.3.4 - - [bad] \"GET / HTTP/1.1\" 200 1 \"-\" \"-\"",
        ] {
            assert!(m.map_line(bad.as_bytes(), 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn caddy_and_envoy_lines() {
        let caddy = br#"{"level":"info","ts":1700000000.5,"logger":"http.log.access","msg":"handled request","request":{"remote_ip":"192.0.2.1","remote_port":"41342","proto":"HTTP/2.0","method":"GET","host":"example.com","uri":"/x?y=z","headers":{"User-Agent":["curl/7.82.0"],"Referer":["https://a/"]},"tls":{"resumed":false,"version":772,"cipher_suite":4865,"proto":"h2","server_name":"example.com"}},"bytes_read":0,"user_id":"","duration":0.000929675,"size":10900,"status":200,"resp_headers":{"Content-Type":["text/html"]}}"#;
        let r = mapping(Preset::Caddy)
            .map_line(caddy, 0)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.timestamp_ms, 1_700_000_000_500);
        assert_eq!(r.cs_protocol.as_deref(), Some("https"));
        assert_eq!(r.ssl_protocol.as_deref(), Some("TLSv1.3"));
        assert_eq!(r.ssl_cipher.as_deref(), Some("TLS_AES_128_GCM_SHA256"));
        assert_eq!(r.cs_user_agent.as_deref(), Some("curl/7.82.0"));
        assert_eq!(r.cs_uri_query.as_deref(), Some("y=z"));
        assert_eq!(r.c_port, Some(41342));
        assert_eq!(r.sc_bytes, Some(10900));
        assert_eq!(r.time_taken, Some(0.001));
        assert_eq!(r.sc_content_type.as_deref(), Some("text/html"));

        let envoy = br#"{"start_time":"2023-11-14T22:13:20.250Z","method":"POST","path":"/api?q=1","protocol":"HTTP/2","response_code":503,"bytes_received":10,"bytes_sent":20,"duration":1500,"response_duration":40,"downstream_remote_address":"[2001:db8::1]:5555","user_agent":"Go-http-client/1.1","request_id":"rid-1","authority":"api.example.com","scheme":"http","tls_version":null}"#;
        let r = mapping(Preset::Envoy)
            .map_line(envoy, 0)
            .unwrap_or_else(|e| panic!("{e}"));
        // Envoy logs the start; CloudFront's time is the end: plus the 1.5 s duration.
        assert_eq!(r.timestamp_ms, 1_700_000_001_750);
        assert_eq!(r.c_ip.as_deref(), Some("2001:db8::1"));
        assert_eq!(r.c_port, Some(5555));
        assert_eq!(r.sc_status, Some(503));
        assert_eq!(r.time_taken, Some(1.5));
        assert_eq!(r.time_to_first_byte, Some(0.04));
        assert_eq!(r.ssl_protocol, None);
        assert_eq!(r.x_edge_request_id.as_deref(), Some("rid-1"));
        assert_eq!(r.cs_protocol_version.as_deref(), Some("HTTP/2.0"));
        // An nginx cache status CloudFront has no word for is left out, not "Error".
        let r = mapping(Preset::NginxJson)
            .map_line(br#"{"time":"1","upstream_cache_status":"SCARCE"}"#, 0)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.x_edge_result_type, None);
    }

    #[test]
    fn overrides_replace_add_and_drop_rules_and_hosts_pick_distributions() {
        let cfg = MappingConfig {
            fields: [
                ("cs(Host)".to_owned(), "server_name".to_owned()),
                ("cs_cookie".to_owned(), String::new()),
                ("time_taken".to_owned(), "took_ms|millis".to_owned()),
            ]
            .into(),
            distribution: Some("EDEFAULT".into()),
            distribution_by_host: [("a.example".to_owned(), "EA".to_owned())].into(),
            edge_location: Some("fra1".into()),
        };
        let m = Mapping::new(Preset::NginxJson, &cfg).unwrap_or_else(|e| panic!("{e}"));
        let r = m
            .map_line(
                br#"{"time":"1","host":"x","server_name":"a.example","http_cookie":"s=1","took_ms":250}"#,
                0,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.cs_host.as_deref(), Some("a.example"));
        assert_eq!(r.distribution_id, "EA");
        assert_eq!(r.cs_cookie, None);
        assert_eq!(r.time_taken, Some(0.25));
        assert_eq!(r.x_edge_location.as_deref(), Some("fra1"));
        let r = m
            .map_line(br#"{"time":"1","server_name":"b.example"}"#, 0)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.distribution_id, "EDEFAULT");
        // Without a default, an unknown host is a clear refusal.
        let m = Mapping::new(
            Preset::NginxJson,
            &MappingConfig {
                distribution_by_host: [("a.example".to_owned(), "EA".to_owned())].into(),
                ..MappingConfig::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let e = m
            .map_line(br#"{"time":"1","host":"b"}"#, 0)
            .err()
            .unwrap_or_default();
        assert!(e.contains("no distribution for host \"b\""), "{e}");
    }
}
