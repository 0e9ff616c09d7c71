//! What every reconcile shares: the [`Context`] (client, settings, the live monitor kinds, Kafka
//! port, metrics, Event recorder, the stream store, the clock, per-object backoff) and the
//! [`ChildIndex`], the
//! metadata caches of the objects streams own, fed by the same watches that trigger reconciles.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use eventstream_crds::EventStream;
use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::{Client, Resource, ResourceExt};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::monitors::MonitorKinds;
use crate::children::ChildKind;
use crate::kafka_admin::KafkaAdmin;
use crate::metrics::Metrics;
use crate::{FIELD_MANAGER, OperatorConfig, STREAM_LABEL};

/// Metadata of one child object, as the metadata-only watches see it.
pub type ChildMeta = PartialObjectMeta<DynamicObject>;

/// Per kind, the children the operator's watches have seen (label
/// `app.kubernetes.io/managed-by=eventstream-operator`). The controller reads it to find owned
/// objects a stream no longer wants, without a LIST per reconcile. A kind that is not tracked
/// (yet) reads as empty: its leftovers are found by a later reconcile.
#[derive(Clone, Default)]
pub struct ChildIndex {
    stores: BTreeMap<ChildKind, Store<ChildMeta>>,
}

impl ChildIndex {
    /// Tracks `kind`; the returned writer is what its watch reflects into.
    pub fn track(&mut self, kind: ChildKind) -> Writer<ChildMeta> {
        let writer = Writer::new(kind.api_resource());
        self.stores.insert(kind, writer.as_reader());
        writer
    }

    /// The cached metadata of `kind` `name` in `es`'s namespace.
    pub fn get(&self, kind: ChildKind, es: &EventStream, name: &str) -> Option<Arc<ChildMeta>> {
        let store = self.stores.get(&kind)?;
        let key = ObjectRef::new_with(name, kind.api_resource()).within(&es.namespace()?);
        store.get(&key)
    }

    /// Names of the `kind` objects in `es`'s namespace that `es` owns (its stream label and an
    /// owner reference with its UID).
    pub fn owned(&self, kind: ChildKind, es: &EventStream) -> Vec<String> {
        let Some(store) = self.stores.get(&kind) else {
            return Vec::new();
        };
        let ns = es.namespace();
        let mut names: Vec<String> = store
            .state()
            .iter()
            .filter(|m| m.metadata.namespace == ns)
            .filter(|m| m.labels().get(STREAM_LABEL) == Some(&es.name_any()))
            .filter(|m| owned_by(&m.metadata, es))
            .map(|m| m.name_any())
            .collect();
        names.sort();
        names
    }
}

/// Whether `meta` has an owner reference to `es` (by UID: a recreated stream of the same name
/// does not own its predecessor's objects).
pub fn owned_by(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    es: &EventStream,
) -> bool {
    es.metadata.uid.is_some()
        && meta
            .owner_references
            .iter()
            .flatten()
            .any(|o| Some(&o.uid) == es.metadata.uid.as_ref())
}

/// State shared by every reconcile and by the HTTP server.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Flags. Its monitor flags are only where the context started: the live ones are in
    /// [`Context::monitors`], and [`Context::config_now`] is what a reconcile builds from.
    pub config: OperatorConfig,
    /// The monitor kinds the cluster serves now (fed by the CRD watch).
    monitors: watch::Sender<MonitorKinds>,
    /// Kafka admin port (librdkafka in production, a fake in API-mock tests).
    pub kafka: Arc<dyn KafkaAdmin>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Event publisher.
    pub recorder: Recorder,
    /// Every EventStream the controller sees (to resolve topic claims).
    pub streams: Store<EventStream>,
    /// The owned children the watches have seen.
    pub children: ChildIndex,
    /// Clock (fixed in tests so status bodies are exact).
    pub now: fn() -> Timestamp,
    failures: Mutex<HashMap<ObjectRef<EventStream>, u32>>,
}

impl Context {
    /// A context; `streams` is the controller's reflector store. No child is tracked yet
    /// ([`Context::with_children`]).
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
            monitors: watch::Sender::new(MonitorKinds::from_config(&config)),
            config,
            kafka,
            metrics,
            streams,
            children: ChildIndex::default(),
            now: Timestamp::now,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The same context reading owned children from `children`.
    pub fn with_children(mut self, children: ChildIndex) -> Self {
        self.children = children;
        self
    }

    /// The same context reading the monitor kinds from `monitors` (the CRD watch's channel).
    pub fn with_monitors(mut self, monitors: watch::Sender<MonitorKinds>) -> Self {
        self.monitors = monitors;
        self
    }

    /// The monitor kinds the cluster serves now.
    pub fn monitors(&self) -> MonitorKinds {
        *self.monitors.borrow()
    }

    /// Records that the served monitor kinds are now `kinds` (what the CRD watch does; tests
    /// use it to install a CRD after start).
    pub fn set_monitors(&self, kinds: MonitorKinds) {
        self.monitors.send_replace(kinds);
    }

    /// The settings with the monitor flags as the cluster serves them now: what one reconcile
    /// builds and sweeps with, so a kind installed after start gets its objects.
    pub fn config_now(&self) -> Cow<'_, OperatorConfig> {
        let now = self.monitors();
        if now == MonitorKinds::from_config(&self.config) {
            return Cow::Borrowed(&self.config);
        }
        let mut config = self.config.clone();
        config.service_monitor = now.service_monitor;
        config.pod_monitor = now.pod_monitor;
        Cow::Owned(config)
    }

    /// Counts one more consecutive failure of `es` and returns the delay before the next try.
    pub fn backoff(&self, es: &EventStream) -> Duration {
        let mut f = self.failures.lock();
        let n = f.entry(ObjectRef::from_obj(es)).or_insert(0);
        *n = n.saturating_add(1);
        self.config.backoff(*n)
    }

    pub(crate) fn succeeded(&self, es: &EventStream) {
        self.failures.lock().remove(&ObjectRef::from_obj(es));
    }

    pub(crate) async fn publish(
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
            note: Some(event_note(&note)),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &es.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish an Event");
        }
    }
}

/// Longest Event note events.k8s.io accepts: an Event with a longer one is rejected whole.
pub const MAX_EVENT_NOTE: usize = 1024;

/// `note` within [`MAX_EVENT_NOTE`] bytes (broker errors can be long), `…` marking a cut.
pub fn event_note(note: &str) -> String {
    crate::conditions::truncate(note, MAX_EVENT_NOTE - '…'.len_utf8())
}

/// `namespace/name`, for logs and metric keys.
pub fn key(es: &EventStream) -> String {
    format!("{}/{}", es.namespace().unwrap_or_default(), es.name_any())
}
