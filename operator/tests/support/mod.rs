//! Test support shared by the reconcile tests and the benchmark: a recording fake API server
//! behind a real `kube::Client` (tower-test's mock pair, as kube-rs documents), a fake Kafka
//! admin, and EventStream fixtures.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use eventstream_crds::EventStream;
use eventstream_operator::OperatorConfig;
use eventstream_operator::children::ChildKind;
use eventstream_operator::controller::Context;
use eventstream_operator::controller::context::{ChildIndex, ChildMeta};
use eventstream_operator::kafka_admin::{
    ClusterView, DesiredTopic, KafkaAdmin, KafkaAdminError, KafkaConnection, ObservedTopic, ResetTo,
};
use eventstream_operator::metrics::Metrics;
use futures::future::BoxFuture;
use http::{Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use kube::runtime::reflector;
use parking_lot::Mutex;
use serde_json::{Value, json};

/// One request the fake API server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, e.g. `/api/v1/namespaces/racing/secrets/db`.
    pub uri: String,
    pub body: Value,
}

impl Seen {
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.uri)
    }
}

/// Secrets the fake API server knows (namespace/name → data).
pub type Secrets = BTreeMap<String, BTreeMap<String, String>>;

/// A fake API server: answers like the real one for the requests the operator makes, and
/// records every request in order.
pub struct ApiServer {
    pub log: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    /// Waits for the client side to be dropped, then returns the requests in order.
    pub async fn finish(self) -> Vec<Seen> {
        tokio::time::timeout(std::time::Duration::from_secs(5), self.task)
            .await
            .expect("the client was dropped")
            .expect("fake API server did not panic");
        self.log.lock().clone()
    }

    pub fn lines(&self) -> Vec<String> {
        self.log.lock().iter().map(Seen::line).collect()
    }
}

fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).expect("json")))
        .expect("response")
}

fn not_found(what: &str) -> Response<Body> {
    respond(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                "message": format!("{what} not found"), "code": 404}),
    )
}

/// Starts the fake API server; `stream` is what GETs of the EventStream return.
pub fn api_server(secrets: Secrets, stream: Option<EventStream>) -> (Client, ApiServer) {
    api_server_with_failing(secrets, stream, None)
}

/// A workload whose pods fail: its Deployment reports no ready replica and pod lists return
/// `pods`.
pub struct Failing {
    pub deployment: String,
    pub pods: Vec<Value>,
}

/// [`api_server`] where `failing`'s Deployment is not ready and its pods say why.
pub fn api_server_with_failing(
    secrets: Secrets,
    stream: Option<EventStream>,
    failing: Option<Failing>,
) -> (Client, ApiServer) {
    api_server_full(secrets, stream, failing, BTreeMap::new())
}

/// [`api_server_with_failing`] where GETs of the paths in `existing` (e.g.
/// `/api/v1/namespaces/racing/configmaps/telemetry-config`) return those objects; every other
/// object GET but the EventStream's is 404.
pub fn api_server_full(
    secrets: Secrets,
    stream: Option<EventStream>,
    failing: Option<Failing>,
    existing: BTreeMap<String, Value>,
) -> (Client, ApiServer) {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    let task = tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().to_string();
            let uri = req.uri().to_string();
            let bytes = req.into_body().collect_bytes().await.expect("body");
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("request bodies are JSON")
            };
            log2.lock().push(Seen {
                method: method.clone(),
                uri: uri.clone(),
                body: body.clone(),
            });
            let path = uri.split('?').next().unwrap_or_default().to_string();
            let segments: Vec<&str> = path.split('/').collect();
            let response = match method.as_str() {
                "GET" if path.contains("/secrets/") => {
                    let ns = segments[4];
                    let name = segments[6];
                    match secrets.get(&format!("{ns}/{name}")) {
                        Some(data) => respond(
                            StatusCode::OK,
                            &json!({
                                "apiVersion": "v1", "kind": "Secret",
                                "metadata": {"name": name, "namespace": ns},
                                "stringData": data,
                            }),
                        ),
                        None => not_found("secret"),
                    }
                }
                "GET" if path.ends_with("/pods") => respond(
                    StatusCode::OK,
                    &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                            "items": failing.as_ref().map(|f| f.pods.clone()).unwrap_or_default()}),
                ),
                "GET" if path.contains("/eventstreams/") => match &stream {
                    Some(es) => respond(StatusCode::OK, &serde_json::to_value(es).expect("json")),
                    None => not_found("object"),
                },
                "GET" => match existing.get(&path) {
                    Some(obj) => respond(StatusCode::OK, obj),
                    None => not_found("object"),
                },
                "POST" => respond(StatusCode::CREATED, &body),
                "DELETE" => not_found("object"),
                "PATCH" if path.ends_with("/status") => {
                    let mut obj =
                        serde_json::to_value(stream.clone().expect("stream")).expect("json");
                    obj["status"] = body["status"].clone();
                    respond(StatusCode::OK, &obj)
                }
                "PATCH" if path.contains("/eventstreams/") => {
                    // Finalizer JSON patches and annotation merge patches: echo the stream.
                    let obj = serde_json::to_value(stream.clone().expect("stream")).expect("json");
                    respond(StatusCode::OK, &obj)
                }
                "PATCH" => {
                    // Server-side apply: the object comes back; Deployments report themselves
                    // fully rolled out so readiness can be asserted.
                    let mut obj = body.clone();
                    if obj["kind"] == "Deployment" {
                        let replicas = obj["spec"]["replicas"].clone();
                        obj["metadata"]["generation"] = json!(1);
                        let broken = failing
                            .as_ref()
                            .is_some_and(|f| obj["metadata"]["name"] == f.deployment.as_str());
                        let ready = if broken { json!(0) } else { replicas.clone() };
                        obj["status"] = json!({"observedGeneration": 1, "replicas": replicas,
                            "readyReplicas": ready, "updatedReplicas": replicas});
                    }
                    respond(StatusCode::OK, &obj)
                }
                _ => not_found("route"),
            };
            send.send_response(response);
        }
    });
    (client, ApiServer { log, task })
}

/// In-memory Kafka with switches for failures; records every call.
#[derive(Default)]
pub struct FakeKafka {
    pub topics: Mutex<BTreeMap<String, ObservedTopic>>,
    pub unreachable: Mutex<bool>,
    pub calls: Mutex<Vec<String>>,
    pub lag: Mutex<Option<i64>>,
    /// Calls (as recorded in `calls`) the broker refuses, e.g. `create racing.telemetry.dlq`.
    pub refuse: Mutex<Vec<String>>,
    /// The broker's message in those refusals (default: an authorisation failure).
    pub refusal: Mutex<Option<String>>,
}

impl FakeKafka {
    fn check(&self, call: String) -> Result<(), KafkaAdminError> {
        self.calls.lock().push(call.clone());
        if self.refuse.lock().contains(&call) {
            return Err(KafkaAdminError::Refused {
                operation: call,
                code: None,
                message: self
                    .refusal
                    .lock()
                    .clone()
                    .unwrap_or_else(|| "Broker: Topic authorization failed".into()),
            });
        }
        if *self.unreachable.lock() {
            return Err(KafkaAdminError::Unreachable {
                bootstrap: "kafka.kafka:9092".into(),
                message: "Local: Broker transport failure".into(),
            });
        }
        Ok(())
    }
}

impl KafkaAdmin for FakeKafka {
    fn describe<'a>(
        &'a self,
        _: &'a KafkaConnection,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<ClusterView, KafkaAdminError>> {
        Box::pin(async move {
            self.check(format!("describe {topic}"))?;
            Ok(ClusterView {
                brokers: 1,
                topic: self.topics.lock().get(topic).cloned(),
            })
        })
    }
    fn create_topic<'a>(
        &'a self,
        _: &'a KafkaConnection,
        t: &'a DesiredTopic,
    ) -> BoxFuture<'a, Result<(), KafkaAdminError>> {
        Box::pin(async move {
            self.check(format!("create {}", t.name))?;
            self.topics.lock().insert(
                t.name.clone(),
                ObservedTopic {
                    name: t.name.clone(),
                    partitions: t.partitions,
                    replication_factor: t.replication_factor.map(i32::from).unwrap_or(1),
                    configs: t.configs.clone(),
                    dynamic: t.configs.keys().cloned().collect(),
                },
            );
            Ok(())
        })
    }
    fn set_topic_configs<'a>(
        &'a self,
        _: &'a KafkaConnection,
        topic: &'a str,
        configs: &'a BTreeMap<String, String>,
        _remove: &'a [String],
    ) -> BoxFuture<'a, Result<(), KafkaAdminError>> {
        Box::pin(async move {
            self.check(format!("alter {topic}"))?;
            if let Some(t) = self.topics.lock().get_mut(topic) {
                t.configs = configs.clone();
                t.dynamic = configs.keys().cloned().collect();
            }
            Ok(())
        })
    }
    fn create_partitions<'a>(
        &'a self,
        _: &'a KafkaConnection,
        topic: &'a str,
        total: i32,
    ) -> BoxFuture<'a, Result<(), KafkaAdminError>> {
        Box::pin(async move {
            self.check(format!("partitions {topic} {total}"))?;
            if let Some(t) = self.topics.lock().get_mut(topic) {
                t.partitions = total;
            }
            Ok(())
        })
    }
    fn delete_topic<'a>(
        &'a self,
        _: &'a KafkaConnection,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<(), KafkaAdminError>> {
        Box::pin(async move {
            self.check(format!("delete-topic {topic}"))?;
            self.topics.lock().remove(topic);
            Ok(())
        })
    }
    fn delete_group<'a>(
        &'a self,
        _: &'a KafkaConnection,
        group: &'a str,
    ) -> BoxFuture<'a, Result<(), KafkaAdminError>> {
        Box::pin(async move { self.check(format!("delete-group {group}")) })
    }
    fn group_lag<'a>(
        &'a self,
        _: &'a KafkaConnection,
        group: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Option<i64>, KafkaAdminError>> {
        Box::pin(async move {
            self.check(format!("lag {group}"))?;
            Ok(*self.lag.lock())
        })
    }
    fn reset_group<'a>(
        &'a self,
        _: &'a KafkaConnection,
        group: &'a str,
        topic: &'a str,
        to: ResetTo,
    ) -> BoxFuture<'a, Result<BTreeMap<i32, i64>, KafkaAdminError>> {
        Box::pin(async move {
            self.check(format!("reset {group} {to:?}"))?;
            let partitions = self.topics.lock().get(topic).map_or(0, |t| t.partitions);
            let offset = match to {
                ResetTo::Earliest => 0,
                ResetTo::Latest => 100,
            };
            Ok((0..partitions).map(|p| (p, offset)).collect())
        })
    }
}

pub fn fixed_now() -> Timestamp {
    Timestamp::from_second(1_750_000_000).expect("valid")
}

pub fn operator_config() -> OperatorConfig {
    OperatorConfig {
        dataplane_image: "ghcr.io/eventstream-dev/eventstream-dataplane:0.1.0".into(),
        kafka_bootstrap: Some("kafka.kafka:9092".into()),
        ..OperatorConfig::default()
    }
}

/// A context around `client` with `kafka`, a fixed clock and `streams` in the claim store.
pub fn context(
    client: Client,
    kafka: Arc<dyn KafkaAdmin>,
    streams: &[EventStream],
) -> Arc<Context> {
    context_with(
        client,
        kafka,
        streams,
        operator_config(),
        ChildIndex::default(),
    )
}

/// [`context`] with `config` and the owned children the watches have cached.
pub fn context_with(
    client: Client,
    kafka: Arc<dyn KafkaAdmin>,
    streams: &[EventStream],
    config: OperatorConfig,
    children: ChildIndex,
) -> Arc<Context> {
    let (store, mut writer) = reflector::store::<EventStream>();
    for s in streams {
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(s.clone()));
    }
    let metrics = Arc::new(Metrics::new(&prometheus::Registry::new()).expect("metrics"));
    let mut ctx = Context::new(client, config, kafka, metrics, store).with_children(children);
    ctx.now = fixed_now;
    Arc::new(ctx)
}

/// What the operator's child watches would have cached after the server-side applies in
/// `applied` (an earlier reconcile's requests), plus `extra` objects (as JSON with `apiVersion`,
/// `kind` and `metadata`).
pub fn child_index(applied: &[Seen], extra: &[Value]) -> ChildIndex {
    let mut index = ChildIndex::default();
    let mut writers: BTreeMap<ChildKind, _> = ChildKind::ALL
        .into_iter()
        .map(|k| (k, index.track(k)))
        .collect();
    let bodies = applied
        .iter()
        .filter(|s| {
            s.method == "PATCH"
                && s.uri.contains("fieldManager=")
                && !s.uri.contains("/eventstreams/")
        })
        .map(|s| s.body.clone())
        .chain(extra.iter().cloned());
    for body in bodies {
        let kind = ChildKind::ALL
            .into_iter()
            .find(|k| k.api_resource().kind == body["kind"].as_str().unwrap_or_default())
            .expect("a child kind");
        let meta: ChildMeta = serde_json::from_value(body).expect("metadata");
        writers
            .get_mut(&kind)
            .expect("tracked")
            .apply_watcher_event(&kube::runtime::watcher::Event::Apply(meta));
    }
    index
}

/// `racing/telemetry` as in examples/sim-racing-telemetry.yaml, as the API server returns it.
pub fn telemetry() -> EventStream {
    let mut es: EventStream = serde_yaml::from_str(
        r#"
apiVersion: eventstream.dev/v1alpha1
kind: EventStream
metadata: { name: telemetry, namespace: racing, uid: 11111111-0000-4000-8000-000000000001, generation: 1, resourceVersion: "100" }
spec:
  topic: { partitions: 10, replicationFactor: 1, retention: 7d, compression: lz4 }
  ingest: { keyField: /sessionId }
  websocket: { channel: { field: /sessionId } }
  persistence:
    postgres: { urlSecretRef: { name: telemetry-db, key: url }, table: telemetry_frames }
  bridge: { replicas: 2 }
"#,
    )
    .expect("fixture parses");
    es.metadata.creation_timestamp = Some(Time(Timestamp::from_second(1_700_000_000).expect("ts")));
    es
}

pub fn finalized(mut es: EventStream) -> EventStream {
    es.metadata.finalizers = Some(vec![eventstream_operator::FINALIZER.into()]);
    es
}

pub fn deleting(mut es: EventStream) -> EventStream {
    es.metadata.deletion_timestamp = Some(Time(fixed_now()));
    es
}

pub fn db_secret() -> Secrets {
    BTreeMap::from([(
        "racing/telemetry-db".to_string(),
        BTreeMap::from([(
            "url".to_string(),
            "postgres://u:p@db:5432/racing".to_string(),
        )]),
    )])
}
