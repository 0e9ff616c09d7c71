//! End-to-end harness of EventStream.
//!
//! Two suites use it:
//!
//! * the **no-cluster run** (`tests/no_cluster.rs`, part of `cargo test --workspace`): a tansu
//!   broker and a throw-away PostgreSQL from [`eventstream_testkit`], topics created by the
//!   operator's own Kafka admin code, dataplane configs rendered by the operator's own config
//!   builder from the EventStreams in `examples/`, and the real `eventstream-dataplane bridge`
//!   and `sink` binaries run as processes ([`process`]) and driven over HTTP and WebSocket
//!   ([`client`]); its randomized fault soak runs beside them the followers and the ingest of
//!   [`soak`];
//! * the **kind suite** (`tests/kind.rs`, feature `kind`), run by `e2e/kind.sh` against a kind
//!   cluster through the current kubeconfig; its pure parts (names unique per run, the Kafka
//!   tools' command line, image references) are in [`kind`], tested without a cluster.
//!
//! Nothing here fakes a part of the product: what differs from a cluster is only who starts the
//! processes and where the config file comes from (a temp file instead of a ConfigMap).

pub mod binary;
pub mod client;
pub mod kind;
pub mod process;
pub mod soak;
pub mod stream;

use std::time::Duration;

/// How long any single step (a process becoming ready, an event arriving, rows landing) may
/// take before the test fails with a message naming the step.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Polls `check` every 100 ms until it returns `Some`, or fails after `timeout` with `what` and
/// the last state `check` reported through `last`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last_error = match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => "condition not met yet".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}: {last_error}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
