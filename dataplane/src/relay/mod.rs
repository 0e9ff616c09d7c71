//! Kafka → WebSocket/SSE fan-out (protocol v1, `docs/protocol.md`).
//!
//! - [`channel`]: which channel a record belongs to (pure).
//! - [`record`]: a consumed record and its shared, encode-once wire frames (pure).
//! - [`filter`]: CEL subscription filters over a record's variables (pure).
//! - [`protocol`]: client requests and server control frames in JSON and protobuf (pure).
//! - [`client`]: one subscriber's bounded queue and slow-client policy.
//! - [`hub`]: sharded subscriptions and delivery; never waits on a client.
//! - [`snapshot`]: the bounded last-record-per-channel cache of `websocket.snapshot`.
//! - [`consumer`]: the assign-all-partitions Kafka consumer feeding the hub.
//! - [`contact`]: whether Kafka still answers (readiness).
//! - [`replay`]: resume from Kafka with no gap and no duplicate.
//! - [`session`]: one client session whatever its transport: admission, requests and
//!   subscriptions ([`protocol::SubscribeOptions`] from transport to hub to client), delivery
//!   accounting.
//! - [`ws`], [`sse`], [`socketio`]: the transports, each only its wire; [`metrics`]:
//!   Prometheus metrics.

pub mod budget;
pub mod channel;
pub mod client;
pub mod consumer;
pub mod contact;
pub mod filter;
pub mod hub;
pub mod metrics;
pub mod protocol;
pub mod record;
pub mod replay;
pub mod session;
pub mod snapshot;
pub mod socketio;
pub mod sse;
pub mod ws;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use eventstream_crds::config::{DataplaneConfig, ENV_JWT_KEY, WebSocketConfig};
use eventstream_crds::v1alpha1::StartFrom;
use prometheus::Registry;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::auth::JwtVerifier;
use crate::server::Readiness;
use channel::ChannelSource;
use consumer::BridgeConsumer;
use hub::Hub;
use metrics::RelayMetrics;
use replay::Replayer;

/// Why the relay cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Kafka settings.
    #[error(transparent)]
    Settings(#[from] crate::kafka::KafkaSettingsError),
    /// Metrics registration.
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// JWT configuration.
    #[error("auth: {0}")]
    Auth(String),
    /// Kafka consumer.
    #[error(transparent)]
    Consumer(#[from] consumer::ConsumerError),
}

/// State shared by the transports, the consumer and the health endpoints.
pub struct Shared {
    /// Config of the fan-out.
    pub config: WebSocketConfig,
    /// The `stream` label.
    pub stream: String,
    /// Subscriptions and delivery.
    pub hub: Arc<Hub>,
    /// Resume from Kafka.
    pub replayer: Arc<Replayer>,
    /// Metrics.
    pub metrics: RelayMetrics,
    /// Token verification when WebSocket/SSE auth is on.
    pub verifier: Option<Arc<JwtVerifier>>,
    /// Cancelled on shutdown: connections close with 1001 and their positions.
    pub shutdown: CancellationToken,
    /// Open connections (both transports).
    pub connections: AtomicUsize,
    /// Whether the consumer is assigned and caught up.
    pub kafka_ready: Arc<AtomicBool>,
    /// When Kafka last answered.
    pub kafka_contact: Arc<contact::KafkaContact>,
    /// The process's readiness (whether a drain started, before `shutdown` closes clients).
    pub readiness: Readiness,
    next_id: AtomicU64,
}

impl Shared {
    /// A fresh client id.
    pub fn next_client_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes a connection slot, or `None` at `maxConnections`.
    pub fn admit(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let max = self.config.max_connections as usize;
        let mut current = self.connections.load(Ordering::Relaxed);
        loop {
            if current >= max {
                return None;
            }
            match self.connections.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(ConnectionSlot(self.clone())),
                Err(now) => current = now,
            }
        }
    }
}

/// A held connection slot, released on drop.
pub struct ConnectionSlot(Arc<Shared>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The fan-out of one stream.
pub struct Relay {
    shared: Arc<Shared>,
    consumer: Option<BridgeConsumer>,
    target: consumer::ConsumerStartTarget,
    source: ChannelSource,
}

impl Relay {
    /// Connects to Kafka and assigns every partition (waiting for the topic to exist).
    /// `jwt_key` is the HS256 secret or RS256 public key when `auth.websocket` is on.
    pub async fn start(
        config: &DataplaneConfig,
        registry: &Registry,
        readiness: &Readiness,
        shutdown: CancellationToken,
        jwt_key: Option<&str>,
    ) -> Result<Self, RelayError> {
        let stream = config.stream.label();
        let metrics = RelayMetrics::new(registry, &stream)?;
        let base = crate::kafka::client_config(&config.kafka)?;
        let source = ChannelSource::from_spec(&config.websocket.channel);
        let verifier = match &config.auth {
            Some(auth) if auth.websocket => {
                let key = jwt_key.ok_or_else(|| {
                    RelayError::Auth(format!(
                        "auth is configured but the environment variable {ENV_JWT_KEY} is not set"
                    ))
                })?;
                Some(Arc::new(
                    JwtVerifier::new(auth, key).map_err(|e| RelayError::Auth(e.to_string()))?,
                ))
            }
            _ => None,
        };
        let snapshot = config.websocket.snapshot.then(|| {
            snapshot::SnapshotCache::new(
                config.websocket.snapshot_max_channels as usize,
                metrics.snapshot_evictions.clone(),
                metrics.snapshot_channels.clone(),
            )
        });
        let hub = Arc::new(
            Hub::with_snapshot(snapshot)
                .with_metrics(metrics.filter.clone(), metrics.broadcasts.clone())
                .with_progress(hub::ProgressRule::for_replay_limit(
                    config.websocket.replay_max_messages,
                )),
        );
        let replayer = Arc::new(Replayer::new(
            base.clone(),
            config.topic.clone(),
            source.clone(),
            config.websocket.replay_max_messages,
            metrics.clone(),
        ));
        let ready = readiness.register("kafka");
        let kafka_contact = Arc::new(contact::KafkaContact::new(
            config.server.kafka_unready_after,
        ));
        let reachable = kafka_contact.clone();
        readiness.register_condition("kafka-reachable", move || reachable.reachable());
        let (consumer, target) = BridgeConsumer::start(
            &base,
            &config.topic,
            config.websocket.start_from == StartFrom::Earliest,
            &hub,
            ready.clone(),
            kafka_contact.clone(),
            &shutdown,
        )
        .await?;
        let shared = Arc::new(Shared {
            config: config.websocket.clone(),
            stream,
            hub,
            replayer,
            metrics,
            verifier,
            shutdown,
            connections: AtomicUsize::new(0),
            kafka_ready: ready,
            kafka_contact,
            readiness: readiness.clone(),
            next_id: AtomicU64::new(1),
        });
        Ok(Self {
            shared,
            consumer: Some(consumer),
            target,
            source,
        })
    }

    /// The shared state (for tests and the bridge's `/health`).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// `/ws`, `/sse`, `/socket.io/`, `/health` and `/stats`.
    pub fn routes(&self) -> Router {
        let mut router = Router::new()
            .route("/health", get(health))
            .route("/stats", get(stats));
        if self.shared.config.enabled {
            router = router
                .route("/ws", get(ws::handler))
                .route("/sse", get(sse::handler));
            if self.shared.config.socketio.enabled {
                router = socketio::route(router, &self.shared);
            }
        }
        router.with_state(self.shared.clone())
    }

    /// Consumes until shutdown (spawn it), then closes the consumer off the runtime (at most
    /// [`consumer::CLOSE_TIMEOUT`]).
    pub async fn run(mut self) {
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        let shared = self.shared.clone();
        consumer
            .run(
                self.source.clone(),
                shared.hub.clone(),
                shared.metrics.clone(),
                std::mem::take(&mut self.target),
                shared.shutdown.clone(),
            )
            .await;
        consumer.close().await;
    }
}

impl Drop for Relay {
    /// A relay dropped without [`run`](Relay::run) still closes its consumer off the runtime.
    fn drop(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            drop(consumer::drop_off_runtime(consumer));
        }
    }
}

/// The bridge's state as `/health` reports it, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthState {
    /// SIGTERM: closing its clients; new ones should go elsewhere.
    Draining,
    /// No answer from Kafka for longer than `server.kafkaUnreadyAfter`.
    KafkaUnreachable,
    /// Assigned, still reading up to the high watermarks seen at start.
    CatchingUp,
    /// Serving live.
    Healthy,
}

impl HealthState {
    /// Pure: the state from its inputs.
    pub fn of(draining: bool, kafka_reachable: bool, caught_up: bool) -> Self {
        if draining {
            Self::Draining
        } else if !kafka_reachable {
            Self::KafkaUnreachable
        } else if !caught_up {
            Self::CatchingUp
        } else {
            Self::Healthy
        }
    }

    /// `status` of `/health`.
    pub fn status(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::CatchingUp => "degraded",
            Self::KafkaUnreachable => "kafka_unreachable",
            Self::Draining => "draining",
        }
    }
}

async fn health(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let caught_up = shared.kafka_ready.load(Ordering::Acquire);
    let reachable = shared.kafka_contact.reachable();
    let draining = shared.readiness.is_draining() || shared.shutdown.is_cancelled();
    let state = HealthState::of(draining, reachable, caught_up);
    let body = json!({
        "status": state.status(),
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "stream": shared.stream,
        "connected_clients": shared.connections.load(Ordering::Relaxed),
        "subscriptions": shared.hub.subscription_count(),
        "kafka": {
            "state": if !reachable { "unreachable" } else if caught_up { "assigned" } else { "catching_up" },
            "partitions": shared.hub.partitions().len(),
            "silentForMs": shared.kafka_contact.silent_for().map(|d| d.as_millis() as u64),
        },
    });
    let code = if state == HealthState::Healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

async fn stats(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let m = &shared.metrics;
    let positions: serde_json::Map<String, serde_json::Value> = shared
        .hub
        .live_positions()
        .into_iter()
        .map(|(p, o)| (p.to_string(), json!(o)))
        .collect();
    Json(json!({
        "stream": shared.stream,
        "connections": {
            "websocket": m.connections_ws.get(),
            "sse": m.connections_sse.get(),
            "socketio": m.connections_socketio.get(),
        },
        "subscriptions": shared.hub.subscription_count(),
        "recordsConsumed": m.consumed.get(),
        "deliveries": m.deliveries.get(),
        "bytesOut": m.bytes_out.get(),
        "livePositions": positions,
    }))
}

#[cfg(test)]
mod tests {
    use super::HealthState;

    #[test]
    fn health_reports_the_worst_of_draining_kafka_and_catching_up() {
        assert_eq!(HealthState::of(false, true, true), HealthState::Healthy);
        assert_eq!(HealthState::of(false, true, false), HealthState::CatchingUp);
        assert_eq!(
            HealthState::of(false, false, true).status(),
            "kafka_unreachable"
        );
        assert_eq!(HealthState::of(true, true, true).status(), "draining");
        assert_eq!(HealthState::of(true, false, false), HealthState::Draining);
    }
}
