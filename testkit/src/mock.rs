//! librdkafka's in-process mock cluster, for fast tests and fault injection.
//!
//! [`MockKafka`] wraps [`rdkafka::mocking::MockCluster`]: real Kafka
//! protocol on loopback ports, served by threads inside the test process,
//! with broker ids `1..=brokers`. It has no on-disk state and starts in
//! milliseconds.
//!
//! The cluster must outlive every client connected to it: keep the
//! `MockKafka` alive (declare it before the clients, so it drops after them)
//! until the clients are dropped. It is not `Send` (it holds a raw
//! librdkafka handle), so keep it on the test's own task.
//!
//! ```no_run
//! # async fn f() -> Result<(), eventstream_testkit::HarnessError> {
//! let kafka = eventstream_testkit::MockKafka::new(1)?;
//! kafka.create_topic("events", 3, 1)?;
//! eventstream_testkit::produce(&kafka.bootstrap(), "events", &[(Some("k"), "v")]).await?;
//! kafka.broker_down(1)?; // later produces time out until broker_up(1)
//! # Ok(()) }
//! ```

use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::HarnessError;

/// An in-process mock Kafka cluster; see the [module docs](self).
pub struct MockKafka {
    cluster: MockCluster<'static, DefaultProducerContext>,
    brokers: i32,
}

impl std::fmt::Debug for MockKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockKafka")
            .field("brokers", &self.brokers)
            .field("bootstrap", &self.bootstrap())
            .finish()
    }
}

impl MockKafka {
    /// Starts a mock cluster of `brokers` brokers (ids `1..=brokers`).
    pub fn new(brokers: i32) -> Result<Self, HarnessError> {
        if brokers < 1 {
            return Err(HarnessError::InvalidState(format!(
                "a mock cluster needs at least one broker, got {brokers}"
            )));
        }
        let cluster = MockCluster::new(brokers).map_err(|e| {
            HarnessError::kafka(format!("creating a mock cluster of {brokers} broker(s)"), e)
        })?;
        Ok(Self { cluster, brokers })
    }

    /// The `bootstrap.servers` list of the mock brokers.
    pub fn bootstrap(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Number of brokers (their ids are `1..=brokers`).
    pub fn brokers(&self) -> i32 {
        self.brokers
    }

    /// Creates `name` with `partitions` partitions and `replication`
    /// replicas (≤ number of brokers).
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication: i32,
    ) -> Result<(), HarnessError> {
        self.cluster
            .create_topic(name, partitions, replication)
            .map_err(|e| {
                HarnessError::kafka(
                    format!(
                        "creating mock topic `{name}` ({partitions} partition(s), \
                         replication {replication})"
                    ),
                    e,
                )
            })
    }

    /// Takes broker `id` down: its connections are closed and new ones are
    /// refused until [`broker_up`](Self::broker_up).
    pub fn broker_down(&self, id: i32) -> Result<(), HarnessError> {
        self.cluster
            .broker_down(id)
            .map_err(|e| HarnessError::kafka(format!("taking mock broker {id} down"), e))
    }

    /// Brings broker `id` back after [`broker_down`](Self::broker_down).
    pub fn broker_up(&self, id: i32) -> Result<(), HarnessError> {
        self.cluster
            .broker_up(id)
            .map_err(|e| HarnessError::kafka(format!("bringing mock broker {id} up"), e))
    }

    /// Adds `delay` of round-trip time to every request to broker `id`
    /// (slow-network tests).
    pub fn broker_round_trip_time(&self, id: i32, delay: Duration) -> Result<(), HarnessError> {
        self.cluster
            .broker_round_trip_time(id, delay)
            .map_err(|e| HarnessError::kafka(format!("delaying mock broker {id}"), e))
    }

    /// The wrapped librdkafka mock cluster, for the fault injections not
    /// wrapped here (`request_errors`, `partition_leader`, ...).
    pub fn cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.cluster
    }
}
