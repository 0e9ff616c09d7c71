//! Reconcile against a mocked API server (tower-test, as kube-rs documents): the exact sequence
//! of requests for create, update, steady state, deletion with each policy, failures, and the
//! status patch. Kafka is a fake here, except in the tests named `*_tansu`, which use the real
//! librdkafka adapter against a tansu broker process.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use eventstream_crds::EventStream;
use eventstream_crds::v1alpha1::EventStreamStatus;
use eventstream_operator::controller::{ChildIndex, MonitorKinds, error_policy, reconcile};
use eventstream_operator::kafka_admin::{KafkaAdmin, KafkaConnection, RdKafkaAdmin};
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use support::*;

const NS: &str = "/namespaces/racing";
const SSA: &str = "?&force=true&fieldManager=eventstream-operator";

fn es_path(suffix: &str) -> String {
    format!("/apis/eventstream.dev/v1alpha1{NS}/eventstreams/telemetry{suffix}")
}

fn events() -> String {
    format!("POST /apis/events.k8s.io/v1{NS}/events?")
}

fn status_of(seen: &[Seen]) -> EventStreamStatus {
    let patch = seen
        .iter()
        .find(|s| s.method == "PATCH" && s.uri.contains("/status"))
        .expect("a status patch");
    assert_eq!(patch.body["apiVersion"], "eventstream.dev/v1alpha1");
    assert_eq!(patch.body["kind"], "EventStream");
    serde_json::from_value(patch.body["status"].clone()).expect("status parses")
}

fn condition<'a>(
    status: &'a EventStreamStatus,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .expect("condition present")
}

fn event_reasons(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .filter(|s| s.uri.contains("/events.k8s.io/"))
        .map(|s| s.body["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn run(
    es: EventStream,
    kafka: Arc<dyn KafkaAdmin>,
    secrets: Secrets,
) -> (Result<Action, String>, Vec<Seen>) {
    run_with(es, kafka, secrets, operator_config(), ChildIndex::default()).await
}

/// [`run`] with `config` and the children the operator's watches have cached.
async fn run_with(
    es: EventStream,
    kafka: Arc<dyn KafkaAdmin>,
    secrets: Secrets,
    config: eventstream_operator::OperatorConfig,
    children: ChildIndex,
) -> (Result<Action, String>, Vec<Seen>) {
    let (client, server) = api_server(secrets, Some(es.clone()));
    let ctx = context_with(client, kafka, std::slice::from_ref(&es), config, children);
    let result = reconcile(Arc::new(es), ctx.clone())
        .await
        .map_err(|e| e.to_string());
    drop(ctx);
    (result, server.finish().await)
}

fn create_sequence() -> Vec<String> {
    vec![
        events(), // TopicCreated
        format!("GET /api/v1{NS}/secrets/telemetry-db"),
        events(), // DeadLetterTopicCreated
        // Nothing is known to be owned yet: every name is checked before anything is applied.
        format!("GET /api/v1{NS}/configmaps/telemetry-config"),
        format!("GET /api/v1{NS}/services/telemetry-bridge"),
        format!("GET /apis/apps/v1{NS}/deployments/telemetry-bridge"),
        format!("GET /apis/policy/v1{NS}/poddisruptionbudgets/telemetry-bridge"),
        format!("GET /apis/apps/v1{NS}/deployments/telemetry-sink"),
        format!("PATCH /api/v1{NS}/configmaps/telemetry-config{SSA}"),
        format!("PATCH /api/v1{NS}/services/telemetry-bridge{SSA}"),
        format!("PATCH /apis/apps/v1{NS}/deployments/telemetry-bridge{SSA}"),
        format!("PATCH /apis/policy/v1{NS}/poddisruptionbudgets/telemetry-bridge{SSA}"),
        format!("PATCH /apis/apps/v1{NS}/deployments/telemetry-sink{SSA}"),
        events(), // Created
        format!("PATCH {}{SSA}", es_path("/status")),
    ]
}

#[tokio::test]
async fn a_new_stream_first_gets_the_finalizer() {
    let kafka = Arc::new(FakeKafka::default());
    let (result, seen) = run(telemetry(), kafka.clone(), db_secret()).await;
    assert_eq!(result, Ok(Action::await_change()));
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(lines, vec![format!("PATCH {}?", es_path(""))]);
    assert_eq!(
        seen[0].body,
        json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
               {"op": "add", "path": "/metadata/finalizers", "value": ["eventstream.dev/cleanup"]}])
    );
    assert!(
        kafka.calls.lock().is_empty(),
        "nothing happens before the finalizer is in place"
    );
}

#[tokio::test]
async fn create_applies_topic_children_and_status_in_order() {
    let kafka = Arc::new(FakeKafka::default());
    *kafka.lag.lock() = Some(42);
    let (result, seen) = run(finalized(telemetry()), kafka.clone(), db_secret()).await;
    assert_eq!(
        result,
        Ok(Action::requeue(Duration::from_secs(300))),
        "periodic drift check"
    );
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(lines, create_sequence());
    assert_eq!(
        event_reasons(&seen),
        vec!["TopicCreated", "DeadLetterTopicCreated", "Created"]
    );
    assert_eq!(
        *kafka.calls.lock(),
        vec![
            "describe racing.telemetry",
            "create racing.telemetry",
            "describe racing.telemetry",
            "describe racing.telemetry.dlq",
            "create racing.telemetry.dlq",
            "lag eventstream.racing.telemetry.sink"
        ]
    );
    // The dead-letter topic: one partition, the stream's retention, nothing else.
    let dlq = kafka.topics.lock()["racing.telemetry.dlq"].clone();
    assert_eq!(dlq.partitions, 1);
    assert_eq!(
        dlq.configs,
        [("retention.ms".to_string(), "604800000".to_string())].into()
    );
    // The database URL never appears in anything the operator writes.
    for s in &seen {
        assert!(!s.body.to_string().contains("postgres://"), "{}", s.line());
    }
    // Pod templates carry the config hash; children carry the owner reference.
    let bridge = &seen
        .iter()
        .find(|s| s.method == "PATCH" && s.uri.contains("deployments/telemetry-bridge"))
        .expect("bridge applied")
        .body;
    assert!(
        bridge["spec"]["template"]["metadata"]["annotations"]["eventstream.dev/config-hash"]
            .is_string()
    );
    assert_eq!(
        bridge["metadata"]["ownerReferences"][0]["uid"],
        "11111111-0000-4000-8000-000000000001"
    );

    let status = status_of(&seen);
    assert_eq!(status.observed_generation, Some(1));
    for t in ["TopicReady", "BridgeReady", "SinkReady", "Ready"] {
        assert_eq!(
            condition(&status, t).status,
            "True",
            "{t}: {:?}",
            condition(&status, t)
        );
    }
    assert_eq!(condition(&status, "TopicReady").reason, "TopicCreated");
    let topic = status.topic.as_ref().expect("topic status");
    assert_eq!(
        (topic.partitions, topic.replication_factor),
        (Some(10), Some(1))
    );
    assert_eq!(topic.config["retention.ms"], "604800000");
    assert_eq!(topic.config["compression.type"], "lz4");
    let endpoints = status.endpoints.as_ref().expect("endpoints");
    assert_eq!(
        endpoints.websocket.as_deref(),
        Some("ws://telemetry-bridge.racing.svc:8080/ws")
    );
    assert_eq!(
        endpoints.ingest.as_deref(),
        Some("http://telemetry-bridge.racing.svc:8080/produce")
    );
    let sink = status.sink.as_ref().expect("sink status");
    assert_eq!((sink.lag, sink.ready_replicas), (Some(42), 1));
    assert_eq!(status.bridge.as_ref().map(|b| b.ready_replicas), Some(2));
}

#[tokio::test]
async fn steady_state_writes_no_status_and_no_events() {
    let kafka = Arc::new(FakeKafka::default());
    let (_, seen) = run(finalized(telemetry()), kafka.clone(), db_secret()).await;
    // Second pass: TopicReady's reason moves from TopicCreated to TopicInSync (one write).
    let mut es = finalized(telemetry());
    es.status = Some(status_of(&seen));
    let (_, seen) = run(es, kafka.clone(), db_secret()).await;
    assert_eq!(
        condition(&status_of(&seen), "TopicReady").reason,
        "TopicInSync"
    );
    // Third pass: nothing changed anywhere, and the watches know the children are owned.
    let mut es = finalized(telemetry());
    es.status = Some(status_of(&seen));
    let (result, seen) = run_with(
        es,
        kafka.clone(),
        db_secret(),
        operator_config(),
        child_index(&seen, &[]),
    )
    .await;
    assert_eq!(result, Ok(Action::requeue(Duration::from_secs(300))));
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        vec![
            format!("GET /api/v1{NS}/secrets/telemetry-db"),
            format!("PATCH /api/v1{NS}/configmaps/telemetry-config{SSA}"),
            format!("PATCH /api/v1{NS}/services/telemetry-bridge{SSA}"),
            format!("PATCH /apis/apps/v1{NS}/deployments/telemetry-bridge{SSA}"),
            format!("PATCH /apis/policy/v1{NS}/poddisruptionbudgets/telemetry-bridge{SSA}"),
            format!("PATCH /apis/apps/v1{NS}/deployments/telemetry-sink{SSA}"),
        ],
        "no status write (it did not change) and no events"
    );
}

#[tokio::test]
async fn update_corrects_topic_drift_removes_the_pdb_and_patches_status() {
    let kafka = Arc::new(FakeKafka::default());
    let (_, seen) = run(finalized(telemetry()), kafka.clone(), db_secret()).await;
    let first = status_of(&seen);
    // Someone changed the retention by hand; the user lowered the bridge to one replica.
    kafka
        .topics
        .lock()
        .get_mut("racing.telemetry")
        .unwrap()
        .configs
        .insert("retention.ms".into(), "1000".into());
    let mut es = finalized(telemetry());
    es.metadata.generation = Some(2);
    es.spec.bridge.replicas = 1;
    es.status = Some(first.clone());
    // The watches have seen what the first pass applied, the bridge's PDB among it.
    let (result, seen) = run_with(
        es,
        kafka.clone(),
        db_secret(),
        operator_config(),
        child_index(&seen, &[]),
    )
    .await;
    assert_eq!(result, Ok(Action::requeue(Duration::from_secs(300))));
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        vec![
            events(), // TopicConfigCorrected
            format!("GET /api/v1{NS}/secrets/telemetry-db"),
            format!("PATCH /api/v1{NS}/configmaps/telemetry-config{SSA}"),
            format!("PATCH /api/v1{NS}/services/telemetry-bridge{SSA}"),
            format!("PATCH /apis/apps/v1{NS}/deployments/telemetry-bridge{SSA}"),
            format!("PATCH /apis/apps/v1{NS}/deployments/telemetry-sink{SSA}"),
            // The set is applied first, then owned objects no longer wanted are deleted.
            format!("DELETE /apis/policy/v1{NS}/poddisruptionbudgets/telemetry-bridge?"),
            events(), // Updated
            format!("PATCH {}{SSA}", es_path("/status")),
        ]
    );
    assert_eq!(
        event_reasons(&seen),
        vec!["TopicConfigCorrected", "Updated"]
    );
    let note = seen[0].body["note"].as_str().unwrap();
    assert!(note.contains("retention.ms: 1000 → 604800000"), "{note}");
    assert_eq!(
        kafka.topics.lock()["racing.telemetry"].configs["retention.ms"],
        "604800000"
    );
    let status = status_of(&seen);
    assert_eq!(status.observed_generation, Some(2));
    let (before, after) = (condition(&first, "Ready"), condition(&status, "Ready"));
    assert_eq!(
        before.last_transition_time, after.last_transition_time,
        "no transition, same time"
    );
    assert_eq!(condition(&status, "TopicReady").reason, "TopicInSync");
}

/// Children are a set: dropping `persistence` deletes every owned object of the sink (its
/// Deployment and its PodMonitor, which used to be orphaned), and nothing the stream does not
/// own, even with its labels and name.
#[tokio::test]
async fn dropping_persistence_deletes_the_sink_and_its_pod_monitor_but_nothing_foreign() {
    let kafka = Arc::new(FakeKafka::default());
    let monitors = eventstream_operator::OperatorConfig {
        service_monitor: true,
        pod_monitor: true,
        ..operator_config()
    };
    let (_, first) = run_with(
        finalized(telemetry()),
        kafka.clone(),
        db_secret(),
        monitors.clone(),
        ChildIndex::default(),
    )
    .await;
    assert!(
        first
            .iter()
            .any(|s| s.line().contains("podmonitors/telemetry-sink")),
        "the first pass applies the sink's PodMonitor"
    );
    // A look-alike the stream does not own (another owner UID), with the stream's labels.
    let foreign = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "telemetry-extra", "namespace": "racing",
            "labels": {"eventstream.dev/stream": "telemetry",
                       "app.kubernetes.io/managed-by": "eventstream-operator"},
            "ownerReferences": [{"apiVersion": "eventstream.dev/v1alpha1", "kind": "EventStream",
                "name": "telemetry", "uid": "99999999-0000-4000-8000-000000000009",
                "controller": true}]}
    });
    let mut es = finalized(telemetry());
    es.metadata.generation = Some(2);
    es.spec.persistence = None;
    let (result, seen) = run_with(
        es,
        kafka.clone(),
        db_secret(),
        monitors,
        child_index(&first, &[foreign]),
    )
    .await;
    assert_eq!(result, Ok(Action::requeue(Duration::from_secs(300))));
    let deletes: Vec<String> = seen
        .iter()
        .filter(|s| s.method == "DELETE")
        .map(Seen::line)
        .collect();
    assert_eq!(
        deletes,
        vec![
            format!("DELETE /apis/apps/v1{NS}/deployments/telemetry-sink?"),
            format!("DELETE /apis/monitoring.coreos.com/v1{NS}/podmonitors/telemetry-sink?"),
        ]
    );
    assert!(
        seen.iter()
            .any(|s| s.line().contains("servicemonitors/telemetry-bridge")),
        "the bridge's ServiceMonitor stays applied"
    );
}

/// The Prometheus Operator installed after the operator started: the next reconcile of a stream
/// (the one every stream gets when a monitor kind appears) applies its ServiceMonitor and its
/// sink's PodMonitor; once the CRDs are gone again nothing asks for them (their objects went
/// with the CRDs) and nothing is deleted by hand.
#[tokio::test]
async fn a_stream_reconciled_after_the_monitor_crds_appear_gets_its_monitors() {
    let kafka = Arc::new(FakeKafka::default());
    let es = finalized(telemetry());
    let (client, server) = api_server(db_secret(), Some(es.clone()));
    // Started without the Prometheus Operator.
    let ctx = context(client, kafka, std::slice::from_ref(&es));
    let monitor_requests = |from: usize| -> Vec<String> {
        server.lines()[from..]
            .iter()
            .filter(|l| l.contains("monitoring.coreos.com"))
            .cloned()
            .collect()
    };
    reconcile(Arc::new(es.clone()), ctx.clone()).await.unwrap();
    assert_eq!(monitor_requests(0), Vec::<String>::new());

    ctx.set_monitors(MonitorKinds {
        service_monitor: true,
        pod_monitor: true,
    });
    let from = server.lines().len();
    reconcile(Arc::new(es.clone()), ctx.clone()).await.unwrap();
    let monitors = "/apis/monitoring.coreos.com/v1/namespaces/racing";
    assert_eq!(
        monitor_requests(from),
        vec![
            // Not cached by the (just started) monitor watch yet: checked by name first.
            format!("GET {monitors}/servicemonitors/telemetry-bridge"),
            format!("GET {monitors}/podmonitors/telemetry-sink"),
            format!("PATCH {monitors}/servicemonitors/telemetry-bridge{SSA}"),
            format!("PATCH {monitors}/podmonitors/telemetry-sink{SSA}"),
        ]
    );
    let applied: Vec<Value> = server.log.lock()[from..]
        .iter()
        .filter(|s| s.method == "PATCH" && s.uri.contains("monitoring.coreos.com"))
        .map(|s| s.body.clone())
        .collect();
    assert_eq!(applied[0]["kind"], "ServiceMonitor");
    assert_eq!(applied[1]["kind"], "PodMonitor");
    for body in &applied {
        assert_eq!(
            body["metadata"]["ownerReferences"][0]["uid"], "11111111-0000-4000-8000-000000000001",
            "owned by the stream, so they go with it"
        );
    }

    // Only the PodMonitor CRD removed: the ServiceMonitor is still applied, the PodMonitor
    // neither applied nor deleted.
    ctx.set_monitors(MonitorKinds {
        service_monitor: true,
        pod_monitor: false,
    });
    let from = server.lines().len();
    reconcile(Arc::new(es), ctx.clone()).await.unwrap();
    let after = monitor_requests(from);
    assert!(
        after
            .iter()
            .any(|l| l.contains("servicemonitors/telemetry-bridge")),
        "{after:?}"
    );
    assert!(
        !after.iter().any(|l| l.contains("podmonitors")),
        "{after:?}"
    );
    drop(ctx);
    server.finish().await;
}

/// A user's object with a child's name is never taken over: a forced apply would make the
/// stream its controller and garbage collection would delete it with the stream.
#[tokio::test]
async fn an_object_the_stream_does_not_own_is_refused_and_nothing_is_touched() {
    let kafka = Arc::new(FakeKafka::default());
    let es = finalized(telemetry());
    let theirs = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "telemetry-config", "namespace": "racing", "uid": "u-1"},
        "data": {"team": "racing"}});
    let (client, server) = api_server_full(
        db_secret(),
        Some(es.clone()),
        None,
        [(format!("/api/v1{NS}/configmaps/telemetry-config"), theirs)].into(),
    );
    let ctx = context(client, kafka, std::slice::from_ref(&es));
    let result = reconcile(Arc::new(es), ctx.clone()).await;
    drop(ctx);
    let seen = server.finish().await;
    assert_eq!(
        result.map_err(|e| e.to_string()),
        Ok(Action::requeue(Duration::from_secs(300))),
        "waits for the user"
    );
    let touched: Vec<String> = seen
        .iter()
        .filter(|s| {
            (s.method == "PATCH" || s.method == "DELETE") && !s.uri.contains("/eventstreams/")
        })
        .map(Seen::line)
        .collect();
    assert_eq!(touched, Vec::<String>::new(), "nothing applied or deleted");
    let status = status_of(&seen);
    for t in ["BridgeReady", "SinkReady", "Ready"] {
        let c = condition(&status, t);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "NameConflict")
        );
        assert!(
            c.message.contains("ConfigMap racing/telemetry-config"),
            "{}",
            c.message
        );
    }
    assert!(event_reasons(&seen).contains(&"NameConflict".to_string()));
}

/// An object with a child's name that the stream owns (an earlier reconcile made it) is applied.
#[tokio::test]
async fn an_object_the_stream_owns_is_applied() {
    let kafka = Arc::new(FakeKafka::default());
    let es = finalized(telemetry());
    let ours = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "telemetry-config", "namespace": "racing",
            "ownerReferences": [{"apiVersion": "eventstream.dev/v1alpha1", "kind": "EventStream",
                "name": "telemetry", "uid": "11111111-0000-4000-8000-000000000001",
                "controller": true}]}});
    let (client, server) = api_server_full(
        db_secret(),
        Some(es.clone()),
        None,
        [(format!("/api/v1{NS}/configmaps/telemetry-config"), ours)].into(),
    );
    let ctx = context(client, kafka, std::slice::from_ref(&es));
    reconcile(Arc::new(es), ctx.clone()).await.expect("ok");
    drop(ctx);
    let seen = server.finish().await;
    assert!(
        seen.iter()
            .any(|s| s.line() == format!("PATCH /api/v1{NS}/configmaps/telemetry-config{SSA}"))
    );
    assert_eq!(condition(&status_of(&seen), "Ready").status, "True");
}

/// Kafka changes a replication factor only by a partition reassignment: the operator says so
/// instead of calling the topic in sync.
#[tokio::test]
async fn a_replication_factor_change_is_reported_not_called_in_sync() {
    let kafka = Arc::new(FakeKafka::default());
    let (_, seen) = run(finalized(telemetry()), kafka.clone(), db_secret()).await;
    let mut es = finalized(telemetry());
    es.metadata.generation = Some(2);
    es.spec.topic.replication_factor = Some(3);
    es.status = Some(status_of(&seen));
    let (_, seen) = run(es.clone(), kafka.clone(), db_secret()).await;
    let status = status_of(&seen);
    let topic = condition(&status, "TopicReady");
    assert_eq!(topic.reason, "ReplicationChangeNeedsReassignment");
    assert!(
        topic.message.contains("replication factor 1")
            && topic.message.contains("is 3")
            && topic.message.contains("reassignment"),
        "{}",
        topic.message
    );
    assert!(event_reasons(&seen).contains(&"ReplicationChangeNeedsReassignment".to_string()));
    // Reported once: the next pass with that status publishes no second Event.
    es.status = Some(status);
    let (_, seen) = run(es, kafka, db_secret()).await;
    assert!(!event_reasons(&seen).contains(&"ReplicationChangeNeedsReassignment".to_string()));
}

/// The documented way out of a deletion blocked by an unreachable Kafka.
#[tokio::test]
async fn the_skip_annotation_lets_deletion_finish_without_kafka() {
    let kafka = Arc::new(FakeKafka::default());
    *kafka.unreachable.lock() = true;
    let mut es = deleting(finalized(telemetry()));
    es.spec.topic.deletion_policy = eventstream_crds::v1alpha1::DeletionPolicy::Delete;
    es.metadata.annotations = Some(
        [(
            "eventstream.dev/skip-kafka-cleanup".to_string(),
            "true".to_string(),
        )]
        .into(),
    );
    let (result, seen) = run(es, kafka.clone(), db_secret()).await;
    assert_eq!(result, Ok(Action::await_change()));
    assert!(kafka.calls.lock().is_empty(), "Kafka is not touched");
    assert_eq!(event_reasons(&seen), vec!["KafkaCleanupSkipped"]);
    let note = seen[0].body["note"].as_str().unwrap();
    assert!(
        note.contains("racing.telemetry") && note.contains("eventstream.racing.telemetry.sink"),
        "{note}"
    );
    assert_eq!(
        seen.last().unwrap().line(),
        format!("PATCH {}?", es_path("")),
        "finalizer removed"
    );
}

/// events.k8s.io rejects a note over 1 KiB, and with it the whole Event.
#[tokio::test]
async fn long_event_notes_are_truncated_to_one_kib() {
    let kafka = Arc::new(FakeKafka::default());
    kafka.refuse.lock().push("create racing.telemetry".into());
    *kafka.refusal.lock() = Some(format!("Broker: {}", "policy violation; ".repeat(200)));
    let (_, seen) = run(finalized(telemetry()), kafka, db_secret()).await;
    let notes: Vec<&str> = seen
        .iter()
        .filter(|s| s.uri.contains("/events.k8s.io/"))
        .filter_map(|s| s.body["note"].as_str())
        .collect();
    let long = notes
        .iter()
        .find(|n| n.contains("policy violation"))
        .expect("the refusal is reported");
    assert!(long.len() <= 1024, "{} bytes", long.len());
    assert!(long.ends_with('…'));
}

#[tokio::test]
async fn deletion_with_delete_policy_deletes_topic_and_group_then_the_finalizer() {
    let kafka = Arc::new(FakeKafka::default());
    let mut es = deleting(finalized(telemetry()));
    es.spec.topic.deletion_policy = eventstream_crds::v1alpha1::DeletionPolicy::Delete;
    let (result, seen) = run(es, kafka.clone(), db_secret()).await;
    assert_eq!(result, Ok(Action::await_change()));
    assert_eq!(
        *kafka.calls.lock(),
        vec![
            "delete-topic racing.telemetry",
            "delete-topic racing.telemetry.dlq",
            "delete-group eventstream.racing.telemetry.sink"
        ]
    );
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(lines, vec![events(), format!("PATCH {}?", es_path(""))]);
    assert_eq!(event_reasons(&seen), vec!["CleanedUp"]);
    assert_eq!(
        seen[1].body,
        json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "eventstream.dev/cleanup"},
               {"op": "remove", "path": "/metadata/finalizers/0"}])
    );
}

#[tokio::test]
async fn a_dead_letter_topic_another_sink_uses_outlives_the_stream() {
    let kafka = Arc::new(FakeKafka::default());
    let shared = |mut es: EventStream| {
        if let Some(p) = es.spec.persistence.as_mut() {
            p.dead_letter_topic = Some("racing.dead-letters".into());
        }
        es
    };
    let mut es = shared(deleting(finalized(telemetry())));
    es.spec.topic.deletion_policy = eventstream_crds::v1alpha1::DeletionPolicy::Delete;
    let mut other = shared(finalized(telemetry()));
    other.metadata.name = Some("laps".into());
    other.metadata.uid = Some("11111111-0000-4000-8000-000000000002".into());
    other.spec.topic.name = Some("racing.laps".into());
    let (client, server) = api_server(db_secret(), Some(es.clone()));
    let ctx = context(client, kafka.clone(), &[es.clone(), other]);
    let result = reconcile(Arc::new(es), ctx.clone()).await;
    drop(ctx);
    server.finish().await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        *kafka.calls.lock(),
        vec![
            "delete-topic racing.telemetry",
            "delete-group eventstream.racing.telemetry.sink"
        ],
        "racing/laps still dead-letters into racing.dead-letters"
    );
}

#[tokio::test]
async fn a_refused_dead_letter_topic_makes_the_sink_not_ready() {
    let kafka = Arc::new(FakeKafka::default());
    kafka
        .refuse
        .lock()
        .push("create racing.telemetry.dlq".into());
    let (result, seen) = run(finalized(telemetry()), kafka.clone(), db_secret()).await;
    assert_eq!(
        result,
        Ok(Action::requeue(Duration::from_secs(300))),
        "a refusal (ACLs) needs the user, as for the stream's own topic"
    );
    let status = status_of(&seen);
    assert_eq!(condition(&status, "TopicReady").status, "True");
    assert_eq!(condition(&status, "BridgeReady").status, "True");
    let sink = condition(&status, "SinkReady");
    assert_eq!(
        (sink.status.as_str(), sink.reason.as_str()),
        ("False", "DeadLetterTopicNotReady")
    );
    assert!(
        sink.message.contains("racing.telemetry.dlq") && sink.message.contains("authorization"),
        "{}",
        sink.message
    );
    assert_eq!(condition(&status, "Ready").status, "False");
    assert!(event_reasons(&seen).contains(&"DeadLetterTopicNotReady".to_string()));
}

/// A sink that cannot use its table exits with the reason; the operator puts the pod's
/// termination message into `SinkReady` and looks again soon (a crash loop does not change the
/// Deployment, so no watch event would come).
#[tokio::test]
async fn a_crash_looping_sink_reports_its_error_in_the_status() {
    let kafka = Arc::new(FakeKafka::default());
    let es = finalized(telemetry());
    let crashing = json!({
        "metadata": {"name": "telemetry-sink-7d9f-x2x", "namespace": "racing"},
        "status": {"containerStatuses": [{
            "name": "sink", "ready": false, "restartCount": 3, "image": "i", "imageID": "",
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1,
                "message": "error: table telemetry_frames cannot take the sink's rows: column payload is text, expected jsonb"}}
        }]}
    });
    let (client, server) = api_server_with_failing(
        db_secret(),
        Some(es.clone()),
        Some(Failing {
            deployment: "telemetry-sink".into(),
            pods: vec![crashing],
        }),
    );
    let ctx = context(client, kafka, std::slice::from_ref(&es));
    let result = reconcile(Arc::new(es), ctx.clone()).await;
    drop(ctx);
    let seen = server.finish().await;
    assert_eq!(
        result.map_err(|e| e.to_string()),
        Ok(Action::requeue(Duration::from_secs(30)))
    );
    let list = seen
        .iter()
        .find(|s| s.method == "GET" && s.uri.contains("/pods"))
        .expect("the sink's pods are listed");
    assert!(
        list.uri.contains("app.kubernetes.io%2Fcomponent%3Dsink")
            || list.uri.contains("app.kubernetes.io/component=sink"),
        "{}",
        list.uri
    );
    let status = status_of(&seen);
    let sink = condition(&status, "SinkReady");
    assert_eq!(
        (sink.status.as_str(), sink.reason.as_str()),
        ("False", "CrashLoopBackOff")
    );
    assert!(
        sink.message
            .contains("column payload is text, expected jsonb")
            && sink.message.contains("telemetry-sink-7d9f-x2x"),
        "{}",
        sink.message
    );
    assert_eq!(condition(&status, "Ready").reason, "CrashLoopBackOff");
    assert_eq!(condition(&status, "BridgeReady").status, "True");
}

#[tokio::test]
async fn deletion_with_retain_policy_keeps_the_topic() {
    let kafka = Arc::new(FakeKafka::default());
    let (result, seen) = run(deleting(finalized(telemetry())), kafka.clone(), db_secret()).await;
    assert_eq!(result, Ok(Action::await_change()));
    assert_eq!(
        *kafka.calls.lock(),
        vec!["delete-group eventstream.racing.telemetry.sink"]
    );
    assert!(
        seen[0].body["note"]
            .as_str()
            .unwrap()
            .contains("kept topic racing.telemetry")
    );
    assert_eq!(seen.len(), 2, "event, finalizer removal");
}

#[tokio::test]
async fn kafka_unreachable_during_deletion_keeps_the_finalizer_and_backs_off() {
    let kafka = Arc::new(FakeKafka::default());
    *kafka.unreachable.lock() = true;
    let es = deleting(finalized(telemetry()));
    let (client, server) = api_server(db_secret(), Some(es.clone()));
    let ctx = context(client, kafka.clone(), std::slice::from_ref(&es));
    let es = Arc::new(es);
    let mut delays = Vec::new();
    for _ in 0..4 {
        let err = reconcile(es.clone(), ctx.clone())
            .await
            .expect_err("cleanup fails");
        assert!(err.to_string().contains("unreachable"), "{err}");
        delays.push(error_policy(es.clone(), &err, ctx.clone()));
    }
    assert_eq!(
        delays,
        [5, 10, 20, 40]
            .map(|s| Action::requeue(Duration::from_secs(s)))
            .to_vec(),
        "exponential per-object backoff, never a hot loop"
    );
    assert_eq!(
        ctx.metrics
            .reconcile_errors
            .with_label_values(&["kafka_unreachable"])
            .get(),
        4.0
    );
    drop(ctx);
    let seen = server.finish().await;
    assert!(
        seen.iter().all(|s| !s.uri.contains("/eventstreams/")),
        "finalizer never removed"
    );
    assert_eq!(event_reasons(&seen)[0], "CleanupFailed");
}

#[tokio::test]
async fn kafka_unreachable_sets_topic_not_ready_and_backs_off() {
    let kafka = Arc::new(FakeKafka::default());
    *kafka.unreachable.lock() = true;
    let es = finalized(telemetry());
    let (client, server) = api_server(db_secret(), Some(es.clone()));
    let ctx = context(client, kafka.clone(), std::slice::from_ref(&es));
    let first = reconcile(Arc::new(es.clone()), ctx.clone())
        .await
        .expect("handled, not fatal");
    assert_eq!(first, Action::requeue(Duration::from_secs(5)));
    let status = status_of(&server.log.lock());
    let topic = condition(&status, "TopicReady");
    assert_eq!(
        (topic.status.as_str(), topic.reason.as_str()),
        ("False", "KafkaUnreachable")
    );
    assert!(
        topic.message.contains("Broker transport failure"),
        "{}",
        topic.message
    );
    assert_eq!(condition(&status, "Ready").reason, "KafkaUnreachable");
    // The workloads are still applied: they do not need the operator to reach Kafka.
    assert!(
        server
            .lines()
            .iter()
            .any(|l| l.contains("deployments/telemetry-bridge"))
    );

    // Next attempt, with the status as written: longer delay, no second status write.
    let mut again = es.clone();
    again.status = Some(status);
    let writes_before = server
        .lines()
        .iter()
        .filter(|l| l.contains("/status"))
        .count();
    let second = reconcile(Arc::new(again), ctx.clone())
        .await
        .expect("handled");
    assert_eq!(second, Action::requeue(Duration::from_secs(10)));
    let writes_after = server
        .lines()
        .iter()
        .filter(|l| l.contains("/status"))
        .count();
    assert_eq!(
        writes_before, writes_after,
        "identical status is not rewritten"
    );
    assert_eq!(
        ctx.metrics
            .kafka_admin_errors
            .with_label_values(&["unreachable"])
            .get(),
        2.0
    );
    drop(ctx);
    server.finish().await;
}

#[tokio::test]
async fn a_missing_secret_is_reported_and_waits_for_the_user() {
    let kafka = Arc::new(FakeKafka::default());
    let (result, seen) = run(finalized(telemetry()), kafka, Secrets::new()).await;
    assert_eq!(result, Ok(Action::requeue(Duration::from_secs(300))));
    let status = status_of(&seen);
    let sink = condition(&status, "SinkReady");
    assert_eq!(
        (sink.status.as_str(), sink.reason.as_str()),
        ("False", "SecretNotFound")
    );
    assert_eq!(
        sink.message,
        "Secret racing/telemetry-db (referenced by spec.persistence.postgres.urlSecretRef) does not exist: create it"
    );
    assert_eq!(condition(&status, "Ready").reason, "SecretNotFound");
    assert!(event_reasons(&seen).contains(&"SecretNotFound".to_string()));
}

#[tokio::test]
async fn a_client_certificate_secret_without_its_key_is_reported() {
    let kafka = Arc::new(FakeKafka::default());
    let mut es = finalized(telemetry());
    if let Some(p) = es.spec.persistence.as_mut() {
        p.postgres.tls = Some(eventstream_crds::v1alpha1::PostgresTls {
            ca_secret_ref: None,
            client_cert_secret_ref: Some(eventstream_crds::v1alpha1::LocalObjectRef {
                name: "writer-cert".into(),
            }),
        });
    }
    let mut secrets = db_secret();
    secrets.insert(
        "racing/writer-cert".into(),
        [("tls.crt".to_string(), "PEM".to_string())].into(),
    );
    let (result, seen) = run(es, kafka, secrets).await;
    assert_eq!(result, Ok(Action::requeue(Duration::from_secs(300))));
    let status = status_of(&seen);
    let sink = condition(&status, "SinkReady");
    assert_eq!(sink.reason, "SecretKeyMissing");
    assert!(
        sink.message.contains("writer-cert")
            && sink.message.contains("tls.key")
            && sink
                .message
                .contains("spec.persistence.postgres.tls.clientCertSecretRef"),
        "{}",
        sink.message
    );
}

#[tokio::test]
async fn the_newer_of_two_streams_on_one_topic_is_refused() {
    let kafka = Arc::new(FakeKafka::default());
    let owner = finalized(telemetry());
    let mut newer = finalized(telemetry());
    newer.metadata.name = Some("telemetry-copy".into());
    newer.metadata.uid = Some("22222222-0000-4000-8000-000000000002".into());
    newer.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        fixed_now(),
    ));
    newer.spec.topic.name = Some("racing.telemetry".into());
    let (client, server) = api_server(db_secret(), Some(newer.clone()));
    let ctx = context(client, kafka.clone(), &[owner, newer.clone()]);
    let result = reconcile(Arc::new(newer), ctx.clone())
        .await
        .expect("handled");
    assert_eq!(result, Action::requeue(Duration::from_secs(300)));
    drop(ctx);
    let seen = server.finish().await;
    let status = status_of(&seen);
    let topic = condition(&status, "TopicReady");
    assert_eq!(topic.reason, "TopicClaimedByOther");
    assert!(
        topic.message.contains("racing/telemetry"),
        "{}",
        topic.message
    );
    assert!(
        !kafka
            .calls
            .lock()
            .iter()
            .any(|c| c.starts_with("create") || c.starts_with("describe"))
    );
}

#[tokio::test]
async fn a_spec_that_cannot_be_built_only_gets_a_status_and_an_event() {
    let kafka = Arc::new(FakeKafka::default());
    let mut es = finalized(telemetry());
    es.spec.websocket.ping_interval = "1m".into();
    es.spec.websocket.idle_timeout = "30s".into();
    let (result, seen) = run(es, kafka.clone(), db_secret()).await;
    assert_eq!(result, Ok(Action::requeue(Duration::from_secs(300))));
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        vec![events(), format!("PATCH {}{SSA}", es_path("/status"))]
    );
    let status = status_of(&seen);
    let ready = condition(&status, "Ready");
    assert_eq!(ready.reason, "InvalidSpec");
    assert!(
        ready.message.contains("websocket.idleTimeout"),
        "{}",
        ready.message
    );
    assert!(kafka.calls.lock().is_empty());
}

#[tokio::test]
async fn offset_reset_scales_the_sink_to_zero_resets_and_removes_the_annotation() {
    let kafka = Arc::new(FakeKafka::default());
    let mut es = finalized(telemetry());
    es.metadata.annotations = Some(
        [(
            "eventstream.dev/reset-sink-offsets".to_string(),
            "earliest".to_string(),
        )]
        .into(),
    );
    let (result, seen) = run(es, kafka.clone(), db_secret()).await;
    assert_eq!(
        result,
        Ok(Action::requeue(Duration::from_secs(5))),
        "come back to scale up"
    );
    let sink = seen
        .iter()
        .find(|s| s.method == "PATCH" && s.uri.contains("deployments/telemetry-sink"))
        .unwrap();
    assert_eq!(sink.body["spec"]["replicas"], 0);
    assert!(
        kafka
            .calls
            .lock()
            .contains(&"reset eventstream.racing.telemetry.sink Earliest".to_string())
    );
    // The resolved offsets go into the status (the sink reads them through its ConfigMap)
    // before the annotation goes, so a failed status write cannot lose the request.
    let status_at = seen
        .iter()
        .position(|s| s.method == "PATCH" && s.uri.starts_with(&es_path("/status")))
        .expect("status patch");
    let status = &seen[status_at].body["status"];
    assert_eq!(
        status["sink"]["offsetReset"],
        json!({
            "id": "earliest@2025-06-15T15:06:40Z",
            "to": "earliest",
            "offsets": (0..10).map(|p| (p.to_string(), json!(0))).collect::<serde_json::Map<_, _>>()
        })
    );
    let merge_at = seen
        .iter()
        .position(|s| s.method == "PATCH" && s.uri == format!("{}?", es_path("")))
        .expect("annotation patch");
    assert!(
        merge_at > status_at,
        "annotation removed after the status is written"
    );
    assert_eq!(
        seen[merge_at].body,
        json!({"metadata": {"annotations": {"eventstream.dev/reset-sink-offsets": Value::Null}}})
    );
    assert!(event_reasons(&seen).contains(&"SinkOffsetsReset".to_string()));
}

#[tokio::test]
async fn a_recorded_offset_reset_reaches_the_sink_config_and_stays() {
    let kafka = Arc::new(FakeKafka::default());
    let mut es = finalized(telemetry());
    let reset = eventstream_crds::v1alpha1::SinkOffsetReset {
        id: "latest@2025-06-15T15:06:40Z".into(),
        to: "latest".into(),
        offsets: [("0".to_string(), 100), ("1".to_string(), 90)].into(),
    };
    es.status = Some(eventstream_crds::v1alpha1::EventStreamStatus {
        sink: Some(eventstream_crds::v1alpha1::SinkStatus {
            offset_reset: Some(reset.clone()),
            ..Default::default()
        }),
        ..Default::default()
    });
    let (_, seen) = run(es, kafka, db_secret()).await;
    let cm = seen
        .iter()
        .find(|s| s.method == "PATCH" && s.uri.contains("configmaps/"))
        .expect("configmap applied");
    let text = cm.body["data"]["config.yaml"]
        .as_str()
        .expect("config text");
    let config = eventstream_crds::config::DataplaneConfig::from_yaml(text).expect("valid config");
    let applied = config
        .sink
        .and_then(|s| s.offset_reset)
        .expect("reset in config");
    assert_eq!(applied.id, reset.id);
    assert_eq!(applied.offsets, [(0, 100), (1, 90)].into());
    let status = status_of(&seen);
    assert_eq!(
        status.sink.and_then(|s| s.offset_reset),
        Some(reset),
        "the record stays in the status, so the ConfigMap (and the sink pods) do not change again"
    );
}

/// Mocked API, real Kafka: the broker's refusal of CreatePartitions (tansu has none) becomes
/// `TopicReady=False` with a clear reason, and the stream waits instead of looping.
#[tokio::test]
async fn partition_raise_refused_by_tansu_becomes_a_condition() {
    let broker = eventstream_testkit::TansuBroker::start().expect("tansu");
    let kafka: Arc<dyn KafkaAdmin> = Arc::new(RdKafkaAdmin::new(Duration::from_secs(5)));
    let mut es = finalized(telemetry());
    es.spec.kafka.bootstrap_servers = Some(broker.bootstrap());
    es.spec.topic.partitions = 3;
    let (result, seen) = run(es.clone(), kafka.clone(), db_secret()).await;
    assert_eq!(result, Ok(Action::requeue(Duration::from_secs(300))));
    assert_eq!(
        condition(&status_of(&seen), "TopicReady").reason,
        "TopicCreated"
    );

    es.spec.topic.partitions = 5;
    es.metadata.generation = Some(2);
    es.status = Some(status_of(&seen));
    let (result, seen) = run(es, kafka.clone(), db_secret()).await;
    assert_eq!(
        result,
        Ok(Action::requeue(Duration::from_secs(300))),
        "waits, no hot loop"
    );
    let status = status_of(&seen);
    let topic = condition(&status, "TopicReady");
    assert_eq!(
        (topic.status.as_str(), topic.reason.as_str()),
        ("False", "PartitionIncreaseFailed")
    );
    assert!(
        topic.message.contains("from 3 to 5 partitions"),
        "{}",
        topic.message
    );
    assert_eq!(
        status.topic.as_ref().and_then(|t| t.partitions),
        Some(3),
        "status shows the broker's truth"
    );
}

/// Mocked API, real Kafka: `Delete` removes the topic, `Retain` keeps it.
#[tokio::test]
async fn deletion_policies_against_tansu() {
    let broker = eventstream_testkit::TansuBroker::start().expect("tansu");
    let kafka: Arc<dyn KafkaAdmin> = Arc::new(RdKafkaAdmin::new(Duration::from_secs(5)));
    let conn = KafkaConnection::plaintext(broker.bootstrap());
    for (policy, survives) in [
        (eventstream_crds::v1alpha1::DeletionPolicy::Retain, true),
        (eventstream_crds::v1alpha1::DeletionPolicy::Delete, false),
    ] {
        let mut es = finalized(telemetry());
        es.spec.kafka.bootstrap_servers = Some(broker.bootstrap());
        es.spec.topic.partitions = 1;
        es.spec.topic.deletion_policy = policy;
        let (result, _) = run(es.clone(), kafka.clone(), db_secret()).await;
        assert!(result.is_ok());
        assert!(
            kafka
                .describe(&conn, "racing.telemetry")
                .await
                .unwrap()
                .topic
                .is_some()
        );
        let (result, seen) = run(deleting(es), kafka.clone(), db_secret()).await;
        assert_eq!(result, Ok(Action::await_change()), "{policy:?}");
        assert!(
            seen.last().unwrap().line().starts_with("PATCH"),
            "finalizer removed"
        );
        let mut exists = true;
        for _ in 0..50 {
            exists = kafka
                .describe(&conn, "racing.telemetry")
                .await
                .unwrap()
                .topic
                .is_some();
            if exists == survives {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(exists, survives, "{policy:?}");
    }
}
