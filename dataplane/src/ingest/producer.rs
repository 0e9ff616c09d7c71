//! The Kafka producer of ingest: durable by construction (idempotent, `acks=all`), bounded (a
//! full queue is refused at once, never waited on), and with a deadline on every delivery so no
//! request waits past `ingest.produceTimeout`.
//!
//! A record counts as produced only when its delivery report says so: that report carries the
//! partition and offset a 200 answers with.

use std::time::Instant;

use eventstream_crds::config::DataplaneConfig;
use eventstream_crds::v1alpha1::Compression;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};

use super::reply::{ApiError, ErrorCode};
use crate::kafka::{KafkaSettingsError, client_config};

/// Most records waiting in the producer's queue before new ones are refused (503 `queue_full`).
pub const QUEUE_MAX_MESSAGES: usize = 100_000;
/// Most KiB waiting in the producer's queue.
pub const QUEUE_MAX_KBYTES: usize = 256 * 1024;

/// Producer settings that make an acknowledgement mean "durable"; the user's
/// `kafka.properties` cannot override them.
const DURABILITY: [(&str, &str); 3] = [
    ("enable.idempotence", "true"),
    ("acks", "all"),
    // Retries stay within message.timeout.ms; idempotence keeps them duplicate-free.
    ("max.in.flight.requests.per.connection", "5"),
];

/// librdkafka settings of the ingest producer, on top of the shared client settings.
pub fn settings(config: &DataplaneConfig) -> Result<ClientConfig, KafkaSettingsError> {
    let ingest = &config.ingest;
    let mut c = client_config(&config.kafka)?;
    for (k, v) in DURABILITY {
        c.set(k, v);
    }
    let compression = match ingest.compression {
        Compression::Producer | Compression::Uncompressed => "none",
        Compression::Gzip => "gzip",
        Compression::Snappy => "snappy",
        Compression::Lz4 => "lz4",
        Compression::Zstd => "zstd",
    };
    c.set("compression.type", compression);
    c.set("linger.ms", ingest.linger.as_millis().to_string());
    // librdkafka fails a record it could not deliver within this: the request's deadline.
    c.set(
        "message.timeout.ms",
        ingest.produce_timeout.as_millis().max(1).to_string(),
    );
    // Tunables the user may override in kafka.properties.
    let max_record = (ingest.max_body_bytes as usize + 64 * 1024).max(1_000_000);
    let tunables = [
        (
            "client.id",
            format!("eventstream-ingest-{}", config.stream.label()),
        ),
        // Java-client compatible: a key lands where a Java or kafkajs producer would put it.
        ("partitioner", "murmur2_random".to_string()),
        (
            "queue.buffering.max.messages",
            QUEUE_MAX_MESSAGES.to_string(),
        ),
        ("queue.buffering.max.kbytes", QUEUE_MAX_KBYTES.to_string()),
        ("message.max.bytes", max_record.to_string()),
    ];
    for (k, v) in tunables {
        if c.get(k).is_none() {
            c.set(k, v);
        }
    }
    Ok(c)
}

/// The ingest producer for one topic.
pub struct Producer {
    inner: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// One record to produce.
pub struct Outgoing<'a> {
    /// Kafka key (`None`: the partitioner picks).
    pub key: Option<&'a [u8]>,
    /// Kafka value.
    pub payload: &'a [u8],
    /// Kafka headers.
    pub headers: OwnedHeaders,
}

impl Producer {
    /// Creates the producer (no broker round trip: librdkafka connects in the background).
    pub fn new(settings: &ClientConfig, topic: &str) -> Result<Self, KafkaError> {
        Ok(Self {
            inner: settings.create()?,
            topic: topic.to_owned(),
        })
    }

    /// Enqueues `record`; a full queue is refused at once.
    pub fn send(&self, record: Outgoing<'_>) -> Result<DeliveryFuture, ApiError> {
        let mut r = FutureRecord::<[u8], [u8]>::to(&self.topic)
            .payload(record.payload)
            .headers(record.headers);
        if let Some(key) = record.key {
            r = r.key(key);
        }
        self.inner.send_result(r).map_err(|(e, _)| classify(&e))
    }

    /// Waits for a delivery report until `deadline`: `(partition, offset)` once the broker has
    /// acknowledged the record, or the 503/413/500 error to answer.
    pub async fn delivered(
        delivery: DeliveryFuture,
        deadline: tokio::time::Instant,
    ) -> Result<(i32, i64), ApiError> {
        match tokio::time::timeout_at(deadline, delivery).await {
            Ok(Ok(Ok(d))) => Ok((d.partition, d.offset)),
            Ok(Ok(Err((e, _)))) => Err(classify(&e)),
            Ok(Err(_canceled)) => Err(ApiError::new(
                ErrorCode::ShuttingDown,
                "the producer was closed before the broker acknowledged the event",
            )),
            Err(_elapsed) => Err(timeout()),
        }
    }

    /// Records queued or in flight.
    pub fn queue_depth(&self) -> i32 {
        self.inner.in_flight_count()
    }

    /// Waits (on a blocking thread) until every queued record is delivered or failed, or
    /// `deadline` passes.
    pub async fn flush(&self, deadline: Instant) -> Result<(), KafkaError> {
        let producer = self.inner.clone();
        let timeout = deadline.saturating_duration_since(Instant::now());
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }
}

fn timeout() -> ApiError {
    ApiError::new(
        ErrorCode::ProduceTimeout,
        "the broker did not acknowledge the event within ingest.produceTimeout; it may or may not have been written",
    )
}

/// The answer for a producer error.
fn classify(e: &KafkaError) -> ApiError {
    let code = e.rdkafka_error_code();
    match code {
        Some(RDKafkaErrorCode::QueueFull) => ApiError::new(
            ErrorCode::QueueFull,
            "the producer queue is full; retry later",
        ),
        Some(RDKafkaErrorCode::MessageTimedOut) => timeout(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => ApiError::new(
            ErrorCode::BodyTooLarge,
            "the record is larger than the broker accepts",
        ),
        Some(RDKafkaErrorCode::Fatal) => {
            tracing::error!(error = %e, "ingest producer failed fatally");
            ApiError::new(
                ErrorCode::Internal,
                "the producer failed; see the bridge logs",
            )
        }
        _ => {
            tracing::warn!(error = %e, "ingest produce failed");
            ApiError::new(
                ErrorCode::BrokerUnavailable,
                "the broker did not accept the event; retry later",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> DataplaneConfig {
        DataplaneConfig::from_yaml(&format!(
            "stream: {{ namespace: shop, name: clicks }}\nkafka: {{ bootstrapServers: 'k:9092'{extra} }}\ntopic: t\ningest: {{ linger: 2ms, produceTimeout: 3s, compression: lz4 }}\n"
        ))
        .expect("config")
    }

    #[test]
    fn durable_settings() {
        let c = settings(&config("")).expect("settings");
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("compression.type"), Some("lz4"));
        assert_eq!(c.get("linger.ms"), Some("2"));
        assert_eq!(c.get("message.timeout.ms"), Some("3000"));
        assert_eq!(c.get("partitioner"), Some("murmur2_random"));
        assert_eq!(c.get("queue.buffering.max.messages"), Some("100000"));
        assert_eq!(c.get("bootstrap.servers"), Some("k:9092"));
    }

    #[test]
    fn user_properties_tune_but_cannot_weaken_durability() {
        let c = settings(&config(
            ", properties: { acks: '1', enable.idempotence: 'false', partitioner: consistent, queue.buffering.max.messages: '10' }",
        ))
        .expect("settings");
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("partitioner"), Some("consistent"));
        assert_eq!(c.get("queue.buffering.max.messages"), Some("10"));
    }

    #[test]
    fn errors_map_to_answers() {
        let q = KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull);
        assert_eq!(classify(&q).code, ErrorCode::QueueFull);
        let t = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert_eq!(classify(&t).code, ErrorCode::ProduceTimeout);
        let b = KafkaError::MessageProduction(RDKafkaErrorCode::BrokerTransportFailure);
        assert_eq!(classify(&b).code, ErrorCode::BrokerUnavailable);
    }
}
