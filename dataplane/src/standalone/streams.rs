//! Which streams a standalone process serves: from `--config FILE` (dataplane config files,
//! `docs/config.md`) or from flags (`--stream NAME`, default one `telemetry` stream shaped like
//! the README's example). Pure: no I/O besides reading the files, unit tested below.
//!
//! Standalone owns two things a config file would otherwise say: where Kafka is (the embedded
//! broker, or `--kafka-bootstrap`) and where the HTTP server listens (`--listen`, one server for
//! every stream). A file may leave `kafka` out entirely.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use eventstream_crds::config::{DataplaneConfig, SinkConfig};
use eventstream_crds::v1alpha1::SocketIoSpec;

/// A placeholder bootstrap list, replaced once the broker's address is known.
pub const PLACEHOLDER_BOOTSTRAP: &str = "127.0.0.1:9092";

/// The stream `standalone` serves when neither `--stream` nor `--config` is given.
pub const DEFAULT_STREAM: &str = "telemetry";

/// One stream to serve.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamPlan {
    /// Its dataplane config (Kafka address filled in later).
    pub config: DataplaneConfig,
    /// Partitions of its topic when standalone creates it.
    pub partitions: i32,
    /// Where it came from, for messages: `--stream telemetry` or the file path.
    pub origin: String,
}

impl StreamPlan {
    /// The stream's name (`stream.name`), also its path segment under `/streams/`.
    pub fn name(&self) -> &str {
        &self.config.stream.name
    }
}

/// What the flags say about streams.
#[derive(Debug, Clone, Default)]
pub struct StreamFlags {
    /// `--stream NAME` (repeatable).
    pub names: Vec<String>,
    /// `--key-field POINTER` for `--stream` streams.
    pub key_field: Option<String>,
    /// `--config FILE` (repeatable).
    pub configs: Vec<PathBuf>,
    /// `--partitions N`.
    pub partitions: i32,
    /// `--postgres-url` given: every stream gets a sink (a default one when its file has none).
    pub sink: bool,
}

/// The streams to serve, in order (the first is also served at `/`).
pub fn plan(flags: &StreamFlags) -> anyhow::Result<Vec<StreamPlan>> {
    if !(1..=1000).contains(&flags.partitions) {
        anyhow::bail!(
            "--partitions {} is out of range: use 1 to 1000",
            flags.partitions
        );
    }
    let mut plans = Vec::new();
    for path in &flags.configs {
        plans.push(StreamPlan {
            config: load_file(path)?,
            partitions: flags.partitions,
            origin: path.display().to_string(),
        });
    }
    for name in &flags.names {
        check_name(name).with_context(|| format!("--stream {name:?}"))?;
        plans.push(StreamPlan {
            config: from_flags(name, flags.key_field.as_deref())?,
            partitions: flags.partitions,
            origin: format!("--stream {name}"),
        });
    }
    if plans.is_empty() {
        if flags.key_field.is_some() {
            anyhow::bail!("--key-field applies to --stream streams: add --stream NAME");
        }
        plans.push(StreamPlan {
            config: default_stream(),
            partitions: flags.partitions,
            origin: "default stream".into(),
        });
    }
    let mut names = BTreeSet::new();
    for p in &plans {
        check_name(p.name()).with_context(|| format!("{}: stream.name", p.origin))?;
        if !names.insert(p.name().to_string()) {
            anyhow::bail!(
                "two streams are named {:?} ({}): each stream needs its own name, it is its path /streams/{}/",
                p.name(),
                p.origin,
                p.name()
            );
        }
    }
    if flags.sink {
        for p in &mut plans {
            if p.config.sink.is_none() {
                p.config.sink = Some(default_sink(&p.config));
            }
        }
    } else {
        for p in &mut plans {
            p.config.sink = None;
        }
    }
    Ok(plans)
}

/// Checks a stream name: it becomes a URL path segment and a metric label.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        anyhow::bail!(
            "{name:?} is not a valid stream name: use 1 to 63 lower-case letters, digits and '-' (as Kubernetes names)"
        )
    }
}

/// Reads and validates one config file; `kafka` may be left out (standalone sets it).
pub fn load_file(path: &Path) -> anyhow::Result<DataplaneConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read config file {}: {e}; check the --config path",
            path.display()
        )
    })?;
    parse(&text).with_context(|| format!("config file {}", path.display()))
}

/// Parses a config text, filling `kafka.bootstrapServers` when absent.
pub fn parse(text: &str) -> anyhow::Result<DataplaneConfig> {
    let mut value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| anyhow::anyhow!("not YAML: {e}"))?;
    if let serde_yaml::Value::Mapping(root) = &mut value {
        let kafka = root
            .entry("kafka".into())
            .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
        if let serde_yaml::Value::Mapping(kafka) = kafka {
            kafka
                .entry("bootstrapServers".into())
                .or_insert_with(|| PLACEHOLDER_BOOTSTRAP.into());
        }
    }
    let text = serde_yaml::to_string(&value).context("re-encoding the config")?;
    Ok(DataplaneConfig::from_yaml(&text)?)
}

fn base(name: &str) -> String {
    format!(
        "stream: {{namespace: standalone, name: {name}}}\n\
         kafka: {{bootstrapServers: \"{PLACEHOLDER_BOOTSTRAP}\"}}\n\
         topic: {name}\n"
    )
}

/// A plain stream from `--stream NAME [--key-field POINTER]`: channels are the Kafka key.
pub fn from_flags(name: &str, key_field: Option<&str>) -> anyhow::Result<DataplaneConfig> {
    let mut text = base(name);
    if let Some(key) = key_field {
        let key = serde_json::to_string(key).context("--key-field")?;
        text.push_str(&format!("ingest: {{keyField: {key}}}\n"));
    }
    DataplaneConfig::from_yaml(&text).map_err(|e| anyhow::anyhow!("--key-field: {e}"))
}

/// The default stream, shaped like the README's example: sim-racing telemetry keyed by
/// session, the session as the channel. Its Socket.IO carries seed 001's dashboard alias
/// (`join_dashboard` → `dashboard_joined`, records as `new_event` with the bare payload), so
/// that front end works against `standalone` with nothing configured.
pub fn default_stream() -> DataplaneConfig {
    let mut text = base(DEFAULT_STREAM);
    text.push_str(
        "ingest: {keyField: /sessionId, requiredFields: [eventType, sessionId, timestamp]}\n",
    );
    let mut config = match DataplaneConfig::from_yaml(&text) {
        Ok(c) => c,
        Err(e) => panic!("the built-in default stream is valid: {e}"),
    };
    config
        .websocket
        .socketio
        .aliases
        .push(SocketIoSpec::seed_001_dashboard());
    config
}

/// A sink section for a stream that has none: table named after the stream.
pub fn default_sink(config: &DataplaneConfig) -> SinkConfig {
    let mut table: String = config
        .stream
        .name
        .chars()
        .map(|c| if c == '-' { '_' } else { c })
        .collect();
    if table.starts_with(|c: char| c.is_ascii_digit()) {
        table.insert_str(0, "s_");
    }
    let yaml = format!(
        "table: {table}\ndeadLetterTopic: {}.dead-letter\nconsumerGroup: eventstream-sink-{}\n",
        config.topic, config.stream.name
    );
    match serde_yaml::from_str(&yaml) {
        Ok(s) => s,
        Err(e) => panic!("the default sink section parses: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> StreamFlags {
        StreamFlags {
            partitions: 3,
            ..Default::default()
        }
    }

    #[test]
    fn default_is_one_telemetry_stream_keyed_by_session() {
        let plans = plan(&flags()).expect("plan");
        assert_eq!(plans.len(), 1);
        let c = &plans[0].config;
        assert_eq!(c.stream.name, "telemetry");
        assert_eq!(c.topic, "telemetry");
        assert_eq!(c.ingest.key_field.as_deref(), Some("/sessionId"));
        assert!(c.sink.is_none());
        // Seed 001's dashboard works against it unchanged.
        let alias = &c.websocket.socketio.aliases;
        assert_eq!(alias.len(), 1);
        assert_eq!(alias[0].join, "join_dashboard");
        assert_eq!(alias[0].channel.as_deref(), Some("*"));
        assert!(c.validate().is_empty(), "{:?}", c.validate());
    }

    #[test]
    fn streams_from_flags_keep_order_and_get_sinks_with_postgres() {
        let plans = plan(&StreamFlags {
            names: vec!["orders".into(), "page-views".into()],
            key_field: Some("/userId".into()),
            sink: true,
            ..flags()
        })
        .expect("plan");
        let names: Vec<_> = plans.iter().map(|p| p.name().to_string()).collect();
        assert_eq!(names, ["orders", "page-views"]);
        let sink = plans[1].config.sink.as_ref().expect("sink");
        assert_eq!(sink.table, "page_views");
        assert_eq!(sink.dead_letter_topic, "page-views.dead-letter");
        assert_eq!(plans[0].config.ingest.key_field.as_deref(), Some("/userId"));
    }

    #[test]
    fn refuses_bad_names_duplicates_and_partitions() {
        for name in ["", "Caps", "a/b", "-x", "x-", "a b"] {
            let err = plan(&StreamFlags {
                names: vec![name.into()],
                ..flags()
            })
            .expect_err(name);
            assert!(
                format!("{err:#}").contains("not a valid stream name"),
                "{err:#}"
            );
        }
        let err = plan(&StreamFlags {
            names: vec!["a".into(), "a".into()],
            ..flags()
        })
        .expect_err("duplicate");
        assert!(
            format!("{err:#}").contains("two streams are named"),
            "{err:#}"
        );
        let err = plan(&StreamFlags {
            partitions: 0,
            ..flags()
        })
        .expect_err("partitions");
        assert!(format!("{err:#}").contains("--partitions"), "{err:#}");
    }

    #[test]
    fn config_text_may_leave_kafka_out_and_reports_problems() {
        let c = parse("stream: {namespace: a, name: b}\ntopic: b\n").expect("parse");
        assert_eq!(c.kafka.bootstrap_servers, PLACEHOLDER_BOOTSTRAP);
        let c = parse("stream: {namespace: a, name: b}\ntopic: b\nkafka: {properties: {a: b}}\n")
            .expect("parse with kafka");
        assert_eq!(c.kafka.properties.get("a").map(String::as_str), Some("b"));
        let err =
            parse("stream: {namespace: a, name: b}\ntopic: b\nwebsocket: {queueMesages: 3}\n")
                .expect_err("typo");
        assert!(
            format!("{err:#}").contains("websocket.queueMesages"),
            "{err:#}"
        );
    }

    #[test]
    fn unreadable_file_says_which_flag() {
        let err = load_file(Path::new("/nonexistent/stream.yaml")).expect_err("missing");
        let text = format!("{err:#}");
        assert!(
            text.contains("/nonexistent/stream.yaml") && text.contains("--config"),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
    }
}
