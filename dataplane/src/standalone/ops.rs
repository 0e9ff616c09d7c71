//! `/healthz`, `/readyz` and `/metrics` for a process with one registry per stream: the
//! families of every registry are merged by name (each series keeps its `stream` label), so
//! the exposition has one `# HELP`/`# TYPE` per family as Prometheus requires.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, Registry, TextEncoder};

use crate::server::Readiness;

#[derive(Clone)]
struct Ops {
    registries: Vec<Registry>,
    readiness: Readiness,
}

/// The operational routes over several registries.
pub fn routes(registries: Vec<Registry>, readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Ops {
            registries,
            readiness,
        })
}

async fn readyz(State(ops): State<Ops>) -> impl IntoResponse {
    let pending = ops.readiness.pending();
    if pending.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", pending.join(", ")),
        )
    }
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

async fn metrics(State(ops): State<Ops>) -> impl IntoResponse {
    let mut out = Vec::new();
    // Encoding well-formed families into a Vec cannot fail.
    let _ = TextEncoder::new().encode(&gather(&ops.registries), &mut out);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
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
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut out)
            .expect("encode");
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(
            text.matches("# TYPE eventstream_t_total").count(),
            1,
            "{text}"
        );
        assert!(text.contains(r#"stream="a/y""#), "{text}");
    }
}
