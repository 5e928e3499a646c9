//! Realistic CloudFront-like requests for a fleet of distributions and edge locations.

use base64::Engine;
use edgelog_record::Record;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

const LOCATIONS: &[&str] = &[
    "IAD89-C1", "IAD12-P2", "DFW53-C1", "LAX50-P1", "SEA19-C1", "ORD52-C3", "FRA56-P5", "LHR61-C2",
    "CDG52-P3", "AMS1-C1", "NRT57-P2", "SIN2-C1", "SYD1-C2", "GRU3-C1", "BOM78-P4", "JFK50-C2",
];
const COUNTRIES: &[(&str, u32)] = &[
    ("US", 7922),
    ("US", 7018),
    ("US", 701),
    ("MX", 8151),
    ("ES", 3352),
    ("IT", 3269),
    ("KR", 4766),
    ("ZA", 37457),
    ("US", 16509),
    ("DE", 3320),
    ("GB", 2856),
    ("FR", 3215),
    ("JP", 2516),
    ("SG", 4657),
    ("AU", 1221),
    ("BR", 28573),
    ("IN", 55836),
    ("NL", 1136),
    ("CA", 812),
];
/// Real agents (URL-encoded, as logged), with weights: browsers on desktops, phones and
/// tablets, crawlers and tools.
const USER_AGENTS: &[(u32, &str)] = &[
    (
        28,
        "Mozilla/5.0%20(Windows%20NT%2010.0;%20Win64;%20x64)%20AppleWebKit/537.36%20(KHTML,%20like%20Gecko)%20Chrome/131.0.0.0%20Safari/537.36",
    ),
    (
        6,
        "Mozilla/5.0%20(Windows%20NT%2010.0;%20Win64;%20x64)%20AppleWebKit/537.36%20(KHTML,%20like%20Gecko)%20Chrome/131.0.0.0%20Safari/537.36%20Edg/131.0.2903.70",
    ),
    (
        9,
        "Mozilla/5.0%20(Macintosh;%20Intel%20Mac%20OS%20X%2014_6)%20AppleWebKit/605.1.15%20(KHTML,%20like%20Gecko)%20Version/18.1%20Safari/605.1.15",
    ),
    (
        18,
        "Mozilla/5.0%20(iPhone;%20CPU%20iPhone%20OS%2018_1%20like%20Mac%20OS%20X)%20AppleWebKit/605.1.15%20(KHTML,%20like%20Gecko)%20Version/18.1%20Mobile/15E148%20Safari/604.1",
    ),
    (
        16,
        "Mozilla/5.0%20(Linux;%20Android%2014;%20Pixel%208)%20AppleWebKit/537.36%20(KHTML,%20like%20Gecko)%20Chrome/131.0.0.0%20Mobile%20Safari/537.36",
    ),
    (
        4,
        "Mozilla/5.0%20(iPad;%20CPU%20OS%2017_7%20like%20Mac%20OS%20X)%20AppleWebKit/605.1.15%20(KHTML,%20like%20Gecko)%20Version/17.4%20Mobile/15E148%20Safari/604.1",
    ),
    (
        2,
        "Mozilla/5.0%20(Linux;%20Android%2013;%20SM-X710)%20AppleWebKit/537.36%20(KHTML,%20like%20Gecko)%20Chrome/131.0.0.0%20Safari/537.36",
    ),
    (
        5,
        "Mozilla/5.0%20(X11;%20Linux%20x86_64;%20rv:133.0)%20Gecko/20100101%20Firefox/133.0",
    ),
    (
        3,
        "Mozilla/5.0%20(Windows%20NT%2010.0;%20Win64;%20x64;%20rv:133.0)%20Gecko/20100101%20Firefox/133.0",
    ),
    (
        3,
        "Mozilla/5.0%20(compatible;%20Googlebot/2.1;%20+http://www.google.com/bot.html)",
    ),
    (
        2,
        "Mozilla/5.0%20(compatible;%20bingbot/2.0;%20+http://www.bing.com/bingbot.htm)",
    ),
    (2, "curl/8.5.0"),
    (2, "okhttp/4.12.0"),
];

/// Referrer domains besides the distribution's own, most popular first (a Zipf draw
/// picks them; ranks past the list are a long tail of small sites).
const REFERRERS: &[&str] = &[
    "www.google.com",
    "www.facebook.com",
    "t.co",
    "www.bing.com",
    "news.ycombinator.com",
    "www.reddit.com",
    "duckduckgo.com",
    "www.linkedin.com",
    "l.instagram.com",
    "search.yahoo.com",
    "www.youtube.com",
    "android-app://com.google.android.gm",
    "github.com",
    "medium.com",
    "www.baidu.com",
    "yandex.ru",
    "stackoverflow.com",
    "www.pinterest.com",
    "mail.google.com",
    "outlook.live.com",
];
/// Objects per kind (Zipf ranks), and referrer domains in all.
const OBJECTS_PER_KIND: f64 = 2000.0;
const REFERRER_DOMAINS: f64 = 400.0;
const CIPHERS: &[(&str, &str)] = &[
    ("TLSv1.3", "TLS_AES_128_GCM_SHA256"),
    ("TLSv1.3", "TLS_AES_256_GCM_SHA384"),
    ("TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256"),
    ("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256"),
];

/// A kind of object: path shape, content type, typical size, cache behavior.
struct Object {
    prefix: &'static str,
    suffix: &'static str,
    content_type: &'static str,
    /// log-uniform size range in bytes
    size: (f64, f64),
    cache_pattern: &'static str,
    cacheable: bool,
}

const OBJECTS: &[(u32, Object)] = &[
    (
        10,
        Object {
            prefix: "/",
            suffix: "",
            content_type: "text/html",
            size: (2e3, 6e4),
            cache_pattern: "*",
            cacheable: true,
        },
    ),
    (
        25,
        Object {
            prefix: "/assets/app.",
            suffix: ".js",
            content_type: "application/javascript",
            size: (2e4, 6e5),
            cache_pattern: "/assets/*",
            cacheable: true,
        },
    ),
    (
        10,
        Object {
            prefix: "/assets/style.",
            suffix: ".css",
            content_type: "text/css",
            size: (5e3, 1e5),
            cache_pattern: "/assets/*",
            cacheable: true,
        },
    ),
    (
        30,
        Object {
            prefix: "/img/",
            suffix: ".jpg",
            content_type: "image/jpeg",
            size: (1e4, 2e6),
            cache_pattern: "/img/*",
            cacheable: true,
        },
    ),
    (
        15,
        Object {
            prefix: "/api/v1/items/",
            suffix: "",
            content_type: "application/json",
            size: (2e2, 8e3),
            cache_pattern: "/api/*",
            cacheable: false,
        },
    ),
    (
        10,
        Object {
            prefix: "/video/seg-",
            suffix: ".ts",
            content_type: "video/MP2T",
            size: (3e5, 2.5e6),
            cache_pattern: "/video/*",
            cacheable: true,
        },
    ),
];

/// Error injection: extra 4xx and 5xx shares while a burst is on.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ErrorMix {
    /// Percent of requests answered with a 4xx.
    pub pct_4xx: f64,
    /// Percent of requests answered with a 5xx.
    pub pct_5xx: f64,
}

/// Makes records. Deterministic for a seed.
pub struct Generator {
    rng: SmallRng,
    distributions: Vec<(String, String)>,
    locations: usize,
    object_weight_total: u32,
    agent_weight_total: u32,
    objects: Zipf<f64>,
    referrers: Zipf<f64>,
}

impl Generator {
    /// `distributions` distributions served from `locations` edge locations.
    pub fn new(seed: u64, distributions: usize, locations: usize) -> Generator {
        let mut rng = SmallRng::seed_from_u64(seed);
        let distributions = (0..distributions.max(1))
            .map(|_| {
                let id: String = std::iter::once('E')
                    .chain((0..13).map(|_| {
                        char::from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[rng.random_range(0..36)])
                    }))
                    .collect();
                let host: String = (0..13)
                    .map(|_| {
                        char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)])
                    })
                    .collect();
                (id, format!("d{host}.cloudfront.net"))
            })
            .collect();
        Generator {
            rng,
            distributions,
            locations: locations.clamp(1, LOCATIONS.len()),
            object_weight_total: OBJECTS.iter().map(|(w, _)| w).sum(),
            agent_weight_total: USER_AGENTS.iter().map(|(w, _)| w).sum(),
            // Constant, valid parameters: these cannot fail.
            objects: Zipf::new(OBJECTS_PER_KIND, 1.1).unwrap_or_else(|_| unreachable!()),
            referrers: Zipf::new(REFERRER_DOMAINS, 1.2).unwrap_or_else(|_| unreachable!()),
        }
    }

    /// Keeps the distributions and draws the records from another seed: another edge
    /// server of the same fleet.
    pub fn reseed(&mut self, seed: u64) {
        self.rng = SmallRng::seed_from_u64(seed);
    }

    /// The distribution ids, in the order records cycle through them.
    pub fn distribution_ids(&self) -> Vec<String> {
        self.distributions
            .iter()
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.rng.random_range(0..items.len())]
    }

    fn chance(&mut self, pct: f64) -> bool {
        self.rng.random::<f64>() * 100.0 < pct
    }

    fn log_uniform(&mut self, (lo, hi): (f64, f64)) -> u64 {
        (lo.ln() + self.rng.random::<f64>() * (hi.ln() - lo.ln())).exp() as u64
    }

    fn agent(&mut self) -> &'static str {
        let mut w = self.rng.random_range(0..self.agent_weight_total);
        USER_AGENTS
            .iter()
            .find(|(weight, _)| {
                let hit = w < *weight;
                w = w.saturating_sub(*weight);
                hit
            })
            .map_or(USER_AGENTS[0].1, |(_, a)| a)
    }

    /// None (a direct request) for 35 %, the distribution's own pages for a quarter of
    /// the rest, else a Zipf-drawn domain.
    fn referrer(&mut self, host: &str) -> Option<String> {
        if self.chance(35.0) {
            return None;
        }
        if self.chance(25.0) {
            return Some(format!("https://{host}/"));
        }
        let rank = (self.referrers.sample(&mut self.rng) as usize).saturating_sub(1);
        Some(match REFERRERS.get(rank) {
            Some(d) if d.contains("://") => format!("{d}/"),
            Some(d) => format!("https://{d}/"),
            None => format!("https://site{rank}.example.org/post/{}", rank * 7 % 13),
        })
    }

    /// CloudFront-style request id: 40 random bytes, URL-safe base64 (56 characters).
    fn request_id(&mut self) -> String {
        let mut b = [0u8; 40];
        self.rng.fill(&mut b[..]);
        base64::engine::general_purpose::URL_SAFE.encode(b)
    }

    /// One request at `timestamp_ms` for distribution number `dist` (modulo the count).
    pub fn record(&mut self, timestamp_ms: i64, dist: usize, errors: ErrorMix) -> Record {
        let (distribution_id, host) = self.distributions[dist % self.distributions.len()].clone();
        let mut w = self.rng.random_range(0..self.object_weight_total);
        let obj = OBJECTS
            .iter()
            .find(|(weight, _)| {
                let hit = w < *weight;
                w = w.saturating_sub(*weight);
                hit
            })
            .map_or(&OBJECTS[0].1, |(_, o)| o);
        // Popularity is Zipf-distributed: a few objects take most requests.
        let n = (self.objects.sample(&mut self.rng) as u32).saturating_sub(1);
        let stem = match obj.suffix {
            "" if obj.prefix == "/" => {
                if n.is_multiple_of(3) {
                    "/".to_owned()
                } else {
                    format!("/page/{n}")
                }
            }
            "" => format!("{}{n}", obj.prefix),
            s => format!("{}{n:x}{s}", obj.prefix),
        };
        let method = match self.rng.random_range(0..100) {
            0..=84 => "GET",
            85..=89 => "HEAD",
            90..=95 if !obj.cacheable => "POST",
            90..=95 => "GET",
            96..=97 if !obj.cacheable => "PUT",
            96..=97 => "GET",
            _ => "OPTIONS",
        };
        let burst_roll = self.rng.random::<f64>() * 100.0;
        let status: u16 = if burst_roll < errors.pct_5xx {
            *self.pick(&[500, 502, 502, 503, 503, 504])
        } else if burst_roll < errors.pct_5xx + errors.pct_4xx {
            *self.pick(&[400, 401, 403, 403, 404, 404, 404, 429])
        } else {
            match self.rng.random_range(0..1000) {
                0..=879 => 200,
                880..=919 => 304,
                920..=939 if obj.content_type == "video/MP2T" => 206,
                920..=939 => 200,
                940..=949 => 301,
                950..=959 => 403,
                960..=989 => 404,
                990..=992 => 500,
                993..=995 => 502,
                996..=997 => 503,
                _ => 504,
            }
        };
        let hit = obj.cacheable && method != "POST" && method != "PUT";
        let result = match status {
            500..=599 => "Error",
            400..=499 => "Error",
            301 => "Redirect",
            _ if !hit => "Miss",
            // The popular objects stay in cache; the long tail misses more.
            _ => match (self.rng.random_range(0..100), n) {
                (0..=4, _) => "RefreshHit",
                (5..=96, 0..20) | (5..=84, 20..200) | (5..=49, _) => "Hit",
                _ => "Miss",
            },
        };
        let detailed = match (status, result) {
            (502, _) => *self.pick(&["OriginConnectError", "OriginDnsError", "OriginReadError"]),
            (504, _) => "OriginCommError",
            (403, _) => "Error",
            (_, r) => r,
        };
        let body = match status {
            200 | 206 => self.log_uniform(obj.size),
            304 | 301 => 0,
            _ => self.rng.random_range(300..1200),
        };
        let headers = self.rng.random_range(250..650u64);
        // A viewer now and then goes away before a large body is through.
        let sent = if method == "GET" && body > 100_000 && self.chance(3.0) {
            body / 3
        } else {
            body
        };
        let (served_from_origin, base) = if result == "Hit" || result == "RefreshHit" {
            (false, 0.0005)
        } else {
            (true, 0.02)
        };
        let ttfb =
            base + self.rng.random::<f64>().powi(2) * if served_from_origin { 0.8 } else { 0.01 };
        let transfer = body as f64 / 50e6 * (1.0 + self.rng.random::<f64>());
        let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
        let https = self.chance(96.0);
        let (ssl_protocol, ssl_cipher) = if https {
            *self.pick(CIPHERS)
        } else {
            ("-", "-")
        };
        let (country, asn) = *self.pick(COUNTRIES);
        let c_ip = if self.chance(15.0) {
            format!(
                "2001:db8:{:x}::{:x}",
                self.rng.random::<u16>(),
                self.rng.random::<u16>()
            )
        } else {
            let net = *self.pick(&["192.0.2", "198.51.100", "203.0.113"]);
            format!("{net}.{}", self.rng.random_range(1..255))
        };
        let loc = LOCATIONS[self.rng.random_range(0..self.locations)];
        let some = |s: &str| (s != "-").then(|| s.to_owned());
        let range = (status == 206).then(|| {
            let start = self.rng.random_range(0..body.max(1)) as i64;
            (start, start + body as i64 - 1)
        });
        Record {
            timestamp_ms,
            distribution_id,
            x_edge_location: Some(loc.to_owned()),
            sc_bytes: Some(sent + headers),
            c_ip: Some(c_ip),
            cs_method: Some(method.to_owned()),
            cs_host: Some(host.clone()),
            cs_uri_stem: Some(stem),
            sc_status: Some(status),
            cs_referer: self.referrer(&host),
            cs_user_agent: Some(self.agent().to_owned()),
            cs_uri_query: self
                .chance(25.0)
                .then(|| format!("v={}&utm_source=mail", self.rng.random_range(1..40))),
            cs_cookie: self
                .chance(10.0)
                .then(|| format!("session={:016x}", self.rng.random::<u64>())),
            x_edge_result_type: Some(result.to_owned()),
            x_edge_request_id: Some(self.request_id()),
            x_host_header: Some(host),
            cs_protocol: Some(if https { "https" } else { "http" }.to_owned()),
            cs_bytes: Some(match method {
                "POST" | "PUT" => self.log_uniform((5e2, 2e5)),
                _ => self.rng.random_range(150..900),
            }),
            time_taken: Some(round3(ttfb + transfer).max(0.001)),
            x_forwarded_for: None,
            ssl_protocol: some(ssl_protocol),
            ssl_cipher: some(ssl_cipher),
            x_edge_response_result_type: Some(result.to_owned()),
            cs_protocol_version: Some(
                match self.rng.random_range(0..10) {
                    0..=5 => "HTTP/2.0",
                    6..=8 => "HTTP/1.1",
                    _ => "HTTP/3.0",
                }
                .to_owned(),
            ),
            fle_status: None,
            fle_encrypted_fields: None,
            c_port: Some(self.rng.random_range(1024..65535)),
            time_to_first_byte: Some(round3(ttfb).max(0.001)),
            x_edge_detailed_result_type: Some(detailed.to_owned()),
            sc_content_type: Some(obj.content_type.to_owned()),
            sc_content_len: (status == 200 || status == 206).then_some(body),
            sc_range_start: range.map(|r| r.0),
            sc_range_end: range.map(|r| r.1),
            c_country: Some(country.to_owned()),
            asn: Some(asn),
            cache_behavior_path_pattern: Some(obj.cache_pattern.to_owned()),
        }
    }
}
