//! The bridge of one stream: HTTP ingest ([`crate::ingest`]) and the WebSocket/SSE fan-out
//! ([`crate::relay`]) assembled once, as [`StreamBridge`], for both ways it is served:
//!
//! - `eventstream-dataplane bridge` ([`start`]): one stream on its own HTTP server, with the
//!   operational endpoints ([`crate::server`]) and a graceful shutdown: stop accepting, close
//!   clients with 1001 and their resume positions, flush the producer, exit within
//!   `server.shutdownGrace`;
//! - `standalone` ([`crate::standalone`]): several streams' routers nested in one server.
//!
//! Both stop the same way ([`StreamBridge::close`]), so a fix to the shutdown reaches both.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use eventstream_crds::config::{DataplaneConfig, ENV_JWT_KEY};
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use crate::ingest::Ingest;
use crate::relay::{Relay, Shared};
use crate::server::{self, Readiness};

/// Longest the producer may take to deliver what it holds at shutdown.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// One stream's ingest and fan-out, started, as a [`Router`] with no listener of its own.
pub struct StreamBridge {
    /// Its config.
    pub config: DataplaneConfig,
    /// The registry its ingest and fan-out metrics are in. They register fixed metric names,
    /// so two streams in one process need one registry each (standalone merges them).
    pub registry: Registry,
    /// The fan-out's shared state (partitions, for the viewer's stream list and the banner).
    pub relay: Arc<Shared>,
    /// `/ws`, `/sse`, `/health`, `/stats`, and `/produce*` when ingest is enabled.
    pub router: Router,
    ingest: Option<Ingest>,
    consumer: tokio::task::JoinHandle<()>,
}

impl StreamBridge {
    /// Starts ingest and the fan-out of `config` (waiting for its topic to exist), with metrics
    /// in `registry` and the Kafka readiness check in `readiness`. `jwt_key` is the HS256
    /// secret or RS256 public key when `auth` is configured.
    pub async fn start(
        config: DataplaneConfig,
        registry: Registry,
        readiness: &Readiness,
        shutdown: CancellationToken,
        jwt_key: Option<&str>,
    ) -> anyhow::Result<Self> {
        let name = config.stream.name.clone();
        let ingest = if config.ingest.enabled {
            Some(
                Ingest::with_jwt_key(&config, &registry, jwt_key)
                    .with_context(|| format!("stream {name}: cannot start ingest"))?,
            )
        } else {
            None
        };
        tracing::info!(stream = %config.stream.label(), topic = %config.topic, "connecting to Kafka");
        let relay = Relay::start(&config, &registry, readiness, shutdown, jwt_key)
            .await
            .with_context(|| format!("stream {name}: cannot start the fan-out"))?;
        let mut router = relay.routes();
        if let Some(ingest) = &ingest {
            router = router.merge(ingest.routes());
        }
        let shared = relay.shared();
        let consumer = tokio::spawn(relay.run());
        Ok(Self {
            config,
            registry,
            relay: shared,
            router,
            ingest,
            consumer,
        })
    }

    /// After the server stopped (the shutdown token is cancelled): flush the producer until
    /// `deadline`, then wait (bounded) for the fan-out consumer to close.
    pub async fn close(self, deadline: Instant) {
        let Self {
            config,
            router,
            ingest,
            consumer,
            ..
        } = self;
        let stream = &config.stream.name;
        // The routes hold the producer too: let go of them first, so that the drop below is
        // the last one.
        drop(router);
        if let Some(ingest) = ingest {
            if let Err(e) = ingest.close(deadline).await {
                tracing::warn!(%stream, error = %e, "producer flush incomplete at shutdown");
            }
            // Dropping the producer purges, flushes and joins librdkafka's threads: not on a
            // worker, where it would stall every task scheduled there.
            let _ = tokio::task::spawn_blocking(move || drop(ingest)).await;
        }
        // The consumer task closes its Kafka consumer off the runtime within CLOSE_TIMEOUT;
        // wait for that (with a second of slack), and no longer: a stuck close must not keep
        // the process from exiting.
        let close = crate::relay::consumer::CLOSE_TIMEOUT + Duration::from_secs(1);
        if tokio::time::timeout(close, consumer).await.is_err() {
            tracing::warn!(%stream, ?close, "the fan-out consumer did not stop in time; exiting");
        }
    }
}

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
    let grace = config.server.shutdown_grace;
    let bridge = StreamBridge::start(
        config,
        registry.clone(),
        &readiness,
        shutdown.clone(),
        jwt_key.as_deref(),
    )
    .await?;
    let router = bridge
        .router
        .clone()
        .merge(server::ops_routes(registry, readiness));
    tracing::info!(%local_addr, "bridge listening (ingest, /ws, /sse, /health, /metrics)");
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
        bridge
            .close(Instant::now() + FLUSH_TIMEOUT.min(grace))
            .await;
        tracing::info!("bridge stopped");
        Ok(())
    });
    Ok(RunningBridge { local_addr, task })
}
