//! Which Prometheus Operator monitor kinds the cluster serves, kept live while the operator runs:
//! the Prometheus Operator (and its CRDs) is often installed after the operator, or removed.
//!
//! A watch of the two CustomResourceDefinitions by name ([`SERVICE_MONITOR_CRD`],
//! [`POD_MONITOR_CRD`]) is folded into [`MonitorKinds`] and published on a
//! `tokio::sync::watch` channel. The reconciles read it ([`Context::config_now`]); the monitor
//! watches run only while their kind is served ([`gated`]); and a kind that appears makes every
//! stream reconcile ([`appearances`]), so existing streams get their monitors at once, not at the
//! next resync. A kind that goes needs no reconcile: the API server deletes the monitors with
//! their CRD.
//!
//! The decisions (does a CRD serve `v1`, what an event stream says, what a change triggers) are
//! pure functions here, tested without a cluster.
//!
//! [`Context::config_now`]: super::Context::config_now

use std::sync::Arc;

use futures::{Stream, StreamExt, stream};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::{oneshot, watch};

use crate::OperatorConfig;
use crate::children::ChildKind;

/// Name of the Prometheus Operator's ServiceMonitor CRD.
pub const SERVICE_MONITOR_CRD: &str = "servicemonitors.monitoring.coreos.com";
/// Name of the Prometheus Operator's PodMonitor CRD.
pub const POD_MONITOR_CRD: &str = "podmonitors.monitoring.coreos.com";
/// The version of the monitor kinds the builders write.
const MONITOR_VERSION: &str = "v1";

/// Which `monitoring.coreos.com/v1` kinds the cluster serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MonitorKinds {
    /// ServiceMonitor (the bridge's).
    pub service_monitor: bool,
    /// PodMonitor (the sink's).
    pub pod_monitor: bool,
}

impl MonitorKinds {
    /// The flags `config` was built with (what a context starts from).
    pub fn from_config(config: &OperatorConfig) -> Self {
        Self {
            service_monitor: config.service_monitor,
            pod_monitor: config.pod_monitor,
        }
    }

    /// Whether `kind` is served; `None` for a kind that is not a monitor (always served).
    pub fn serves(self, kind: ChildKind) -> Option<bool> {
        match kind {
            ChildKind::ServiceMonitor => Some(self.service_monitor),
            ChildKind::PodMonitor => Some(self.pod_monitor),
            _ => None,
        }
    }

    /// Whether a kind is served now that was not `before`: then every stream must be reconciled
    /// to create its monitors. A kind going away triggers nothing (its objects go with the CRD).
    pub fn appeared_since(self, before: MonitorKinds) -> bool {
        (self.service_monitor && !before.service_monitor)
            || (self.pod_monitor && !before.pod_monitor)
    }
}

/// Whether `crd` serves its kind at [`MONITOR_VERSION`]: established (the API server accepts
/// its objects), that version served, and not being deleted (its objects are being removed).
pub fn crd_serves_v1(crd: &CustomResourceDefinition) -> bool {
    let established = crd
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
    let served = crd
        .spec
        .versions
        .iter()
        .any(|v| v.name == MONITOR_VERSION && v.served);
    established && served && crd.metadata.deletion_timestamp.is_none()
}

/// What the watch of one CRD name has shown so far.
#[derive(Debug, Clone, Default)]
pub struct CrdTracker {
    name: &'static str,
    /// Whether it serves `v1`; `None` until the first list completed.
    serving: Option<bool>,
    /// During a (re)list: what the listed objects say so far (they replace what was known).
    relisting: Option<bool>,
}

impl CrdTracker {
    /// A tracker of the CRD named `name`.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            ..Self::default()
        }
    }

    /// Folds one watch event in. Objects of another name are ignored (the watch selects by
    /// name; this keeps the decision right whatever it is fed).
    pub fn apply(&mut self, event: &Event<CustomResourceDefinition>) {
        let ours = |crd: &CustomResourceDefinition| crd.name_any() == self.name;
        match event {
            Event::Init => self.relisting = Some(false),
            Event::InitApply(crd) if ours(crd) => {
                self.relisting = Some(self.relisting.unwrap_or(false) || crd_serves_v1(crd));
            }
            Event::InitDone => self.serving = Some(self.relisting.take().unwrap_or(false)),
            Event::Apply(crd) if ours(crd) => self.serving = Some(crd_serves_v1(crd)),
            Event::Delete(crd) if ours(crd) => self.serving = Some(false),
            _ => {}
        }
    }

    /// Whether the CRD serves `v1`, as far as known (not listed yet reads as not served).
    pub fn serving(&self) -> bool {
        self.serving.unwrap_or(false)
    }

    /// Whether a first list completed.
    pub fn listed(&self) -> bool {
        self.serving.is_some()
    }
}

/// The two monitor CRDs' trackers.
#[derive(Debug, Clone)]
pub struct MonitorCrds {
    service_monitor: CrdTracker,
    pod_monitor: CrdTracker,
}

impl Default for MonitorCrds {
    fn default() -> Self {
        Self {
            service_monitor: CrdTracker::new(SERVICE_MONITOR_CRD),
            pod_monitor: CrdTracker::new(POD_MONITOR_CRD),
        }
    }
}

impl MonitorCrds {
    /// Folds one event of the watch of `kind`'s CRD in.
    pub fn apply(&mut self, kind: ChildKind, event: &Event<CustomResourceDefinition>) {
        match kind {
            ChildKind::ServiceMonitor => self.service_monitor.apply(event),
            ChildKind::PodMonitor => self.pod_monitor.apply(event),
            _ => {}
        }
    }

    /// The kinds served, as far as known.
    pub fn kinds(&self) -> MonitorKinds {
        MonitorKinds {
            service_monitor: self.service_monitor.serving(),
            pod_monitor: self.pod_monitor.serving(),
        }
    }

    /// Whether both CRDs were listed once (the start-up answer is known).
    pub fn listed(&self) -> bool {
        self.service_monitor.listed() && self.pod_monitor.listed()
    }
}

/// Watches the two monitor CRDs (full objects: two of them at most, and only the objects say
/// whether `v1` is served and established; selected by name, which the RBAC's `resourceNames`
/// also requires) and publishes the served kinds on `kinds` whenever they change. `listed` is
/// sent once both CRDs were listed. Runs for the life of the operator (a failed request is
/// retried with the watcher's backoff, keeping the last answer meanwhile).
pub async fn watch_crds(
    client: Client,
    kinds: watch::Sender<MonitorKinds>,
    listed: oneshot::Sender<()>,
) {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let one = |kind: ChildKind, name: &str| {
        let config = watcher::Config::default()
            .fields(&format!("metadata.name={name}"))
            .any_semantic();
        watcher(api.clone(), config)
            .default_backoff()
            .map(move |e| (kind, e))
    };
    let mut events = std::pin::pin!(stream::select(
        one(ChildKind::ServiceMonitor, SERVICE_MONITOR_CRD),
        one(ChildKind::PodMonitor, POD_MONITOR_CRD),
    ));
    let mut crds = MonitorCrds::default();
    let mut listed = Some(listed);
    while let Some((kind, event)) = events.next().await {
        match event {
            Ok(event) => crds.apply(kind, &event),
            Err(e) => {
                // Retried with backoff by the watcher; until then the last answer stands.
                tracing::warn!(error = %e, ?kind, "watching the Prometheus Operator CRDs failed");
                continue;
            }
        }
        let now = crds.kinds();
        kinds.send_if_modified(|k| {
            if *k == now {
                return false;
            }
            tracing::info!(
                service_monitor = now.service_monitor,
                pod_monitor = now.pod_monitor,
                "monitoring kinds changed"
            );
            *k = now;
            true
        });
        if crds.listed()
            && let Some(tx) = listed.take()
        {
            let _ = tx.send(());
        }
    }
}

/// A watch of `kind`'s objects that runs only while `kinds` says the kind is served: `start`
/// makes a fresh watch each time the kind appears, and when it goes the watch stops (no list
/// against a resource that is not there, no error loop) and an empty relist is emitted, so a
/// reflector behind this stream forgets the objects that went with their CRD.
pub fn gated<K, S>(
    kinds: watch::Receiver<MonitorKinds>,
    kind: ChildKind,
    start: impl Fn() -> S + Send + Sync + 'static,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static
where
    K: Send + 'static,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
{
    let start = Arc::new(start);
    let served = move |k: &MonitorKinds| k.serves(kind).unwrap_or(true);
    stream::unfold(kinds, move |mut kinds| {
        let start = start.clone();
        async move {
            // The sender gone means the operator is shutting down: the stream ends. (`wait_for`
            // answers from the last value even then, which would restart the watch forever.)
            if kinds.wait_for(served).await.is_err() || kinds.has_changed().is_err() {
                return None;
            }
            let mut gone = kinds.clone();
            let until = async move {
                let _ = gone.wait_for(|k| !served(k)).await;
            };
            let forget = stream::iter([Ok(Event::Init), Ok(Event::InitDone)]);
            Some((start().take_until(until).chain(forget), kinds))
        }
    })
    .flatten()
}

/// One item each time a monitor kind appears ([`MonitorKinds::appeared_since`]), compared with
/// what `kinds` said when this was called: the trigger of a reconcile of every stream.
pub fn appearances(mut kinds: watch::Receiver<MonitorKinds>) -> impl Stream<Item = ()> + Send {
    let seen = *kinds.borrow_and_update();
    stream::unfold((kinds, seen), |(mut kinds, mut seen)| async move {
        loop {
            kinds.changed().await.ok()?;
            let now = *kinds.borrow_and_update();
            let appeared = now.appeared_since(seen);
            seen = now;
            if appeared {
                return Some(((), (kinds, seen)));
            }
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use serde_json::json;

    fn crd(name: &str, served: bool, established: bool) -> CustomResourceDefinition {
        serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": name},
            "spec": {
                "group": "monitoring.coreos.com",
                "names": {"kind": "ServiceMonitor", "plural": "servicemonitors"},
                "scope": "Namespaced",
                "versions": [{"name": "v1", "served": served, "storage": true}],
            },
            "status": {"conditions": [
                {"type": "NamesAccepted", "status": "True"},
                {"type": "Established", "status": if established { "True" } else { "False" }},
            ]},
        }))
        .unwrap()
    }

    #[test]
    fn a_crd_serves_its_kind_only_established_served_at_v1_and_not_deleting() {
        assert!(crd_serves_v1(&crd(SERVICE_MONITOR_CRD, true, true)));
        // Just created: the API server does not accept its objects yet.
        assert!(!crd_serves_v1(&crd(SERVICE_MONITOR_CRD, true, false)));
        assert!(!crd_serves_v1(&crd(SERVICE_MONITOR_CRD, false, true)));
        let mut only_v2 = crd(SERVICE_MONITOR_CRD, true, true);
        only_v2.spec.versions[0].name = "v2".into();
        assert!(!crd_serves_v1(&only_v2));
        let mut deleting = crd(SERVICE_MONITOR_CRD, true, true);
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert!(!crd_serves_v1(&deleting));
    }

    #[test]
    fn the_kinds_follow_the_crd_events_installed_after_start_and_removed() {
        let sm = |served, established| crd(SERVICE_MONITOR_CRD, served, established);
        let pm = crd(POD_MONITOR_CRD, true, true);
        let mut crds = MonitorCrds::default();
        assert!(!crds.listed());
        // Start-up: neither CRD exists (both lists empty).
        for kind in [ChildKind::ServiceMonitor, ChildKind::PodMonitor] {
            crds.apply(kind, &Event::Init);
            crds.apply(kind, &Event::InitDone);
        }
        assert!(crds.listed());
        assert_eq!(crds.kinds(), MonitorKinds::default());
        // The Prometheus Operator is installed: created, then established.
        crds.apply(ChildKind::ServiceMonitor, &Event::Apply(sm(true, false)));
        assert!(!crds.kinds().service_monitor, "not established yet");
        crds.apply(ChildKind::ServiceMonitor, &Event::Apply(sm(true, true)));
        crds.apply(ChildKind::PodMonitor, &Event::Apply(pm.clone()));
        let both = MonitorKinds {
            service_monitor: true,
            pod_monitor: true,
        };
        assert_eq!(crds.kinds(), both);
        // An object of another name on this watch changes nothing.
        crds.apply(
            ChildKind::ServiceMonitor,
            &Event::Delete(crd("other.example.com", true, true)),
        );
        assert_eq!(crds.kinds(), both);
        // A relist (watch restarted) replaces what was known: the PodMonitor CRD went meanwhile.
        crds.apply(ChildKind::PodMonitor, &Event::Init);
        assert!(
            crds.kinds().pod_monitor,
            "unchanged until the relist completes"
        );
        crds.apply(ChildKind::PodMonitor, &Event::InitDone);
        assert!(!crds.kinds().pod_monitor);
        // Relisted with it present again.
        crds.apply(ChildKind::PodMonitor, &Event::Init);
        crds.apply(ChildKind::PodMonitor, &Event::InitApply(pm.clone()));
        crds.apply(ChildKind::PodMonitor, &Event::InitDone);
        assert_eq!(crds.kinds(), both);
        // Uninstalled.
        crds.apply(ChildKind::ServiceMonitor, &Event::Delete(sm(true, true)));
        crds.apply(ChildKind::PodMonitor, &Event::Delete(pm));
        assert_eq!(crds.kinds(), MonitorKinds::default());
    }

    #[test]
    fn only_a_kind_that_appears_triggers_a_reconcile_of_every_stream() {
        let none = MonitorKinds::default();
        let sm = MonitorKinds {
            service_monitor: true,
            pod_monitor: false,
        };
        let pm = MonitorKinds {
            service_monitor: false,
            pod_monitor: true,
        };
        let both = MonitorKinds {
            service_monitor: true,
            pod_monitor: true,
        };
        assert!(sm.appeared_since(none));
        assert!(both.appeared_since(sm));
        assert!(both.appeared_since(pm));
        assert!(pm.appeared_since(sm), "one went, another came");
        assert!(
            !none.appeared_since(both),
            "gone: the objects went with their CRD"
        );
        assert!(!sm.appeared_since(both));
        assert!(!both.appeared_since(both));
    }

    #[tokio::test]
    async fn appearances_fire_once_per_appearance() {
        let (tx, rx) = watch::channel(MonitorKinds::default());
        let mut fired = Box::pin(appearances(rx));
        assert!(fired.next().now_or_never().is_none());
        tx.send_replace(MonitorKinds {
            service_monitor: true,
            pod_monitor: false,
        });
        assert_eq!(fired.next().await, Some(()));
        tx.send_replace(MonitorKinds::default());
        assert!(
            fired.next().now_or_never().is_none(),
            "a removal is no trigger"
        );
        tx.send_replace(MonitorKinds {
            service_monitor: true,
            pod_monitor: true,
        });
        assert_eq!(fired.next().await, Some(()));
        drop(tx);
        assert_eq!(fired.next().await, None);
    }

    /// A watch that yields one object, then waits forever (as a watch does).
    fn one_object(n: u32) -> impl Stream<Item = Result<Event<u32>, watcher::Error>> + Send {
        stream::iter([Ok(Event::Apply(n))]).chain(stream::pending())
    }

    fn applied(e: Option<Result<Event<u32>, watcher::Error>>) -> String {
        match e {
            Some(Ok(Event::Apply(n))) => format!("apply {n}"),
            Some(Ok(Event::Init)) => "init".into(),
            Some(Ok(Event::InitDone)) => "init done".into(),
            Some(Ok(_)) => "other".into(),
            Some(Err(e)) => format!("error {e}"),
            None => "end".into(),
        }
    }

    #[tokio::test]
    async fn a_monitor_watch_runs_only_while_its_kind_is_served() {
        let (tx, rx) = watch::channel(MonitorKinds::default());
        let starts = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = starts.clone();
        let mut events = Box::pin(gated(rx, ChildKind::PodMonitor, move || {
            one_object(counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1)
        }));
        assert!(
            events.next().now_or_never().is_none(),
            "not served: no watch"
        );
        assert_eq!(starts.load(std::sync::atomic::Ordering::SeqCst), 0);
        // The other kind appearing does not start it.
        tx.send_replace(MonitorKinds {
            service_monitor: true,
            pod_monitor: false,
        });
        assert!(events.next().now_or_never().is_none());
        // Its CRD is installed: a watch starts.
        tx.send_replace(MonitorKinds {
            service_monitor: true,
            pod_monitor: true,
        });
        assert_eq!(applied(events.next().await), "apply 1");
        // Its CRD is removed: the watch stops and the cache is emptied.
        tx.send_replace(MonitorKinds::default());
        assert_eq!(applied(events.next().await), "init");
        assert_eq!(applied(events.next().await), "init done");
        assert!(events.next().now_or_never().is_none());
        // Installed again: a fresh watch.
        tx.send_replace(MonitorKinds {
            service_monitor: false,
            pod_monitor: true,
        });
        assert_eq!(applied(events.next().await), "apply 2");
        drop(tx);
        assert_eq!(applied(events.next().await), "init");
        assert_eq!(applied(events.next().await), "init done");
        assert_eq!(applied(events.next().await), "end");
    }
}
