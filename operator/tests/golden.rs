//! Golden files: the children of every `examples/*.yaml` EventStream, rendered by the pure
//! builders, committed under `tests/golden/<example>/` for review by eye (and for
//! `kubernetes-validate --strict` on `all.yaml`). `UPDATE_GOLDEN=1 cargo test -p
//! eventstream-operator --test golden` rewrites them after an intended change.
//!
//! Schema check without a cluster: every golden object must deserialize into the typed
//! Kubernetes 1.33 struct (k8s-openapi, feature `v1_33`) and serialize back to exactly the same
//! JSON, so no field is misspelled, misplaced or of the wrong type.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use eventstream_crds::EventStream;
use eventstream_operator::OperatorConfig;
use eventstream_operator::children::{self, Children};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn config() -> OperatorConfig {
    OperatorConfig {
        dataplane_image: "ghcr.io/eventstream-dev/eventstream-dataplane:0.1.0".into(),
        kafka_bootstrap: Some("kafka.kafka:9092".into()),
        service_monitor: true,
        pod_monitor: true,
        ..OperatorConfig::default()
    }
}

fn load(path: &Path) -> EventStream {
    let text = std::fs::read_to_string(path).expect("example readable");
    let mut es: EventStream = serde_yaml::from_str(&text).expect("example parses");
    // What the API server adds; owner references need the UID.
    es.metadata.uid = Some("00000000-0000-4000-8000-000000000000".into());
    es
}

/// `(file name, object as JSON)` for every child, in apply order.
fn objects(ch: &Children) -> Vec<(String, serde_json::Value)> {
    fn named<T: Serialize>(
        kind: &str,
        name: Option<&String>,
        obj: &T,
    ) -> (String, serde_json::Value) {
        (
            format!(
                "{kind}-{}.yaml",
                name.map(String::as_str).unwrap_or("unnamed")
            ),
            serde_json::to_value(obj).expect("serializes"),
        )
    }
    let mut out = vec![
        named(
            "configmap",
            ch.config_map.metadata.name.as_ref(),
            &ch.config_map,
        ),
        named(
            "service",
            ch.bridge_service.metadata.name.as_ref(),
            &ch.bridge_service,
        ),
        named("deployment", ch.bridge.metadata.name.as_ref(), &ch.bridge),
    ];
    if let Some(p) = &ch.bridge_pdb {
        out.push(named("pdb", p.metadata.name.as_ref(), p));
    }
    if let Some(d) = &ch.sink {
        out.push(named("deployment", d.metadata.name.as_ref(), d));
    }
    if let Some(p) = &ch.sink_pdb {
        out.push(named("pdb", p.metadata.name.as_ref(), p));
    }
    if let Some(d) = &ch.alerts {
        out.push(named("deployment", d.metadata.name.as_ref(), d));
    }
    if let Some(m) = &ch.service_monitor {
        out.push(named("servicemonitor", m.metadata.name.as_ref(), m));
    }
    if let Some(m) = &ch.pod_monitor {
        out.push(named("podmonitor", m.metadata.name.as_ref(), m));
    }
    if let Some(m) = &ch.alerts_pod_monitor {
        out.push(named("podmonitor", m.metadata.name.as_ref(), m));
    }
    out
}

fn round_trips<T: DeserializeOwned + Serialize>(file: &str, value: &serde_json::Value) {
    let typed: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{file} does not fit the Kubernetes 1.33 type: {e}"));
    let back = serde_json::to_value(&typed).expect("serializes");
    assert_eq!(
        &back, value,
        "{file}: fields lost in a typed round trip (unknown or misplaced)"
    );
}

fn schema_check(file: &str, value: &serde_json::Value) {
    match value["kind"].as_str() {
        Some("Deployment") => round_trips::<Deployment>(file, value),
        Some("Service") => round_trips::<Service>(file, value),
        Some("ConfigMap") => round_trips::<ConfigMap>(file, value),
        Some("PodDisruptionBudget") => round_trips::<PodDisruptionBudget>(file, value),
        Some("ServiceMonitor" | "PodMonitor") => {
            assert_eq!(value["apiVersion"], "monitoring.coreos.com/v1", "{file}");
        }
        other => panic!("{file}: unexpected kind {other:?}"),
    }
}

#[test]
fn children_of_every_example_match_the_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut examples: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .expect("examples/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    examples.sort();
    assert!(
        examples.len() >= 5,
        "expected the five examples, found {examples:?}"
    );
    let mut mismatches = Vec::new();
    for example in &examples {
        let es = load(example);
        let ch = children::build(&es, &config(), false)
            .unwrap_or_else(|e| panic!("{}: {e}", example.display()));
        let dir = golden_dir().join(example.file_stem().expect("stem"));
        std::fs::create_dir_all(&dir).expect("golden dir");
        let mut all = String::new();
        for (file, value) in objects(&ch) {
            schema_check(&file, &value);
            let yaml = serde_yaml::to_string(&value).expect("yaml");
            all.push_str("---\n");
            all.push_str(&yaml);
            let path = dir.join(&file);
            if update {
                std::fs::write(&path, &yaml).expect("write golden");
                continue;
            }
            let golden = std::fs::read_to_string(&path).unwrap_or_default();
            let parsed: serde_json::Value = serde_yaml::from_str(&golden).unwrap_or_default();
            if parsed != value {
                mismatches.push(path.display().to_string());
            } else {
                schema_check(&file, &parsed);
            }
        }
        let all_path = dir.join("all.yaml");
        if update {
            std::fs::write(&all_path, &all).expect("write all.yaml");
        } else if std::fs::read_to_string(&all_path).unwrap_or_default() != all {
            mismatches.push(all_path.display().to_string());
        }
    }
    assert!(
        mismatches.is_empty(),
        "golden files differ (review, then UPDATE_GOLDEN=1 to accept): {mismatches:#?}"
    );
}
