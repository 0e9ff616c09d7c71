//! The fan-out against real sockets and librdkafka's mock cluster: routing, order, two bridges,
//! lossless resume, slow clients, every bad-input case, JWT, SSE.

mod relay_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use eventstream_testkit::{MockKafka, produce};
use futures::{SinkExt, StreamExt};
use relay_support::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const CHANNELS: [&str; 3] = ["a", "b", "c"];

fn kafka(partitions: i32) -> (MockKafka, String) {
    let kafka = MockKafka::new(1).expect("mock cluster");
    kafka.create_topic("t", partitions, 1).expect("topic");
    let bootstrap = kafka.bootstrap();
    (kafka, bootstrap)
}

/// Produces `n` records keyed by channel, payload `{"i": start+k, "ch": …}`.
async fn produce_keyed(bootstrap: &str, start: usize, n: usize) -> Vec<(i32, i64)> {
    let records: Vec<(Option<String>, String)> = (start..start + n)
        .map(|i| {
            let ch = CHANNELS[i % 3];
            (Some(ch.to_string()), json!({"i": i, "ch": ch}).to_string())
        })
        .collect();
    produce(bootstrap, "t", &records).await.expect("produced")
}

/// Ping/pong barrier: once the pong arrives, everything queued before it has arrived too.
async fn barrier(ws: &mut Ws) -> Vec<Value> {
    send(ws, json!({"type": "ping", "id": "barrier"})).await;
    let mut extra = Vec::new();
    loop {
        let f = next_json(ws).await;
        if f["type"] == "pong" && f["id"] == "barrier" {
            return extra;
        }
        extra.push(f);
    }
}

#[test]
fn clients_get_exactly_their_channels_in_partition_order() {
    on_multi_thread_runtime(
        "clients_get_exactly_their_channels_in_partition_order",
        async {
            let (_kafka, bootstrap) = kafka(3);
            let bridge = Bridge::start(config(&bootstrap, "t", "")).await;
            let mut clients = Vec::new();
            for ch in CHANNELS.iter().chain(CHANNELS.iter()) {
                let mut ws = connect(&bridge.url("/ws"), None).await;
                subscribe(&mut ws, ch).await;
                clients.push((ch.to_string(), ws));
            }
            let mut star = connect(&bridge.url("/ws"), Some("eventstream.v1.json")).await;
            subscribe(&mut star, "*").await;

            produce_keyed(&bootstrap, 0, 300).await;

            for (ch, ws) in clients.iter_mut() {
                let got = events(ws, 100).await;
                assert_partition_order(&got);
                let is: BTreeSet<i64> = got
                    .iter()
                    .map(|(_, _, d)| d["i"].as_i64().expect("i"))
                    .collect();
                let want: BTreeSet<i64> = (0..300)
                    .filter(|i| CHANNELS[(*i as usize) % 3] == ch)
                    .collect();
                assert_eq!(is, want, "channel {ch}");
                assert!(got.iter().all(|(_, _, d)| d["ch"] == ch.as_str()));
            }
            let all = events(&mut star, 300).await;
            assert_partition_order(&all);
            assert_eq!(
                all.iter()
                    .map(|(_, _, d)| d["i"].as_i64())
                    .collect::<BTreeSet<_>>()
                    .len(),
                300
            );
            eventually("all consumed", || {
                bridge.metric("eventstream_bridge_records_consumed_total") >= 300.0
            })
            .await;
            for (_, ws) in clients.iter_mut() {
                assert!(barrier(ws).await.is_empty(), "no extra events");
            }
            assert!(barrier(&mut star).await.is_empty());
            assert_eq!(bridge.metric("eventstream_ws_deliveries_total"), 900.0);
            bridge.stop().await;
        },
    );
}

#[test]
fn two_bridges_each_deliver_every_record() {
    on_multi_thread_runtime("two_bridges_each_deliver_every_record", async {
        let (_kafka, bootstrap) = kafka(3);
        let one = Bridge::start(config(&bootstrap, "t", "")).await;
        let two = Bridge::start(config(&bootstrap, "t", "")).await;
        let mut a = connect(&one.url("/ws"), None).await;
        let mut b = connect(&two.url("/ws"), None).await;
        subscribe(&mut a, "*").await;
        subscribe(&mut b, "*").await;
        produce_keyed(&bootstrap, 0, 150).await;
        for ws in [&mut a, &mut b] {
            let got = events(ws, 150).await;
            let ids: BTreeSet<i64> = got
                .iter()
                .map(|(_, _, d)| d["i"].as_i64().expect("i"))
                .collect();
            assert_eq!(ids, (0..150).collect());
        }
        one.stop().await;
        two.stop().await;
    });
}

#[test]
fn resume_replays_the_gap_with_no_loss_and_no_duplicate() {
    on_multi_thread_runtime(
        "resume_replays_the_gap_with_no_loss_and_no_duplicate",
        async {
            let (_kafka, bootstrap) = kafka(3);
            let bridge = Bridge::start(config(&bootstrap, "t", "replayMaxMessages: 10000")).await;
            let (live_from, all_first) = {
                let mut ws = connect(&bridge.url("/ws"), None).await;
                let subscribed = subscribe(&mut ws, "*").await;
                produce_keyed(&bootstrap, 0, 200).await;
                let seen = events(&mut ws, 80).await;
                // Drop the connection without a close handshake, mid-stream.
                drop(ws);
                (subscribed["positions"].clone(), seen)
            };
            // As docs/protocol.md says: a position for every partition, `subscribed.positions`
            // minus one, then the events seen. The first 80 events may well all come from one
            // partition; a `since` without the others would (rightly) resume those live and the
            // records they got meanwhile would never come.
            let live_from: BTreeMap<String, i64> =
                serde_json::from_value(live_from).expect("positions");
            let mut since: BTreeMap<String, i64> =
                live_from.into_iter().map(|(p, o)| (p, o - 1)).collect();
            assert_eq!(since.len(), 3, "a position for every partition");
            for (p, o, _) in &all_first {
                let e = since.entry(p.to_string()).or_insert(*o);
                *e = (*e).max(*o);
            }
            produce_keyed(&bootstrap, 200, 200).await;
            let mut ws = connect(&bridge.url("/ws"), None).await;
            send(
                &mut ws,
                json!({"type": "subscribe", "channel": "*", "since": since}),
            )
            .await;
            // More records while the replay runs.
            let producer = {
                let bootstrap = bootstrap.clone();
                tokio::spawn(async move { produce_keyed(&bootstrap, 400, 200).await })
            };
            let mut resumed = Vec::new();
            let mut subscribed = 0;
            while resumed.len() < 600 - 80 {
                let f = next_json(&mut ws).await;
                match f["type"].as_str() {
                    Some("event") => resumed.push((
                        f["partition"].as_i64().expect("p"),
                        f["offset"].as_i64().expect("o"),
                        f["data"]["i"].as_i64().expect("i"),
                    )),
                    Some("subscribed") => subscribed += 1,
                    _ => panic!("unexpected frame {f}"),
                }
            }
            producer.await.expect("producer task");
            assert_eq!(subscribed, 1, "exactly one subscribed frame");
            assert!(
                barrier(&mut ws).await.is_empty(),
                "nothing beyond the 600 records"
            );
            let first: BTreeSet<i64> = all_first
                .iter()
                .map(|(_, _, d)| d["i"].as_i64().expect("i"))
                .collect();
            let again: Vec<i64> = resumed.iter().map(|(_, _, i)| *i).collect();
            let again_set: BTreeSet<i64> = again.iter().copied().collect();
            assert_eq!(
                again.len(),
                again_set.len(),
                "no duplicate in the resumed stream"
            );
            assert!(
                first.is_disjoint(&again_set),
                "nothing seen before is sent again"
            );
            let union: BTreeSet<i64> = first.union(&again_set).copied().collect();
            assert_eq!(union, (0..600).collect(), "received ∪ replayed = produced");
            let ordered: Vec<(i64, i64, Value)> = resumed
                .iter()
                .map(|(p, o, _)| (*p, *o, Value::Null))
                .collect();
            assert_partition_order(&ordered);
            assert!(bridge.metric("eventstream_ws_replayed_records_total") > 0.0);
            bridge.stop().await;
        },
    );
}

#[test]
fn replay_budget_sends_a_gap_then_continues_live() {
    on_multi_thread_runtime("replay_budget_sends_a_gap_then_continues_live", async {
        let (_kafka, bootstrap) = kafka(1);
        let bridge = Bridge::start(config(&bootstrap, "t", "replayMaxMessages: 10")).await;
        let mut ws = connect(&bridge.url("/ws"), None).await;
        subscribe(&mut ws, "*").await;
        produce_keyed(&bootstrap, 0, 50).await;
        let first = events(&mut ws, 50).await;
        drop(ws);
        let (_, seen, _) = first[4];
        let mut ws = connect(&bridge.url("/ws"), None).await;
        send(
            &mut ws,
            json!({"type": "subscribe", "channel": "*", "since": {"0": seen}}),
        )
        .await;
        let gap = next_json(&mut ws).await;
        assert_eq!(gap["type"], "gap", "{gap}");
        assert_eq!(gap["reason"], "replay_limit");
        assert_eq!(gap["from"]["0"], seen + 1);
        assert_eq!(gap["to"]["0"], 40);
        let replayed = events(&mut ws, 10).await;
        assert_eq!(
            replayed.iter().map(|(_, o, _)| *o).collect::<Vec<_>>(),
            (40..50).collect::<Vec<_>>()
        );
        assert_eq!(next_json(&mut ws).await["type"], "subscribed");
        produce_keyed(&bootstrap, 50, 5).await;
        let live = events(&mut ws, 5).await;
        assert_eq!(
            live.iter().map(|(_, o, _)| *o).collect::<Vec<_>>(),
            (50..55).collect::<Vec<_>>()
        );
        bridge.stop().await;
    });
}

#[test]
fn a_stalled_client_gets_a_gap_and_does_not_delay_a_fast_one() {
    on_multi_thread_runtime(
        "a_stalled_client_gets_a_gap_and_does_not_delay_a_fast_one",
        async {
            let (_kafka, bootstrap) = kafka(1);
            let bridge = Bridge::start(config(
                &bootstrap,
                "t",
                "queueMessages: 1024, slowClientPolicy: dropOldest",
            ))
            .await;
            let mut slow = connect_stalling(bridge.addr, "/ws").await;
            send(&mut slow, json!({"type": "subscribe", "channel": "*"})).await;
            let mut fast = connect(&bridge.url("/ws"), None).await;
            subscribe(&mut fast, "*").await;
            eventually("both subscribed", || {
                bridge.metric("eventstream_ws_subscriptions") == 2.0
            })
            .await;
            let total = 20_000usize;
            let batch = 500;
            let pad = "x".repeat(1000);
            // Paced so that a client that reads keeps up; the stalled one reads nothing meanwhile and
            // overflows (20 MB is more than the loopback socket buffers hold).
            for start in (0..total).step_by(batch) {
                let records: Vec<(Option<String>, String)> = (start..start + batch)
                    .map(|i| (None, json!({"i": i, "pad": pad}).to_string()))
                    .collect();
                produce(&bootstrap, "t", &records).await.expect("produced");
                let got = events(&mut fast, batch).await;
                let want: Vec<i64> = (start as i64..(start + batch) as i64).collect();
                let offsets: Vec<i64> = got.iter().map(|(_, o, _)| *o).collect();
                assert_eq!(offsets, want, "the fast client gets every record, no gap");
            }
            eventually("drops counted", || {
                bridge.metric("eventstream_ws_dropped_total") > 0.0
            })
            .await;
            // The slow client now reads: every offset is either delivered or named by a gap.
            let mut covered = BTreeSet::new();
            let mut gaps = 0;
            while covered.len() < total {
                let f = next_json(&mut slow).await;
                match f["type"].as_str() {
                    Some("event") => {
                        assert!(
                            covered.insert(f["offset"].as_i64().expect("o")),
                            "duplicate {f}"
                        );
                    }
                    Some("subscribed") => {}
                    Some("gap") => {
                        gaps += 1;
                        assert_eq!(f["reason"], "slow_client");
                        let (from, to) = (
                            f["from"]["0"].as_i64().expect("from"),
                            f["to"]["0"].as_i64().expect("to"),
                        );
                        for o in from..to {
                            assert!(covered.insert(o), "gap overlaps delivered offset {o}");
                        }
                    }
                    _ => panic!("unexpected {f}"),
                }
            }
            assert!(gaps >= 1);
            assert_eq!(covered, (0..total as i64).collect());
            bridge.stop().await;
        },
    );
}

#[test]
fn disconnect_policy_closes_a_stalled_client_with_4008() {
    on_multi_thread_runtime(
        "disconnect_policy_closes_a_stalled_client_with_4008",
        async {
            // 20 MB must outgrow the socket buffers; spread over 8 partitions because the mock
            // cluster keeps only ~5 MiB per partition and would trim what a busy bridge has not read.
            let (_kafka, bootstrap) = kafka(8);
            let bridge = Bridge::start(config(
                &bootstrap,
                "t",
                "queueMessages: 16, slowClientPolicy: disconnect",
            ))
            .await;
            let mut slow = connect_stalling(bridge.addr, "/ws").await;
            send(&mut slow, json!({"type": "subscribe", "channel": "*"})).await;
            eventually("subscribed", || {
                bridge.metric("eventstream_ws_subscriptions") == 1.0
            })
            .await;
            let pad = "x".repeat(1000);
            let records: Vec<(Option<String>, String)> = (0..20_000)
                .map(|i| (None, json!({"i": i, "pad": pad}).to_string()))
                .collect();
            produce(&bootstrap, "t", &records).await.expect("produced");
            eventually("slow client closed", || {
                bridge.metric("eventstream_ws_closed_total") >= 1.0
            })
            .await;
            assert_eq!(close_code(&mut slow).await, Some(CloseCode::Library(4008)));
            bridge.stop().await;
        },
    );
}

#[test]
fn bad_input_gets_documented_errors_and_neighbours_keep_receiving() {
    on_multi_thread_runtime(
        "bad_input_gets_documented_errors_and_neighbours_keep_receiving",
        async {
            let (_kafka, bootstrap) = kafka(2);
            let bridge = Bridge::start(config(
                &bootstrap,
                "t",
                "maxSubscriptionsPerConnection: 3, maxFrameBytes: 1024",
            ))
            .await;
            let mut neighbour = connect(&bridge.url("/ws"), None).await;
            subscribe(&mut neighbour, "*").await;
            let mut ws = connect(&bridge.url("/ws"), None).await;
            let cases: Vec<(Value, &str)> = vec![
                (json!("hello"), "bad_frame"),
                (json!({"type": "nope"}), "unknown_type"),
                (json!({"type": "subscribe"}), "bad_frame"),
                (json!({"type": "subscribe", "channel": 7}), "bad_frame"),
                (
                    json!({"type": "subscribe", "channel": ""}),
                    "invalid_channel",
                ),
                (
                    json!({"type": "subscribe", "channel": "a", "since": {"0": -2}}),
                    "invalid_since",
                ),
                (
                    json!({"type": "subscribe", "channel": "a", "since": {"9": 1}}),
                    "invalid_since",
                ),
                (
                    json!({"type": "subscribe", "channel": "a", "since": {"0": 1_000_000}}),
                    "invalid_since",
                ),
                (
                    json!({"type": "unsubscribe", "channel": "zz"}),
                    "not_subscribed",
                ),
            ];
            for (frame, code) in cases {
                let text = match &frame {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                ws.send(Message::Text(text.into())).await.expect("send");
                let reply = next_json(&mut ws).await;
                assert_eq!(reply["type"], "error", "{frame} → {reply}");
                assert_eq!(reply["code"], code, "{frame} → {reply}");
            }
            // Subscription limits on the same, still open, connection.
            for ch in ["a", "b", "c"] {
                subscribe(&mut ws, ch).await;
            }
            send(&mut ws, json!({"type": "subscribe", "channel": "a"})).await;
            assert_eq!(next_json(&mut ws).await["code"], "already_subscribed");
            send(&mut ws, json!({"type": "subscribe", "channel": "d"})).await;
            assert_eq!(next_json(&mut ws).await["code"], "too_many_subscriptions");

            // Each of these closes its own connection with a documented code.
            let mut binary = connect(&bridge.url("/ws"), None).await;
            binary
                .send(Message::Binary(vec![1, 2, 3].into()))
                .await
                .expect("send");
            assert_eq!(close_code(&mut binary).await, Some(CloseCode::Unsupported));
            let mut big = connect(&bridge.url("/ws"), None).await;
            let _ = big.send(Message::Text("x".repeat(4096).into())).await;
            assert_eq!(close_code(&mut big).await, Some(CloseCode::Size));
            let mut flood = connect(&bridge.url("/ws"), None).await;
            for _ in 0..150 {
                if flood
                    .send(Message::Text(json!({"type": "ping"}).to_string().into()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            assert_eq!(close_code(&mut flood).await, Some(CloseCode::Policy));

            // The neighbour and the erring connection both still work.
            produce_keyed(&bootstrap, 0, 30).await;
            assert_eq!(events(&mut neighbour, 30).await.len(), 30);
            let mine = events(&mut ws, 30).await;
            assert_eq!(mine.len(), 30, "a, b, c cover every record");
            assert!(bridge.metric("eventstream_ws_protocol_errors_total") >= 11.0);
            bridge.stop().await;
        },
    );
}

#[test]
fn protobuf_clients_receive_binary_frames() {
    on_multi_thread_runtime("protobuf_clients_receive_binary_frames", async {
        use eventstream_proto::prost::Message as _;
        use eventstream_proto::v1::{ClientFrame, ServerFrame, server_frame::Frame};
        let (_kafka, bootstrap) = kafka(1);
        let bridge = Bridge::start(config(&bootstrap, "t", "")).await;
        let mut ws = connect(&bridge.url("/ws"), Some("eventstream.v1.proto")).await;
        ws.send(Message::Binary(
            ClientFrame::subscribe("a", []).encode_to_vec().into(),
        ))
        .await
        .expect("send");
        let next = |msg: Message| match msg {
            Message::Binary(b) => ServerFrame::decode(b.as_ref()).expect("decodes").frame,
            other => panic!("expected binary, got {other:?}"),
        };
        let first = ws.next().await.expect("open").expect("frame");
        assert!(matches!(next(first), Some(Frame::Subscribed(_))));
        produce(
            &bootstrap,
            "t",
            &[
                (Some("a"), "{\"x\":1}"),
                (Some("b"), "skip"),
                (Some("a"), "\u{1}raw"),
            ],
        )
        .await
        .expect("produced");
        let mut payloads = Vec::new();
        while payloads.len() < 2 {
            let msg = ws.next().await.expect("open").expect("frame");
            if let Message::Binary(_) = msg
                && let Some(Frame::Event(e)) = next(msg)
            {
                payloads.push(e.envelope.expect("envelope").payload);
            }
        }
        assert_eq!(payloads, vec![b"{\"x\":1}".to_vec(), b"\x01raw".to_vec()]);
        // A text frame on the binary subprotocol is refused with 1003.
        ws.send(Message::Text("{}".into())).await.expect("send");
        assert_eq!(close_code(&mut ws).await, Some(CloseCode::Unsupported));
        bridge.stop().await;
    });
}

#[test]
fn shutdown_closes_clients_with_1001_and_their_positions() {
    on_multi_thread_runtime(
        "shutdown_closes_clients_with_1001_and_their_positions",
        async {
            let (_kafka, bootstrap) = kafka(2);
            let bridge = Bridge::start(config(&bootstrap, "t", "")).await;
            let mut ws = connect(&bridge.url("/ws"), None).await;
            subscribe(&mut ws, "*").await;
            produce_keyed(&bootstrap, 0, 20).await;
            let got = events(&mut ws, 20).await;
            let shutdown = bridge.shutdown.clone();
            let task = bridge.task;
            shutdown.cancel();
            let bye = next_json(&mut ws).await;
            assert_eq!(bye["code"], "going_away", "{bye}");
            let mut last: BTreeMap<String, i64> = BTreeMap::new();
            for (p, o, _) in &got {
                let e = last.entry(p.to_string()).or_insert(*o);
                *e = (*e).max(*o);
            }
            let positions: BTreeMap<String, i64> =
                serde_json::from_value(bye["positions"]["*"].clone()).expect("positions");
            assert_eq!(positions, last);
            assert_eq!(close_code(&mut ws).await, Some(CloseCode::Away));
            let done = tokio::time::timeout(Duration::from_secs(10), task).await;
            assert!(matches!(done, Ok(Ok(Ok(())))), "{done:?}");
        },
    );
}

#[test]
fn jwt_allows_denies_and_expires() {
    on_multi_thread_runtime("jwt_allows_denies_and_expires", async {
        use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
        let (_kafka, bootstrap) = kafka(1);
        let mut cfg = config(&bootstrap, "t", "");
        cfg.auth = Some(eventstream_crds::config::AuthConfig {
            algorithm: eventstream_crds::v1alpha1::JwtAlgorithm::HS256,
            issuer: None,
            audience: None,
            channels_claim: "channels".into(),
            publish_claim: "publish".into(),
            websocket: true,
            ingest: false,
        });
        let secret = "test-secret-of-enough-length-0123456789";
        let shutdown = tokio_util::sync::CancellationToken::new();
        let running = eventstream_dataplane::bridge::start_with_key(
            cfg,
            prometheus::Registry::new(),
            shutdown.clone(),
            Some(secret.into()),
        )
        .await
        .expect("starts");
        let url = format!("ws://{}/ws", running.local_addr);
        let now = chrono::Utc::now().timestamp();
        let token = |alg: Algorithm, exp: i64, channels: Value| {
            encode(
                &Header::new(alg),
                &json!({"exp": exp, "channels": channels}),
                &EncodingKey::from_secret(secret.as_bytes()),
            )
            .expect("token")
        };
        let status = |url: String| async move {
            match tokio_tungstenite::connect_async(url).await {
                Ok(_) => 101,
                Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
                Err(e) => panic!("unexpected {e}"),
            }
        };
        assert_eq!(status(url.clone()).await, 401, "no token");
        assert_eq!(
            status(format!("{url}?token=garbage")).await,
            401,
            "malformed"
        );
        assert_eq!(
            status(format!(
                "{url}?token={}",
                token(Algorithm::HS256, now - 3600, json!(["*"]))
            ))
            .await,
            401,
            "expired"
        );
        assert_eq!(
            status(format!(
                "{url}?token={}",
                token(Algorithm::HS384, now + 3600, json!(["*"]))
            ))
            .await,
            401,
            "wrong algorithm"
        );
        let good = token(Algorithm::HS256, now + 3600, json!(["user-*"]));
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}?token={good}"))
            .await
            .expect("allowed");
        subscribe(&mut ws, "user-7").await;
        send(&mut ws, json!({"type": "subscribe", "channel": "admin"})).await;
        let reply = next_json(&mut ws).await;
        assert_eq!(
            (reply["code"].as_str(), reply["channel"].as_str()),
            (Some("forbidden"), Some("admin"))
        );
        shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), running.task).await;
    });
}

#[test]
fn sse_streams_events_and_resumes_from_last_event_id() {
    on_multi_thread_runtime("sse_streams_events_and_resumes_from_last_event_id", async {
        let (_kafka, bootstrap) = kafka(2);
        let bridge = Bridge::start(config(&bootstrap, "t", "")).await;
        let http = reqwest::Client::new();
        let base = format!("http://{}/sse", bridge.addr);

        async fn read_events(resp: &mut reqwest::Response, n: usize) -> Vec<(String, Value)> {
            let mut buf = String::new();
            let mut out = Vec::new();
            while out.len() < n {
                let chunk = tokio::time::timeout(WAIT, resp.chunk())
                    .await
                    .expect("chunk in time")
                    .expect("body")
                    .expect("open");
                buf.push_str(std::str::from_utf8(&chunk).expect("utf8"));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    let (mut id, mut event, mut data) =
                        (String::new(), String::from("message"), String::new());
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("id: ") {
                            id = v.into();
                        }
                        if let Some(v) = line.strip_prefix("event: ") {
                            event = v.into();
                        }
                        if let Some(v) = line.strip_prefix("data: ") {
                            data.push_str(v);
                        }
                    }
                    if event == "message" && !data.is_empty() {
                        out.push((id, serde_json::from_str(&data).expect("json data")));
                    }
                }
            }
            out
        }

        let mut resp = http
            .get(format!("{base}?channel=a"))
            .send()
            .await
            .expect("sse");
        assert_eq!(resp.status(), 200);
        // The handler registers the subscription before it answers, so the headers mean "live".
        assert_eq!(bridge.metric("eventstream_ws_subscriptions"), 1.0);
        produce_keyed(&bootstrap, 0, 30).await;
        let first = read_events(&mut resp, 4).await;
        drop(resp);
        let last_id = first.last().expect("events").0.clone();
        let seen: BTreeSet<i64> = first
            .iter()
            .map(|(_, v)| v["data"]["i"].as_i64().expect("i"))
            .collect();
        let mut resp = http
            .get(format!("{base}?channel=a"))
            .header("Last-Event-ID", last_id)
            .send()
            .await
            .expect("sse");
        let rest = read_events(&mut resp, 10 - first.len()).await;
        let again: BTreeSet<i64> = rest
            .iter()
            .map(|(_, v)| v["data"]["i"].as_i64().expect("i"))
            .collect();
        assert!(seen.is_disjoint(&again));
        let all: BTreeSet<i64> = seen.union(&again).copied().collect();
        assert_eq!(all, (0..30).filter(|i| i % 3 == 0).collect());
        // Garbage resume positions are refused before streaming.
        let bad = http
            .get(format!("{base}?channel=a&since=zz"))
            .send()
            .await
            .expect("answer");
        assert_eq!(bad.status(), 400);
        let missing = http.get(base.clone()).send().await.expect("answer");
        assert_eq!(missing.status(), 400);
        bridge.stop().await;
    });
}

#[test]
fn connection_limit_answers_503_before_upgrade_and_health_reports_clients() {
    on_multi_thread_runtime(
        "connection_limit_answers_503_before_upgrade_and_health_reports_clients",
        async {
            let (_kafka, bootstrap) = kafka(2);
            let bridge = Bridge::start(config(&bootstrap, "t", "maxConnections: 2")).await;
            let mut a = connect(&bridge.url("/ws"), None).await;
            let _b = connect(&bridge.url("/ws"), None).await;
            match tokio_tungstenite::connect_async(bridge.url("/ws")).await {
                Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                    assert_eq!(resp.status().as_u16(), 503);
                    assert!(resp.headers().contains_key("retry-after"));
                }
                other => panic!("third connection must be refused, got {other:?}"),
            }
            subscribe(&mut a, "a").await;
            let http = reqwest::Client::new();
            let health: Value = http
                .get(format!("http://{}/health", bridge.addr))
                .send()
                .await
                .expect("health")
                .json()
                .await
                .expect("json");
            assert_eq!(health["status"], "healthy", "{health}");
            assert_eq!(health["connected_clients"], 2);
            assert_eq!(health["subscriptions"], 1);
            assert_eq!(health["kafka"]["partitions"], 2);
            let ready = http
                .get(format!("http://{}/readyz", bridge.addr))
                .send()
                .await
                .expect("readyz");
            assert_eq!(ready.status(), 200);
            // A slot is released when a client leaves.
            drop(a);
            eventually("slot released", || {
                bridge.metric("eventstream_ws_connections") <= 1.0
            })
            .await;
            let again = tokio_tungstenite::connect_async(bridge.url("/ws")).await;
            assert!(again.is_ok(), "a freed slot admits a new client");
            assert!(bridge.metric("eventstream_ws_connections_rejected_total") >= 1.0);
            bridge.stop().await;
        },
    );
}

#[test]
fn sse_sends_a_snapshot_as_a_message_whatever_its_payload_says() {
    on_multi_thread_runtime(
        "sse_sends_a_snapshot_as_a_message_whatever_its_payload_says",
        async {
            let (_kafka, bootstrap) = kafka(1);
            let bridge = Bridge::start(config(&bootstrap, "t", "snapshot: true")).await;
            let mut ws = connect(&format!("ws://{}/ws", bridge.addr), None).await;
            subscribe(&mut ws, "a").await;
            // A record whose payload reads like a control frame.
            let payload = json!({"type": "error", "code": "overheat"}).to_string();
            produce(&bootstrap, "t", &[(Some("a"), payload)])
                .await
                .expect("produced");
            // Once a live subscriber has it, the hub holds it as the channel's snapshot.
            events(&mut ws, 1).await;

            let mut resp = reqwest::Client::new()
                .get(format!("http://{}/sse?channel=a", bridge.addr))
                .send()
                .await
                .expect("sse");
            assert_eq!(resp.status(), 200);
            let mut text = String::new();
            while text.matches("\n\n").count() < 2 {
                let chunk = tokio::time::timeout(WAIT, resp.chunk())
                    .await
                    .expect("chunk in time")
                    .expect("body")
                    .expect("open");
                text.push_str(std::str::from_utf8(&chunk).expect("utf8"));
            }
            let blocks: Vec<&str> = text.split("\n\n").collect();
            let event_of = |block: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix("event: "))
                    .unwrap_or("message")
                    .to_string()
            };
            // The snapshot is a record: an SSE client must not take it for an error.
            assert_eq!(event_of(blocks[0]), "message", "{}", blocks[0]);
            assert!(blocks[0].contains("overheat"), "{}", blocks[0]);
            assert_eq!(event_of(blocks[1]), "subscribed", "{}", blocks[1]);
            drop(resp);
            bridge.stop().await;
        },
    );
}
