//! The `EventStream` custom resource, `eventstream.dev/v1alpha1`.
//!
//! Every doc comment here becomes the field's description in the CRD (what `kubectl explain`
//! shows), every `#[serde(default = ..)]` becomes an OpenAPI default applied by the API server,
//! and every `x_kube(validation = ..)` becomes a CEL rule the API server enforces. Keep them
//! written for the user who reads them there.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::defaults;
pub use crate::shared::{
    ALERT_RULE_NAME_PATTERN, AlertSeverity, ChannelSpec, Compression, DURATION_PATTERN, EnrichSpec,
    JSON_POINTER_PATTERN, JwtAlgorithm, PayloadFormat, SOCKETIO_RESERVED_EVENTS, SaslMechanism,
    SecurityProtocol, SinkMode, SlowClientPolicy, SocketIoAlias, SocketIoPayload, SocketIoSpec,
    StartFrom, TABLE_NAME_PATTERN, TOPIC_NAME_PATTERN, Timescale, Tombstones, UpsertSpec,
};

/// Longest `metadata.name` of an EventStream: its objects are named `<name>-bridge`,
/// `<name>-sink` and `<name>-config`, and Services (so the names) are DNS labels of at most 63
/// characters. The CRD refuses longer names at admission (CEL); the operator checks the
/// children's names again before it builds them.
pub const MAX_NAME_LENGTH: usize = 63 - "-bridge".len();

/// An EventStream is one real-time pipeline: a Kafka topic, bridge pods that take HTTP events
/// into it and fan it out to WebSocket and Server-Sent-Events clients, and optionally sink pods
/// that persist it into PostgreSQL exactly once.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "eventstream.dev",
    version = "v1alpha1",
    kind = "EventStream",
    plural = "eventstreams",
    singular = "eventstream",
    shortname = "evs",
    category = "eventstream",
    namespaced,
    status = "EventStreamStatus",
    derive = "PartialEq",
    doc = "An EventStream turns one Kafka topic into a real-time pipeline: HTTP ingest, WebSocket/SSE fan-out with lossless resume, and exactly-once persistence into PostgreSQL.",
    printcolumn = r#"{"name":"Topic","type":"string","description":"Kafka topic of the stream","jsonPath":".status.topic.name"}"#,
    printcolumn = r#"{"name":"Partitions","type":"integer","description":"Partitions of the topic","jsonPath":".spec.topic.partitions"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","description":"Whether the whole pipeline is ready","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new(format!("self.metadata.name.size() <= {MAX_NAME_LENGTH}"))
        .message(kube::core::Message::Message(format!("metadata.name may have at most {MAX_NAME_LENGTH} characters: the stream's objects are named <name>-bridge, <name>-sink and <name>-config, which Kubernetes limits to 63"))),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name must be a DNS label (lower-case letters, digits and '-', starting with a letter, no '.'): the stream's Services are named after it")
)]
#[serde(rename_all = "camelCase")]
pub struct EventStreamSpec {
    /// How to reach the Kafka cluster. Omitted fields fall back to the operator's defaults.
    #[serde(default)]
    pub kafka: KafkaSpec,
    /// The Kafka topic behind the stream: one topic per EventStream.
    #[serde(default)]
    pub topic: TopicSpec,
    /// HTTP ingest on the bridge (`POST /produce`, `POST /produce/batch`).
    #[serde(default)]
    pub ingest: IngestSpec,
    /// Fan-out to WebSocket (`/ws`) and Server-Sent-Events (`/sse`) clients on the bridge.
    #[serde(default)]
    pub websocket: WebSocketSpec,
    /// Optional JWT authentication for WebSocket/SSE subscribers and for ingest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// Optional exactly-once persistence of the stream into PostgreSQL by sink pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<PersistenceSpec>,
    /// The bridge Deployment (ingest and fan-out).
    #[serde(default)]
    pub bridge: WorkloadSpec,
    /// The sink Deployment (only created when `persistence` is set).
    #[serde(default)]
    pub sink: WorkloadSpec,
    /// Optional threshold alerts: an evaluator Deployment (`<name>-alerts`, one pod) turns the
    /// stream into alert transitions on an alerts topic, exactly once (Kafka transactions).
    /// The alerts topic is an ordinary topic: a second EventStream on it fans the alerts out
    /// and persists them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<AlertsSpec>,
}

/// Threshold alerts derived from the stream (`docs/alerts.md`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AlertsSpec {
    /// Topic of the alert transitions, created with the stream's partitions, replication and
    /// deletion policy. Default `<topic>.alerts`. The evaluator's state lives next to it in the
    /// compacted topic `<alerts topic>.state`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = TOPIC_NAME_PATTERN))]
    pub topic: Option<String>,
    /// JSON pointer to the field that names what an alert is about, e.g. `/serverId`: one
    /// alert per rule and value. Records without it are skipped (and counted).
    #[schemars(regex(pattern = JSON_POINTER_PATTERN))]
    pub key: String,
    /// Where a new evaluator (no state yet) starts reading the stream.
    #[serde(default)]
    pub start_from: StartFrom,
    /// The rules, evaluated on every record.
    #[schemars(length(min = 1, max = 100))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub rules: Vec<AlertRuleSpec>,
    /// Container image of the evaluator. Omitted: the operator's dataplane image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,
    /// Resources of the evaluator container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// One threshold rule.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AlertRuleSpec {
    /// Rule name, unique in the stream (a DNS label): the `rule` of its events and metrics.
    #[schemars(regex(pattern = ALERT_RULE_NAME_PATTERN))]
    pub name: String,
    /// CEL condition on a record, e.g. `data.metrics.cpu > 90.0`. Variables: `data` (the JSON
    /// payload), `key`, `headers`, `partition`, `offset`, `timestamp` (Unix ms).
    #[schemars(length(min = 1, max = 2048))]
    pub when: String,
    /// Severity of the alert.
    pub severity: AlertSeverity,
    /// How long `when` must hold, in record time, before the alert fires, e.g. `1m`. `0s`:
    /// the first record where it holds fires it.
    #[serde(rename = "for", default = "defaults::text::alert_for")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub hold: String,
    /// CEL condition that resolves a firing alert. Omitted: `!(when)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub clear_when: Option<String>,
}

/// How to reach the Kafka cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(self.securityProtocol in ['SASL_PLAINTEXT', 'SASL_SSL']) || has(self.secretRef)").message("kafka.secretRef is required when securityProtocol uses SASL (it holds the username and password)"))]
#[x_kube(validation = Rule::new("!has(self.saslMechanism) || self.securityProtocol in ['SASL_PLAINTEXT', 'SASL_SSL']").message("kafka.saslMechanism only applies when securityProtocol is SASL_PLAINTEXT or SASL_SSL"))]
pub struct KafkaSpec {
    /// Comma-separated `host:port` list of Kafka brokers. Omitted: the operator's
    /// `--kafka-bootstrap` default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub bootstrap_servers: Option<String>,
    /// Protocol used to talk to the brokers.
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    /// SASL mechanism when `securityProtocol` is `SASL_PLAINTEXT` or `SASL_SSL`. Default `SCRAM-SHA-512`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// Secret in the EventStream's namespace holding Kafka credentials: keys `username` and
    /// `password` for SASL, `ca.crt` for a private TLS certificate authority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectRef>,
}

/// A reference to an object in the EventStream's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LocalObjectRef {
    /// Name of the object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A reference to one key of a Secret in the EventStream's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// The Kafka topic behind the stream.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.name) == has(oldSelf.name) && (!has(self.name) || self.name == oldSelf.name)").message("topic.name is immutable: create a new EventStream for another topic"))]
#[x_kube(validation = Rule::new("!has(self.config) || !self.config.exists(k, k in ['retention.ms', 'compression.type'])").message("set retention and compression with topic.retention and topic.compression, not in topic.config"))]
pub struct TopicSpec {
    /// Topic name. Default `<namespace>.<name>` of the EventStream. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = TOPIC_NAME_PATTERN))]
    pub name: Option<String>,
    /// Number of partitions (ordering holds per partition, i.e. per key). May be raised, never lowered.
    #[serde(default = "defaults::partitions")]
    #[schemars(range(min = 1, max = 10000))]
    #[x_kube(validation = Rule::new("self >= oldSelf").message("topic.partitions may not decrease: Kafka cannot remove partitions"))]
    pub partitions: i32,
    /// Replicas of each partition. Omitted: the broker's `default.replication.factor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub replication_factor: Option<i16>,
    /// How long Kafka keeps records (`retention.ms`), e.g. `7d`, `12h`, `90m`. Omitted: the
    /// broker's default. This also bounds how far back clients can resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub retention: Option<String>,
    /// Topic `compression.type`.
    #[serde(default)]
    pub compression: Compression,
    /// Further topic configs (e.g. `cleanup.policy`, `max.message.bytes`), applied as given.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub config: BTreeMap<String, String>,
    /// What happens to the topic when the EventStream is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// `true`: the operator creates the topic and keeps its partitions and configs as specified.
    /// `false`: the topic is managed elsewhere; the operator only checks that it exists.
    #[serde(default = "defaults::enabled")]
    pub managed: bool,
}

impl Default for TopicSpec {
    fn default() -> Self {
        Self {
            name: None,
            partitions: defaults::PARTITIONS,
            replication_factor: None,
            retention: None,
            compression: Compression::default(),
            config: BTreeMap::new(),
            deletion_policy: DeletionPolicy::default(),
            managed: true,
        }
    }
}

/// What happens to the topic when the EventStream is deleted.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeletionPolicy {
    /// Keep the topic and its data.
    #[default]
    Retain,
    /// Delete the topic and its data.
    Delete,
}

/// HTTP ingest into the topic.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxBatchBytes >= self.maxBodyBytes").message("ingest.maxBatchBytes must be at least ingest.maxBodyBytes"))]
pub struct IngestSpec {
    /// Serve `POST /produce` and `POST /produce/batch`.
    #[serde(default = "defaults::enabled")]
    pub enabled: bool,
    /// JSON pointer to the field used as the Kafka key (e.g. `/userId`): events with the same key
    /// keep their order. Omitted: no key, the producer spreads events over partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = JSON_POINTER_PATTERN))]
    pub key_field: Option<String>,
    /// Fields every event must have: a top-level field name (`eventType`) or a JSON pointer
    /// (`/device/id`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub required_fields: Vec<String>,
    /// Optional JSON Schema (draft 2020-12) every event must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserve_unknown_object")]
    pub schema: Option<serde_json::Value>,
    /// Largest accepted body of `POST /produce`, in bytes.
    #[serde(default = "defaults::max_body_bytes")]
    #[schemars(range(min = 64, max = 67108864))]
    pub max_body_bytes: u32,
    /// Largest accepted body of `POST /produce/batch`, in bytes.
    #[serde(default = "defaults::max_batch_bytes")]
    #[schemars(range(min = 64, max = 268435456))]
    pub max_batch_bytes: u32,
    /// Most events accepted in one `POST /produce/batch`.
    #[serde(default = "defaults::max_batch_items")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_batch_items: u32,
    /// Producer `linger.ms`: how long the producer waits to fill a batch.
    #[serde(default = "defaults::text::linger")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub linger: String,
    /// Longest an ingest request waits for the broker's acknowledgement before answering 503.
    #[serde(default = "defaults::text::produce_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub produce_timeout: String,
    /// Optional enrichment of the payload. `receivedAt` and `ingestId` are always added as Kafka
    /// headers; these settings also write them, and fixed fields, into the JSON payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrich: Option<EnrichSpec>,
    /// Origins allowed to use the bridge from a browser: CORS on ingest, `/sse`, `/health` and
    /// `/stats`, and the `Origin` of a WebSocket upgrade (others get 403). `*` allows any origin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cors_origins: Vec<String>,
}

impl Default for IngestSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            key_field: None,
            required_fields: Vec::new(),
            schema: None,
            max_body_bytes: defaults::MAX_BODY_BYTES,
            max_batch_bytes: defaults::MAX_BATCH_BYTES,
            max_batch_items: defaults::MAX_BATCH_ITEMS,
            linger: defaults::LINGER.into(),
            produce_timeout: defaults::PRODUCE_TIMEOUT.into(),
            enrich: None,
            cors_origins: Vec::new(),
        }
    }
}

/// Fan-out of the stream to WebSocket and Server-Sent-Events clients.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebSocketSpec {
    /// Serve `/ws` and `/sse`.
    #[serde(default = "defaults::enabled")]
    pub enabled: bool,
    /// How a record's channel is derived; clients subscribe to channels (`*` is every record).
    #[serde(default)]
    pub channel: ChannelSpec,
    /// Where a new bridge starts reading: `latest` (the live end) or `earliest`.
    #[serde(default)]
    pub start_from: StartFrom,
    /// Resume after a disconnect by replaying from Kafka.
    #[serde(default)]
    pub replay: ReplaySpec,
    /// Keep the last record of every channel in memory and send it first on subscribe.
    #[serde(default)]
    pub snapshot: bool,
    /// Most channels whose last record `snapshot` keeps per bridge pod; past it, the least
    /// recently used channel (published to or subscribed) is dropped from the cache.
    #[serde(default = "defaults::snapshot_max_channels")]
    #[schemars(range(min = 1, max = 10000000))]
    pub snapshot_max_channels: u32,
    /// What happens to a client that reads slower than the stream arrives.
    #[serde(default)]
    pub slow_client: SlowClientSpec,
    /// Most concurrent WebSocket and SSE connections per bridge pod; past it, 503 before upgrade.
    #[serde(default = "defaults::max_connections")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections: u32,
    /// Most channels one connection may subscribe to.
    #[serde(default = "defaults::max_subscriptions_per_connection")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_subscriptions_per_connection: u32,
    /// Largest client frame accepted, in bytes; larger frames close the connection (1009).
    #[serde(default = "defaults::max_frame_bytes")]
    #[schemars(range(min = 256, max = 1048576))]
    pub max_frame_bytes: u32,
    /// Interval of server pings.
    #[serde(default = "defaults::text::ping_interval")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub ping_interval: String,
    /// A connection that sends nothing (not even a pong) for this long is closed.
    #[serde(default = "defaults::text::idle_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub idle_timeout: String,
    /// Socket.IO v4 on `/socket.io/`, with the same limits, tokens and channels as `/ws`.
    #[serde(default)]
    pub socketio: SocketIoSpec,
}

impl Default for WebSocketSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            channel: ChannelSpec::default(),
            start_from: StartFrom::default(),
            replay: ReplaySpec::default(),
            snapshot: false,
            snapshot_max_channels: defaults::snapshot_max_channels(),
            slow_client: SlowClientSpec::default(),
            max_connections: defaults::MAX_CONNECTIONS,
            max_subscriptions_per_connection: defaults::MAX_SUBSCRIPTIONS_PER_CONNECTION,
            max_frame_bytes: defaults::MAX_FRAME_BYTES,
            ping_interval: defaults::PING_INTERVAL.into(),
            idle_timeout: defaults::IDLE_TIMEOUT.into(),
            socketio: SocketIoSpec::default(),
        }
    }
}

/// Replay from Kafka for clients that resume.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReplaySpec {
    /// Most records replayed for one resume; past it the client gets a `gap` and continues live.
    /// `0` disables replay.
    #[serde(default = "defaults::replay_max_messages")]
    #[schemars(range(min = 0, max = 10000000))]
    pub max_messages: u32,
}

impl Default for ReplaySpec {
    fn default() -> Self {
        Self {
            max_messages: defaults::REPLAY_MAX_MESSAGES,
        }
    }
}

/// Bounded per-client queue and what happens when it is full.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SlowClientSpec {
    /// Messages queued per client before the policy applies.
    #[serde(default = "defaults::queue_messages")]
    #[schemars(range(min = 1, max = 1000000))]
    pub queue_messages: u32,
    /// `dropOldest`: drop the oldest queued messages and send a `gap` naming them (the client
    /// can resume them). `disconnect`: close the connection with code 4008.
    #[serde(default)]
    pub policy: SlowClientPolicy,
}

impl Default for SlowClientSpec {
    fn default() -> Self {
        Self {
            queue_messages: defaults::QUEUE_MESSAGES,
            policy: SlowClientPolicy::default(),
        }
    }
}

/// JWT authentication, shared by WebSocket/SSE subscribers and ingest.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Secret key holding the HS256 shared secret or the RS256 public key (PEM).
    pub jwt_secret_ref: SecretKeyRef,
    /// Signature algorithm; tokens signed with any other algorithm (including `none`) are refused.
    pub algorithm: JwtAlgorithm,
    /// Required `iss` claim, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud` claim, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Claim listing the channels a subscriber may read, as glob patterns (`user-*`, `*`).
    #[serde(default = "defaults::channels_claim")]
    pub channels_claim: String,
    /// Claim that must be `true` for a token to publish through ingest.
    #[serde(default = "defaults::publish_claim")]
    pub publish_claim: String,
    /// Require a token on `/ws` and `/sse`.
    #[serde(default = "defaults::enabled")]
    pub websocket: bool,
    /// Require a token on `/produce` and `/produce/batch`.
    #[serde(default = "defaults::enabled")]
    pub ingest: bool,
}

/// Exactly-once persistence into PostgreSQL.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PersistenceSpec {
    /// The database and table.
    pub postgres: PostgresSpec,
    /// Turn the table into a TimescaleDB hypertable: `Auto` when the extension exists, `Enabled`
    /// requires it (the sink refuses to start without it), `Disabled` never.
    #[serde(default)]
    pub timescale: Timescale,
    /// How records are grouped into transactions.
    #[serde(default)]
    pub batch: BatchSpec,
    /// How payloads are stored: `json` (a `jsonb` column; non-JSON records are dead-lettered) or
    /// `binary` (a `bytea` column; every record is stored).
    #[serde(default)]
    pub payload: PayloadFormat,
    /// Topic that receives records the table cannot take, with the reason in headers.
    /// Default `<topic>.dlq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = TOPIC_NAME_PATTERN))]
    pub dead_letter_topic: Option<String>,
    /// Consumer group of the sink. Default `eventstream.<namespace>.<name>.sink`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub consumer_group: Option<String>,
}

/// The database and table of the sink.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.upsert) || (has(self.mode) && self.mode == 'Upsert')").message("persistence.postgres.upsert applies to mode: Upsert only"))]
pub struct PostgresSpec {
    /// Secret key holding the connection URL (`postgres://user:pass@host:5432/db`). The URL is
    /// passed to the sink as an environment variable, never copied into a ConfigMap or status.
    pub url_secret_ref: SecretKeyRef,
    /// Table to write, optionally schema-qualified (`analytics.events`). Created when absent.
    #[schemars(regex(pattern = TABLE_NAME_PATTERN))]
    pub table: String,
    /// `Append` (default): every record becomes a row, exactly once. `Upsert`: a current-state
    /// table with one row per key holding the key's newest record (docs/persistence.md).
    #[serde(default, skip_serializing_if = "SinkMode::is_append")]
    pub mode: SinkMode,
    /// The key and tombstone handling of `mode: Upsert` (default: the Kafka key, tombstones
    /// delete). Only with `mode: Upsert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upsert: Option<UpsertSpec>,
    /// Certificates for TLS to PostgreSQL, mounted into the sink. The TLS mode is the URL's
    /// `sslmode` (`verify-full` to check the server; docs/persistence.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<PostgresTls>,
}

/// Certificates for the sink's PostgreSQL connection.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PostgresTls {
    /// Secret key holding the PEM CA bundle that signed the server's certificate (e.g. the RDS
    /// bundle). The sink gets it as `PGSSLROOTCERT`, so `sslmode=verify-full` checks against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// A `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`) for client-certificate login; the sink
    /// gets it as `PGSSLCERT` / `PGSSLKEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_secret_ref: Option<LocalObjectRef>,
}

/// Batching of sink transactions.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BatchSpec {
    /// Most rows per transaction.
    #[serde(default = "defaults::batch_max_rows")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_rows: u32,
    /// Longest a record waits before its batch is written.
    #[serde(default = "defaults::text::batch_max_delay")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max_delay: String,
}

impl Default for BatchSpec {
    fn default() -> Self {
        Self {
            max_rows: defaults::BATCH_MAX_ROWS,
            max_delay: defaults::BATCH_MAX_DELAY.into(),
        }
    }
}

/// A dataplane Deployment (bridge or sink).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    /// Pod replicas. Every bridge replica delivers every record; sink replicas share partitions.
    #[serde(default = "defaults::replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// CPU and memory requests and limits of the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Container image override. Omitted: the operator's `--dataplane-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        Self {
            replicas: defaults::REPLICAS,
            resources: None,
            image: None,
        }
    }
}

/// Observed state of an EventStream, written by the operator.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EventStreamStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `TopicReady`, `BridgeReady`, `SinkReady` and `Ready`, with reasons and messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The topic as the broker reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<TopicStatus>,
    /// In-cluster URLs of the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<EndpointsStatus>,
    /// Replicas of the bridge Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<ReplicasStatus>,
    /// Replicas and consumer lag of the sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<SinkStatus>,
}

/// The topic as the broker reports it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TopicStatus {
    /// Topic name.
    pub name: String,
    /// Partitions on the broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// Replication factor on the broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<i32>,
    /// Effective topic configs that the spec sets (as the broker reports them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
}

/// In-cluster URLs of the stream.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EndpointsStatus {
    /// WebSocket URL (`ws://<service>.<namespace>.svc:8080/ws`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket: Option<String>,
    /// Server-Sent-Events URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse: Option<String>,
    /// Ingest URL (`POST` events here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest: Option<String>,
}

/// Replicas of a Deployment.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReplicasStatus {
    /// Desired replicas.
    pub replicas: i32,
    /// Ready replicas.
    pub ready_replicas: i32,
}

/// Replicas and consumer lag of the sink.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SinkStatus {
    /// Desired replicas.
    pub replicas: i32,
    /// Ready replicas.
    pub ready_replicas: i32,
    /// Consumer group of the sink.
    pub consumer_group: String,
    /// Records not yet persisted: the sum over partitions of high watermark minus committed offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// The last reset requested with `eventstream.dev/reset-sink-offsets`. It stays in the sink's
    /// config; the sink applies each `id` once per database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset_reset: Option<SinkOffsetReset>,
}

/// A one-shot reset of the sink's stored positions.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SinkOffsetReset {
    /// `<to>@<time>`: identifies the reset in the database's `eventstream_offset_resets` table.
    pub id: String,
    /// `earliest` or `latest`, as the annotation asked.
    pub to: String,
    /// Where each partition resumes (partition number → offset), resolved when the reset ran.
    #[serde(default)]
    pub offsets: BTreeMap<String, i64>,
}

impl EventStream {
    /// The Kafka topic of this stream: `spec.topic.name`, or `<namespace>.<name>`.
    pub fn topic_name(&self) -> String {
        match &self.spec.topic.name {
            Some(name) => name.clone(),
            None => format!(
                "{}.{}",
                self.metadata.namespace.as_deref().unwrap_or("default"),
                self.metadata.name.as_deref().unwrap_or_default()
            ),
        }
    }

    /// The sink's consumer group: `persistence.consumerGroup`, or `eventstream.<namespace>.<name>.sink`.
    pub fn sink_group(&self) -> String {
        self.spec
            .persistence
            .as_ref()
            .and_then(|p| p.consumer_group.clone())
            .unwrap_or_else(|| {
                format!(
                    "eventstream.{}.{}.sink",
                    self.metadata.namespace.as_deref().unwrap_or("default"),
                    self.metadata.name.as_deref().unwrap_or_default()
                )
            })
    }

    /// The alerts topic: `spec.alerts.topic`, default `<topic>.alerts`.
    pub fn alerts_topic(&self) -> String {
        self.spec
            .alerts
            .as_ref()
            .and_then(|a| a.topic.clone())
            .unwrap_or_else(|| format!("{}.alerts", self.topic_name()))
    }

    /// The evaluator's compacted state topic: `<alerts topic>.state`.
    pub fn alerts_state_topic(&self) -> String {
        format!("{}.state", self.alerts_topic())
    }

    /// The evaluator's consumer group and `transactional.id`: `eventstream.<namespace>.<name>.alerts`.
    pub fn alerts_group(&self) -> String {
        format!(
            "eventstream.{}.{}.alerts",
            self.metadata.namespace.as_deref().unwrap_or("default"),
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }

    /// The dead-letter topic of the sink: `persistence.deadLetterTopic`, or `<topic>.dlq`.
    pub fn dead_letter_topic(&self) -> String {
        self.spec
            .persistence
            .as_ref()
            .and_then(|p| p.dead_letter_topic.clone())
            .unwrap_or_else(|| format!("{}.dlq", self.topic_name()))
    }
}
