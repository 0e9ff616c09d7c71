//! `eventstream-dataplane bridge`: one HTTP server for one stream, serving HTTP ingest
//! ([`crate::ingest`]), the WebSocket/SSE fan-out ([`crate::relay`]) and the operational
//! endpoints ([`crate::server`]), with a graceful shutdown: stop accepting, close clients with
//! 1001 and their resume positions, flush the producer, exit within `server.shutdownGrace`.

use std::time::Duration;

use anyhow::Context;
use eventstream_crds::config::{DataplaneConfig, ENV_JWT_KEY};
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use crate::ingest::Ingest;
use crate::relay::Relay;
use crate::server::{self, Readiness};

/// A started bridge: its address and the task serving it.
pub struct RunningBridge {
    /// The address the server listens on (useful with port 0).
    pub local_addr: std::net::SocketAddr,
    /// Completes when the bridge has shut down.
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Runs the bridge until `shutdown` is cancelled.
pub async fn run(
    config: DataplaneConfig,
    registry: Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let running = start(config, registry, shutdown).await?;
    running.task.await.context("bridge task")?
}

/// Binds, connects to Kafka and starts serving; returns once the bridge accepts connections.
/// The JWT key (when auth is configured) comes from `EVENTSTREAM_JWT_KEY`.
pub async fn start(
    config: DataplaneConfig,
    registry: Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningBridge> {
    let key = std::env::var(ENV_JWT_KEY).ok();
    start_with_key(config, registry, shutdown, key).await
}

/// [`start`] with the JWT key passed in.
pub async fn start_with_key(
    config: DataplaneConfig,
    registry: Registry,
    shutdown: CancellationToken,
    jwt_key: Option<String>,
) -> anyhow::Result<RunningBridge> {
    let listener = server::bind(config.server.listen).await?;
    let local_addr = listener.local_addr().context("listening address")?;
    let readiness = Readiness::default();
    let ingest = if config.ingest.enabled {
        Some(
            Ingest::with_jwt_key(&config, &registry, jwt_key.as_deref())
                .context("cannot start ingest")?,
        )
    } else {
        None
    };
    tracing::info!(stream = %config.stream.label(), topic = %config.topic, "connecting to Kafka");
    let relay = Relay::start(
        &config,
        &registry,
        &readiness,
        shutdown.clone(),
        jwt_key.as_deref(),
    )
    .await
    .context("cannot start the fan-out")?;
    let mut router = relay.routes();
    if let Some(ingest) = &ingest {
        router = router.merge(ingest.routes());
    }
    router = router.merge(server::ops_routes(registry, readiness));
    let consumer = tokio::spawn(relay.run());
    tracing::info!(%local_addr, "bridge listening (ingest, /ws, /sse, /health, /metrics)");
    let grace = config.server.shutdown_grace;
    let task = tokio::spawn(async move {
        let stopped = shutdown.clone();
        let serve = server::serve(listener, router, shutdown.clone());
        tokio::pin!(serve);
        tokio::select! {
            result = &mut serve => result?,
            _ = stopped.cancelled() => {
                // Connections close themselves on the token; give them the grace period.
                match tokio::time::timeout(grace, &mut serve).await {
                    Ok(result) => result?,
                    Err(_) => tracing::warn!(?grace, "connections still open after the grace period; exiting"),
                }
            }
        }
        if let Some(ingest) = ingest {
            let deadline = std::time::Instant::now() + Duration::from_secs(5).min(grace);
            if let Err(e) = ingest.close(deadline).await {
                tracing::warn!(error = %e, "producer flush incomplete at shutdown");
            }
            // Dropping the producer purges, flushes and joins librdkafka's threads: not on a
            // worker.
            let _ = tokio::task::spawn_blocking(move || drop(ingest)).await;
        }
        // The consumer task closes its Kafka consumer off the runtime; wait for that, bounded.
        let close = crate::relay::consumer::CLOSE_TIMEOUT + Duration::from_secs(1);
        if tokio::time::timeout(close, consumer).await.is_err() {
            tracing::warn!(?close, "the fan-out consumer did not stop in time; exiting");
        }
        tracing::info!("bridge stopped");
        Ok(())
    });
    Ok(RunningBridge { local_addr, task })
}
