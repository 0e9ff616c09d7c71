//! A connection's token over its lifetime, against real sockets and librdkafka's mock cluster:
//! a WebSocket or SSE connection ends when its token expires (error `token_expired`, close code
//! 4001 / end of stream), an `auth` frame with a new token keeps it open past the old expiry,
//! a narrower token ends the subscriptions it no longer allows, and a bad refresh is refused
//! while the old expiry still applies.
//!
//! No timed assertions: tokens are made to end a few seconds from now, and each test waits for
//! the close with the suite's generous deadline. The bridge accepts a token until 30 s
//! ([`LEEWAY_SECS`]) after its `exp`, so a token with `exp = now - 30 + n` lives `n` seconds.

mod relay_support;

use std::time::Duration;

use eventstream_dataplane::auth::LEEWAY_SECS;
use eventstream_proto::prost::Message as _;
use eventstream_proto::v1::{ClientFrame, ServerFrame, server_frame::Frame};
use eventstream_testkit::{MockKafka, produce};
use futures::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use relay_support::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const SECRET: &str = TEST_JWT_SECRET;

struct Secured {
    _kafka: MockKafka,
    bootstrap: String,
    addr: std::net::SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    registry: prometheus::Registry,
}

impl Secured {
    /// A bridge on a one-partition topic `t` whose WebSocket and SSE need an HS256 token.
    async fn start() -> Secured {
        let kafka = MockKafka::new(1).expect("mock cluster");
        kafka.create_topic("t", 1, 1).expect("topic");
        let bootstrap = kafka.bootstrap();
        let (running, registry, shutdown) = start_secured(config(&bootstrap, "t", "")).await;
        Secured {
            _kafka: kafka,
            bootstrap,
            addr: running.local_addr,
            shutdown,
            task: running.task,
            registry,
        }
    }

    async fn ws(&self, token: &str, protocol: Option<&str>) -> Ws {
        connect(&format!("ws://{}/ws?token={token}", self.addr), protocol).await
    }

    /// A metric's value summed over the label sets that contain `label` (`""`: all).
    fn metric(&self, name: &str, label: &str) -> f64 {
        let text = eventstream_dataplane::telemetry::render(&self.registry);
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                    && l.contains(label)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(WAIT, self.task).await;
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The `exp` of a token the bridge accepts for about `secs` more seconds.
fn ending_in(secs: i64) -> i64 {
    now() - LEEWAY_SECS as i64 + secs
}

fn token_with(alg: Algorithm, secret: &str, claims: Value) -> String {
    encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token")
}

fn token(exp: i64, channels: Value) -> String {
    token_with(
        Algorithm::HS256,
        SECRET,
        json!({"exp": exp, "channels": channels}),
    )
}

/// Reads JSON frames until an `error` with `code`, returning the frames before it.
async fn until_error(ws: &mut Ws, code: &str) -> Vec<Value> {
    let mut before = Vec::new();
    loop {
        let f = next_json(ws).await;
        if f["type"] == "error" && f["code"] == code {
            return before;
        }
        before.push(f);
    }
}

/// Sleeps until the wall clock is past the end of a token with `exp`, plus a margin: what a
/// refreshed connection must outlive. (A wait, not an assertion on how long anything took.)
async fn outlive(exp: i64) {
    let end_ms = (exp + LEEWAY_SECS as i64) * 1000 + 1500;
    let left = end_ms - chrono::Utc::now().timestamp_millis();
    if left > 0 {
        tokio::time::sleep(Duration::from_millis(left as u64)).await;
    }
}

#[test]
fn an_expired_token_ends_websocket_and_sse_connections() {
    on_multi_thread_runtime(
        "an_expired_token_ends_websocket_and_sse_connections",
        async {
            let bridge = Secured::start().await;
            let short = token(ending_in(5), json!(["*"]));
            let mut json_ws = bridge.ws(&short, None).await;
            // Not waiting for `subscribed`: on a busy machine the expiry may come first.
            send(&mut json_ws, json!({"type": "subscribe", "channel": "a"})).await;
            let mut proto_ws = bridge.ws(&short, Some("eventstream.v1.proto")).await;
            proto_ws
                .send(Message::Binary(
                    ClientFrame::subscribe("a", []).encode_to_vec().into(),
                ))
                .await
                .expect("send");
            let http = reqwest::Client::new();
            let mut sse = http
                .get(format!(
                    "http://{}/sse?channel=a&token={short}",
                    bridge.addr
                ))
                .send()
                .await
                .expect("sse");
            assert_eq!(sse.status(), 200);

            // JSON: an `error` naming the expiry, then close code 4001.
            until_error(&mut json_ws, "token_expired").await;
            assert_eq!(close_code(&mut json_ws).await, Some(CloseCode::from(4001)));

            // Protobuf: the same error as a binary frame, the same close code.
            let deadline = tokio::time::Instant::now() + WAIT;
            let code = loop {
                let msg = tokio::time::timeout_at(deadline, proto_ws.next())
                    .await
                    .expect("the proto client hears of the expiry")
                    .expect("open")
                    .expect("frame");
                if let Message::Binary(b) = msg
                    && let Some(Frame::Error(e)) =
                        ServerFrame::decode(b.as_ref()).expect("decodes").frame
                {
                    break e.code;
                }
            };
            assert_eq!(code, "token_expired");
            assert_eq!(close_code(&mut proto_ws).await, Some(CloseCode::from(4001)));

            // SSE: an `error` event with the code, then the end of the stream.
            let mut body = String::new();
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let chunk = tokio::time::timeout_at(deadline, sse.chunk())
                    .await
                    .expect("the SSE stream ends within the wait")
                    .expect("body");
                match chunk {
                    Some(bytes) => body.push_str(std::str::from_utf8(&bytes).expect("utf8")),
                    None => break,
                }
            }
            let last = body
                .split("\n\n")
                .collect::<Vec<_>>()
                .into_iter()
                .rfind(|block| !block.trim().is_empty() && !block.starts_with(':'))
                .expect("an event before the end");
            assert!(last.contains("event: error"), "{body}");
            assert!(last.contains("\"code\":\"token_expired\""), "{body}");

            // Nothing stays subscribed for the expired connections.
            eventually("the expired subscriptions are gone", || {
                bridge.metric("eventstream_ws_subscriptions", "") == 0.0
            })
            .await;
            assert_eq!(
                bridge.metric("eventstream_ws_closed_total", "reason=\"token_expired\""),
                3.0
            );
            bridge.stop().await;
        },
    );
}

#[test]
fn a_refreshed_token_keeps_the_connection_past_the_old_expiry() {
    on_multi_thread_runtime(
        "a_refreshed_token_keeps_the_connection_past_the_old_expiry",
        async {
            let bridge = Secured::start().await;
            // Ends in 12 s: ample time to refresh first, even on a busy machine.
            let old_exp = ending_in(12);
            let new_exp = now() + 3600;
            let mut ws = bridge.ws(&token(old_exp, json!(["a"])), None).await;
            subscribe(&mut ws, "a").await;
            send(
                &mut ws,
                json!({"type": "auth", "token": token(new_exp, json!(["a"]))}),
            )
            .await;
            let reply = next_json(&mut ws).await;
            assert_eq!(reply, json!({"type": "authenticated", "exp": new_exp}));

            let mut proto = bridge
                .ws(&token(old_exp, json!(["a"])), Some("eventstream.v1.proto"))
                .await;
            proto
                .send(Message::Binary(
                    ClientFrame::auth(token(new_exp, json!(["a"])))
                        .encode_to_vec()
                        .into(),
                ))
                .await
                .expect("send");
            let msg = tokio::time::timeout(WAIT, proto.next())
                .await
                .expect("a reply")
                .expect("open")
                .expect("frame");
            let Message::Binary(b) = msg else {
                panic!("expected a binary frame, got {msg:?}")
            };
            let frame = ServerFrame::decode(b.as_ref()).expect("decodes").frame;
            assert!(
                matches!(&frame, Some(Frame::Authenticated(a)) if a.exp == new_exp),
                "{frame:?}"
            );

            outlive(old_exp).await;
            // Both connections are still open and the JSON one still receives its channel.
            produce(&bridge.bootstrap, "t", &[(Some("a"), "{\"after\":true}")])
                .await
                .expect("produced");
            let got = events(&mut ws, 1).await;
            assert_eq!(got[0].2, json!({"after": true}));
            proto
                .send(Message::Binary(
                    ClientFrame::ping(Some("alive".into()))
                        .encode_to_vec()
                        .into(),
                ))
                .await
                .expect("send");
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let msg = tokio::time::timeout_at(deadline, proto.next())
                    .await
                    .expect("the pong arrives")
                    .expect("open")
                    .expect("frame");
                match msg {
                    Message::Binary(b) => {
                        let frame = ServerFrame::decode(b.as_ref()).expect("decodes").frame;
                        if matches!(&frame, Some(Frame::Pong(p)) if p.id.as_deref() == Some("alive"))
                        {
                            break;
                        }
                        assert!(
                            !matches!(frame, Some(Frame::Error(_))),
                            "unexpected {frame:?}"
                        );
                    }
                    Message::Close(c) => panic!("closed despite the refresh: {c:?}"),
                    _ => {}
                }
            }
            assert_eq!(
                bridge.metric("eventstream_ws_closed_total", "reason=\"token_expired\""),
                0.0
            );
            bridge.stop().await;
        },
    );
}

#[test]
fn a_narrower_token_ends_the_subscriptions_it_no_longer_allows() {
    on_multi_thread_runtime(
        "a_narrower_token_ends_the_subscriptions_it_no_longer_allows",
        async {
            let bridge = Secured::start().await;
            let exp = now() + 3600;
            let mut ws = bridge.ws(&token(exp, json!(["a", "b"])), None).await;
            subscribe(&mut ws, "a").await;
            subscribe(&mut ws, "b").await;
            send(
                &mut ws,
                json!({"type": "auth", "token": token(exp + 60, json!(["a"]))}),
            )
            .await;
            let ended = next_json(&mut ws).await;
            assert_eq!(
                (
                    ended["type"].as_str(),
                    ended["code"].as_str(),
                    ended["channel"].as_str()
                ),
                (Some("error"), Some("forbidden"), Some("b")),
                "{ended}"
            );
            assert_eq!(
                next_json(&mut ws).await,
                json!({"type": "authenticated", "exp": exp + 60})
            );
            assert_eq!(bridge.metric("eventstream_ws_subscriptions", ""), 1.0);

            // Only `a` arrives; `b` ended and cannot be subscribed again.
            produce(
                &bridge.bootstrap,
                "t",
                &[
                    (Some("b"), "{\"i\":0}"),
                    (Some("a"), "{\"i\":1}"),
                    (Some("b"), "{\"i\":2}"),
                    (Some("a"), "{\"i\":3}"),
                ],
            )
            .await
            .expect("produced");
            let got = events(&mut ws, 2).await;
            let data: Vec<Value> = got.into_iter().map(|(_, _, d)| d).collect();
            assert_eq!(data, [json!({"i": 1}), json!({"i": 3})]);
            send(&mut ws, json!({"type": "subscribe", "channel": "b"})).await;
            let reply = next_json(&mut ws).await;
            assert_eq!(
                (reply["code"].as_str(), reply["channel"].as_str()),
                (Some("forbidden"), Some("b")),
                "{reply}"
            );
            // Everything produced for `b` came before the ping: nothing of it follows.
            send(&mut ws, json!({"type": "ping", "id": "end"})).await;
            assert_eq!(
                next_json(&mut ws).await,
                json!({"type": "pong", "id": "end"})
            );
            bridge.stop().await;
        },
    );
}

#[test]
fn an_invalid_refresh_is_refused_and_the_old_expiry_still_applies() {
    on_multi_thread_runtime(
        "an_invalid_refresh_is_refused_and_the_old_expiry_still_applies",
        async {
            let bridge = Secured::start().await;
            let later = now() + 3600;
            let mut ws = bridge.ws(&token(ending_in(10), json!(["*"])), None).await;
            subscribe(&mut ws, "a").await;
            let refused = [
                (
                    "another key",
                    token_with(
                        Algorithm::HS256,
                        "another-secret-of-enough-length-012345",
                        json!({"exp": later, "channels": ["*"]}),
                    ),
                ),
                ("expired", token(now() - 3600, json!(["*"]))),
                (
                    "another algorithm",
                    token_with(
                        Algorithm::HS384,
                        SECRET,
                        json!({"exp": later, "channels": ["*"]}),
                    ),
                ),
                (
                    "no exp",
                    token_with(Algorithm::HS256, SECRET, json!({"channels": ["*"]})),
                ),
                ("garbage", "not-a-jwt".to_string()),
            ];
            for (what, bad) in &refused {
                send(&mut ws, json!({"type": "auth", "token": bad})).await;
                let reply = next_json(&mut ws).await;
                assert_eq!(
                    (reply["type"].as_str(), reply["code"].as_str()),
                    (Some("error"), Some("unauthorized")),
                    "{what}: {reply}"
                );
            }
            // The refused tokens changed nothing: the connection still ends at the old expiry.
            let before = until_error(&mut ws, "token_expired").await;
            assert!(
                before.iter().all(|f| f["type"] != "authenticated"),
                "{before:?}"
            );
            assert_eq!(close_code(&mut ws).await, Some(CloseCode::from(4001)));
            bridge.stop().await;
        },
    );
}

#[test]
fn auth_on_a_stream_without_tokens_says_so() {
    on_multi_thread_runtime("auth_on_a_stream_without_tokens_says_so", async {
        let kafka = MockKafka::new(1).expect("mock cluster");
        kafka.create_topic("t", 1, 1).expect("topic");
        let bridge = Bridge::start(config(&kafka.bootstrap(), "t", "")).await;
        let mut ws = connect(&bridge.url("/ws"), None).await;
        send(&mut ws, json!({"type": "auth", "token": "a.b.c"})).await;
        let reply = next_json(&mut ws).await;
        assert_eq!(reply["code"], "auth_disabled", "{reply}");
        // A seed-style `auth` without a token is a bad frame, and the connection goes on.
        send(&mut ws, json!({"type": "auth", "userId": "test"})).await;
        assert_eq!(next_json(&mut ws).await["code"], "bad_frame");
        subscribe(&mut ws, "a").await;
        bridge.stop().await;
    });
}
