//! HTTP ingest into Kafka, acknowledged only when durable.
//!
//! [`Ingest`] owns one stream's producer and compiled rules and serves `POST /produce` (one
//! event) and `POST /produce/batch` (a JSON array, NDJSON, or length-delimited protobuf
//! envelopes) on the bridge's HTTP server. A 200 is answered only after the broker acknowledged
//! the record (`acks=all`, idempotent producer) and carries its partition and offset; a broker
//! outage or timeout answers 503 with `Retry-After`. The API (bodies, codes) is documented in
//! `docs/ingest.md`.
//!
//! Each module has one job:
//! - [`broadcast`]: the `POST /broadcast` body and its marker header (pure).
//! - [`body`]: content type and framing → events (pure).
//! - [`validate`]: required fields and JSON Schema (pure).
//! - [`key`]: the Kafka key from a JSON pointer (pure).
//! - [`enrich`]: `receivedAt`/`ingestId` headers and payload fields (pure).
//! - [`prepare`]: an event through every rule into a record (pure).
//! - [`reply`]: error codes and response bodies.
//! - [`producer`]: the durable, bounded Kafka producer.
//! - [`metrics`]: the `eventstream_ingest_*` metrics.
//! - `routes`: the axum handlers, CORS and security headers.

pub mod body;
pub mod broadcast;
pub mod enrich;
pub mod key;
pub mod metrics;
pub mod prepare;
pub mod producer;
pub mod reply;
mod routes;
pub mod validate;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use eventstream_crds::config::{DataplaneConfig, ENV_JWT_KEY};
use rdkafka::error::KafkaError;
use tower_http::cors::CorsLayer;

use crate::auth::{AuthError, JwtVerifier};
use crate::kafka::KafkaSettingsError;
use metrics::Metrics;
use prepare::Rules;
use producer::Producer;

/// Why ingest cannot start (or flush).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// `ingest.schema` does not compile.
    #[error("{0}")]
    Schema(String),
    /// `ingest.corsOrigins` has an unusable entry.
    #[error("{0}")]
    Cors(String),
    /// Kafka settings cannot be built (missing SASL credentials).
    #[error(transparent)]
    KafkaSettings(#[from] KafkaSettingsError),
    /// librdkafka refused the producer settings.
    #[error("cannot create the ingest producer: {0}")]
    Producer(KafkaError),
    /// `auth.ingest` is on but `EVENTSTREAM_JWT_KEY` is not set.
    #[error("auth.ingest is enabled but the environment variable {ENV_JWT_KEY} is not set")]
    MissingJwtKey,
    /// The JWT key is unusable.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The metrics cannot be registered (registered twice in one registry).
    #[error("cannot register the ingest metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Records were still queued when the deadline passed.
    #[error("the ingest producer did not flush in time: {0}")]
    Flush(KafkaError),
}

/// State shared by the handlers.
struct Shared {
    producer: Producer,
    rules: Rules,
    verifier: Option<JwtVerifier>,
    publish_claim: String,
    max_body_bytes: usize,
    max_batch_bytes: usize,
    max_batch_items: usize,
    produce_timeout: Duration,
    metrics: Metrics,
    closing: AtomicBool,
}

/// HTTP ingest of one stream; see the [module docs](self). Cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    shared: Arc<Shared>,
    cors: Option<CorsLayer>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("producer", &self.shared.producer)
            .field("rules", &self.shared.rules)
            .field("auth", &self.shared.verifier.is_some())
            .finish_non_exhaustive()
    }
}

impl Ingest {
    /// Builds ingest for `config`: compiles the rules (a bad schema is an error naming the
    /// problem), creates the producer, registers the metrics in `registry`, and, when
    /// `auth.ingest` is on, reads the JWT key from `EVENTSTREAM_JWT_KEY`.
    pub fn new(
        config: &DataplaneConfig,
        registry: &prometheus::Registry,
    ) -> Result<Self, IngestError> {
        let wants_key = config.auth.as_ref().is_some_and(|a| a.ingest);
        let key = if wants_key {
            Some(std::env::var(ENV_JWT_KEY).map_err(|_| IngestError::MissingJwtKey)?)
        } else {
            None
        };
        Self::with_jwt_key(config, registry, key.as_deref())
    }

    /// [`Ingest::new`] with the JWT key passed in (tests, or a caller that read it already).
    pub fn with_jwt_key(
        config: &DataplaneConfig,
        registry: &prometheus::Registry,
        jwt_key: Option<&str>,
    ) -> Result<Self, IngestError> {
        let ingest = &config.ingest;
        let rules = Rules::new(ingest).map_err(IngestError::Schema)?;
        let cors = crate::cross_origin::Origins::new(&ingest.cors_origins)
            .map_err(IngestError::Cors)?
            .cors(&[axum::http::Method::POST]);
        let verifier = match &config.auth {
            Some(auth) if auth.ingest => {
                let key = jwt_key.ok_or(IngestError::MissingJwtKey)?;
                Some(JwtVerifier::new(auth, key)?)
            }
            _ => None,
        };
        let settings = producer::settings(config)?;
        let producer = Producer::new(&settings, &config.topic).map_err(IngestError::Producer)?;
        let metrics = Metrics::new(registry, &config.stream.label())?;
        Ok(Self {
            shared: Arc::new(Shared {
                producer,
                rules,
                verifier,
                publish_claim: config
                    .auth
                    .as_ref()
                    .map(|a| a.publish_claim.clone())
                    .unwrap_or_default(),
                max_body_bytes: ingest.max_body_bytes as usize,
                max_batch_bytes: ingest.max_batch_bytes as usize,
                max_batch_items: ingest.max_batch_items as usize,
                produce_timeout: ingest.produce_timeout,
                metrics,
                closing: AtomicBool::new(false),
            }),
            cors,
        })
    }

    /// `POST /produce` and `POST /produce/batch`, with their own state, CORS and security
    /// headers; merge it into the bridge's router.
    pub fn routes(&self) -> axum::Router {
        routes::router(self.shared.clone(), self.cors.clone())
    }

    /// Records queued or in flight in the producer.
    pub fn queue_depth(&self) -> i32 {
        self.shared.producer.queue_depth()
    }

    /// Waits until every queued record is acknowledged or failed, or `deadline` passes.
    pub async fn flush(&self, deadline: Instant) -> Result<(), IngestError> {
        self.shared
            .producer
            .flush(deadline)
            .await
            .map_err(IngestError::Flush)
    }

    /// Graceful shutdown: new requests get 503 `shutting_down` from now on, then the producer
    /// is flushed so in-flight requests get their answer.
    pub async fn close(&self, deadline: Instant) -> Result<(), IngestError> {
        self.shared.closing.store(true, Ordering::Release);
        self.flush(deadline).await
    }
}
