//! The bridge's Kafka consumer: manually assigned to *every* partition of the stream's topic (no
//! consumer group, so every bridge replica delivers every record), starting at the live end (or
//! the beginning, per config), following partition increases, and publishing each record to the
//! hub exactly once.
//!
//! **Never on a runtime worker.** librdkafka calls that wait (metadata, watermarks, assignment
//! changes) run on Tokio's blocking pool, and the consumer is closed on a thread of its own
//! ([`drop_off_runtime`]): dropping a librdkafka consumer closes its queue, polls until it is
//! closed and joins librdkafka's threads, which must not hold a worker of the runtime that
//! serves the clients.
//!
//! **Retention.** Consumers run with `auto.offset.reset=error`. When a position falls out of the
//! log (retention deleted records the bridge had not read yet), librdkafka stops that partition
//! and reports `AutoOffsetReset`. The consumer then reads the watermarks ([`realign`]), publishes
//! a `retention` gap `[next, low watermark)` for every partition whose next offset is below the
//! low watermark, and assigns every partition again at its next offset clamped to the log.
//! Offset holes that are still inside the log (transaction markers, compacted records) never
//! raise the error, so they are never reported as gaps.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::channel::ChannelSource;
use super::contact::{KafkaContact, probe_interval};
use super::hub::Hub;
use super::metrics::RelayMetrics;
use super::protocol::Positions;
use super::record::{PayloadKind, Record};

/// Most records published to the hub in one go (records already fetched are taken together).
pub const MAX_PUBLISH_BATCH: usize = 256;
/// How often the topic's partitions and the lag are re-read.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Longest one read of the topic's partitions and watermarks may take, all calls together.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the bridge waits for its consumer to close on shutdown.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the consumer cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// librdkafka refused the settings.
    #[error("cannot create the Kafka consumer: {0}")]
    Create(#[source] rdkafka::error::KafkaError),
    /// Metadata or watermarks could not be read.
    #[error("cannot read topic {topic:?} from Kafka: {source}")]
    Metadata {
        /// The topic.
        topic: String,
        /// The broker error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The topic does not exist (yet).
    #[error("topic {0:?} does not exist")]
    NoTopic(String),
    /// Assignment failed.
    #[error("cannot assign the partitions of {topic:?}: {source}")]
    Assign {
        /// The topic.
        topic: String,
        /// The error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A blocking task panicked or was cancelled.
    #[error("metadata task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Turns a Kafka message into a hub record: classifies the payload and derives the channel.
pub fn to_record<M: Message>(msg: &M, source: &ChannelSource) -> Record {
    let payload = Bytes::copy_from_slice(msg.payload().unwrap_or_default());
    let key = msg.key().map(Bytes::copy_from_slice);
    let headers: Vec<(String, Bytes)> = msg
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        Bytes::copy_from_slice(h.value.unwrap_or_default()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let json: Option<serde_json::Value> = if source.needs_json() {
        serde_json::from_slice(&payload).ok()
    } else {
        None
    };
    let kind = if json.is_some() {
        PayloadKind::Json
    } else {
        PayloadKind::of(&payload)
    };
    let channel = source
        .derive(key.as_deref(), json.as_ref(), |name| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_ref())
        })
        .map(Arc::<str>::from);
    Record::new(
        msg.partition(),
        msg.offset(),
        msg.timestamp().to_millis(),
        key,
        payload,
        headers,
        channel,
        kind,
    )
}

/// Settings of an assign-only consumer: a throw-away group id (librdkafka needs one even
/// without a group), no commits, no offset store, and `auto.offset.reset=error`: a position that
/// fell out of retention is reported (`AutoOffsetReset`) instead of silently moved, so that the
/// caller can name what was lost ([`realign`]).
pub fn assign_only(base: &ClientConfig) -> ClientConfig {
    let mut config = base.clone();
    config
        .set(
            "group.id",
            format!("eventstream-bridge-{}", uuid::Uuid::now_v7()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "error");
    if config.get("fetch.wait.max.ms").is_none() {
        config.set("fetch.wait.max.ms", "100");
    }
    config
}

/// Whether `error` is librdkafka's report of a position out of range (see [`assign_only`]).
pub fn is_out_of_range(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)
    )
}

/// Blocking: reads the partitions of `topic` and their (low, high) watermarks, all within
/// `METADATA_TIMEOUT`.
pub fn watermarks<C: Consumer<RelayContext>>(
    consumer: &C,
    topic: &str,
) -> Result<Vec<(i32, i64, i64)>, ConsumerError> {
    let deadline = Instant::now() + METADATA_TIMEOUT;
    let left = || deadline.saturating_duration_since(Instant::now());
    let metadata = consumer
        .fetch_metadata(Some(topic), left())
        .map_err(|source| ConsumerError::Metadata {
            topic: topic.into(),
            source,
        })?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(ConsumerError::NoTopic(topic.into()));
    };
    if t.error().is_some() || t.partitions().is_empty() {
        return Err(ConsumerError::NoTopic(topic.into()));
    }
    let mut out = Vec::with_capacity(t.partitions().len());
    for p in t.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), left())
            .map_err(|source| ConsumerError::Metadata {
                topic: topic.into(),
                source,
            })?;
        out.push((p.id(), low, high));
    }
    out.sort_unstable();
    Ok(out)
}

/// Where to continue after librdkafka reported a position out of range.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Realign {
    /// Per partition, the offset to read next: the expected one, clamped to the log.
    pub resume: Positions,
    /// Per partition, `(from, to)`: offsets that were expected but that Kafka no longer holds.
    pub lost: std::collections::BTreeMap<i32, (i64, i64)>,
    /// Partitions whose expected offset is beyond the end of the log (truncated by the broker);
    /// they continue from the end.
    pub truncated: Vec<i32>,
}

/// Pure: given the next offset expected per partition and the watermarks `(partition, low,
/// high)`, where to continue. Partitions without watermarks are left out.
pub fn realign(next: &Positions, marks: &[(i32, i64, i64)]) -> Realign {
    let mut out = Realign::default();
    for (p, low, high) in marks {
        let Some(&expected) = next.get(p) else {
            continue;
        };
        let resume = if expected < *low {
            out.lost.insert(*p, (expected, *low));
            *low
        } else if expected > *high {
            out.truncated.push(*p);
            *high
        } else {
            expected
        };
        out.resume.insert(*p, resume);
    }
    out
}

/// Blocking: reads the watermarks, plans with [`realign`] and assigns every partition of
/// `next` at its resume offset (replacing the assignment, which restarts the partitions
/// librdkafka stopped).
pub fn reassign<C: Consumer<RelayContext>>(
    consumer: &C,
    topic: &str,
    next: &Positions,
) -> Result<Realign, ConsumerError> {
    let marks = watermarks(consumer, topic)?;
    let plan = realign(next, &marks);
    let mut tpl = TopicPartitionList::new();
    for (p, offset) in &plan.resume {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*offset))
            .map_err(|source| ConsumerError::Assign {
                topic: topic.into(),
                source,
            })?;
    }
    consumer
        .assign(&tpl)
        .map_err(|source| ConsumerError::Assign {
            topic: topic.into(),
            source,
        })?;
    Ok(plan)
}

/// Context of the bridge's consumers (live and replay): librdkafka's out-of-range report is
/// expected with `auto.offset.reset=error` and handled as a retention gap, so it is not logged as
/// an error (the gap is logged and counted where it is handled); every other error is.
pub struct RelayContext;

impl ClientContext for RelayContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AutoOffsetReset)
        ) {
            tracing::debug!(%error, reason, "position out of range (handled as a retention gap)");
        } else {
            tracing::error!(%error, reason, "Kafka client error");
        }
    }
}

impl ConsumerContext for RelayContext {}

/// Drops `value` (a librdkafka client, or whatever holds it) on a thread of its own, off the
/// runtime; the receiver completes once it is dropped. Should the thread not start, `value`
/// is dropped here.
pub fn drop_off_runtime<T: Send + 'static>(value: T) -> oneshot::Receiver<()> {
    let (done, closed) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("es-kafka-close".into())
        .spawn(move || {
            drop(value);
            let _ = done.send(());
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start a thread to close a Kafka client; closed in place");
    }
    closed
}

/// Per partition, the high watermark at start: reaching it means caught up.
pub type ConsumerStartTarget = Positions;

/// The running consumer.
pub struct BridgeConsumer {
    consumer: Arc<StreamConsumer<RelayContext>>,
    topic: String,
    /// Whether partitions are assigned and the start high watermarks reached.
    pub assigned: Arc<AtomicBool>,
    /// Held while the assignment changes (new partitions, re-alignment after retention).
    assignment: Arc<tokio::sync::Mutex<()>>,
    /// When Kafka last answered (readiness).
    contact: Arc<KafkaContact>,
}

impl BridgeConsumer {
    /// Creates the consumer and assigns every partition (waiting, with retries, for the topic
    /// to exist); `earliest` starts from the oldest retained record instead of the live end.
    /// Every answer from Kafka from then on is recorded in `contact`.
    pub async fn start(
        base: &ClientConfig,
        topic: &str,
        earliest: bool,
        hub: &Hub,
        ready: Arc<AtomicBool>,
        contact: Arc<KafkaContact>,
        shutdown: &CancellationToken,
    ) -> Result<(Self, Positions), ConsumerError> {
        let consumer: StreamConsumer<RelayContext> = assign_only(base)
            .create_with_context(RelayContext)
            .map_err(ConsumerError::Create)?;
        let consumer = Arc::new(consumer);
        let (start, target) = match assign_start(&consumer, topic, earliest, shutdown).await {
            Ok(positions) => positions,
            Err(e) => {
                drop(drop_off_runtime(consumer));
                return Err(e);
            }
        };
        contact.touch();
        hub.add_partitions(&start);
        let caught_up = start == target;
        ready.store(caught_up, Ordering::Release);
        tracing::info!(
            topic,
            partitions = start.len(),
            ?start,
            "bridge consumer assigned"
        );
        Ok((
            Self {
                consumer,
                topic: topic.to_string(),
                assigned: ready,
                assignment: Arc::default(),
                contact,
            },
            target,
        ))
    }

    /// Closes the consumer off the runtime ([`drop_off_runtime`]) and waits for it, at most
    /// [`CLOSE_TIMEOUT`].
    pub async fn close(self) {
        let closed = drop_off_runtime(self);
        if tokio::time::timeout(CLOSE_TIMEOUT, closed).await.is_err() {
            tracing::warn!(
                ?CLOSE_TIMEOUT,
                "the Kafka consumer is still closing; not waiting for it"
            );
        }
    }

    /// Consumes until `shutdown`, publishing every record; marks ready once the high watermarks
    /// seen at start are reached. Partition increases and lag are followed by a task of their
    /// own, so that a slow broker answer never holds up delivery.
    pub async fn run(
        &self,
        source: ChannelSource,
        hub: Arc<Hub>,
        metrics: RelayMetrics,
        mut target: Positions,
        shutdown: CancellationToken,
    ) {
        let refresher = tokio::spawn(
            Refresher {
                consumer: self.consumer.clone(),
                topic: self.topic.clone(),
                assignment: self.assignment.clone(),
                hub: hub.clone(),
                metrics: metrics.clone(),
                contact: self.contact.clone(),
            }
            .run(shutdown.clone()),
        );
        // Next offset per partition after what was published: a record below it (librdkafka
        // fetching again what it had already returned) would be a duplicate.
        let mut next = hub.live_positions();
        let mut error_logged = false;
        // An error met while taking a batch, handled right after publishing the batch.
        let mut carried: Option<KafkaError> = None;
        loop {
            let msg = match carried.take() {
                Some(e) => Err(e),
                None => tokio::select! {
                    _ = shutdown.cancelled() => break,
                    msg = self.consumer.recv() => msg,
                },
            };
            match msg {
                Ok(msg) => {
                    error_logged = false;
                    self.contact.touch();
                    // Take what is already fetched too, so that clients get it in one write.
                    let mut batch = vec![Arc::new(to_record(&msg, &source))];
                    drop(msg);
                    while batch.len() < MAX_PUBLISH_BATCH {
                        match self.consumer.recv().now_or_never() {
                            Some(Ok(more)) => batch.push(Arc::new(to_record(&more, &source))),
                            Some(Err(e)) => {
                                // In queue order: after the records before it.
                                carried = Some(e);
                                break;
                            }
                            None => break,
                        }
                    }
                    batch.retain(|record| {
                        let expected = *next
                            .entry(record.partition)
                            .or_insert_with(|| hub.next_offset(record.partition));
                        if record.offset < expected {
                            tracing::debug!(
                                partition = record.partition,
                                offset = record.offset,
                                expected,
                                "skipping a record already published"
                            );
                            return false;
                        }
                        next.insert(record.partition, record.offset + 1);
                        true
                    });
                    if super::metrics::STAGES.enabled() {
                        let now_ms = chrono::Utc::now().timestamp_millis();
                        for record in &batch {
                            if let Some(ts) = record.timestamp_ms {
                                super::metrics::STAGES
                                    .kafka
                                    .record_micros((now_ms - ts).max(0) as u64 * 1000);
                            }
                        }
                    }
                    hub.publish_batch(&batch);
                    metrics.consumed.inc_by(batch.len() as u64);
                    if !target.is_empty() {
                        for record in &batch {
                            if target
                                .get(&record.partition)
                                .is_some_and(|t| record.offset + 1 >= *t)
                            {
                                target.remove(&record.partition);
                            }
                        }
                        if target.is_empty() {
                            self.assigned.store(true, Ordering::Release);
                            tracing::info!(
                                "bridge consumer caught up with the start high watermarks"
                            );
                        }
                    }
                }
                Err(e) if is_out_of_range(&e) => {
                    metrics.out_of_range.inc();
                    if let Some(positions) = self.recover(&hub, &metrics, &shutdown).await {
                        next = positions;
                        // A start target below the low watermark can no longer be reached.
                        target.retain(|p, t| next.get(p).is_none_or(|n| n < t));
                        if target.is_empty() {
                            self.assigned.store(true, Ordering::Release);
                        }
                    }
                }
                Err(e) => {
                    if !error_logged {
                        tracing::warn!(error = %e, "Kafka consumer error (retrying)");
                        error_logged = true;
                    }
                }
            }
        }
        refresher.abort();
        let _ = refresher.await;
    }

    /// After librdkafka reported a position out of range: names what Kafka no longer holds to
    /// every subscription (`retention` gaps), then assigns every partition again at the next
    /// offset the hub expects, clamped to the log. Retries until it succeeds or `shutdown`;
    /// returns the positions consumption continues from.
    async fn recover(
        &self,
        hub: &Hub,
        metrics: &RelayMetrics,
        shutdown: &CancellationToken,
    ) -> Option<Positions> {
        let _assignment = self.assignment.lock().await;
        let mut backoff = Duration::from_millis(200);
        loop {
            let next = hub.live_positions();
            let consumer = self.consumer.clone();
            let topic = self.topic.clone();
            let expected = next.clone();
            let result =
                tokio::task::spawn_blocking(move || reassign(&*consumer, &topic, &expected)).await;
            match result {
                Ok(Ok(plan)) => {
                    self.contact.touch();
                    for (p, (from, to)) in &plan.lost {
                        let subscriptions = hub.publish_gap(*p, *from, *to);
                        metrics.retention_gap(to - from);
                        tracing::warn!(
                            partition = p,
                            from,
                            to,
                            subscriptions,
                            "records deleted by retention before the bridge read them; \
                             retention gap sent to every subscription"
                        );
                    }
                    for p in &plan.truncated {
                        tracing::warn!(
                            partition = p,
                            expected = next.get(p),
                            resume = plan.resume.get(p),
                            "the bridge's position is beyond the end of the partition \
                             (truncated log); continuing from its end"
                        );
                    }
                    if plan.lost.is_empty() && plan.truncated.is_empty() {
                        tracing::info!(
                            "Kafka reported a position out of range, but every position is \
                             within the log now; assigned again at the same positions"
                        );
                    }
                    return Some(plan.resume);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot re-align out-of-range positions; retrying in {backoff:?}");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "re-alignment task failed; retrying in {backoff:?}");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return None,
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }
}

/// Reads the watermarks and assigns the start positions (waiting for the topic to exist), off
/// the runtime. Returns (start positions, high watermarks at start).
async fn assign_start(
    consumer: &Arc<StreamConsumer<RelayContext>>,
    topic: &str,
    earliest: bool,
    shutdown: &CancellationToken,
) -> Result<(Positions, Positions), ConsumerError> {
    let mut backoff = Duration::from_millis(200);
    let marks = loop {
        let c = consumer.clone();
        let t = topic.to_string();
        match tokio::task::spawn_blocking(move || watermarks(&*c, &t)).await? {
            Ok(marks) => break marks,
            Err(e) => {
                tracing::warn!(error = %e, "waiting for the topic; retrying in {backoff:?}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return Err(e),
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    };
    let mut tpl = TopicPartitionList::new();
    let mut start = Positions::new();
    let mut target = Positions::new();
    for (p, low, high) in &marks {
        let from = if earliest { *low } else { *high };
        tpl.add_partition_offset(topic, *p, Offset::Offset(from))
            .map_err(|source| ConsumerError::Assign {
                topic: topic.into(),
                source,
            })?;
        start.insert(*p, from);
        target.insert(*p, *high);
    }
    let c = consumer.clone();
    tokio::task::spawn_blocking(move || c.assign(&tpl))
        .await?
        .map_err(|source| ConsumerError::Assign {
            topic: topic.into(),
            source,
        })?;
    Ok((start, target))
}

/// Follows partition increases, updates the lag gauges and proves Kafka still answers
/// ([`KafkaContact`]), every [`probe_interval`] (at most [`REFRESH_INTERVAL`]).
struct Refresher {
    consumer: Arc<StreamConsumer<RelayContext>>,
    topic: String,
    assignment: Arc<tokio::sync::Mutex<()>>,
    hub: Arc<Hub>,
    metrics: RelayMetrics,
    contact: Arc<KafkaContact>,
}

impl Refresher {
    async fn run(self, shutdown: CancellationToken) {
        let every = probe_interval(self.contact.unready_after());
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            self.refresh().await;
        }
    }

    async fn refresh(&self) {
        let c = self.consumer.clone();
        let topic = self.topic.clone();
        let marks = match tokio::task::spawn_blocking(move || watermarks(&*c, &topic)).await {
            Ok(Ok(marks)) => {
                self.contact.touch();
                marks
            }
            Ok(Err(e)) => {
                tracing::warn!(
                    error = %e,
                    silent_for = ?self.contact.silent_for(),
                    unready_after = ?self.contact.unready_after(),
                    "cannot refresh partitions"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "refresh task failed");
                return;
            }
        };
        let known = self.hub.partitions();
        let live = self.hub.live_positions();
        let mut added = TopicPartitionList::new();
        let mut start = Positions::new();
        for (p, low, high) in &marks {
            if !known.contains_key(p) {
                // A partition created after we started: all of it is new.
                if added
                    .add_partition_offset(&self.topic, *p, Offset::Offset(*low))
                    .is_ok()
                {
                    start.insert(*p, *low);
                }
            } else {
                let position = live.get(p).copied().unwrap_or(*high);
                self.metrics.set_lag(*p, (high - position).max(0));
            }
        }
        if start.is_empty() {
            return;
        }
        let _assignment = self.assignment.lock().await;
        let c = self.consumer.clone();
        match tokio::task::spawn_blocking(move || c.incremental_assign(&added)).await {
            Ok(Ok(())) => {
                self.hub.add_partitions(&start);
                tracing::info!(?start, "following new partitions");
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot assign new partitions"),
            Err(e) => tracing::warn!(error = %e, "assignment task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realign_names_what_retention_deleted_and_nothing_else() {
        let next: Positions = [(0, 5), (1, 100), (2, 50), (3, 7)].into();
        let marks = [(0, 40, 90), (1, 10, 100), (2, 0, 30), (3, 7, 7), (9, 0, 5)];
        let plan = realign(&next, &marks);
        assert_eq!(
            plan.lost,
            [(0, (5, 40))].into(),
            "only partition 0 lost records"
        );
        assert_eq!(plan.truncated, [2]);
        assert_eq!(plan.resume, [(0, 40), (1, 100), (2, 30), (3, 7)].into());
    }

    #[test]
    fn consumers_report_out_of_range_positions() {
        let config = assign_only(&ClientConfig::new());
        assert_eq!(config.get("auto.offset.reset"), Some("error"));
        assert!(is_out_of_range(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::AutoOffsetReset
        )));
        assert!(!is_out_of_range(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::AllBrokersDown
        )));
    }
}
