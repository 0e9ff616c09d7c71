//! Wiring: the HTTP server, the CRD check, the watch of the monitor CRDs, leader election, and
//! the `Controller` with its watches. The watches of owned children are derived from
//! [`ChildKind::ALL`], the same list the apply and the sweep use: one helper, one watch per
//! kind, each also filling the [`ChildIndex`] the sweep reads. The monitor kinds' watches run
//! while their CRD is served ([`monitors::gated`]), and a kind that appears reconciles every
//! stream ([`monitors::appearances`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use eventstream_crds::EventStream;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, ObjectRef, store::Writer};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::{Predicate, WatchStreamExt, predicates};
use kube::{Client, Resource};

use super::context::{ChildIndex, ChildMeta, Context};
use super::monitors::{self, MonitorKinds};
use super::{error_policy, reconcile};
use crate::children::{self, ChildKind};
use crate::metrics::Metrics;
use crate::{FIELD_MANAGER, OperatorConfig};

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

fn scoped<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Label selector of everything the operator creates.
pub fn managed_selector() -> String {
    format!("app.kubernetes.io/managed-by={FIELD_MANAGER}")
}

/// How long start-up waits for the first answer of the monitor CRD watch before it goes on
/// without monitors (a missing CRD ClusterRole must not stop the operator; the watch keeps
/// retrying and a kind that appears later reconciles every stream).
const MONITOR_CRDS_WAIT: Duration = Duration::from_secs(30);

/// Metadata-only watch events of the owned objects of `kind` (they only need to trigger the
/// owner and to be known by name and owner, not cached whole).
fn owned_events(
    client: &Client,
    ns: &Option<String>,
    kind: ChildKind,
) -> impl Stream<Item = Result<watcher::Event<ChildMeta>, watcher::Error>> + Send + use<> {
    let ar = kind.api_resource();
    let api: Api<ChildMeta> = match ns {
        Some(n) => Api::namespaced_with(client.clone(), n, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let config = watcher::Config::default()
        .labels(&managed_selector())
        .any_semantic();
    watcher(api, config).default_backoff()
}

/// The watch of the owned objects of `kind`, reflected into `writer`; a monitor kind's only
/// while `kinds` says its CRD is served.
fn owned_watch(
    client: &Client,
    ns: &Option<String>,
    kind: ChildKind,
    writer: Writer<ChildMeta>,
    kinds: &tokio::sync::watch::Sender<MonitorKinds>,
) -> futures::stream::BoxStream<'static, Result<ChildMeta, watcher::Error>> {
    if kinds.borrow().serves(kind).is_none() {
        return owned_events(client, ns, kind)
            .reflect(writer)
            .touched_objects()
            .boxed();
    }
    let (client, ns) = (client.clone(), ns.clone());
    monitors::gated(kinds.subscribe(), kind, move || {
        owned_events(&client, &ns, kind)
    })
    .reflect(writer)
    .touched_objects()
    .boxed()
}

/// The streams that reference Secret `namespace/name` (through [`children::secret_uses`], the
/// list the pods and the Secret check use): what a Secret's creation, change or deletion
/// re-reconciles, so a Secret created after its stream is noticed at once, not at the next
/// resync.
pub fn streams_referencing(
    streams: &[Arc<EventStream>],
    namespace: Option<&str>,
    name: &str,
) -> Vec<ObjectRef<EventStream>> {
    streams
        .iter()
        .filter(|es| es.namespace().as_deref() == namespace)
        .filter(|es| children::referenced_secrets(es).contains(name))
        .map(|es| ObjectRef::from_obj(es.as_ref()))
        .collect()
}

/// Runs the operator until a signal (or the loss of leadership).
pub async fn run(config: OperatorConfig, opts: RunOptions) -> anyhow::Result<()> {
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
    // The monitor kinds, live: the Prometheus Operator may be installed (or removed) later.
    let kinds = tokio::sync::watch::Sender::new(MonitorKinds::from_config(&config));
    let (listed_tx, listed) = tokio::sync::oneshot::channel();
    tokio::spawn(monitors::watch_crds(
        client.clone(),
        kinds.clone(),
        listed_tx,
    ));
    match tokio::time::timeout(MONITOR_CRDS_WAIT, listed).await {
        Ok(Ok(())) => {
            let k = *kinds.borrow();
            tracing::info!(
                service_monitor = k.service_monitor,
                pod_monitor = k.pod_monitor,
                "monitoring kinds at start"
            );
        }
        _ => tracing::warn!(
            "the Prometheus Operator CRDs could not be read yet (RBAC for customresourcedefinitions?): starting without monitors; the watch keeps trying"
        ),
    }

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
    let ns = config.namespace.clone();
    let mut controller = Controller::for_stream(trigger, reader.clone());
    let mut children = ChildIndex::default();
    for kind in ChildKind::ALL {
        let writer = children.track(kind);
        controller = controller.owns_stream_with(
            owned_watch(&client, &ns, kind, writer, &kinds),
            kind.api_resource(),
        );
    }
    // A monitor kind that appears: every stream gets its monitors now, not at the next resync.
    controller = controller.reconcile_all_on(monitors::appearances(kinds.subscribe()));
    // Secrets: metadata only, mapped back to the streams that reference them by name.
    let secrets: Api<PartialObjectMeta<Secret>> = scoped(&client, &ns);
    let store = reader.clone();
    controller = controller.watches_stream(
        watcher(secrets, watcher::Config::default().any_semantic())
            .default_backoff()
            .touched_objects(),
        move |s: PartialObjectMeta<Secret>| {
            streams_referencing(&store.state(), s.namespace().as_deref(), &s.name_any())
        },
    );
    let kafka = Arc::new(crate::kafka_admin::RdKafkaAdmin::new(config.kafka_timeout));
    let ctx = Arc::new(
        Context::new(client, config, kafka, metrics, reader)
            .with_children(children)
            .with_monitors(kinds),
    );
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn stream(ns: &str, name: &str, spec: &str) -> Arc<EventStream> {
        let mut es = EventStream::new(name, serde_yaml::from_str(spec).unwrap());
        es.metadata.namespace = Some(ns.into());
        Arc::new(es)
    }

    #[test]
    fn a_secret_maps_to_the_streams_of_its_namespace_that_reference_it() {
        let db = "persistence: { postgres: { urlSecretRef: { name: db, key: url }, table: t } }";
        let streams = vec![
            stream("racing", "telemetry", db),
            stream(
                "racing",
                "laps",
                "auth: { algorithm: HS256, jwtSecretRef: { name: jwt, key: k } }",
            ),
            stream("other", "telemetry", db),
            stream(
                "racing",
                "secure",
                "kafka: { securityProtocol: SASL_SSL, secretRef: { name: kafka } }",
            ),
        ];
        let names = |ns, secret| {
            streams_referencing(&streams, Some(ns), secret)
                .into_iter()
                .map(|r| r.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names("racing", "db"), vec!["telemetry"]);
        assert_eq!(names("racing", "jwt"), vec!["laps"]);
        assert_eq!(names("racing", "kafka"), vec!["secure"]);
        assert_eq!(names("other", "jwt"), Vec::<String>::new());
        assert_eq!(names("racing", "unrelated"), Vec::<String>::new());
    }
}
