//! The bridge's probes tell the truth, checked on the real `eventstream-dataplane bridge`
//! process (docs/operator.md, docs/config.md `server.*`):
//!
//! 1. waiting for Kafka at start, it is alive (`/healthz` 200, so a liveness probe never kills
//!    it) and not ready (`/readyz` and `/health` 503, the stream's routes 503 `starting`);
//! 2. when Kafka goes away (the mock cluster's broker down) it turns unready once it has heard
//!    nothing for `server.kafkaUnreadyAfter`, stays alive, and is ready again when Kafka is back;
//! 3. on SIGTERM it turns unready at once and keeps serving its clients for `server.drainDelay`,
//!    then closes them with 1001 and exits 0.

mod bridge_support;

use bridge_support::*;
use eventstream_testkit::MockKafka;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_kafka_at_start_the_bridge_is_alive_but_not_ready() {
    // Nothing listens on this port: the bridge keeps retrying its first metadata read.
    let nowhere = format!("127.0.0.1:{}", free_port());
    let port = free_port();
    let mut bridge = BridgeProcess::spawn(port, &config(port, &nowhere, "probes", "", ""));

    let (_, body) = bridge
        .until("liveness", "/healthz", |status, _| status == 200)
        .await;
    assert_eq!(body, "ok\n");
    let (status, body) = bridge.get("/readyz").await.expect("readyz answers");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("started"), "{body}");
    let (status, body) = bridge.get("/health").await.expect("health answers");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"starting\""), "{body}");
    // Still alive, still not ready, a while later (retries, not a crash loop).
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(bridge.get("/healthz").await.map(|a| a.0), Some(200));
    assert_eq!(bridge.get("/readyz").await.map(|a| a.0), Some(503));

    bridge.signal("TERM");
    let status = bridge.exit().await;
    assert!(
        status.success(),
        "SIGTERM while starting is a clean exit: {status}\n{}",
        bridge.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_false_when_kafka_is_lost_and_true_when_it_is_back() {
    let kafka = MockKafka::new(1).expect("mock cluster");
    kafka.create_topic("probes", 2, 1).expect("topic");
    let port = free_port();
    let mut bridge = BridgeProcess::spawn(
        port,
        &config(
            port,
            &kafka.bootstrap(),
            "probes",
            "kafkaUnreadyAfter: 5s",
            "",
        ),
    );
    bridge
        .until("ready", "/readyz", |status, _| status == 200)
        .await;
    let (status, body) = bridge.get("/health").await.expect("health");
    assert_eq!(status, 200, "{body}");

    kafka.broker_down(1).expect("broker down");
    let (_, body) = bridge
        .until("unready after losing Kafka", "/readyz", |status, _| {
            status == 503
        })
        .await;
    assert!(body.contains("kafka-reachable"), "{body}");
    let (status, body) = bridge.get("/health").await.expect("health");
    assert_eq!(status, 503, "{body}");
    let health: Value = serde_json::from_str(&body).expect("health JSON");
    assert_eq!(health["status"], "kafka_unreachable", "{health}");
    assert_eq!(health["kafka"]["state"], "unreachable", "{health}");
    assert!(
        health["kafka"]["silentForMs"].as_u64().unwrap_or(0) > 5000,
        "{health}"
    );
    // Alive all along: a liveness probe must not restart a bridge for Kafka's outage.
    assert_eq!(bridge.get("/healthz").await.map(|a| a.0), Some(200));

    kafka.broker_up(1).expect("broker up");
    bridge
        .until("ready again with Kafka back", "/readyz", |status, _| {
            status == 200
        })
        .await;
    let (status, body) = bridge.get("/health").await.expect("health");
    assert_eq!(status, 200, "{body}");

    bridge.signal("TERM");
    assert!(bridge.exit().await.success(), "{}", bridge.log());
    drop(bridge);
    drop(kafka);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_drain_is_unready_at_once_and_still_serves_its_clients() {
    let kafka = MockKafka::new(1).expect("mock cluster");
    kafka.create_topic("probes", 1, 1).expect("topic");
    let port = free_port();
    let mut bridge = BridgeProcess::spawn(
        port,
        // Long enough that the drain is observed whatever the machine's load; the test does
        // not wait for it to pass on its own, it waits for the exit.
        &config(port, &kafka.bootstrap(), "probes", "drainDelay: 20s", ""),
    );
    bridge
        .until("ready", "/readyz", |status, _| status == 200)
        .await;

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
        .await
        .expect("WebSocket connects");
    send(&mut ws, json!({"type": "subscribe", "channel": "*"})).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");

    bridge.signal("TERM");
    let (_, body) = bridge
        .until("unready once the drain starts", "/readyz", |status, _| {
            status == 503
        })
        .await;
    assert!(body.contains("draining"), "{body}");
    let (status, body) = bridge
        .get("/health")
        .await
        .expect("health during the drain");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"draining\""), "{body}");
    assert_eq!(bridge.get("/healthz").await.map(|a| a.0), Some(200));

    // During the drain the client is still served: an event produced now reaches it.
    let client = reqwest::Client::new();
    let produced = client
        .post(bridge.url("/produce"))
        .json(&json!({"during": "drain"}))
        .send()
        .await
        .expect("produce during the drain");
    assert_eq!(produced.status().as_u16(), 200);
    let event = next_json(&mut ws).await;
    assert_eq!(event["type"], "event", "{event}");
    assert_eq!(event["data"]["during"], "drain", "{event}");

    // Then it is told to go elsewhere with its positions, and the process ends cleanly.
    let code = loop {
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(code, Some(1001));
    let status = bridge.exit().await;
    assert!(status.success(), "{status}\n{}", bridge.log());
    drop(bridge);
    drop(kafka);
}

async fn send<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, frame: Value)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .expect("send");
}

/// The next JSON frame (pings skipped), within the generous wait.
async fn next_json<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a JSON frame within the wait")
            .expect("stream open")
            .expect("frame ok");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}
