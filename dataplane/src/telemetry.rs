//! Logging and metrics plumbing shared by every mode.
//!
//! Every metric is registered in one [`prometheus::Registry`] per process, served at `/metrics`,
//! named `eventstream_*` and labelled with `stream` (`namespace/name`). Metric families are
//! documented in `docs/metrics.md`.

use std::collections::BTreeMap;

use prometheus::proto::MetricFamily;
use prometheus::{Encoder, Registry, TextEncoder};

/// Initialises `tracing` from `RUST_LOG` (default `info`), as text or, with
/// `EVENTSTREAM_LOG_FORMAT=json`, as JSON lines.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = std::env::var("EVENTSTREAM_LOG_FORMAT").is_ok_and(|v| v == "json");
    // A second initialisation (tests) is not an error worth reporting.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// The registry in Prometheus' text exposition format.
pub fn render(registry: &Registry) -> String {
    render_all(std::slice::from_ref(registry))
}

/// Several registries (standalone mode has one per stream) as one exposition: families are
/// merged by name (each series keeps its `stream` label), so every family has one `# HELP` and
/// one `# TYPE`, as Prometheus requires.
pub fn render_all(registries: &[Registry]) -> String {
    let mut out = Vec::new();
    // Encoding well-formed families into a Vec cannot fail.
    let _ = TextEncoder::new().encode(&gather(registries), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// The merged families of `registries`, sorted by name.
pub fn gather(registries: &[Registry]) -> Vec<MetricFamily> {
    let mut merged: BTreeMap<String, MetricFamily> = BTreeMap::new();
    for registry in registries {
        for mut family in registry.gather() {
            match merged.get_mut(family.name()) {
                Some(existing) => existing.mut_metric().extend(family.take_metric()),
                None => {
                    merged.insert(family.name().to_string(), family);
                }
            }
        }
    }
    merged.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{IntCounterVec, Opts};

    #[test]
    fn merges_families_of_several_registries() {
        let registries: Vec<Registry> = ["a/x", "a/y"]
            .iter()
            .map(|stream| {
                let r = Registry::new();
                let c = IntCounterVec::new(Opts::new("eventstream_t_total", "t"), &["stream"])
                    .expect("counter");
                r.register(Box::new(c.clone())).expect("register");
                c.with_label_values(&[stream]).inc();
                r
            })
            .collect();
        let families = gather(&registries);
        assert_eq!(families.len(), 1);
        assert_eq!(families[0].get_metric().len(), 2);
        let text = render_all(&registries);
        assert_eq!(
            text.matches("# TYPE eventstream_t_total").count(),
            1,
            "{text}"
        );
        assert!(text.contains(r#"stream="a/y""#), "{text}");
    }
}
