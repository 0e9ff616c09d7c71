//! Builds the dataplane config of an EventStream: a pure function of the resource and the
//! operator's defaults. The operator writes its result into the stream's ConfigMap; the
//! no-cluster end-to-end run uses the same function, so what it tests is what pods get.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::config::{
    AlertRuleConfig, AlertsConfig, AuthConfig, DataplaneConfig, IngestConfig, KafkaConfig,
    OffsetReset, ServerConfig, SinkConfig, StreamId, WebSocketConfig,
};
use crate::v1alpha1::EventStream;
use crate::{defaults, duration};

/// Where a mounted Kafka CA certificate is found inside dataplane pods.
pub const KAFKA_CA_FILE: &str = "/etc/eventstream/kafka/ca.crt";

/// What the operator adds to a spec: its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderDefaults {
    /// Bootstrap servers used when the spec has none.
    pub kafka_bootstrap: Option<String>,
    /// Address the dataplane's HTTP server listens on.
    pub listen: SocketAddr,
}

impl Default for RenderDefaults {
    fn default() -> Self {
        Self {
            kafka_bootstrap: None,
            listen: defaults::LISTEN,
        }
    }
}

/// Why an EventStream cannot be turned into a dataplane config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// Neither the spec nor the operator names a Kafka cluster.
    #[error(
        "no Kafka bootstrap servers: set spec.kafka.bootstrapServers or the operator's --kafka-bootstrap"
    )]
    NoBootstrap,
    /// The resource has no namespace or name (it did not come from the API server).
    #[error("the EventStream has no {0}")]
    MissingMetadata(&'static str),
    /// A duration the CRD pattern let through but that cannot be represented.
    #[error("spec.{field}: {source}")]
    Duration {
        /// Field path.
        field: &'static str,
        /// The parse error.
        source: duration::DurationError,
    },
    /// The status the operator wrote cannot be read back (edited by hand).
    #[error("status.{field}: {reason}")]
    Status {
        /// Field path.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The rendered config fails validation (a rule the CRD schema cannot express).
    #[error("{0}")]
    Invalid(#[from] crate::config::ConfigError),
}

fn parse_duration(field: &'static str, text: &str) -> Result<std::time::Duration, RenderError> {
    duration::parse(text).map_err(|source| RenderError::Duration { field, source })
}

/// The last offset reset the operator recorded in the status, for the sink to apply once.
fn offset_reset(stream: &EventStream) -> Result<Option<OffsetReset>, RenderError> {
    let Some(reset) = stream
        .status
        .as_ref()
        .and_then(|s| s.sink.as_ref())
        .and_then(|s| s.offset_reset.as_ref())
    else {
        return Ok(None);
    };
    let mut offsets = BTreeMap::new();
    for (partition, offset) in &reset.offsets {
        let p = partition.parse::<i32>().map_err(|_| RenderError::Status {
            field: "sink.offsetReset.offsets",
            reason: format!("{partition:?} is not a partition number"),
        })?;
        offsets.insert(p, *offset);
    }
    Ok(Some(OffsetReset {
        id: reset.id.clone(),
        offsets,
    }))
}

/// The dataplane config for `stream`.
pub fn dataplane_config(
    stream: &EventStream,
    defaults: &RenderDefaults,
) -> Result<DataplaneConfig, RenderError> {
    let namespace = stream
        .metadata
        .namespace
        .clone()
        .ok_or(RenderError::MissingMetadata("namespace"))?;
    let name = stream
        .metadata
        .name
        .clone()
        .ok_or(RenderError::MissingMetadata("name"))?;
    let spec = &stream.spec;
    let bootstrap_servers = spec
        .kafka
        .bootstrap_servers
        .clone()
        .or_else(|| defaults.kafka_bootstrap.clone())
        .ok_or(RenderError::NoBootstrap)?;
    let protocol = spec.kafka.security_protocol;
    let kafka = KafkaConfig {
        bootstrap_servers,
        security_protocol: protocol,
        sasl_mechanism: protocol.sasl_mechanism(spec.kafka.sasl_mechanism),
        ca_file: (protocol.uses_tls() && spec.kafka.secret_ref.is_some())
            .then(|| KAFKA_CA_FILE.to_string()),
        properties: Default::default(),
    };

    let ingest = IngestConfig {
        enabled: spec.ingest.enabled,
        key_field: spec.ingest.key_field.clone(),
        required_fields: spec.ingest.required_fields.clone(),
        schema: spec.ingest.schema.clone(),
        max_body_bytes: spec.ingest.max_body_bytes,
        max_batch_bytes: spec.ingest.max_batch_bytes,
        max_batch_items: spec.ingest.max_batch_items,
        linger: parse_duration("ingest.linger", &spec.ingest.linger)?,
        produce_timeout: parse_duration("ingest.produceTimeout", &spec.ingest.produce_timeout)?,
        compression: spec.topic.compression,
        enrich: spec.ingest.enrich.clone(),
        cors_origins: spec.ingest.cors_origins.clone(),
    };

    let ws = &spec.websocket;
    let websocket = WebSocketConfig {
        enabled: ws.enabled,
        channel: ws.channel.clone(),
        start_from: ws.start_from,
        replay_max_messages: ws.replay.max_messages,
        snapshot: ws.snapshot,
        snapshot_max_channels: ws.snapshot_max_channels,
        queue_messages: ws.slow_client.queue_messages,
        slow_client_policy: ws.slow_client.policy,
        max_connections: ws.max_connections,
        max_subscriptions_per_connection: ws.max_subscriptions_per_connection,
        max_frame_bytes: ws.max_frame_bytes,
        ping_interval: parse_duration("websocket.pingInterval", &ws.ping_interval)?,
        idle_timeout: parse_duration("websocket.idleTimeout", &ws.idle_timeout)?,
        socketio: ws.socketio.clone(),
    };

    let auth = spec.auth.as_ref().map(|a| AuthConfig {
        algorithm: a.algorithm,
        issuer: a.issuer.clone(),
        audience: a.audience.clone(),
        channels_claim: a.channels_claim.clone(),
        publish_claim: a.publish_claim.clone(),
        websocket: a.websocket,
        ingest: a.ingest,
    });

    let sink = match &spec.persistence {
        Some(p) => Some(SinkConfig {
            table: p.postgres.table.clone(),
            timescale: p.timescale,
            max_rows: p.batch.max_rows,
            max_delay: parse_duration("persistence.batch.maxDelay", &p.batch.max_delay)?,
            payload: p.payload,
            mode: p.postgres.mode,
            upsert: p.postgres.upsert.clone(),
            dead_letter_topic: stream.dead_letter_topic(),
            consumer_group: stream.sink_group(),
            offset_reset: offset_reset(stream)?,
        }),
        None => None,
    };

    let alerts = match &spec.alerts {
        Some(a) => {
            let mut rules = Vec::with_capacity(a.rules.len());
            for r in &a.rules {
                rules.push(AlertRuleConfig {
                    name: r.name.clone(),
                    when: r.when.clone(),
                    severity: r.severity,
                    hold: parse_duration("alerts.rules[].for", &r.hold)?,
                    clear_when: r.clear_when.clone(),
                });
            }
            Some(AlertsConfig {
                topic: stream.alerts_topic(),
                state_topic: stream.alerts_state_topic(),
                consumer_group: stream.alerts_group(),
                transactional_id: stream.alerts_group(),
                key: a.key.clone(),
                start_from: a.start_from,
                max_batch: AlertsConfig::DEFAULT_MAX_BATCH,
                commit_interval: AlertsConfig::DEFAULT_COMMIT_INTERVAL,
                rules,
            })
        }
        None => None,
    };

    let config = DataplaneConfig {
        stream: StreamId { namespace, name },
        kafka,
        topic: stream.topic_name(),
        server: ServerConfig {
            listen: defaults.listen,
            ..ServerConfig::default()
        },
        ingest,
        websocket,
        auth,
        sink,
        alerts,
    };
    let problems = config.validate();
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(crate::config::ConfigError { problems }.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1alpha1::EventStreamSpec;

    fn stream(spec_yaml: &str) -> EventStream {
        let spec: EventStreamSpec = serde_yaml::from_str(spec_yaml).expect("spec parses");
        let mut es = EventStream::new("telemetry", spec);
        es.metadata.namespace = Some("racing".into());
        es
    }

    #[test]
    fn defaults_fill_an_empty_spec() {
        let es = stream("{}");
        let defaults = RenderDefaults {
            kafka_bootstrap: Some("kafka:9092".into()),
            ..Default::default()
        };
        let config = dataplane_config(&es, &defaults).expect("renders");
        assert_eq!(config.topic, "racing.telemetry");
        assert_eq!(config.kafka.bootstrap_servers, "kafka:9092");
        assert_eq!(config.stream.label(), "racing/telemetry");
        assert!(config.sink.is_none());
        assert_eq!(config.websocket, WebSocketConfig::default());
        assert_eq!(config.ingest, IngestConfig::default());
    }

    #[test]
    fn spec_values_reach_the_config() {
        let es = stream(
            r#"
kafka: { bootstrapServers: "k:9093", securityProtocol: SASL_SSL, secretRef: { name: creds } }
topic: { name: frames, partitions: 10, compression: lz4 }
ingest: { keyField: /sessionId, requiredFields: [eventType], linger: 20ms }
websocket: { channel: { field: /sessionId }, replay: { maxMessages: 50 }, slowClient: { policy: disconnect } }
persistence:
  postgres: { urlSecretRef: { name: db, key: url }, table: telemetry_frames }
  batch: { maxRows: 500, maxDelay: 250ms }
"#,
        );
        let config = dataplane_config(&es, &RenderDefaults::default()).expect("renders");
        assert_eq!(config.topic, "frames");
        assert_eq!(
            config.kafka.sasl_mechanism,
            Some(crate::v1alpha1::SaslMechanism::ScramSha512)
        );
        assert_eq!(config.kafka.ca_file.as_deref(), Some(KAFKA_CA_FILE));
        assert_eq!(config.ingest.key_field.as_deref(), Some("/sessionId"));
        assert_eq!(config.ingest.linger, std::time::Duration::from_millis(20));
        assert_eq!(config.ingest.compression, crate::v1alpha1::Compression::Lz4);
        assert_eq!(config.websocket.replay_max_messages, 50);
        let sink = config.sink.expect("persistence set");
        assert_eq!(sink.max_rows, 500);
        assert_eq!(sink.dead_letter_topic, "frames.dlq");
        assert_eq!(sink.consumer_group, "eventstream.racing.telemetry.sink");
    }

    fn with_reset(offsets: &[(&str, i64)]) -> EventStream {
        let mut es = stream(
            "kafka: { bootstrapServers: 'k:1' }\npersistence: { postgres: { urlSecretRef: { name: db, key: url }, table: t } }",
        );
        es.status = Some(crate::v1alpha1::EventStreamStatus {
            sink: Some(crate::v1alpha1::SinkStatus {
                offset_reset: Some(crate::v1alpha1::SinkOffsetReset {
                    id: "latest@2026-11-22T10:00:00Z".into(),
                    to: "latest".into(),
                    offsets: offsets.iter().map(|(p, o)| (p.to_string(), *o)).collect(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        es
    }

    #[test]
    fn a_recorded_offset_reset_reaches_the_sink_config() {
        let config = dataplane_config(
            &with_reset(&[("0", 42), ("1", 7)]),
            &RenderDefaults::default(),
        )
        .expect("renders");
        let reset = config.sink.and_then(|s| s.offset_reset).expect("reset");
        assert_eq!(reset.id, "latest@2026-11-22T10:00:00Z");
        assert_eq!(reset.offsets, BTreeMap::from([(0, 42), (1, 7)]));
        // The ConfigMap text reads back (integer map keys survive YAML).
        let text = serde_yaml::to_string(
            &dataplane_config(&with_reset(&[("0", 42)]), &RenderDefaults::default())
                .expect("renders"),
        )
        .expect("yaml");
        let back = crate::config::DataplaneConfig::from_yaml(&text).expect("parses");
        assert_eq!(
            back.sink.and_then(|s| s.offset_reset).map(|r| r.offsets),
            Some(BTreeMap::from([(0, 42)]))
        );
    }

    #[test]
    fn a_garbled_offset_reset_in_the_status_is_an_error_not_a_guess() {
        let err = dataplane_config(&with_reset(&[("zero", 42)]), &RenderDefaults::default())
            .expect_err("garbled");
        assert!(
            err.to_string().contains("status.sink.offsetReset.offsets"),
            "{err}"
        );
        let err = dataplane_config(&with_reset(&[("0", -1)]), &RenderDefaults::default())
            .expect_err("negative");
        assert!(
            err.to_string().contains("sink.offsetReset.offsets"),
            "{err}"
        );
    }

    #[test]
    fn an_upsert_table_reaches_the_sink_config_and_a_stray_upsert_is_refused() {
        let es = stream(
            "kafka: { bootstrapServers: 'k:1' }\npersistence: { postgres: { urlSecretRef: { name: db, key: url }, table: live, mode: Upsert, upsert: { keyField: /animeId } } }",
        );
        let sink = dataplane_config(&es, &RenderDefaults::default())
            .expect("renders")
            .sink
            .expect("sink");
        assert_eq!(sink.mode, crate::v1alpha1::SinkMode::Upsert);
        assert_eq!(
            sink.upsert.and_then(|u| u.key_field).as_deref(),
            Some("/animeId")
        );
        let es = stream(
            "kafka: { bootstrapServers: 'k:1' }\npersistence: { postgres: { urlSecretRef: { name: db, key: url }, table: t, upsert: { tombstones: Ignore } } }",
        );
        let err = dataplane_config(&es, &RenderDefaults::default()).expect_err("invalid");
        assert!(err.to_string().contains("sink.upsert"), "{err}");
    }

    #[test]
    fn alerts_reach_the_config_with_their_topics_group_and_rules() {
        let es = stream(
            r#"
kafka: { bootstrapServers: "k:1" }
alerts:
  key: /serverId
  rules:
    - { name: cpu-critical, when: "data.metrics.cpu > 90.0", severity: critical, for: 1m }
"#,
        );
        let config = dataplane_config(&es, &RenderDefaults::default()).expect("renders");
        let alerts = config.alerts.expect("alerts");
        assert_eq!(alerts.topic, "racing.telemetry.alerts");
        assert_eq!(alerts.state_topic, "racing.telemetry.alerts.state");
        assert_eq!(alerts.consumer_group, "eventstream.racing.telemetry.alerts");
        assert_eq!(alerts.transactional_id, alerts.consumer_group);
        assert_eq!(alerts.rules[0].hold, std::time::Duration::from_secs(60));
        let bad = stream(
            "kafka: { bootstrapServers: 'k:1' }\nalerts: { key: /k, rules: [{ name: r, when: 'data.x >', severity: info }] }",
        );
        let err = dataplane_config(&bad, &RenderDefaults::default()).expect_err("bad CEL");
        assert!(err.to_string().contains("alerts.rules[0].when"), "{err}");
    }

    #[test]
    fn no_bootstrap_anywhere_is_an_error() {
        let es = stream("{}");
        assert_eq!(
            dataplane_config(&es, &RenderDefaults::default()),
            Err(RenderError::NoBootstrap)
        );
    }

    #[test]
    fn rules_the_crd_cannot_express_are_caught() {
        let es = stream(
            "kafka: { bootstrapServers: 'k:1' }\nwebsocket: { pingInterval: 1m, idleTimeout: 30s }",
        );
        let err = dataplane_config(&es, &RenderDefaults::default()).expect_err("invalid");
        assert!(err.to_string().contains("websocket.idleTimeout"), "{err}");
    }
}
