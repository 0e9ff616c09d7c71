//! The EventStream operator as a library: the binary (`src/main.rs`) only parses flags and calls
//! [`controller::run`]. Everything that decides *what* the cluster should look like is pure and
//! tested without I/O ([`children`], [`conditions`], [`kafka_admin::plan_topic`]); the adapters
//! that talk to the Kubernetes API and to Kafka are thin ([`controller`], [`kafka_admin`]).
//!
//! The pipeline of one reconcile (see [`controller`], one module per step): validate and build
//! the desired children as a set (pure) → topic (Kafka admin) → Secrets → apply the set
//! (server-side apply, ConfigMap first) and delete owned children no longer wanted → consumer
//! group → status (a pure function, written by server-side apply).
#![forbid(unsafe_code)]

pub mod children;
pub mod conditions;
pub mod config;
pub mod controller;
pub mod http;
pub mod kafka_admin;
pub mod leader;
pub mod metrics;
pub mod secrets;

pub use config::OperatorConfig;

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "eventstream-operator";
/// Finalizer that holds an EventStream until its topic and consumer group are cleaned up.
pub const FINALIZER: &str = "eventstream.dev/cleanup";
/// Annotation asking for a one-shot reset of the sink's consumer group: `earliest` or `latest`.
pub const RESET_OFFSETS_ANNOTATION: &str = "eventstream.dev/reset-sink-offsets";
/// Annotation (`"true"`) letting a stream's deletion finish without touching Kafka: the way
/// out when Kafka is gone for good and the finalizer would otherwise wait forever.
pub const SKIP_KAFKA_CLEANUP_ANNOTATION: &str = "eventstream.dev/skip-kafka-cleanup";
/// Pod-template annotation carrying the hash of the dataplane config, so a change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "eventstream.dev/config-hash";
/// Label naming the EventStream a child object belongs to.
pub const STREAM_LABEL: &str = "eventstream.dev/stream";
