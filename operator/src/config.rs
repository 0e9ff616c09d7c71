//! The operator's own settings ([`OperatorConfig`]): what flags and discovery add to every
//! EventStream. Builders take it by reference, so a test can state every default it relies on.

use std::time::Duration;

use eventstream_crds::render::RenderDefaults;

/// Default image of the dataplane pods when neither the flag nor the spec names one.
pub const DEFAULT_DATAPLANE_IMAGE: &str = concat!(
    "ghcr.io/eventstream-dev/eventstream:",
    env!("CARGO_PKG_VERSION")
);

/// Settings that apply to every EventStream the operator manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorConfig {
    /// Image of bridge and sink pods (`--dataplane-image`); a spec may override it per workload.
    pub dataplane_image: String,
    /// Kafka bootstrap servers for streams that name none (`--kafka-bootstrap`).
    pub kafka_bootstrap: Option<String>,
    /// Watch only this namespace (`--namespace`); `None` watches all namespaces.
    pub namespace: Option<String>,
    /// Whether the `monitoring.coreos.com/v1` ServiceMonitor kind exists (found by discovery).
    pub service_monitor: bool,
    /// Whether the `monitoring.coreos.com/v1` PodMonitor kind exists (found by discovery).
    pub pod_monitor: bool,
    /// Periodic re-check of a healthy stream (topic drift, lag, replicas).
    pub resync: Duration,
    /// Re-check of a stream that waits for the user (missing Secret, rejected spec).
    pub await_user: Duration,
    /// First retry after a transient failure; doubled per consecutive failure.
    pub backoff_base: Duration,
    /// Longest retry delay after consecutive failures.
    pub backoff_max: Duration,
    /// Timeout of each Kafka admin request.
    pub kafka_timeout: Duration,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            dataplane_image: DEFAULT_DATAPLANE_IMAGE.to_string(),
            kafka_bootstrap: None,
            namespace: None,
            service_monitor: false,
            pod_monitor: false,
            resync: Duration::from_secs(300),
            await_user: Duration::from_secs(300),
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_secs(300),
            kafka_timeout: Duration::from_secs(10),
        }
    }
}

impl OperatorConfig {
    /// What the shared render function needs from the operator.
    pub fn render_defaults(&self) -> RenderDefaults {
        RenderDefaults {
            kafka_bootstrap: self.kafka_bootstrap.clone(),
            ..RenderDefaults::default()
        }
    }

    /// Delay before retry number `failures` (1-based): `base · 2^(failures-1)`, capped at `max`.
    /// This is what keeps a broken stream from becoming a hot loop.
    pub fn backoff(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(16);
        self.backoff_base
            .saturating_mul(1u32 << exp)
            .min(self.backoff_max)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let cfg = OperatorConfig::default();
        let delays: Vec<u64> = (1..=9).map(|n| cfg.backoff(n).as_secs()).collect();
        assert_eq!(delays, vec![5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(cfg.backoff(u32::MAX).as_secs(), 300);
        assert_eq!(cfg.backoff(0).as_secs(), 5, "never zero: no hot loop");
    }
}
