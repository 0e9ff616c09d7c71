//! CEL subscription filters and broadcasts through the real transports (WebSocket JSON and
//! protobuf, SSE) against librdkafka's mock cluster: filters deliver exactly the matching
//! records, one evaluation per record and distinct filter, bad filters get `invalid_filter`,
//! a filtered resume is lossless with no spurious `replay_limit` gap (its positions moved past
//! what the filter dropped), and `POST /broadcast` reaches every client of two bridges and is
//! never replayed.

mod relay_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use eventstream_dataplane::relay::protocol::proto_to_debug;
use eventstream_proto::prost::Message as _;
use eventstream_proto::v1::{ClientFrame, server_frame};
use eventstream_testkit::MockKafka;
use futures::{SinkExt, StreamExt};
use rdkafka::producer::{FutureProducer, FutureRecord};
use relay_support::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const TOPIC: &str = "t";
const PARTITIONS: i32 = 3;

fn kafka() -> (MockKafka, String) {
    let kafka = MockKafka::new(1).expect("mock cluster");
    kafka.create_topic(TOPIC, PARTITIONS, 1).expect("topic");
    let bootstrap = kafka.bootstrap();
    (kafka, bootstrap)
}

fn producer(bootstrap: &str) -> FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer")
}

/// Produces `payload` keyed `key` into partition `i % PARTITIONS`.
async fn produce_at(producer: &FutureProducer, i: i64, key: &str, payload: &Value) {
    let payload = payload.to_string();
    producer
        .send(
            FutureRecord::to(TOPIC)
                .partition((i % i64::from(PARTITIONS)) as i32)
                .key(key)
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .expect("delivered");
}

/// Ping/pong barrier: returns every JSON frame that arrived before the pong.
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

fn ids(events: &[Value]) -> BTreeSet<i64> {
    events
        .iter()
        .filter(|f| f["type"] == "event")
        .map(|f| f["data"]["i"].as_i64().expect("i"))
        .collect()
}

/// The seed-003 shaped metric of record `i`: server-7 or server-8, cpu and region varying,
/// every 10th without `cpu` (evaluation fails on it).
fn metric(i: i64) -> (String, Value) {
    let server = if i % 2 == 0 { "server-7" } else { "server-8" };
    let region = if i % 3 == 0 { "us" } else { "eu" };
    let data = if i % 10 == 9 {
        json!({"i": i, "server": server, "region": region})
    } else {
        json!({"i": i, "server": server, "region": region, "cpu": (i * 7) % 100})
    };
    (server.to_string(), data)
}

fn cpu_over_90(i: i64) -> bool {
    i % 10 != 9 && (i * 7) % 100 > 90
}

const FILTER: &str = "data.cpu > 90.0 && data.region == 'eu'";

#[test]
fn filters_deliver_exactly_the_matching_records_once_per_distinct_filter() {
    on_multi_thread_runtime(
        "filters_deliver_exactly_the_matching_records_once_per_distinct_filter",
        async {
            let (_kafka, bootstrap) = kafka();
            let bridge = Bridge::start(config(&bootstrap, TOPIC, "")).await;
            // Two JSON clients and one protobuf client share one filter on server-7.
            let mut json_clients = Vec::new();
            for _ in 0..2 {
                let mut ws = connect(&bridge.url("/ws"), None).await;
                send(
                    &mut ws,
                    json!({"type": "subscribe", "channel": "server-7", "filter": FILTER}),
                )
                .await;
                assert_eq!(next_json(&mut ws).await["type"], "subscribed");
                json_clients.push(ws);
            }
            let mut proto = connect(&bridge.url("/ws"), Some("eventstream.v1.proto")).await;
            proto
                .send(Message::Binary(
                    ClientFrame::subscribe_filtered("server-7", [], FILTER)
                        .encode_to_vec()
                        .into(),
                ))
                .await
                .expect("send");
            assert!(matches!(
                next_proto(&mut proto).await,
                server_frame::Frame::Subscribed(_)
            ));
            // `*` with a filter of its own, and an unfiltered server-7 subscriber.
            let mut star = connect(&bridge.url("/ws"), None).await;
            send(
                &mut star,
                json!({"type": "subscribe", "channel": "*", "filter": "data.cpu > 90"}),
            )
            .await;
            assert_eq!(next_json(&mut star).await["type"], "subscribed");
            let mut plain = connect(&bridge.url("/ws"), None).await;
            subscribe(&mut plain, "server-7").await;

            // Bad filters: the documented error, and the connection keeps serving.
            for (filter, what) in [
                (json!("data.cpu >"), "syntax"),
                (
                    json!(format!("data.a == '{}'", "x".repeat(2000))),
                    "too long",
                ),
                (
                    json!("data.a.all(x, data.b.all(y, data.c.exists(z, x == y + z)))"),
                    "too costly",
                ),
                (json!(42), "not a string"),
            ] {
                send(
                    &mut plain,
                    json!({"type": "subscribe", "channel": "server-8", "filter": filter}),
                )
                .await;
                let f = next_json(&mut plain).await;
                assert_eq!(f["type"], "error", "{what}: {f}");
                assert_eq!(f["code"], "invalid_filter", "{what}: {f}");
                assert_eq!(f["channel"], "server-8", "{what}");
                assert!(!f["message"].as_str().unwrap_or_default().is_empty());
            }
            proto
                .send(Message::Binary(
                    ClientFrame::subscribe_filtered("server-8", [], "data.cpu >")
                        .encode_to_vec()
                        .into(),
                ))
                .await
                .expect("send");
            match next_proto(&mut proto).await {
                server_frame::Frame::Error(e) => assert_eq!(e.code, "invalid_filter"),
                other => panic!("expected invalid_filter, got {other:?}"),
            }
            assert!(barrier(&mut plain).await.is_empty());

            const N: i64 = 300;
            let producer = producer(&bootstrap);
            for i in 0..N {
                let (key, data) = metric(i);
                produce_at(&producer, i, &key, &data).await;
            }
            eventually("all consumed", || {
                bridge.metric("eventstream_bridge_records_consumed_total") >= N as f64
            })
            .await;

            let want: BTreeSet<i64> = (0..N)
                .filter(|i| i % 2 == 0 && i % 3 != 0 && cpu_over_90(*i))
                .collect();
            assert!(want.len() >= 5, "the data has matches: {want:?}");
            for ws in json_clients.iter_mut() {
                let mut got = Vec::new();
                while ids(&got).len() < want.len() {
                    got.push(next_json(ws).await);
                }
                got.extend(barrier(ws).await);
                let events: Vec<&Value> = got.iter().filter(|f| f["type"] == "event").collect();
                assert_eq!(events.len(), want.len(), "no duplicates");
                assert_eq!(ids(&got), want);
                assert!(
                    got.iter()
                        .all(|f| f["type"] == "event" || f["type"] == "progress"),
                    "only events and progress: {got:?}"
                );
            }
            let mut proto_ids = BTreeSet::new();
            while proto_ids.len() < want.len() {
                if let server_frame::Frame::Event(e) = next_proto(&mut proto).await {
                    let env = e.envelope.expect("envelope");
                    let data: Value = serde_json::from_slice(&env.payload).expect("json");
                    assert!(proto_ids.insert(data["i"].as_i64().expect("i")), "no dup");
                }
            }
            assert_eq!(proto_ids, want);

            let want_star: BTreeSet<i64> = (0..N).filter(|i| cpu_over_90(*i)).collect();
            let mut got = Vec::new();
            while ids(&got).len() < want_star.len() {
                got.push(next_json(&mut star).await);
            }
            got.extend(barrier(&mut star).await);
            assert_eq!(ids(&got), want_star);
            assert_eq!(
                got.iter().filter(|f| f["type"] == "event").count(),
                want_star.len()
            );

            let plain_events = events(&mut plain, (N / 2) as usize).await;
            assert_eq!(plain_events.len(), (N / 2) as usize);

            // One evaluation per record and distinct filter: server-7's records once for the
            // three clients sharing FILTER, every record once for `*`'s filter.
            let evaluations = bridge.metric("eventstream_ws_filter_evaluations_total");
            assert_eq!(evaluations, (N / 2 + N) as f64);
            let failed = (0..N).filter(|i| i % 10 == 9).count()
                + (0..N).filter(|i| i % 2 == 0 && i % 10 == 9).count();
            let text = eventstream_dataplane::telemetry::render(&bridge.registry);
            let errors: f64 = text
                .lines()
                .filter(|l| {
                    l.starts_with("eventstream_ws_filter_evaluations_total")
                        && l.contains("result=\"error\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            assert_eq!(errors, failed as f64, "failed evaluations are counted");
            bridge.stop().await;
        },
    );
}

async fn next_proto(ws: &mut Ws) -> server_frame::Frame {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a frame within the wait")
            .expect("open")
            .expect("frame ok");
        if let Message::Binary(b) = msg {
            return proto_to_debug(&b)
                .and_then(|f| f.frame)
                .expect("a ServerFrame");
        }
    }
}

/// Resume positions as a client keeps them: the last event's offset, raised by `subscribed`
/// and `progress` positions minus one.
#[derive(Default)]
struct Seen(BTreeMap<i64, i64>);

impl Seen {
    fn take(&mut self, f: &Value) {
        match f["type"].as_str() {
            Some("event") => {
                let p = f["partition"].as_i64().expect("p");
                let o = f["offset"].as_i64().expect("o");
                let at = self.0.entry(p).or_insert(o);
                *at = (*at).max(o);
            }
            Some("subscribed") | Some("progress") => {
                for (p, next) in f["positions"].as_object().expect("positions") {
                    let p: i64 = p.parse().expect("partition");
                    let next = next.as_i64().expect("offset");
                    let at = self.0.entry(p).or_insert(next - 1);
                    *at = (*at).max(next - 1);
                }
            }
            _ => {}
        }
    }

    fn covered(&self) -> i64 {
        self.0.values().map(|o| o + 1).sum()
    }

    fn since(&self) -> Value {
        json!(
            self.0
                .iter()
                .map(|(p, o)| (p.to_string(), json!(o)))
                .collect::<serde_json::Map<_, _>>()
        )
    }
}

/// A stream whose resumes replay at most 100 offsets per partition: progress rounds run every
/// 50 records.
const REPLAY_LIMIT: &str = "channel: { field: /server }, replayMaxMessages: 100";

#[test]
fn a_filtered_resume_is_lossless_and_reports_no_spurious_gap() {
    on_multi_thread_runtime(
        "a_filtered_resume_is_lossless_and_reports_no_spurious_gap",
        async {
            let (_kafka, bootstrap) = kafka();
            let bridge = Bridge::start(config(&bootstrap, TOPIC, REPLAY_LIMIT)).await;
            let producer = producer(&bootstrap);
            let subscribe_frame =
                json!({"type": "subscribe", "channel": "server-7", "filter": "data.cpu > 90"});
            let mut ws = connect(&bridge.url("/ws"), None).await;
            send(&mut ws, subscribe_frame.clone()).await;
            let mut seen = Seen::default();
            let first = next_json(&mut ws).await;
            assert_eq!(first["type"], "subscribed");
            seen.take(&first);
            // The same subscription in protobuf gets the same progress.
            let mut proto = connect(&bridge.url("/ws"), Some("eventstream.v1.proto")).await;
            proto
                .send(Message::Binary(
                    ClientFrame::subscribe_filtered("server-7", [], "data.cpu > 90")
                        .encode_to_vec()
                        .into(),
                ))
                .await
                .expect("send");
            assert!(matches!(
                next_proto(&mut proto).await,
                server_frame::Frame::Subscribed(_)
            ));

            // 600 records of server-7 (200 per partition); only the first 10 match.
            const FIRST: i64 = 600;
            for i in 0..FIRST {
                let cpu = if i < 10 { 95 } else { 10 };
                produce_at(
                    &producer,
                    i,
                    "k",
                    &json!({"i": i, "server": "server-7", "cpu": cpu}),
                )
                .await;
            }
            let mut got = Vec::new();
            let mut progress = 0;
            // Every round covers what was published before it; the last one is at most 49
            // records short of the end.
            while ids(&got).len() < 10 || seen.covered() < FIRST - 49 {
                let f = next_json(&mut ws).await;
                seen.take(&f);
                progress += usize::from(f["type"] == "progress");
                assert_ne!(f["type"], "gap", "{f}");
                got.push(f);
            }
            assert_eq!(ids(&got), (0..10).collect());
            assert!(progress > 0, "progress frames moved the positions");
            let (mut proto_events, mut proto_covered) = (0, 0);
            while proto_events < 10 || proto_covered < FIRST - 49 {
                match next_proto(&mut proto).await {
                    server_frame::Frame::Event(_) => proto_events += 1,
                    server_frame::Frame::Progress(p) => {
                        assert_eq!(p.channel, "server-7");
                        proto_covered = p.positions.values().sum::<i64>();
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(proto_events, 10);
            // What the events alone would let the client resume from.
            let mut by_events = Seen::default();
            for f in got.iter().filter(|f| f["type"] == "event") {
                by_events.take(f);
            }
            let last_event = by_events.covered();
            assert!(
                seen.covered() > last_event + 3 * 100,
                "without progress a resume would replay past the limit: {} vs {last_event}",
                seen.covered()
            );
            drop(ws);

            // Away: 120 more (40 per partition), every 12th matching.
            for i in FIRST..FIRST + 120 {
                let cpu = if i % 12 == 0 { 99 } else { 1 };
                produce_at(
                    &producer,
                    i,
                    "k",
                    &json!({"i": i, "server": "server-7", "cpu": cpu}),
                )
                .await;
            }
            eventually("all consumed", || {
                bridge.metric("eventstream_bridge_records_consumed_total") >= (FIRST + 120) as f64
            })
            .await;

            let mut ws = connect(&bridge.url("/ws"), None).await;
            let mut resume = subscribe_frame.clone();
            resume["since"] = seen.since();
            send(&mut ws, resume).await;
            let mut replayed = Vec::new();
            loop {
                let f = next_json(&mut ws).await;
                assert_ne!(f["type"], "gap", "no spurious gap: {f}");
                assert_ne!(f["type"], "error", "{f}");
                if f["type"] == "subscribed" {
                    break;
                }
                replayed.push(f);
            }
            let want: BTreeSet<i64> = (FIRST..FIRST + 120).filter(|i| i % 12 == 0).collect();
            assert_eq!(
                ids(&replayed),
                want,
                "exactly the matches produced while away"
            );
            assert_eq!(
                replayed.iter().filter(|f| f["type"] == "event").count(),
                want.len(),
                "no duplicates"
            );
            assert!(barrier(&mut ws).await.iter().all(|f| f["type"] != "event"));
            assert_eq!(bridge.metric("eventstream_ws_replays_total"), 1.0);
            bridge.stop().await;
        },
    );
}

/// A minimal `EventSource` over a streaming response.
struct Sse {
    response: reqwest::Response,
    buf: String,
}

impl Sse {
    async fn open(url: &str, last_event_id: Option<&str>) -> Sse {
        let mut request = reqwest::Client::new().get(url);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.expect("sse");
        assert_eq!(response.status(), 200, "{url}");
        Sse {
            response,
            buf: String::new(),
        }
    }

    /// (event name, id, data).
    async fn next(&mut self) -> (String, Option<String>, Value) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut name, mut id, mut data) = (String::from("message"), None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        name = v.into();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if !data.is_empty() {
                    return (name, id, serde_json::from_str(&data).expect("json"));
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .expect("an event within the wait")
                .expect("body")
                .expect("open");
            self.buf
                .push_str(std::str::from_utf8(&chunk).expect("utf8"));
        }
    }
}

fn covered(id: &str) -> i64 {
    id.split(',')
        .filter_map(|p| p.split_once(':')?.1.parse::<i64>().ok())
        .map(|o| o + 1)
        .sum()
}

#[test]
fn sse_filters_and_resumes_past_what_the_filter_dropped() {
    on_multi_thread_runtime(
        "sse_filters_and_resumes_past_what_the_filter_dropped",
        async {
            let (_kafka, bootstrap) = kafka();
            let bridge = Bridge::start(config(&bootstrap, TOPIC, REPLAY_LIMIT)).await;
            let http = format!("http://{}", bridge.addr);
            let bad = reqwest::get(format!("{http}/sse?channel=server-7&filter=data.cpu%20%3E"))
                .await
                .expect("answer");
            assert_eq!(bad.status(), 400);
            let body: Value = bad.json().await.expect("json");
            assert_eq!(body["error"]["code"], "invalid_filter");

            let url = format!("{http}/sse?channel=server-7&filter=data.cpu%20%3E%2090");
            let mut sse = Sse::open(&url, None).await;
            let (name, id, _) = sse.next().await;
            assert_eq!(name, "subscribed");
            let mut last_id = id.expect("subscribed has an id");
            let producer = producer(&bootstrap);
            const FIRST: i64 = 600;
            for i in 0..FIRST {
                let cpu = if i < 10 { 95 } else { 10 };
                produce_at(
                    &producer,
                    i,
                    "k",
                    &json!({"i": i, "server": "server-7", "cpu": cpu}),
                )
                .await;
            }
            let mut got = BTreeSet::new();
            let mut progress = 0;
            while got.len() < 10 || covered(&last_id) < FIRST - 49 {
                let (name, id, data) = sse.next().await;
                match name.as_str() {
                    "message" => assert!(got.insert(data["data"]["i"].as_i64().expect("i"))),
                    "progress" => progress += 1,
                    other => panic!("unexpected {other}: {data}"),
                }
                if let Some(id) = id {
                    last_id = id;
                }
            }
            assert_eq!(got, (0..10).collect());
            assert!(progress > 0);
            drop(sse);
            for i in FIRST..FIRST + 120 {
                let cpu = if i % 12 == 0 { 99 } else { 1 };
                produce_at(
                    &producer,
                    i,
                    "k",
                    &json!({"i": i, "server": "server-7", "cpu": cpu}),
                )
                .await;
            }
            eventually("all consumed", || {
                bridge.metric("eventstream_bridge_records_consumed_total") >= (FIRST + 120) as f64
            })
            .await;
            let mut sse = Sse::open(&url, Some(&last_id)).await;
            let mut replayed = Vec::new();
            loop {
                let (name, _, data) = sse.next().await;
                assert_ne!(name, "gap", "no spurious gap: {data}");
                if name == "subscribed" {
                    break;
                }
                assert_eq!(name, "message", "{data}");
                replayed.push(data["data"]["i"].as_i64().expect("i"));
            }
            let want: Vec<i64> = (FIRST..FIRST + 120).filter(|i| i % 12 == 0).collect();
            let mut sorted = replayed.clone();
            sorted.sort_unstable();
            assert_eq!(
                sorted, want,
                "exactly the matches, no duplicates: {replayed:?}"
            );
            bridge.stop().await;
        },
    );
}

#[test]
fn a_broadcast_reaches_every_client_of_two_bridges_and_is_never_replayed() {
    on_multi_thread_runtime(
        "a_broadcast_reaches_every_client_of_two_bridges_and_is_never_replayed",
        async {
            let (_kafka, bootstrap) = kafka();
            let mut with_ingest = config(&bootstrap, TOPIC, "");
            with_ingest.ingest.enabled = true;
            let one = Bridge::start(with_ingest).await;
            let two = Bridge::start(config(&bootstrap, TOPIC, "")).await;
            let mut star = connect(&one.url("/ws"), None).await;
            let subscribed = subscribe(&mut star, "*").await;
            let mut unsubscribed = connect(&one.url("/ws"), None).await;
            let mut proto = connect(&two.url("/ws"), Some("eventstream.v1.proto")).await;
            let mut filtered = connect(&two.url("/ws"), None).await;
            send(
                &mut filtered,
                json!({"type": "subscribe", "channel": "server-7", "filter": "false"}),
            )
            .await;
            assert_eq!(next_json(&mut filtered).await["type"], "subscribed");
            let mut sse =
                Sse::open(&format!("http://{}/sse?channel=server-8", two.addr), None).await;
            assert_eq!(sse.next().await.0, "subscribed");

            let http = reqwest::Client::new();
            let post = |body: &'static str, content_type: &'static str| {
                http.post(format!("http://{}/broadcast", one.addr))
                    .header("content-type", content_type)
                    .body(body)
                    .send()
            };
            for (body, content_type, status, code) in [
                ("{", "application/json", 400, "malformed_json"),
                (
                    r#"{"topic":"ops"}"#,
                    "application/json",
                    400,
                    "validation_failed",
                ),
                ("[1]", "application/json", 400, "validation_failed"),
                (
                    r#"{"message":1}"#,
                    "text/plain",
                    415,
                    "unsupported_media_type",
                ),
            ] {
                let answer = post(body, content_type).await.expect("answer");
                assert_eq!(answer.status(), status, "{body}");
                let reply: Value = answer.json().await.expect("json");
                assert_eq!(reply["error"]["code"], code, "{body}");
            }
            let answer = post(
                r#"{"topic":"test","message":{"hello":"world"}}"#,
                "application/json",
            )
            .await
            .expect("answer");
            assert_eq!(answer.status(), 200);
            let produced: Value = answer.json().await.expect("json");
            let offset = produced["offset"].as_i64().expect("offset");

            let want = json!({"topic": "test", "message": {"hello": "world"}});
            for ws in [&mut star, &mut unsubscribed, &mut filtered] {
                let f = next_json(ws).await;
                assert_eq!(f["type"], "broadcast", "{f}");
                assert_eq!(f["data"], want);
                assert_eq!(f["offset"], offset);
                // Not an event as well (a filtered subscription may get a `progress`).
                let extra = barrier(ws).await;
                assert!(extra.iter().all(|f| f["type"] == "progress"), "{extra:?}");
            }
            match next_proto(&mut proto).await {
                server_frame::Frame::Broadcast(b) => {
                    let env = b.envelope.expect("envelope");
                    let data: Value = serde_json::from_slice(&env.payload).expect("json");
                    assert_eq!(data, want);
                    assert!(env.headers.iter().any(|h| h.key == "eventstream-broadcast"));
                }
                other => panic!("expected a broadcast, got {other:?}"),
            }
            let (name, id, data) = sse.next().await;
            assert_eq!(name, "broadcast");
            assert_eq!(data["type"], "broadcast");
            assert_eq!(data["data"], want);
            assert_eq!(id, None, "a broadcast moves no resume position");

            // A resume from before the broadcast replays no broadcast.
            let since: serde_json::Map<String, Value> = subscribed["positions"]
                .as_object()
                .expect("positions")
                .iter()
                .map(|(p, next)| (p.clone(), json!(next.as_i64().expect("o") - 1)))
                .collect();
            let mut again = connect(&two.url("/ws"), None).await;
            send(
                &mut again,
                json!({"type": "subscribe", "channel": "*", "since": since}),
            )
            .await;
            let f = next_json(&mut again).await;
            assert_eq!(f["type"], "subscribed", "nothing replayed: {f}");
            assert!(barrier(&mut again).await.is_empty());
            assert_eq!(one.metric("eventstream_ws_broadcasts_total"), 2.0);
            assert_eq!(two.metric("eventstream_ws_broadcasts_total"), 3.0);
            one.stop().await;
            two.stop().await;
        },
    );
}
