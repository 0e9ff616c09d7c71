//! `eventstream-dataplane alerts`: threshold alerts as a derived stream, exactly once.
//!
//! The evaluator reads the stream, evaluates every rule of `spec.alerts` on every record and
//! writes one `firing` event per rule and key when `when` has held for `for`, one `resolved`
//! when `clearWhen` holds, to the alerts topic, in Kafka transactions that also carry its state
//! and its input positions. `docs/alerts.md` describes the rules, the events and the guarantees.
//!
//! Modules, one job each:
//! - [`expr`]: CEL, `compile` and `eval` (the only user of the `cel` crate here).
//! - [`machine`]: the per-alert state machine, pure.
//! - [`engine`]: rules and state of every alert, one record at a time, with undo for aborts.
//! - [`event`]: the alert event and state record formats.
//! - [`evaluator`]: the consume-transform-produce loop in Kafka transactions.
//! - [`metrics`].

pub mod engine;
pub mod evaluator;
pub mod event;
pub mod expr;
pub mod machine;
pub mod metrics;

use anyhow::Context as _;
use eventstream_crds::config::DataplaneConfig;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use crate::server;

/// Runs the evaluator with its own ops server (`/healthz`, `/readyz`, `/metrics`) until
/// `shutdown` is cancelled or a fatal error.
pub async fn run(
    config: DataplaneConfig,
    registry: Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let readiness = server::Readiness::default();
    let ready = readiness.register("alerts");
    let listener = server::bind(config.server.listen).await?;
    let ops = tokio::spawn(server::serve(
        listener,
        server::ops_routes(registry.clone(), readiness),
        shutdown.clone(),
    ));
    let result = run_evaluator(config, &registry, ready, shutdown.clone()).await;
    shutdown.cancel();
    let _ = ops.await;
    result
}

/// Runs only the evaluator (no HTTP server): standalone mode runs it next to its bridge.
/// `ready` is set once the state is rebuilt and the stream assigned.
pub async fn run_evaluator(
    config: DataplaneConfig,
    registry: &Registry,
    ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Some(alerts) = config.alerts.clone() else {
        anyhow::bail!(
            "the config has no `alerts` section: alerts mode needs alerts.topic, alerts.stateTopic, \
             alerts.key and alerts.rules (the operator writes them when the EventStream sets spec.alerts)"
        );
    };
    let stream = config.stream.label();
    let rules = engine::compile_rules(&alerts).context("alert rules")?;
    let engine = engine::Engine::new(rules, alerts.key.clone());
    let metrics = metrics::AlertMetrics::register(registry, &stream)
        .context("registering the alert metrics")?;
    let kafka = crate::kafka::client_config(&config.kafka)?;
    let parts = evaluator::Parts {
        stream,
        topic: config.topic.clone(),
        alerts,
        kafka,
        engine,
        metrics,
        ready,
        shutdown,
    };
    let thread = std::thread::Builder::new()
        .name("alerts-evaluator".into())
        .spawn(move || evaluator::run(parts))
        .context("starting the evaluator thread")?;
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .context("joining the evaluator thread")?
        .map_err(|_| anyhow::anyhow!("the evaluator thread panicked"))?
        .context("alerts evaluator")
}
