//! Helpers of the bridge process tests: the real `eventstream-dataplane bridge` binary started
//! from a config file on a free port, its probes read over HTTP, and signals sent to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_eventstream-dataplane");

/// Generous: the machine is shared; the waits poll for a state, they do not measure time.
pub const WAIT: Duration = Duration::from_secs(60);

pub fn free_port() -> u16 {
    eventstream_testkit::free_port().expect("free port")
}

/// A running `bridge` process; killed on drop.
pub struct BridgeProcess {
    pub child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
    log: Arc<Mutex<String>>,
}

fn collect<R: Read + Send + 'static>(pipe: R, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut s = into.lock().expect("lock");
            s.push_str(&line);
            s.push('\n');
        }
    });
}

impl BridgeProcess {
    /// Starts `bridge --config` with `yaml` (which must listen on `127.0.0.1:{port}`); returns
    /// at once, before anything is served.
    pub fn spawn(port: u16, yaml: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path: PathBuf = dir.path().join("bridge.yaml");
        std::fs::write(&path, yaml).expect("write config");
        let mut child = Command::new(BIN)
            .arg("bridge")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start eventstream-dataplane bridge");
        let log = Arc::new(Mutex::new(String::new()));
        collect(child.stdout.take().expect("stdout"), log.clone());
        collect(child.stderr.take().expect("stderr"), log.clone());
        Self {
            child,
            port,
            _dir: dir,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("lock").clone()
    }

    /// GET `path`: status and body, or `None` when nothing answered (refused, reset, or no
    /// answer within 5 s: a listener that is bound but not served).
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let response = client.get(self.url(path)).send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.unwrap_or_default()))
    }

    /// Polls GET `path` until `accept(status, body)` holds; returns that answer.
    pub async fn until(
        &mut self,
        what: &str,
        path: &str,
        accept: impl Fn(u16, &str) -> bool,
    ) -> (u16, String) {
        let deadline = Instant::now() + WAIT;
        let mut last = None;
        loop {
            if let Some((status, body)) = self.get(path).await {
                if accept(status, &body) {
                    return (status, body);
                }
                last = Some((status, body));
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the bridge exited with {status} while waiting for {what}\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} on {path}; last answer {last:?}\nlog:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends `signal` (`TERM`, `KILL`, …).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal}");
    }

    /// The exit status, waiting at most `WAIT`.
    pub async fn exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the bridge did not exit\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bridge config for `topic` on `bootstrap`, listening on `port`; `server` and `ingest` are
/// YAML flow-map bodies merged into those sections.
pub fn config(port: u16, bootstrap: &str, topic: &str, server: &str, ingest: &str) -> String {
    let server = if server.is_empty() {
        String::new()
    } else {
        format!(", {server}")
    };
    format!(
        "stream: {{ namespace: test, name: probes }}\n\
         kafka: {{ bootstrapServers: '{bootstrap}', properties: {{ fetch.wait.max.ms: '10' }} }}\n\
         topic: {topic}\n\
         server: {{ listen: '127.0.0.1:{port}', shutdownGrace: 5s{server} }}\n\
         ingest: {{ {ingest} }}\n\
         websocket: {{ }}\n"
    )
}
