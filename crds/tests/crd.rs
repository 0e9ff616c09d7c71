//! The committed CRD, the examples and the API server's validation rules, checked without a cluster:
//! structural rules (types, ranges, patterns, enums) with a JSON Schema validator over the
//! CRD's `openAPIV3Schema`, and CEL rules (`x-kubernetes-validations`) with kube's CEL evaluator,
//! which applies the schema's defaults first exactly as the API server does.

use std::path::{Path, PathBuf};

use eventstream_crds::EventStream;
use eventstream_crds::render::{RenderDefaults, dataplane_config};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::cel::Validator;
use serde_json::{Value, json};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crds/ has a parent")
        .to_path_buf()
}

fn committed_crd_text() -> String {
    let path = repo_root().join("crds/eventstream.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn schema() -> Value {
    let crd: CustomResourceDefinition =
        serde_yaml::from_str(&committed_crd_text()).expect("CRD parses");
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("openAPIV3Schema");
    serde_json::to_value(schema).expect("schema is JSON")
}

/// Structural errors (JSON Schema) and CEL errors for `object`, as one list of messages.
fn api_server_errors(object: &Value, old: Option<&Value>) -> Vec<String> {
    let schema = schema();
    let structural = jsonschema::draft4::new(&schema).expect("schema compiles");
    let mut errors: Vec<String> = structural
        .iter_errors(object)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if let Err(cel) = Validator::new().validate(&schema, object, old) {
        errors.extend(cel.into_vec().into_iter().map(|e| e.to_string()));
    }
    errors
}

fn stream(spec: Value) -> Value {
    json!({
        "apiVersion": "eventstream.dev/v1alpha1",
        "kind": "EventStream",
        "metadata": { "name": "s", "namespace": "ns" },
        "spec": spec,
    })
}

#[test]
fn committed_crd_matches_the_rust_types() {
    let generated = eventstream_crds::crd_yaml();
    assert!(
        committed_crd_text() == generated,
        "crds/eventstream.yaml is out of date: run `cargo run -p eventstream-crds --bin crdgen > crds/eventstream.yaml`"
    );
}

#[test]
fn committed_crd_parses_as_a_kubernetes_crd() {
    let crd: CustomResourceDefinition =
        serde_yaml::from_str(&committed_crd_text()).expect("CRD parses");
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("eventstreams.eventstream.dev")
    );
    assert_eq!(crd.spec.group, "eventstream.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.plural, "eventstreams");
    assert_eq!(crd.spec.names.short_names, Some(vec!["evs".to_string()]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.served && version.storage);
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some(),
        "status subresource"
    );
    let columns: Vec<&str> = version
        .additional_printer_columns
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Topic", "Partitions", "Ready", "Age"]);
}

#[test]
fn every_spec_field_is_documented() {
    fn walk(path: &str, node: &Value, missing: &mut Vec<String>) {
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (name, child) in props {
                let here = format!("{path}.{name}");
                if child.get("description").is_none() {
                    missing.push(here.clone());
                }
                walk(&here, child, missing);
            }
        }
        if let Some(items) = node.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let schema = schema();
    let mut missing = Vec::new();
    walk("spec", &schema["properties"]["spec"], &mut missing);
    walk("status", &schema["properties"]["status"], &mut missing);
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:?}"
    );
}

#[test]
fn every_example_is_accepted_and_renders_a_dataplane_config() {
    let dir = repo_root().join("examples");
    let mut seen = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path).expect("read example");
        let value: Value = serde_yaml::from_str(&text).expect("example is YAML");
        let errors = api_server_errors(&value, None);
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        let es: EventStream =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let defaults = RenderDefaults {
            kafka_bootstrap: Some("kafka.kafka:9092".into()),
            ..Default::default()
        };
        let config =
            dataplane_config(&es, &defaults).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // What the operator writes is what the dataplane reads back.
        let reread = eventstream_crds::config::DataplaneConfig::from_yaml(&config.to_yaml())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(reread, config);
        seen += 1;
    }
    assert_eq!(
        seen, 6,
        "one example per seed use case, and seed 003's alerts stream"
    );
}

#[test]
fn an_empty_spec_is_accepted() {
    assert_eq!(
        api_server_errors(&stream(json!({})), None),
        Vec::<String>::new()
    );
}

#[test]
fn structural_rules_refuse_bad_values() {
    let cases = [
        (
            json!({"topic": {"partitions": 0}}),
            "/spec/topic/partitions",
        ),
        (
            json!({"topic": {"partitions": -3}}),
            "/spec/topic/partitions",
        ),
        (
            json!({"topic": {"compression": "brotli"}}),
            "/spec/topic/compression",
        ),
        (
            json!({"topic": {"retention": "7 days"}}),
            "/spec/topic/retention",
        ),
        (json!({"topic": {"name": "has space"}}), "/spec/topic/name"),
        (
            json!({"topic": {"deletionPolicy": "delete"}}),
            "/spec/topic/deletionPolicy",
        ),
        (
            json!({"ingest": {"keyField": "userId"}}),
            "/spec/ingest/keyField",
        ),
        (
            json!({"ingest": {"keyField": "/a~2"}}),
            "/spec/ingest/keyField",
        ),
        (
            json!({"ingest": {"maxBodyBytes": 1}}),
            "/spec/ingest/maxBodyBytes",
        ),
        (
            json!({"websocket": {"slowClient": {"policy": "ignore"}}}),
            "/spec/websocket/slowClient/policy",
        ),
        (
            json!({"websocket": {"channel": {"field": "sessionId"}}}),
            "/spec/websocket/channel/field",
        ),
        (json!({"bridge": {"replicas": -1}}), "/spec/bridge/replicas"),
        (
            json!({"persistence": {"postgres": {"urlSecretRef": {"name": "db", "key": "url"}, "table": "Bad-Name"}}}),
            "/spec/persistence/postgres/table",
        ),
        (
            json!({"persistence": {"postgres": {"urlSecretRef": {"name": "db", "key": "url"}, "table": "t"}, "timescale": "maybe"}}),
            "/spec/persistence/timescale",
        ),
        (
            json!({"auth": {"jwtSecretRef": {"name": "k", "key": "k"}, "algorithm": "none"}}),
            "/spec/auth/algorithm",
        ),
    ];
    for (spec, path) in cases {
        let errors = api_server_errors(&stream(spec.clone()), None);
        assert!(
            errors.iter().any(|e| e.starts_with(path)),
            "{spec} should be refused at {path}, got {errors:?}"
        );
    }
}

#[test]
fn cel_rules_refuse_inconsistent_specs() {
    let cases = [
        (
            json!({"kafka": {"securityProtocol": "SASL_SSL"}}),
            "kafka.secretRef is required",
        ),
        (
            json!({"kafka": {"saslMechanism": "PLAIN"}}),
            "kafka.saslMechanism only applies",
        ),
        (
            json!({"websocket": {"channel": {"field": "/a", "header": "b"}}}),
            "set field or header, not both",
        ),
        (
            json!({"topic": {"config": {"retention.ms": "1000"}}}),
            "set retention and compression with topic.retention",
        ),
        (
            json!({"ingest": {"maxBodyBytes": 4096, "maxBatchBytes": 1024}}),
            "ingest.maxBatchBytes must be at least",
        ),
        (
            json!({"persistence": {"postgres": {
                "urlSecretRef": {"name": "db", "key": "url"}, "table": "t",
                "upsert": {"tombstones": "Ignore"}}}}),
            "persistence.postgres.upsert applies to mode: Upsert only",
        ),
    ];
    for (spec, message) in cases {
        let errors = api_server_errors(&stream(spec.clone()), None);
        assert!(
            errors.iter().any(|e| e.contains(message)),
            "{spec} should be refused with {message:?}, got {errors:?}"
        );
    }
}

#[test]
fn updates_may_not_shrink_partitions_or_rename_the_topic() {
    let old = stream(json!({"topic": {"name": "t", "partitions": 6}}));
    let grow = stream(json!({"topic": {"name": "t", "partitions": 8}}));
    assert_eq!(api_server_errors(&grow, Some(&old)), Vec::<String>::new());

    let shrink = stream(json!({"topic": {"name": "t", "partitions": 3}}));
    let errors = api_server_errors(&shrink, Some(&old));
    assert!(
        errors.iter().any(|e| e.contains("may not decrease")),
        "{errors:?}"
    );

    let rename = stream(json!({"topic": {"name": "u", "partitions": 6}}));
    let errors = api_server_errors(&rename, Some(&old));
    assert!(errors.iter().any(|e| e.contains("immutable")), "{errors:?}");
}

fn named(name: &str) -> Value {
    let mut object = stream(json!({}));
    object["metadata"]["name"] = json!(name);
    object
}

#[test]
fn names_the_operator_cannot_build_are_refused_at_admission() {
    use eventstream_crds::v1alpha1::MAX_NAME_LENGTH;
    // The longest name whose children (`<name>-bridge`, `-sink`, `-config`) are DNS labels.
    let longest = "a".repeat(MAX_NAME_LENGTH);
    assert_eq!(
        api_server_errors(&named(&longest), None),
        Vec::<String>::new()
    );
    assert_eq!(format!("{longest}-bridge").len(), 63);

    let errors = api_server_errors(&named(&format!("{longest}a")), None);
    assert!(
        errors.iter().any(|e| e.contains("at most 56 characters")),
        "{errors:?}"
    );
    for bad in ["with.dots", "9lives", "trailing-"] {
        let errors = api_server_errors(&named(bad), None);
        assert!(
            errors.iter().any(|e| e.contains("must be a DNS label")),
            "{bad}: {errors:?}"
        );
    }
}

#[test]
fn timescale_takes_words_yaml_1_1_keeps_as_strings() {
    let persistence = |mode: Value| json!({"persistence": {"postgres": {"urlSecretRef": {"name": "db", "key": "url"}, "table": "t"}, "timescale": mode}});
    for mode in ["Auto", "Enabled", "Disabled"] {
        assert_eq!(
            api_server_errors(&stream(persistence(json!(mode))), None),
            Vec::<String>::new(),
            "{mode}"
        );
    }
    // What kubectl makes of an unquoted `timescale: off` is refused with the field's path.
    let errors = api_server_errors(&stream(persistence(json!(false))), None);
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("/spec/persistence/timescale")),
        "{errors:?}"
    );
}
