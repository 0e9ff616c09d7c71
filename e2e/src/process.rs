//! One `eventstream-dataplane bridge|sink` process, as a pod would run it: the binary, the mode,
//! `--config FILE`, secrets in the environment. Its stdout and stderr go to a log file (appended
//! across restarts) whose tail is part of every error about it. It can be SIGKILLed, stopped with
//! SIGTERM, or frozen with SIGSTOP (to hold a fault test's window open). Dropping it SIGKILLs the
//! process.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// A dataplane process in one mode.
#[derive(Debug)]
pub struct Dataplane {
    name: String,
    binary: PathBuf,
    mode: &'static str,
    config: PathBuf,
    env: Vec<(String, String)>,
    listen: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
}

impl Dataplane {
    /// Describes (does not start) `binary <mode> --config <config>`, listening on `listen` (the
    /// config's `server.listen`), logging to `<log_dir>/<name>.log`.
    pub fn new(
        name: &str,
        binary: &Path,
        mode: &'static str,
        config: &Path,
        listen: SocketAddr,
        log_dir: &Path,
    ) -> Self {
        Self {
            name: name.to_owned(),
            binary: binary.to_path_buf(),
            mode,
            config: config.to_path_buf(),
            env: Vec::new(),
            listen,
            log: log_dir.join(format!("{name}.log")),
            child: None,
        }
    }

    /// Adds an environment variable (a secret the operator would pass from a Secret).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// `http://<listen>`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// `ws://<listen><path>`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.listen)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the process and waits until `/readyz` answers 200.
    pub async fn start(&mut self, timeout: Duration) -> Result<()> {
        if self.child.is_some() {
            bail!("{} is already running", self.name);
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let log_err = log.try_clone().context("duplicating the log handle")?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg(self.mode)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .env(
                "RUST_LOG",
                std::env::var("E2E_DATAPLANE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("EVENTSTREAM_CONFIG");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        append_marker(&self.log, &format!("--- start {cmd:?}"));
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {} ({cmd:?})", self.name))?;
        self.child = Some(child);
        self.wait_ready(timeout).await
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .context("building an HTTP client")?;
        let url = self.http_url("/readyz");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().context("polling the process")?
            {
                self.child = None;
                bail!(
                    "{} exited with {status} before it was ready\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            let last = match client.get(&url).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => {
                    let status = r.status();
                    format!("{status}: {}", r.text().await.unwrap_or_default().trim())
                }
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} not ready after {timeout:?} ({url}: {last})\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: the process gets no chance to flush, commit or say goodbye.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            append_marker(&self.log, "--- SIGKILL");
            child
                .kill()
                .with_context(|| format!("killing {}", self.name))?;
            child
                .wait()
                .with_context(|| format!("reaping {}", self.name))?;
        }
        Ok(())
    }

    /// SIGSTOP: the process stays alive but does nothing — reads no record, writes no frame,
    /// answers no request — until it gets SIGCONT or SIGKILL. A fault test freezes a process to
    /// pin the dangerous moment: whatever is acknowledged while it is frozen is, provably, still
    /// on its way when the kill (or the SIGTERM) lands.
    pub fn freeze(&mut self) -> Result<()> {
        let Some(child) = self.child.as_ref() else {
            bail!("{} is not running", self.name);
        };
        append_marker(&self.log, "--- SIGSTOP");
        signal(child.id(), "STOP")
    }

    /// SIGTERM (what Kubernetes sends on a rollout) and waits for the exit; the process must
    /// exit successfully within `timeout`. A [frozen](Self::freeze) process gets SIGCONT right
    /// after the SIGTERM, so it wakes up with the signal pending, as a paused container would.
    pub async fn terminate(&mut self, timeout: Duration) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        append_marker(&self.log, "--- SIGTERM");
        signal(child.id(), "TERM")?;
        signal(child.id(), "CONT")?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().context("waiting for the process")? {
                if !status.success() {
                    bail!(
                        "{} exited with {status} after SIGTERM\n{}",
                        self.name,
                        self.log_tail(40)
                    );
                }
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} did not exit within {timeout:?} of SIGTERM\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last `lines` lines of the log, headed by its path.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        format!(
            "--- last {lines} lines of {} ---\n{tail}",
            self.log.display()
        )
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `kill -<name> <pid>`, rather than a libc call: the workspace forbids unsafe code.
fn signal(pid: u32, name: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .with_context(|| format!("running kill -{name} {pid}"))?;
    if !status.success() {
        bail!("kill -{name} {pid} failed with {status}");
    }
    Ok(())
}

fn append_marker(log: &Path, line: &str) {
    use std::io::Write;
    if let Ok(mut f) = OpenOptions::new().append(true).create(true).open(log) {
        let _ = writeln!(f, "{line}");
    }
}
