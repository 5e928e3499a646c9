//! The `edgelog` binary under test, as a server: [`ServerConfig`] builds its TOML,
//! [`TestServer`] starts it on port 0, reads the address it bound from its log, waits on
//! `/readyz` (the dashboard: `/healthz`), keeps its log for failure messages, and kills
//! it on drop. A restarted collector binds the same port again.
//!
//! Just over 500 lines: the config builder and the server share this one file.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::process::{ChildProc, wait_for, within};
use crate::{TOKEN, binary};

/// How long a server may take to listen and be ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A value as TOML writes it.
pub trait ToToml {
    fn to_toml(&self) -> String;
}

impl ToToml for &str {
    fn to_toml(&self) -> String {
        format!("{self:?}")
    }
}

impl ToToml for String {
    fn to_toml(&self) -> String {
        self.as_str().to_toml()
    }
}

impl ToToml for &[&str] {
    fn to_toml(&self) -> String {
        let items: Vec<String> = self.iter().map(|s| s.to_toml()).collect();
        format!("[{}]", items.join(", "))
    }
}

impl<const N: usize> ToToml for [&str; N] {
    fn to_toml(&self) -> String {
        self.as_slice().to_toml()
    }
}

/// A duration as the configuration writes it ("250ms", "3s").
impl ToToml for Duration {
    fn to_toml(&self) -> String {
        if self.subsec_millis() == 0 {
            format!("\"{}s\"", self.as_secs())
        } else {
            format!("\"{}ms\"", self.as_millis())
        }
    }
}

macro_rules! plain_toml {
    ($($t:ty),*) => {$(
        impl ToToml for $t {
            fn to_toml(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
plain_toml!(bool, u32, u64, i64, usize, f64);

/// An edgelog configuration file, table by table, and the environment to start with.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    /// Table name ("" for the top level) to its `key = value` lines.
    tables: BTreeMap<String, BTreeMap<String, String>>,
    env: Vec<(String, String)>,
}

impl ServerConfig {
    pub fn new() -> ServerConfig {
        ServerConfig::default()
    }

    /// `key = value` in `[table]` ("" for the top level); `key` is written as given, so a
    /// dotted name needs its quotes (`"\"message.max.bytes\""`).
    pub fn set(mut self, table: &str, key: &str, value: impl ToToml) -> ServerConfig {
        self.tables
            .entry(table.to_owned())
            .or_default()
            .insert(key.to_owned(), value.to_toml());
        self
    }

    fn has(&self, table: &str, key: &str) -> bool {
        self.tables.get(table).is_some_and(|t| t.contains_key(key))
    }

    /// An environment variable for the process (kept on restart).
    pub fn env(mut self, key: &str, value: impl Into<String>) -> ServerConfig {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    /// `collector.id`.
    pub fn id(self, id: &str) -> ServerConfig {
        self.set("collector", "id", id)
    }

    /// A `[sinks.standard]` setting (`max_age`, `max_rows`, ...).
    pub fn standard(self, key: &str, value: impl ToToml) -> ServerConfig {
        self.set("sinks.standard", key, value)
    }

    /// A `[sinks.realtime]` setting.
    pub fn realtime(self, key: &str, value: impl ToToml) -> ServerConfig {
        self.set("sinks.realtime", key, value)
    }

    /// Turns a sink off (`"standard"`, `"realtime"`).
    pub fn without_sink(self, sink: &str) -> ServerConfig {
        self.set(&format!("sinks.{sink}"), "enabled", false)
    }

    /// `[sampling.default]`: the percentage `destination` (`standard`, `realtime`) keeps.
    pub fn sample(self, destination: &str, percent: u32) -> ServerConfig {
        self.set("sampling.default", destination, percent)
    }

    /// `collector.shutdown_timeout`.
    pub fn shutdown_timeout(self, budget: Duration) -> ServerConfig {
        self.set("collector", "shutdown_timeout", budget)
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        if let Some(top) = self.tables.get("") {
            for (k, v) in top {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        for (name, keys) in self.tables.iter().filter(|(n, _)| !n.is_empty()) {
            out.push_str(&format!("\n[{name}]\n"));
            for (k, v) in keys {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        out
    }

    /// A collector's file: this, with the data dir, port 0 on loopback, the test token
    /// and id `collector-1` unless given.
    fn for_collector(&self, data_dir: &Path) -> ServerConfig {
        let mut c = self
            .clone()
            .set("", "data_dir", data_dir.display().to_string())
            .set("collector", "listen", "127.0.0.1:0");
        if !c.has("collector", "id") {
            c = c.id("collector-1");
        }
        if !c.has("collector", "tokens") {
            c = c.set("collector", "tokens", [TOKEN]);
        }
        c
    }
}

/// What runs: which addresses it has, and which endpoint says it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `edgelog collector`: ingest, ready on `/readyz`.
    Collector,
    /// `edgelog demo`: ingest (`/readyz`) and the dashboard (`/healthz`).
    Demo,
    /// `edgelog dashboard`: ready on `/healthz`.
    Dashboard,
}

/// The log line a collector (or a demo) writes once it listens; its `listen=` is the
/// address bound.
const INGEST_LINE: (&str, &str) = ("collector accepting records", "listen=");
/// The line the dashboard writes once it listens; `url=http://ADDR/`.
const DASHBOARD_LINE: (&str, &str) = ("dashboard serving", "url=");

/// The `edgelog` binary running as a server; killed on drop.
pub struct TestServer {
    proc: ChildProc,
    kind: Kind,
    dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Ingest (the dashboard for [`Kind::Dashboard`]).
    addr: SocketAddr,
    dashboard: Option<SocketAddr>,
}

impl TestServer {
    /// A collector on `data_dir` (its config and log go there too); returns once
    /// `/readyz` says it accepts.
    pub fn collector(data_dir: &Path, cfg: &ServerConfig) -> anyhow::Result<TestServer> {
        let mut s = TestServer::collector_listening(data_dir, cfg)?;
        s.wait_ready()?;
        Ok(s)
    }

    /// A collector, returned as soon as it logs that it listens (before `/readyz`).
    pub fn collector_listening(data_dir: &Path, cfg: &ServerConfig) -> anyhow::Result<TestServer> {
        fs::create_dir_all(data_dir)?;
        let config = data_dir.join("edgelog.toml");
        fs::write(&config, cfg.for_collector(data_dir).to_toml())?;
        let args = vec![
            "collector".to_owned(),
            "--config".to_owned(),
            config.display().to_string(),
        ];
        TestServer::launch(Kind::Collector, data_dir, args, &cfg.env)
    }

    /// `edgelog demo --data-dir DATA_DIR` with `args`; returns once ingest and the
    /// dashboard are ready. Its log and stdout are in `data_dir`.
    /// Both listeners are on port 0.
    pub fn demo(
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, String)],
    ) -> anyhow::Result<TestServer> {
        let mut all: Vec<String> = [
            "demo",
            "--data-dir",
            &data_dir.display().to_string(),
            "--listen",
            "127.0.0.1:0",
            "--dashboard-listen",
            "127.0.0.1:0",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        all.extend(args.iter().map(|s| (*s).to_owned()));
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        fs::create_dir_all(data_dir)?;
        let mut s = TestServer::launch(Kind::Demo, data_dir, all, &env)?;
        s.wait_ready()?;
        Ok(s)
    }

    /// `edgelog dashboard` on `cfg` (with `dashboard.listen` on port 0); config and log in
    /// `dir`.
    pub fn dashboard(dir: &Path, cfg: &ServerConfig) -> anyhow::Result<TestServer> {
        fs::create_dir_all(dir)?;
        let config = dir.join("dashboard.toml");
        let cfg = cfg.clone().set("dashboard", "listen", "127.0.0.1:0");
        fs::write(&config, cfg.to_toml())?;
        let args = vec![
            "dashboard".to_owned(),
            "--config".to_owned(),
            config.display().to_string(),
        ];
        let mut s = TestServer::launch(Kind::Dashboard, dir, args, &cfg.env)?;
        s.wait_ready()?;
        Ok(s)
    }

    /// Any edgelog server command line (`args` after the binary), run in `dir`, its log
    /// in `dir`; returns once it logs its addresses and is ready.
    pub fn command(kind: Kind, dir: &Path, args: &[&str]) -> anyhow::Result<TestServer> {
        let args = args.iter().map(|s| (*s).to_owned()).collect();
        let mut s = TestServer::launch(kind, dir, args, &[])?;
        s.wait_ready()?;
        Ok(s)
    }

    fn launch(
        kind: Kind,
        dir: &Path,
        args: Vec<String>,
        env: &[(String, String)],
    ) -> anyhow::Result<TestServer> {
        let name = match kind {
            Kind::Collector => "collector",
            Kind::Demo => "demo",
            Kind::Dashboard => "dashboard",
        };
        let proc = ChildProc::new(&format!("edgelog {name}"), &dir.join(format!("{name}.log")))
            .with_stdout(&dir.join(format!("{name}.stdout")));
        let mut s = TestServer {
            proc,
            kind,
            dir: dir.to_owned(),
            args,
            env: env.to_vec(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dashboard: None,
        };
        let from = s.spawn(&[])?;
        s.read_addresses(from)?;
        Ok(s)
    }

    /// Starts the process with `extra` arguments; returns the log's length before it.
    fn spawn(&mut self, extra: &[String]) -> anyhow::Result<usize> {
        let from = self.proc.log_text().len();
        let mut cmd = Command::new(binary());
        cmd.current_dir(&self.dir)
            .env("RUST_LOG", "info")
            .args(&self.args)
            .args(extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        self.proc.start(&mut cmd)?;
        Ok(from)
    }

    /// The addresses bound, from the log lines written after byte `from`.
    fn read_addresses(&mut self, from: usize) -> anyhow::Result<()> {
        let wanted: &[(&str, &str)] = match self.kind {
            Kind::Collector => &[INGEST_LINE],
            Kind::Demo => &[INGEST_LINE, DASHBOARD_LINE],
            Kind::Dashboard => &[DASHBOARD_LINE],
        };
        let proc = &mut self.proc;
        let found = wait_for(
            within(START_TIMEOUT),
            Duration::from_millis(20),
            "the listening addresses in the log",
            || {
                proc.check_running()?;
                let log = proc.log_text();
                let text = log.get(from..).unwrap_or("");
                let addrs: Option<Vec<SocketAddr>> = wanted
                    .iter()
                    .map(|(line, key)| logged_addr(text, line, key))
                    .collect();
                Ok(addrs)
            },
        )
        .with_context(|| self.proc.log_tail(40))?;
        self.addr = found[0];
        self.dashboard = found.get(1).copied();
        if self.kind == Kind::Dashboard {
            self.dashboard = Some(found[0]);
        }
        Ok(())
    }

    /// Waits until the ready endpoints answer 200.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let mut checks = Vec::new();
        if self.kind != Kind::Dashboard {
            checks.push(format!("{}/readyz", self.url()));
        }
        if self.kind != Kind::Collector {
            checks.push(self.dashboard_url("/healthz"));
        }
        let mut last = String::new();
        let proc = &mut self.proc;
        wait_for(
            within(START_TIMEOUT),
            Duration::from_millis(20),
            "ready",
            || {
                proc.check_running()?;
                for url in &checks {
                    match http_status(url) {
                        Ok((200, _)) => {}
                        Ok((status, body)) => {
                            last = format!("{url}: {status} {body}");
                            return Ok(None);
                        }
                        Err(e) => {
                            last = format!("{url}: {e}");
                            return Ok(None);
                        }
                    }
                }
                Ok(Some(()))
            },
        )
        .with_context(|| format!("last answer {last}\n{}", self.proc.log_tail(40)))
    }

    /// `http://ADDR` of ingest (of the dashboard, for `edgelog dashboard`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The ingest port (the dashboard's, for `edgelog dashboard`).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A URL on the dashboard, `path` starting with `/`.
    pub fn dashboard_url(&self, path: &str) -> String {
        let addr = self.dashboard.unwrap_or(self.addr);
        format!("http://{addr}{path}")
    }

    pub fn dashboard_port(&self) -> u16 {
        self.dashboard.unwrap_or(self.addr).port()
    }

    /// Where the config and log are (a collector's data dir).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a collector's config file again from `cfg`, as [`collector`](Self::collector)
    /// wrote it (for a reload on SIGHUP, or a restart with other settings).
    pub fn rewrite_config(&self, cfg: &ServerConfig) -> anyhow::Result<()> {
        fs::write(
            self.dir.join("edgelog.toml"),
            cfg.for_collector(&self.dir).to_toml(),
        )?;
        Ok(())
    }

    /// SIGKILL, then start again on the same config and port.
    pub fn crash_and_restart(&mut self) -> anyhow::Result<()> {
        self.proc.stop()?;
        self.start_again()
    }

    /// Starts again after it exited (killing it if it has not): same config, port and
    /// environment.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.proc.stop()?;
        self.start_again()
    }

    fn start_again(&mut self) -> anyhow::Result<()> {
        if self.kind != Kind::Collector {
            bail!("only a collector restarts on its port");
        }
        let pinned = ["--listen".to_owned(), self.addr.to_string()];
        self.spawn(&pinned)?;
        self.wait_ready()
    }

    /// SIGTERM, then waits up to `limit` for the exit; returns (clean exit, time taken).
    /// Past the limit it is killed and this fails.
    pub fn terminate_within(&mut self, limit: Duration) -> anyhow::Result<(bool, Duration)> {
        let (status, took) = self.proc.terminate(limit)?;
        Ok((status.success(), took))
    }

    /// SIGTERM, then waits (60 s at most) for the exit; returns how long it took and the
    /// exit status.
    pub fn terminate_timed(&mut self) -> anyhow::Result<(Duration, ExitStatus)> {
        let (status, took) = self.proc.terminate(Duration::from_secs(60))?;
        Ok((took, status))
    }

    /// SIGTERM and wait (60 s at most) for the drain; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> anyhow::Result<bool> {
        Ok(self.terminate_timed()?.1.success())
    }

    /// SIGTERM, waits (60 s at most) for a clean exit; returns what it printed to stdout.
    pub fn stop(mut self) -> anyhow::Result<String> {
        let (_, status) = self.terminate_timed()?;
        let stdout = self.proc.stdout_text();
        if !status.success() {
            bail!("{:?} exited with {status}: {stdout}", self.kind);
        }
        Ok(stdout)
    }

    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        self.proc.signal(name)
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.proc.pid()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> anyhow::Result<bool> {
        Ok(self.proc.try_wait()?.is_none())
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }
}

/// The address in `key` of the first line of `log` that contains `line`.
fn logged_addr(log: &str, line: &str, key: &str) -> Option<SocketAddr> {
    let l = log.lines().find(|l| l.contains(line))?;
    let value = l.split_whitespace().find_map(|w| w.strip_prefix(key))?;
    let value = value.trim_matches('"');
    let value = value.strip_prefix("http://").unwrap_or(value);
    value.trim_end_matches('/').parse().ok()
}

/// A GET over a raw socket: status and body.
pub fn http_status(url: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").context("http only")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status in {out:?}"))?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
