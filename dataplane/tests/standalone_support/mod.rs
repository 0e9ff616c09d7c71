//! Helpers of the standalone tests: the real `eventstream-dataplane standalone` process, and
//! headless Chromium driven over the DevTools protocol (a small client over tokio-tungstenite).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

pub const BIN: &str = env!("CARGO_BIN_EXE_eventstream-dataplane");

/// A running `standalone` process; killed on drop.
pub struct Standalone {
    pub child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

fn collect<R: Read + Send + 'static>(pipe: R) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new(String::new()));
    let sink = out.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut s = sink.lock().expect("lock");
            s.push_str(&line);
            s.push('\n');
        }
    });
    out
}

impl Standalone {
    /// Starts `standalone ARGS` and waits for its banner.
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .arg("standalone")
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start eventstream-dataplane standalone");
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        let mut me = Self {
            child,
            stdout,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !me.stdout().contains("Press Ctrl-C to stop") {
            if let Ok(Some(status)) = me.child.try_wait() {
                panic!(
                    "standalone {args:?} exited with {status} before it was ready\nstdout:\n{}\nstderr:\n{}",
                    me.stdout(),
                    me.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "standalone {args:?} not ready after 60s\nstdout:\n{}\nstderr:\n{}",
                me.stdout(),
                me.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        me
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("lock").clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// The value after `label` on the banner line starting with it (`kafka`, `viewer`).
    pub fn banner(&self, label: &str) -> String {
        self.stdout()
            .lines()
            .find_map(|l| {
                let l = l.trim_start();
                l.strip_prefix(label)
                    .filter(|rest| rest.starts_with(' '))
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| panic!("no {label:?} line in the banner:\n{}", self.stdout()))
    }

    /// SIGKILL: no goodbye frames, no flush, like a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGINT (Ctrl-C) and the exit status, within `timeout`.
    pub fn interrupt(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill -INT");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    eventstream_testkit::free_port().expect("free port")
}

/// Where screenshots go: `test-artifacts/` at the repository root (gitignored).
pub fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create test-artifacts/");
    dir
}

/// The Chromium binary: `CHROMIUM_BIN` or Debian's `/usr/bin/chromium`. Missing is a failure,
/// never a skip.
pub fn chromium_bin() -> PathBuf {
    let path = std::env::var_os("CHROMIUM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "headless Chromium is required by the viewer tests and {} does not exist: install the Debian \
         package `chromium` (apt-get install chromium; ./scripts/test does it) or set CHROMIUM_BIN",
        path.display()
    );
    path
}

/// Headless Chromium with one page, driven over the DevTools protocol.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Browser {
    pub async fn launch() -> Self {
        let bin = chromium_bin();
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(&bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--window-size=1280,1100",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        // Chromium writes its DevTools port into the profile once it listens.
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file)
                && let Some(port) = text
                    .lines()
                    .next()
                    .and_then(|l| l.trim().parse::<u16>().ok())
            {
                break port;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("chromium exited with {status} at start");
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not open its DevTools port in 30s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let targets: Vec<Value> = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
            .await
            .expect("DevTools /json/list")
            .json()
            .await
            .expect("DevTools target list");
        let url = targets
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .unwrap_or_else(|| panic!("no page target in {targets:?}"))
            .to_string();
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("DevTools WebSocket");
        let mut browser = Self {
            child,
            _profile: profile,
            ws,
            next_id: 1,
        };
        browser.call("Page.enable", json!({})).await;
        browser.call("Runtime.enable", json!({})).await;
        browser
    }

    /// One DevTools command and its result (events in between are skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": method, "params": params});
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .expect("send to DevTools");
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} in 30s"))
                .unwrap_or_else(|| panic!("DevTools closed during {method}"))
                .expect("DevTools frame");
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("{method} failed: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    pub async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
    }

    /// Evaluates `expr` in the page and returns its value.
    pub async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr} threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// A `data-*` attribute of `<body>` (`state`, `received`, `holes`, …).
    pub async fn body(&mut self, name: &str) -> String {
        self.eval(&format!("document.body.dataset[{name:?}] ?? ''"))
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn count(&mut self, name: &str) -> u64 {
        self.body(name).await.parse().unwrap_or(0)
    }

    /// Polls `expr` until it is `true` (an exception, e.g. while the page loads, is `false`).
    pub async fn wait_for(&mut self, what: &str, timeout: Duration, expr: &str) {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self
                .call(
                    "Runtime.evaluate",
                    json!({"expression": expr, "returnByValue": true}),
                )
                .await;
            if r.get("exceptionDetails").is_none() && r["result"]["value"] == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let state = self
                    .eval("JSON.stringify({...document.body.dataset, notice: document.getElementById('notice').textContent, status: document.getElementById('state-text').textContent})")
                    .await;
                panic!("timed out after {timeout:?} waiting for {what}; page: {state}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG screenshot of the page.
    pub async fn screenshot(&mut self, path: &Path) {
        use base64::Engine as _;
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64");
        std::fs::write(path, png).expect("write screenshot");
        println!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
