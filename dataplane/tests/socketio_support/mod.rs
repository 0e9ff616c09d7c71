//! The real `socket.io-client` (npm, `tests/socketio_client/`, installed by `scripts/test` with
//! `npm ci`) driven from the tests through `driver.mjs`: one Node process per client, whose
//! JSON lines (connect, upgrade, connect_error, disconnect, events, acks) are collected and
//! waited on with generous deadlines.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Generous: the machine is shared; the waits poll for a state, they do not measure time.
pub const WAIT: Duration = Duration::from_secs(60);

/// The npm fixture.
pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/socketio_client")
}

/// Fails (never skips) when the fixture is not installed.
pub fn require_fixture() -> PathBuf {
    let dir = fixture_dir();
    assert!(
        dir.join("node_modules/socket.io-client/package.json")
            .exists(),
        "socket.io-client is not installed in {}: run ./scripts/test, or `npm ci` there",
        dir.display()
    );
    dir
}

/// One `socket.io-client` in a Node process; killed on drop.
pub struct NodeClient {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
}

impl NodeClient {
    /// Starts `node driver.mjs CONFIG` (see `driver.mjs` for the config).
    pub fn spawn(config: &Value) -> Self {
        let dir = require_fixture();
        let mut child = Command::new("node")
            .arg(dir.join("driver.mjs"))
            .arg(config.to_string())
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start node (Node 20 is needed for the Socket.IO tests)");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let lines = lines.clone();
            let out = child.stdout.take().expect("stdout");
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let value = serde_json::from_str(&line)
                        .unwrap_or_else(|_| Value::String(format!("not JSON: {line}")));
                    lines.lock().expect("lock").push(value);
                }
            });
        }
        {
            let stderr = stderr.clone();
            let err = child.stderr.take().expect("stderr");
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    let mut s = stderr.lock().expect("lock");
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            lines,
            stderr,
        }
    }

    /// Everything printed so far.
    pub fn lines(&self) -> Vec<Value> {
        self.lines.lock().expect("lock").clone()
    }

    /// Lines of kind `t` (`connect`, `event`, `ack`, …).
    pub fn of(&self, t: &str) -> Vec<Value> {
        self.lines().into_iter().filter(|l| l["t"] == t).collect()
    }

    /// The arguments of every `event` named `name`, in arrival order.
    pub fn events(&self, name: &str) -> Vec<Vec<Value>> {
        self.of("event")
            .into_iter()
            .filter(|l| l["event"] == name)
            .map(|l| l["args"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Emits `event` (with `arg`) with an acknowledgement callback.
    pub fn emit(&mut self, event: &str, arg: Option<Value>) {
        let mut cmd = serde_json::json!({ "emit": event });
        if let Some(arg) = arg {
            cmd["arg"] = arg;
        }
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{cmd}").expect("write to node");
        stdin.flush().expect("flush");
    }

    /// Waits until `cond(lines)` holds; panics with the transcript after [`WAIT`].
    pub async fn until(&mut self, what: &str, cond: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let lines = self.lines();
            if cond(&lines) {
                return lines;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the Node client exited ({status}) while waiting for {what}\n{}",
                    self.transcript()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.transcript()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// At least `n` events named `name`.
    pub async fn until_events(&mut self, name: &str, n: usize) -> Vec<Vec<Value>> {
        self.until(&format!("{n} `{name}` events"), |lines| {
            lines
                .iter()
                .filter(|l| l["t"] == "event" && l["event"] == name)
                .count()
                >= n
        })
        .await;
        self.events(name)
    }

    /// The last lines and stderr, for failure messages.
    pub fn transcript(&self) -> String {
        let lines = self.lines();
        let tail: Vec<String> = lines
            .iter()
            .rev()
            .take(30)
            .rev()
            .map(|l| l.to_string())
            .collect();
        format!(
            "node stdout ({} lines, last 30):\n{}\nnode stderr:\n{}",
            lines.len(),
            tail.join("\n"),
            self.stderr.lock().expect("lock")
        )
    }
}

impl Drop for NodeClient {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(partition, offset)` of protocol v1 event objects (the first argument of `event`).
pub fn positions(events: &[Vec<Value>]) -> Vec<(i64, i64)> {
    events
        .iter()
        .map(|args| {
            let meta = &args[1];
            (
                meta["partition"].as_i64().expect("partition in meta"),
                meta["offset"].as_i64().expect("offset in meta"),
            )
        })
        .collect()
}

/// Asserts `got` is exactly `want` as a set, each once, and in offset order per partition.
pub fn assert_exactly_once_in_order(got: &[(i64, i64)], want: &[(i32, i64)]) {
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    for (p, o) in got {
        if let Some(prev) = last.insert(*p, *o) {
            assert!(
                o > &prev,
                "partition {p}: offset {o} after {prev} (order or duplicate)"
            );
        }
    }
    let got_set: BTreeSet<(i64, i64)> = got.iter().copied().collect();
    assert_eq!(got_set.len(), got.len(), "duplicates in {got:?}");
    let want_set: BTreeSet<(i64, i64)> = want.iter().map(|(p, o)| (i64::from(*p), *o)).collect();
    let missing: Vec<_> = want_set.difference(&got_set).collect();
    let extra: Vec<_> = got_set.difference(&want_set).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, unexpected {extra:?}"
    );
}
