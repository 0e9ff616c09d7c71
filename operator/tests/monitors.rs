//! The watch of the Prometheus Operator CRDs through the real kube client and watcher, against
//! a mocked API server (tower-test): it asks only for the two CRDs by name (what the CRD
//! ClusterRole's `resourceNames` allows), reports the kinds served at start, and notices a CRD
//! installed after it started.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use eventstream_operator::controller::MonitorKinds;
use eventstream_operator::controller::monitors::{
    POD_MONITOR_CRD, SERVICE_MONITOR_CRD, watch_crds,
};
use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::sync::Arc;

fn crd(name: &str, kind: &str) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name, "resourceVersion": "7"},
        "spec": {
            "group": "monitoring.coreos.com",
            "names": {"kind": kind, "plural": name.split('.').next().unwrap()},
            "scope": "Namespaced",
            "versions": [{"name": "v1", "served": true, "storage": true}],
        },
        "status": {"conditions": [{"type": "Established", "status": "True"}]},
    })
}

fn ok(body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn the_crd_watch_asks_by_name_and_notices_a_crd_installed_after_start() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let uris = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = uris.clone();
    // The ServiceMonitor CRD exists at start; the PodMonitor CRD is created while the first
    // watch runs (one ADDED event, then that watch ends and the next one never answers).
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        let mut pod_monitor_watches = 0;
        while let Some((req, send)) = handle.next_request().await {
            let uri = req.uri().to_string();
            seen.lock().push(uri.clone());
            let watch = uri.contains("watch=true");
            let pod_monitor = uri.contains(POD_MONITOR_CRD);
            let list = |items: Vec<Value>| {
                serde_json::to_vec(&json!({
                    "apiVersion": "apiextensions.k8s.io/v1",
                    "kind": "CustomResourceDefinitionList",
                    "metadata": {"resourceVersion": "5"},
                    "items": items,
                }))
                .unwrap()
            };
            match (watch, pod_monitor) {
                (false, false) => {
                    send.send_response(ok(list(vec![crd(SERVICE_MONITOR_CRD, "ServiceMonitor")])))
                }
                (false, true) => send.send_response(ok(list(vec![]))),
                (true, true) if pod_monitor_watches == 0 => {
                    pod_monitor_watches += 1;
                    let mut line = serde_json::to_vec(
                        &json!({"type": "ADDED", "object": crd(POD_MONITOR_CRD, "PodMonitor")}),
                    )
                    .unwrap();
                    line.push(b'\n');
                    send.send_response(ok(line));
                }
                // A watch with nothing to say: never answered while the test runs.
                (true, _) => held.push(send),
            }
        }
    });

    let (tx, mut kinds) = tokio::sync::watch::channel(MonitorKinds::default());
    let (listed_tx, listed) = tokio::sync::oneshot::channel();
    let watch = tokio::spawn(watch_crds(client, tx, listed_tx));
    // Guards against a hang only; nothing here depends on how long a step takes.
    let guard = Duration::from_secs(120);
    tokio::time::timeout(guard, listed)
        .await
        .expect("both CRDs listed")
        .unwrap();
    let both = MonitorKinds {
        service_monitor: true,
        pod_monitor: true,
    };
    tokio::time::timeout(guard, kinds.wait_for(|k| *k == both))
        .await
        .expect("the PodMonitor CRD created after start is noticed")
        .unwrap();

    watch.abort();
    let _ = watch.await;
    server.abort();
    let uris = uris.lock().clone();
    for uri in &uris {
        assert!(
            uri.starts_with("/apis/apiextensions.k8s.io/v1/customresourcedefinitions?"),
            "{uri}"
        );
        // resourceNames in RBAC only admit a list or watch selecting that one name.
        let by_name = [SERVICE_MONITOR_CRD, POD_MONITOR_CRD]
            .iter()
            .any(|n| uri.contains(&format!("fieldSelector=metadata.name%3D{n}")));
        assert!(by_name, "a CRD request not selecting one name: {uri}");
    }
    // Before the answers above: a list of each CRD, and the PodMonitor CRD's watch (its event).
    for name in [SERVICE_MONITOR_CRD, POD_MONITOR_CRD] {
        let sel = format!("fieldSelector=metadata.name%3D{name}");
        assert!(
            uris.iter()
                .any(|u| u.contains(&sel) && !u.contains("watch=true")),
            "no list of {name}: {uris:?}"
        );
    }
    let pod_monitor = format!("fieldSelector=metadata.name%3D{POD_MONITOR_CRD}");
    assert!(
        uris.iter()
            .any(|u| u.contains(&pod_monitor) && u.contains("watch=true")),
        "{uris:?}"
    );
}
