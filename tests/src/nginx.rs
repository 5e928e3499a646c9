//! A real nginx (Debian's package) on loopback with the log format documented in
//! docs/shipping.md, a proxy cache in front of an origin in the same process, and
//! `edgelog ship` following its log.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::process::{ChildProc, wait_port, wait_until, within};
use crate::{TOKEN, binary, free_port};

/// nginx from PATH or /usr/sbin; missing is an error (run scripts/install-test-deps.sh).
pub fn nginx_binary() -> anyhow::Result<PathBuf> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain([
        "/usr/sbin",
        "/usr/local/sbin",
        "/sbin",
    ]) {
        let p = Path::new(dir).join("nginx");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("nginx is not installed: run scripts/install-test-deps.sh (Debian's nginx-light)")
}

/// The `log_format edgelog ...;` statement of docs/shipping.md, so the docs are what is
/// tested.
pub fn documented_log_format() -> anyhow::Result<String> {
    let doc = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/shipping.md"))
        .context("docs/shipping.md")?;
    let start = doc
        .find("log_format edgelog escape=json")
        .context("docs/shipping.md has no log_format edgelog")?;
    let end = doc[start..]
        .find("}';")
        .context("log_format edgelog does not end in }';")?;
    Ok(doc[start..start + end + 3].to_owned())
}

pub struct Nginx {
    proc: ChildProc,
    pub port: u16,
    pub dir: PathBuf,
}

impl Nginx {
    /// Starts nginx in `dir` (config, logs, cache, temp files all there). Paths:
    /// `/cached/...` through a proxy cache (Miss, then Hit), `/missing` 404, `/broken`
    /// 503, anything else 200.
    pub fn start(dir: &Path) -> anyhow::Result<Nginx> {
        let bin = nginx_binary()?;
        fs::create_dir_all(dir.join("cache"))?;
        let (port, origin) = (free_port(), free_port());
        let d = dir.display();
        let conf = format!(
            r#"daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    {format}
    access_log {d}/access.log edgelog;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    proxy_cache_path {d}/cache keys_zone=edge:1m;
    server {{
        listen 127.0.0.1:{port};
        server_name cdn.example.com;
        location /cached/ {{
            proxy_pass http://127.0.0.1:{origin};
            proxy_cache edge;
            proxy_cache_valid 200 10m;
        }}
        location = /missing {{ return 404; }}
        location = /broken {{ return 503; }}
        location / {{ return 200 "ok\n"; }}
    }}
    server {{
        listen 127.0.0.1:{origin};
        access_log off;
        location / {{ default_type application/octet-stream; return 200 "origin $uri\n"; }}
    }}
}}
"#,
            format = documented_log_format()?
        );
        let conf_path = dir.join("nginx.conf");
        fs::write(&conf_path, conf)?;
        let mut proc = ChildProc::new("nginx", &dir.join("nginx.stderr"));
        proc.start(
            Command::new(&bin)
                .arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg(dir.join("error.log")),
        )?;
        wait_port(port, &mut proc)
            .with_context(|| fs::read_to_string(dir.join("error.log")).unwrap_or_default())?;
        Ok(Nginx {
            proc,
            port,
            dir: dir.to_owned(),
        })
    }

    pub fn access_log(&self) -> PathBuf {
        self.dir.join("access.log")
    }

    /// `nginx -s reopen`: the master reopens its logs (SIGUSR1).
    pub fn reopen(&self) -> anyhow::Result<()> {
        self.proc.signal("USR1")
    }

    /// One request on its own connection; returns the status.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<u16> {
        NginxClient { port: self.port }.request(method, path, headers)
    }

    /// Every JSON line nginx wrote to `access.log*` in its directory.
    pub fn logged_lines(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let p = e?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with("access.log") {
                for line in fs::read_to_string(&p)?.lines().filter(|l| !l.is_empty()) {
                    out.push(
                        serde_json::from_str(line).with_context(|| format!("{name}: {line}"))?,
                    );
                }
            }
        }
        Ok(out)
    }
}

/// Requests to an nginx, from any thread.
pub struct NginxClient {
    pub port: u16,
}

impl NginxClient {
    /// One request on its own connection; returns the status.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<u16> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nhost: cdn.example.com\r\nconnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if method == "POST" {
            req.push_str("content-length: 5\r\n\r\nhello");
        } else {
            req.push_str("\r\n");
        }
        s.write_all(req.as_bytes())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        let head = String::from_utf8_lossy(&out[..out.len().min(64)]).into_owned();
        head.split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("no status in {head:?}"))
    }
}

impl Drop for Nginx {
    /// SIGTERM to the master, which stops its workers (a SIGKILL would orphan them,
    /// listening on their ports).
    fn drop(&mut self) {
        let _ = self.proc.terminate(Duration::from_secs(10));
    }
}

/// `edgelog ship` as a child process, with its config file in `dir`.
pub struct Ship {
    proc: ChildProc,
    config: PathBuf,
}

impl Ship {
    /// Starts ship with `inputs` (TOML of `[[inputs]]` tables) towards `collector`.
    pub fn start(dir: &Path, collector: &str, inputs: &str) -> anyhow::Result<Ship> {
        Ship::start_with_state(dir, &dir.join("state"), collector, inputs)
    }

    /// [`Ship::start`] with its state directory elsewhere.
    pub fn start_with_state(
        dir: &Path,
        state: &Path,
        collector: &str,
        inputs: &str,
    ) -> anyhow::Result<Ship> {
        fs::create_dir_all(dir)?;
        let config = dir.join("ship.toml");
        fs::write(
            &config,
            format!(
                "collector = {collector:?}\ntoken = {TOKEN:?}\nstate_dir = {:?}\n\
                 poll_interval = \"50ms\"\nrotate_wait = \"1s\"\nbatch_bytes = 65536\n\
                 progress_interval = \"1s\"\n\n{inputs}",
                state.display().to_string()
            ),
        )?;
        let mut s = Ship {
            proc: ChildProc::new("edgelog ship", &dir.join("ship.log")),
            config,
        };
        s.restart()?;
        Ok(s)
    }

    /// (Re)starts it (a running one is SIGKILLed first) and waits for it to say it ships.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let before = self.proc.log_text().matches("shipping").count();
        self.proc.start(
            Command::new(binary())
                .args(["ship", "--config"])
                .arg(&self.config)
                .env("RUST_LOG", "info"),
        )?;
        let proc = &mut self.proc;
        let mut failed = None;
        let up = wait_until(within(Duration::from_secs(20)), || {
            if let Err(e) = proc.check_running() {
                failed = Some(e);
                return true;
            }
            proc.log_text().matches("shipping").count() > before
        });
        if let Some(e) = failed {
            return Err(e);
        }
        if !up {
            bail!("edgelog ship did not start:\n{}", self.proc.log_tail(30));
        }
        Ok(())
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.proc.stop()
    }

    pub fn terminate(&mut self) -> anyhow::Result<()> {
        let (status, _) = self.proc.terminate(Duration::from_secs(15))?;
        if !status.success() {
            bail!(
                "edgelog ship exited with {status}:\n{}",
                self.proc.log_tail(30)
            );
        }
        Ok(())
    }

    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.proc.check_running()
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.proc.pid()
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }
}
