//! The operator's Kubernetes API calls against the RBAC of `docs/rbac.md` (which the chart
//! renders, checked by `scripts/chart-test`). A real API server refuses a request the operator's
//! role does not allow; the mocked API server of the other tests allows everything, so a new call
//! without its rule would only fail on a cluster. Here every request of the reconcile paths
//! (create, update with deletions, pods of a failing workload, offset reset, deletion) is turned
//! into the authorizer's (verb, group, resource) and must be granted; and every granted verb
//! must be one the operator uses, so the role stays the least it needs.
//!
//! Requests made outside a reconcile (the controller's watches, leader election, the monitor CRD
//! watch) cannot go through this fake API server; they are listed in [`OUTSIDE_RECONCILE`] with
//! the code that makes them.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use eventstream_crds::EventStream;
use eventstream_crds::v1alpha1::DeletionPolicy;
use eventstream_operator::controller::reconcile;
use serde::Deserialize;
use serde_json::json;
use support::*;

/// One grant: (verb, API group, resource[/subresource]).
type Grant = (String, String, String);

fn grant(verb: &str, group: &str, resource: &str) -> Grant {
    (verb.to_owned(), group.to_owned(), resource.to_owned())
}

/// API requests the operator makes outside `reconcile`, which this test cannot observe.
const OUTSIDE_RECONCILE: &[(&str, &str, &str, &str)] = &[
    // controller::run: the list that checks the CRD is served, then the controller's watch.
    ("list", "eventstream.dev", "eventstreams", "controller::run"),
    (
        "watch",
        "eventstream.dev",
        "eventstreams",
        "controller::run",
    ),
    // controller::run: metadata-only watches of the children (list, then watch).
    ("list", "", "configmaps", "controller::run"),
    ("watch", "", "configmaps", "controller::run"),
    ("list", "", "services", "controller::run"),
    ("watch", "", "services", "controller::run"),
    ("list", "apps", "deployments", "controller::run"),
    ("watch", "apps", "deployments", "controller::run"),
    ("list", "policy", "poddisruptionbudgets", "controller::run"),
    ("watch", "policy", "poddisruptionbudgets", "controller::run"),
    // The monitor kinds' watches run while their CRD is served (controller::monitors::gated).
    // (The sink PodMonitor's delete happens in a reconcile: "update with deletions" below.)
    (
        "list",
        "monitoring.coreos.com",
        "servicemonitors",
        "controller::run",
    ),
    (
        "watch",
        "monitoring.coreos.com",
        "servicemonitors",
        "controller::run",
    ),
    (
        "list",
        "monitoring.coreos.com",
        "podmonitors",
        "controller::run",
    ),
    (
        "watch",
        "monitoring.coreos.com",
        "podmonitors",
        "controller::run",
    ),
    // Issue 14 (referenced Secrets watched and mapped back to their streams).
    ("list", "", "secrets", "issue 14: Secret watch"),
    ("watch", "", "secrets", "issue 14: Secret watch"),
    // controller::monitors::watch_crds: the two monitor CRDs, by name (list, then watch).
    (
        "list",
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "controller::monitors::watch_crds",
    ),
    (
        "watch",
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "controller::monitors::watch_crds",
    ),
    // kube-runtime's Recorder patches an Event that repeats (a series) instead of creating one.
    (
        "patch",
        "events.k8s.io",
        "events",
        "kube::runtime::events::Recorder",
    ),
    // leader::LeaderElector: read, create the first time, renew/take over by replace.
    (
        "get",
        "coordination.k8s.io",
        "leases",
        "leader::LeaderElector",
    ),
    (
        "create",
        "coordination.k8s.io",
        "leases",
        "leader::LeaderElector",
    ),
    (
        "update",
        "coordination.k8s.io",
        "leases",
        "leader::LeaderElector",
    ),
];

/// Every (verb, group, resource) the rules of `docs/rbac.md` grant (operator role, Lease Role,
/// CRD ClusterRole).
fn granted() -> BTreeSet<Grant> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("docs/rbac.md")).unwrap();
    let start = text
        .find("```yaml\n")
        .expect("a yaml block in docs/rbac.md")
        + 8;
    let block = &text[start..start + text[start..].find("```").unwrap()];
    let mut out = BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(block) {
        let doc = serde_yaml::Value::deserialize(doc).unwrap();
        for rule in doc["rules"].as_sequence().unwrap() {
            let list = |key: &str| -> Vec<String> {
                rule[key]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect()
            };
            for g in list("apiGroups") {
                for r in list("resources") {
                    for v in list("verbs") {
                        out.insert((v, g.clone(), r.clone()));
                    }
                }
            }
        }
    }
    out
}

/// What the API server's authorizer checks for one request. A server-side apply that may create
/// its object is authorised as `patch` and, when the object does not exist, as `create`.
fn attributes(seen: &Seen) -> Vec<Grant> {
    let (path, query) = seen.uri.split_once('?').unwrap_or((&seen.uri, ""));
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // /api/v1/... or /apis/<group>/<version>/...
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => panic!("not an API path: {}", seen.uri),
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        rest => rest,
    };
    let (resource, named) = match rest {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => panic!("unexpected API path {}", seen.uri),
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let apply = query.split('&').any(|kv| kv.starts_with("fieldManager="))
        && !resource.contains('/')
        && seen.body.get("apiVersion").is_some();
    let verbs: Vec<&str> = match (seen.method.as_str(), named) {
        ("GET", true) => vec!["get"],
        ("GET", false) if watch => vec!["watch"],
        ("GET", false) => vec!["list"],
        ("POST", _) => vec!["create"],
        ("PUT", _) => vec!["update"],
        ("PATCH", _) if apply => vec!["patch", "create"],
        ("PATCH", _) => vec!["patch"],
        ("DELETE", true) => vec!["delete"],
        ("DELETE", false) => vec!["deletecollection"],
        (m, _) => panic!("unexpected method {m}"),
    };
    verbs
        .into_iter()
        .map(|v| grant(v, group, &resource))
        .collect()
}

/// One reconcile of `es` against the recording API server, with both monitor kinds present.
async fn requests(es: EventStream, failing: Option<Failing>) -> Vec<Seen> {
    requests_with(es, failing, &[]).await
}

/// [`requests`] with the children that an earlier reconcile applied in the watches' cache (the
/// set-based apply deletes only owned objects it knows of).
async fn requests_with(es: EventStream, failing: Option<Failing>, applied: &[Seen]) -> Vec<Seen> {
    let kafka = Arc::new(FakeKafka::default());
    *kafka.lag.lock() = Some(0);
    let (client, server) = api_server_with_failing(db_secret(), Some(es.clone()), failing);
    let mut config = operator_config();
    config.service_monitor = true;
    config.pod_monitor = true;
    let ctx = context_with(
        client,
        kafka,
        std::slice::from_ref(&es),
        config,
        child_index(applied, &[]),
    );
    let _ = reconcile(Arc::new(es), ctx.clone()).await;
    drop(ctx);
    server.finish().await
}

/// Every request of every reconcile path, with the scenario that made it.
async fn reconcile_requests() -> Vec<(&'static str, Seen)> {
    let mut all = Vec::new();
    let mut add = |scenario: &'static str, seen: Vec<Seen>| {
        all.extend(seen.into_iter().map(|s| (scenario, s)));
    };
    add("new stream", requests(telemetry(), None).await);
    let created = requests(finalized(telemetry()), None).await;
    let status = created
        .iter()
        .find(|s| s.uri.contains("/status"))
        .map(|s| serde_json::from_value(s.body["status"].clone()).unwrap());
    let applied = created.clone();
    add("create", created);

    // Persistence removed and one bridge replica: the sink and the PDB are deleted.
    let mut shrunk = finalized(telemetry());
    shrunk.metadata.generation = Some(2);
    shrunk.status = status;
    shrunk.spec.bridge.replicas = 1;
    shrunk.spec.persistence = None;
    add(
        "update with deletions",
        requests_with(shrunk, None, &applied).await,
    );

    let failing = Failing {
        deployment: "telemetry-sink".into(),
        pods: vec![json!({"metadata": {"name": "telemetry-sink-0", "namespace": "racing"}})],
    };
    add(
        "failing sink",
        requests(finalized(telemetry()), Some(failing)).await,
    );

    let mut reset = finalized(telemetry());
    reset.metadata.annotations = Some(
        [(
            "eventstream.dev/reset-sink-offsets".to_string(),
            "earliest".to_string(),
        )]
        .into(),
    );
    add("offset reset", requests(reset, None).await);

    let mut deleted = deleting(finalized(telemetry()));
    deleted.spec.topic.deletion_policy = DeletionPolicy::Delete;
    add("deletion", requests(deleted, None).await);
    all
}

#[tokio::test]
async fn every_request_of_a_reconcile_is_granted_by_docs_rbac() {
    let granted = granted();
    let mut refused = Vec::new();
    for (scenario, seen) in reconcile_requests().await {
        for g in attributes(&seen) {
            if !granted.contains(&g) {
                refused.push(format!("{scenario}: {} needs {g:?}", seen.line()));
            }
        }
    }
    assert!(
        refused.is_empty(),
        "a real API server refuses these (add the rule to docs/rbac.md and the chart):\n{}",
        refused.join("\n")
    );
}

#[tokio::test]
async fn docs_rbac_grants_no_verb_the_operator_does_not_use() {
    let mut used: BTreeSet<Grant> = OUTSIDE_RECONCILE
        .iter()
        .map(|(v, g, r, _why)| grant(v, g, r))
        .collect();
    for (_scenario, seen) in reconcile_requests().await {
        used.extend(attributes(&seen));
    }
    let unused: Vec<Grant> = granted()
        .into_iter()
        .filter(|g| !used.contains(g))
        .collect();
    assert!(
        unused.is_empty(),
        "docs/rbac.md (and so the chart) grants verbs no API call of the operator uses: {unused:?}"
    );
    // The reconcile paths really were exercised: each kind of write shows up.
    for g in [
        grant("create", "", "configmaps"),
        grant("patch", "eventstream.dev", "eventstreams/status"),
        grant("delete", "apps", "deployments"),
        grant("delete", "policy", "poddisruptionbudgets"),
        grant("list", "", "pods"),
        grant("get", "", "secrets"),
        grant("create", "events.k8s.io", "events"),
        grant("patch", "monitoring.coreos.com", "podmonitors"),
    ] {
        assert!(
            used.contains(&g),
            "no scenario made a request needing {g:?}"
        );
    }
}

/// The CRD rule is limited to the two monitor CRDs by `resourceNames`: the names the operator
/// watches (by a `metadata.name` field selector, without which a real API server refuses a list
/// or watch under `resourceNames`) must be exactly those.
#[test]
fn docs_rbac_names_exactly_the_crds_the_operator_watches() {
    use eventstream_operator::controller::monitors::{POD_MONITOR_CRD, SERVICE_MONITOR_CRD};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("docs/rbac.md")).unwrap();
    let start = text.find("```yaml\n").unwrap() + 8;
    let block = &text[start..start + text[start..].find("```").unwrap()];
    let mut names = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(block) {
        let doc = serde_yaml::Value::deserialize(doc).unwrap();
        for rule in doc["rules"].as_sequence().unwrap() {
            let resources = rule["resources"].as_sequence().unwrap();
            if resources.iter().any(|r| r == "customresourcedefinitions") {
                let listed = rule["resourceNames"]
                    .as_sequence()
                    .expect("the CRD rule is limited by resourceNames");
                names.extend(listed.iter().map(|n| n.as_str().unwrap().to_owned()));
            }
        }
    }
    assert_eq!(names, vec![SERVICE_MONITOR_CRD, POD_MONITOR_CRD]);
}
