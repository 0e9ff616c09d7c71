//! The reconciler: `reconcile` wrapped in kube's finalizer helper, `apply` (the pipeline),
//! `cleanup` (the finalizer), `error_policy` (per-object exponential backoff) and [`run`], which
//! wires the `Controller` with its watches.
//!
//! Pipeline of [`apply`]: build (pure, needs nothing) → dereference Secrets → topic (Kafka admin)
//! → apply children by server-side apply, ConfigMap first → consumer group (reset, lag) → status.
//! A step that fails because of the user's input records a condition and lets the others run;
//! the stream then waits for a change (long requeue). A transient failure (Kafka unreachable)
//! records a condition and requeues with a per-object exponential backoff. Nothing hot-loops:
//! the status is only written when it changed, and the watch ignores status-only updates.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use eventstream_crds::EventStream;
use eventstream_crds::v1alpha1::{
    DeletionPolicy, EventStreamStatus, ReplicasStatus, SinkOffsetReset, SinkStatus, TopicStatus,
};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::{Predicate, WatchStreamExt, predicates};
use kube::{Client, Resource, ResourceExt};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::children::{self, Children, Component};
use crate::conditions::{self, Check};
use crate::kafka_admin::{
    DesiredTopic, KafkaAdmin, KafkaAdminError, KafkaConnection, ResetTo, TopicError, TopicReport,
    create_if_missing, ensure_topic,
};
use crate::metrics::Metrics;
use crate::secrets::{self, SecretError};
use crate::{FIELD_MANAGER, FINALIZER, OperatorConfig, RESET_OFFSETS_ANNOTATION};

/// A reconcile that failed as a whole (the status could not even be written).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API failed.
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    /// Cleanup could not reach Kafka; the finalizer stays.
    #[error("cleanup of topic/consumer group failed: {0}")]
    Cleanup(#[from] KafkaAdminError),
    /// The finalizer helper failed (wraps the above).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The object has no namespace (never happens for a namespaced kind from the API server).
    #[error("EventStream has no namespace")]
    MissingNamespace,
}

impl Error {
    /// Metric label.
    pub fn category(&self) -> &'static str {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Kube(_) => "kubernetes",
            Error::Cleanup(e) => match e.category() {
                "unreachable" => "kafka_unreachable",
                "refused" => "kafka_refused",
                _ => "kafka_config",
            },
            Error::Finalizer(f) => match f.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.category(),
                F::AddFinalizer(_) | F::RemoveFinalizer(_) => "kubernetes",
                F::UnnamedObject | F::InvalidFinalizer => "invalid_object",
            },
            Error::MissingNamespace => "invalid_object",
        }
    }
}

/// State shared by every reconcile and by the HTTP server.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Flags and discovery.
    pub config: OperatorConfig,
    /// Kafka admin port (librdkafka in production, a fake in API-mock tests).
    pub kafka: Arc<dyn KafkaAdmin>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Event publisher.
    pub recorder: Recorder,
    /// Every EventStream the controller sees (to resolve topic claims).
    pub streams: Store<EventStream>,
    /// Clock (fixed in tests so status bodies are exact).
    pub now: fn() -> Timestamp,
    failures: Mutex<HashMap<ObjectRef<EventStream>, u32>>,
}

impl Context {
    /// A context; `streams` is the controller's reflector store.
    pub fn new(
        client: Client,
        config: OperatorConfig,
        kafka: Arc<dyn KafkaAdmin>,
        metrics: Arc<Metrics>,
        streams: Store<EventStream>,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            kafka,
            metrics,
            streams,
            now: Timestamp::now,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one more consecutive failure of `es` and returns the delay before the next try.
    pub fn backoff(&self, es: &EventStream) -> Duration {
        let mut f = self.failures.lock();
        let n = f.entry(ObjectRef::from_obj(es)).or_insert(0);
        *n = n.saturating_add(1);
        self.config.backoff(*n)
    }

    fn succeeded(&self, es: &EventStream) {
        self.failures.lock().remove(&ObjectRef::from_obj(es));
    }

    async fn publish(
        &self,
        es: &EventStream,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &es.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish an Event");
        }
    }
}

fn key(es: &EventStream) -> String {
    format!("{}/{}", es.namespace().unwrap_or_default(), es.name_any())
}

/// Entry point for the `Controller`: finalizer handling, then [`apply`] or [`cleanup`].
pub async fn reconcile(es: Arc<EventStream>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.timer();
    let ns = es.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<EventStream> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, es, |event| async {
        match event {
            Finalizer::Apply(es) => apply(es, ctx.clone()).await,
            Finalizer::Cleanup(es) => cleanup(es, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_err() {
        ctx.metrics
            .reconciliations
            .with_label_values(&["error"])
            .inc();
    }
    result
}

/// Called by the `Controller` when [`reconcile`] fails: count, log, back off per object.
pub fn error_policy(es: Arc<EventStream>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[error.category()])
        .inc();
    let delay = ctx.backoff(&es);
    tracing::warn!(stream = %key(&es), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// How a reconcile ended, which decides when the next one happens.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy, PartialOrd, Ord)]
enum Wait {
    /// All good: periodic re-check.
    #[default]
    Resync,
    /// Pods not ready yet: a short re-check (a crash loop does not touch its Deployment).
    Rollout,
    /// Needs the user (Secret, spec): long requeue.
    User,
    /// Transient (Kafka unreachable, rollout step): backoff.
    Retry,
}

/// The owner of `topic` among `streams`: the oldest, ties broken by namespace/name.
pub fn topic_owner<'a>(
    topic: &str,
    streams: impl IntoIterator<Item = &'a EventStream>,
) -> Option<&'a EventStream> {
    streams
        .into_iter()
        .filter(|s| s.topic_name() == topic)
        .min_by(|a, b| {
            let ka = (
                a.metadata.creation_timestamp.clone().map(|t| t.0),
                a.namespace(),
                a.name_any(),
            );
            let kb = (
                b.metadata.creation_timestamp.clone().map(|t| t.0),
                b.namespace(),
                b.name_any(),
            );
            ka.cmp(&kb)
        })
}

fn claimed_by_other(es: &EventStream, streams: &Store<EventStream>) -> Option<String> {
    let all = streams.state();
    let owner = topic_owner(&es.topic_name(), all.iter().map(|s| s.as_ref()))?;
    (owner.metadata.uid != es.metadata.uid).then(|| key(owner))
}

fn ssa() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn apply_typed<K>(client: &Client, ns: &str, obj: &K) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.patch(&obj.name_any(), &ssa(), &Patch::Apply(obj)).await
}

async fn delete_if_exists<K>(client: &Client, ns: &str, name: &str) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

async fn apply_dynamic(
    client: &Client,
    ns: &str,
    ar: &ApiResource,
    obj: &DynamicObject,
) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
    api.patch(&obj.name_any(), &ssa(), &Patch::Apply(obj))
        .await
        .map(|_| ())
}

async fn remove_reset_annotation(es: &EventStream, ctx: &Context, ns: &str) -> Result<(), Error> {
    let api: Api<EventStream> = Api::namespaced(ctx.client.clone(), ns);
    let patch = serde_json::json!({"metadata": {"annotations": {RESET_OFFSETS_ANNOTATION: null}}});
    api.patch(
        &es.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

fn requested_reset(es: &EventStream) -> Option<Result<ResetTo, String>> {
    es.annotations()
        .get(RESET_OFFSETS_ANNOTATION)
        .map(|v| v.parse::<ResetTo>())
}

/// Topic step: claim, Secret, Kafka. Returns the check, the topic status, the connection (when
/// Kafka can be talked to) and how long to wait.
async fn topic_step(
    es: &EventStream,
    ctx: &Context,
    bootstrap: String,
) -> Result<(Check, Option<TopicStatus>, Option<KafkaConnection>, Wait), Error> {
    let topic = es.topic_name();
    let previous = es.status.as_ref().and_then(|s| s.topic.clone());
    if let Some(owner) = claimed_by_other(es, &ctx.streams) {
        let e = TopicError::ClaimedByOther { topic, owner };
        return Ok((
            Check::fail(e.reason(), e.to_string()),
            None,
            None,
            Wait::User,
        ));
    }
    let conn = match secrets::kafka_connection(&ctx.client, es, bootstrap).await {
        Ok(c) => c,
        Err(SecretError::Kube(e)) => return Err(e.into()),
        Err(e) => {
            let check = Check::fail(e.reason(), format!("cannot reach Kafka: {e}"));
            return Ok((check, previous, None, Wait::User));
        }
    };
    let desired = match DesiredTopic::from_stream(es) {
        Ok(d) => d,
        Err(e) => {
            return Ok((
                Check::fail(e.reason(), e.to_string()),
                previous,
                Some(conn),
                Wait::User,
            ));
        }
    };
    match ensure_topic(ctx.kafka.as_ref(), &conn, &desired).await {
        Ok(report) => {
            let check = topic_events(es, ctx, &desired, &report).await;
            let status = TopicStatus {
                name: report.topic.name.clone(),
                partitions: Some(report.topic.partitions),
                replication_factor: Some(report.topic.replication_factor),
                config: desired
                    .configs
                    .keys()
                    .filter_map(|k| report.topic.configs.get(k).map(|v| (k.clone(), v.clone())))
                    .collect(),
            };
            Ok((check, Some(status), Some(conn), Wait::Resync))
        }
        Err(e) => {
            let wait = topic_failure(ctx, &e);
            ctx.publish(
                es,
                EventType::Warning,
                e.reason(),
                "ReconcileTopic",
                e.to_string(),
            )
            .await;
            Ok((
                Check::fail(e.reason(), e.to_string()),
                previous,
                Some(conn),
                wait,
            ))
        }
    }
}

/// Readiness of a workload; when it is not ready, the reason its pods give (a crash loop with
/// the dataplane's fatal error, an image that cannot be pulled), if any.
async fn workload_check(
    es: &EventStream,
    ctx: &Context,
    ns: &str,
    component: Component,
    deployment: Option<&Deployment>,
) -> Result<Check, Error> {
    let name = children::workload_name(es, component);
    let replicas = match component {
        Component::Bridge => es.spec.bridge.replicas,
        Component::Sink => es.spec.sink.replicas,
    };
    let check = conditions::workload(&name, replicas, deployment);
    if check.ok {
        return Ok(check);
    }
    let selector = children::selector_labels(es, Some(component))
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let pods = api.list(&ListParams::default().labels(&selector)).await?;
    Ok(conditions::pod_failure(&format!("Deployment {name}"), &pods.items).unwrap_or(check))
}

/// Counts a failed topic step's Kafka error and says how long to wait: backoff when retrying
/// may help, the user's pace otherwise.
fn topic_failure(ctx: &Context, e: &TopicError) -> Wait {
    if let TopicError::Kafka(k) = e {
        ctx.metrics
            .kafka_admin_errors
            .with_label_values(&[k.category()])
            .inc();
    }
    if e.is_transient() {
        Wait::Retry
    } else {
        Wait::User
    }
}

/// Creates the dead-letter topic when missing. `None` when it exists (or was just created).
async fn dead_letter_step(
    es: &EventStream,
    ctx: &Context,
    conn: &KafkaConnection,
) -> Option<(Check, Wait)> {
    let result = match DesiredTopic::dead_letters(es) {
        Ok(d) => create_if_missing(ctx.kafka.as_ref(), conn, &d)
            .await
            .map(|created| (d, created)),
        Err(e) => Err(e),
    };
    match result {
        Ok((d, true)) => {
            ctx.publish(
                es,
                EventType::Normal,
                "DeadLetterTopicCreated",
                "CreateTopic",
                format!(
                    "created the sink's dead-letter topic {} (1 partition)",
                    d.name
                ),
            )
            .await;
            None
        }
        Ok((_, false)) => None,
        Err(e) => {
            let wait = topic_failure(ctx, &e);
            let message = format!("dead-letter topic {}: {e}", es.dead_letter_topic());
            ctx.publish(
                es,
                EventType::Warning,
                "DeadLetterTopicNotReady",
                "CreateTopic",
                message.clone(),
            )
            .await;
            Some((Check::fail("DeadLetterTopicNotReady", message), wait))
        }
    }
}

async fn topic_events(
    es: &EventStream,
    ctx: &Context,
    desired: &DesiredTopic,
    report: &TopicReport,
) -> Check {
    let name = &desired.name;
    if !desired.managed {
        return Check::ok(
            "TopicExists",
            format!("topic {name} exists (not managed by the operator)"),
        );
    }
    if report.created {
        let msg = format!(
            "created topic {name} with {} partitions",
            desired.partitions
        );
        ctx.publish(
            es,
            EventType::Normal,
            "TopicCreated",
            "CreateTopic",
            msg.clone(),
        )
        .await;
        return Check::ok("TopicCreated", msg);
    }
    if let Some(from) = report.raised_from {
        let msg = format!(
            "raised topic {name} from {from} to {} partitions",
            desired.partitions
        );
        ctx.publish(
            es,
            EventType::Normal,
            "PartitionsIncreased",
            "UpdateTopic",
            msg,
        )
        .await;
    }
    if !report.corrected.is_empty() {
        let list: Vec<String> = report.corrected.iter().map(ToString::to_string).collect();
        let msg = format!(
            "set topic {name} configs back to the spec: {}",
            list.join(", ")
        );
        ctx.publish(
            es,
            EventType::Normal,
            "TopicConfigCorrected",
            "UpdateTopic",
            msg,
        )
        .await;
    }
    Check::ok("TopicInSync", format!("topic {name} matches the spec"))
}

fn bootstrap(es: &EventStream, cfg: &OperatorConfig) -> Option<String> {
    es.spec
        .kafka
        .bootstrap_servers
        .clone()
        .or_else(|| cfg.kafka_bootstrap.clone())
}

/// The apply half of the finalizer: bring the world to the spec and report it.
pub async fn apply(es: Arc<EventStream>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = es.namespace().ok_or(Error::MissingNamespace)?;
    let cfg = &ctx.config;
    let generation = es.metadata.generation;
    let old_status = es.status.clone().unwrap_or_default();
    let persistence = es.spec.persistence.clone();
    let reset = requested_reset(&es).filter(|_| persistence.is_some());

    // Build: pure. A spec that cannot be built stops here: nothing sensible can be applied.
    let children = match children::build(&es, cfg, matches!(reset, Some(Ok(_)))) {
        Ok(c) => c,
        Err(e) => {
            let check = Check::fail(e.reason(), e.to_string());
            ctx.publish(
                &es,
                EventType::Warning,
                e.reason(),
                "Validate",
                e.to_string(),
            )
            .await;
            let blocked = Check::blocked(&check);
            let status = EventStreamStatus {
                observed_generation: generation,
                conditions: conditions::all(
                    &old_status.conditions,
                    &check,
                    &blocked,
                    &blocked,
                    generation,
                    (ctx.now)(),
                ),
                ..old_status.clone()
            };
            write_status(&es, &ctx, &ns, status).await?;
            ctx.succeeded(&es);
            ctx.metrics
                .reconciliations
                .with_label_values(&["waiting"])
                .inc();
            return Ok(Action::requeue(cfg.await_user));
        }
    };
    let bootstrap = bootstrap(&es, cfg).unwrap_or_default();

    // Topic (and the Kafka connection the later steps reuse).
    let (topic_check, topic_status, conn, mut wait) = topic_step(&es, &ctx, bootstrap).await?;

    // Secrets only pods read: checked so the user learns about them here, not from a pod event.
    let mut bridge_secret: Option<Check> = None;
    if let Some(auth) = &es.spec.auth {
        let r = &auth.jwt_secret_ref;
        match secrets::check_key(&ctx.client, &es, &r.name, &r.key, "spec.auth.jwtSecretRef").await
        {
            Ok(()) => {}
            Err(SecretError::Kube(e)) => return Err(e.into()),
            Err(e) => bridge_secret = Some(Check::fail(e.reason(), e.to_string())),
        }
    }
    let mut sink_secret: Option<Check> = None;
    if let Some(p) = &persistence {
        let r = &p.postgres.url_secret_ref;
        let mut wanted = vec![(
            r.name.as_str(),
            r.key.as_str(),
            "spec.persistence.postgres.urlSecretRef",
        )];
        let tls = p.postgres.tls.as_ref();
        if let Some(ca) = tls.and_then(|t| t.ca_secret_ref.as_ref()) {
            wanted.push((
                &ca.name,
                &ca.key,
                "spec.persistence.postgres.tls.caSecretRef",
            ));
        }
        if let Some(cert) = tls.and_then(|t| t.client_cert_secret_ref.as_ref()) {
            for key in ["tls.crt", "tls.key"] {
                wanted.push((
                    &cert.name,
                    key,
                    "spec.persistence.postgres.tls.clientCertSecretRef",
                ));
            }
        }
        for (name, key, field) in wanted {
            match secrets::check_key(&ctx.client, &es, name, key, field).await {
                Ok(()) => {}
                Err(SecretError::Kube(e)) => return Err(e.into()),
                Err(e) => {
                    sink_secret = Some(Check::fail(e.reason(), e.to_string()));
                    break;
                }
            }
        }
    }
    if let Some(c) = bridge_secret.iter().chain(sink_secret.iter()).next() {
        ctx.publish(
            &es,
            EventType::Warning,
            &c.reason,
            "ReadSecret",
            c.message.clone(),
        )
        .await;
        wait = wait.max(Wait::User);
    }

    // The sink's dead-letter topic: brokers without auto-creation would refuse the first dead
    // letter and stall the sink, so it exists before the sink runs.
    let mut dead_letter_check: Option<Check> = None;
    if let (Some(_), Some(conn)) = (&persistence, conn.as_ref().filter(|_| topic_check.ok))
        && let Some((check, w)) = dead_letter_step(&es, &ctx, conn).await
    {
        dead_letter_check = Some(check);
        wait = wait.max(w);
    }

    // Children, ConfigMap first so pods never start without their config.
    let (bridge, sink) = apply_children(&es, &ctx, &ns, &children, &old_status).await?;

    // Consumer group: one-shot reset, then lag.
    let mut sink_check = None;
    let mut lag = old_status.sink.as_ref().and_then(|s| s.lag);
    let mut offset_reset = old_status
        .sink
        .as_ref()
        .and_then(|s| s.offset_reset.clone());
    // Removed only after the status that records the reset is written: the sink learns the
    // offsets from the status (through its ConfigMap), so the request must not vanish first.
    let mut reset_done = false;
    if let (Some(_), Some(conn)) = (&persistence, conn.as_ref().filter(|_| topic_check.ok)) {
        let group = es.sink_group();
        match &reset {
            Some(Err(bad)) => {
                sink_check = Some(Check::fail(
                    "InvalidResetAnnotation",
                    format!("annotation {RESET_OFFSETS_ANNOTATION}: {bad}; use earliest or latest"),
                ));
            }
            Some(Ok(to)) => {
                let stopped = sink
                    .as_ref()
                    .and_then(|d| d.status.as_ref())
                    .map(|s| s.replicas.unwrap_or(0) == 0)
                    .unwrap_or(true);
                if !stopped {
                    sink_check = Some(Check::fail(
                        "ResettingOffsets",
                        "scaling the sink to zero before resetting its consumer group offsets",
                    ));
                    wait = wait.max(Wait::Retry);
                } else {
                    match ctx
                        .kafka
                        .reset_group(conn, &group, &es.topic_name(), *to)
                        .await
                    {
                        Ok(offsets) => {
                            let record = SinkOffsetReset {
                                id: format!("{}@{}", to.as_str(), (ctx.now)()),
                                to: to.as_str().into(),
                                offsets: offsets.iter().map(|(p, o)| (p.to_string(), *o)).collect(),
                            };
                            let list: Vec<String> =
                                offsets.iter().map(|(p, o)| format!("{p}:{o}")).collect();
                            ctx.publish(
                                &es,
                                EventType::Normal,
                                "SinkOffsetsReset",
                                "ResetOffsets",
                                format!(
                                    "reset consumer group {group} to the {} offsets ({}); the sink resumes there once it scales back up",
                                    to.as_str(),
                                    list.join(", ")
                                ),
                            )
                            .await;
                            offset_reset = Some(record);
                            reset_done = true;
                            sink_check = Some(Check::fail(
                                "ResettingOffsets",
                                "offsets reset; scaling the sink back up",
                            ));
                            wait = wait.max(Wait::Retry);
                        }
                        Err(e) => {
                            ctx.metrics
                                .kafka_admin_errors
                                .with_label_values(&[e.category()])
                                .inc();
                            ctx.publish(
                                &es,
                                EventType::Warning,
                                "SinkOffsetResetFailed",
                                "ResetOffsets",
                                e.to_string(),
                            )
                            .await;
                            sink_check = Some(Check::fail("SinkOffsetResetFailed", e.to_string()));
                            wait = wait.max(Wait::Retry);
                        }
                    }
                }
            }
            None => {}
        }
        match ctx.kafka.group_lag(conn, &group, &es.topic_name()).await {
            Ok(l) => lag = l,
            Err(e) => {
                ctx.metrics
                    .kafka_admin_errors
                    .with_label_values(&[e.category()])
                    .inc();
                tracing::debug!(stream = %key(&es), error = %e, "could not read the sink lag");
            }
        }
    } else if reset.is_none() && requested_reset(&es).is_some() {
        // Annotation without persistence: nothing to reset; remove it so it does not linger.
        remove_reset_annotation(&es, &ctx, &ns).await?;
        ctx.publish(
            &es,
            EventType::Warning,
            "NoSinkToReset",
            "ResetOffsets",
            format!("{RESET_OFFSETS_ANNOTATION} ignored: the stream has no persistence"),
        )
        .await;
    }

    // Status.
    let bridge_check = match bridge_secret {
        Some(c) => c,
        None => workload_check(&es, &ctx, &ns, Component::Bridge, bridge.as_ref()).await?,
    };
    let sink_check = match (
        &persistence,
        sink_secret.or(dead_letter_check).or(sink_check),
    ) {
        (None, _) => Check::ok("NotConfigured", "spec.persistence is not set"),
        (Some(_), Some(c)) => c,
        (Some(_), None) => workload_check(&es, &ctx, &ns, Component::Sink, sink.as_ref()).await?,
    };
    if !bridge_check.ok || (persistence.is_some() && !sink_check.ok) {
        // Pods crash-looping do not change their Deployment: look again soon.
        wait = wait.max(Wait::Rollout);
    }
    let ready_replicas = |d: &Option<Deployment>| {
        d.as_ref()
            .and_then(|d| d.status.as_ref())
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    };
    let status = EventStreamStatus {
        observed_generation: generation,
        conditions: conditions::all(
            &old_status.conditions,
            &topic_check,
            &bridge_check,
            &sink_check,
            generation,
            (ctx.now)(),
        ),
        topic: topic_status,
        endpoints: Some(children::endpoints(&es)),
        bridge: Some(ReplicasStatus {
            replicas: es.spec.bridge.replicas,
            ready_replicas: ready_replicas(&bridge),
        }),
        sink: persistence.as_ref().map(|_| SinkStatus {
            replicas: es.spec.sink.replicas,
            ready_replicas: ready_replicas(&sink),
            consumer_group: es.sink_group(),
            lag,
            offset_reset,
        }),
    };
    if old_status.observed_generation != generation {
        let verb = if old_status.observed_generation.is_none() {
            "Created"
        } else {
            "Updated"
        };
        ctx.publish(
            &es,
            EventType::Normal,
            verb,
            "Reconcile",
            format!(
                "applied generation {} (topic, config, bridge{})",
                generation.unwrap_or(0),
                if persistence.is_some() { ", sink" } else { "" }
            ),
        )
        .await;
    }
    write_status(&es, &ctx, &ns, status).await?;
    if reset_done {
        remove_reset_annotation(&es, &ctx, &ns).await?;
    }

    // A retry keeps the failure count (the backoff grows); every other outcome resets it.
    let (result, delay) = match wait {
        Wait::Resync => ("ok", cfg.resync),
        Wait::Rollout => ("waiting", cfg.rollout_check),
        Wait::User => ("waiting", cfg.await_user),
        Wait::Retry => ("retry", ctx.backoff(&es)),
    };
    if wait != Wait::Retry {
        ctx.succeeded(&es);
    }
    ctx.metrics
        .reconciliations
        .with_label_values(&[result])
        .inc();
    Ok(Action::requeue(delay))
}

async fn apply_children(
    es: &EventStream,
    ctx: &Context,
    ns: &str,
    ch: &Children,
    old: &EventStreamStatus,
) -> Result<(Option<Deployment>, Option<Deployment>), Error> {
    let client = &ctx.client;
    apply_typed::<ConfigMap>(client, ns, &ch.config_map).await?;
    apply_typed::<Service>(client, ns, &ch.bridge_service).await?;
    let bridge = apply_typed::<Deployment>(client, ns, &ch.bridge).await?;
    let bridge_name = children::workload_name(es, Component::Bridge);
    let sink_name = children::workload_name(es, Component::Sink);
    // Deletions are issued only when the last status says the object existed, so a steady
    // stream costs no DELETE round trips (owner references clean up the rest on deletion).
    match &ch.bridge_pdb {
        Some(p) => {
            apply_typed::<PodDisruptionBudget>(client, ns, p).await?;
        }
        None if old.bridge.as_ref().is_some_and(|b| b.replicas > 1) => {
            delete_if_exists::<PodDisruptionBudget>(client, ns, &bridge_name).await?;
        }
        None => {}
    }
    let sink = match &ch.sink {
        Some(d) => Some(apply_typed::<Deployment>(client, ns, d).await?),
        None => {
            if old.sink.is_some() {
                delete_if_exists::<Deployment>(client, ns, &sink_name).await?;
            }
            None
        }
    };
    match &ch.sink_pdb {
        Some(p) => {
            apply_typed::<PodDisruptionBudget>(client, ns, p).await?;
        }
        None if old.sink.as_ref().is_some_and(|s| s.replicas > 1) => {
            delete_if_exists::<PodDisruptionBudget>(client, ns, &sink_name).await?;
        }
        None => {}
    }
    if let Some(sm) = &ch.service_monitor {
        apply_dynamic(client, ns, &children::service_monitor_resource(), sm).await?;
    }
    if let Some(pm) = &ch.pod_monitor {
        apply_dynamic(client, ns, &children::pod_monitor_resource(), pm).await?;
    }
    Ok((Some(bridge), sink))
}

async fn write_status(
    es: &EventStream,
    ctx: &Context,
    ns: &str,
    status: EventStreamStatus,
) -> Result<(), Error> {
    ctx.metrics.set_conditions(&key(es), &status.conditions);
    if es.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<EventStream> = Api::namespaced(ctx.client.clone(), ns);
    let patch = serde_json::json!({
        "apiVersion": "eventstream.dev/v1alpha1",
        "kind": "EventStream",
        "status": status,
    });
    api.patch_status(&es.name_any(), &ssa(), &Patch::Apply(&patch))
        .await?;
    Ok(())
}

/// The cleanup half of the finalizer: topic (only with `deletionPolicy: Delete`, a managed topic
/// and this stream owning it), then the sink's consumer group. Kafka unreachable → error, the
/// finalizer stays, `error_policy` retries with backoff.
pub async fn cleanup(es: Arc<EventStream>, ctx: Arc<Context>) -> Result<Action, Error> {
    let cfg = &ctx.config;
    let topic = es.topic_name();
    let delete_topic = es.spec.topic.deletion_policy == DeletionPolicy::Delete
        && es.spec.topic.managed
        && claimed_by_other(&es, &ctx.streams).is_none();
    // The dead-letter topic goes with the topic, unless another stream's sink also uses it.
    let dead_letters = es.dead_letter_topic();
    let delete_dead_letters = delete_topic
        && es.spec.persistence.is_some()
        && !ctx.streams.state().iter().any(|other| {
            other.metadata.uid != es.metadata.uid
                && (other.topic_name() == dead_letters
                    || (other.spec.persistence.is_some()
                        && other.dead_letter_topic() == dead_letters))
        });
    let needs_kafka = delete_topic || es.spec.persistence.is_some();
    let mut notes = Vec::new();
    if needs_kafka {
        let conn = match bootstrap(&es, cfg) {
            None => None,
            Some(b) => match secrets::kafka_connection(&ctx.client, &es, b).await {
                Ok(c) => Some(c),
                Err(SecretError::Kube(e)) => return Err(e.into()),
                // The Secret is gone (a namespace being deleted removes it too): waiting
                // would block the namespace forever, so skip Kafka and say so.
                Err(e) => {
                    notes.push(format!("skipped Kafka cleanup: {e}"));
                    None
                }
            },
        };
        if let Some(conn) = conn {
            let result = async {
                if delete_topic {
                    ctx.kafka.delete_topic(&conn, &topic).await?;
                }
                if delete_dead_letters {
                    ctx.kafka.delete_topic(&conn, &dead_letters).await?;
                }
                if es.spec.persistence.is_some() {
                    ctx.kafka.delete_group(&conn, &es.sink_group()).await?;
                }
                Ok::<(), KafkaAdminError>(())
            }
            .await;
            if let Err(e) = result {
                ctx.metrics
                    .kafka_admin_errors
                    .with_label_values(&[e.category()])
                    .inc();
                ctx.publish(
                    &es,
                    EventType::Warning,
                    "CleanupFailed",
                    "Cleanup",
                    format!("{e}; the finalizer {FINALIZER} stays until Kafka answers"),
                )
                .await;
                return Err(e.into());
            }
            if delete_topic {
                notes.push(format!("deleted topic {topic}"));
            }
            if delete_dead_letters {
                notes.push(format!("deleted dead-letter topic {dead_letters}"));
            }
            if es.spec.persistence.is_some() {
                notes.push(format!("deleted consumer group {}", es.sink_group()));
            }
        }
    }
    if !delete_topic {
        notes.push(format!("kept topic {topic}"));
    }
    ctx.publish(
        &es,
        EventType::Normal,
        "CleanedUp",
        "Cleanup",
        notes.join("; "),
    )
    .await;
    ctx.metrics.forget(&key(&es));
    ctx.succeeded(&es);
    Ok(Action::await_change())
}

/// Options of [`run`] beyond [`OperatorConfig`].
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `/metrics`, `/healthz`, `/readyz` address.
    pub listen: std::net::SocketAddr,
    /// Lease `namespace/name` for leader election; `None` disables it.
    pub lease: Option<(String, String)>,
    /// This replica's identity in the Lease.
    pub identity: String,
}

/// Whether the `monitoring.coreos.com/v1` kinds exist: `(ServiceMonitor, PodMonitor)`.
pub async fn discover_monitors(client: &Client) -> (bool, bool) {
    match client
        .list_api_group_resources("monitoring.coreos.com/v1")
        .await
    {
        Ok(list) => {
            let has = |k: &str| list.resources.iter().any(|r| r.kind == k);
            (has("ServiceMonitor"), has("PodMonitor"))
        }
        Err(_) => (false, false),
    }
}

fn scoped<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the operator until a signal (or the loss of leadership).
pub async fn run(mut config: OperatorConfig, opts: RunOptions) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let registry = prometheus::Registry::new();
    let metrics = Arc::new(Metrics::new(&registry)?);
    let ready = Arc::new(AtomicBool::new(false));
    let http_state = crate::http::HttpState {
        registry,
        ready: ready.clone(),
    };
    tokio::spawn(async move {
        if let Err(e) = crate::http::serve(opts.listen, http_state).await {
            tracing::error!(error = %e, "HTTP server failed");
            std::process::exit(1);
        }
    });

    let streams: Api<EventStream> = scoped(&client, &config.namespace);
    if let Err(e) = streams.list(&ListParams::default().limit(1)).await {
        anyhow::bail!(
            "cannot list EventStreams ({e}); is the CRD installed? `eventstream-operator crd | kubectl apply -f -`"
        );
    }
    ready.store(true, Ordering::Relaxed);
    (config.service_monitor, config.pod_monitor) = discover_monitors(&client).await;
    tracing::info!(
        service_monitor = config.service_monitor,
        pod_monitor = config.pod_monitor,
        "discovered monitoring kinds"
    );

    if let Some((ns, name)) = &opts.lease {
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        // Its own client: no retries, short timeouts (see `leader`), unlike the controller's.
        let timing = crate::leader::Timing::default();
        let lease_client = crate::leader::lease_client(kube::Config::infer().await?, &timing)?;
        let elector = crate::leader::LeaderElector::new(lease_client, ns, name, &opts.identity);
        tokio::spawn(elector.run(tx));
        tracing::info!(lease = %format!("{ns}/{name}"), identity = %opts.identity, "waiting for leadership");
        rx.wait_for(|l| *l).await?;
        metrics.leader.set(1.0);
        let m = metrics.clone();
        tokio::spawn(async move {
            let _ = rx.wait_for(|l| !*l).await;
            m.leader.set(0.0);
            tracing::error!("leadership lost: exiting so another replica takes over");
            std::process::exit(1);
        });
    } else {
        metrics.leader.set(1.0);
    }

    let (reader, writer) = reflector::store();
    // Status-only updates never trigger a reconcile (the classic self-triggering loop);
    // spec (generation), annotations (offset reset) and finalizers still do.
    let trigger = watcher(streams, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            (predicates::generation as fn(&EventStream) -> Option<u64>)
                .combine(predicates::annotations as fn(&EventStream) -> Option<u64>)
                .combine(predicates::finalizers as fn(&EventStream) -> Option<u64>),
            Default::default(),
        );
    let owned = watcher::Config::default()
        .labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"))
        .any_semantic();
    let ns = config.namespace.clone();
    let mut controller = Controller::for_stream(trigger, reader.clone())
        // Metadata-only watches: owned objects only need to trigger, not to be cached whole.
        .owns_stream(
            watcher(
                scoped::<PartialObjectMeta<ConfigMap>>(&client, &ns),
                owned.clone(),
            )
            .default_backoff()
            .touched_objects(),
        )
        .owns_stream(
            watcher(
                scoped::<PartialObjectMeta<Deployment>>(&client, &ns),
                owned.clone(),
            )
            .default_backoff()
            .touched_objects(),
        )
        .owns_stream(
            watcher(
                scoped::<PartialObjectMeta<Service>>(&client, &ns),
                owned.clone(),
            )
            .default_backoff()
            .touched_objects(),
        )
        .owns_stream(
            watcher(
                scoped::<PartialObjectMeta<PodDisruptionBudget>>(&client, &ns),
                owned.clone(),
            )
            .default_backoff()
            .touched_objects(),
        );
    if config.service_monitor {
        let ar = children::service_monitor_resource();
        let api: Api<DynamicObject> = match &ns {
            Some(n) => Api::namespaced_with(client.clone(), n, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        controller = controller.owns_with(api, ar, owned.clone());
    }
    let kafka = Arc::new(crate::kafka_admin::RdKafkaAdmin::new(config.kafka_timeout));
    let ctx = Arc::new(Context::new(client, config, kafka, metrics, reader));
    controller
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
    Ok(())
}
