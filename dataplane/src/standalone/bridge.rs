//! One stream's bridge as a [`Router`] (no listener of its own), so one HTTP server can serve
//! several streams: the same parts as [`crate::bridge::start_with_key`] — [`Relay`] for
//! `/ws`, `/sse`, `/health`, `/stats` and [`Ingest`] for `/produce`, `/produce/batch` — without
//! the bind and without the operational routes, which standalone serves once for all streams.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use eventstream_crds::config::DataplaneConfig;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use crate::ingest::Ingest;
use crate::relay::{Relay, Shared};
use crate::server::Readiness;

/// A started stream bridge.
pub struct StreamBridge {
    /// Its config.
    pub config: DataplaneConfig,
    /// Its own registry: the relay and ingest register fixed metric names, so two streams
    /// cannot share one; `/metrics` merges the registries.
    pub registry: Registry,
    /// The fan-out's shared state (partitions, for the page's stream list).
    pub relay: Arc<Shared>,
    /// `/ws`, `/sse`, `/health`, `/stats`, and `/produce*` when ingest is enabled.
    pub router: Router,
    ingest: Option<Ingest>,
    consumer: tokio::task::JoinHandle<()>,
}

impl StreamBridge {
    /// Starts ingest and the fan-out of `config` (waiting for its topic to exist).
    pub async fn start(
        config: DataplaneConfig,
        readiness: &Readiness,
        shutdown: CancellationToken,
        jwt_key: Option<&str>,
    ) -> anyhow::Result<Self> {
        let registry = Registry::new();
        let ingest = if config.ingest.enabled {
            Some(
                Ingest::with_jwt_key(&config, &registry, jwt_key).with_context(|| {
                    format!("stream {}: cannot start ingest", config.stream.name)
                })?,
            )
        } else {
            None
        };
        let relay = Relay::start(&config, &registry, readiness, shutdown, jwt_key)
            .await
            .with_context(|| format!("stream {}: cannot start the fan-out", config.stream.name))?;
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

    /// After the server stopped: flush the producer, let the consumer end.
    pub async fn close(self, deadline: Instant) {
        if let Some(ingest) = self.ingest
            && let Err(e) = ingest.close(deadline).await
        {
            tracing::warn!(stream = %self.config.stream.name, error = %e, "producer flush incomplete at shutdown");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.consumer).await;
    }
}
