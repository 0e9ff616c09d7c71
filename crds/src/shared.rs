//! The value types of the `eventstream.dev/v1alpha1` API that the dataplane config shares with
//! the custom resource: Kafka security, compression, channel derivation, slow-client policy, JWT
//! algorithm, TimescaleDB mode, payload format, and the patterns the CRD validates with. They are
//! re-exported from [`crate::v1alpha1`], with or without the `kube` feature, so the dataplane
//! uses them without compiling Kubernetes. No Kubernetes code here: the one CEL rule (on
//! [`ChannelSpec`]) is written into the schema as plain data.
//!
//! The mapping of the Kafka security settings to librdkafka properties lives here too, once, for
//! every Kafka client of both binaries.

use std::collections::BTreeMap;

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

impl SecurityProtocol {
    /// librdkafka's `security.protocol` value.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    /// Clients authenticate with SASL, so they need a username and a password.
    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    /// The connection is TLS, so a private certificate authority may be needed.
    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// The SASL mechanism in effect when the spec says `configured`: none without SASL (the
    /// CRD refuses a mechanism there), [`SaslMechanism::DEFAULT`] when SASL has none.
    pub fn sasl_mechanism(self, configured: Option<SaslMechanism>) -> Option<SaslMechanism> {
        self.uses_sasl()
            .then(|| configured.unwrap_or(SaslMechanism::DEFAULT))
    }

    /// The librdkafka properties of this protocol with the `configured` mechanism, credentials
    /// aside: `security.protocol`, and `sasl.mechanism` with SASL. Every Kafka client of the
    /// operator and the dataplane starts from these.
    pub fn librdkafka_properties(
        self,
        configured: Option<SaslMechanism>,
    ) -> Vec<(&'static str, &'static str)> {
        let mut properties = vec![("security.protocol", self.as_librdkafka())];
        if let Some(mechanism) = self.sasl_mechanism(configured) {
            properties.push(("sasl.mechanism", mechanism.as_librdkafka()));
        }
        properties
    }
}

impl SaslMechanism {
    /// The mechanism of a SASL connection whose spec names none: the strongest Kafka offers
    /// with a password.
    pub const DEFAULT: SaslMechanism = SaslMechanism::ScramSha512;

    /// librdkafka's `sasl.mechanism` value (Kafka's own names).
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
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

/// How a record's channel is derived. Set at most one of `field` and `header`; with neither,
/// the channel is the record's Kafka key. Records with no channel value reach only `*` subscribers.
// The CEL rule is schema data here rather than kube's `x_kube` attribute, which would need kube.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "message": "websocket.channel: set field or header, not both (neither means the Kafka key)",
    "rule": "!(has(self.field) && has(self.header))",
}]))]
pub struct ChannelSpec {
    /// JSON pointer into the payload whose value names the channel, e.g. `/sessionId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = JSON_POINTER_PATTERN))]
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

/// How serious an alert is: the `severity` of its events and of the
/// `eventstream_alerts_firing` metric.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum AlertSeverity {
    /// Worth knowing, nothing to do yet.
    Info,
    /// Needs attention soon.
    Warning,
    /// Needs attention now.
    Critical,
}

impl AlertSeverity {
    /// The value as written in specs, events and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

/// Pattern of an alert rule name: a DNS label, so that `<rule>/<key>` (the alert's Kafka key)
/// splits unambiguously at its first '/' and the name is a safe metric label value.
pub const ALERT_RULE_NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

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

/// JWT signature algorithm.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 and a shared secret.
    HS256,
    /// RSA PKCS#1 v1.5 with SHA-256; the Secret holds the public key.
    RS256,
}

/// TimescaleDB mode.
// CamelCase words, as Kubernetes' own enums: YAML 1.1 readers (kubectl, Helm) turn an unquoted
// `on` or `off` into a boolean, which the API server then refuses for a string field. The old
// spellings are still read (never written): objects stored before carry `auto`, and a ConfigMap
// written by an older operator may say `on` or `off`; the CRD lists only the new ones.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Timescale {
    /// A hypertable when the extension is available, a plain table otherwise.
    #[default]
    #[serde(alias = "auto")]
    Auto,
    /// Always a hypertable; the sink fails to start when the extension is missing.
    #[serde(alias = "on")]
    Enabled,
    /// Always a plain table.
    #[serde(alias = "off")]
    Disabled,
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

/// How the PostgreSQL sink stores records (`persistence.postgres.mode`, `sink.mode`).
// CamelCase words like the other enums of the API (see `Timescale`); the lower-case spellings
// of issue 18 are read too.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SinkMode {
    /// Every record becomes a row, keyed by `(partition, offset)`.
    #[default]
    #[serde(alias = "append")]
    Append,
    /// One row per key with the newest record of that key, updated in place.
    #[serde(alias = "upsert")]
    Upsert,
}

impl SinkMode {
    /// Whether this is the default (left out of generated configs).
    pub fn is_append(&self) -> bool {
        *self == Self::Append
    }
}

/// What an upsert sink does with a tombstone (a record without payload).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Tombstones {
    /// Delete the key's row (Kafka Connect's JDBC sink convention), unless the row holds a
    /// newer record.
    #[default]
    Delete,
    /// Leave the row as it is; the tombstone is counted as skipped.
    Ignore,
}

/// The key and tombstone handling of `mode: Upsert`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct UpsertSpec {
    /// JSON pointer to the field whose value is the row's key (`/animeId`). Absent: the Kafka
    /// key (the ingest's `keyField` sets it). A string value is the key as it is, a number or
    /// boolean its JSON text; a record without the field goes to the dead-letter topic
    /// (`no_upsert_key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = JSON_POINTER_PATTERN))]
    pub key_field: Option<String>,
    /// `Delete` (default): a tombstone deletes the key's row; `Ignore`: tombstones change
    /// nothing. Tombstones are found by the Kafka key, so `Delete` with a `keyField` needs the
    /// Kafka key to be that same value.
    #[serde(default)]
    pub tombstones: Tombstones,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librdkafka_properties_follow_the_protocol() {
        assert_eq!(
            SecurityProtocol::Plaintext.librdkafka_properties(None),
            [("security.protocol", "plaintext")]
        );
        assert_eq!(
            SecurityProtocol::Ssl.librdkafka_properties(None),
            [("security.protocol", "ssl")]
        );
        assert_eq!(
            SecurityProtocol::SaslPlaintext.librdkafka_properties(None),
            [
                ("security.protocol", "sasl_plaintext"),
                ("sasl.mechanism", "SCRAM-SHA-512")
            ]
        );
        assert_eq!(
            SecurityProtocol::SaslSsl.librdkafka_properties(Some(SaslMechanism::Plain)),
            [
                ("security.protocol", "sasl_ssl"),
                ("sasl.mechanism", "PLAIN")
            ]
        );
    }

    #[test]
    fn sasl_and_tls_are_read_off_the_protocol() {
        let all = [
            SecurityProtocol::Plaintext,
            SecurityProtocol::Ssl,
            SecurityProtocol::SaslPlaintext,
            SecurityProtocol::SaslSsl,
        ];
        let sasl: Vec<_> = all.iter().map(|p| p.uses_sasl()).collect();
        let tls: Vec<_> = all.iter().map(|p| p.uses_tls()).collect();
        assert_eq!(sasl, [false, false, true, true]);
        assert_eq!(tls, [false, true, false, true]);
        // A mechanism without SASL is ignored, never sent to librdkafka.
        assert_eq!(
            SecurityProtocol::Ssl.sasl_mechanism(Some(SaslMechanism::Plain)),
            None
        );
    }

    #[test]
    fn timescale_reads_the_old_spellings_and_writes_the_new() {
        for (old, new, mode) in [
            ("auto", "Auto", Timescale::Auto),
            ("on", "Enabled", Timescale::Enabled),
            ("off", "Disabled", Timescale::Disabled),
        ] {
            assert_eq!(serde_yaml::from_str::<Timescale>(old).ok(), Some(mode));
            assert_eq!(serde_yaml::from_str::<Timescale>(new).ok(), Some(mode));
            assert_eq!(
                serde_json::to_value(mode).ok(),
                Some(serde_json::json!(new))
            );
        }
        // What YAML 1.1 makes of an unquoted `off` is refused, not guessed.
        assert!(serde_json::from_value::<Timescale>(serde_json::json!(false)).is_err());
    }

    #[test]
    fn librdkafka_names_are_the_serialised_names() {
        // The spec spells both as Kafka does; librdkafka takes the protocol in lower case.
        for p in [
            SecurityProtocol::Plaintext,
            SecurityProtocol::Ssl,
            SecurityProtocol::SaslPlaintext,
            SecurityProtocol::SaslSsl,
        ] {
            let yaml = serde_json::to_value(p).expect("serialises");
            assert_eq!(
                yaml.as_str().map(str::to_lowercase).as_deref(),
                Some(p.as_librdkafka())
            );
        }
        for m in [
            SaslMechanism::Plain,
            SaslMechanism::ScramSha256,
            SaslMechanism::ScramSha512,
        ] {
            let yaml = serde_json::to_value(m).expect("serialises");
            assert_eq!(yaml.as_str(), Some(m.as_librdkafka()));
        }
    }
}

/// Socket.IO v4 on the bridge's `/socket.io/` (`websocket.socketio`; `docs/socketio.md`):
/// channels are rooms joined with `subscribe`, and `aliases` map a front end's own join events
/// (seed 001's `join_dashboard`) onto a subscription, so that front end keeps its code.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SocketIoSpec {
    /// Serve Socket.IO on `/socket.io/` (with `/ws` and `/sse`; off when the fan-out is off).
    #[serde(default = "socketio_enabled")]
    pub enabled: bool,
    /// The event name records are pushed as on subscriptions made with `subscribe`.
    #[serde(default = "socketio_event")]
    #[schemars(length(min = 1, max = 128))]
    pub event: String,
    /// What those events carry: `event` (the protocol v1 event object) or `payload` (the
    /// record's payload alone).
    #[serde(default)]
    pub payload: SocketIoPayload,
    /// Join events of existing front ends, each mapped onto a subscription.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub aliases: Vec<SocketIoAlias>,
}

fn socketio_enabled() -> bool {
    true
}

fn socketio_event() -> String {
    "event".into()
}

impl Default for SocketIoSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            event: socketio_event(),
            payload: SocketIoPayload::default(),
            aliases: Vec::new(),
        }
    }
}

impl SocketIoSpec {
    /// Whether this is the default (left out of rendered configs, so adding the key changed
    /// no ConfigMap).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Seed 001's front end: `join_dashboard` (no argument) joins `*`, is answered with
    /// `dashboard_joined`, and its sockets get `new_event` carrying the bare payload.
    pub fn seed_001_dashboard() -> SocketIoAlias {
        SocketIoAlias {
            join: "join_dashboard".into(),
            channel: Some("*".into()),
            ack: Some("dashboard_joined".into()),
            event: "new_event".into(),
            payload: SocketIoPayload::Payload,
        }
    }

    /// Problems with the names, as `(field under socketio, reason)`: empty or reserved event
    /// names, and a join event used twice or equal to `subscribe`/`unsubscribe`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Err(e) = check_event_name(&self.event) {
            out.push(("event".into(), e));
        }
        let mut joins = std::collections::BTreeSet::new();
        for (i, alias) in self.aliases.iter().enumerate() {
            let at = |f: &str| format!("aliases[{i}].{f}");
            if let Err(e) = check_event_name(&alias.join) {
                out.push((at("join"), e));
            } else if matches!(alias.join.as_str(), "subscribe" | "unsubscribe") {
                out.push((at("join"), "subscribe and unsubscribe are built in".into()));
            } else if !joins.insert(alias.join.as_str()) {
                out.push((at("join"), format!("{:?} is listed twice", alias.join)));
            }
            if let Err(e) = check_event_name(&alias.event) {
                out.push((at("event"), e));
            }
            if let Some(ack) = &alias.ack
                && let Err(e) = check_event_name(ack)
            {
                out.push((at("ack"), e));
            }
            if alias.channel.as_deref() == Some("") {
                out.push((
                    at("channel"),
                    "must not be empty (leave it out to take the channel from the argument)".into(),
                ));
            }
        }
        out
    }
}

/// Events that socket.io-client keeps for itself: a server event by one of these names never
/// reaches the application's handler.
pub const SOCKETIO_RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

fn check_event_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err("an event name is 1 to 128 bytes".into());
    }
    if SOCKETIO_RESERVED_EVENTS.contains(&name) {
        return Err(format!("{name:?} is reserved by Socket.IO"));
    }
    Ok(())
}

/// What a Socket.IO record event carries.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum SocketIoPayload {
    /// The protocol v1 event object (`channel`, `partition`, `offset`, `data`, …).
    #[default]
    Event,
    /// The record's payload alone (JSON as is, text as a string, binary as base64).
    Payload,
}

/// A front end's join event mapped onto a subscription.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SocketIoAlias {
    /// The event the front end emits to join, e.g. `join_dashboard`.
    #[schemars(length(min = 1, max = 128))]
    pub join: String,
    /// The channel it joins (`*`: every record). Left out: the channel is the event's
    /// argument (a string, or an object with a `channel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The event that answers the join, e.g. `dashboard_joined` (an acknowledgement callback,
    /// when the front end passes one, is answered too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<String>,
    /// The event name the joined records are pushed as, e.g. `new_event`.
    #[schemars(length(min = 1, max = 128))]
    pub event: String,
    /// What those events carry.
    #[serde(default)]
    pub payload: SocketIoPayload,
}
