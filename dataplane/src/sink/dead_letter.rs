//! The dead-letter topic: records that cannot become rows are produced there, unchanged, with
//! headers saying why and where they came from. The batch that holds them commits only after the
//! broker acknowledged every dead letter, so a poison record is never lost and never blocks its
//! partition (a retry after a failure may send a dead letter twice: at least once).

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::SinkError;
use super::record::{Poison, Record};

/// Header with the [`PoisonReason`](super::record::PoisonReason) name.
pub const HEADER_REASON: &str = "eventstream-dlq-reason";
/// Header with the human-readable detail of the reason.
pub const HEADER_DETAIL: &str = "eventstream-dlq-detail";
/// Header with the source topic.
pub const HEADER_TOPIC: &str = "eventstream-dlq-topic";
/// Header with the source partition (decimal).
pub const HEADER_PARTITION: &str = "eventstream-dlq-partition";
/// Header with the source offset (decimal).
pub const HEADER_OFFSET: &str = "eventstream-dlq-offset";

/// Longest wait for the broker to acknowledge a dead letter.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Producer for the dead-letter topic.
#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    source_topic: String,
}

impl DeadLetters {
    /// An idempotent `acks=all` producer from the shared Kafka settings.
    pub fn new(
        mut config: ClientConfig,
        topic: &str,
        source_topic: &str,
    ) -> Result<Self, SinkError> {
        // Statistics are the consumer's (lag); this producer would only log them.
        config.remove("statistics.interval.ms");
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            );
        let producer = config.create().map_err(|source| SinkError::Kafka {
            action: "creating the dead-letter producer".into(),
            source,
        })?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
            source_topic: source_topic.to_string(),
        })
    }

    /// The dead-letter topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends every record and waits until the broker acknowledged all of them.
    pub async fn send_all(&self, letters: &[(&Record, &Poison)]) -> Result<(), SinkError> {
        let mut pending = Vec::with_capacity(letters.len());
        for (record, poison) in letters {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len() + 5);
            for (name, value) in &record.headers {
                headers = headers.insert(Header {
                    key: name,
                    value: value.as_deref(),
                });
            }
            let partition = record.partition.to_string();
            let offset = record.offset.to_string();
            for (key, value) in [
                (HEADER_REASON, poison.reason.as_str()),
                (HEADER_DETAIL, poison.detail.as_str()),
                (HEADER_TOPIC, self.source_topic.as_str()),
                (HEADER_PARTITION, partition.as_str()),
                (HEADER_OFFSET, offset.as_str()),
            ] {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            let mut out: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic)
                .headers(headers)
                .timestamp(record.timestamp_ms);
            if let Some(key) = &record.key {
                out = out.key(key.as_slice());
            }
            if let Some(payload) = &record.payload {
                out = out.payload(payload.as_slice());
            }
            pending.push(self.producer.send(out, DELIVERY_TIMEOUT));
        }
        let count = pending.len();
        for delivery in futures::future::join_all(pending).await {
            if let Err((source, _)) = delivery {
                return Err(SinkError::DeadLetter {
                    topic: self.topic.clone(),
                    count,
                    source,
                });
            }
        }
        Ok(())
    }
}
