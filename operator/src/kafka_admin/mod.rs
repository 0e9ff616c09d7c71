//! The operator's view of Kafka, one module per layer:
//!
//! - [`plan`]: pure. The desired topic of a stream, the broker's view, and [`plan_topic`] which
//!   compares them.
//! - [`port`]: the [`KafkaAdmin`] trait the controller calls, and its errors.
//! - [`ensure`]: the topic step, [`ensure_topic`] and [`create_if_missing`], over the port.
//! - [`librdkafka`]: the adapter, [`RdKafkaAdmin`].
//! - [`incremental`]: IncrementalAlterConfigs through the `kafka-protocol` crate, the fallback for
//!   brokers without the legacy AlterConfigs (the rdkafka binding does not expose it).
//! - [`connection`]: how one cluster is reached ([`KafkaConnection`]).
//!
//! The public paths (`kafka_admin::RdKafkaAdmin`, `kafka_admin::ensure_topic`, ...) are
//! re-exported here, so callers do not name the layers.

pub mod connection;
pub mod ensure;
pub mod incremental;
pub mod librdkafka;
pub mod plan;
pub mod port;

pub use connection::KafkaConnection;
pub use ensure::{TopicReport, create_if_missing, ensure_topic};
pub use librdkafka::RdKafkaAdmin;
pub use plan::{ClusterView, ConfigDrift, DesiredTopic, ObservedTopic, TopicPlan, plan_topic};
pub use port::{KafkaAdmin, KafkaAdminError, ResetTo, TopicError};
