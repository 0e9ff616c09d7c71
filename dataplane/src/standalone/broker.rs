//! The embedded Kafka broker: librdkafka's in-process mock cluster on a loopback port.
//!
//! `MockCluster` holds a raw librdkafka handle (not `Send`), and it must outlive every client
//! connected to it. So it lives on a thread of its own, which creates the topics, reports the
//! bootstrap address and then waits until [`EmbeddedBroker`] is dropped — which the caller does
//! last, after every producer and consumer is gone. Other Kafka clients (kcat, kafkajs, a
//! second `standalone --kafka-bootstrap`) can use the printed address while the process runs.
//!
//! Limits of the mock cluster, documented in `docs/standalone.md`: no CreateTopics through the
//! admin API (topics are created here), about 5 MiB kept per partition (older records are
//! trimmed), nothing survives the process.

use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::mocking::MockCluster;

/// One topic to create: name and partition count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Partitions (≥ 1).
    pub partitions: i32,
}

/// A running mock cluster; dropping it stops the broker (drop it after every client).
#[derive(Debug)]
pub struct EmbeddedBroker {
    bootstrap: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedBroker {
    /// Starts a one-broker mock cluster and creates `topics`.
    pub fn start(topics: &[TopicSpec]) -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<String, String>>(1);
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let topics = topics.to_vec();
        let thread = std::thread::Builder::new()
            .name("embedded-broker".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot start the mock cluster: {e}")));
                        return;
                    }
                };
                for t in &topics {
                    if let Err(e) = cluster.create_topic(&t.name, t.partitions, 1) {
                        let _ = ready_tx.send(Err(format!(
                            "cannot create topic {:?} ({} partitions) in the embedded broker: {e}",
                            t.name, t.partitions
                        )));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Blocks until the sender is dropped (or sends), then destroys the cluster.
                let _ = stop_rx.recv();
                drop(cluster);
            })
            .map_err(|e| anyhow::anyhow!("cannot start the embedded broker thread: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(bootstrap)) => Ok(Self {
                bootstrap,
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Ok(Err(message)) => {
                let _ = thread.join();
                Err(anyhow::anyhow!(message))
            }
            Err(_) => {
                let _ = thread.join();
                Err(anyhow::anyhow!(
                    "the embedded broker thread ended while starting"
                ))
            }
        }
    }

    /// `host:port` of the broker (a loopback address), for any Kafka client.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Creates `topics` on an external broker (`--kafka-bootstrap`) when they are missing.
/// Failures are not fatal: the bridge waits for its topic to exist, and some brokers (another
/// standalone's mock cluster) have no CreateTopics API. Returns one warning per failure.
pub async fn ensure_topics(bootstrap: &str, topics: &[TopicSpec]) -> Vec<String> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::types::RDKafkaErrorCode;
    use std::time::Duration;

    let mut settings = rdkafka::ClientConfig::new();
    settings.set("bootstrap.servers", bootstrap);
    // Only the missing ones: a broker without CreateTopics (a mock cluster) never answers it.
    let probe = settings.clone();
    let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
    let existing = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = probe.create().map_err(|e| e.to_string())?;
        let metadata = consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        Ok::<Vec<String>, String>(
            metadata
                .topics()
                .iter()
                .filter(|t| t.error().is_none() && names.iter().any(|n| n == t.name()))
                .map(|t| t.name().to_string())
                .collect(),
        )
    })
    .await;
    let existing = match existing {
        Ok(Ok(list)) => list,
        Ok(Err(e)) => {
            return vec![format!(
                "cannot read the topics of {bootstrap}: {e}; waiting for them to exist"
            )];
        }
        Err(e) => return vec![format!("cannot read the topics of {bootstrap}: {e}")],
    };
    let missing: Vec<&TopicSpec> = topics
        .iter()
        .filter(|t| !existing.contains(&t.name))
        .collect();
    if missing.is_empty() {
        return Vec::new();
    }
    let admin: AdminClient<DefaultClientContext> = match settings.create() {
        Ok(a) => a,
        Err(e) => return vec![format!("cannot create a Kafka admin client: {e}")],
    };
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|t| NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    match admin.create_topics(&new, &options).await {
        Ok(results) => results
            .into_iter()
            .filter_map(|r| match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => None,
                Err((topic, code)) => Some(format!(
                    "could not create topic {topic:?} on {bootstrap} ({code}); waiting for it to exist"
                )),
            })
            .collect(),
        Err(e) => vec![format!(
            "could not create topics on {bootstrap} ({e}); waiting for them to exist"
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_creates_topics_and_stops() {
        let broker = EmbeddedBroker::start(&[TopicSpec {
            name: "t".into(),
            partitions: 2,
        }])
        .expect("broker");
        assert!(broker.bootstrap().contains(':'), "{}", broker.bootstrap());
        drop(broker);
    }
}
