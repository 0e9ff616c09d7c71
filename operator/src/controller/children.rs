//! Children step: applies the desired set ([`children::Children::desired`]) by server-side
//! apply in its order (ConfigMap first, so pods never start without their config), then deletes
//! the objects of each served kind that the stream owns (stream label and owner reference, as
//! the watches cached them) and no longer wants. Also the readiness of the two workloads, with
//! the pods' own reason when they are not ready.

use eventstream_crds::EventStream;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch};

use super::context::{ChildMeta, Context, owned_by};
use super::{Error, ssa};
use crate::OperatorConfig;
use crate::children::{self, ChildKind, ChildObject, Component, DesiredChild};
use crate::conditions::{self, Check};

/// The Deployments as the API server returned them after the apply.
#[derive(Debug, Default, Clone)]
pub struct Applied {
    /// The bridge.
    pub bridge: Option<Deployment>,
    /// The sink, when wanted.
    pub sink: Option<Deployment>,
    /// The alerts evaluator, when wanted.
    pub alerts: Option<Deployment>,
    /// `kind/name` of every object deleted because it is no longer wanted.
    pub deleted: Vec<String>,
    /// An existing object with a child's name that this stream does not own: nothing was
    /// applied or deleted.
    pub conflict: Option<Check>,
}

/// Applies what `desired` wants, then deletes owned objects it does not want, among the kinds
/// `cfg` (the reconcile's view of the served kinds, the one `desired` was built with) serves.
pub async fn apply_children(
    es: &EventStream,
    ctx: &Context,
    cfg: &OperatorConfig,
    ns: &str,
    desired: &[DesiredChild],
) -> Result<Applied, Error> {
    let mut applied = Applied::default();
    // A forced apply would take over an object of the same name (a user's ConfigMap) and make
    // the stream its controller, so garbage collection would delete it with the stream. Every
    // name is checked before anything is touched.
    if let Some(foreign) = first_foreign(es, ctx, ns, desired).await? {
        applied.conflict = Some(Check::fail(
            "NameConflict",
            format!(
                "{foreign} exists and is not owned by this EventStream: the operator does not take it over; delete or rename it, or rename the EventStream"
            ),
        ));
        return Ok(applied);
    }
    let sink_name = children::workload_name(es, Component::Sink);
    let alerts_name = children::workload_name(es, Component::Alerts);
    for child in desired {
        let Some(object) = &child.object else {
            continue;
        };
        if let ChildObject::Deployment(d) = object {
            let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
            let got = api.patch(&child.name, &ssa(), &Patch::Apply(d)).await?;
            if child.name == sink_name {
                applied.sink = Some(got);
            } else if child.name == alerts_name {
                applied.alerts = Some(got);
            } else {
                applied.bridge = Some(got);
            }
        } else {
            let api: Api<DynamicObject> =
                Api::namespaced_with(ctx.client.clone(), ns, &child.kind.api_resource());
            api.patch(&child.name, &ssa(), &Patch::Apply(object))
                .await?;
        }
    }
    applied.deleted = sweep(es, ctx, cfg, ns, desired).await?;
    Ok(applied)
}

/// The first wanted child whose name is taken by an object `es` does not own, as
/// `Kind namespace/name`. Objects the watches know to be owned need no request; the others
/// (first creation, a cache still filling) are read by name.
async fn first_foreign(
    es: &EventStream,
    ctx: &Context,
    ns: &str,
    desired: &[DesiredChild],
) -> Result<Option<String>, Error> {
    for child in desired.iter().filter(|c| c.object.is_some()) {
        let cached = ctx.children.get(child.kind, es, &child.name);
        if cached.is_some_and(|m| owned_by(&m.metadata, es)) {
            continue;
        }
        let ar = child.kind.api_resource();
        let api: Api<ChildMeta> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
        if let Some(existing) = api.get_opt(&child.name).await?
            && !owned_by(&existing.metadata, es)
        {
            return Ok(Some(format!("{} {ns}/{}", ar.kind, child.name)));
        }
    }
    Ok(None)
}

/// Owned objects of a served kind that no wanted slot names, as `(kind, name)`: pure.
pub fn unwanted(
    desired: &[DesiredChild],
    owned: impl Fn(ChildKind) -> Vec<String>,
    cfg: &crate::OperatorConfig,
) -> Vec<(ChildKind, String)> {
    let mut out = Vec::new();
    for kind in ChildKind::ALL.into_iter().filter(|k| k.served(cfg)) {
        for name in owned(kind) {
            let wanted = desired
                .iter()
                .any(|d| d.kind == kind && d.name == name && d.object.is_some());
            if !wanted {
                out.push((kind, name));
            }
        }
    }
    out
}

async fn sweep(
    es: &EventStream,
    ctx: &Context,
    cfg: &OperatorConfig,
    ns: &str,
    desired: &[DesiredChild],
) -> Result<Vec<String>, Error> {
    let mut deleted = Vec::new();
    for (kind, name) in unwanted(desired, |k| ctx.children.owned(k, es), cfg) {
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), ns, &kind.api_resource());
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {}
            // Already gone (the cache lags behind the API server): nothing to do.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        deleted.push(format!("{kind:?}/{name}"));
    }
    Ok(deleted)
}

/// Readiness of a workload; when it is not ready, the reason its pods give (a crash loop with
/// the dataplane's fatal error, an image that cannot be pulled), if any.
pub async fn workload_check(
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
        Component::Alerts => 1,
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
