//! The EventStream data plane as a library: the `eventstream-dataplane` binary is a thin CLI over
//! it, and integration tests and benchmarks drive the same code.
//!
//! Modules own one job each:
//! - [`cel`]: CEL expressions compiled once with bounded cost, evaluated per input.
//! - [`kafka`]: librdkafka client settings from the dataplane config (and secrets from the env).
//! - [`telemetry`]: logging and the Prometheus registry.
//! - [`server`]: the HTTP server skeleton: health, readiness, metrics, graceful shutdown.
//! - [`cross_origin`]: the browser origins allowed on every bridge route (CORS, WebSocket `Origin`).
//! - [`relay`]: Kafka → WebSocket/SSE fan-out with lossless resume.
//! - [`sink`]: Kafka → PostgreSQL, exactly once.
//! - [`alerts`]: threshold alerts derived from the stream, exactly once (Kafka transactions).
#![deny(missing_docs)]

pub mod alerts;
pub mod auth;
pub mod bridge;
/// CEL with bounded cost: shared with the config checks (`eventstream_crds::cel`).
pub use eventstream_crds::cel;
pub mod cross_origin;
pub mod ingest;
pub mod kafka;
pub mod relay;
pub mod server;
pub mod sink;
pub mod standalone;
pub mod telemetry;
