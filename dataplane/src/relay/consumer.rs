//! The bridge's Kafka consumer: manually assigned to *every* partition of the stream's topic (no
//! consumer group, so every bridge replica delivers every record), starting at the live end (or
//! the beginning, per config), following partition increases, and publishing each record to the
//! hub exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::channel::ChannelSource;
use super::hub::Hub;
use super::metrics::RelayMetrics;
use super::protocol::Positions;
use super::record::{PayloadKind, Record};

/// Most records published to the hub in one go (records already fetched are taken together).
pub const MAX_PUBLISH_BATCH: usize = 256;
/// How often the topic's partitions and the lag are re-read.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(10);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

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
/// without a group), no commits, no offset store.
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
        // Only used when a position falls out of retention: keep as much as still exists.
        .set("auto.offset.reset", "earliest");
    if config.get("fetch.wait.max.ms").is_none() {
        config.set("fetch.wait.max.ms", "100");
    }
    config
}

/// Reads the partitions of `topic` and their (low, high) watermarks.
pub fn watermarks<C: Consumer>(
    consumer: &C,
    topic: &str,
) -> Result<Vec<(i32, i64, i64)>, ConsumerError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
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
            .fetch_watermarks(topic, p.id(), METADATA_TIMEOUT)
            .map_err(|source| ConsumerError::Metadata {
                topic: topic.into(),
                source,
            })?;
        out.push((p.id(), low, high));
    }
    out.sort_unstable();
    Ok(out)
}

/// Per partition, the high watermark at start: reaching it means caught up.
pub type ConsumerStartTarget = Positions;

/// The running consumer.
pub struct BridgeConsumer {
    consumer: Arc<StreamConsumer>,
    topic: String,
    /// Whether partitions are assigned and the start high watermarks reached.
    pub assigned: Arc<AtomicBool>,
}

impl BridgeConsumer {
    /// Creates the consumer and assigns every partition (waiting, with retries, for the topic
    /// to exist); `earliest` starts from the oldest retained record instead of the live end.
    pub async fn start(
        base: &ClientConfig,
        topic: &str,
        earliest: bool,
        hub: &Hub,
        ready: Arc<AtomicBool>,
        shutdown: &CancellationToken,
    ) -> Result<(Self, Positions), ConsumerError> {
        let consumer: StreamConsumer = assign_only(base).create().map_err(ConsumerError::Create)?;
        let consumer = Arc::new(consumer);
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
        consumer
            .assign(&tpl)
            .map_err(|source| ConsumerError::Assign {
                topic: topic.into(),
                source,
            })?;
        hub.add_partitions(&start);
        let caught_up = start == target;
        ready.store(caught_up, Ordering::Release);
        tracing::info!(
            topic,
            partitions = marks.len(),
            ?start,
            "bridge consumer assigned"
        );
        Ok((
            Self {
                consumer,
                topic: topic.to_string(),
                assigned: ready,
            },
            target,
        ))
    }

    /// Consumes until `shutdown`, publishing every record; marks ready once the high watermarks
    /// seen at start are reached.
    pub async fn run(
        &self,
        source: ChannelSource,
        hub: Arc<Hub>,
        metrics: RelayMetrics,
        mut target: Positions,
        shutdown: CancellationToken,
    ) {
        let mut last_refresh = tokio::time::Instant::now();
        let mut error_logged = false;
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(last_refresh + REFRESH_INTERVAL) => {
                    last_refresh = tokio::time::Instant::now();
                    self.refresh(&hub, &metrics).await;
                    continue;
                }
                msg = self.consumer.recv() => msg,
            };
            match msg {
                Ok(msg) => {
                    error_logged = false;
                    // Take what is already fetched too, so that clients get it in one write.
                    let mut batch = vec![Arc::new(to_record(&msg, &source))];
                    drop(msg);
                    while batch.len() < MAX_PUBLISH_BATCH {
                        match self.consumer.recv().now_or_never() {
                            Some(Ok(more)) => batch.push(Arc::new(to_record(&more, &source))),
                            _ => break,
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
                Err(e) => {
                    if !error_logged {
                        tracing::warn!(error = %e, "Kafka consumer error (retrying)");
                        error_logged = true;
                    }
                }
            }
        }
    }

    /// Follows partition increases and updates the lag gauges.
    async fn refresh(&self, hub: &Hub, metrics: &RelayMetrics) {
        let c = self.consumer.clone();
        let topic = self.topic.clone();
        let marks = match tokio::task::spawn_blocking(move || watermarks(&*c, &topic)).await {
            Ok(Ok(marks)) => marks,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot refresh partitions");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "refresh task failed");
                return;
            }
        };
        let known = hub.partitions();
        let live = hub.live_positions();
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
                metrics.set_lag(*p, (high - position).max(0));
            }
        }
        if !start.is_empty() {
            match self.consumer.incremental_assign(&added) {
                Ok(()) => {
                    hub.add_partitions(&start);
                    tracing::info!(?start, "following new partitions");
                }
                Err(e) => tracing::warn!(error = %e, "cannot assign new partitions"),
            }
        }
    }
}
