//! The randomized fault soak's parts: its seeded schedule, the continuous ingest, the followers
//! that resume after every drop (WebSocket JSON, WebSocket protobuf, SSE), the topic read back
//! as the truth, and the checks of the product's promise against that truth.
//!
//! The soak itself (`tests/no_cluster.rs`) runs the processes and the rounds of faults; this
//! module owns what runs *beside* the faults and what is checked after them:
//!
//! * [`Rng`] / [`Round`]: a splitmix64 generator (no crate, so a seed means the same schedule on
//!   every build) and the rounds it draws. `EVENTSTREAM_SOAK_SEED` replays a schedule.
//! * [`Ingest`]: one task per bridge posting events one at a time (see
//!   [`Producer`](crate::client::Producer) for why not concurrently); only a 200 counts as
//!   acknowledged. An answer that never came (the bridge died mid-request) is not an
//!   acknowledgement, but its record may still be in the topic: the checks allow for that.
//! * [`spawn_follower`]: a client that keeps its positions as docs/protocol.md tells users to, and
//!   reconnects to its bridge after any drop until told to stop. The SSE follower does what a
//!   browser's `EventSource` does and nothing more: it resumes with the last `id` it saw.
//! * [`read_topic`] and [`check_follower`]: every follower's sequence per partition, from where
//!   it first subscribed, must be exactly the topic's records of its channel — no hole except
//!   offsets a `gap` frame announced, no duplicate, in order, each with its payload.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use eventstream_proto::prost::Message as _;
use eventstream_proto::v1::{ClientFrame, ServerFrame, server_frame};
use futures::{SinkExt, StreamExt};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::client::{Position, Producer};

/// Environment variable holding the seed of a schedule to replay (decimal or `0x…`).
pub const SEED_ENV: &str = "EVENTSTREAM_SOAK_SEED";

/// A splitmix64 generator: tiny, and the same sequence for a seed on every build and platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator starting at `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// The seed from [`SEED_ENV`], else a fresh one from the clock.
pub fn seed() -> Result<u64> {
    match std::env::var(SEED_ENV) {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.with_context(|| format!("${SEED_ENV}={text} is not a u64"))
        }
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("the clock is before 1970")?
                .as_nanos();
            // Truncation is fine: any 64 bits of the clock make a seed.
            Ok((nanos as u64) ^ u64::from(std::process::id()).rotate_left(32))
        }
    }
}

/// What a round does to the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL bridge `n`, restart it.
    KillBridge(usize),
    /// SIGTERM bridge `n` (graceful drain), restart it.
    TermBridge(usize),
    /// SIGKILL the sink, restart it.
    KillSink,
    /// SIGTERM the sink, restart it.
    TermSink,
    /// `pg_ctl stop -m immediate`, then start PostgreSQL again (crash recovery).
    CrashPostgres,
}

/// One round of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// The fault.
    pub fault: Fault,
    /// Acknowledgements to wait for before the fault (work is flowing when it lands).
    pub acks_before: u64,
    /// Acknowledgements to wait for while the faulty part is down, before it comes back.
    pub acks_down: u64,
}

impl Round {
    /// Draws the next round from `rng`.
    pub fn draw(rng: &mut Rng, bridges: usize) -> Self {
        let bridge = (rng.next_u64() % bridges as u64) as usize;
        let fault = match rng.next_u64() % 7 {
            0 | 1 => Fault::KillBridge(bridge),
            2 => Fault::TermBridge(bridge),
            3 | 4 => Fault::KillSink,
            5 => Fault::TermSink,
            _ => Fault::CrashPostgres,
        };
        Self {
            fault,
            acks_before: rng.between(20, 100),
            acks_down: rng.between(10, 80),
        }
    }
}

/// Every acknowledged event: position → `seq`.
#[derive(Debug, Default)]
pub struct Acks {
    positions: Mutex<BTreeMap<Position, u64>>,
    duplicates: Mutex<Vec<Position>>,
    failed: AtomicU64,
}

impl Acks {
    /// How many events were acknowledged.
    pub fn count(&self) -> u64 {
        lock(&self.positions).len() as u64
    }

    /// A copy of every acknowledgement.
    pub fn snapshot(&self) -> BTreeMap<Position, u64> {
        lock(&self.positions).clone()
    }

    /// Requests that got no acknowledgement (refused, or no answer: the bridge died).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Positions named by two acknowledgements (must stay empty).
    pub fn duplicates(&self) -> Vec<Position> {
        lock(&self.duplicates).clone()
    }

    /// Waits until at least `n` events are acknowledged.
    pub async fn wait_for(&self, n: u64, timeout: Duration) -> Result<()> {
        crate::eventually(&format!("{n} acknowledged events"), timeout, || async {
            let have = self.count();
            if have >= n {
                Ok(Some(()))
            } else {
                bail!("{have} acknowledged, {} requests failed", self.failed())
            }
        })
        .await
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking follower or ingest task already fails the test; its data stays readable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The payload of event `seq`: its session (the stream's channel field) comes from `seq`.
pub fn event(seq: u64, sessions: u64) -> Value {
    json!({
        "eventType": "frame",
        "sessionId": session_of(seq, sessions),
        "timestamp": format!("2025-06-01T10:{:02}:{:02}.{:03}Z", seq / 60_000 % 60, seq / 1000 % 60, seq % 1000),
        "seq": seq,
        "lap": seq / 10,
        "speed": 200.0 + (seq % 50) as f64,
    })
}

/// `session-<seq % sessions>`.
pub fn session_of(seq: u64, sessions: u64) -> String {
    format!("session-{}", seq % sessions)
}

/// The continuous ingest: one task per bridge, each posting to its own bridge only (when it is
/// down, the task keeps trying it; the other bridge carries the load), at most one event per
/// `pace`.
#[derive(Debug)]
pub struct Ingest {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Ingest {
    /// Starts one task per URL (`http://bridge/produce`).
    pub fn start(
        produce_urls: Vec<String>,
        acks: Arc<Acks>,
        sessions: u64,
        pace: Duration,
    ) -> Result<Self> {
        let (stop, stopped) = watch::channel(false);
        let next_seq = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for url in produce_urls {
            let producer = Producer::with_timeout(Duration::from_secs(10))?;
            let acks = acks.clone();
            let next_seq = next_seq.clone();
            let stopped = stopped.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(pace);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !*stopped.borrow() {
                    tick.tick().await;
                    // A fresh seq per attempt: an attempt without an answer may still be in the
                    // topic, and must not be confused with a later one.
                    let seq = next_seq.fetch_add(1, Ordering::Relaxed);
                    match producer.post(&url, &event(seq, sessions)).await {
                        Ok(position) => {
                            if lock(&acks.positions).insert(position, seq).is_some() {
                                lock(&acks.duplicates).push(position);
                            }
                        }
                        Err(_) => {
                            acks.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        Ok(Self { stop, tasks })
    }

    /// Stops posting and waits for the requests in flight.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.await.context("an ingest task panicked")?;
        }
        Ok(())
    }
}

/// How a follower talks to its bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `/ws`, `eventstream.v1.json`.
    WsJson,
    /// `/ws`, `eventstream.v1.proto`.
    WsProto,
    /// `/sse`, resuming with `Last-Event-ID` only.
    Sse,
}

/// What a follower saw.
#[derive(Debug, Default, Clone)]
pub struct Log {
    /// Per partition, the offset live delivery started at on the first subscription (the first
    /// `subscribed.positions`): the follower must see everything of its channel from there.
    pub start: BTreeMap<i32, i64>,
    /// Events in arrival order: position and `seq`.
    pub events: Vec<(Position, u64)>,
    /// Announced holes: `(partition, from, to)`, `to` exclusive.
    pub gaps: Vec<(i32, i64, i64)>,
    /// Successful connections (subscriptions).
    pub connects: u64,
    /// Frames the follower did not expect (anything but events, `subscribed`, `gap`, pong and
    /// the `going_away` error of a draining bridge).
    pub unexpected: Vec<String>,
}

impl Log {
    /// Per partition, the highest offset this follower has accounted for (received, or inside
    /// an announced gap, or below its start).
    pub fn reached(&self) -> BTreeMap<i32, i64> {
        let mut out: BTreeMap<i32, i64> = self.start.iter().map(|(p, o)| (*p, o - 1)).collect();
        for (pos, _) in &self.events {
            let e = out.entry(pos.partition).or_insert(-1);
            *e = (*e).max(pos.offset);
        }
        for (p, _, to) in &self.gaps {
            let e = out.entry(*p).or_insert(-1);
            *e = (*e).max(to - 1);
        }
        out
    }
}

/// A running follower: its name, channel and log.
#[derive(Debug)]
pub struct FollowerHandle {
    /// For messages.
    pub name: String,
    /// The subscribed channel (`*` or a session).
    pub channel: String,
    /// What it saw so far.
    pub log: Arc<Mutex<Log>>,
    task: JoinHandle<()>,
}

impl FollowerHandle {
    /// A copy of the log.
    pub fn log(&self) -> Log {
        lock(&self.log).clone()
    }

    /// Waits for the task to end (after the stop signal).
    pub async fn join(self) -> Result<Log> {
        self.task
            .await
            .with_context(|| format!("follower {} panicked", self.name))?;
        Ok(lock(&self.log).clone())
    }
}

/// Starts a follower of `channel` on the bridge at `base` (`127.0.0.1:port`). It connects,
/// subscribes, and after any drop reconnects (every 100 ms while the bridge is down) and resumes,
/// until `stop` turns true.
pub fn spawn_follower(
    name: &str,
    transport: Transport,
    base: &str,
    channel: &str,
    stop: watch::Receiver<bool>,
) -> FollowerHandle {
    let log = Arc::new(Mutex::new(Log::default()));
    let task = {
        let (name, base, channel, log) = (
            name.to_owned(),
            base.to_owned(),
            channel.to_owned(),
            log.clone(),
        );
        tokio::spawn(async move {
            match transport {
                Transport::WsJson | Transport::WsProto => {
                    follow_ws(transport, &base, &channel, &log, stop).await;
                }
                Transport::Sse => follow_sse(&base, &channel, &log, stop, &name).await,
            }
        })
    };
    FollowerHandle {
        name: name.to_owned(),
        channel: channel.to_owned(),
        log,
        task,
    }
}

/// Waits 100 ms, or less if `stop` turns true; returns whether to stop.
async fn pause(stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    let _ = tokio::time::timeout(Duration::from_millis(100), stop.changed()).await;
    *stop.borrow()
}

async fn follow_ws(
    transport: Transport,
    base: &str,
    channel: &str,
    log: &Mutex<Log>,
    mut stop: watch::Receiver<bool>,
) {
    let proto = transport == Transport::WsProto;
    // Resume positions, kept as docs/protocol.md's snippet keeps them.
    let mut seen: BTreeMap<i32, i64> = BTreeMap::new();
    loop {
        if pause(&mut stop).await {
            return;
        }
        let Ok(mut request) = format!("ws://{base}/ws").into_client_request() else {
            lock(log).unexpected.push(format!("bad url ws://{base}/ws"));
            return;
        };
        let subprotocol = if proto {
            eventstream_proto::SUBPROTOCOL_PROTO
        } else {
            eventstream_proto::SUBPROTOCOL_JSON
        };
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(subprotocol),
        );
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(request).await else {
            continue;
        };
        let subscribe = if proto {
            Message::Binary(
                ClientFrame::subscribe(channel, seen.clone())
                    .encode_to_vec()
                    .into(),
            )
        } else {
            let mut frame = json!({"type": "subscribe", "channel": channel});
            if !seen.is_empty() {
                frame["since"] = seen
                    .iter()
                    .map(|(p, o)| (p.to_string(), json!(o)))
                    .collect::<serde_json::Map<_, _>>()
                    .into();
            }
            Message::Text(frame.to_string().into())
        };
        if ws.send(subscribe).await.is_err() {
            continue;
        }
        loop {
            let msg = tokio::select! {
                _ = stop.changed() => return,
                msg = ws.next() => msg,
            };
            let frame = match msg {
                Some(Ok(Message::Text(t))) if !proto => {
                    match serde_json::from_str::<Value>(t.as_str()) {
                        Ok(v) => json_frame(&v),
                        Err(e) => Frame::Unexpected(format!("not JSON ({e}): {t}")),
                    }
                }
                Some(Ok(Message::Binary(b))) if proto => match ServerFrame::decode(&b[..]) {
                    Ok(f) => proto_frame(f),
                    Err(e) => Frame::Unexpected(format!("not a ServerFrame: {e}")),
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(other)) => Frame::Unexpected(format!("{other:?}")),
            };
            apply(log, &mut seen, frame);
        }
    }
}

/// A server frame as the followers care about it.
enum Frame {
    Event(Position, Result<u64, String>),
    Subscribed(BTreeMap<i32, i64>),
    Gap(BTreeMap<i32, i64>, BTreeMap<i32, i64>),
    Ignore,
    Unexpected(String),
}

fn apply(log: &Mutex<Log>, seen: &mut BTreeMap<i32, i64>, frame: Frame) {
    let mut log = lock(log);
    match frame {
        Frame::Event(position, seq) => {
            seen.insert(position.partition, position.offset);
            match seq {
                Ok(seq) => log.events.push((position, seq)),
                Err(e) => log.unexpected.push(format!("event at {position:?}: {e}")),
            }
        }
        Frame::Subscribed(positions) => {
            log.connects += 1;
            if log.start.is_empty() {
                log.start = positions.clone();
            }
            for (p, next) in positions {
                let e = seen.entry(p).or_insert(-1);
                *e = (*e).max(next - 1);
            }
        }
        Frame::Gap(from, to) => {
            for (p, f) in &from {
                let t = to.get(p).copied().unwrap_or(*f);
                log.gaps.push((*p, *f, t));
                let e = seen.entry(*p).or_insert(-1);
                *e = (*e).max(t - 1);
            }
        }
        Frame::Ignore => {}
        Frame::Unexpected(what) => log.unexpected.push(what),
    }
}

fn positions_of(v: &Value) -> BTreeMap<i32, i64> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(p, o)| Some((p.parse().ok()?, o.as_i64()?)))
                .collect()
        })
        .unwrap_or_default()
}

fn seq_of(data: &Value) -> Result<u64, String> {
    data["seq"]
        .as_u64()
        .ok_or_else(|| format!("no seq in {data}"))
}

/// A JSON frame (WebSocket text frame, or SSE `data`).
fn json_frame(v: &Value) -> Frame {
    match v["type"].as_str() {
        Some("event") => {
            let partition = v["partition"].as_i64().and_then(|p| i32::try_from(p).ok());
            match (partition, v["offset"].as_i64()) {
                (Some(partition), Some(offset)) => {
                    Frame::Event(Position { partition, offset }, seq_of(&v["data"]))
                }
                _ => Frame::Unexpected(format!("event without a position: {v}")),
            }
        }
        Some("subscribed") => Frame::Subscribed(positions_of(&v["positions"])),
        Some("gap") => Frame::Gap(positions_of(&v["from"]), positions_of(&v["to"])),
        Some("pong") => Frame::Ignore,
        Some("error") if v["code"] == "going_away" => Frame::Ignore,
        _ => Frame::Unexpected(v.to_string()),
    }
}

fn proto_frame(f: ServerFrame) -> Frame {
    match f.frame {
        Some(server_frame::Frame::Event(e)) => match e.envelope {
            Some(env) => {
                let seq = serde_json::from_slice::<Value>(&env.payload)
                    .map_err(|e| e.to_string())
                    .and_then(|v| seq_of(&v));
                Frame::Event(
                    Position {
                        partition: env.partition,
                        offset: env.offset,
                    },
                    seq,
                )
            }
            None => Frame::Unexpected("event without envelope".into()),
        },
        Some(server_frame::Frame::Subscribed(s)) => Frame::Subscribed(s.positions),
        Some(server_frame::Frame::Gap(g)) => Frame::Gap(g.from, g.to),
        Some(server_frame::Frame::Pong(_)) => Frame::Ignore,
        Some(server_frame::Frame::Error(e)) if e.code == "going_away" => Frame::Ignore,
        other => Frame::Unexpected(format!("{other:?}")),
    }
}

/// An `EventSource` in a loop: `GET /sse?channel=…`, `Last-Event-ID` from the last message `id`
/// it saw (none before the first), reconnect after any end of the stream.
async fn follow_sse(
    base: &str,
    channel: &str,
    log: &Mutex<Log>,
    mut stop: watch::Receiver<bool>,
    name: &str,
) {
    // No overall timeout: the stream is meant to last; a dead bridge ends it (RST or FIN).
    let http = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            lock(log)
                .unexpected
                .push(format!("{name}: http client: {e}"));
            return;
        }
    };
    let mut last_id: Option<String> = None;
    let mut seen = BTreeMap::new();
    loop {
        if pause(&mut stop).await {
            return;
        }
        // Channels here are `*` and `session-N`: only `*` needs escaping.
        let mut request = http.get(format!(
            "http://{base}/sse?channel={}",
            channel.replace('*', "%2A")
        ));
        if let Some(id) = &last_id {
            request = request.header("Last-Event-ID", id);
        }
        let mut response = match request.send().await {
            Ok(r) if r.status().is_success() => r,
            // Down, starting or draining (503): try again, as EventSource does.
            Ok(r) if r.status().is_server_error() => continue,
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                lock(log)
                    .unexpected
                    .push(format!("GET /sse answered {status}: {body}"));
                continue;
            }
            Err(_) => continue,
        };
        let mut buffer = String::new();
        loop {
            let chunk = tokio::select! {
                _ = stop.changed() => return,
                chunk = response.chunk() => chunk,
            };
            let Ok(Some(chunk)) = chunk else { break };
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let (kind, data, id) = parse_sse_block(&block);
                if let Some(id) = id {
                    last_id = Some(id);
                }
                let Some(data) = data else { continue };
                let frame = match serde_json::from_str::<Value>(&data) {
                    Ok(v) => match kind.as_deref() {
                        None | Some("message") | Some("subscribed") | Some("gap")
                        | Some("error") => json_frame(&v),
                        Some(other) => Frame::Unexpected(format!("event {other}: {data}")),
                    },
                    Err(e) => Frame::Unexpected(format!("SSE data not JSON ({e}): {data}")),
                };
                apply(log, &mut seen, frame);
            }
        }
    }
}

/// `(event, data, id)` of one SSE block; comments (keep-alives) give all `None`.
fn parse_sse_block(block: &str) -> (Option<String>, Option<String>, Option<String>) {
    let (mut kind, mut data, mut id) = (None, None::<String>, None);
    for line in block.lines() {
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => kind = Some(value.to_owned()),
            "data" => {
                data = Some(match data {
                    Some(d) => format!("{d}\n{value}"),
                    None => value.to_owned(),
                })
            }
            "id" => id = Some(value.to_owned()),
            _ => {}
        }
    }
    (kind, data, id)
}

/// One record of the topic as the soak wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRecord {
    /// The payload's `seq`.
    pub seq: u64,
    /// The payload's `sessionId` (its channel).
    pub session: String,
}

/// Reads every record of `topic` (from the low to the high watermark of each partition): the
/// truth followers and rows are checked against. Call it when nothing produces any more.
pub async fn read_topic(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<Position, TopicRecord>> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || read_topic_blocking(&bootstrap, &topic, timeout))
        .await
        .context("the topic reader panicked")?
}

fn read_topic_blocking(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<Position, TopicRecord>> {
    let deadline = std::time::Instant::now() + timeout;
    let consumer: BaseConsumer = eventstream_testkit::kafka::consumer_config(bootstrap, None)
        .create()
        .context("creating the topic reader")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("metadata of {topic}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    ensure!(!partitions.is_empty(), "{topic} has no partitions");
    let mut assignment = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, Duration::from_secs(10))
            .with_context(|| format!("watermarks of {topic}/{p}"))?;
        if high > low {
            assignment
                .add_partition_offset(topic, *p, Offset::Offset(low))
                .context("building the assignment")?;
            ends.insert(*p, high);
        }
    }
    consumer.assign(&assignment).context("assigning")?;
    let mut out = BTreeMap::new();
    let mut reached: BTreeMap<i32, i64> = BTreeMap::new();
    while ends
        .iter()
        .any(|(p, high)| reached.get(p).is_none_or(|r| r + 1 < *high))
    {
        if std::time::Instant::now() >= deadline {
            bail!("reading {topic}: reached {reached:?} of the ends {ends:?} within {timeout:?}");
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let Ok(message) = message else { continue };
        let position = Position {
            partition: message.partition(),
            offset: message.offset(),
        };
        reached.insert(position.partition, position.offset);
        let payload: Value = serde_json::from_slice(message.payload().unwrap_or_default())
            .with_context(|| format!("the record at {position:?} is not JSON"))?;
        let seq = payload["seq"]
            .as_u64()
            .ok_or_else(|| anyhow!("no seq at {position:?}: {payload}"))?;
        let session = payload["sessionId"].as_str().unwrap_or_default().to_owned();
        out.insert(position, TopicRecord { seq, session });
    }
    Ok(out)
}

/// The records of `channel` (`*`: all) in `truth`.
pub fn of_channel<'a>(
    truth: &'a BTreeMap<Position, TopicRecord>,
    channel: &'a str,
) -> impl Iterator<Item = (&'a Position, &'a TopicRecord)> + 'a {
    truth
        .iter()
        .filter(move |(_, r)| channel == "*" || r.session == channel)
}

/// Whether `log` has accounted for every record of `channel` in `truth` at or above its start.
pub fn caught_up(log: &Log, channel: &str, truth: &BTreeMap<Position, TopicRecord>) -> bool {
    if log.start.is_empty() {
        return false;
    }
    let reached = log.reached();
    of_channel(truth, channel).all(|(pos, _)| {
        reached
            .get(&pos.partition)
            .is_some_and(|r| *r >= pos.offset)
    })
}

/// The promise, for one follower: per partition, from its first `subscribed` position on, it
/// received exactly the topic's records of its channel, in order, each once and with its own
/// payload — except offsets inside a `gap` it was told about.
pub fn check_follower(
    name: &str,
    log: &Log,
    channel: &str,
    truth: &BTreeMap<Position, TopicRecord>,
) -> Result<()> {
    ensure!(
        log.unexpected.is_empty(),
        "{name}: unexpected frames: {:?}",
        log.unexpected
    );
    ensure!(!log.start.is_empty(), "{name}: never subscribed");
    let announced = |pos: &Position| {
        log.gaps
            .iter()
            .any(|(p, from, to)| *p == pos.partition && (*from..*to).contains(&pos.offset))
    };
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    let mut got = BTreeSet::new();
    for (pos, seq) in &log.events {
        if let Some(prev) = last.insert(pos.partition, pos.offset) {
            ensure!(
                pos.offset > prev,
                "{name}: partition {} went from offset {prev} to {} (duplicate or out of order)",
                pos.partition,
                pos.offset
            );
        }
        let record = truth
            .get(pos)
            .with_context(|| format!("{name}: received {pos:?}, which is not in the topic"))?;
        ensure!(
            record.seq == *seq,
            "{name}: {pos:?} carried seq {seq}, the topic holds seq {}",
            record.seq
        );
        ensure!(
            channel == "*" || record.session == channel,
            "{name}: {pos:?} belongs to {}, not to {channel}",
            record.session
        );
        let start = log.start.get(&pos.partition).copied().unwrap_or(0);
        ensure!(
            pos.offset >= start,
            "{name}: {pos:?} is below where it started ({start})"
        );
        got.insert(*pos);
    }
    let holes: Vec<Position> = of_channel(truth, channel)
        .map(|(pos, _)| *pos)
        .filter(|pos| pos.offset >= log.start.get(&pos.partition).copied().unwrap_or(0))
        .filter(|pos| !got.contains(pos) && !announced(pos))
        .collect();
    ensure!(
        holes.is_empty(),
        "{name}: {} records of {channel} never arrived and no gap named them: {:?}",
        holes.len(),
        &holes[..holes.len().min(20)]
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_draws_the_same_schedule() {
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..50)
                .map(|_| Round::draw(&mut rng, 2))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
        // Every kind of fault shows up in a schedule of useful length.
        let rounds = draw(7);
        for fault in [
            Fault::KillSink,
            Fault::TermSink,
            Fault::CrashPostgres,
            Fault::KillBridge(0),
            Fault::KillBridge(1),
        ] {
            assert!(rounds.iter().any(|r| r.fault == fault), "{fault:?}");
        }
    }

    #[test]
    fn sse_blocks_parse_like_event_source() {
        assert_eq!(
            parse_sse_block("id: 0:4,3:7\ndata: {\"a\":1}\n\n"),
            (None, Some("{\"a\":1}".into()), Some("0:4,3:7".into()))
        );
        assert_eq!(
            parse_sse_block("event: gap\ndata: {}\n\n"),
            (Some("gap".into()), Some("{}".into()), None)
        );
        assert_eq!(parse_sse_block(":\n\n"), (None, None, None));
    }

    fn truth() -> BTreeMap<Position, TopicRecord> {
        (0..6)
            .map(|o| {
                (
                    Position {
                        partition: 0,
                        offset: o,
                    },
                    TopicRecord {
                        seq: o as u64,
                        session: format!("session-{}", o % 2),
                    },
                )
            })
            .collect()
    }

    fn log(offsets: &[i64], gaps: &[(i64, i64)]) -> Log {
        Log {
            start: [(0, 1)].into(),
            events: offsets
                .iter()
                .map(|o| {
                    (
                        Position {
                            partition: 0,
                            offset: *o,
                        },
                        *o as u64,
                    )
                })
                .collect(),
            gaps: gaps.iter().map(|(f, t)| (0, *f, *t)).collect(),
            connects: 1,
            unexpected: vec![],
        }
    }

    #[test]
    fn the_follower_check_refuses_holes_and_duplicates_but_not_announced_gaps() {
        let t = truth();
        assert!(check_follower("f", &log(&[1, 2, 3, 4, 5], &[]), "*", &t).is_ok());
        assert!(check_follower("f", &log(&[1, 2, 4, 5], &[]), "*", &t).is_err());
        assert!(check_follower("f", &log(&[1, 2, 4, 5], &[(3, 4)]), "*", &t).is_ok());
        assert!(check_follower("f", &log(&[1, 2, 3, 3, 4, 5], &[]), "*", &t).is_err());
        assert!(check_follower("f", &log(&[1, 3, 5], &[]), "session-1", &t).is_ok());
        assert!(check_follower("f", &log(&[1, 5], &[]), "session-1", &t).is_err());
        assert!(caught_up(&log(&[1, 2, 3, 4, 5], &[]), "*", &t));
        assert!(!caught_up(&log(&[1, 2, 3, 4], &[]), "*", &t));
    }
}
