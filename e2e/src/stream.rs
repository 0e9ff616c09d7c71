//! The stream under test, prepared exactly as the operator prepares it: an EventStream read
//! from `examples/`, its topic (and the sink's dead-letter topic) created through the operator's
//! [`kafka_admin`](eventstream_operator::kafka_admin), and the dataplane config rendered by
//! [`render::dataplane_config`](eventstream_crds::render::dataplane_config) — the function whose
//! output the operator writes into the stream's ConfigMap.
//!
//! What a test changes is only what a cluster would supply differently: the bootstrap servers
//! (tansu), the table name, the listen address (a free port per process), and
//! `fetch.wait.max.ms` (tansu sleeps that long in every fetch; see `eventstream_testkit::tansu`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use eventstream_crds::EventStream;
use eventstream_crds::config::DataplaneConfig;
use eventstream_crds::render::{RenderDefaults, dataplane_config};
use eventstream_operator::kafka_admin::{
    DesiredTopic, KafkaConnection, RdKafkaAdmin, TopicReport, create_if_missing, ensure_topic,
};

use crate::binary::workspace_root;

/// Kafka properties every dataplane client of the no-cluster run gets (tansu's fetch quirk).
pub const TANSU_PROPERTIES: &[(&str, &str)] = &[("fetch.wait.max.ms", "5")];

/// `examples/<file>`.
pub fn example_path(file: &str) -> PathBuf {
    workspace_root().join("examples").join(file)
}

/// Reads an EventStream manifest (`apiVersion`, `kind`, `metadata`, `spec`).
pub fn load_example(file: &str) -> Result<EventStream> {
    let path = example_path(file);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let es: EventStream =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if es.metadata.namespace.is_none() || es.metadata.name.is_none() {
        bail!(
            "{} has no metadata.namespace or metadata.name",
            path.display()
        );
    }
    Ok(es)
}

/// Every EventStream file in `examples/`, sorted.
pub fn example_files() -> Result<Vec<String>> {
    let dir = workspace_root().join("examples");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Creates (or brings in line) the stream's topic with the operator's admin code, and the sink's
/// dead-letter topic (created when missing, as the operator does) when the stream has
/// persistence: `(topic report, Some((dead-letter topic, created now)))`.
pub async fn ensure_topics(
    es: &EventStream,
    bootstrap: &str,
) -> Result<(TopicReport, Option<(String, bool)>)> {
    let admin = RdKafkaAdmin::new(Duration::from_secs(10));
    let conn = KafkaConnection::plaintext(bootstrap);
    let desired = DesiredTopic::from_stream(es).context("the stream's desired topic")?;
    let topic = ensure_topic(&admin, &conn, &desired)
        .await
        .with_context(|| format!("ensuring topic {}", desired.name))?;
    let dlq = match &es.spec.persistence {
        Some(_) => {
            let dlq = DesiredTopic::dead_letters(es).context("the dead-letter topic")?;
            let created = create_if_missing(&admin, &conn, &dlq)
                .await
                .with_context(|| format!("creating dead-letter topic {}", dlq.name))?;
            Some((dlq.name, created))
        }
        None => None,
    };
    Ok((topic, dlq))
}

/// The dataplane config of `es` as the operator renders it, listening on `listen`, with the
/// tansu client properties added.
pub fn render(es: &EventStream, listen: SocketAddr) -> Result<DataplaneConfig> {
    let defaults = RenderDefaults {
        kafka_bootstrap: None,
        listen,
    };
    let mut config = dataplane_config(es, &defaults).context("rendering the dataplane config")?;
    for (k, v) in TANSU_PROPERTIES {
        config.kafka.properties.insert((*k).into(), (*v).into());
    }
    Ok(config)
}

/// Writes `config` as YAML (what the ConfigMap's `config.yaml` holds) to `dir/<name>.yaml`.
pub fn write_config(config: &DataplaneConfig, dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, config.to_yaml())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// `127.0.0.1:<free port>`.
pub fn free_listen() -> Result<SocketAddr> {
    let port = eventstream_testkit::free_port().context("finding a free port")?;
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}
