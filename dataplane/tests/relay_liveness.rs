//! A bridge on the runtime flavour production uses (multi-thread) must not wedge: after sitting
//! idle (no records, no requests, a partition refresh on the way) it still answers `/healthz`,
//! accepts a new WebSocket subscriber, delivers a freshly produced record to old and new
//! subscribers alike, and stops. Every wait has a deadline, and a watchdog thread outside the
//! runtime aborts the test process should the runtime itself stop driving timers.
//!
//! The idle-timeout test lives here, in a binary of its own, and not in `relay_ws`: there it ran
//! beside tests that push 20 MB through the mock cluster, and a client that pings every 100 ms
//! was closed when the machine stalled it past a 700 ms timeout.

mod relay_support;

use std::time::Duration;

use eventstream_testkit::{MockKafka, produce};
use relay_support::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longer than the consumer's partition refresh interval, so that one runs while idle.
const IDLE: Duration = Duration::from_millis(10_500);

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} within {WAIT:?}: the bridge is wedged"))
}

#[test]
fn an_idle_bridge_still_serves_and_stops() {
    on_multi_thread_runtime("an_idle_bridge_still_serves_and_stops", async {
        let kafka = MockKafka::new(1).expect("mock cluster");
        kafka.create_topic("t", 2, 1).expect("topic");
        let bootstrap = kafka.bootstrap();
        let bridge = Bridge::start(config(&bootstrap, "t", "")).await;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client");

        let mut early = within("connect", connect(&bridge.url("/ws"), None)).await;
        subscribe(&mut early, "*").await;
        produce(&bootstrap, "t", &[(Some("k"), r#"{"n":1}"#)])
            .await
            .expect("produced");
        assert_eq!(events(&mut early, 1).await[0].2, json!({"n": 1}));

        tokio::time::sleep(IDLE).await;

        let healthz = within(
            "/healthz",
            http.get(format!("http://{}/healthz", bridge.addr)).send(),
        )
        .await
        .expect("/healthz answers");
        assert_eq!(healthz.status(), 200);
        assert_eq!(healthz.text().await.expect("body"), "ok\n");
        let health: serde_json::Value = within(
            "/health",
            http.get(format!("http://{}/health", bridge.addr)).send(),
        )
        .await
        .expect("/health answers")
        .json()
        .await
        .expect("json");
        assert_eq!(health["status"], "healthy", "{health}");

        let mut late = within("connect after idling", connect(&bridge.url("/ws"), None)).await;
        subscribe(&mut late, "*").await;
        let mut keyed = within("connect after idling", connect(&bridge.url("/ws"), None)).await;
        subscribe(&mut keyed, "k").await;
        within(
            "produce",
            produce(&bootstrap, "t", &[(Some("k"), r#"{"n":2}"#)]),
        )
        .await
        .expect("produced");
        for ws in [&mut early, &mut late, &mut keyed] {
            assert_eq!(events(ws, 1).await[0].2, json!({"n": 2}));
        }

        within("stop", bridge.stop()).await;
    });
}

/// The idle timeout of the test below: a live client is closed only if the machine stalls it (or
/// the bridge) for this long, which is far beyond any scheduling delay seen under full load.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);

#[test]
fn a_silent_client_is_closed_after_the_idle_timeout_and_a_live_one_is_not() {
    on_multi_thread_runtime(
        "a_silent_client_is_closed_after_the_idle_timeout_and_a_live_one_is_not",
        async {
            let kafka = MockKafka::new(1).expect("mock cluster");
            kafka.create_topic("t", 1, 1).expect("topic");
            let bootstrap = kafka.bootstrap();
            let bridge = Bridge::start(config(
                &bootstrap,
                "t",
                &format!(
                    "pingInterval: 500ms, idleTimeout: {}s",
                    IDLE_TIMEOUT.as_secs()
                ),
            ))
            .await;
            let silent = tokio::spawn(silent_client(bridge.addr));
            let mut live = connect(&bridge.url("/ws"), None).await;
            subscribe(&mut live, "*").await;
            // The live client keeps talking for twice the idle timeout; the silent one reads
            // nothing.
            let deadline = tokio::time::Instant::now() + IDLE_TIMEOUT * 2;
            while tokio::time::Instant::now() < deadline {
                send(&mut live, json!({"type": "ping"})).await;
                assert_eq!(next_json(&mut live).await["type"], "pong");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(
                within("the silent client's close", silent)
                    .await
                    .expect("silent client"),
                Some(4000)
            );
            produce(
                &bootstrap,
                "t",
                &[(Some("k"), r#"{"n":1}"#), (Some("k"), r#"{"n":2}"#)],
            )
            .await
            .expect("produced");
            assert_eq!(events(&mut live, 2).await.len(), 2);
            bridge.stop().await;
        },
    );
}

/// A WebSocket client that completes the upgrade and then never writes a byte — not even the
/// pongs a WebSocket library sends while it reads (after the server closed, a late pong would
/// draw a TCP reset that can discard the close frame before it is read). Reads everything the
/// server sends until it closes the connection and returns the close frame's code.
async fn silent_client(addr: std::net::SocketAddr) -> Option<u16> {
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    socket
        .write_all(
            format!(
                "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("upgrade request");
    let mut received = Vec::new();
    socket
        .read_to_end(&mut received)
        .await
        .expect("the server closes the connection");
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 101"), "upgrade refused: {text}");
    let start = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of the upgrade response")
        + 4;
    // Server frames are not masked: FIN/opcode, length (7 bits, or 16 or 64 bits), payload.
    let mut frames = &received[start..];
    while frames.len() >= 2 {
        let opcode = frames[0] & 0x0f;
        let (len, header) = match frames[1] & 0x7f {
            126 => (u16::from_be_bytes([frames[2], frames[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(frames[2..10].try_into().expect("8 bytes")) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let payload = &frames[header..header + len];
        if opcode == 0x8 {
            return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        }
        frames = &frames[header + len..];
    }
    None
}
