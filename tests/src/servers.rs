//! Real servers on loopback for the end-to-end tests: garage (S3) and tansu (Kafka).
//!
//! Each test starts its own server on free ports in a temporary directory, so tests can
//! stop and restart theirs. A missing server binary fails the test with the command that
//! installs it: these tests never skip.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::free_port;

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

fn wait_port(port: u16, what: &str, child: &mut Child, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!(
                "{what} exited with {status}: {}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on {port} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> anyhow::Result<Child> {
    let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
    cmd.stdout(out.try_clone()?)
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))
}

/// The bucket every garage in these tests has.
pub const BUCKET: &str = "edgelog";
/// The fixed key pair garage imports.
pub const S3_KEY_ID: &str = "GK0123456789abcdef01234567";
pub const S3_SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A single-node garage: one bucket, one imported key.
pub struct Garage {
    child: Option<Child>,
    dir: tempfile::TempDir,
    config: PathBuf,
    log: PathBuf,
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
        let log = dir.path().join("garage.log");
        let mut g = Garage {
            child: None,
            dir,
            config,
            log,
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
        let deadline = Instant::now() + Duration::from_secs(30);
        let node = loop {
            let status = garage(&["status"]).unwrap_or_default();
            if let Some(id) = status
                .lines()
                .find(|l| l.contains("NO ROLE"))
                .and_then(|l| l.split_whitespace().next())
            {
                break id.to_owned();
            }
            if Instant::now() > deadline {
                bail!("garage has no node without a role: {status}");
            }
            std::thread::sleep(Duration::from_millis(200));
        };
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
        let bin = server_binary("garage")?;
        let mut child = spawn_logged(
            Command::new(bin)
                .arg("-c")
                .arg(&self.config)
                .arg("server")
                .env("RUST_LOG", "warn"),
            &self.log,
        )?;
        wait_port(self.rpc_port, "garage", &mut child, &self.log)?;
        wait_port(self.s3_port, "garage", &mut child, &self.log)?;
        self.child = Some(child);
        Ok(())
    }

    /// Kills the server (its data stays).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Starts the server again on the same data and ports.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.spawn()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// The `[sinks.standard.s3]` table of a collector config writing into [`BUCKET`].
    pub fn collector_toml(&self) -> String {
        format!(
            "[sinks.standard.s3]\nbucket = \"{BUCKET}\"\nendpoint = \"{}\"\nregion = \"garage\"\n\
             access_key_id = \"{S3_KEY_ID}\"\nsecret_access_key = \"{S3_SECRET}\"\n",
            self.endpoint()
        )
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

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.stop();
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
    child: Option<Child>,
    dir: tempfile::TempDir,
    log: PathBuf,
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
        let log = dir.path().join("tansu.log");
        let mut t = Tansu {
            child: None,
            dir,
            log,
            storage,
            port: free_port(),
        };
        t.spawn()?;
        Ok(t)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        // The SQLite path is taken relative to the working directory.
        let mut child = spawn_logged(
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
            &self.log,
        )?;
        wait_port(self.port, "tansu", &mut child, &self.log)?;
        self.child = Some(child);
        Ok(())
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
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.spawn()
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The `[sinks.realtime.kafka]` table of a collector writing to `topic`.
    pub fn collector_toml(&self, topic: &str) -> String {
        format!(
            "[sinks.realtime.kafka]\nbootstrap_servers = \"{}\"\ntopic = \"{topic}\"\n",
            self.bootstrap()
        )
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.stop();
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
