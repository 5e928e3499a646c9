//! One child-process type for everything the tests start (edgelog, garage, tansu): its
//! output goes to a log file kept for failure messages, it can be signalled, stopped and
//! started again, and it is killed on drop. And polling with a deadline, instead of
//! sleeping and hoping.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How often [`wait_until`] looks.
const POLL: Duration = Duration::from_millis(50);

/// Polls `cond` (every 50 ms) until it holds or `deadline` passes; returns whether it held.
pub fn wait_until(deadline: Instant, cond: impl FnMut() -> bool) -> bool {
    wait_until_every(deadline, POLL, cond)
}

/// [`wait_until`], polling every `every` (for a costly `cond`).
pub fn wait_until_every(
    deadline: Instant,
    every: Duration,
    mut cond: impl FnMut() -> bool,
) -> bool {
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// Polls `f` every `every` until it returns a value or `deadline` passes (then fails,
/// naming `what`); an error from `f` ends the wait at once.
pub fn wait_for<T>(
    deadline: Instant,
    every: Duration,
    what: &str,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("{what}: not by the deadline");
        }
        std::thread::sleep(every);
    }
}

/// `timeout` from now.
pub fn within(timeout: Duration) -> Instant {
    Instant::now() + timeout
}

/// Sends a signal by name through kill(1), which keeps `unsafe_code = "forbid"`.
pub fn signal(child: &Child, name: &str) -> anyhow::Result<()> {
    let ok = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()?
        .success();
    if !ok {
        bail!("cannot send SIG{name} to {}", child.id());
    }
    Ok(())
}

/// A child process whose stderr (and stdout, unless given its own file) is appended to
/// a log file; killed on drop.
pub struct ChildProc {
    what: String,
    log: PathBuf,
    stdout: Option<PathBuf>,
    child: Option<Child>,
}

impl ChildProc {
    /// Nothing runs yet: [`ChildProc::start`] starts it. `what` names it in errors.
    pub fn new(what: &str, log: &Path) -> ChildProc {
        ChildProc {
            what: what.to_owned(),
            log: log.to_owned(),
            stdout: None,
            child: None,
        }
    }

    /// Its stdout goes to `path` instead of the log.
    pub fn with_stdout(mut self, path: &Path) -> ChildProc {
        self.stdout = Some(path.to_owned());
        self
    }

    /// Starts `cmd` (after killing a previous run, if any).
    pub fn start(&mut self, cmd: &mut Command) -> anyhow::Result<()> {
        self.stop()?;
        let append = |p: &Path| fs::OpenOptions::new().create(true).append(true).open(p);
        let log = append(&self.log).with_context(|| format!("{}", self.log.display()))?;
        let out = match &self.stdout {
            Some(p) => append(p)?,
            None => log.try_clone()?,
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}: {cmd:?}", self.what))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL and reap (a process not running is fine).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            c.wait()?;
        }
        Ok(())
    }

    fn child(&self) -> anyhow::Result<&Child> {
        self.child
            .as_ref()
            .with_context(|| format!("{} is not running", self.what))
    }

    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        signal(self.child()?, name)
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        Ok(self.child()?.id())
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("{} is not running", self.what),
        }
    }

    /// Waits up to `limit` for the exit; on time, returns the status and how long it took;
    /// otherwise kills it and fails with the log.
    pub fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<(ExitStatus, Duration)> {
        let start = Instant::now();
        let mut status = None;
        wait_until(start + limit, || {
            status = self.try_wait().ok().flatten();
            status.is_some()
        });
        if let Some(s) = status {
            self.child = None;
            return Ok((s, start.elapsed()));
        }
        self.stop()?;
        bail!(
            "{} did not exit within {limit:?}:\n{}",
            self.what,
            self.log_tail(60)
        )
    }

    /// SIGTERM, then [`ChildProc::wait_exit`].
    pub fn terminate(&mut self, limit: Duration) -> anyhow::Result<(ExitStatus, Duration)> {
        self.signal("TERM")?;
        self.wait_exit(limit)
    }

    /// Fails, with the log, if it has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.try_wait()? {
            bail!("{} exited with {status}:\n{}", self.what, self.log_tail(60));
        }
        Ok(())
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// What it wrote to stdout, when that has its own file.
    pub fn stdout_text(&self) -> String {
        self.stdout
            .as_ref()
            .and_then(|p| fs::read_to_string(p).ok())
            .unwrap_or_default()
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if self.child.is_some() && std::thread::panicking() {
            eprintln!(
                "--- last lines of {} ({}):\n{}",
                self.what,
                self.log.display(),
                self.log_tail(40)
            );
        }
        let _ = self.stop();
    }
}

/// Waits up to 30 s for something to listen on `port`, failing early if `proc` exits.
pub fn wait_port(port: u16, proc: &mut ChildProc) -> anyhow::Result<()> {
    let mut exited = None;
    let up = wait_until(within(Duration::from_secs(30)), || {
        if let Err(e) = proc.check_running() {
            exited = Some(e);
            return true;
        }
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    if let Some(e) = exited {
        return Err(e);
    }
    if !up {
        bail!(
            "{} did not listen on {port} within 30 s:\n{}",
            proc.what,
            proc.log_tail(40)
        );
    }
    Ok(())
}

/// A tmpfs mounted for the test's life; unmounted (lazily) on drop, even after a failure.
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> anyhow::Result<Tmpfs> {
        std::fs::create_dir_all(dir)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .context("cannot run mount")?;
        if !out.status.success() {
            bail!(
                "cannot mount a tmpfs at {} (this test needs root, as CI runs): {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Tmpfs {
            dir: dir.to_owned(),
        })
    }

    pub fn resize(&self, size: &str) -> anyhow::Result<()> {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .status()?
            .success();
        if !ok {
            bail!("cannot resize the tmpfs at {}", self.dir.display());
        }
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
