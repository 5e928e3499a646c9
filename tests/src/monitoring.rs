//! Debian's Prometheus and Alertmanager on loopback, each in a directory of its own and
//! killed on drop. Missing binaries are an error (run scripts/install-test-deps.sh).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::free_port;
use crate::process::{ChildProc, wait_port};

fn debian_binary(name: &str) -> anyhow::Result<PathBuf> {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/bin", "/usr/sbin"])
    {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{name} is not installed: run scripts/install-test-deps.sh (Debian's package)")
}

/// A query string value, percent-encoded.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub struct Alertmanager {
    _proc: ChildProc,
    pub port: u16,
}

impl Alertmanager {
    /// Alertmanager grouping by alarm and distribution, notifying (firing and resolved)
    /// the webhook on loopback `webhook_port` within about a second; no cluster.
    pub fn start(dir: &Path, webhook_port: u16) -> anyhow::Result<Alertmanager> {
        let bin = debian_binary("prometheus-alertmanager")?;
        fs::create_dir_all(dir.join("data"))?;
        let config = format!(
            "route:
  receiver: capture
  group_by: [alertname, distribution]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: capture
    webhook_configs:
      - url: http://127.0.0.1:{webhook_port}/alerts
        send_resolved: true
"
        );
        fs::write(dir.join("alertmanager.yml"), config)?;
        let port = free_port();
        let mut proc = ChildProc::new("alertmanager", &dir.join("alertmanager.log"));
        proc.start(
            Command::new(bin)
                .arg(format!(
                    "--config.file={}",
                    dir.join("alertmanager.yml").display()
                ))
                .arg(format!("--storage.path={}", dir.join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--cluster.listen-address="),
        )?;
        wait_port(port, &mut proc).with_context(|| proc.log_tail(20))?;
        Ok(Alertmanager { _proc: proc, port })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `GET /api/v2/alerts`: the alerts it holds.
    pub fn alerts(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let body = crate::http_get(&format!("{}/api/v2/alerts", self.url()))?;
        serde_json::from_str(&body).with_context(|| body.clone())
    }
}

pub struct Prometheus {
    _proc: ChildProc,
    pub port: u16,
}

impl Prometheus {
    /// Prometheus scraping each `(job, host:port)` at `/metrics` every second.
    pub fn start(dir: &Path, targets: &[(&str, String)]) -> anyhow::Result<Prometheus> {
        let bin = debian_binary("prometheus")?;
        fs::create_dir_all(dir.join("data"))?;
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for (job, target) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ));
        }
        fs::write(dir.join("prometheus.yml"), config)?;
        let port = free_port();
        let mut proc = ChildProc::new("prometheus", &dir.join("prometheus.log"));
        proc.start(
            Command::new(bin)
                .arg(format!(
                    "--config.file={}",
                    dir.join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}")),
        )?;
        wait_port(port, &mut proc).with_context(|| proc.log_tail(20))?;
        Ok(Prometheus { _proc: proc, port })
    }

    /// An instant query through the HTTP API: each series' labels and value.
    pub fn query(&self, q: &str) -> anyhow::Result<Vec<(serde_json::Value, f64)>> {
        let body = crate::http_get(&format!(
            "http://127.0.0.1:{}/api/v1/query?query={}",
            self.port,
            encode(q)
        ))?;
        let v: serde_json::Value = serde_json::from_str(&body).with_context(|| body.clone())?;
        anyhow::ensure!(v["status"] == "success", "{body}");
        v["data"]["result"]
            .as_array()
            .context("no result")?
            .iter()
            .map(|s| {
                let value = s["value"][1]
                    .as_str()
                    .and_then(|x| x.parse().ok())
                    .context("no value")?;
                Ok((s["metric"].clone(), value))
            })
            .collect()
    }
}
