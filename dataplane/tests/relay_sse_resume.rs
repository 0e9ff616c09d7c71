//! SSE resume as `EventSource` does it: the client keeps the last `id` it saw and sends it back
//! as `Last-Event-ID`. Every id (the `subscribed` event's included) must name every partition,
//! or the partitions it leaves out resume live and what was produced there while the client
//! was away never arrives. Proven on six partitions, for `*` and a field channel, against a
//! bridge in process and across a SIGKILL and restart of the real `eventstream-dataplane`
//! binary.

mod relay_support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use eventstream_testkit::{MockKafka, free_port};
use rdkafka::producer::{FutureProducer, FutureRecord};
use relay_support::*;
use serde_json::{Value, json};

const PARTITIONS: i32 = 6;
const TOPIC: &str = "t";

fn kafka() -> (MockKafka, String) {
    let kafka = MockKafka::new(1).expect("mock cluster");
    kafka.create_topic(TOPIC, PARTITIONS, 1).expect("topic");
    let bootstrap = kafka.bootstrap();
    (kafka, bootstrap)
}

/// Produces `{"i": i, "ch": ch}` into `partition`.
async fn produce_to(producer: &FutureProducer, partition: i32, i: i64, ch: &str) {
    let payload = json!({"i": i, "ch": ch}).to_string();
    producer
        .send(
            FutureRecord::<(), _>::to(TOPIC)
                .partition(partition)
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .expect("delivered");
}

/// One SSE event as a client sees it.
#[derive(Debug, Clone)]
struct SseEvent {
    name: String,
    id: Option<String>,
    data: Value,
}

/// A minimal `EventSource`: reads events off a streaming response.
struct SseClient {
    response: reqwest::Response,
    buf: String,
}

impl SseClient {
    async fn open(http: &reqwest::Client, url: &str, last_event_id: Option<&str>) -> SseClient {
        let mut request = http.get(url);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.expect("sse");
        assert_eq!(response.status(), 200, "{url}");
        SseClient {
            response,
            buf: String::new(),
        }
    }

    /// The next event (keep-alive comments skipped), within one `WAIT`.
    async fn next(&mut self) -> SseEvent {
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
                    let data = serde_json::from_str(&data).expect("json data");
                    return SseEvent { name, id, data };
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .expect("an event within the wait")
                .expect("body")
                .expect("stream open");
            self.buf
                .push_str(std::str::from_utf8(&chunk).expect("utf8"));
        }
    }
}

/// Asserts that `id` is an SSE resume id naming every partition of the topic.
fn assert_names_every_partition(id: Option<&str>, what: &str) -> String {
    let id = id.unwrap_or_else(|| panic!("{what} carries an id"));
    let partitions: BTreeSet<i32> = id
        .split(',')
        .map(|part| {
            part.split_once(':')
                .and_then(|(p, _)| p.parse().ok())
                .unwrap_or_else(|| panic!("{what}: malformed id {id}"))
        })
        .collect();
    assert_eq!(
        partitions,
        (0..PARTITIONS).collect(),
        "{what}: the id `{id}` names every partition"
    );
    id.to_string()
}

/// A follower that connected and then dropped: the last id it saw and the records (`i`) it
/// received.
struct Dropped {
    channel: &'static str,
    last_id: String,
    seen: BTreeSet<i64>,
}

/// Followers of `*` and `u1` that see one record (on partition 0) and one of `u2` that sees only
/// `subscribed`, with their open connections: the first event's id must carry the five
/// partitions that delivered nothing, `subscribed`'s id all six.
async fn followers_that_saw_little(
    http: &reqwest::Client,
    base: &str,
    producer: &FutureProducer,
    produced: &mut BTreeMap<i64, &'static str>,
) -> (Vec<Dropped>, Vec<SseClient>) {
    let mut open = Vec::new();
    for channel in ["*", "u1", "u2"] {
        let mut sse = SseClient::open(http, &format!("{base}/sse?channel={channel}"), None).await;
        let subscribed = sse.next().await;
        assert_eq!(subscribed.name, "subscribed", "{subscribed:?}");
        let last_id = assert_names_every_partition(subscribed.id.as_deref(), "subscribed");
        open.push((channel, sse, last_id));
    }
    // Every follower is registered (it read `subscribed`), so each of `*` and `u1` gets it.
    produce_to(producer, 0, 1000, "u1").await;
    produced.insert(1000, "u1");
    let mut dropped = Vec::new();
    let mut connections = Vec::new();
    for (channel, mut sse, mut last_id) in open {
        let mut seen = BTreeSet::new();
        if channel != "u2" {
            let event = sse.next().await;
            assert_eq!(event.name, "message", "{event:?}");
            last_id = assert_names_every_partition(event.id.as_deref(), "the first event");
            seen.insert(event.data["data"]["i"].as_i64().expect("i"));
        }
        dropped.push(Dropped {
            channel,
            last_id,
            seen,
        });
        connections.push(sse);
    }
    (dropped, connections)
}

/// Reconnects `dropped` with its last id and asserts that exactly the records of `produced`
/// (`i` → channel) it had not seen arrive, each once. Records the bridge had not consumed yet
/// when the client came back arrive live after `subscribed`, so the end is a barrier: once
/// `subscribed` is read, one marker of the follower's channel goes into every partition, and
/// partition order means that every record before a marker has arrived with it. The markers
/// are added to `produced` (later followers missed them).
async fn resume_and_check(
    http: &reqwest::Client,
    base: &str,
    producer: &FutureProducer,
    dropped: &Dropped,
    produced: &mut BTreeMap<i64, &'static str>,
    markers_from: i64,
) {
    let channel = dropped.channel;
    let url = format!("{base}/sse?channel={channel}");
    let mut sse = SseClient::open(http, &url, Some(&dropped.last_id)).await;
    let missed: Vec<i64> = produced
        .iter()
        .filter(|(i, ch)| (channel == "*" || **ch == channel) && !dropped.seen.contains(i))
        .map(|(i, _)| *i)
        .collect();
    let marker_channel = if channel == "*" { "u1" } else { channel };
    let markers: BTreeSet<i64> = (0..PARTITIONS)
        .map(|p| markers_from + i64::from(p))
        .collect();
    let mut received = Vec::new();
    let mut subscribed = false;
    let mut markers_seen = BTreeSet::new();
    while markers_seen != markers {
        let event = sse.next().await;
        match event.name.as_str() {
            "message" => {
                assert_names_every_partition(event.id.as_deref(), "an event after a resume");
                let i = event.data["data"]["i"].as_i64().expect("i");
                if markers.contains(&i) {
                    markers_seen.insert(i);
                } else {
                    received.push(i);
                }
            }
            "subscribed" if !subscribed => {
                subscribed = true;
                assert_names_every_partition(event.id.as_deref(), "subscribed after a resume");
                for (p, i) in (0..PARTITIONS).zip(&markers) {
                    produce_to(producer, p, *i, marker_channel).await;
                    produced.insert(*i, marker_channel);
                }
            }
            other => panic!("{channel}: unexpected {other} event {event:?}"),
        }
    }
    let mut got = received.clone();
    got.sort_unstable();
    assert_eq!(
        got, missed,
        "{channel}: exactly the missed records, each once (received in order {received:?})"
    );
}

/// Records produced into every partition while the clients are away: `i` → channel.
async fn produce_everywhere(producer: &FutureProducer, from: i64) -> BTreeMap<i64, &'static str> {
    let mut produced = BTreeMap::new();
    let mut i = from;
    for round in 0..3 {
        for p in 0..PARTITIONS {
            let ch = if (p + round) % 2 == 0 { "u1" } else { "u2" };
            produce_to(producer, p, i, ch).await;
            produced.insert(i, ch);
            i += 1;
        }
    }
    produced
}

const WS_YAML: &str = "channel: { field: /ch }";

#[test]
fn sse_resume_is_lossless_on_every_partition_for_star_and_field_channels() {
    on_multi_thread_runtime("sse_resume_is_lossless_on_every_partition", async {
        let (_kafka, bootstrap) = kafka();
        let bridge = Bridge::start(config(&bootstrap, TOPIC, WS_YAML)).await;
        let base = format!("http://{}", bridge.addr);
        let http = reqwest::Client::new();
        let producer: FutureProducer = eventstream_testkit::kafka::producer_config(&bootstrap)
            .create()
            .expect("producer");

        let mut produced = BTreeMap::new();
        let (dropped, connections) =
            followers_that_saw_little(&http, &base, &producer, &mut produced).await;
        drop(connections);
        produced.extend(produce_everywhere(&producer, 0).await);
        for (n, d) in dropped.iter().enumerate() {
            let markers_from = 2000 + 10 * n as i64;
            resume_and_check(&http, &base, &producer, d, &mut produced, markers_from).await;
        }
        bridge.stop().await;
    });
}

/// The real binary as a process, killed with SIGKILL on drop.
struct BridgeProcess {
    child: Child,
    base: String,
}

impl BridgeProcess {
    async fn start(dir: &std::path::Path, bootstrap: &str) -> BridgeProcess {
        let port = free_port().expect("free port");
        let path = dir.join(format!("bridge-{port}.yaml"));
        std::fs::write(
            &path,
            format!(
                "stream: {{ namespace: test, name: relay }}\n\
                 kafka: {{ bootstrapServers: '{bootstrap}', properties: {{ fetch.wait.max.ms: '10' }} }}\n\
                 topic: {TOPIC}\n\
                 server: {{ listen: '127.0.0.1:{port}', shutdownGrace: 1s }}\n\
                 ingest: {{ enabled: false }}\n\
                 websocket: {{ {WS_YAML} }}\n"
            ),
        )
        .expect("config written");
        let log = std::fs::File::create(dir.join(format!("bridge-{port}.log"))).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_eventstream-dataplane"))
            .arg("bridge")
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("bridge process starts");
        let process = BridgeProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        // Ready: Kafka assigned and caught up, so a subscription gets every partition.
        let http = reqwest::Client::new();
        let url = format!("{}/health", process.base);
        eventually_async("the bridge process is healthy", || async {
            matches!(http.get(&url).send().await, Ok(r) if r.status() == 200)
        })
        .await;
        process
    }

    fn kill(mut self) {
        // `Child::kill` is SIGKILL: no drain, no goodbye frame, as a crashed pod.
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn eventually_async<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn sse_resume_is_lossless_across_a_bridge_sigkill_and_restart() {
    on_multi_thread_runtime("sse_resume_across_sigkill", async {
        let (_kafka, bootstrap) = kafka();
        let dir = tempfile::tempdir().expect("dir");
        let http = reqwest::Client::new();
        let producer: FutureProducer = eventstream_testkit::kafka::producer_config(&bootstrap)
            .create()
            .expect("producer");

        let bridge = BridgeProcess::start(dir.path(), &bootstrap).await;
        let mut produced = BTreeMap::new();
        let (dropped, connections) =
            followers_that_saw_little(&http, &bridge.base, &producer, &mut produced).await;
        // Killed with the followers still connected, as a crashed pod.
        bridge.kill();
        drop(connections);
        produced.extend(produce_everywhere(&producer, 0).await);

        let bridge = BridgeProcess::start(dir.path(), &bootstrap).await;
        for (n, d) in dropped.iter().enumerate() {
            let markers_from = 2000 + 10 * n as i64;
            resume_and_check(
                &http,
                &bridge.base,
                &producer,
                d,
                &mut produced,
                markers_from,
            )
            .await;
        }
        drop(bridge);
    });
}
