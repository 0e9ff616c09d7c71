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

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use eventstream_crds::config::{DataplaneConfig, ENV_JWT_KEY};
use prometheus::Registry;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

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
        let shared = relay.shared();
        // One allow-list for every route a page calls (checked by Ingest above already).
        let origins = crate::cross_origin::Origins::new(&config.ingest.cors_origins)
            .map_err(|e| anyhow::anyhow!("stream {name}: {e}"))?;
        let mut router =
            crate::cross_origin::protect_relay(relay.routes(), &origins, shared.clone());
        if let Some(ingest) = &ingest {
            router = router.merge(ingest.routes());
        }
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
///
/// The order is what probes need: the listener serves `/healthz`, `/readyz` and `/metrics`
/// before Kafka is reached (a bridge waiting for its broker or topic is alive, not ready, and a
/// liveness probe must not kill it); the stream's routes answer 503 `starting` until it is.
/// When `shutdown` is cancelled the bridge drains: `/readyz` turns 503 at once, clients keep
/// being served for `server.drainDelay`, then they are closed (WebSocket 1001 with positions)
/// and new ones are refused with 503; the listener stays open until they are gone, so the
/// probes read the truth to the end.
pub async fn start_with_key(
    config: DataplaneConfig,
    registry: Registry,
    shutdown: CancellationToken,
    jwt_key: Option<String>,
) -> anyhow::Result<RunningBridge> {
    let listener = server::bind(config.server.listen).await?;
    let local_addr = listener.local_addr().context("listening address")?;
    let readiness = Readiness::default();
    let started = readiness.register("started");
    readiness.drain_on(&shutdown);
    let grace = config.server.shutdown_grace;
    let drain_delay = config.server.drain_delay;

    let stream_routes: Arc<OnceLock<Router>> = Arc::default();
    let app = server::ops_routes(registry.clone(), readiness.clone())
        .fallback_service(Starting(stream_routes.clone()));
    let stop_listening = CancellationToken::new();
    let mut server = tokio::spawn(server::serve(listener, app, stop_listening.clone()));
    tracing::info!(%local_addr, "serving /healthz, /readyz and /metrics; connecting to Kafka");

    // Clients, ingest and the consumer stop on their own token, `drainDelay` after `shutdown`
    // (at once while still starting: there is nobody to drain).
    let stop_clients = CancellationToken::new();
    {
        let (shutdown, stop_clients, started) =
            (shutdown.clone(), stop_clients.clone(), started.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = stop_clients.cancelled() => return,
            }
            if started.load(Ordering::Acquire) && !drain_delay.is_zero() {
                tracing::info!(
                    ?drain_delay,
                    "draining: not ready; closing clients after the drain delay"
                );
                tokio::time::sleep(drain_delay).await;
            }
            stop_clients.cancel();
        });
    }

    let bridge = match StreamBridge::start(
        config,
        registry,
        &readiness,
        stop_clients.clone(),
        jwt_key.as_deref(),
    )
    .await
    {
        Ok(bridge) => bridge,
        Err(e) => {
            let stopping = stop_clients.is_cancelled();
            stop_clients.cancel();
            stop_listening.cancel();
            let _ = tokio::time::timeout(grace, &mut server).await;
            if stopping {
                tracing::info!("shut down before Kafka was reached");
                let task = tokio::spawn(async { Ok(()) });
                return Ok(RunningBridge { local_addr, task });
            }
            return Err(e);
        }
    };
    let _ = stream_routes.set(bridge.router.clone());
    started.store(true, Ordering::Release);
    tracing::info!(%local_addr, "bridge listening (ingest, /ws, /sse, /health, /metrics)");

    let task = tokio::spawn(async move {
        tokio::select! {
            result = &mut server => {
                // The server ended by itself (it cannot accept any more): stop the rest.
                stop_clients.cancel();
                bridge.close(Instant::now() + FLUSH_TIMEOUT.min(grace)).await;
                return result.context("server task")?;
            }
            _ = stop_clients.cancelled() => {}
        }
        // Connections close themselves on the token; give them the grace period, while the
        // listener still answers the probes (and refuses new clients with 503).
        let deadline = Instant::now() + grace;
        let relay = bridge.relay.clone();
        while relay.connections.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop_listening.cancel();
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, &mut server).await {
            Ok(result) => result.context("server task")??,
            Err(_) => {
                tracing::warn!(
                    ?grace,
                    "connections still open after the grace period; exiting"
                )
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

/// The stream's routes once it started; `503 starting` before (while Kafka or the topic is
/// not there yet).
#[derive(Clone)]
struct Starting(Arc<OnceLock<Router>>);

impl tower::Service<Request> for Starting {
    type Response = Response;
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let routes = self.0.get().cloned();
        Box::pin(async move {
            match routes {
                Some(routes) => routes.oneshot(request).await,
                None => Ok((
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, "1")],
                    Json(json!({"error": {
                        "code": "starting",
                        "message": "the bridge is connecting to Kafka",
                    }})),
                )
                    .into_response()),
            }
        })
    }
}
