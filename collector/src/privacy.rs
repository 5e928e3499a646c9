//! Privacy at ingest: what a distribution's records keep of the viewer's address and of
//! other personal fields. Applied to each record as it is parsed, before anything is
//! written (the write-ahead log included), so a raw value never reaches the disk.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use edgelog_record::{FIELDS, FieldKind, Record, check_distribution_id, field_index};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// What happens to c-ip and each address in x-forwarded-for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IpRule {
    Keep,
    /// IPv4 to its /24 (`192.0.2.0`), IPv6 to its /48 (`2001:db8:1::`). A value that is
    /// not an address is dropped.
    Truncate,
    /// A keyed hash (`hash_key`): the same address gives the same value until the key
    /// changes, and cannot be turned back into the address without the key.
    Hash,
    Drop,
}

/// What happens to another field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldRule {
    Keep,
    /// A keyed hash of the value (text fields only).
    Hash,
    Drop,
}

/// One distribution's rule (or the default one).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyRule {
    /// c-ip and x-forwarded-for; unset: the default rule's (keep, in the default rule).
    pub ip: Option<IpRule>,
    /// Other fields by CloudFront or Athena name; a distribution's list is laid over the
    /// default's.
    pub fields: BTreeMap<String, FieldRule>,
}

/// `[collector.privacy]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// The secret of `hash` (HMAC-SHA256; at least 16 characters). Changing it rotates
    /// the pseudonyms: values hashed before and after no longer match.
    pub hash_key: String,
    pub default: PrivacyRule,
    /// Rules by distribution id, over the default.
    pub distributions: BTreeMap<String, PrivacyRule>,
}

/// A rule ready to apply.
#[derive(Debug, Clone, Default)]
struct Compiled {
    ip: Option<IpRule>,
    fields: Vec<(usize, FieldRule)>,
}

impl Compiled {
    fn is_noop(&self) -> bool {
        matches!(self.ip, None | Some(IpRule::Keep))
            && self.fields.iter().all(|(_, r)| *r == FieldRule::Keep)
    }
}

/// The compiled `[collector.privacy]`.
#[derive(Clone, Default)]
pub struct Privacy {
    key: Option<Hmac<Sha256>>,
    default: Compiled,
    by_distribution: HashMap<String, Compiled>,
    noop: bool,
}

impl std::fmt::Debug for Privacy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Privacy")
            .field("default", &self.default)
            .field("distributions", &self.by_distribution.len())
            .finish_non_exhaustive()
    }
}

const IP_FIELDS: [&str; 2] = ["c_ip", "x_forwarded_for"];

fn compile_fields(
    key: &str,
    fields: &BTreeMap<String, FieldRule>,
) -> Result<Vec<(usize, FieldRule)>, String> {
    let mut out = Vec::new();
    for (name, rule) in fields {
        let i = field_index(name).ok_or_else(|| {
            format!("{key}.fields: {name:?} is not a record field (CloudFront or Athena name)")
        })?;
        if IP_FIELDS.contains(&FIELDS[i].column) {
            return Err(format!(
                "{key}.fields: {name:?} is an address: set {key}.ip instead"
            ));
        }
        if name == "x_edge_request_id" || FIELDS[i].column == "x_edge_request_id" {
            return Err(format!(
                "{key}.fields: x-edge-request-id identifies the record (sampling, exactly-once) and must be kept"
            ));
        }
        if *rule == FieldRule::Hash && FIELDS[i].kind != FieldKind::Str {
            return Err(format!(
                "{key}.fields: {name:?} is a number: it can be kept or dropped, not hashed"
            ));
        }
        out.push((i, *rule));
    }
    Ok(out)
}

impl PrivacyConfig {
    /// Errors name the key (`collector.privacy....`).
    pub fn validate(&self) -> Result<(), String> {
        Privacy::new(self).map(|_| ())
    }
}

impl Privacy {
    pub fn new(cfg: &PrivacyConfig) -> Result<Privacy, String> {
        let base = "collector.privacy";
        let default = Compiled {
            ip: cfg.default.ip,
            fields: compile_fields(&format!("{base}.default"), &cfg.default.fields)?,
        };
        let mut by_distribution = HashMap::new();
        for (dist, rule) in &cfg.distributions {
            check_distribution_id(dist)
                .map_err(|e| format!("{base}.distributions: {dist:?}: {e}"))?;
            let key = format!("{base}.distributions.{dist}");
            let mut fields = default.fields.clone();
            for (i, r) in compile_fields(&key, &rule.fields)? {
                fields.retain(|(j, _)| *j != i);
                fields.push((i, r));
            }
            by_distribution.insert(
                dist.clone(),
                Compiled {
                    ip: rule.ip.or(default.ip),
                    fields,
                },
            );
        }
        let hashes = |c: &Compiled| {
            c.ip == Some(IpRule::Hash) || c.fields.iter().any(|(_, r)| *r == FieldRule::Hash)
        };
        let needs_key = hashes(&default) || by_distribution.values().any(hashes);
        let key = if cfg.hash_key.is_empty() {
            if needs_key {
                return Err(format!(
                    "{base}.hash_key: a rule hashes values; give a secret of at least 16 characters"
                ));
            }
            None
        } else {
            if cfg.hash_key.len() < 16 {
                return Err(format!(
                    "{base}.hash_key: at least 16 characters, got {}",
                    cfg.hash_key.len()
                ));
            }
            Some(
                Hmac::<Sha256>::new_from_slice(cfg.hash_key.as_bytes())
                    .map_err(|e| format!("{base}.hash_key: {e}"))?,
            )
        };
        let noop = default.is_noop() && by_distribution.values().all(Compiled::is_noop);
        Ok(Privacy {
            key,
            default,
            by_distribution,
            noop,
        })
    }

    /// Nothing to do for any record.
    pub fn is_noop(&self) -> bool {
        self.noop
    }

    /// Applies the record's distribution's rule. Returns the number of addresses that
    /// were not addresses and were dropped for it.
    pub fn apply(&self, rec: &mut Record) -> u64 {
        if self.noop {
            return 0;
        }
        let rule = self
            .by_distribution
            .get(&rec.distribution_id)
            .unwrap_or(&self.default);
        let mut unparsed = 0;
        if let Some(ip) = rule.ip.filter(|r| *r != IpRule::Keep) {
            if let Some(v) = rec.c_ip.take() {
                rec.c_ip = self.address(ip, v.trim(), &mut unparsed);
            }
            if let Some(v) = rec.x_forwarded_for.take() {
                let kept: Vec<String> = v
                    .split(',')
                    .filter_map(|a| self.address(ip, a.trim(), &mut unparsed))
                    .collect();
                rec.x_forwarded_for = (!kept.is_empty()).then(|| kept.join(", "));
            }
        }
        for (i, r) in &rule.fields {
            match r {
                FieldRule::Keep => {}
                FieldRule::Drop => {
                    let _ = rec.set_text(*i, "-");
                }
                FieldRule::Hash => {
                    if let edgelog_record::Value::Str(Some(s)) = rec.get(*i) {
                        let h = self.hash(s);
                        let _ = rec.set_text(*i, &h);
                    }
                }
            }
        }
        unparsed
    }

    fn address(&self, rule: IpRule, v: &str, unparsed: &mut u64) -> Option<String> {
        match rule {
            IpRule::Keep => Some(v.to_owned()),
            IpRule::Drop => None,
            IpRule::Hash => Some(self.hash(v)),
            IpRule::Truncate => match v.parse::<IpAddr>() {
                Ok(IpAddr::V4(a)) => {
                    let [x, y, z, _] = a.octets();
                    Some(std::net::Ipv4Addr::new(x, y, z, 0).to_string())
                }
                Ok(IpAddr::V6(a)) => match a.to_ipv4_mapped() {
                    Some(v4) => {
                        let [x, y, z, _] = v4.octets();
                        Some(std::net::Ipv4Addr::new(x, y, z, 0).to_string())
                    }
                    None => {
                        let s = a.segments();
                        Some(std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0).to_string())
                    }
                },
                Err(_) => {
                    *unparsed += 1;
                    None
                }
            },
        }
    }

    /// `h:` and the first 16 bytes of HMAC-SHA256(hash_key, value), in hex.
    fn hash(&self, v: &str) -> String {
        let Some(key) = &self.key else {
            // Validation requires a key wherever a rule hashes; never keep the value.
            return "h:".to_owned();
        };
        let mut mac = key.clone();
        mac.update(v.as_bytes());
        let out = mac.finalize().into_bytes();
        let mut s = String::with_capacity(34);
        s.push_str("h:");
        for b in &out[..16] {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(dist: &str, ip: &str, xff: &str) -> Record {
        Record {
            timestamp_ms: 1,
            distribution_id: dist.into(),
            c_ip: Some(ip.into()),
            x_forwarded_for: Some(xff.into()),
            cs_cookie: Some("session=s3cr3t".into()),
            cs_uri_query: Some("email=a@b.example".into()),
            cs_user_agent: Some("curl/8".into()),
            sc_bytes: Some(10),
            x_edge_request_id: Some("id".into()),
            ..Record::default()
        }
    }

    fn privacy(toml_like: PrivacyConfig) -> Privacy {
        Privacy::new(&toml_like).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn truncation_keeps_the_network_and_drops_what_is_not_an_address() {
        let p = privacy(PrivacyConfig {
            default: PrivacyRule {
                ip: Some(IpRule::Truncate),
                ..PrivacyRule::default()
            },
            ..PrivacyConfig::default()
        });
        let mut r = rec(
            "E1",
            "192.0.2.77",
            "198.51.100.9, 2001:db8:abcd:12:1:2:3:4, unknown, ::ffff:203.0.113.5",
        );
        assert_eq!(p.apply(&mut r), 1);
        assert_eq!(r.c_ip.as_deref(), Some("192.0.2.0"));
        assert_eq!(
            r.x_forwarded_for.as_deref(),
            Some("198.51.100.0, 2001:db8:abcd::, 203.0.113.0")
        );
        // Everything else as it was.
        assert_eq!(r.cs_cookie.as_deref(), Some("session=s3cr3t"));
        assert_eq!(r.sc_bytes, Some(10));
        let mut r = rec("E1", "not-an-ip", "-");
        p.apply(&mut r);
        assert_eq!((r.c_ip, r.x_forwarded_for), (None, None));
        let mut r = rec("E1", "2001:db8::1", "");
        p.apply(&mut r);
        assert_eq!(r.c_ip.as_deref(), Some("2001:db8::"));
    }

    #[test]
    fn hashing_is_keyed_stable_and_changes_with_the_key() {
        let cfg = |key: &str| PrivacyConfig {
            hash_key: key.into(),
            default: PrivacyRule {
                ip: Some(IpRule::Hash),
                fields: [
                    ("cs(Cookie)".to_owned(), FieldRule::Drop),
                    ("cs_uri_query".to_owned(), FieldRule::Hash),
                    ("sc_bytes".to_owned(), FieldRule::Drop),
                ]
                .into(),
            },
            ..PrivacyConfig::default()
        };
        let p = privacy(cfg("0123456789abcdef"));
        let (mut a, mut b) = (rec("E1", "192.0.2.7", "x"), rec("E2", "192.0.2.7", "x"));
        p.apply(&mut a);
        p.apply(&mut b);
        let h = a.c_ip.clone().unwrap_or_default();
        assert!(h.starts_with("h:") && h.len() == 34, "{h}");
        assert_eq!(a.c_ip, b.c_ip, "the same address, the same pseudonym");
        assert_eq!(a.cs_cookie, None);
        assert_eq!(a.sc_bytes, None);
        assert_ne!(a.cs_uri_query.as_deref(), Some("email=a@b.example"));
        assert_eq!(a.cs_user_agent.as_deref(), Some("curl/8"));
        let q = privacy(cfg("another-key-0123456789"));
        let mut c = rec("E1", "192.0.2.7", "x");
        q.apply(&mut c);
        assert_ne!(c.c_ip, a.c_ip, "a new key, new pseudonyms");
    }

    #[test]
    fn a_distribution_rule_lies_over_the_default() {
        let p = privacy(PrivacyConfig {
            default: PrivacyRule {
                ip: Some(IpRule::Truncate),
                fields: [("cs_cookie".to_owned(), FieldRule::Drop)].into(),
            },
            distributions: [
                (
                    "EKEEP".to_owned(),
                    PrivacyRule {
                        ip: Some(IpRule::Keep),
                        fields: [("cs_cookie".to_owned(), FieldRule::Keep)].into(),
                    },
                ),
                (
                    "EDROPUA".to_owned(),
                    PrivacyRule {
                        ip: None,
                        fields: [("cs_user_agent".to_owned(), FieldRule::Drop)].into(),
                    },
                ),
            ]
            .into(),
            ..PrivacyConfig::default()
        });
        let mut r = rec("EKEEP", "192.0.2.7", "x");
        p.apply(&mut r);
        assert_eq!(r.c_ip.as_deref(), Some("192.0.2.7"));
        assert!(r.cs_cookie.is_some());
        let mut r = rec("EDROPUA", "192.0.2.7", "x");
        p.apply(&mut r);
        assert_eq!(r.c_ip.as_deref(), Some("192.0.2.0"));
        assert_eq!(
            (r.cs_cookie.is_none(), r.cs_user_agent.is_none()),
            (true, true)
        );
        let mut r = rec("EOTHER", "192.0.2.7", "x");
        p.apply(&mut r);
        assert_eq!(r.c_ip.as_deref(), Some("192.0.2.0"));
        assert!(!Privacy::default().noop || Privacy::default().is_noop());
        assert!(privacy(PrivacyConfig::default()).is_noop());
    }

    #[test]
    fn mistakes_are_refused_with_the_key_named() {
        let with = |rule: PrivacyRule, key: &str| PrivacyConfig {
            hash_key: key.into(),
            default: rule,
            ..PrivacyConfig::default()
        };
        for (cfg, needle) in [
            (
                with(
                    PrivacyRule {
                        ip: Some(IpRule::Hash),
                        ..PrivacyRule::default()
                    },
                    "",
                ),
                "collector.privacy.hash_key",
            ),
            (
                with(
                    PrivacyRule {
                        ip: Some(IpRule::Hash),
                        ..PrivacyRule::default()
                    },
                    "short",
                ),
                "at least 16",
            ),
            (
                with(
                    PrivacyRule {
                        fields: [("nope".to_owned(), FieldRule::Drop)].into(),
                        ..PrivacyRule::default()
                    },
                    "",
                ),
                "not a record field",
            ),
            (
                with(
                    PrivacyRule {
                        fields: [("c-ip".to_owned(), FieldRule::Drop)].into(),
                        ..PrivacyRule::default()
                    },
                    "",
                ),
                "set collector.privacy.default.ip",
            ),
            (
                with(
                    PrivacyRule {
                        fields: [("sc_bytes".to_owned(), FieldRule::Hash)].into(),
                        ..PrivacyRule::default()
                    },
                    "0123456789abcdef",
                ),
                "is a number",
            ),
            (
                with(
                    PrivacyRule {
                        fields: [("x-edge-request-id".to_owned(), FieldRule::Drop)].into(),
                        ..PrivacyRule::default()
                    },
                    "",
                ),
                "must be kept",
            ),
        ] {
            let e = cfg
                .validate()
                .err()
                .unwrap_or_else(|| panic!("{needle}: accepted"));
            assert!(e.contains(needle), "{needle}: {e}");
        }
        let bad_dist = PrivacyConfig {
            distributions: [("has space".to_owned(), PrivacyRule::default())].into(),
            ..PrivacyConfig::default()
        };
        assert!(bad_dist.validate().is_err());
    }
}
