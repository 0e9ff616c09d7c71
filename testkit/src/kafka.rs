//! Kafka client helpers that work against [`TansuBroker`](crate::TansuBroker),
//! [`MockKafka`](crate::MockKafka) or any other bootstrap address.
//!
//! * [`produce`] sends records with a `FutureProducer` and waits for every
//!   delivery report.
//! * [`consume_all`] reads a topic from the beginning of all its partitions
//!   with an *assigned* consumer (no consumer group, no commits), until it
//!   has the expected number of records or the timeout passes.
//!
//! Both are `async` and need a Tokio runtime (`#[tokio::test]`); the few
//! blocking librdkafka calls they make run on Tokio's blocking pool so the
//! code under test can keep running on the same runtime.
//!
//! The configs from [`consumer_config`] set `fetch.wait.max.ms=5`: tansu
//! answers every Fetch only after sleeping `fetch.wait.max.ms` (or half of it
//! when it is ≥ 250 ms), so librdkafka's default of 500 ms makes every poll
//! take a quarter of a second.

pub use crate::free_port;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::HarnessError;

/// A record read by [`consume_all`], copied out of librdkafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// Topic it was read from.
    pub topic: String,
    /// Partition it was read from.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
    /// Key, if any.
    pub key: Option<Vec<u8>>,
    /// Payload (`None` for a tombstone).
    pub payload: Option<Vec<u8>>,
    /// Headers in wire order: name and value (`None` for a null value).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Timestamp in milliseconds since the epoch, when the record has one.
    pub timestamp: Option<i64>,
}

impl ConsumedRecord {
    /// The key as UTF-8 (lossy), for assertions.
    pub fn key_str(&self) -> Option<String> {
        self.key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
    }

    /// The payload as UTF-8 (lossy), for assertions.
    pub fn payload_str(&self) -> Option<String> {
        self.payload
            .as_deref()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// `bootstrap.servers` only.
pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

/// Producer settings used by [`produce`]: `message.timeout.ms=30000` and
/// one request in flight per connection, so records of a partition keep
/// their order even when librdkafka retries.
pub fn producer_config(bootstrap: &str) -> ClientConfig {
    let mut config = client_config(bootstrap);
    config
        .set("message.timeout.ms", "30000")
        .set("max.in.flight.requests.per.connection", "1");
    config
}

/// Consumer settings: `fetch.wait.max.ms=5` (see the module docs),
/// `auto.offset.reset=earliest`, and either `group.id=GROUP` or, without a
/// group (for assigned consumers), a unique throw-away `group.id` with
/// `enable.auto.commit=false`: librdkafka refuses `assign()` on a consumer
/// without any `group.id` ("Local: Unknown group"), even though an assigned
/// consumer never joins the group.
pub fn consumer_config(bootstrap: &str, group: Option<&str>) -> ClientConfig {
    let mut config = client_config(bootstrap);
    config
        .set("fetch.wait.max.ms", "5")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    match group {
        Some(group) => {
            config.set("group.id", group);
        }
        None => {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let unique = format!(
                "eventstream-testkit-assigned-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            config
                .set("group.id", unique)
                .set("enable.auto.commit", "false");
        }
    }
    config
}

/// Produces `records` (`(key, payload)`) to `topic` and waits for all
/// delivery reports. Returns `(partition, offset)` of each record, in input
/// order. Uses [`producer_config`].
pub async fn produce<K, P>(
    bootstrap: &str,
    topic: &str,
    records: &[(Option<K>, P)],
) -> Result<Vec<(i32, i64)>, HarnessError>
where
    K: AsRef<[u8]>,
    P: AsRef<[u8]>,
{
    produce_with(&producer_config(bootstrap), topic, records).await
}

/// [`produce`] with a caller-supplied producer config (e.g. a short
/// `message.timeout.ms` for outage tests).
pub async fn produce_with<K, P>(
    config: &ClientConfig,
    topic: &str,
    records: &[(Option<K>, P)],
) -> Result<Vec<(i32, i64)>, HarnessError>
where
    K: AsRef<[u8]>,
    P: AsRef<[u8]>,
{
    let producer: FutureProducer = config
        .create()
        .map_err(|e| HarnessError::kafka("creating a FutureProducer", e))?;

    let mut pending = Vec::with_capacity(records.len());
    for (index, (key, payload)) in records.iter().enumerate() {
        let mut record = FutureRecord::to(topic).payload(payload.as_ref());
        if let Some(key) = key {
            record = record.key(key.as_ref());
        }
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((e, _)) => {
                    return Err(HarnessError::kafka(
                        format!("enqueueing record #{index} for topic `{topic}`"),
                        e,
                    ));
                }
            }
        }
    }

    let mut positions = Vec::with_capacity(pending.len());
    for (index, delivery) in pending.into_iter().enumerate() {
        match delivery.await {
            Ok(Ok(d)) => positions.push((d.partition, d.offset)),
            Ok(Err((e, _))) => {
                return Err(HarnessError::kafka(
                    format!("delivering record #{index} to topic `{topic}`"),
                    e,
                ));
            }
            Err(_canceled) => {
                return Err(HarnessError::kafka(
                    format!("delivering record #{index} to topic `{topic}` (producer dropped)"),
                    KafkaError::Canceled,
                ));
            }
        }
    }
    Ok(positions)
}

/// Reads `topic` from the beginning of all its partitions until
/// `expected_count` records have arrived, or fails with
/// [`HarnessError::Incomplete`] (which holds what did arrive) after
/// `timeout`. The result is sorted by partition, then offset. Uses
/// [`consumer_config`] without a group.
///
/// Waits (within `timeout`) for the topic to appear in the metadata, so it
/// can be called before the topic is created.
pub async fn consume_all(
    bootstrap: &str,
    topic: &str,
    expected_count: usize,
    timeout: Duration,
) -> Result<Vec<ConsumedRecord>, HarnessError> {
    consume_all_with(
        &consumer_config(bootstrap, None),
        topic,
        expected_count,
        timeout,
    )
    .await
}

/// [`consume_all`] with a caller-supplied consumer config (it must not need
/// a group: the consumer is assigned, not subscribed).
pub async fn consume_all_with(
    config: &ClientConfig,
    topic: &str,
    expected_count: usize,
    timeout: Duration,
) -> Result<Vec<ConsumedRecord>, HarnessError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let partitions = topic_partitions(config, topic, deadline).await?;

    let consumer: StreamConsumer = config
        .create()
        .map_err(|e| HarnessError::kafka("creating a StreamConsumer", e))?;
    let mut assignment = TopicPartitionList::new();
    for partition in &partitions {
        assignment
            .add_partition_offset(topic, *partition, Offset::Beginning)
            .map_err(|e| HarnessError::kafka(format!("building the assignment of `{topic}`"), e))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| HarnessError::kafka(format!("assigning the partitions of `{topic}`"), e))?;

    let mut received = Vec::with_capacity(expected_count);
    while received.len() < expected_count {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        match tokio::time::timeout(remaining, consumer.recv()).await {
            Err(_elapsed) => break,
            // Transient errors (broker down, leader change) are retried by
            // librdkafka; keep reading until the deadline.
            Ok(Err(_transient)) => {}
            Ok(Ok(message)) => received.push(copy_message(&message)),
        }
    }
    received.sort_by_key(|r| (r.partition, r.offset));
    if received.len() < expected_count {
        return Err(HarnessError::Incomplete {
            topic: topic.to_owned(),
            expected: expected_count,
            waited: started.elapsed(),
            received,
        });
    }
    Ok(received)
}

/// The partition ids of `topic`, waiting until it shows up in the metadata.
async fn topic_partitions(
    config: &ClientConfig,
    topic: &str,
    deadline: Instant,
) -> Result<Vec<i32>, HarnessError> {
    let started = Instant::now();
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        // A floor, so the last try near the deadline still gets a real
        // answer (a near-zero timeout reports a misleading transport error).
        let request_timeout = remaining.clamp(Duration::from_secs(1), Duration::from_secs(5));
        let config = config.clone();
        let owned_topic = topic.to_owned();
        let answer = tokio::task::spawn_blocking(move || -> Result<Vec<i32>, String> {
            let consumer: BaseConsumer = config
                .create()
                .map_err(|e| format!("creating a metadata consumer: {e}"))?;
            let metadata = consumer
                .fetch_metadata(Some(&owned_topic), request_timeout)
                .map_err(|e| format!("metadata request failed: {e}"))?;
            let found = metadata
                .topics()
                .iter()
                .find(|t| t.name() == owned_topic)
                .ok_or_else(|| "topic absent from metadata".to_owned())?;
            if let Some(err) = found.error() {
                return Err(format!("topic error {:?}", RDKafkaErrorCode::from(err)));
            }
            let ids: Vec<i32> = found.partitions().iter().map(|p| p.id()).collect();
            if ids.is_empty() {
                return Err("topic has no partitions yet".to_owned());
            }
            Ok(ids)
        })
        .await
        .map_err(|e| HarnessError::InvalidState(format!("metadata task failed: {e}")))?;
        let problem = match answer {
            Ok(ids) => return Ok(ids),
            Err(problem) => problem,
        };
        if Instant::now() >= deadline {
            return Err(HarnessError::Timeout {
                context: format!(
                    "waiting for topic `{topic}` to appear in the metadata ({problem})"
                ),
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn copy_message<M: Message>(message: &M) -> ConsumedRecord {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    ConsumedRecord {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
        headers,
        timestamp: message.timestamp().to_millis(),
    }
}
