//! The default of every setting, one constant each. The CRD types ([`crate::v1alpha1`], where a
//! default becomes the OpenAPI default the API server fills in) and the dataplane config
//! ([`crate::config`], for keys a config file leaves out) both read them, so the two can never
//! disagree. Durations are written as users write them (`60s`) and parsed when compiling.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use crate::duration::parse_const;

/// Partitions of a new topic.
pub const PARTITIONS: i32 = 3;
/// Pods of the bridge and of the sink.
pub const REPLICAS: i32 = 1;
/// Largest `POST /produce` body, in bytes.
pub const MAX_BODY_BYTES: u32 = 1024 * 1024;
/// Largest `POST /produce/batch` body, in bytes.
pub const MAX_BATCH_BYTES: u32 = 8 * 1024 * 1024;
/// Most events in one `POST /produce/batch`.
pub const MAX_BATCH_ITEMS: u32 = 1000;
/// Producer `linger.ms` (docs/benchmarks.md: at 5 ms the p99 exceeded 10 ms).
pub const LINGER: &str = "1ms";
/// Longest an ingest request waits for the broker's acknowledgement.
pub const PRODUCE_TIMEOUT: &str = "10s";
/// Most concurrent WebSocket and SSE connections per bridge pod.
pub const MAX_CONNECTIONS: u32 = 20_000;
/// Most subscriptions per connection.
pub const MAX_SUBSCRIPTIONS_PER_CONNECTION: u32 = 100;
/// Largest client frame, in bytes.
pub const MAX_FRAME_BYTES: u32 = 64 * 1024;
/// Interval of server pings.
pub const PING_INTERVAL: &str = "20s";
/// A connection silent for this long is closed; longer than [`PING_INTERVAL`].
pub const IDLE_TIMEOUT: &str = "60s";
/// Most records replayed for one resume.
pub const REPLAY_MAX_MESSAGES: u32 = 10_000;
/// `websocket.snapshotMaxChannels`: channels whose last record the snapshot cache keeps.
pub const SNAPSHOT_MAX_CHANNELS: u32 = 10_000;
/// Messages queued per client before the slow-client policy applies.
pub const QUEUE_MESSAGES: u32 = 1024;
/// JWT claim with the channels a subscriber may read.
pub const CHANNELS_CLAIM: &str = "channels";
/// JWT claim that allows publishing.
pub const PUBLISH_CLAIM: &str = "publish";
/// Rows per sink transaction (docs/decisions.md: 100-row batches lose a third of the throughput).
pub const BATCH_MAX_ROWS: u32 = 5000;
/// Longest a record waits before its batch is written.
pub const BATCH_MAX_DELAY: &str = "1s";
/// `for` of an alert rule: fire on the first record where `when` holds.
pub const ALERT_FOR: &str = "0s";
/// Address of the dataplane's HTTP server (ingest, `/ws`, `/sse`, probes, metrics).
pub const LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080));
/// How long a dataplane's shutdown waits for clients and in-flight work.
pub const SHUTDOWN_GRACE: &str = "10s";

// serde's `default = "…"` takes a function, not a constant: these return the constants above,
// for both modules. A duration has two, the text for the CRD and the parsed value for the config.

pub(crate) fn enabled() -> bool {
    true
}
#[cfg(feature = "kube")]
pub(crate) fn partitions() -> i32 {
    PARTITIONS
}
#[cfg(feature = "kube")]
pub(crate) fn replicas() -> i32 {
    REPLICAS
}
pub(crate) fn max_body_bytes() -> u32 {
    MAX_BODY_BYTES
}
pub(crate) fn max_batch_bytes() -> u32 {
    MAX_BATCH_BYTES
}
pub(crate) fn max_batch_items() -> u32 {
    MAX_BATCH_ITEMS
}
pub(crate) fn max_connections() -> u32 {
    MAX_CONNECTIONS
}
pub(crate) fn max_subscriptions_per_connection() -> u32 {
    MAX_SUBSCRIPTIONS_PER_CONNECTION
}
pub(crate) fn max_frame_bytes() -> u32 {
    MAX_FRAME_BYTES
}
pub(crate) fn replay_max_messages() -> u32 {
    REPLAY_MAX_MESSAGES
}
pub(crate) fn snapshot_max_channels() -> u32 {
    SNAPSHOT_MAX_CHANNELS
}
pub(crate) fn queue_messages() -> u32 {
    QUEUE_MESSAGES
}
pub(crate) fn channels_claim() -> String {
    CHANNELS_CLAIM.into()
}
pub(crate) fn publish_claim() -> String {
    PUBLISH_CLAIM.into()
}
pub(crate) fn batch_max_rows() -> u32 {
    BATCH_MAX_ROWS
}
pub(crate) fn listen() -> SocketAddr {
    LISTEN
}

/// Durations as the CRD writes them.
#[cfg(feature = "kube")]
pub(crate) mod text {
    pub(crate) fn linger() -> String {
        super::LINGER.into()
    }
    pub(crate) fn produce_timeout() -> String {
        super::PRODUCE_TIMEOUT.into()
    }
    pub(crate) fn ping_interval() -> String {
        super::PING_INTERVAL.into()
    }
    pub(crate) fn idle_timeout() -> String {
        super::IDLE_TIMEOUT.into()
    }
    pub(crate) fn batch_max_delay() -> String {
        super::BATCH_MAX_DELAY.into()
    }
    pub(crate) fn alert_for() -> String {
        super::ALERT_FOR.into()
    }
}

pub(crate) fn linger() -> Duration {
    const { parse_const(LINGER) }
}
pub(crate) fn produce_timeout() -> Duration {
    const { parse_const(PRODUCE_TIMEOUT) }
}
pub(crate) fn ping_interval() -> Duration {
    const { parse_const(PING_INTERVAL) }
}
pub(crate) fn idle_timeout() -> Duration {
    const { parse_const(IDLE_TIMEOUT) }
}
pub(crate) fn batch_max_delay() -> Duration {
    const { parse_const(BATCH_MAX_DELAY) }
}
pub(crate) fn shutdown_grace() -> Duration {
    const { parse_const(SHUTDOWN_GRACE) }
}
