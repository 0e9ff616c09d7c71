//! The Kafka side: a consumer-group member (cooperative-sticky) on its own thread that positions
//! every partition it is given at the offset stored in PostgreSQL, batches records, hands batches
//! to the [`writer`](super::writer) and pauses everything while the database is unavailable.
//!
//! Positions come only from PostgreSQL: on assignment the rebalance callback reads them and
//! assigns at exactly those offsets; after a failed batch every partition is paused, the open
//! batch is dropped and, once the database answers again, each partition is sought to its stored
//! offset and resumed. Kafka's committed offsets are written after each database commit for lag
//! tooling only, and never read.
//!
//! The thread is a plain `std` thread polling a `BaseConsumer`: the rebalance callback runs on it
//! and may block briefly on the database, which is safe because librdkafka heartbeats on its own
//! threads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use eventstream_crds::v1alpha1::PayloadFormat;
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::SinkError;
use super::backend::{Command, Outcome, Watermarks};
use super::backoff::Backoff;
use super::batch::BatchBuilder;
use super::metrics::SinkMetrics;
use super::record::{Record, classify};
use super::writer::WRITE_TIMEOUT;

/// Batches handed to the writer and not yet answered: one being written, one waiting.
const MAX_IN_FLIGHT: usize = 2;
/// Longest single `poll`, so shutdown and retries are noticed promptly.
const POLL_SLICE: Duration = Duration::from_millis(100);
/// Longest wait for one partition's watermarks when positioning it.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(5);
/// Minimum time between two identical Kafka error logs.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What the consumer thread needs from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The stream's topic.
    pub topic: String,
    /// `sink.consumerGroup`.
    pub group: String,
    /// `sink.maxRows`.
    pub max_rows: usize,
    /// `sink.maxDelay`.
    pub max_delay: Duration,
    /// Record bytes per batch before it is written regardless of `max_rows`.
    pub max_batch_bytes: usize,
    /// Payloads above this go to the dead-letter topic.
    pub max_payload_bytes: usize,
    /// `sink.payload`.
    pub payload: PayloadFormat,
    /// How long shutdown waits for the last batch.
    pub shutdown_grace: Duration,
    /// `group.instance.id`: static group membership, see [`group_instance_id`].
    pub group_instance_id: Option<String>,
}

/// Set it to give the sink a static group membership under this id (it wins over the pod name).
pub const ENV_GROUP_INSTANCE_ID: &str = "EVENTSTREAM_GROUP_INSTANCE_ID";

/// The session timeout of a static member: how long its partitions wait for it after it died
/// for good (a deleted pod; a rollout, since a static member does not leave the group on
/// shutdown). A container restart within it takes its partitions back at once.
pub const STATIC_SESSION_TIMEOUT_MS: &str = "20000";

/// The sink's `group.instance.id`, from the environment: `EVENTSTREAM_GROUP_INSTANCE_ID`, else
/// `POD_NAME`, else, in a Kubernetes pod (`KUBERNETES_SERVICE_HOST` set), `HOSTNAME`, which
/// Kubernetes sets to the pod name. A pod name survives a container restart, so a sink that
/// crashed and restarts rejoins as the same member and gets its partitions back at once instead
/// of waiting for its old session to expire. Outside a pod the host name may be shared by several
/// sinks (which would fence each other), so there is no fallback: membership stays dynamic.
pub fn group_instance_id(env: impl Fn(&str) -> Option<String>) -> Option<String> {
    let set = |name: &str| {
        env(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    set(ENV_GROUP_INSTANCE_ID)
        .or_else(|| set("POD_NAME"))
        .or_else(|| set("KUBERNETES_SERVICE_HOST").and_then(|_| set("HOSTNAME")))
}

/// Readiness flags the consumer maintains.
#[derive(Clone)]
pub struct Flags {
    /// PostgreSQL is taking writes (not paused).
    pub postgres: Arc<AtomicBool>,
    /// The topic exists.
    pub topic: Arc<AtomicBool>,
}

/// Consumer settings from the shared Kafka settings plus the sink's group semantics. With an
/// `instance` id (and no `group.instance.id` in the Kafka properties) the member is static.
pub fn consumer_config(
    mut base: ClientConfig,
    group: &str,
    instance: Option<&str>,
) -> ClientConfig {
    if let Some(id) = instance
        && base.get("group.instance.id").is_none()
    {
        base.set("group.instance.id", id);
    }
    let session_timeout = if base.get("group.instance.id").is_some() {
        STATIC_SESSION_TIMEOUT_MS
    } else {
        "30000"
    };
    let defaults = [
        ("auto.offset.reset", "earliest"),
        ("statistics.interval.ms", "5000"),
        ("session.timeout.ms", session_timeout),
    ];
    for (key, value) in defaults {
        if base.get(key).is_none() {
            base.set(key, value);
        }
    }
    base.set("group.id", group)
        .set("partition.assignment.strategy", "cooperative-sticky")
        // Offsets live in PostgreSQL; Kafka's are written by hand, after the database commit.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    base
}

struct PartitionState {
    /// Sought to (or assigned at) the stored offset since the last failure.
    positioned: bool,
    /// The next offset the consumer expects; a new slice starts covering from here.
    next: i64,
}

struct Engine {
    settings: Settings,
    partitions: BTreeMap<i32, PartitionState>,
    builder: BatchBuilder,
    generation: u64,
    in_flight: usize,
    commands: tokio::sync::mpsc::Sender<Command>,
    outcomes: std::sync::mpsc::Receiver<Outcome>,
    recovering: bool,
    retry_at: Instant,
    backoff: Backoff,
    flags: Flags,
    metrics: SinkMetrics,
    /// Stored `next_offset` of owned partitions, for the lag gauge.
    stored: Arc<Mutex<BTreeMap<i32, i64>>>,
}

/// The consumer's librdkafka context: rebalance and statistics callbacks.
pub struct SinkContext {
    engine: Mutex<Engine>,
    topic: String,
    stored: Arc<Mutex<BTreeMap<i32, i64>>>,
    metrics: SinkMetrics,
    last_error: Mutex<Option<(String, Instant)>>,
}

type SinkConsumer = BaseConsumer<SinkContext>;

impl Engine {
    /// The positions stored in PostgreSQL, checked against the partitions' watermarks so that a
    /// re-created topic restarts from its beginning instead of being skipped (see
    /// [`Writer::positions`](super::writer::Writer::positions)).
    fn lookup(
        &self,
        consumer: &SinkConsumer,
        partitions: &[i32],
    ) -> Result<BTreeMap<i32, i64>, SinkError> {
        let mut watermarks = Watermarks::new();
        for p in partitions {
            // A partition Kafka does not answer for is not checked (nothing is moved without
            // evidence); the check runs again on the next assignment or reposition.
            match consumer.fetch_watermarks(&self.settings.topic, *p, WATERMARK_TIMEOUT) {
                Ok(w) => {
                    watermarks.insert(*p, w);
                }
                Err(e) => {
                    tracing::debug!(partition = p, error = %e, "no watermarks; the stored position is used unchecked");
                }
            }
        }
        let (reply, answer) = std::sync::mpsc::channel();
        self.commands
            .blocking_send(Command::Positions(partitions.to_vec(), watermarks, reply))
            .map_err(|_| SinkError::WriterGone)?;
        answer
            .recv_timeout(WRITE_TIMEOUT + Duration::from_secs(5))
            .map_err(|_| SinkError::Timeout {
                action: "reading stored positions",
                seconds: WRITE_TIMEOUT.as_secs(),
            })?
    }

    fn tpl(&self, partitions: impl IntoIterator<Item = i32>) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(&self.settings.topic, p);
        }
        tpl
    }

    fn dispatch(&mut self) {
        let Some(batch) = self.builder.take(self.generation) else {
            return;
        };
        match self.commands.try_send(Command::Write(batch)) {
            Ok(()) => self.in_flight += 1,
            Err(tokio::sync::mpsc::error::TrySendError::Full(Command::Write(batch))) => {
                // Never happens while in_flight < MAX_IN_FLIGHT; wait rather than drop.
                if self.commands.blocking_send(Command::Write(batch)).is_ok() {
                    self.in_flight += 1;
                }
            }
            Err(_) => tracing::error!("the database writer has stopped; batch not written"),
        }
    }

    fn wait_outcome(&mut self, consumer: &SinkConsumer, timeout: Duration) -> bool {
        match self.outcomes.recv_timeout(timeout) {
            Ok(outcome) => {
                self.handle(consumer, outcome);
                true
            }
            Err(_) => false,
        }
    }

    fn drain(&mut self, consumer: &SinkConsumer) {
        while let Ok(outcome) = self.outcomes.try_recv() {
            self.handle(consumer, outcome);
        }
    }

    /// Dispatches the open batch and waits (up to `timeout`) for every batch in flight.
    fn flush(&mut self, consumer: &SinkConsumer, timeout: Duration) {
        if !self.recovering {
            self.dispatch();
        }
        let deadline = Instant::now() + timeout;
        while self.in_flight > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    batches = self.in_flight,
                    "gave up waiting for batches in flight; they commit or roll back on their own"
                );
                break;
            }
            if !self.wait_outcome(consumer, left) && self.in_flight > 0 {
                continue;
            }
        }
    }

    fn handle(&mut self, consumer: &SinkConsumer, outcome: Outcome) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if outcome.generation != self.generation {
            return;
        }
        match outcome.result {
            Ok(committed) => {
                let mut tpl = TopicPartitionList::new();
                let mut stored = self.stored.lock();
                for (p, next) in &committed.next {
                    if self.partitions.contains_key(p) {
                        stored.insert(*p, *next);
                        let _ = tpl.add_partition_offset(
                            &self.settings.topic,
                            *p,
                            Offset::Offset(*next),
                        );
                    }
                }
                drop(stored);
                if tpl.count() > 0 {
                    // For lag tooling only; a failure here loses nothing.
                    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                        tracing::debug!(error = %e, "committing offsets to Kafka for lag visibility failed");
                    }
                }
            }
            Err(e) => self.enter_recovery(consumer, &e),
        }
    }

    fn enter_recovery(&mut self, consumer: &SinkConsumer, error: &SinkError) {
        self.generation += 1;
        self.builder.clear();
        for state in self.partitions.values_mut() {
            state.positioned = false;
        }
        let owned: Vec<i32> = self.partitions.keys().copied().collect();
        if !owned.is_empty()
            && let Err(e) = consumer.pause(&self.tpl(owned.iter().copied()))
        {
            tracing::warn!(error = %e, "pausing partitions failed");
        }
        let delay = self.backoff.next_delay();
        self.retry_at = Instant::now() + delay;
        if !self.recovering {
            tracing::error!(
                error = %error,
                partitions = ?owned,
                "batch not written; consumption paused until PostgreSQL answers, then resumes at the stored offsets"
            );
        }
        self.recovering = true;
        self.metrics.paused.set(1);
        self.flags.postgres.store(false, Ordering::Release);
    }

    /// Writes what was read, then pauses `partition` until [`reposition`](Self::reposition)
    /// seeks it to its stored offset.
    fn reposition_one(&mut self, consumer: &SinkConsumer, partition: i32) {
        let grace = self.settings.shutdown_grace;
        self.flush(consumer, grace);
        if let Some(state) = self.partitions.get_mut(&partition) {
            state.positioned = false;
        }
        if let Err(e) = consumer.pause(&self.tpl([partition])) {
            tracing::warn!(partition, error = %e, "pausing a partition failed");
        }
        self.recovering = true;
        self.retry_at = Instant::now();
    }

    /// Seeks every unpositioned partition to its stored offset and resumes it.
    fn reposition(&mut self, consumer: &SinkConsumer) {
        let waiting: Vec<i32> = self
            .partitions
            .iter()
            .filter(|(_, s)| !s.positioned)
            .map(|(p, _)| *p)
            .collect();
        if !waiting.is_empty() {
            let positions = match self.lookup(consumer, &waiting) {
                Ok(positions) => positions,
                Err(e) => {
                    let delay = self.backoff.next_delay();
                    self.retry_at = Instant::now() + delay;
                    tracing::warn!(error = %e, retry_in = ?delay, "PostgreSQL still unavailable");
                    return;
                }
            };
            let mut seek = TopicPartitionList::new();
            for (p, n) in &positions {
                let _ = seek.add_partition_offset(&self.settings.topic, *p, Offset::Offset(*n));
            }
            let sought = match consumer.seek_partitions(seek, Duration::from_secs(10)) {
                Ok(result) => result,
                Err(e) => {
                    self.retry_at = Instant::now() + self.backoff.next_delay();
                    tracing::warn!(error = %e, "seeking to the stored offsets failed; retrying");
                    return;
                }
            };
            let mut resume = TopicPartitionList::new();
            let mut stored = self.stored.lock();
            for elem in sought.elements_for_topic(&self.settings.topic) {
                let p = elem.partition();
                let (Some(state), Some(n)) = (self.partitions.get_mut(&p), positions.get(&p))
                else {
                    continue;
                };
                match elem.error() {
                    Ok(()) => {
                        state.positioned = true;
                        state.next = *n;
                        stored.insert(p, *n);
                        resume.add_partition(&self.settings.topic, p);
                    }
                    Err(e) => tracing::warn!(partition = p, error = %e, "seek failed; retrying"),
                }
            }
            drop(stored);
            if resume.count() > 0
                && let Err(e) = consumer.resume(&resume)
            {
                tracing::warn!(error = %e, "resuming partitions failed");
            }
        }
        if self.partitions.values().all(|s| s.positioned) {
            if self.recovering {
                tracing::info!("PostgreSQL is back; consumption resumed at the stored offsets");
            }
            self.recovering = false;
            self.backoff.reset();
            self.metrics.paused.set(0);
            self.flags.postgres.store(true, Ordering::Release);
        } else {
            self.retry_at = Instant::now() + self.backoff.next_delay();
        }
    }

    fn on_message(&mut self, consumer: &SinkConsumer, message: &BorrowedMessage<'_>) {
        if message.topic() != self.settings.topic {
            return;
        }
        let partition = message.partition();
        let offset = message.offset();
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        if !state.positioned {
            // Fetched before a reposition: it is read again in order.
            return;
        }
        if offset < state.next {
            // librdkafka moved the partition back by itself: its position was out of range and
            // `auto.offset.reset` took it to the start, which happens when the topic was deleted
            // and created again under the consumer. Position it from PostgreSQL again, where the
            // lookup compares the stored position with the watermarks.
            tracing::warn!(
                partition,
                offset,
                expected = state.next,
                "Kafka delivered an offset below the expected one; repositioning the partition from PostgreSQL"
            );
            self.reposition_one(consumer, partition);
            return;
        }
        let headers = message
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        let timestamp_ms = message
            .timestamp()
            .to_millis()
            .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
        let record = Record {
            partition,
            offset,
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms,
        };
        let from = state.next;
        state.next = offset + 1;
        let entry = classify(
            record,
            self.settings.payload,
            self.settings.max_payload_bytes,
        );
        self.builder.push(from, entry, Instant::now());
    }
}

fn partitions_of(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements_for_topic(topic)
        .iter()
        .map(|e| e.partition())
        .collect()
}

impl SinkContext {
    fn assign(&self, consumer: &SinkConsumer, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let mut engine = self.engine.lock();
        let parts = partitions_of(tpl, &self.topic);
        let mut unpositioned = Vec::new();
        match engine.lookup(consumer, &parts) {
            Ok(positions) => {
                let mut stored = self.stored.lock();
                for p in &parts {
                    match positions.get(p) {
                        Some(n) => {
                            let _ = tpl.set_partition_offset(&self.topic, *p, Offset::Offset(*n));
                            stored.insert(*p, *n);
                            engine.partitions.insert(
                                *p,
                                PartitionState {
                                    positioned: true,
                                    next: *n,
                                },
                            );
                        }
                        None => unpositioned.push(*p),
                    }
                }
                tracing::info!(partitions = ?positions, "assigned partitions at the offsets stored in PostgreSQL");
            }
            Err(e) => {
                tracing::warn!(error = %e, partitions = ?parts, "cannot read stored offsets of newly assigned partitions; they stay paused until PostgreSQL answers");
                unpositioned = parts.clone();
            }
        }
        for p in &unpositioned {
            engine.partitions.insert(
                *p,
                PartitionState {
                    positioned: false,
                    next: 0,
                },
            );
        }
        let result = if cooperative {
            consumer.incremental_assign(tpl)
        } else {
            consumer.assign(tpl)
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "assigning partitions failed");
        }
        if !unpositioned.is_empty() {
            if let Err(e) = consumer.pause(&engine.tpl(unpositioned.iter().copied())) {
                tracing::warn!(error = %e, "pausing unpositioned partitions failed");
            }
            if !engine.recovering {
                engine.recovering = true;
                engine.retry_at = Instant::now() + engine.backoff.next_delay();
                engine.metrics.paused.set(1);
                engine.flags.postgres.store(false, Ordering::Release);
            }
        }
    }

    fn revoke(&self, consumer: &SinkConsumer, tpl: &TopicPartitionList) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let mut engine = self.engine.lock();
        let parts = partitions_of(tpl, &self.topic);
        // Write what was read from these partitions before giving them up, so the next owner
        // starts where we stopped (not needed for correctness: the offset fence is).
        let grace = engine.settings.shutdown_grace;
        engine.flush(consumer, grace);
        let mut stored = self.stored.lock();
        for p in &parts {
            engine.partitions.remove(p);
            stored.remove(p);
            self.metrics.forget_partition(*p);
        }
        drop(stored);
        tracing::info!(partitions = ?parts, "partitions revoked");
        let result = if cooperative {
            consumer.incremental_unassign(tpl)
        } else {
            consumer.unassign()
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "unassigning partitions failed");
        }
    }

    fn log_kafka_error(&self, text: String) {
        let mut last = self.last_error.lock();
        let repeat = last
            .as_ref()
            .is_some_and(|(t, at)| *t == text && at.elapsed() < ERROR_LOG_INTERVAL);
        if !repeat {
            tracing::warn!(error = %text, "Kafka");
            *last = Some((text, Instant::now()));
        }
    }
}

impl ClientContext for SinkContext {
    fn stats_raw(&self, statistics: &[u8]) {
        let Ok(stats) = serde_json::from_slice::<serde_json::Value>(statistics) else {
            return;
        };
        let Some(partitions) = stats
            .get("topics")
            .and_then(|t| t.get(&self.topic))
            .and_then(|t| t.get("partitions"))
            .and_then(|p| p.as_object())
        else {
            return;
        };
        let stored = self.stored.lock();
        for (p, next) in stored.iter() {
            let end = partitions
                .get(&p.to_string())
                .and_then(|s| s.get("ls_offset").or_else(|| s.get("hi_offset")))
                .and_then(serde_json::Value::as_i64);
            if let Some(end) = end.filter(|e| *e >= 0) {
                self.metrics.set_lag(*p, (end - next).max(0));
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log_kafka_error(format!("{error}: {reason}"));
    }
}

impl ConsumerContext for SinkContext {
    fn rebalance(
        &self,
        consumer: &SinkConsumer,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, tpl),
            other => {
                tracing::error!(error = ?RDKafkaErrorCode::from(other), "rebalance error; dropping the assignment");
                let all = tpl.clone();
                self.revoke(consumer, &all);
            }
        }
    }
}

/// Everything the consumer thread owns.
pub struct ConsumerParts {
    /// Settings from the config.
    pub settings: Settings,
    /// Shared Kafka client settings (bootstrap, security, extra properties).
    pub kafka: ClientConfig,
    /// Commands to the writer task.
    pub commands: tokio::sync::mpsc::Sender<Command>,
    /// Write outcomes from the writer task.
    pub outcomes: std::sync::mpsc::Receiver<Outcome>,
    /// Metrics.
    pub metrics: SinkMetrics,
    /// Readiness flags.
    pub flags: Flags,
    /// Stop signal.
    pub shutdown: CancellationToken,
}

/// Waits until the topic exists (logging why not), or shutdown. Returns `false` on shutdown.
fn wait_for_topic(
    consumer: &SinkConsumer,
    topic: &str,
    flags: &Flags,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    loop {
        let problem = match consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) {
            Ok(metadata) => match metadata.topics().iter().find(|t| t.name() == topic) {
                Some(t) => match t.error() {
                    None if !t.partitions().is_empty() => {
                        flags.topic.store(true, Ordering::Release);
                        return true;
                    }
                    None => "it has no partitions".to_string(),
                    Some(code) => match RDKafkaErrorCode::from(code) {
                        RDKafkaErrorCode::UnknownTopicOrPartition
                        | RDKafkaErrorCode::UnknownTopic => "it does not exist".to_string(),
                        other => other.to_string(),
                    },
                },
                None => "it does not exist".to_string(),
            },
            Err(e) => format!("the brokers did not answer ({e})"),
        };
        flags.topic.store(false, Ordering::Release);
        let delay = backoff.next_delay();
        tracing::error!(
            topic,
            retry_in = ?delay,
            "cannot consume topic {topic}: {problem}; waiting for it (the operator creates it from the EventStream)"
        );
        let until = Instant::now() + delay;
        while Instant::now() < until {
            if shutdown.is_cancelled() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs the consumer until `shutdown`; blocking, for a dedicated thread.
pub fn run(parts: ConsumerParts) -> Result<(), SinkError> {
    let ConsumerParts {
        settings,
        kafka,
        commands,
        outcomes,
        metrics,
        flags,
        shutdown,
    } = parts;
    let topic = settings.topic.clone();
    let stored = Arc::new(Mutex::new(BTreeMap::new()));
    let engine = Engine {
        builder: BatchBuilder::new(
            settings.max_rows,
            settings.max_batch_bytes,
            settings.max_delay,
        ),
        settings: settings.clone(),
        partitions: BTreeMap::new(),
        generation: 0,
        in_flight: 0,
        commands,
        outcomes,
        recovering: false,
        retry_at: Instant::now(),
        backoff: Backoff::default(),
        flags: flags.clone(),
        metrics: metrics.clone(),
        stored: stored.clone(),
    };
    let context = SinkContext {
        engine: Mutex::new(engine),
        topic: topic.clone(),
        stored,
        metrics,
        last_error: Mutex::new(None),
    };
    let client_config = consumer_config(
        kafka,
        &settings.group,
        settings.group_instance_id.as_deref(),
    );
    let instance = client_config.get("group.instance.id").map(str::to_string);
    let consumer: SinkConsumer = client_config
        .create_with_context(context)
        .map_err(|source| SinkError::Kafka {
            action: "creating the consumer".into(),
            source,
        })?;
    if !wait_for_topic(&consumer, &topic, &flags, &shutdown) {
        return Ok(());
    }
    consumer
        .subscribe(&[&topic])
        .map_err(|source| SinkError::Kafka {
            action: format!("subscribing to {topic}"),
            source,
        })?;
    flags.postgres.store(true, Ordering::Release);
    tracing::info!(
        topic,
        group = %settings.group,
        instance = %instance.as_deref().unwrap_or("none (dynamic membership)"),
        "sink consuming"
    );

    while !shutdown.is_cancelled() {
        let timeout = {
            let mut engine = consumer.context().engine.lock();
            engine.drain(&consumer);
            let now = Instant::now();
            if engine.recovering && now >= engine.retry_at {
                engine.reposition(&consumer);
            }
            if !engine.recovering && engine.builder.is_due(now) {
                if engine.in_flight >= MAX_IN_FLIGHT {
                    engine.wait_outcome(&consumer, POLL_SLICE);
                    continue;
                }
                engine.dispatch();
            }
            let until_due = engine
                .builder
                .deadline()
                .map_or(POLL_SLICE, |d| d.saturating_duration_since(now));
            until_due.min(POLL_SLICE)
        };
        match consumer.poll(timeout) {
            None => {}
            Some(Ok(message)) => consumer
                .context()
                .engine
                .lock()
                .on_message(&consumer, &message),
            Some(Err(e)) => {
                if let KafkaError::MessageConsumption(
                    RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic,
                ) = e
                {
                    flags.topic.store(false, Ordering::Release);
                }
                consumer.context().log_kafka_error(e.to_string());
            }
        }
    }

    tracing::info!("shutting down: writing the open batch");
    {
        let mut engine = consumer.context().engine.lock();
        let grace = engine.settings.shutdown_grace;
        engine.flush(&consumer, grace);
        let positions: Vec<(i32, i64)> = consumer
            .context()
            .stored
            .lock()
            .iter()
            .map(|(p, n)| (*p, *n))
            .collect();
        let mut tpl = TopicPartitionList::new();
        for (p, n) in positions {
            let _ = tpl.add_partition_offset(&topic, p, Offset::Offset(n));
        }
        if tpl.count() > 0
            && let Err(e) = consumer.commit(&tpl, CommitMode::Sync)
        {
            tracing::debug!(error = %e, "final Kafka offset commit failed (lag visibility only)");
        }
    }
    // Dropping the consumer closes it: a dynamic member leaves the group, so the partitions move
    // at once; a static member stays until its session times out (it may be a container that
    // restarts under the same pod name).
    drop(consumer);
    tracing::info!("sink stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_instance_id_is_the_pod_name_and_never_a_shared_host_name() {
        let pod = [
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
            ("HOSTNAME", "telemetry-sink-7d9-x2"),
        ];
        assert_eq!(
            group_instance_id(env(&pod)).as_deref(),
            Some("telemetry-sink-7d9-x2")
        );
        let named = [("POD_NAME", "sink-a"), ("HOSTNAME", "h")];
        assert_eq!(group_instance_id(env(&named)).as_deref(), Some("sink-a"));
        let explicit = [(ENV_GROUP_INSTANCE_ID, "mine"), ("POD_NAME", "sink-a")];
        assert_eq!(group_instance_id(env(&explicit)).as_deref(), Some("mine"));
        // A laptop or CI host: several sinks may share the host name.
        assert_eq!(group_instance_id(env(&[("HOSTNAME", "laptop")])), None);
        assert_eq!(group_instance_id(env(&[("POD_NAME", " ")])), None);
    }

    #[test]
    fn a_static_member_gets_its_own_session_timeout_unless_configured() {
        let c = consumer_config(ClientConfig::new(), "g", Some("sink-a"));
        assert_eq!(c.get("group.instance.id"), Some("sink-a"));
        assert_eq!(c.get("session.timeout.ms"), Some(STATIC_SESSION_TIMEOUT_MS));
        let c = consumer_config(ClientConfig::new(), "g", None);
        assert_eq!(c.get("group.instance.id"), None);
        assert_eq!(c.get("session.timeout.ms"), Some("30000"));
        let mut base = ClientConfig::new();
        base.set("group.instance.id", "from-properties")
            .set("session.timeout.ms", "45000");
        let c = consumer_config(base, "g", Some("sink-a"));
        assert_eq!(c.get("group.instance.id"), Some("from-properties"));
        assert_eq!(c.get("session.timeout.ms"), Some("45000"));
    }
}
