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

/// Pattern of a JSON pointer (RFC 6901) that names a field inside a JSON document, e.g. `/userId`
/// or `/session/id`. The empty pointer (the whole document) is not a field and is refused.
pub const JSON_POINTER_PATTERN: &str = r"^(/([^/~]|~[01])*)+$";
/// Pattern of a duration such as `500ms`, `30s`, `5m`, `12h`, `7d`, `2w` or `1h30m`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h|d|w))+$";
/// Pattern of a Kafka topic name (Kafka's own rule: 1 to 249 of `[a-zA-Z0-9._-]`).
pub const TOPIC_NAME_PATTERN: &str = r"^[a-zA-Z0-9._-]{1,249}$";
/// Pattern of a PostgreSQL table name, optionally schema-qualified: unquoted lower-case
/// identifiers of at most 63 bytes each, so the name means the same with or without quotes.
pub const TABLE_NAME_PATTERN: &str = r"^([a-z_][a-z0-9_]{0,62}\.)?[a-z_][a-z0-9_]{0,62}$";

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
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
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

/// Kafka `security.protocol`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SecurityProtocol {
    /// No encryption, no authentication.
    #[default]
    #[serde(rename = "PLAINTEXT")]
    Plaintext,
    /// TLS without SASL.
    #[serde(rename = "SSL")]
    Ssl,
    /// SASL without TLS.
    #[serde(rename = "SASL_PLAINTEXT")]
    SaslPlaintext,
    /// SASL over TLS.
    #[serde(rename = "SASL_SSL")]
    SaslSsl,
}

/// Kafka `sasl.mechanism`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslMechanism {
    /// Username and password in clear (use with `SASL_SSL`).
    #[serde(rename = "PLAIN")]
    Plain,
    /// SCRAM with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
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
    #[schemars(regex(pattern = r"^[a-zA-Z0-9._-]{1,249}$"))]
    pub name: Option<String>,
    /// Number of partitions (ordering holds per partition, i.e. per key). May be raised, never lowered.
    #[serde(default = "default_partitions")]
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
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d|w))+$"))]
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
    #[serde(default = "default_true")]
    pub managed: bool,
}

impl Default for TopicSpec {
    fn default() -> Self {
        Self {
            name: None,
            partitions: default_partitions(),
            replication_factor: None,
            retention: None,
            compression: Compression::default(),
            config: BTreeMap::new(),
            deletion_policy: DeletionPolicy::default(),
            managed: true,
        }
    }
}

/// Kafka topic `compression.type`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Keep whatever the producer used.
    #[default]
    Producer,
    /// Store uncompressed.
    Uncompressed,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// The value of Kafka's `compression.type` topic config.
    pub fn as_kafka(self) -> &'static str {
        match self {
            Compression::Producer => "producer",
            Compression::Uncompressed => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
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
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// JSON pointer to the field used as the Kafka key (e.g. `/userId`): events with the same key
    /// keep their order. Omitted: no key, the producer spreads events over partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(/([^/~]|~[01])*)+$"))]
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
    #[serde(default = "default_max_body_bytes")]
    #[schemars(range(min = 64, max = 67108864))]
    pub max_body_bytes: u32,
    /// Largest accepted body of `POST /produce/batch`, in bytes.
    #[serde(default = "default_max_batch_bytes")]
    #[schemars(range(min = 64, max = 268435456))]
    pub max_batch_bytes: u32,
    /// Most events accepted in one `POST /produce/batch`.
    #[serde(default = "default_max_batch_items")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_batch_items: u32,
    /// Producer `linger.ms`: how long the producer waits to fill a batch.
    #[serde(default = "default_linger")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub linger: String,
    /// Longest an ingest request waits for the broker's acknowledgement before answering 503.
    #[serde(default = "default_produce_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub produce_timeout: String,
    /// Optional enrichment of the payload. `receivedAt` and `ingestId` are always added as Kafka
    /// headers; these settings also write them, and fixed fields, into the JSON payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrich: Option<EnrichSpec>,
    /// Origins allowed to call ingest from a browser (CORS). `*` allows any origin.
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
            max_body_bytes: default_max_body_bytes(),
            max_batch_bytes: default_max_batch_bytes(),
            max_batch_items: default_max_batch_items(),
            linger: default_linger(),
            produce_timeout: default_produce_timeout(),
            enrich: None,
            cors_origins: Vec::new(),
        }
    }
}

/// Enrichment written into the JSON payload of ingested events (objects only).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EnrichSpec {
    /// Top-level field that receives the RFC 3339 time the bridge received the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub received_at_field: Option<String>,
    /// Top-level field that receives the event's ingest id (a UUID v7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub ingest_id_field: Option<String>,
    /// Fixed top-level fields added to every event (an existing field is not overwritten).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
}

/// Fan-out of the stream to WebSocket and Server-Sent-Events clients.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebSocketSpec {
    /// Serve `/ws` and `/sse`.
    #[serde(default = "default_true")]
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
    #[serde(default = "default_snapshot_max_channels")]
    #[schemars(range(min = 1, max = 10000000))]
    pub snapshot_max_channels: u32,
    /// What happens to a client that reads slower than the stream arrives.
    #[serde(default)]
    pub slow_client: SlowClientSpec,
    /// Most concurrent WebSocket and SSE connections per bridge pod; past it, 503 before upgrade.
    #[serde(default = "default_max_connections")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections: u32,
    /// Most channels one connection may subscribe to.
    #[serde(default = "default_max_subscriptions")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_subscriptions_per_connection: u32,
    /// Largest client frame accepted, in bytes; larger frames close the connection (1009).
    #[serde(default = "default_max_frame_bytes")]
    #[schemars(range(min = 256, max = 1048576))]
    pub max_frame_bytes: u32,
    /// Interval of server pings.
    #[serde(default = "default_ping_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub ping_interval: String,
    /// A connection that sends nothing (not even a pong) for this long is closed.
    #[serde(default = "default_idle_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub idle_timeout: String,
}

impl Default for WebSocketSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            channel: ChannelSpec::default(),
            start_from: StartFrom::default(),
            replay: ReplaySpec::default(),
            snapshot: false,
            snapshot_max_channels: default_snapshot_max_channels(),
            slow_client: SlowClientSpec::default(),
            max_connections: default_max_connections(),
            max_subscriptions_per_connection: default_max_subscriptions(),
            max_frame_bytes: default_max_frame_bytes(),
            ping_interval: default_ping_interval(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

/// How a record's channel is derived. Set at most one of `field` and `header`; with neither,
/// the channel is the record's Kafka key. Records with no channel value reach only `*` subscribers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.field) && has(self.header))").message("websocket.channel: set field or header, not both (neither means the Kafka key)"))]
pub struct ChannelSpec {
    /// JSON pointer into the payload whose value names the channel, e.g. `/sessionId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(/([^/~]|~[01])*)+$"))]
    pub field: Option<String>,
    /// Kafka header whose value names the channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub header: Option<String>,
}

/// Where a bridge starts reading when it starts.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// The live end of every partition.
    #[default]
    Latest,
    /// The oldest retained record of every partition.
    Earliest,
}

/// Replay from Kafka for clients that resume.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReplaySpec {
    /// Most records replayed for one resume; past it the client gets a `gap` and continues live.
    /// `0` disables replay.
    #[serde(default = "default_replay_max")]
    #[schemars(range(min = 0, max = 10000000))]
    pub max_messages: u32,
}

impl Default for ReplaySpec {
    fn default() -> Self {
        Self {
            max_messages: default_replay_max(),
        }
    }
}

/// Bounded per-client queue and what happens when it is full.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SlowClientSpec {
    /// Messages queued per client before the policy applies.
    #[serde(default = "default_queue_messages")]
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
            queue_messages: default_queue_messages(),
            policy: SlowClientPolicy::default(),
        }
    }
}

/// Policy for a client whose queue is full.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum SlowClientPolicy {
    /// Drop the oldest queued messages and tell the client the range it missed.
    #[default]
    DropOldest,
    /// Close the connection with code 4008 and the resume positions.
    Disconnect,
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
    #[serde(default = "default_channels_claim")]
    pub channels_claim: String,
    /// Claim that must be `true` for a token to publish through ingest.
    #[serde(default = "default_publish_claim")]
    pub publish_claim: String,
    /// Require a token on `/ws` and `/sse`.
    #[serde(default = "default_true")]
    pub websocket: bool,
    /// Require a token on `/produce` and `/produce/batch`.
    #[serde(default = "default_true")]
    pub ingest: bool,
}

/// JWT signature algorithm.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 and a shared secret.
    HS256,
    /// RSA PKCS#1 v1.5 with SHA-256; the Secret holds the public key.
    RS256,
}

/// Exactly-once persistence into PostgreSQL.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PersistenceSpec {
    /// The database and table.
    pub postgres: PostgresSpec,
    /// Turn the table into a TimescaleDB hypertable: `auto` when the extension exists, `on`
    /// requires it (the sink refuses to start without it), `off` never.
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
    #[schemars(regex(pattern = r"^[a-zA-Z0-9._-]{1,249}$"))]
    pub dead_letter_topic: Option<String>,
    /// Consumer group of the sink. Default `eventstream.<namespace>.<name>.sink`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub consumer_group: Option<String>,
}

/// The database and table of the sink.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSpec {
    /// Secret key holding the connection URL (`postgres://user:pass@host:5432/db`). The URL is
    /// passed to the sink as an environment variable, never copied into a ConfigMap or status.
    pub url_secret_ref: SecretKeyRef,
    /// Table to write, optionally schema-qualified (`analytics.events`). Created when absent.
    #[schemars(regex(pattern = r"^([a-z_][a-z0-9_]{0,62}\.)?[a-z_][a-z0-9_]{0,62}$"))]
    pub table: String,
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

/// TimescaleDB mode.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Timescale {
    /// A hypertable when the extension is available, a plain table otherwise.
    #[default]
    Auto,
    /// Always a hypertable; the sink fails to start when the extension is missing.
    On,
    /// Always a plain table.
    Off,
}

/// Batching of sink transactions.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BatchSpec {
    /// Most rows per transaction.
    #[serde(default = "default_batch_rows")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_rows: u32,
    /// Longest a record waits before its batch is written.
    #[serde(default = "default_batch_delay")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub max_delay: String,
}

impl Default for BatchSpec {
    fn default() -> Self {
        Self {
            max_rows: default_batch_rows(),
            max_delay: default_batch_delay(),
        }
    }
}

/// How the sink stores payloads.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// `jsonb`; records that are not JSON go to the dead-letter topic.
    #[default]
    Json,
    /// `bytea`; every record is stored as it is.
    Binary,
}

/// A dataplane Deployment (bridge or sink).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    /// Pod replicas. Every bridge replica delivers every record; sink replicas share partitions.
    #[serde(default = "default_replicas")]
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
            replicas: default_replicas(),
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

fn default_true() -> bool {
    true
}
fn default_partitions() -> i32 {
    3
}
fn default_max_body_bytes() -> u32 {
    1024 * 1024
}
fn default_max_batch_bytes() -> u32 {
    8 * 1024 * 1024
}
fn default_max_batch_items() -> u32 {
    1000
}
fn default_linger() -> String {
    "1ms".into()
}
fn default_produce_timeout() -> String {
    "10s".into()
}
fn default_max_connections() -> u32 {
    20000
}
fn default_snapshot_max_channels() -> u32 {
    10_000
}
fn default_max_subscriptions() -> u32 {
    100
}
fn default_max_frame_bytes() -> u32 {
    64 * 1024
}
fn default_ping_interval() -> String {
    "20s".into()
}
fn default_idle_timeout() -> String {
    "60s".into()
}
fn default_replay_max() -> u32 {
    10000
}
fn default_queue_messages() -> u32 {
    1024
}
fn default_channels_claim() -> String {
    "channels".into()
}
fn default_publish_claim() -> String {
    "publish".into()
}
fn default_batch_rows() -> u32 {
    5000
}
fn default_batch_delay() -> String {
    "1s".into()
}
fn default_replicas() -> i32 {
    1
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

    /// The dead-letter topic of the sink: `persistence.deadLetterTopic`, or `<topic>.dlq`.
    pub fn dead_letter_topic(&self) -> String {
        self.spec
            .persistence
            .as_ref()
            .and_then(|p| p.dead_letter_topic.clone())
            .unwrap_or_else(|| format!("{}.dlq", self.topic_name()))
    }
}
