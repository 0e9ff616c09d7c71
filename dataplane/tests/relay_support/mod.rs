//! Helpers for the fan-out tests: a bridge started in process on a free port, a small
//! WebSocket client speaking protocol v1, and a watchdog outside the async runtime.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use eventstream_crds::config::DataplaneConfig;
use eventstream_dataplane::bridge;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub const WAIT: Duration = Duration::from_secs(20);

/// A config for `topic` on `bootstrap`, listening on a free port; `websocket_yaml` is YAML
/// merged into the `websocket` section.
pub fn config(bootstrap: &str, topic: &str, websocket_yaml: &str) -> DataplaneConfig {
    config_with(bootstrap, topic, "", websocket_yaml)
}

/// [`config`] with more librdkafka properties (`kafka_yaml`, e.g. `"a.b: '1'"`).
pub fn config_with(
    bootstrap: &str,
    topic: &str,
    kafka_yaml: &str,
    websocket_yaml: &str,
) -> DataplaneConfig {
    let kafka = if kafka_yaml.is_empty() {
        "fetch.wait.max.ms: '10'".to_string()
    } else {
        format!("fetch.wait.max.ms: '10', {kafka_yaml}")
    };
    let text = format!(
        "stream: {{ namespace: test, name: relay }}\n\
         kafka: {{ bootstrapServers: '{bootstrap}', properties: {{ {kafka} }} }}\n\
         topic: {topic}\n\
         server: {{ listen: '127.0.0.1:0', shutdownGrace: 5s }}\n\
         ingest: {{ enabled: false }}\n\
         websocket: {{ {websocket_yaml} }}\n"
    );
    DataplaneConfig::from_yaml(&text).expect("test config is valid")
}

/// How long any relay test may run before [`Watchdog`] aborts the test process.
pub const TEST_LIMIT: Duration = Duration::from_secs(120);

/// Aborts the whole test process, loudly, when it is still alive after its limit: it runs on
/// a plain thread, so a wedged runtime (every worker blocked, nobody driving timers, so no
/// `tokio::time::timeout` fires) fails CI instead of hanging it. Dropping it (the test ends,
/// or unwinds from a failed assertion) disarms it.
pub struct Watchdog {
    _disarm: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    /// Arms a watchdog for the test `name`.
    pub fn arm(name: &'static str, limit: Duration) -> Watchdog {
        let (disarm, armed) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name(format!("watchdog-{name}"))
            .spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = armed.recv_timeout(limit) {
                    // Straight to stderr: libtest captures `eprintln!` (also on threads a
                    // test spawns) and would lose it with the process.
                    let _ = std::io::Write::write_all(
                        &mut std::io::stderr(),
                        format!(
                            "\nWATCHDOG: test `{name}` is still running after {limit:?}: the \
                             async runtime is wedged or the test waits without a deadline. \
                             Aborting the test process so that CI fails instead of hanging.\n"
                        )
                        .as_bytes(),
                    );
                    std::process::abort();
                }
            })
            .expect("watchdog thread starts");
        Watchdog { _disarm: disarm }
    }
}

/// Runs the test body `test` on a multi-thread runtime with two workers (the flavour the
/// bridge runs on in production, as many workers as CI has cores), under a [`Watchdog`] that
/// outlives the runtime, so a runtime whose shutdown hangs is caught too.
pub fn on_multi_thread_runtime(name: &'static str, test: impl std::future::Future<Output = ()>) {
    let _watchdog = Watchdog::arm(name, TEST_LIMIT);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(test);
    drop(runtime);
}

pub struct Bridge {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub registry: prometheus::Registry,
}

impl Bridge {
    pub async fn start(config: DataplaneConfig) -> Bridge {
        let shutdown = CancellationToken::new();
        let registry = prometheus::Registry::new();
        let running = bridge::start(config, registry.clone(), shutdown.clone())
            .await
            .expect("bridge starts");
        Bridge {
            addr: running.local_addr,
            shutdown,
            task: running.task,
            registry,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let done = tokio::time::timeout(WAIT, self.task).await;
        assert!(
            matches!(done, Ok(Ok(Ok(())))),
            "bridge stops cleanly: {done:?}"
        );
    }

    /// A metric's value summed over label sets (0 when absent).
    pub fn metric(&self, name: &str) -> f64 {
        let text = eventstream_dataplane::telemetry::render(&self.registry);
        text.lines()
            .filter(|l| {
                l.starts_with(name)
                    && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

pub async fn connect(url: &str, protocol: Option<&str>) -> Ws {
    let mut request = url.into_client_request().expect("request");
    if let Some(p) = protocol {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(p).expect("header"),
        );
    }
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connects");
    ws
}

pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, frame: Value) {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .expect("send");
}

/// The next JSON frame (skipping pings), or panics after `WAIT`.
///
/// The wait is one deadline for the whole call, not one per frame: the bridge pings every
/// `pingInterval` (20 s by default, as long as `WAIT`), and a per-frame timeout restarted by
/// each skipped ping would never expire, turning a missing frame into a hang.
pub async fn next_json<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a JSON frame within the wait (pings do not count)")
            .expect("stream open")
            .expect("frame ok");
        match msg {
            Message::Text(t) => {
                return serde_json::from_str(t.as_str()).expect("server sends JSON");
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// The close frame's code, reading and discarding anything before it (within one `WAIT`).
pub async fn close_code<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
) -> Option<CloseCode> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("closes within the wait")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

pub async fn subscribe(ws: &mut Ws, channel: &str) -> Value {
    send(ws, json!({"type": "subscribe", "channel": channel})).await;
    let reply = next_json(ws).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    reply
}

/// Reads events until `n` have arrived; returns (partition, offset, data) in arrival order.
/// Fails on any non-event frame except those listed in `allow`.
pub async fn events(ws: &mut Ws, n: usize) -> Vec<(i64, i64, Value)> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let f = next_json(ws).await;
        assert_eq!(f["type"], "event", "unexpected frame {f}");
        out.push((
            f["partition"].as_i64().expect("partition"),
            f["offset"].as_i64().expect("offset"),
            f["data"].clone(),
        ));
    }
    out
}

/// Asserts that offsets increase within every partition.
pub fn assert_partition_order(events: &[(i64, i64, Value)]) {
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    for (p, o, _) in events {
        if let Some(prev) = last.insert(*p, *o) {
            assert!(*o > prev, "partition {p}: offset {o} after {prev}");
        }
    }
}

/// Waits until `cond` holds, polling.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A WebSocket client whose socket has a tiny receive buffer, so that a client that stops
/// reading stalls the server's writes quickly whatever the machine's TCP autotuning allows.
pub async fn connect_stalling(addr: SocketAddr, path: &str) -> WebSocketStream<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("small receive buffer");
    let stream = socket.connect(addr).await.expect("tcp connect");
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("upgrade");
    ws
}

/// The JWT secret of [`start_secured`] bridges.
pub const TEST_JWT_SECRET: &str = "test-secret-of-enough-length-0123456789";

/// A bridge whose WebSocket, SSE and Socket.IO need an HS256 token signed with
/// [`TEST_JWT_SECRET`] (channels in `channels`, publish rights in `publish`).
pub async fn start_secured(
    mut cfg: DataplaneConfig,
) -> (
    bridge::RunningBridge,
    prometheus::Registry,
    tokio_util::sync::CancellationToken,
) {
    cfg.auth = Some(eventstream_crds::config::AuthConfig {
        algorithm: eventstream_crds::v1alpha1::JwtAlgorithm::HS256,
        issuer: None,
        audience: None,
        channels_claim: "channels".into(),
        publish_claim: "publish".into(),
        websocket: true,
        ingest: false,
    });
    let shutdown = tokio_util::sync::CancellationToken::new();
    let registry = prometheus::Registry::new();
    let running = bridge::start_with_key(
        cfg,
        registry.clone(),
        shutdown.clone(),
        Some(TEST_JWT_SECRET.into()),
    )
    .await
    .expect("bridge starts");
    (running, registry, shutdown)
}
