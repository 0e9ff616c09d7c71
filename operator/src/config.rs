//! The operator's own settings ([`OperatorConfig`]): what flags and the served CRDs add to every
//! EventStream. Builders take it by reference, so a test can state every default it relies on.

use std::collections::BTreeMap;
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
    /// Whether the `monitoring.coreos.com/v1` ServiceMonitor kind is served. The builders read
    /// it; while the operator runs, a reconcile's copy comes from the watch of the CRDs
    /// (`controller::Context::config_now`), so it follows installs and removals.
    pub service_monitor: bool,
    /// Whether the `monitoring.coreos.com/v1` PodMonitor kind is served (as above).
    pub pod_monitor: bool,
    /// Labels added to the ServiceMonitor and PodMonitor of every stream (`--monitor-label`),
    /// e.g. `release: kube-prometheus-stack` for its default monitor selectors.
    pub monitor_labels: BTreeMap<String, String>,
    /// Periodic re-check of a healthy stream (topic drift, lag, replicas).
    pub resync: Duration,
    /// Re-check of a stream that waits for the user (missing Secret, rejected spec).
    pub await_user: Duration,
    /// Re-check of a stream whose bridge or sink pods are not ready (crash loops, image pulls do
    /// not change the Deployment, so its watch does not trigger a reconcile).
    pub rollout_check: Duration,
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
            monitor_labels: BTreeMap::new(),
            resync: Duration::from_secs(300),
            await_user: Duration::from_secs(300),
            rollout_check: Duration::from_secs(30),
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

/// Parses one `--monitor-label` value, `key=value`, with Kubernetes label syntax.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not key=value"))?;
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let segment = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !segment(name, 63) || prefix.is_some_and(|p| !segment(p, 253)) {
        return Err(format!(
            "label key {key:?}: [prefix/]name, name up to 63 characters [A-Za-z0-9-_.], starting and ending alphanumeric"
        ));
    }
    if !value.is_empty() && !segment(value, 63) {
        return Err(format!(
            "label value {value:?}: up to 63 characters [A-Za-z0-9-_.], starting and ending alphanumeric"
        ));
    }
    Ok((key.to_string(), value.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn monitor_labels_parse_or_say_why_not() {
        assert_eq!(
            parse_label("release=kube-prometheus-stack").unwrap(),
            ("release".into(), "kube-prometheus-stack".into())
        );
        assert_eq!(
            parse_label("example.com/team=").unwrap(),
            ("example.com/team".into(), String::new())
        );
        assert!(parse_label("release").unwrap_err().contains("key=value"));
        assert!(parse_label("-bad=x").unwrap_err().contains("label key"));
        assert!(
            parse_label("ok=has space")
                .unwrap_err()
                .contains("label value")
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let cfg = OperatorConfig::default();
        let delays: Vec<u64> = (1..=9).map(|n| cfg.backoff(n).as_secs()).collect();
        assert_eq!(delays, vec![5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(cfg.backoff(u32::MAX).as_secs(), 300);
        assert_eq!(cfg.backoff(0).as_secs(), 5, "never zero: no hot loop");
    }
}
