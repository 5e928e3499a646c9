//! Who the viewer is, from cs(User-Agent): device class, browser and operating system,
//! parsed with `woothee` and cached (a fleet's traffic repeats a few thousand agents).

use edgelog_record::report::{NONE, Viewer};
use hashbrown::HashMap;
use percent_encoding::percent_decode_str;

/// Agents remembered; past this the cache starts over (a flood of unique agents costs
/// a parse each, never memory).
const CACHE_ENTRIES: usize = 4096;
/// Longer agents are classified by their first bytes.
const MAX_AGENT_BYTES: usize = 512;

#[derive(Debug, Clone)]
struct Classified {
    device: usize,
    browser: String,
    os: String,
}

/// Classifies user agents (as logged: URL-encoded).
#[derive(Default)]
pub struct ViewerClassifier {
    parser: woothee::parser::Parser,
    cache: HashMap<String, Classified>,
}

impl ViewerClassifier {
    pub fn classify(&mut self, agent: Option<&str>) -> Viewer<'_> {
        let agent = edgelog_record::report::cut(agent.unwrap_or(NONE), MAX_AGENT_BYTES);
        if self.cache.len() >= CACHE_ENTRIES && !self.cache.contains_key(agent) {
            self.cache.clear();
        }
        let parser = &self.parser;
        let c = self
            .cache
            .entry_ref(agent)
            .or_insert_with(|| classify(parser, agent));
        Viewer {
            device: c.device,
            browser: &c.browser,
            os: &c.os,
        }
    }
}

/// Device index in [`edgelog_record::report::DEVICES`], browser and OS of one agent. An
/// absent agent (`-`) is `other`, `-`, `-`; one woothee does not know is `other`,
/// `UNKNOWN`, `UNKNOWN`, as woothee names it.
fn classify(parser: &woothee::parser::Parser, agent: &str) -> Classified {
    if agent == NONE || agent.is_empty() {
        return Classified {
            device: 4,
            browser: NONE.into(),
            os: NONE.into(),
        };
    }
    let decoded = percent_decode_str(agent).decode_utf8_lossy();
    let Some(w) = parser.parse(&decoded) else {
        return Classified {
            device: 4,
            browser: "UNKNOWN".into(),
            os: "UNKNOWN".into(),
        };
    };
    let device = match w.category {
        "pc" => 0,
        // woothee files tablets under smartphone: an iPad, or Android without "Mobile"
        // (Google's own rule for telling Android tablets from phones).
        "smartphone" | "mobilephone"
            if w.os == "iPad" || (w.os == "Android" && !decoded.contains("Mobile")) =>
        {
            2
        }
        "smartphone" | "mobilephone" => 1,
        "crawler" => 3,
        _ => 4,
    };
    Classified {
        device,
        browser: w.name.to_owned(),
        os: w.os.to_owned(),
    }
}

/// Device, browser and OS of one agent as the reports count it (for tests and tools
/// that compare with the logs).
pub fn classify_agent(agent: Option<&str>) -> (&'static str, String, String) {
    let mut c = ViewerClassifier::default();
    let v = c.classify(agent);
    let device = edgelog_record::report::DEVICES[v.device];
    (device, v.browser.to_owned(), v.os.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_of_common_agents() {
        for (agent, want) in [
            (
                "Mozilla/5.0%20(Windows%20NT%2010.0;%20Win64;%20x64)%20AppleWebKit/537.36%20(KHTML,%20like%20Gecko)%20Chrome/120.0.0.0%20Safari/537.36",
                ("desktop", "Chrome", "Windows 10"),
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
                ("mobile", "Safari", "iPhone"),
            ),
            (
                "Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
                ("tablet", "Safari", "iPad"),
            ),
            (
                "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
                ("bot", "Googlebot", "UNKNOWN"),
            ),
            ("-", ("other", "-", "-")),
            ("%ff%fe\u{0}", ("other", "UNKNOWN", "UNKNOWN")),
        ] {
            let (d, b, o) = classify_agent(Some(agent));
            assert_eq!((d, b.as_str(), o.as_str()), want, "{agent}");
        }
        assert_eq!(classify_agent(None).0, "other");
    }

    #[test]
    fn a_flood_of_unique_agents_stays_within_the_cache() {
        let mut c = ViewerClassifier::default();
        for i in 0..(CACHE_ENTRIES * 2 + 7) {
            c.classify(Some(&format!("agent-{i}")));
        }
        assert!(c.cache.len() <= CACHE_ENTRIES);
        let huge = "x".repeat(1 << 20);
        c.classify(Some(&huge));
        assert!(c.cache.keys().all(|k| k.len() <= MAX_AGENT_BYTES));
    }
}
