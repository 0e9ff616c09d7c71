//! The port: the admin calls the operator makes ([`KafkaAdmin`], object-safe so tests put a fake
//! behind the controller), their vocabulary ([`ResetTo`]) and errors ([`KafkaAdminError`] for one
//! call, [`TopicError`] for the topic step as the user sees it in conditions).

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use rdkafka::error::RDKafkaErrorCode;

use super::connection::KafkaConnection;
use super::plan::{ClusterView, DesiredTopic};

/// Where a consumer-group reset moves the offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    /// The low watermark of every partition.
    Earliest,
    /// The high watermark of every partition.
    Latest,
}

impl ResetTo {
    /// As the annotation spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ResetTo::Earliest => "earliest",
            ResetTo::Latest => "latest",
        }
    }
}

impl std::str::FromStr for ResetTo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "earliest" => Ok(ResetTo::Earliest),
            "latest" => Ok(ResetTo::Latest),
            other => Err(format!("{other:?} is not earliest or latest")),
        }
    }
}

/// A failed Kafka admin call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KafkaAdminError {
    /// The client could not be built (bad settings).
    #[error("cannot build a Kafka client for {bootstrap}: {message}")]
    Config {
        /// Bootstrap servers.
        bootstrap: String,
        /// librdkafka's message.
        message: String,
    },
    /// No broker answered in time.
    #[error("Kafka at {bootstrap} is unreachable: {message}")]
    Unreachable {
        /// Bootstrap servers.
        bootstrap: String,
        /// What failed (including DNS resolution problems).
        message: String,
    },
    /// A broker answered with an error.
    #[error("the broker refused to {operation}: {message}")]
    Refused {
        /// What was attempted.
        operation: String,
        /// The broker's error code.
        code: Option<RDKafkaErrorCode>,
        /// The broker's message.
        message: String,
    },
}

impl KafkaAdminError {
    /// Metric label: `config`, `unreachable` or `refused`.
    pub fn category(&self) -> &'static str {
        match self {
            KafkaAdminError::Config { .. } => "config",
            KafkaAdminError::Unreachable { .. } => "unreachable",
            KafkaAdminError::Refused { .. } => "refused",
        }
    }

    /// The broker's code, if it answered.
    pub fn code(&self) -> Option<RDKafkaErrorCode> {
        match self {
            KafkaAdminError::Refused { code, .. } => *code,
            _ => None,
        }
    }
}

/// Why the topic step did not reach the desired state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Kafka failed or could not be reached.
    #[error(transparent)]
    Kafka(#[from] KafkaAdminError),
    /// `managed: false` and the topic does not exist.
    #[error(
        "topic {topic} does not exist and spec.topic.managed is false: create it, or set managed: true"
    )]
    NotFound {
        /// Topic name.
        topic: String,
    },
    /// The topic has more partitions than the spec; Kafka cannot remove partitions.
    #[error(
        "topic {topic} has {actual} partitions and the spec asks for {desired}: Kafka cannot remove partitions; set spec.topic.partitions to at least {actual}"
    )]
    PartitionDecrease {
        /// Topic name.
        topic: String,
        /// Spec.
        desired: i32,
        /// Broker.
        actual: i32,
    },
    /// CreatePartitions failed.
    #[error("could not raise topic {topic} from {from} to {to} partitions: {message}")]
    PartitionIncreaseFailed {
        /// Topic name.
        topic: String,
        /// Current partitions.
        from: i32,
        /// Wanted partitions.
        to: i32,
        /// The broker's message.
        message: String,
    },
    /// More replicas than brokers.
    #[error(
        "spec.topic.replicationFactor is {requested} but the Kafka cluster has {brokers} broker(s): lower it to at most {brokers}"
    )]
    ReplicationFactorTooHigh {
        /// Spec.
        requested: i16,
        /// Brokers in the metadata.
        brokers: usize,
    },
    /// CreateTopics failed.
    #[error("could not create topic {topic}: {message}")]
    CreateFailed {
        /// Topic name.
        topic: String,
        /// The broker's message.
        message: String,
    },
    /// AlterConfigs failed (e.g. an unknown or invalid config in `topic.config`).
    #[error("could not set the configs of topic {topic}: {message}; check spec.topic.config")]
    ConfigRejected {
        /// Topic name.
        topic: String,
        /// The broker's message.
        message: String,
    },
    /// Another EventStream owns the topic.
    #[error(
        "topic {topic} is already used by EventStream {owner}, which is older; give this stream another spec.topic.name"
    )]
    ClaimedByOther {
        /// Topic name.
        topic: String,
        /// `namespace/name` of the owner.
        owner: String,
    },
    /// The spec cannot be turned into a topic.
    #[error("{message}")]
    InvalidSpec {
        /// What is wrong.
        message: String,
    },
}

impl TopicError {
    /// Condition reason (`TopicReady=False`) and metric category.
    pub fn reason(&self) -> &'static str {
        match self {
            TopicError::Kafka(KafkaAdminError::Unreachable { .. }) => "KafkaUnreachable",
            TopicError::Kafka(KafkaAdminError::Config { .. }) => "KafkaClientConfigInvalid",
            TopicError::Kafka(KafkaAdminError::Refused { .. }) => "KafkaRequestFailed",
            TopicError::NotFound { .. } => "TopicNotFound",
            TopicError::PartitionDecrease { .. } => "PartitionDecreaseRejected",
            TopicError::PartitionIncreaseFailed { .. } => "PartitionIncreaseFailed",
            TopicError::ReplicationFactorTooHigh { .. } => "ReplicationFactorTooHigh",
            TopicError::CreateFailed { .. } => "TopicCreateFailed",
            TopicError::ConfigRejected { .. } => "TopicConfigRejected",
            TopicError::ClaimedByOther { .. } => "TopicClaimedByOther",
            TopicError::InvalidSpec { .. } => "InvalidSpec",
        }
    }

    /// Whether retrying soon may help (backoff), as opposed to waiting for the user.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TopicError::Kafka(
                KafkaAdminError::Unreachable { .. } | KafkaAdminError::Refused { .. }
            )
        )
    }
}

/// Admin calls the operator makes. Object-safe so tests can put a fake behind the controller.
pub trait KafkaAdmin: Send + Sync + 'static {
    /// Broker count and the topic (partitions, replication factor, configs), if it exists.
    fn describe<'a>(
        &'a self,
        conn: &'a KafkaConnection,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<ClusterView, KafkaAdminError>>;
    /// CreateTopics.
    fn create_topic<'a>(
        &'a self,
        conn: &'a KafkaConnection,
        topic: &'a DesiredTopic,
    ) -> BoxFuture<'a, Result<(), KafkaAdminError>>;
    /// Makes `configs` the topic's dynamic config set: sets them and removes the overrides in
    /// `remove` (keys set outside the spec).
    fn set_topic_configs<'a>(
        &'a self,
        conn: &'a KafkaConnection,
        topic: &'a str,
        configs: &'a BTreeMap<String, String>,
        remove: &'a [String],
    ) -> BoxFuture<'a, Result<(), KafkaAdminError>>;
    /// CreatePartitions up to `total`.
    fn create_partitions<'a>(
        &'a self,
        conn: &'a KafkaConnection,
        topic: &'a str,
        total: i32,
    ) -> BoxFuture<'a, Result<(), KafkaAdminError>>;
    /// DeleteTopics; a missing topic is success.
    fn delete_topic<'a>(
        &'a self,
        conn: &'a KafkaConnection,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<(), KafkaAdminError>>;
    /// DeleteGroups; a missing group is success.
    fn delete_group<'a>(
        &'a self,
        conn: &'a KafkaConnection,
        group: &'a str,
    ) -> BoxFuture<'a, Result<(), KafkaAdminError>>;
    /// Sum over partitions of high watermark − committed offset; `None` when nothing is committed.
    fn group_lag<'a>(
        &'a self,
        conn: &'a KafkaConnection,
        group: &'a str,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<Option<i64>, KafkaAdminError>>;
    /// Commits the earliest or latest offset of every partition for `group` (the group must be
    /// empty) and returns them (partition → offset).
    fn reset_group<'a>(
        &'a self,
        conn: &'a KafkaConnection,
        group: &'a str,
        topic: &'a str,
        to: ResetTo,
    ) -> BoxFuture<'a, Result<BTreeMap<i32, i64>, KafkaAdminError>>;
}
