//! The dataplane configuration: what the operator writes into a ConfigMap and what
//! `eventstream-dataplane bridge|sink --config FILE` reads.
//!
//! One definition for both binaries. Load it with [`DataplaneConfig::from_yaml`], which rejects
//! unknown keys and bad values and lists *every* problem it finds, each with its field path.
//! Secrets never appear in this file: the dataplane reads them from the environment
//! ([`ENV_KAFKA_USERNAME`], [`ENV_KAFKA_PASSWORD`], [`ENV_POSTGRES_URL`], [`ENV_JWT_KEY`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::defaults;
use crate::duration::serde_str;
use crate::pointer;
use crate::v1alpha1::{
    ALERT_RULE_NAME_PATTERN, AlertSeverity, ChannelSpec, Compression, EnrichSpec, JwtAlgorithm,
    PayloadFormat, SaslMechanism, SecurityProtocol, SinkMode, SlowClientPolicy, SocketIoSpec,
    StartFrom, Timescale, UpsertSpec,
};

/// Environment variable holding the Kafka SASL username.
pub const ENV_KAFKA_USERNAME: &str = "EVENTSTREAM_KAFKA_USERNAME";
/// Environment variable holding the Kafka SASL password.
pub const ENV_KAFKA_PASSWORD: &str = "EVENTSTREAM_KAFKA_PASSWORD";
/// Environment variable holding the sink's PostgreSQL URL.
pub const ENV_POSTGRES_URL: &str = "EVENTSTREAM_POSTGRES_URL";
/// Environment variable holding the JWT HS256 secret or RS256 public key (PEM).
pub const ENV_JWT_KEY: &str = "EVENTSTREAM_JWT_KEY";

/// Everything a dataplane process needs to serve one stream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DataplaneConfig {
    /// Which EventStream this is; `namespace/name` is the `stream` label of every metric.
    pub stream: StreamId,
    /// The Kafka cluster.
    pub kafka: KafkaConfig,
    /// The stream's topic.
    pub topic: String,
    /// The HTTP server (ingest, `/ws`, `/sse`, health, metrics).
    #[serde(default)]
    pub server: ServerConfig,
    /// HTTP ingest.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// WebSocket and SSE fan-out.
    #[serde(default)]
    pub websocket: WebSocketConfig,
    /// JWT authentication; absent means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// Persistence into PostgreSQL; required by `sink` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<SinkConfig>,
    /// Threshold alerts derived from the stream; required by `alerts` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<AlertsConfig>,
}

/// The EventStream a dataplane serves.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StreamId {
    /// Namespace of the EventStream.
    pub namespace: String,
    /// Name of the EventStream.
    pub name: String,
}

impl StreamId {
    /// `namespace/name`, the value of the `stream` metric label.
    pub fn label(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// How the dataplane reaches Kafka.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// `security.protocol`.
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    /// `sasl.mechanism`; credentials come from the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// PEM file of a private certificate authority (`ssl.ca.location`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Extra librdkafka properties applied to every client (e.g. `fetch.wait.max.ms`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

/// The HTTP server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServerConfig {
    /// Address of the HTTP server.
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// How long shutdown waits for clients and in-flight work after SIGTERM.
    #[serde(default = "defaults::shutdown_grace", with = "serde_str")]
    pub shutdown_grace: Duration,
    /// Bridge: how long it may go without any answer from Kafka (a fetched record, or the
    /// partition metadata and watermarks it reads regularly) before `/readyz` and `/health`
    /// report it unready, so that a Service stops sending it new clients.
    /// Left out of the YAML at its default: the operator does not set it, and its rendered
    /// ConfigMaps stay as they were.
    #[serde(
        default = "default_kafka_unready_after",
        with = "serde_str",
        skip_serializing_if = "is_default_kafka_unready_after"
    )]
    pub kafka_unready_after: Duration,
    /// Bridge: after SIGTERM, how long it keeps serving (clients connected, new ones accepted)
    /// while `/readyz` already answers 503, before it closes its clients and stops: the time a
    /// load balancer needs to stop sending it new clients. Not part of `shutdownGrace`.
    #[serde(default, with = "serde_str", skip_serializing_if = "Duration::is_zero")]
    pub drain_delay: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: defaults::listen(),
            shutdown_grace: defaults::shutdown_grace(),
            kafka_unready_after: default_kafka_unready_after(),
            drain_delay: Duration::ZERO,
        }
    }
}

/// HTTP ingest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngestConfig {
    /// Serve `/produce` and `/produce/batch`.
    #[serde(default = "defaults::enabled")]
    pub enabled: bool,
    /// JSON pointer of the key field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_field: Option<String>,
    /// Required fields (names or JSON pointers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_fields: Vec<String>,
    /// JSON Schema every event must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
    /// Largest `/produce` body.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: u32,
    /// Largest `/produce/batch` body.
    #[serde(default = "defaults::max_batch_bytes")]
    pub max_batch_bytes: u32,
    /// Most events in one batch.
    #[serde(default = "defaults::max_batch_items")]
    pub max_batch_items: u32,
    /// Producer `linger.ms`.
    #[serde(default = "defaults::linger", with = "serde_str")]
    pub linger: Duration,
    /// Longest wait for the broker's acknowledgement before 503.
    #[serde(default = "defaults::produce_timeout", with = "serde_str")]
    pub produce_timeout: Duration,
    /// Producer `compression.type`.
    #[serde(default)]
    pub compression: Compression,
    /// Payload enrichment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrich: Option<EnrichSpec>,
    /// Browser origins allowed on every bridge route (CORS on ingest, `/sse`, `/health`,
    /// `/stats`; the WebSocket upgrade's `Origin`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cors_origins: Vec<String>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            key_field: None,
            required_fields: Vec::new(),
            schema: None,
            max_body_bytes: defaults::max_body_bytes(),
            max_batch_bytes: defaults::max_batch_bytes(),
            max_batch_items: defaults::max_batch_items(),
            linger: defaults::linger(),
            produce_timeout: defaults::produce_timeout(),
            compression: Compression::default(),
            enrich: None,
            cors_origins: Vec::new(),
        }
    }
}

/// WebSocket and SSE fan-out.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WebSocketConfig {
    /// Serve `/ws` and `/sse`.
    #[serde(default = "defaults::enabled")]
    pub enabled: bool,
    /// Channel derivation.
    #[serde(default)]
    pub channel: ChannelSpec,
    /// Where a new bridge starts reading.
    #[serde(default)]
    pub start_from: StartFrom,
    /// Most records replayed for one resume (0: no replay).
    #[serde(default = "defaults::replay_max_messages")]
    pub replay_max_messages: u32,
    /// Keep and send the last record per channel.
    #[serde(default)]
    pub snapshot: bool,
    /// Most channels whose last record `snapshot` keeps; the least recently used leaves first.
    /// Left out of the YAML at its default, so that adding the key did not change every
    /// rendered ConfigMap (and roll every stream's pods).
    #[serde(
        default = "defaults::snapshot_max_channels",
        skip_serializing_if = "is_default_snapshot_max_channels"
    )]
    pub snapshot_max_channels: u32,
    /// Per-client queue length.
    #[serde(default = "defaults::queue_messages")]
    pub queue_messages: u32,
    /// What happens when the queue is full.
    #[serde(default)]
    pub slow_client_policy: SlowClientPolicy,
    /// Most concurrent connections.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: u32,
    /// Most subscriptions per connection.
    #[serde(default = "defaults::max_subscriptions_per_connection")]
    pub max_subscriptions_per_connection: u32,
    /// Largest client frame.
    #[serde(default = "defaults::max_frame_bytes")]
    pub max_frame_bytes: u32,
    /// Server ping interval.
    #[serde(default = "defaults::ping_interval", with = "serde_str")]
    pub ping_interval: Duration,
    /// Idle timeout.
    #[serde(default = "defaults::idle_timeout", with = "serde_str")]
    pub idle_timeout: Duration,
    /// Socket.IO on `/socket.io/`. Left out of the YAML at its default, so that adding the key
    /// changed no rendered ConfigMap.
    #[serde(default, skip_serializing_if = "SocketIoSpec::is_default")]
    pub socketio: SocketIoSpec,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            channel: ChannelSpec::default(),
            start_from: StartFrom::default(),
            replay_max_messages: defaults::replay_max_messages(),
            snapshot: false,
            snapshot_max_channels: defaults::snapshot_max_channels(),
            queue_messages: defaults::queue_messages(),
            slow_client_policy: SlowClientPolicy::default(),
            max_connections: defaults::max_connections(),
            max_subscriptions_per_connection: defaults::max_subscriptions_per_connection(),
            max_frame_bytes: defaults::max_frame_bytes(),
            ping_interval: defaults::ping_interval(),
            idle_timeout: defaults::idle_timeout(),
            socketio: SocketIoSpec::default(),
        }
    }
}

/// JWT authentication; the key comes from [`ENV_JWT_KEY`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AuthConfig {
    /// Signature algorithm.
    pub algorithm: JwtAlgorithm,
    /// Required `iss`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Claim with the allowed channel globs.
    #[serde(default = "defaults::channels_claim")]
    pub channels_claim: String,
    /// Claim that allows publishing.
    #[serde(default = "defaults::publish_claim")]
    pub publish_claim: String,
    /// Protect `/ws` and `/sse`.
    #[serde(default = "defaults::enabled")]
    pub websocket: bool,
    /// Protect ingest.
    #[serde(default = "defaults::enabled")]
    pub ingest: bool,
}

/// Persistence into PostgreSQL; the URL comes from [`ENV_POSTGRES_URL`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SinkConfig {
    /// Table, optionally schema-qualified.
    pub table: String,
    /// TimescaleDB mode.
    #[serde(default)]
    pub timescale: Timescale,
    /// Rows per transaction.
    #[serde(default = "defaults::batch_max_rows")]
    pub max_rows: u32,
    /// Longest wait before a batch is written.
    #[serde(default = "defaults::batch_max_delay", with = "serde_str")]
    pub max_delay: Duration,
    /// Payload column type.
    #[serde(default)]
    pub payload: PayloadFormat,
    /// Dead-letter topic.
    pub dead_letter_topic: String,
    /// Consumer group.
    pub consumer_group: String,
    /// `Append` (default) or `Upsert` (one row per key, the newest record).
    #[serde(default, skip_serializing_if = "SinkMode::is_append")]
    pub mode: SinkMode,
    /// Key and tombstones of `mode: Upsert`; only with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upsert: Option<UpsertSpec>,
    /// A one-shot reset of the stored positions, written by the operator; see [`OffsetReset`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset_reset: Option<OffsetReset>,
}

/// Moves the positions stored in PostgreSQL, once: the sink records `id` in
/// `eventstream_offset_resets` in the same transaction, so a restart does not apply it again.
/// A database that holds no positions of the stream yet (a new database) records the id without
/// moving anything.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OffsetReset {
    /// Identifies the reset.
    pub id: String,
    /// Partition → the offset it resumes from.
    pub offsets: BTreeMap<i32, i64>,
}

/// Threshold alerts: the evaluator (`eventstream-dataplane alerts`) reads the stream and writes
/// alert transitions to `topic`, exactly once (Kafka transactions). `docs/alerts.md`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AlertsConfig {
    /// Topic of the alert transitions (an ordinary stream for a second EventStream).
    pub topic: String,
    /// Compacted topic with the evaluator's state (pending and firing alerts) and its input
    /// positions, written in the same transaction as the transitions.
    pub state_topic: String,
    /// Consumer group whose offsets the transactions commit (lag, tooling).
    pub consumer_group: String,
    /// `transactional.id` of the evaluator's producer: one per stream, so that a new evaluator
    /// fences the previous one and aborts its open transaction.
    pub transactional_id: String,
    /// JSON pointer to the field that names what an alert is about, e.g. `/serverId`.
    pub key: String,
    /// Where a new evaluator (no state yet) starts reading the stream.
    #[serde(default)]
    pub start_from: StartFrom,
    /// Most input records per transaction.
    #[serde(default = "default_alerts_max_batch")]
    pub max_batch: u32,
    /// Longest a transaction stays open collecting records before it commits.
    #[serde(default = "default_alerts_commit_interval", with = "serde_str")]
    pub commit_interval: Duration,
    /// The rules, each evaluated on every record of the stream.
    pub rules: Vec<AlertRuleConfig>,
}

/// One threshold rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AlertRuleConfig {
    /// Rule name (a DNS label), unique in the stream.
    pub name: String,
    /// CEL condition on the record (`data`, `key`, `headers`, `partition`, `offset`, `timestamp`).
    pub when: String,
    /// Severity of the alert.
    pub severity: AlertSeverity,
    /// How long `when` must hold, in record time, before the alert fires (`0s`: at once).
    #[serde(default, rename = "for", with = "serde_str")]
    pub hold: Duration,
    /// CEL condition that resolves a firing alert; absent: `!(when)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_when: Option<String>,
}

/// Longest CEL expression accepted in a rule.
pub const MAX_ALERT_EXPRESSION_LENGTH: usize = 2048;
/// Most rules per stream.
pub const MAX_ALERT_RULES: usize = 100;

impl AlertsConfig {
    /// `maxBatch` when the config leaves it out.
    pub const DEFAULT_MAX_BATCH: u32 = 1000;
    /// `commitInterval` when the config leaves it out.
    pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(200);
}

fn default_alerts_max_batch() -> u32 {
    AlertsConfig::DEFAULT_MAX_BATCH
}
fn default_alerts_commit_interval() -> Duration {
    AlertsConfig::DEFAULT_COMMIT_INTERVAL
}

/// Checks a CEL expression of an alert rule: not empty, not too long, and it parses.
pub fn check_alert_expression(expression: &str) -> Result<(), String> {
    if expression.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if expression.len() > MAX_ALERT_EXPRESSION_LENGTH {
        return Err(format!(
            "is {} bytes long; at most {MAX_ALERT_EXPRESSION_LENGTH}",
            expression.len()
        ));
    }
    crate::cel::Expression::compile(expression, &alert_expression_limits())
        .map(|_| ())
        .map_err(|e| format!("is not a valid CEL expression: {e}"))
}

/// The bounds of an alert rule's expression: [`crate::cel::Limits`]' defaults, but as long as
/// [`MAX_ALERT_EXPRESSION_LENGTH`]. The parser recurses per nesting level, so without the
/// depth bound a short expression of nested brackets overflows the stack of whatever process
/// checks it (the operator, on every spec).
pub fn alert_expression_limits() -> crate::cel::Limits {
    crate::cel::Limits {
        max_bytes: MAX_ALERT_EXPRESSION_LENGTH,
        ..crate::cel::Limits::default()
    }
}

fn check_alerts(alerts: &AlertsConfig, stream_topic: &str, bad: &mut impl FnMut(&str, String)) {
    for (path, topic) in [
        ("alerts.topic", &alerts.topic),
        ("alerts.stateTopic", &alerts.state_topic),
    ] {
        if let Err(reason) = check_topic_name(topic) {
            bad(path, reason);
        } else if topic == stream_topic {
            bad(path, "must differ from the stream's topic".into());
        }
    }
    if alerts.topic == alerts.state_topic {
        bad("alerts.stateTopic", "must differ from alerts.topic".into());
    }
    if alerts.consumer_group.is_empty() {
        bad("alerts.consumerGroup", "must not be empty".into());
    }
    if alerts.transactional_id.is_empty() {
        bad("alerts.transactionalId", "must not be empty".into());
    }
    if let Err(e) = pointer::check(&alerts.key) {
        bad("alerts.key", e.to_string());
    }
    if alerts.max_batch == 0 || alerts.max_batch > 100_000 {
        bad("alerts.maxBatch", "must be between 1 and 100000".into());
    }
    if alerts.commit_interval.is_zero() || alerts.commit_interval > Duration::from_secs(60) {
        bad(
            "alerts.commitInterval",
            "must be greater than zero and at most 1m (Kafka aborts long transactions)".into(),
        );
    }
    if alerts.rules.is_empty() || alerts.rules.len() > MAX_ALERT_RULES {
        bad(
            "alerts.rules",
            format!("must hold 1 to {MAX_ALERT_RULES} rules"),
        );
    }
    let name_pattern = regex_lite_dns_label;
    let mut seen = std::collections::BTreeSet::new();
    for (i, rule) in alerts.rules.iter().enumerate() {
        if !name_pattern(&rule.name) {
            bad(
                &format!("alerts.rules[{i}].name"),
                format!("{:?} must match {ALERT_RULE_NAME_PATTERN}", rule.name),
            );
        } else if !seen.insert(rule.name.as_str()) {
            bad(
                &format!("alerts.rules[{i}].name"),
                format!("{:?} is used by another rule", rule.name),
            );
        }
        if let Err(reason) = check_alert_expression(&rule.when) {
            bad(&format!("alerts.rules[{i}].when"), reason);
        }
        if let Some(clear) = &rule.clear_when
            && let Err(reason) = check_alert_expression(clear)
        {
            bad(&format!("alerts.rules[{i}].clearWhen"), reason);
        }
    }
}

/// [`ALERT_RULE_NAME_PATTERN`] without a regex engine: a DNS label of at most 63 characters.
fn regex_lite_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
        && bytes.iter().all(|b| edge(b) || *b == b'-')
}

/// One problem in a config: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `websocket.queueMessages`.
    pub path: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// A config that cannot be used, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The problems, in document order where known.
    pub problems: Vec<FieldError>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid dataplane config ({} problem",
            self.problems.len()
        )?;
        if self.problems.len() != 1 {
            f.write_str("s")?;
        }
        f.write_str(")")?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn one(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            problems: vec![FieldError {
                path: path.into(),
                reason: reason.into(),
            }],
        }
    }
}

impl DataplaneConfig {
    /// Parses and validates a YAML (or JSON) config. Unknown keys, type errors and bad values
    /// are all reported, each with its path; a syntax error is reported alone with its position.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let value: serde_yaml::Value = serde_yaml::from_str(text)
            .map_err(|e| ConfigError::one("(document)", e.to_string()))?;
        let mut problems = Vec::new();
        let mut unknown = Vec::new();
        let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
        let ignored = serde_ignored::Deserializer::new(value, &mut on_unknown);
        let parsed: Result<Self, _> = serde_path_to_error::deserialize(ignored);
        for path in unknown {
            problems.push(FieldError {
                path,
                reason: "unknown key (check its spelling against docs/config.md)".into(),
            });
        }
        match parsed {
            Ok(config) => {
                problems.extend(config.validate());
                if problems.is_empty() {
                    Ok(config)
                } else {
                    Err(ConfigError { problems })
                }
            }
            Err(e) => {
                let path = match e.path().to_string() {
                    p if p == "." => "(document)".to_string(),
                    p => p,
                };
                problems.push(FieldError {
                    path,
                    reason: e.into_inner().to_string(),
                });
                Err(ConfigError { problems })
            }
        }
    }

    /// The config as YAML, as the operator writes it into the ConfigMap.
    pub fn to_yaml(&self) -> String {
        // Plain data with string keys: serialisation cannot fail.
        serde_yaml::to_string(self).unwrap_or_else(|e| panic!("config serialises: {e}"))
    }

    /// Every value problem of an already-parsed config, each with its field path.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut out = Vec::new();
        let mut bad = |path: &str, reason: String| {
            out.push(FieldError {
                path: path.to_string(),
                reason,
            })
        };

        if self.stream.namespace.is_empty() {
            bad("stream.namespace", "must not be empty".into());
        }
        if self.stream.name.is_empty() {
            bad("stream.name", "must not be empty".into());
        }

        if let Err(reason) = check_bootstrap(&self.kafka.bootstrap_servers) {
            bad("kafka.bootstrapServers", reason);
        }
        if self.kafka.sasl_mechanism.is_some() && !self.kafka.security_protocol.uses_sasl() {
            bad(
                "kafka.saslMechanism",
                "only applies when securityProtocol is SASL_PLAINTEXT or SASL_SSL".into(),
            );
        }
        if let Err(reason) = check_topic_name(&self.topic) {
            bad("topic", reason);
        }

        if self.server.kafka_unready_after < Duration::from_secs(1) {
            bad(
                "server.kafkaUnreadyAfter",
                "must be at least 1s (the bridge checks Kafka a few times within it)".into(),
            );
        }

        let ingest = &self.ingest;
        if let Some(key) = &ingest.key_field
            && let Err(e) = pointer::check(key)
        {
            bad("ingest.keyField", e.to_string());
        }
        for (i, field) in ingest.required_fields.iter().enumerate() {
            if field.is_empty() {
                bad(
                    &format!("ingest.requiredFields[{i}]"),
                    "must not be empty".into(),
                );
            } else if field.starts_with('/')
                && let Err(e) = pointer::check(field)
            {
                bad(&format!("ingest.requiredFields[{i}]"), e.to_string());
            }
        }
        if let Some(schema) = &ingest.schema
            && !(schema.is_object() || schema.is_boolean())
        {
            bad(
                "ingest.schema",
                "must be a JSON Schema object (or true/false)".into(),
            );
        }
        if ingest.max_body_bytes < 64 {
            bad("ingest.maxBodyBytes", "must be at least 64".into());
        }
        if ingest.max_batch_bytes < ingest.max_body_bytes {
            bad(
                "ingest.maxBatchBytes",
                format!(
                    "must be at least ingest.maxBodyBytes ({})",
                    ingest.max_body_bytes
                ),
            );
        }
        if ingest.max_batch_items == 0 {
            bad("ingest.maxBatchItems", "must be at least 1".into());
        }
        if ingest.produce_timeout.is_zero() {
            bad("ingest.produceTimeout", "must be greater than zero".into());
        }
        if ingest.linger > Duration::from_secs(5) {
            bad(
                "ingest.linger",
                "must be at most 5s: every ingest request waits for it".into(),
            );
        }

        let ws = &self.websocket;
        if ws.channel.field.is_some() && ws.channel.header.is_some() {
            bad(
                "websocket.channel",
                "set field or header, not both (neither means the Kafka key)".into(),
            );
        }
        if let Some(field) = &ws.channel.field
            && let Err(e) = pointer::check(field)
        {
            bad("websocket.channel.field", e.to_string());
        }
        if ws.channel.header.as_deref() == Some("") {
            bad("websocket.channel.header", "must not be empty".into());
        }
        if ws.snapshot_max_channels == 0 {
            bad("websocket.snapshotMaxChannels", "must be at least 1".into());
        }
        if ws.queue_messages == 0 {
            bad("websocket.queueMessages", "must be at least 1".into());
        }
        if ws.max_connections == 0 {
            bad("websocket.maxConnections", "must be at least 1".into());
        }
        if ws.max_subscriptions_per_connection == 0 {
            bad(
                "websocket.maxSubscriptionsPerConnection",
                "must be at least 1".into(),
            );
        }
        if ws.max_frame_bytes < 256 {
            bad("websocket.maxFrameBytes", "must be at least 256".into());
        }
        if ws.ping_interval.is_zero() {
            bad("websocket.pingInterval", "must be greater than zero".into());
        }
        if ws.idle_timeout <= ws.ping_interval {
            bad(
                "websocket.idleTimeout",
                format!(
                    "must be longer than websocket.pingInterval ({}), or every idle client is closed",
                    crate::duration::format(ws.ping_interval)
                ),
            );
        }
        for (field, reason) in ws.socketio.problems() {
            bad(&format!("websocket.socketio.{field}"), reason);
        }

        if let Some(auth) = &self.auth {
            if auth.channels_claim.is_empty() {
                bad("auth.channelsClaim", "must not be empty".into());
            }
            if auth.publish_claim.is_empty() {
                bad("auth.publishClaim", "must not be empty".into());
            }
        }

        if let Some(sink) = &self.sink {
            if let Err(reason) = check_table_name(&sink.table) {
                bad("sink.table", reason);
            }
            if sink.max_rows == 0 || sink.max_rows > 100_000 {
                bad("sink.maxRows", "must be between 1 and 100000".into());
            }
            if sink.max_delay.is_zero() {
                bad("sink.maxDelay", "must be greater than zero".into());
            }
            if let Err(reason) = check_topic_name(&sink.dead_letter_topic) {
                bad("sink.deadLetterTopic", reason);
            } else if sink.dead_letter_topic == self.topic {
                bad(
                    "sink.deadLetterTopic",
                    "must differ from the stream's topic".into(),
                );
            }
            if sink.consumer_group.is_empty() {
                bad("sink.consumerGroup", "must not be empty".into());
            }
            match (&sink.upsert, sink.mode) {
                (Some(_), SinkMode::Append) => bad(
                    "sink.upsert",
                    "applies to mode: Upsert only; set sink.mode: Upsert or remove it".into(),
                ),
                (Some(upsert), SinkMode::Upsert) => {
                    if let Some(field) = &upsert.key_field {
                        if let Err(e) = pointer::check(field) {
                            bad("sink.upsert.keyField", e.to_string());
                        } else if sink.payload == PayloadFormat::Binary {
                            bad(
                                "sink.upsert.keyField",
                                "needs payload: json (a binary payload has no fields); use the Kafka key".into(),
                            );
                        }
                    }
                }
                (None, _) => {}
            }
            if sink.mode == SinkMode::Upsert && sink.timescale == Timescale::Enabled {
                bad(
                    "sink.timescale",
                    "a current-state table (mode: Upsert) is never a hypertable: its rows move in time; use Auto or Disabled".into(),
                );
            }
            if let Some(reset) = &sink.offset_reset {
                if reset.id.trim().is_empty() {
                    bad("sink.offsetReset.id", "must not be empty".into());
                }
                if let Some((p, o)) = reset.offsets.iter().find(|(p, o)| **p < 0 || **o < 0) {
                    bad(
                        "sink.offsetReset.offsets",
                        format!("partition {p} → offset {o}: partitions and offsets are ≥ 0"),
                    );
                }
            }
        }

        if let Some(alerts) = &self.alerts {
            check_alerts(alerts, &self.topic, &mut bad);
        }
        out
    }
}

/// Checks a `host:port[,host:port…]` bootstrap list.
pub fn check_bootstrap(list: &str) -> Result<(), String> {
    if list.trim().is_empty() {
        return Err("must list at least one host:port".into());
    }
    for entry in list.split(',') {
        let entry = entry.trim();
        let Some((host, port)) = entry.rsplit_once(':') else {
            return Err(format!("{entry:?} has no port: write host:port"));
        };
        if host.is_empty() {
            return Err(format!("{entry:?} has no host: write host:port"));
        }
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("{entry:?} has an invalid port {port:?}"));
        }
    }
    Ok(())
}

/// Checks a Kafka topic name (1–249 of `[a-zA-Z0-9._-]`, not `.` or `..`).
pub fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 249 {
        return Err(format!("{name:?} must be 1 to 249 characters long"));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid topic name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{name:?} contains {c:?}: topic names use only letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// Checks a PostgreSQL table name: `[schema.]table`, unquoted lower-case identifiers.
pub fn check_table_name(name: &str) -> Result<(), String> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 2 {
        return Err(format!(
            "{name:?} has more than one '.': write table or schema.table"
        ));
    }
    for part in parts {
        let mut chars = part.chars();
        let ok_start = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
        let ok_rest = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok_start || !ok_rest || part.len() > 63 {
            return Err(format!(
                "{name:?}: each part must be a lower-case identifier ([a-z_][a-z0-9_]*, at most 63 bytes)"
            ));
        }
    }
    Ok(())
}

fn is_default_snapshot_max_channels(value: &u32) -> bool {
    *value == defaults::SNAPSHOT_MAX_CHANNELS
}
/// Three failed 10 s metadata reads in a row: a broker restart or a leader election passes
/// well within it, a lost network does not.
fn default_kafka_unready_after() -> Duration {
    Duration::from_secs(30)
}
fn is_default_kafka_unready_after(value: &Duration) -> bool {
    *value == default_kafka_unready_after()
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_deeply_nested_alert_expression_is_refused_not_a_stack_overflow() {
        // 200 brackets are well within the length limit; the CEL parser given them on a
        // 2 MiB stack (a tokio worker of the operator) aborted the whole process.
        let deep = format!("{}1{}", "(".repeat(200), ")".repeat(200));
        let outcome = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || check_alert_expression(&deep))
            .expect("thread")
            .join()
            .expect("no stack overflow");
        assert!(outcome.expect_err("refused").contains("nests"));
    }

    use super::*;

    const MINIMAL: &str = "
stream: { namespace: shop, name: clicks }
kafka: { bootstrapServers: 'localhost:9092' }
topic: shop.clicks
";

    #[test]
    fn minimal_config_gets_defaults() {
        let config = DataplaneConfig::from_yaml(MINIMAL).expect("valid");
        assert_eq!(config.stream.label(), "shop/clicks");
        assert_eq!(config.server.listen, defaults::listen());
        assert_eq!(config.websocket.queue_messages, 1024);
        assert_eq!(config.websocket.ping_interval, Duration::from_secs(20));
        assert!(config.ingest.enabled);
        assert!(config.sink.is_none());
    }

    #[test]
    fn the_snapshot_cache_is_bounded_by_default_and_a_zero_bound_is_refused() {
        let config = DataplaneConfig::from_yaml(MINIMAL).expect("valid");
        assert_eq!(config.websocket.snapshot_max_channels, 10_000);
        let text = format!("{MINIMAL}websocket: {{ snapshot: true, snapshotMaxChannels: 0 }}\n");
        assert_eq!(paths(&text), ["websocket.snapshotMaxChannels"]);
    }

    #[test]
    fn yaml_round_trips() {
        let config = DataplaneConfig::from_yaml(MINIMAL).expect("valid");
        let again = DataplaneConfig::from_yaml(&config.to_yaml()).expect("valid");
        assert_eq!(config, again);
    }

    #[test]
    fn kafka_unready_after_defaults_to_30s_and_is_written_only_when_set() {
        let config = DataplaneConfig::from_yaml(MINIMAL).expect("valid");
        assert_eq!(config.server.kafka_unready_after, Duration::from_secs(30));
        assert!(!config.to_yaml().contains("kafkaUnreadyAfter"));
        let text = format!("{MINIMAL}server: {{ kafkaUnreadyAfter: 5s }}\n");
        let config = DataplaneConfig::from_yaml(&text).expect("valid");
        assert_eq!(config.server.kafka_unready_after, Duration::from_secs(5));
        assert!(config.to_yaml().contains("kafkaUnreadyAfter: 5s"));
        let too_short = format!("{MINIMAL}server: {{ kafkaUnreadyAfter: 500ms }}\n");
        assert_eq!(paths(&too_short), ["server.kafkaUnreadyAfter"]);
    }

    #[test]
    fn upsert_settings_are_checked_and_left_out_at_their_defaults() {
        let sink = "sink: { table: t, deadLetterTopic: shop.clicks.dlq, consumerGroup: g";
        let config = DataplaneConfig::from_yaml(&format!("{MINIMAL}{sink} }}\n")).expect("valid");
        let yaml = config.to_yaml();
        assert!(!yaml.contains("mode") && !yaml.contains("upsert"), "{yaml}");

        let text = format!(
            "{MINIMAL}{sink}, mode: upsert, upsert: {{ keyField: /animeId, tombstones: Ignore }} }}\n"
        );
        let config = DataplaneConfig::from_yaml(&text).expect("valid");
        let s = config.sink.as_ref().expect("sink");
        assert_eq!(s.mode, SinkMode::Upsert);
        assert_eq!(
            s.upsert.as_ref().and_then(|u| u.key_field.as_deref()),
            Some("/animeId")
        );
        let again = DataplaneConfig::from_yaml(&config.to_yaml()).expect("valid");
        assert_eq!(config, again);
        assert!(config.to_yaml().contains("mode: Upsert"));

        let text = format!("{MINIMAL}{sink}, upsert: {{ keyField: /a }} }}\n");
        assert_eq!(paths(&text), ["sink.upsert"]);
        let text = format!("{MINIMAL}{sink}, mode: Upsert, upsert: {{ keyField: a }} }}\n");
        assert_eq!(paths(&text), ["sink.upsert.keyField"]);
        let text = format!(
            "{MINIMAL}{sink}, mode: Upsert, payload: binary, timescale: Enabled, upsert: {{ keyField: /a }} }}\n"
        );
        assert_eq!(paths(&text), ["sink.upsert.keyField", "sink.timescale"]);
    }

    fn problems(text: &str) -> Vec<FieldError> {
        DataplaneConfig::from_yaml(text)
            .expect_err("invalid config must be refused")
            .problems
    }

    fn paths(text: &str) -> Vec<String> {
        problems(text).into_iter().map(|p| p.path).collect()
    }

    #[test]
    fn socketio_is_on_by_default_left_out_of_yaml_and_its_names_are_checked() {
        let config = DataplaneConfig::from_yaml(MINIMAL).expect("minimal");
        assert!(config.websocket.socketio.enabled);
        assert_eq!(config.websocket.socketio.event, "event");
        let yaml = serde_yaml::to_string(&config).expect("yaml");
        assert!(
            !yaml.contains("socketio"),
            "left out at its default:\n{yaml}"
        );

        let text = format!(
            "{MINIMAL}websocket:\n  socketio:\n    event: connect\n    aliases:\n\
             \x20     - {{ join: join_dashboard, channel: '*', ack: dashboard_joined, event: new_event, payload: payload }}\n\
             \x20     - {{ join: join_dashboard, event: x }}\n\
             \x20     - {{ join: subscribe, event: '' }}\n\
             \x20     - {{ join: j, channel: '', ack: disconnect, event: e }}\n"
        );
        assert_eq!(
            paths(&text),
            [
                "websocket.socketio.event",
                "websocket.socketio.aliases[1].join",
                "websocket.socketio.aliases[2].join",
                "websocket.socketio.aliases[2].event",
                "websocket.socketio.aliases[3].ack",
                "websocket.socketio.aliases[3].channel",
            ]
        );
        let good = format!(
            "{MINIMAL}websocket: {{ socketio: {{ aliases: [{{ join: join_dashboard, channel: '*', ack: dashboard_joined, event: new_event, payload: payload }}] }} }}\n"
        );
        let config = DataplaneConfig::from_yaml(&good).expect("valid");
        assert_eq!(
            config.websocket.socketio.aliases,
            [SocketIoSpec::seed_001_dashboard()]
        );
        let yaml = serde_yaml::to_string(&config).expect("yaml");
        assert_eq!(
            DataplaneConfig::from_yaml(&yaml).expect("round trip"),
            config
        );
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let text = "
stream: { namespace: shop, name: clicks }
kafka: { bootstrapServers: 'localhost', saslMechanism: PLAIN, bootstrapServer: x }
topic: 'shop clicks'
ingest: { keyField: userId, maxBodyBytes: 10, produceTimeout: 0s }
websocket:
  channel: { field: /a, header: b }
  queueMessages: 0
  pingInterval: 30s
  idleTimeout: 10s
  queueMesages: 5
sink: { table: Bad-Table, maxRows: 0, deadLetterTopic: shop.clicks.dlq, consumerGroup: g }
";
        let got = paths(text);
        let want = [
            "kafka.bootstrapServer",
            "websocket.queueMesages",
            "kafka.bootstrapServers",
            "kafka.saslMechanism",
            "topic",
            "ingest.keyField",
            "ingest.maxBodyBytes",
            "ingest.produceTimeout",
            "websocket.channel",
            "websocket.queueMessages",
            "websocket.idleTimeout",
            "sink.table",
            "sink.maxRows",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn type_errors_name_their_path() {
        let text = format!("{MINIMAL}websocket: {{ queueMessages: lots }}\n");
        let got = problems(&text);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].path, "websocket.queueMessages");
        assert!(got[0].reason.contains("invalid type"), "{}", got[0].reason);
    }

    #[test]
    fn bad_durations_and_enums_are_refused() {
        let got = problems(&format!("{MINIMAL}ingest: {{ linger: soon }}\n"));
        assert_eq!(got[0].path, "ingest.linger");
        assert!(got[0].reason.contains("invalid duration"));
        let got = problems(&format!(
            "{MINIMAL}websocket: {{ slowClientPolicy: explode }}\n"
        ));
        assert_eq!(got[0].path, "websocket.slowClientPolicy");
        assert!(got[0].reason.contains("unknown variant"));
    }

    #[test]
    fn missing_required_keys_are_refused() {
        let got = problems("stream: { namespace: a, name: b }\ntopic: t\n");
        assert_eq!(got.len(), 1);
        assert!(got[0].reason.contains("missing field `kafka`"), "{:?}", got);
    }

    #[test]
    fn syntax_errors_are_refused_with_position() {
        let got = problems("stream: [unclosed\n");
        assert_eq!(got[0].path, "(document)");
        assert!(got[0].reason.contains("line"), "{}", got[0].reason);
    }

    #[test]
    fn dead_letter_topic_must_differ() {
        let text = format!(
            "{MINIMAL}sink: {{ table: t, deadLetterTopic: shop.clicks, consumerGroup: g }}\n"
        );
        assert_eq!(paths(&text), ["sink.deadLetterTopic"]);
    }

    #[test]
    fn display_lists_every_problem() {
        let err = DataplaneConfig::from_yaml(
            "stream: { namespace: '', name: '' }\nkafka: { bootstrapServers: 'h:1' }\ntopic: t\n",
        )
        .expect_err("invalid");
        let text = err.to_string();
        assert!(
            text.starts_with("invalid dataplane config (2 problems)"),
            "{text}"
        );
        assert!(text.contains("stream.namespace: must not be empty"));
        assert!(text.contains("stream.name: must not be empty"));
    }

    const ALERTS: &str = "
alerts:
  topic: shop.clicks.alerts
  stateTopic: shop.clicks.alerts.state
  consumerGroup: g
  transactionalId: t
  key: /serverId
  rules:
    - { name: cpu-critical, when: 'data.cpu > 90.0', severity: critical, for: 1m }
    - { name: mem, when: 'data.mem > 90.0', clearWhen: 'data.mem < 80.0', severity: warning }
";

    #[test]
    fn an_alerts_section_gets_defaults_and_round_trips() {
        let config = DataplaneConfig::from_yaml(&format!("{MINIMAL}{ALERTS}")).expect("valid");
        let alerts = config.alerts.clone().expect("alerts");
        assert_eq!(alerts.max_batch, 1000);
        assert_eq!(alerts.commit_interval, Duration::from_millis(200));
        assert_eq!(alerts.start_from, StartFrom::Latest);
        assert_eq!(alerts.rules[0].hold, Duration::from_secs(60));
        assert_eq!(alerts.rules[1].hold, Duration::ZERO);
        assert_eq!(alerts.rules[1].severity, AlertSeverity::Warning);
        let again = DataplaneConfig::from_yaml(&config.to_yaml()).expect("valid");
        assert_eq!(again, config);
    }

    #[test]
    fn bad_alert_rules_are_refused_each_with_its_path() {
        let text = format!(
            "{MINIMAL}{}",
            ALERTS
                .replace(
                    "stateTopic: shop.clicks.alerts.state",
                    "stateTopic: shop.clicks"
                )
                .replace("key: /serverId", "key: serverId")
                .replace("name: mem", "name: Mem")
                .replace("'data.cpu > 90.0'", "'data.cpu >'")
        );
        assert_eq!(
            paths(&text),
            [
                "alerts.stateTopic",
                "alerts.key",
                "alerts.rules[0].when",
                "alerts.rules[1].name"
            ]
        );
        let dup = format!(
            "{MINIMAL}{}",
            ALERTS.replace("name: mem", "name: cpu-critical")
        );
        assert_eq!(paths(&dup), ["alerts.rules[1].name"]);
        let severity = format!(
            "{MINIMAL}{}",
            ALERTS.replace("severity: warning", "severity: page")
        );
        assert_eq!(paths(&severity), ["alerts.rules[1].severity"]);
        let none = format!(
            "{MINIMAL}alerts: {{ topic: a, stateTopic: b, consumerGroup: g, transactionalId: t, key: /k, rules: [] }}\n"
        );
        assert_eq!(paths(&none), ["alerts.rules"]);
    }

    #[test]
    fn name_checks() {
        assert!(check_topic_name("a.b-c_D9").is_ok());
        assert!(check_topic_name("..").is_err());
        assert!(check_topic_name(&"x".repeat(250)).is_err());
        assert!(check_table_name("events").is_ok());
        assert!(check_table_name("analytics.events_2").is_ok());
        assert!(check_table_name("Events").is_err());
        assert!(check_table_name("a.b.c").is_err());
        assert!(check_table_name("1abc").is_err());
        assert!(check_bootstrap("a:1,b:2").is_ok());
        assert!(check_bootstrap("a:0").is_err());
        assert!(check_bootstrap("").is_err());
    }
}
