//! Real servers on loopback for the end-to-end tests: garage (S3) and tansu (Kafka).
//!
//! Each test starts its own server on free ports in a temporary directory, so tests can
//! stop and restart theirs. A missing server binary fails the test with the command that
//! installs it: these tests never skip.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::free_port;
use crate::harness::ServerConfig;
use crate::process::{ChildProc, wait_for, wait_port, within};

/// Finds an installed server (or browser) binary on PATH or in cargo's bin directory.
pub fn server_binary(name: &str) -> anyhow::Result<PathBuf> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|d| d.join("bin"));
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(cargo_bin)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{name} is not installed; scripts/install-test-deps.sh installs it \
                 (tests that need a real server fail without one, they never skip)"
            )
        })
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A server the tests can take away and bring back (garage, tansu).
pub trait StopStart {
    /// Kills the server (its data stays).
    fn stop(&mut self) -> anyhow::Result<()>;
    /// Starts it again on the same data and ports.
    fn restart(&mut self) -> anyhow::Result<()>;
}

/// The bucket every garage in these tests has.
pub const BUCKET: &str = "edgelog";
/// The fixed key pair garage imports.
pub const S3_KEY_ID: &str = "GK0123456789abcdef01234567";
pub const S3_SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A single-node garage: one bucket, one imported key.
pub struct Garage {
    proc: ChildProc,
    dir: tempfile::TempDir,
    config: PathBuf,
    pub s3_port: u16,
    rpc_port: u16,
}

impl Garage {
    /// Starts garage, applies a one-node layout, creates [`BUCKET`] and imports the key.
    pub fn start() -> anyhow::Result<Garage> {
        let bin = server_binary("garage")?;
        let dir = tempfile::tempdir()?;
        let (s3_port, rpc_port, admin_port) = (free_port(), free_port(), free_port());
        let config = dir.path().join("garage.toml");
        fs::write(
            &config,
            format!(
                r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{S3_SECRET}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
"#,
                d = dir.path().display()
            ),
        )?;
        let mut g = Garage {
            proc: ChildProc::new("garage", &dir.path().join("garage.log")),
            dir,
            config,
            s3_port,
            rpc_port,
        };
        g.spawn()?;
        let garage = |args: &[&str]| {
            run(Command::new(&bin)
                .arg("-c")
                .arg(&g.config)
                .args(args)
                .env("RUST_LOG", "warn"))
        };
        // The node knows its own id once its RPC is up.
        let mut status = String::new();
        let node = wait_for(
            within(Duration::from_secs(30)),
            Duration::from_millis(200),
            "garage's node without a role",
            || {
                status = garage(&["status"]).unwrap_or_default();
                Ok(status
                    .lines()
                    .find(|l| l.contains("NO ROLE"))
                    .and_then(|l| l.split_whitespace().next())
                    .map(str::to_owned))
            },
        )
        .with_context(|| format!("garage status: {status}"))?;
        garage(&["layout", "assign", "-z", "dc1", "-c", "1G", &node])?;
        garage(&["layout", "apply", "--version", "1"])?;
        garage(&["bucket", "create", BUCKET])?;
        garage(&[
            "key",
            "import",
            "--yes",
            S3_KEY_ID,
            S3_SECRET,
            "-n",
            "edgelog-test",
        ])?;
        garage(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            BUCKET,
            "--key",
            "edgelog-test",
        ])?;
        Ok(g)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        self.proc.start(
            Command::new(server_binary("garage")?)
                .arg("-c")
                .arg(&self.config)
                .arg("server")
                .env("RUST_LOG", "warn"),
        )?;
        wait_port(self.rpc_port, &mut self.proc)?;
        wait_port(self.s3_port, &mut self.proc)
    }

    /// Kills the server (its data stays).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.proc.stop()
    }

    /// Starts the server again on the same data and ports.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.spawn()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// `cfg` with its standard logs going to [`BUCKET`] (`[sinks.standard.s3]`).
    pub fn s3_sink(&self, cfg: ServerConfig) -> ServerConfig {
        let t = "sinks.standard.s3";
        cfg.set(t, "bucket", BUCKET)
            .set(t, "endpoint", self.endpoint())
            .set(t, "region", "garage")
            .set(t, "access_key_id", S3_KEY_ID)
            .set(t, "secret_access_key", S3_SECRET)
    }

    /// Python that leaves a DuckDB connection `con` able to read `s3://edgelog/...`.
    pub fn duckdb_prelude(&self) -> String {
        format!(
            r#"import duckdb, duckdb_extension_httpfs, glob, os, json
ext = glob.glob(os.path.dirname(duckdb_extension_httpfs.__file__) + "/extensions/*/httpfs.duckdb_extension")[0]
con = duckdb.connect()
# A slow query must not print a progress bar into the JSON the test reads.
con.sql("SET enable_progress_bar = false")
con.sql(f"LOAD '{{ext}}'")
con.sql("""CREATE SECRET (TYPE s3, KEY_ID '{S3_KEY_ID}', SECRET '{S3_SECRET}', REGION 'garage',
    ENDPOINT '127.0.0.1:{}', URL_STYLE 'path', USE_SSL false)""")
"#,
            self.s3_port
        )
    }

    /// What DuckDB finds in the bucket's standard logs: files, rows and distinct request
    /// ids; with `acked` (a file of ids, one a line), also how many of them there are,
    /// how many are missing, and how many ids stored were not among them.
    pub fn bucket_report(&self, acked: Option<&Path>) -> anyhow::Result<serde_json::Value> {
        const GLOB: &str = "s3://edgelog/standard-logs/**/*.parquet";
        let acked_sql = match acked {
            Some(p) => format!(
                r#"
con.sql("CREATE TABLE acked AS SELECT DISTINCT column0 AS id FROM read_csv('{}', header = false, columns = {{'column0': 'VARCHAR'}})")
out["acked"] = one("SELECT count(*) FROM acked")
if out["files"]:
    out["missing"] = one(f"SELECT count(*) FROM acked WHERE id NOT IN (SELECT x_edge_request_id FROM {{src}})")
    out["unexpected"] = one(f"SELECT count(DISTINCT x_edge_request_id) FROM {{src}} WHERE x_edge_request_id NOT IN (SELECT id FROM acked)")
else:
    out["missing"] = out["acked"]
    out["unexpected"] = 0"#,
                p.display()
            ),
            None => String::new(),
        };
        python_json(&format!(
            r#"{prelude}
src = "read_parquet('{GLOB}', hive_partitioning = true)"
one = lambda q: con.sql(q).fetchone()[0]
out = {{"rows": 0, "distinct": 0}}
out["files"] = one(f"SELECT count(*) FROM glob('{GLOB}')")
if out["files"]:
    out["rows"] = one(f"SELECT count(*) FROM {{src}}")
    out["distinct"] = one(f"SELECT count(DISTINCT x_edge_request_id) FROM {{src}}")
{acked_sql}
print(json.dumps(out))
"#,
            prelude = self.duckdb_prelude()
        ))
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl StopStart for Garage {
    fn stop(&mut self) -> anyhow::Result<()> {
        Garage::stop(self)
    }
    fn restart(&mut self) -> anyhow::Result<()> {
        Garage::restart(self)
    }
}

/// Runs a Python script (DuckDB, confluent-kafka) and parses what it prints as JSON.
pub fn python_json(script: &str) -> anyhow::Result<serde_json::Value> {
    let out = Command::new("python3")
        .args(["-c", script])
        .output()
        .context("cannot run python3")?;
    if !out.status.success() {
        bail!(
            "python failed (scripts/install-test-deps.sh installs what it needs): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The JSON is the last line printed (a library may print before it).
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    serde_json::from_str(last).with_context(|| {
        format!(
            "python printed no JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A tansu broker (Kafka protocol) on loopback.
pub struct Tansu {
    proc: ChildProc,
    dir: tempfile::TempDir,
    storage: &'static str,
    pub port: u16,
}

impl Tansu {
    /// Messages in memory: fast, but gone when the broker stops.
    pub fn start() -> anyhow::Result<Tansu> {
        Tansu::start_with("memory://tansu/")
    }

    /// Messages in SQLite: they outlive a restart, but tansu serves them slowly (about
    /// 250 messages/s to a consumer on this machine), so keep such tests small.
    pub fn start_persistent() -> anyhow::Result<Tansu> {
        Tansu::start_with("sqlite://tansu.db")
    }

    fn start_with(storage: &'static str) -> anyhow::Result<Tansu> {
        let dir = tempfile::tempdir()?;
        let mut t = Tansu {
            proc: ChildProc::new("tansu", &dir.path().join("tansu.log")),
            dir,
            storage,
            port: free_port(),
        };
        t.spawn()?;
        Ok(t)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        // The SQLite path is taken relative to the working directory.
        self.proc.start(
            Command::new(server_binary("tansu")?)
                .current_dir(self.dir.path())
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .args(["--storage-engine", self.storage])
                .env_remove("LISTENER_URL")
                .env_remove("ADVERTISED_LISTENER_URL")
                .env_remove("STORAGE_ENGINE"),
        )?;
        wait_port(self.port, &mut self.proc)
    }

    /// Creates a topic (tansu does not create topics on first use).
    pub fn create_topic(&self, name: &str, partitions: u32) -> anyhow::Result<()> {
        run(Command::new(server_binary("tansu")?)
            .args(["topic", "create", name, "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .args(["--partitions", &partitions.to_string()]))
        .map(|_| ())
    }

    /// Kills the broker (its messages stay).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.proc.stop()
    }

    /// Starts the broker again on the same storage and port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.spawn()
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `cfg` with its real-time logs going to `topic` (`[sinks.realtime.kafka]`).
    pub fn realtime_sink(&self, cfg: ServerConfig, topic: &str) -> ServerConfig {
        cfg.set(
            "sinks.realtime.kafka",
            "bootstrap_servers",
            self.bootstrap(),
        )
        .set("sinks.realtime.kafka", "topic", topic)
    }

    /// `cfg` with its minute aggregates going to this broker (`[metrics.kafka]`).
    pub fn metrics_sink(&self, cfg: ServerConfig) -> ServerConfig {
        cfg.set("metrics.kafka", "bootstrap_servers", self.bootstrap())
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }
}

impl StopStart for Tansu {
    fn stop(&mut self) -> anyhow::Result<()> {
        Tansu::stop(self)
    }
    fn restart(&mut self) -> anyhow::Result<()> {
        Tansu::restart(self)
    }
}

/// One message as an independent consumer (Python confluent-kafka) read it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub value: String,
    pub headers: std::collections::BTreeMap<String, String>,
    /// When the consumer saw it, ms since the epoch.
    pub seen_ms: i64,
}

/// Reads `topic` from the beginning with confluent-kafka in a new consumer group until
/// `expected` messages came or none came for `idle` (then a little longer, to catch
/// duplicates).
pub fn consume(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    idle: Duration,
) -> anyhow::Result<Vec<Consumed>> {
    let out = tempfile::NamedTempFile::new()?;
    let script = format!(
        r#"import json, time, uuid
from confluent_kafka import Consumer
c = Consumer({{"bootstrap.servers": "{bootstrap}", "group.id": "edgelog-test-" + uuid.uuid4().hex,
    "auto.offset.reset": "earliest", "enable.auto.commit": False}})
c.subscribe(["{topic}"])
n, last, done_at = 0, time.time(), None
with open("{out}", "w") as f:
    while True:
        now = time.time()
        if now - last > {idle}:
            break
        if done_at is None and n >= {expected}:
            done_at = now
        if done_at is not None and now - done_at > 2:
            break
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            raise SystemExit(str(m.error()))
        n += 1
        last = time.time()
        f.write(json.dumps({{"partition": m.partition(), "offset": m.offset(),
            "key": (m.key() or b"").decode(), "value": (m.value() or b"").decode(),
            "headers": {{k: v.decode() for k, v in (m.headers() or [])}},
            "seen_ms": int(last * 1000)}}) + "\n")
c.close()
"#,
        out = out.path().display(),
        idle = idle.as_secs_f64(),
    );
    let status = Command::new("python3")
        .args(["-c", &script])
        .status()
        .context("cannot run python3")?;
    if !status.success() {
        bail!(
            "the confluent-kafka consumer failed ({status}); scripts/install-test-deps.sh installs it"
        );
    }
    fs::read_to_string(out.path())?
        .lines()
        .map(|l| serde_json::from_str(l).context("consumer output"))
        .collect()
}
