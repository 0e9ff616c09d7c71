//! Socket.IO v4 on the bridge's `/socket.io/`, driven by the real `socket.io-client` from npm
//! (Node, `tests/socketio_client/driver.mjs`) against librdkafka's mock cluster:
//!
//! - long-polling only, WebSocket only, and polling upgraded to WebSocket each deliver every
//!   record once, in offset order per partition, as `event(v1 event, meta)`;
//! - rooms: sockets get exactly the channels they joined, `unsubscribe` stops one, garbage
//!   gets its documented error and the socket stays up;
//! - a bad or missing token is refused with `connect_error`, a token's channel permissions
//!   apply as on `/ws`, and a socket ends with `token_expired` when its token does;
//! - the real bridge process killed (SIGKILL) and restarted while records keep coming: the
//!   stock reconnection hands back `auth.resume` and nothing is lost or repeated;
//! - a filtered subscription gets exactly its matches and `progress`;
//! - `standalone` with nothing configured answers seed 001's `join_dashboard`.

mod bridge_support;
mod relay_support;
mod socketio_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use eventstream_testkit::{MockKafka, produce};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use relay_support::{Bridge, TEST_JWT_SECRET, config, on_multi_thread_runtime, start_secured};
use serde_json::{Value, json};
use socketio_support::*;

const SECRET: &str = TEST_JWT_SECRET;

fn records(n: usize, channels: usize, tag: &str) -> Vec<(Option<String>, String)> {
    (0..n)
        .map(|i| {
            let channel = format!("car-{}", i % channels);
            let payload = json!({"eventType": "lap", "car": channel, "i": i, "tag": tag});
            (Some(channel), payload.to_string())
        })
        .collect()
}

async fn produce_all(bootstrap: &str, records: &[(Option<String>, String)]) -> Vec<(i32, i64)> {
    produce(bootstrap, "t", records).await.expect("produce")
}

fn metric(bridge: &Bridge, name: &str, label: &str) -> f64 {
    let text = eventstream_dataplane::telemetry::render(&bridge.registry);
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One client on `transports`, subscribed to `*`: every record once, in order, over the
/// transport it says.
async fn delivers_over(transports: Value, upgrade: bool, connects_on: &str, upgrades: bool) {
    let kafka = MockKafka::new(1).expect("mock cluster");
    kafka.create_topic("t", 2, 1).expect("topic");
    let bootstrap = kafka.bootstrap();
    let bridge = Bridge::start(config(&bootstrap, "t", "")).await;
    let mut client = NodeClient::spawn(&json!({
        "url": format!("http://{}", bridge.addr),
        "transports": transports,
        "upgrade": upgrade,
        "joins": [{"event": "subscribe", "arg": "*"}],
    }));
    let lines = client
        .until("the subscription's ack", |l| {
            l.iter().any(|l| l["t"] == "ack")
        })
        .await;
    // The transport the Engine.IO connection opened on (an upgrade may already be done by the
    // time Socket.IO's `connect` fires).
    let open = lines.iter().find(|l| l["t"] == "open").expect("opened");
    assert_eq!(open["transport"], connects_on, "{}", client.transcript());
    let ack = lines.iter().find(|l| l["t"] == "ack").expect("ack");
    assert_eq!(ack["answer"]["channel"], "*", "{ack}");
    assert!(
        ack["answer"]["resume"]["0"].is_i64() && ack["answer"]["resume"]["1"].is_i64(),
        "the ack names every partition: {ack}"
    );
    if upgrades {
        client
            .until("the upgrade to WebSocket", |l| {
                l.iter()
                    .any(|l| l["t"] == "upgrade" && l["transport"] == "websocket")
            })
            .await;
    }
    assert_eq!(
        metric(
            &bridge,
            "eventstream_ws_connections",
            "transport=\"socketio\""
        ),
        1.0
    );

    let produced = produce_all(&bootstrap, &records(60, 4, "live")).await;
    let events = client.until_events("event", produced.len()).await;
    assert_eq!(events.len(), produced.len(), "{}", client.transcript());
    assert_exactly_once_in_order(&positions(&events), &produced);
    for args in &events {
        let event = &args[0];
        assert_eq!(event["type"], "event", "the protocol v1 event: {event}");
        assert_eq!(event["data"]["eventType"], "lap");
        assert_eq!(event["key"], event["data"]["car"]);
        assert_eq!(args[1]["channel"], "*");
    }
    if !upgrades {
        assert!(
            client.of("upgrade").is_empty(),
            "no upgrade expected: {}",
            client.transcript()
        );
    }
    drop(client);
    bridge.stop().await;
}

#[test]
fn long_polling_only_delivers_every_record_once_in_order() {
    on_multi_thread_runtime("socketio_polling", async {
        delivers_over(json!(["polling"]), false, "polling", false).await;
    });
}

#[test]
fn websocket_only_delivers_every_record_once_in_order() {
    on_multi_thread_runtime("socketio_websocket", async {
        delivers_over(json!(["websocket"]), false, "websocket", false).await;
    });
}

#[test]
fn polling_upgraded_to_websocket_delivers_every_record_once_in_order() {
    on_multi_thread_runtime("socketio_upgrade", async {
        delivers_over(json!(["polling", "websocket"]), true, "polling", true).await;
    });
}

fn keys(events: &[Vec<Value>]) -> Vec<String> {
    events
        .iter()
        .map(|a| a[0]["key"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn rooms_get_exactly_their_channels_and_garbage_gets_its_error() {
    on_multi_thread_runtime("socketio_rooms", async {
        let kafka = MockKafka::new(1).expect("mock cluster");
        kafka.create_topic("t", 2, 1).expect("topic");
        let bootstrap = kafka.bootstrap();
        let bridge = Bridge::start(config(&bootstrap, "t", "")).await;
        let url = format!("http://{}", bridge.addr);
        let mut a = NodeClient::spawn(&json!({
            "url": url,
            "joins": [
                {"event": "subscribe", "arg": "car-1"},
                {"event": "subscribe", "arg": {"channel": "car-2"}},
            ],
        }));
        let mut b = NodeClient::spawn(&json!({
            "url": url, "joins": [{"event": "subscribe", "arg": "car-3"}],
        }));
        a.until("two acks", |l| {
            l.iter().filter(|l| l["t"] == "ack").count() == 2
        })
        .await;
        b.until("one ack", |l| l.iter().any(|l| l["t"] == "ack"))
            .await;

        let produced = produce_all(&bootstrap, &records(40, 4, "first")).await;
        let a_events = a.until_events("event", 20).await;
        let b_events = b.until_events("event", 10).await;
        let mut a_keys = keys(&a_events);
        a_keys.sort();
        a_keys.dedup();
        assert_eq!(a_keys, ["car-1", "car-2"], "{}", a.transcript());
        assert_eq!(a_events.len(), 20);
        assert!(keys(&b_events).iter().all(|k| k == "car-3"));
        assert_eq!(b_events.len(), 10);
        let for_a: Vec<(i32, i64)> = produced
            .iter()
            .zip(records(40, 4, "first"))
            .filter(|(_, (k, _))| matches!(k.as_deref(), Some("car-1" | "car-2")))
            .map(|(p, _)| *p)
            .collect();
        assert_exactly_once_in_order(&positions(&a_events), &for_a);

        // Garbage: each gets its documented error; the socket stays up.
        a.emit("subscribe", Some(json!(42)));
        a.emit(
            "subscribe",
            Some(json!({"channel": "car-9", "since": {"0": "x"}})),
        );
        a.emit("subscribe", Some(json!("car-1")));
        a.emit("unsubscribe", Some(json!("car-8")));
        a.emit("hello", Some(json!({})));
        let codes = [
            "bad_frame",
            "invalid_since",
            "already_subscribed",
            "not_subscribed",
            "unknown_type",
        ];
        let acked_errors = |l: &[Value]| -> Vec<String> {
            let mut codes: Vec<String> = l
                .iter()
                .filter(|l| l["t"] == "ack")
                .filter_map(|l| l["answer"]["error"]["code"].as_str().map(str::to_string))
                .collect();
            codes.sort();
            codes
        };
        a.until(
            "an error event for each bad request, and an ack for each but the unknown event",
            |l| {
                let got: Vec<&str> = l
                    .iter()
                    .filter(|l| l["t"] == "event" && l["event"] == "error")
                    .filter_map(|l| l["args"][0]["code"].as_str())
                    .collect();
                codes.iter().all(|c| got.contains(c)) && acked_errors(l).len() == 4
            },
        )
        .await;
        assert_eq!(
            acked_errors(&a.lines()),
            [
                "already_subscribed",
                "bad_frame",
                "invalid_since",
                "not_subscribed"
            ],
            "each ack callback gets its error"
        );

        // unsubscribe stops a channel; the other continues.
        a.emit("unsubscribe", Some(json!("car-2")));
        a.until("the unsubscribe ack", |l| {
            l.iter()
                .any(|l| l["t"] == "ack" && l["answer"]["channel"] == "car-2")
        })
        .await;
        produce_all(&bootstrap, &records(40, 4, "second")).await;
        let a_events = a.until_events("event", 30).await;
        b.until_events("event", 20).await;
        let later: Vec<&Vec<Value>> = a_events
            .iter()
            .filter(|e| e[0]["data"]["tag"] == "second")
            .collect();
        assert_eq!(later.len(), 10, "{}", a.transcript());
        assert!(later.iter().all(|e| e[0]["key"] == "car-1"));
        assert!(a.of("disconnect").is_empty(), "{}", a.transcript());
        drop((a, b));
        bridge.stop().await;
    });
}

/// A filter on a Socket.IO subscription (the `/ws` rules: CEL, `invalid_filter`): exactly the
/// matching records arrive, and `progress` moves the client's resume past the records the
/// filter dropped (a reconnect then neither reads them again nor reports a gap).
#[test]
fn a_filtered_subscription_gets_its_matches_and_progress() {
    on_multi_thread_runtime("socketio_filter", async {
        let kafka = MockKafka::new(1).expect("mock cluster");
        kafka.create_topic("t", 2, 1).expect("topic");
        let bootstrap = kafka.bootstrap();
        // Progress rounds every replayMaxMessages/2 = 5 published records.
        let bridge = Bridge::start(config(&bootstrap, "t", "replayMaxMessages: 10")).await;
        let mut c = NodeClient::spawn(&json!({
            "url": format!("http://{}", bridge.addr),
            "joins": [{"event": "subscribe", "arg": {"channel": "*", "filter": "data.i % 10 == 0"}}],
        }));
        c.until("the ack", |l| l.iter().any(|l| l["t"] == "ack"))
            .await;
        let all = records(100, 4, "f");
        let produced = produce_all(&bootstrap, &all).await;
        let events = c.until_events("event", 10).await;
        let matching: Vec<(i32, i64)> = produced
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 10 == 0)
            .map(|(_, p)| *p)
            .collect();
        assert_exactly_once_in_order(&positions(&events), &matching);
        let mut last = std::collections::BTreeMap::new();
        for (p, o) in &produced {
            let e = last.entry(*p).or_insert(*o);
            *e = (*e).max(*o);
        }
        // One more batch after the last round, so that the final round runs.
        produce_all(&bootstrap, &records(10, 4, "nudge")).await;
        c.until("progress past every record the filter dropped", |l| {
            l.iter().any(|l| {
                l["t"] == "event"
                    && l["event"] == "progress"
                    && last.iter().all(|(p, o)| {
                        l["args"][0]["resume"][p.to_string()]
                            .as_i64()
                            .is_some_and(|r| r >= *o)
                    })
            })
        })
        .await;
        c.emit(
            "subscribe",
            Some(json!({"channel": "car-1", "filter": "data.i >"})),
        );
        c.until("invalid_filter", |l| {
            l.iter().any(|l| {
                l["t"] == "event"
                    && l["event"] == "error"
                    && l["args"][0]["code"] == "invalid_filter"
            })
        })
        .await;
        assert!(c.of("disconnect").is_empty(), "{}", c.transcript());
        drop(c);
        bridge.stop().await;
    });
}

fn token(channels: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"exp": chrono::Utc::now().timestamp() + 600, "channels": channels}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

#[test]
fn a_bad_token_is_refused_and_a_good_one_gets_only_its_channels() {
    on_multi_thread_runtime("socketio_auth", async {
        let kafka = MockKafka::new(1).expect("mock cluster");
        kafka.create_topic("t", 1, 1).expect("topic");
        let bootstrap = kafka.bootstrap();
        let (running, registry, shutdown) = start_secured(config(&bootstrap, "t", "")).await;
        let url = format!("http://{}", running.local_addr);
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &json!({"exp": chrono::Utc::now().timestamp() + 600, "channels": ["*"]}),
            &EncodingKey::from_secret(b"another-secret-of-enough-length-000000"),
        )
        .expect("token");
        for bad in [json!("garbage"), json!(forged), Value::Null] {
            let mut client = NodeClient::spawn(&json!({
                "url": url, "token": bad, "joins": [{"event": "subscribe", "arg": "*"}],
            }));
            let lines = client
                .until("connect_error", |l| {
                    l.iter().any(|l| l["t"] == "connect_error")
                })
                .await;
            let error = lines
                .iter()
                .find(|l| l["t"] == "connect_error")
                .expect("error");
            assert!(
                error["message"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("unauthorized: "),
                "{error}"
            );
            assert!(client.of("connect").is_empty(), "{}", client.transcript());
        }
        let rejected: f64 = eventstream_dataplane::telemetry::render(&registry)
            .lines()
            .filter(|l| {
                l.starts_with("eventstream_ws_connections_rejected_total")
                    && l.contains("unauthorized")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(rejected, 3.0);

        let mut client = NodeClient::spawn(&json!({
            "url": url, "token": token(json!(["car-1"])),
            "joins": [{"event": "subscribe", "arg": "car-1"}, {"event": "subscribe", "arg": "car-2"}],
        }));
        let lines = client
            .until("two acks", |l| {
                l.iter().filter(|l| l["t"] == "ack").count() == 2
            })
            .await;
        let forbidden = lines
            .iter()
            .find(|l| l["t"] == "ack" && l["answer"]["error"]["code"] == "forbidden");
        assert!(forbidden.is_some(), "{}", client.transcript());
        produce(&bootstrap, "t", &records(20, 4, "auth"))
            .await
            .expect("produce");
        let events = client.until_events("event", 5).await;
        // Give stray records a chance to show up before asserting they do not.
        produce(&bootstrap, "t", &[(Some("car-1"), "{\"last\":true}")])
            .await
            .expect("produce");
        let events = client.until_events("event", events.len() + 1).await;
        assert_eq!(events.len(), 6);
        assert!(keys(&events).iter().all(|k| k == "car-1"));
        drop(client);

        // A socket does not outlive its token: at `exp` (with the 30 s leeway) it gets
        // `error` `token_expired` and a server disconnect, as a `/ws` connection gets 4001.
        // 10 s of validity: Node starting on a busy machine must still connect in time.
        let ending = encode(
            &Header::new(Algorithm::HS256),
            &json!({
                "exp": chrono::Utc::now().timestamp()
                    - eventstream_dataplane::auth::LEEWAY_SECS as i64 + 10,
                "channels": ["*"],
            }),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("token");
        let mut expiring = NodeClient::spawn(&json!({
            "url": url, "token": ending, "joins": [{"event": "subscribe", "arg": "*"}],
        }));
        let lines = expiring
            .until("token_expired and a server disconnect", |l| {
                l.iter().any(|l| {
                    l["t"] == "event"
                        && l["event"] == "error"
                        && l["args"][0]["code"] == "token_expired"
                }) && l
                    .iter()
                    .any(|l| l["t"] == "disconnect" && l["reason"] == "io server disconnect")
            })
            .await;
        assert!(
            lines.iter().any(|l| l["t"] == "connect"),
            "{}",
            expiring.transcript()
        );
        drop(expiring);
        shutdown.cancel();
        let _ = tokio::time::timeout(WAIT, running.task).await;
    });
}

/// The real bridge process is killed with SIGKILL while a producer keeps going, records are
/// produced while it is down, and it is started again on the same port (reading from the
/// latest offsets, so only a resume brings back what it missed): socket.io-client's stock
/// reconnection hands back `auth.resume` and the client gets every record once, in order.
#[test]
fn a_killed_and_restarted_bridge_loses_nothing_and_repeats_nothing() {
    on_multi_thread_runtime("socketio_resume", async {
        let kafka = MockKafka::new(1).expect("mock cluster");
        kafka.create_topic("t", 2, 1).expect("topic");
        let bootstrap = kafka.bootstrap();
        let port = bridge_support::free_port();
        let yaml = bridge_support::config(port, &bootstrap, "t", "", "enabled: false");
        let mut bridge = bridge_support::BridgeProcess::spawn(port, &yaml);
        bridge
            .until("the bridge to be ready", "/readyz", |s, _| s == 200)
            .await;
        let mut client = NodeClient::spawn(&json!({
            "url": format!("http://127.0.0.1:{port}"),
            "joins": [{"event": "subscribe", "arg": "*"}],
        }));
        client
            .until("the subscription's ack", |l| {
                l.iter().any(|l| l["t"] == "ack")
            })
            .await;

        // A producer that keeps going through the kill and the restart.
        let produced = Arc::new(parking_lot::Mutex::new(Vec::<(i32, i64)>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let producer = {
            let (produced, stop, count, bootstrap) = (
                produced.clone(),
                stop.clone(),
                count.clone(),
                bootstrap.clone(),
            );
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Acquire) {
                    let batch = records(4, 4, &format!("b{i}"));
                    let at = produce(&bootstrap, "t", &batch).await.expect("produce");
                    produced.lock().extend(at);
                    count.fetch_add(batch.len(), Ordering::AcqRel);
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        client.until_events("event", 40).await;
        bridge.signal("KILL");
        let status = bridge.exit().await;
        assert!(!status.success(), "killed: {status}");
        let received_at_kill = client.events("event").len();
        let produced_at_kill = count.load(Ordering::Acquire);
        // The window: records produced while no bridge runs reach the client only by resume.
        let deadline = std::time::Instant::now() + WAIT;
        while count.load(Ordering::Acquire) < produced_at_kill + 40 {
            assert!(std::time::Instant::now() < deadline, "the producer stalled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            client.events("event").len() == received_at_kill,
            "nothing arrives while the bridge is down"
        );
        let mut bridge = bridge_support::BridgeProcess::spawn(port, &yaml);
        bridge
            .until("the restarted bridge to be ready", "/readyz", |s, _| {
                s == 200
            })
            .await;
        client
            .until("the client to reconnect", |l| {
                l.iter().filter(|l| l["t"] == "connect").count() >= 2
            })
            .await;
        let resumed = client.events("event").len();
        let deadline = std::time::Instant::now() + WAIT;
        while client.events("event").len() < resumed + 20 {
            assert!(
                std::time::Instant::now() < deadline,
                "{}",
                client.transcript()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.store(true, Ordering::Release);
        producer.await.expect("producer");
        let produced = produced.lock().clone();
        let events = client.until_events("event", produced.len()).await;
        assert_exactly_once_in_order(&positions(&events), &produced);
        assert_eq!(events.len(), produced.len());
        println!(
            "resume: {} records, {} produced before the kill, {} received by then",
            produced.len(),
            produced_at_kill,
            received_at_kill
        );
        drop(client);
        drop(bridge);
    });
}

/// The next text frame of a raw Engine.IO client, answering pings (`2`) on the way.
async fn raw_next_text<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = msg {
            if t.as_str() == "2" {
                ws.send(Message::Text("3".into())).await.expect("pong");
                continue;
            }
            return t.to_string();
        }
    }
}

/// Engine.IO open, then the default namespace's connect, at the protocol level.
async fn raw_connect<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let open = raw_next_text(ws).await;
    assert!(open.starts_with('0'), "Engine.IO open, got {open}");
    ws.send(Message::Text("40".into())).await.expect("send");
    let connect = raw_next_text(ws).await;
    assert!(
        connect.starts_with("40"),
        "namespace connect, got {connect}"
    );
}

/// A client may emit `subscribe` the moment it reads the namespace's connect packet, before
/// any connect handler of the server has run: every such subscribe is answered. (Written at
/// the Engine.IO level, as socket.io-client is not that fast; the bridge once registered its
/// event handlers in the connect handler, and about one such subscribe in five found none.)
#[test]
fn a_subscribe_sent_right_after_the_connect_packet_is_answered() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    on_multi_thread_runtime("socketio_subscribe_race", async {
        let kafka = MockKafka::new(1).expect("mock cluster");
        kafka.create_topic("t", 1, 1).expect("topic");
        let bridge = Bridge::start(config(&kafka.bootstrap(), "t", "")).await;
        let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", bridge.addr);
        for i in 0..30 {
            let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .expect("connect");
            raw_connect(&mut ws).await;
            ws.send(Message::Text(r#"421["subscribe","*"]"#.into()))
                .await
                .expect("send");
            let ack = raw_next_text(&mut ws).await;
            assert!(
                ack.starts_with("431[") && ack.contains(r#""channel":"*""#),
                "connection {i}: the subscribe is acknowledged, got {ack}"
            );
        }
        bridge.stop().await;
    });
}

/// The request budget of `/ws` (a burst of 100, then 50 a second) holds for Socket.IO events
/// too: a socket that floods the bridge with events is disconnected by the server (`41`, the
/// namespace's disconnect), the close is counted, and the bridge goes on serving others.
#[test]
fn a_socket_flooding_events_is_disconnected_like_a_ws_client() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    on_multi_thread_runtime("socketio_flood", async {
        let kafka = MockKafka::new(1).expect("mock cluster");
        kafka.create_topic("t", 1, 1).expect("topic");
        let bridge = Bridge::start(config(&kafka.bootstrap(), "t", "")).await;
        let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", bridge.addr);
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connect");
        raw_connect(&mut ws).await;
        for _ in 0..400 {
            if ws
                .send(Message::Text(r#"42["hello",{}]"#.into()))
                .await
                .is_err()
            {
                break;
            }
        }
        // Read until the namespace disconnect or the end of the connection.
        let disconnected = tokio::time::timeout(WAIT, async {
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(t) = msg {
                    if t.as_str() == "41" {
                        return true;
                    }
                    if t.as_str() == "2" {
                        let _ = ws.send(Message::Text("3".into())).await;
                    }
                }
            }
            true
        })
        .await
        .expect("the flooding socket is disconnected in time");
        assert!(disconnected);
        assert_eq!(
            metric(
                &bridge,
                "eventstream_ws_closed_total",
                "reason=\"protocol\""
            ),
            1.0
        );
        // Others are still served.
        let (mut other, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connect");
        raw_connect(&mut other).await;
        other
            .send(Message::Text(r#"421["subscribe","*"]"#.into()))
            .await
            .expect("send");
        let ack = raw_next_text(&mut other).await;
        assert!(ack.starts_with("431["), "{ack}");
        bridge.stop().await;
    });
}

/// One connection limit for every transport (`limit: …` for the socket past it), and a
/// bridge shutdown as on `/ws`: queued records first, then `error` `going_away` with where to
/// resume, the connection released so the bridge stops within its grace period, and the
/// client left to its stock reconnection.
#[test]
fn the_connection_limit_and_a_shutdown_are_those_of_ws() {
    on_multi_thread_runtime("socketio_limit_shutdown", async {
        let kafka = MockKafka::new(1).expect("mock cluster");
        kafka.create_topic("t", 2, 1).expect("topic");
        let bootstrap = kafka.bootstrap();
        let bridge = Bridge::start(config(&bootstrap, "t", "maxConnections: 1")).await;
        let url = format!("http://{}", bridge.addr);
        let mut a = NodeClient::spawn(&json!({
            "url": url, "joins": [{"event": "subscribe", "arg": "*"}],
        }));
        a.until("the subscription's ack", |l| {
            l.iter().any(|l| l["t"] == "ack")
        })
        .await;
        let mut b = NodeClient::spawn(&json!({"url": url}));
        let lines = b
            .until("connect_error", |l| {
                l.iter().any(|l| l["t"] == "connect_error")
            })
            .await;
        let refused = lines
            .iter()
            .find(|l| l["t"] == "connect_error")
            .expect("error");
        assert!(
            refused["message"]
                .as_str()
                .unwrap_or_default()
                .starts_with("limit: "),
            "{refused}"
        );
        assert_eq!(
            metric(
                &bridge,
                "eventstream_ws_connections_rejected_total",
                "limit"
            ),
            1.0
        );
        drop(b);

        let produced = produce_all(&bootstrap, &records(10, 2, "before")).await;
        let events = a.until_events("event", produced.len()).await;
        let last_resume = events.last().expect("events")[1]["resume"].clone();
        bridge.stop().await;
        let lines = a
            .until("going_away", |l| {
                l.iter().any(|l| {
                    l["t"] == "event"
                        && l["event"] == "error"
                        && l["args"][0]["code"] == "going_away"
                })
            })
            .await;
        let going_away = lines
            .iter()
            .find(|l| l["t"] == "event" && l["event"] == "error")
            .expect("going_away");
        assert_eq!(
            going_away["args"][0]["positions"]["*"], last_resume,
            "where to resume: {going_away}"
        );
        a.until("the transport to close", |l| {
            l.iter()
                .any(|l| l["t"] == "disconnect" && l["reason"] != "io server disconnect")
        })
        .await;
    });
}

/// A Socket.IO client that reads nothing meets the slow-client policy of `/ws`: with
/// `disconnect`, once more records are queued for it than `queueMessages`, the session ends
/// (`eventstream_ws_closed_total{reason="slow_client"}`), its subscription leaves the hub and
/// its connection is released.
#[test]
fn a_socket_that_stops_reading_meets_the_slow_client_policy() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    on_multi_thread_runtime("socketio_slow_client", async {
        let kafka = MockKafka::new(1).expect("mock cluster");
        kafka.create_topic("t", 1, 1).expect("topic");
        let bootstrap = kafka.bootstrap();
        let bridge = Bridge::start(config(
            &bootstrap,
            "t",
            "queueMessages: 16, slowClientPolicy: disconnect",
        ))
        .await;
        let mut ws =
            relay_support::connect_stalling(bridge.addr, "/socket.io/?EIO=4&transport=websocket")
                .await;
        raw_connect(&mut ws).await;
        ws.send(Message::Text(r#"42["subscribe","*"]"#.into()))
            .await
            .expect("send");
        relay_support::eventually("the subscription", || {
            bridge.metric("eventstream_ws_subscriptions") == 1.0
        })
        .await;
        // From here on the client reads nothing.
        let pad = "x".repeat(1000);
        let batch: Vec<(Option<&str>, String)> = (0..200)
            .map(|i| (Some("k"), format!(r#"{{"i":{i},"pad":"{pad}"}}"#)))
            .collect();
        let deadline = std::time::Instant::now() + WAIT;
        while metric(&bridge, "eventstream_ws_closed_total", "slow_client") < 1.0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the stalled socket was never closed as a slow client"
            );
            produce(&bootstrap, "t", &batch).await.expect("produce");
        }
        relay_support::eventually("its connection released", || {
            metric(
                &bridge,
                "eventstream_ws_connections",
                "transport=\"socketio\"",
            ) == 0.0
        })
        .await;
        assert_eq!(bridge.metric("eventstream_ws_subscriptions"), 0.0);
        drop(ws);
        bridge.stop().await;
    });
}
