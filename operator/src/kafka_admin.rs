//! The operator's view of Kafka: the desired topic of a stream, a pure plan that compares it with
//! what the broker reports ([`plan_topic`]), the [`KafkaAdmin`] port that performs admin calls,
//! its librdkafka adapter ([`RdKafkaAdmin`]) and [`ensure_topic`] which ties them together.
//!
//! Behaviour follows Strimzi's topic operator: create with partitions, replication factor and
//! configs; raise partitions, never lower them; the spec owns every dynamic topic config, so a
//! config changed or added by hand is set back (AlterConfigs replaces the topic's whole dynamic
//! config set, which is exactly "the spec is the truth"); an unmanaged topic is only checked.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use eventstream_crds::EventStream;
use eventstream_crds::v1alpha1::{SaslMechanism, SecurityProtocol};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::kafka_wire::{ConfigOp, incremental_alter_configs};

/// How to reach one Kafka cluster, with credentials read from the stream's Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaConnection {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// `security.protocol`.
    pub security_protocol: SecurityProtocol,
    /// `sasl.mechanism` when SASL is used.
    pub sasl_mechanism: Option<SaslMechanism>,
    /// SASL username.
    pub username: Option<String>,
    /// SASL password.
    pub password: Option<String>,
    /// PEM of a private CA (`ssl.ca.pem`).
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for KafkaConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConnection")
            .field("bootstrap", &self.bootstrap)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .finish()
    }
}

impl KafkaConnection {
    /// A plaintext connection to `bootstrap`.
    pub fn plaintext(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            username: None,
            password: None,
            ca_pem: None,
        }
    }

    /// librdkafka settings for this connection.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (key, value) in self
            .security_protocol
            .librdkafka_properties(self.sasl_mechanism)
        {
            c.set(key, value);
        }
        if let Some(u) = &self.username {
            c.set("sasl.username", u);
        }
        if let Some(p) = &self.password {
            c.set("sasl.password", p);
        }
        if let Some(ca) = &self.ca_pem {
            c.set("ssl.ca.pem", ca);
        }
        c
    }

    fn key(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            &self.bootstrap,
            format!("{:?}/{:?}", self.security_protocol, self.sasl_mechanism),
            &self.username,
            &self.password,
            &self.ca_pem,
        )
            .hash(&mut h);
        h.finish()
    }
}

/// The topic a stream wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredTopic {
    /// Topic name.
    pub name: String,
    /// Partitions.
    pub partitions: i32,
    /// Replication factor; `None` is the broker's default.
    pub replication_factor: Option<i16>,
    /// Every dynamic topic config the spec sets (`retention.ms`, `compression.type`, `topic.config`).
    pub configs: BTreeMap<String, String>,
    /// `false`: only check that the topic exists.
    pub managed: bool,
}

impl DesiredTopic {
    /// The desired topic of `es`.
    pub fn from_stream(es: &EventStream) -> Result<Self, TopicError> {
        let t = &es.spec.topic;
        let mut configs = t.config.clone();
        configs.insert(
            "compression.type".into(),
            t.compression.as_kafka().to_string(),
        );
        if let Some(r) = &t.retention {
            let d = eventstream_crds::duration::parse(r).map_err(|e| TopicError::InvalidSpec {
                message: format!("spec.topic.retention {r:?}: {e}"),
            })?;
            configs.insert("retention.ms".into(), d.as_millis().to_string());
        }
        Ok(Self {
            name: es.topic_name(),
            partitions: t.partitions,
            replication_factor: t.replication_factor,
            configs,
            managed: t.managed,
        })
    }

    /// The sink's dead-letter topic: one partition (dead letters are rare and read in order), the
    /// stream's replication factor and retention. Created when missing, never altered afterwards:
    /// it may be shared by several streams, and its settings are the user's to tune.
    pub fn dead_letters(es: &EventStream) -> Result<Self, TopicError> {
        let stream = Self::from_stream(es)?;
        Ok(Self {
            name: es.dead_letter_topic(),
            partitions: 1,
            replication_factor: stream.replication_factor,
            configs: stream
                .configs
                .into_iter()
                .filter(|(k, _)| k == "retention.ms")
                .collect(),
            managed: stream.managed,
        })
    }
}

/// The topic as the broker reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedTopic {
    /// Topic name.
    pub name: String,
    /// Partitions.
    pub partitions: i32,
    /// Replicas of partition 0.
    pub replication_factor: i32,
    /// Every config value the broker reports.
    pub configs: BTreeMap<String, String>,
    /// Keys whose value was set on the topic itself (source `DYNAMIC_TOPIC_CONFIG`).
    pub dynamic: Vec<String>,
}

/// The broker's answer to "describe this topic".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// Brokers in the metadata.
    pub brokers: usize,
    /// The topic, when it exists.
    pub topic: Option<ObservedTopic>,
}

/// One config that differs from the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDrift {
    /// Config key.
    pub key: String,
    /// Value on the broker (`None`: default / unset).
    pub observed: Option<String>,
    /// Value in the spec (`None`: not in the spec, the dynamic override is removed).
    pub desired: Option<String>,
}

impl std::fmt::Display for ConfigDrift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "<default>".into());
        write!(
            f,
            "{}: {} → {}",
            self.key,
            show(&self.observed),
            show(&self.desired)
        )
    }
}

/// What has to change on the broker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicPlan {
    /// Create the topic.
    pub create: bool,
    /// Raise the partition count to this.
    pub raise_partitions: Option<i32>,
    /// Configs that differ; non-empty means "alter configs".
    pub drift: Vec<ConfigDrift>,
}

/// Compares the wanted topic with the broker's view. Pure.
pub fn plan_topic(desired: &DesiredTopic, view: &ClusterView) -> Result<TopicPlan, TopicError> {
    let Some(observed) = &view.topic else {
        if !desired.managed {
            return Err(TopicError::NotFound {
                topic: desired.name.clone(),
            });
        }
        if let Some(rf) = desired.replication_factor
            && rf as usize > view.brokers
        {
            return Err(TopicError::ReplicationFactorTooHigh {
                requested: rf,
                brokers: view.brokers,
            });
        }
        return Ok(TopicPlan {
            create: true,
            ..TopicPlan::default()
        });
    };
    if !desired.managed {
        return Ok(TopicPlan::default());
    }
    if desired.partitions < observed.partitions {
        return Err(TopicError::PartitionDecrease {
            topic: desired.name.clone(),
            desired: desired.partitions,
            actual: observed.partitions,
        });
    }
    let mut drift: Vec<ConfigDrift> = desired
        .configs
        .iter()
        .filter(|(k, v)| observed.configs.get(*k) != Some(*v))
        .map(|(k, v)| ConfigDrift {
            key: k.clone(),
            observed: observed.configs.get(k).cloned(),
            desired: Some(v.clone()),
        })
        .collect();
    drift.extend(
        observed
            .dynamic
            .iter()
            .filter(|k| !desired.configs.contains_key(*k))
            .map(|k| ConfigDrift {
                key: k.clone(),
                observed: observed.configs.get(k).cloned(),
                desired: None,
            }),
    );
    Ok(TopicPlan {
        create: false,
        raise_partitions: (desired.partitions > observed.partitions).then_some(desired.partitions),
        drift,
    })
}

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

/// The outcome of [`ensure_topic`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicReport {
    /// The topic was created now.
    pub created: bool,
    /// Partitions were raised from this count.
    pub raised_from: Option<i32>,
    /// Configs set back to the spec.
    pub corrected: Vec<ConfigDrift>,
    /// The topic after the changes.
    pub topic: ObservedTopic,
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

/// Creates `desired` when it does not exist (`managed: false`: only checks that it exists).
/// Returns whether it was created. An existing topic is left exactly as it is.
pub async fn create_if_missing(
    admin: &dyn KafkaAdmin,
    conn: &KafkaConnection,
    desired: &DesiredTopic,
) -> Result<bool, TopicError> {
    let view = admin.describe(conn, &desired.name).await?;
    if view.topic.is_some() {
        return Ok(false);
    }
    // Missing: the plan is "create", or why not (unmanaged, too many replicas).
    plan_topic(desired, &view)?;
    create(admin, conn, desired).await?;
    Ok(true)
}

/// CreateTopics, with the broker's refusal as [`TopicError::CreateFailed`].
async fn create(
    admin: &dyn KafkaAdmin,
    conn: &KafkaConnection,
    desired: &DesiredTopic,
) -> Result<(), TopicError> {
    admin
        .create_topic(conn, desired)
        .await
        .map_err(|e| match e {
            KafkaAdminError::Refused { message, .. } => TopicError::CreateFailed {
                topic: desired.name.clone(),
                message,
            },
            other => other.into(),
        })
}

/// Brings the topic to the desired state: create, raise partitions, set configs. Returns what
/// changed so the caller can emit Events.
pub async fn ensure_topic(
    admin: &dyn KafkaAdmin,
    conn: &KafkaConnection,
    desired: &DesiredTopic,
) -> Result<TopicReport, TopicError> {
    let view = admin.describe(conn, &desired.name).await?;
    let plan = plan_topic(desired, &view)?;
    if plan.create {
        create(admin, conn, desired).await?;
    }
    let mut raised_from = None;
    if let (Some(to), Some(observed)) = (plan.raise_partitions, &view.topic) {
        admin
            .create_partitions(conn, &desired.name, to)
            .await
            .map_err(|e| match e {
                KafkaAdminError::Refused { message, .. } => TopicError::PartitionIncreaseFailed {
                    topic: desired.name.clone(),
                    from: observed.partitions,
                    to,
                    message,
                },
                other => other.into(),
            })?;
        raised_from = Some(observed.partitions);
    }
    if !plan.drift.is_empty() {
        let remove: Vec<String> = plan
            .drift
            .iter()
            .filter(|d| d.desired.is_none())
            .map(|d| d.key.clone())
            .collect();
        admin
            .set_topic_configs(conn, &desired.name, &desired.configs, &remove)
            .await
            .map_err(|e| match e {
                KafkaAdminError::Refused { message, .. } => TopicError::ConfigRejected {
                    topic: desired.name.clone(),
                    message,
                },
                other => other.into(),
            })?;
    }
    let changed = plan.create || raised_from.is_some() || !plan.drift.is_empty();
    let topic = if changed {
        // Report what the broker says after the change, not what we asked for.
        match admin.describe(conn, &desired.name).await?.topic {
            Some(t) => t,
            None => {
                return Err(TopicError::CreateFailed {
                    topic: desired.name.clone(),
                    message: "the broker acknowledged the creation but does not list the topic"
                        .into(),
                });
            }
        }
    } else {
        view.topic.unwrap_or_default()
    };
    Ok(TopicReport {
        created: plan.create,
        raised_from,
        corrected: if plan.create { Vec::new() } else { plan.drift },
        topic,
    })
}

/// [`KafkaAdmin`] over librdkafka. Keeps one admin client per distinct connection.
pub struct RdKafkaAdmin {
    timeout: Duration,
    clients: Mutex<HashMap<u64, Arc<AdminClient<DefaultClientContext>>>>,
}

/// Clients kept at most; the cache is cleared past it (connections differ per stream only when
/// streams name their own clusters or credentials).
const MAX_CLIENTS: usize = 256;

impl RdKafkaAdmin {
    /// An adapter whose every request times out after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout))
    }

    fn client(
        &self,
        conn: &KafkaConnection,
    ) -> Result<Arc<AdminClient<DefaultClientContext>>, KafkaAdminError> {
        let key = conn.key();
        let mut clients = self.clients.lock();
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        let client: AdminClient<DefaultClientContext> =
            conn.client_config()
                .create()
                .map_err(|e| KafkaAdminError::Config {
                    bootstrap: conn.bootstrap.clone(),
                    message: e.to_string(),
                })?;
        let client = Arc::new(client);
        clients.insert(key, client.clone());
        Ok(client)
    }

    fn consumer(
        &self,
        conn: &KafkaConnection,
        group: &str,
    ) -> Result<BaseConsumer, KafkaAdminError> {
        let mut config = conn.client_config();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        config.create().map_err(|e| KafkaAdminError::Config {
            bootstrap: conn.bootstrap.clone(),
            message: e.to_string(),
        })
    }
}

fn is_unreachable(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::CoordinatorNotAvailable
            | RDKafkaErrorCode::NotCoordinator
            | RDKafkaErrorCode::CoordinatorLoadInProgress
    )
}

/// Names the bootstrap hosts that do not resolve, which is what a user needs to fix.
async fn explain_unreachable(bootstrap: &str, message: String) -> KafkaAdminError {
    let mut unresolved = Vec::new();
    for entry in bootstrap
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        if tokio::net::lookup_host(entry).await.is_err() {
            unresolved.push(entry.to_string());
        }
    }
    let message = if unresolved.is_empty() {
        message
    } else {
        format!(
            "{message} (bootstrap address {} does not resolve: check spec.kafka.bootstrapServers or --kafka-bootstrap)",
            unresolved.join(", ")
        )
    };
    KafkaAdminError::Unreachable {
        bootstrap: bootstrap.to_string(),
        message,
    }
}

async fn map_err(conn: &KafkaConnection, operation: &str, e: KafkaError) -> KafkaAdminError {
    // `rdkafka_error_code()` is `None` for admin-operation errors; their code matters here.
    let code = match &e {
        KafkaError::AdminOp(code) => Some(*code),
        other => other.rdkafka_error_code(),
    };
    match code {
        Some(code) if is_unreachable(code) => {
            explain_unreachable(&conn.bootstrap, e.to_string()).await
        }
        code => KafkaAdminError::Refused {
            operation: operation.to_string(),
            code,
            message: e.to_string(),
        },
    }
}

/// The outcome of an admin request for one resource: the request's error, or the resource's
/// error unless it is `fine` (already there, already gone).
async fn each_ok(
    conn: &KafkaConnection,
    operation: &str,
    // `TopicResult` and `GroupResult` are the same type: a name, or a name and its error.
    results: KafkaResult<Vec<rdkafka::admin::TopicResult>>,
    fine: RDKafkaErrorCode,
) -> Result<(), KafkaAdminError> {
    let results = match results {
        Ok(r) => r,
        Err(e) => return Err(map_err(conn, operation, e).await),
    };
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, code)) if code == fine => {}
            Err((_, code)) => return Err(map_code(conn, operation, code).await),
        }
    }
    Ok(())
}

async fn map_code(
    conn: &KafkaConnection,
    operation: &str,
    code: RDKafkaErrorCode,
) -> KafkaAdminError {
    if is_unreachable(code) {
        explain_unreachable(&conn.bootstrap, code.to_string()).await
    } else {
        KafkaAdminError::Refused {
            operation: operation.to_string(),
            code: Some(code),
            message: code.to_string(),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}

impl RdKafkaAdmin {
    async fn describe_impl(
        &self,
        conn: &KafkaConnection,
        topic: &str,
    ) -> Result<ClusterView, KafkaAdminError> {
        let client = self.client(conn)?;
        let timeout = self.timeout;
        let name = topic.to_string();
        let c = client.clone();
        let metadata = match blocking(move || c.inner().fetch_metadata(Some(&name), timeout)).await
        {
            Ok(m) => m,
            Err(e) => return Err(map_err(conn, "describe the topic", e).await),
        };
        let brokers = metadata.brokers().len();
        let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Ok(ClusterView {
                brokers,
                topic: None,
            });
        };
        match t.error().map(RDKafkaErrorCode::from) {
            None => {}
            Some(RDKafkaErrorCode::UnknownTopicOrPartition) => {
                return Ok(ClusterView {
                    brokers,
                    topic: None,
                });
            }
            Some(code) => return Err(map_code(conn, "describe the topic", code).await),
        }
        let partitions = t.partitions().len() as i32;
        let replication_factor = t
            .partitions()
            .iter()
            .find(|p| p.id() == 0)
            .map(|p| p.replicas().len() as i32)
            .unwrap_or(0);
        let results = match client
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &self.options())
            .await
        {
            Ok(r) => r,
            Err(e) => return Err(map_err(conn, "describe the topic configs", e).await),
        };
        let mut configs = BTreeMap::new();
        let mut dynamic = Vec::new();
        for r in results {
            let resource = match r {
                Ok(r) => r,
                Err(code) => return Err(map_code(conn, "describe the topic configs", code).await),
            };
            for e in resource.entries {
                if e.source == ConfigSource::DynamicTopic {
                    dynamic.push(e.name.clone());
                }
                if let Some(v) = e.value {
                    configs.insert(e.name, v);
                }
            }
        }
        Ok(ClusterView {
            brokers,
            topic: Some(ObservedTopic {
                name: topic.to_string(),
                partitions,
                replication_factor,
                configs,
                dynamic,
            }),
        })
    }
}

impl KafkaAdmin for RdKafkaAdmin {
    fn describe<'a>(
        &'a self,
        conn: &'a KafkaConnection,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<ClusterView, KafkaAdminError>> {
        Box::pin(self.describe_impl(conn, topic))
    }

    fn create_topic<'a>(
        &'a self,
        conn: &'a KafkaConnection,
        topic: &'a DesiredTopic,
    ) -> BoxFuture<'a, Result<(), KafkaAdminError>> {
        Box::pin(async move {
            let client = self.client(conn)?;
            // -1: the broker's default.replication.factor (KIP-464).
            let rf = topic.replication_factor.map(i32::from).unwrap_or(-1);
            let mut new = NewTopic::new(&topic.name, topic.partitions, TopicReplication::Fixed(rf));
            for (k, v) in &topic.configs {
                new = new.set(k, v);
            }
            let results = client.create_topics(&[new], &self.options()).await;
            each_ok(
                conn,
                "create the topic",
                results,
                RDKafkaErrorCode::TopicAlreadyExists,
            )
            .await
        })
    }

    fn set_topic_configs<'a>(
        &'a self,
        conn: &'a KafkaConnection,
        topic: &'a str,
        configs: &'a BTreeMap<String, String>,
        remove: &'a [String],
    ) -> BoxFuture<'a, Result<(), KafkaAdminError>> {
        Box::pin(async move {
            let client = self.client(conn)?;
            // Legacy AlterConfigs replaces the topic's whole dynamic set with `configs`, which
            // also drops the keys in `remove`.
            let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
            for (k, v) in configs {
                alter = alter.set(k, v);
            }
            let code = match client.alter_configs(&[alter], &self.options()).await {
                Ok(results) => match results.into_iter().find_map(Result::err) {
                    None => return Ok(()),
                    Some((_, code)) => code,
                },
                Err(KafkaError::AdminOp(code)) => code,
                Err(e) => match e.rdkafka_error_code() {
                    Some(code) => code,
                    None => return Err(map_err(conn, "alter the topic configs", e).await),
                },
            };
            let unsupported = matches!(
                code,
                RDKafkaErrorCode::UnsupportedFeature | RDKafkaErrorCode::UnsupportedVersion
            );
            if !unsupported || conn.security_protocol != SecurityProtocol::Plaintext {
                return Err(map_code(conn, "alter the topic configs", code).await);
            }
            // The broker only speaks IncrementalAlterConfigs (tansu): say it ourselves.
            let mut ops: Vec<ConfigOp> = configs
                .iter()
                .map(|(k, v)| ConfigOp::Set(k.clone(), v.clone()))
                .collect();
            ops.extend(remove.iter().map(|k| ConfigOp::Delete(k.clone())));
            match incremental_alter_configs(&conn.bootstrap, topic, &ops, self.timeout).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err((_, message))) => Err(KafkaAdminError::Refused {
                    operation: "alter the topic configs".into(),
                    code: None,
                    message,
                }),
                Err(io) => Err(explain_unreachable(&conn.bootstrap, io).await),
            }
        })
    }

    fn create_partitions<'a>(
        &'a self,
        conn: &'a KafkaConnection,
        topic: &'a str,
        total: i32,
    ) -> BoxFuture<'a, Result<(), KafkaAdminError>> {
        Box::pin(async move {
            let client = self.client(conn)?;
            let new = NewPartitions::new(topic, usize::try_from(total).unwrap_or(0));
            let results = match client.create_partitions(&[new], &self.options()).await {
                Ok(r) => r,
                Err(e) => return Err(map_err(conn, "raise the partitions", e).await),
            };
            for r in results {
                if let Err((_, code)) = r {
                    return Err(map_code(conn, "raise the partitions", code).await);
                }
            }
            Ok(())
        })
    }

    fn delete_topic<'a>(
        &'a self,
        conn: &'a KafkaConnection,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<(), KafkaAdminError>> {
        Box::pin(async move {
            let client = self.client(conn)?;
            let results = client.delete_topics(&[topic], &self.options()).await;
            each_ok(
                conn,
                "delete the topic",
                results,
                RDKafkaErrorCode::UnknownTopicOrPartition,
            )
            .await
        })
    }

    fn delete_group<'a>(
        &'a self,
        conn: &'a KafkaConnection,
        group: &'a str,
    ) -> BoxFuture<'a, Result<(), KafkaAdminError>> {
        Box::pin(async move {
            let client = self.client(conn)?;
            let results = client.delete_groups(&[group], &self.options()).await;
            each_ok(
                conn,
                "delete the consumer group",
                results,
                RDKafkaErrorCode::GroupIdNotFound,
            )
            .await
        })
    }

    fn group_lag<'a>(
        &'a self,
        conn: &'a KafkaConnection,
        group: &'a str,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<Option<i64>, KafkaAdminError>> {
        Box::pin(async move {
            let consumer = self.consumer(conn, group)?;
            let timeout = self.timeout;
            let topic_owned = topic.to_string();
            let result = blocking(move || {
                let metadata = consumer.fetch_metadata(Some(&topic_owned), timeout)?;
                let ids: Vec<i32> = metadata
                    .topics()
                    .iter()
                    .filter(|t| t.name() == topic_owned)
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect();
                let mut tpl = TopicPartitionList::new();
                for id in &ids {
                    tpl.add_partition(&topic_owned, *id);
                }
                let committed = consumer.committed_offsets(tpl.clone(), timeout)?;
                // One ListOffsets round trip for all partitions (latest = -1), not one each.
                tpl.set_all_offsets(Offset::End)?;
                let ends = consumer.offsets_for_times(tpl, timeout)?;
                let mut lag = 0i64;
                let mut any = false;
                for id in ids {
                    let Some(Offset::Offset(done)) = committed
                        .find_partition(&topic_owned, id)
                        .map(|e| e.offset())
                    else {
                        continue;
                    };
                    any = true;
                    let high = match ends.find_partition(&topic_owned, id).map(|e| e.offset()) {
                        Some(Offset::Offset(h)) => h,
                        _ => consumer.fetch_watermarks(&topic_owned, id, timeout)?.1,
                    };
                    lag += (high - done).max(0);
                }
                Ok(any.then_some(lag))
            })
            .await;
            match result {
                Ok(lag) => Ok(lag),
                Err(e) => Err(map_err(conn, "read the consumer group offsets", e).await),
            }
        })
    }

    fn reset_group<'a>(
        &'a self,
        conn: &'a KafkaConnection,
        group: &'a str,
        topic: &'a str,
        to: ResetTo,
    ) -> BoxFuture<'a, Result<BTreeMap<i32, i64>, KafkaAdminError>> {
        Box::pin(async move {
            let consumer = self.consumer(conn, group)?;
            let timeout = self.timeout;
            let topic_owned = topic.to_string();
            let result = blocking(move || {
                let metadata = consumer.fetch_metadata(Some(&topic_owned), timeout)?;
                let mut tpl = TopicPartitionList::new();
                let mut offsets = BTreeMap::new();
                for t in metadata.topics().iter().filter(|t| t.name() == topic_owned) {
                    for p in t.partitions() {
                        let (low, high) =
                            consumer.fetch_watermarks(&topic_owned, p.id(), timeout)?;
                        let offset = match to {
                            ResetTo::Earliest => low,
                            ResetTo::Latest => high,
                        };
                        tpl.add_partition_offset(&topic_owned, p.id(), Offset::Offset(offset))?;
                        offsets.insert(p.id(), offset);
                    }
                }
                consumer.commit(&tpl, CommitMode::Sync)?;
                Ok(offsets)
            })
            .await;
            match result {
                Ok(offsets) => Ok(offsets),
                Err(e) => Err(map_err(conn, "reset the consumer group offsets", e).await),
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn desired() -> DesiredTopic {
        DesiredTopic {
            name: "t".into(),
            partitions: 3,
            replication_factor: Some(1),
            configs: BTreeMap::from([
                ("compression.type".into(), "lz4".into()),
                ("retention.ms".into(), "604800000".into()),
            ]),
            managed: true,
        }
    }

    fn observed(partitions: i32, configs: &[(&str, &str)], dynamic: &[&str]) -> ClusterView {
        ClusterView {
            brokers: 1,
            topic: Some(ObservedTopic {
                name: "t".into(),
                partitions,
                replication_factor: 1,
                configs: configs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                dynamic: dynamic.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }

    #[test]
    fn missing_topic_is_created_or_reported() {
        let none = ClusterView {
            brokers: 1,
            topic: None,
        };
        assert!(plan_topic(&desired(), &none).unwrap().create);
        let unmanaged = DesiredTopic {
            managed: false,
            ..desired()
        };
        assert_eq!(
            plan_topic(&unmanaged, &none).unwrap_err().reason(),
            "TopicNotFound"
        );
        let big = DesiredTopic {
            replication_factor: Some(3),
            ..desired()
        };
        let err = plan_topic(&big, &none).unwrap_err();
        assert_eq!(err.reason(), "ReplicationFactorTooHigh");
        assert!(err.to_string().contains("has 1 broker"), "{err}");
    }

    #[test]
    fn in_sync_topic_needs_nothing() {
        let view = observed(
            3,
            &[
                ("compression.type", "lz4"),
                ("retention.ms", "604800000"),
                ("segment.ms", "1"),
            ],
            &["compression.type", "retention.ms"],
        );
        assert_eq!(plan_topic(&desired(), &view).unwrap(), TopicPlan::default());
    }

    #[test]
    fn drift_and_foreign_overrides_are_corrected() {
        let view = observed(
            3,
            &[
                ("compression.type", "lz4"),
                ("retention.ms", "1000"),
                ("cleanup.policy", "compact"),
            ],
            &["retention.ms", "cleanup.policy"],
        );
        let plan = plan_topic(&desired(), &view).unwrap();
        assert_eq!(
            plan.drift
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            vec![
                "retention.ms: 1000 → 604800000",
                "cleanup.policy: compact → <default>"
            ]
        );
    }

    #[test]
    fn partitions_grow_but_never_shrink() {
        let view = observed(
            2,
            &[("compression.type", "lz4"), ("retention.ms", "604800000")],
            &[],
        );
        assert_eq!(
            plan_topic(&desired(), &view).unwrap().raise_partitions,
            Some(3)
        );
        let view = observed(5, &[], &[]);
        let err = plan_topic(&desired(), &view).unwrap_err();
        assert_eq!(err.reason(), "PartitionDecreaseRejected");
        assert!(!err.is_transient());
    }

    #[test]
    fn unmanaged_topic_is_only_checked() {
        let unmanaged = DesiredTopic {
            managed: false,
            ..desired()
        };
        assert_eq!(
            plan_topic(&unmanaged, &observed(1, &[], &["x"])).unwrap(),
            TopicPlan::default()
        );
    }

    #[test]
    fn passwords_never_reach_debug_output() {
        let mut c = KafkaConnection::plaintext("k:9092");
        c.password = Some("hunter2".into());
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn desired_topic_from_spec() {
        let spec: eventstream_crds::EventStreamSpec = serde_yaml::from_str(
            "topic: { partitions: 10, retention: 7d, compression: lz4, config: { cleanup.policy: delete } }",
        )
        .unwrap();
        let mut es = EventStream::new("telemetry", spec);
        es.metadata.namespace = Some("racing".into());
        let d = DesiredTopic::from_stream(&es).unwrap();
        assert_eq!(d.name, "racing.telemetry");
        assert_eq!(d.configs["retention.ms"], "604800000");
        assert_eq!(d.configs["compression.type"], "lz4");
        assert_eq!(d.configs["cleanup.policy"], "delete");
    }
}
