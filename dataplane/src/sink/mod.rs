//! `eventstream-dataplane sink`: Kafka → PostgreSQL (and TimescaleDB), exactly once.
//!
//! Rows and the consumed offsets are written in one transaction, and every partition starts where
//! PostgreSQL says, so a crash, a database outage or a rebalance neither loses nor duplicates a
//! row. Records that cannot become rows go to the dead-letter topic with the reason in headers.
//! `docs/persistence.md` describes the schema, the guarantees and the operations.
//!
//! Modules, one job each:
//! - [`record`]: a copied Kafka record and the poison rule.
//! - [`batch`]: collecting records into batches by rows, bytes and delay.
//! - [`copy`]: PostgreSQL's binary `COPY` encoding.
//! - [`connect`]: the URL with libpq's TLS parameters, opening sessions, connection errors.
//! - [`tls`]: rustls client configurations for libpq's `sslmode`s.
//! - [`schema`]: the events table, its shape check, TimescaleDB, `eventstream_offsets`.
//! - [`backend`]: the seam: what a storage backend does (write a batch, say where to resume) and
//!   the task that serves the consumer's commands to it.
//! - [`writer`]: the PostgreSQL backend, the transaction per batch (offset fence, `COPY`, dead letters, commit).
//! - [`upsert`]: current-state tables (`mode: Upsert`): the key, which record is newer, one
//!   change per key.
//! - [`dead_letter`]: producing dead letters with their headers.
//! - [`consumer`]: the consumer-group member, positioning, pausing and batching.
//! - [`backoff`], [`metrics`], [`error`].

pub mod backend;
pub mod backoff;
pub mod batch;
pub mod connect;
pub mod consumer;
pub mod copy;
pub mod dead_letter;
pub mod error;
pub mod metrics;
pub mod record;
pub mod schema;
pub mod tls;
pub mod upsert;
pub mod writer;

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use eventstream_crds::config::{DataplaneConfig, ENV_POSTGRES_URL};
use eventstream_crds::v1alpha1::SinkMode;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

pub use error::SinkError;

use crate::server;
use backend::Backend;
use backoff::Backoff;
use consumer::{ConsumerParts, Flags, Settings};
use dead_letter::DeadLetters;
use metrics::SinkMetrics;
use schema::TableName;
use writer::{Target, Writer};

/// Record bytes per batch before it is written regardless of `maxRows`.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// Knobs that do not come from the config file.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// The PostgreSQL URL (from `EVENTSTREAM_POSTGRES_URL` in [`run`]).
    pub postgres_url: String,
    /// Payloads above this go to the dead-letter topic; `None`: the stream's
    /// `ingest.maxBodyBytes`, the largest event the stream accepts.
    pub max_payload_bytes: Option<usize>,
    /// Record bytes per batch, see [`DEFAULT_MAX_BATCH_BYTES`].
    pub max_batch_bytes: usize,
    /// Static group membership under this `group.instance.id` ([`run`] takes it from the pod's
    /// environment, see [`consumer::group_instance_id`]); `None`: dynamic membership.
    pub group_instance_id: Option<String>,
}

impl SinkOptions {
    /// Defaults with `postgres_url`.
    pub fn new(postgres_url: impl Into<String>) -> Self {
        Self {
            postgres_url: postgres_url.into(),
            max_payload_bytes: None,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            group_instance_id: None,
        }
    }
}

/// Runs the sink until `shutdown` is cancelled: the URL comes from `EVENTSTREAM_POSTGRES_URL`.
pub async fn run(
    config: DataplaneConfig,
    registry: Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if config.sink.is_none() {
        anyhow::bail!(
            "the config has no `sink` section: sink mode needs sink.table, sink.deadLetterTopic and sink.consumerGroup \
             (the operator writes them when the EventStream sets spec.persistence)"
        );
    }
    let url = std::env::var(ENV_POSTGRES_URL).map_err(|_| {
        anyhow::anyhow!(
            "{ENV_POSTGRES_URL} is not set: the sink reads the PostgreSQL URL (postgres://user:password@host:port/database) from it"
        )
    })?;
    let mut options = SinkOptions::new(url);
    options.group_instance_id = consumer::group_instance_id(|name| std::env::var(name).ok());
    run_with(config, options, registry, shutdown)
        .await
        .context("sink")
}

/// [`run`] with explicit options (tests and benchmarks).
pub async fn run_with(
    config: DataplaneConfig,
    options: SinkOptions,
    registry: Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Some(sink) = config.sink.clone() else {
        anyhow::bail!("the config has no `sink` section");
    };
    let stream = config.stream.label();
    let metrics = SinkMetrics::register(&registry, &stream).context("registering sink metrics")?;

    let readiness = server::Readiness::default();
    let flags = Flags {
        postgres: readiness.register("postgres"),
        topic: readiness.register("topic"),
    };
    let listener = server::bind(config.server.listen).await?;
    let ops = tokio::spawn(server::serve(
        listener,
        server::ops_routes(registry.clone(), readiness.clone()),
        shutdown.clone(),
    ));

    let endpoint = connect::Endpoint::parse(&options.postgres_url, ENV_POSTGRES_URL)?;
    tracing::info!(
        database = %endpoint.describe(),
        tls = %endpoint.tls.summary(),
        "sink starting"
    );
    let kafka = crate::kafka::client_config(&config.kafka)?;
    let dead_letters = DeadLetters::new(kafka.clone(), &sink.dead_letter_topic, &config.topic)?;
    let target = Target {
        stream: stream.clone(),
        topic: config.topic.clone(),
        table: TableName::parse(&sink.table),
        timescale: sink.timescale,
        payload: sink.payload,
        offset_reset: sink.offset_reset.clone(),
        upsert: match sink.mode {
            SinkMode::Append => None,
            SinkMode::Upsert => Some(sink.upsert.clone().unwrap_or_default()),
        },
    };
    let mut writer = Writer::new(endpoint, target, dead_letters, metrics.clone());

    // Connect before joining the group: a wrong URL or table is reported at once, and an
    // unreachable database is waited for without holding partitions.
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        match writer.prepare().await {
            Ok(()) => break,
            Err(e) if e.is_retryable() => {
                metrics.database_error(e.kind());
                let delay = backoff.next_delay();
                tracing::error!(error = %e, retry_in = ?delay, "PostgreSQL is not available yet");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    flags.postgres.store(true, Ordering::Release);

    let (commands, command_rx) = tokio::sync::mpsc::channel(2);
    let (outcome_tx, outcomes) = std::sync::mpsc::channel();
    let writer_task = tokio::spawn(backend::serve(writer, command_rx, outcome_tx));

    let parts = ConsumerParts {
        settings: Settings {
            topic: config.topic.clone(),
            group: sink.consumer_group.clone(),
            max_rows: sink.max_rows as usize,
            max_delay: sink.max_delay,
            max_batch_bytes: options.max_batch_bytes,
            max_payload_bytes: options
                .max_payload_bytes
                .unwrap_or(config.ingest.max_body_bytes as usize),
            payload: sink.payload,
            shutdown_grace: config.server.shutdown_grace,
            group_instance_id: options.group_instance_id.clone(),
        },
        kafka,
        commands,
        outcomes,
        metrics,
        flags,
        shutdown: shutdown.clone(),
    };
    let consumer = std::thread::Builder::new()
        .name("sink-consumer".into())
        .spawn(move || consumer::run(parts))
        .context("starting the consumer thread")?;
    let consumed = tokio::task::spawn_blocking(move || consumer.join())
        .await
        .context("joining the consumer thread")?
        .map_err(|_| anyhow::anyhow!("the consumer thread panicked"))?;
    // The consumer dropped its command sender: the writer finishes its last command and ends.
    let _ = writer_task.await;
    shutdown.cancel();
    let _ = ops.await;
    consumed?;
    Ok(())
}
