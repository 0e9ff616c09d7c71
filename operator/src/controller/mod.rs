//! The reconciler, as named steps that each return what they found as data:
//!
//! | step | module | finds |
//! |---|---|---|
//! | build (pure) | [`crate::children`] | the desired children as one set of optional objects |
//! | topic | [`topic`] | topic owner, Kafka connection, topic and dead-letter topic |
//! | Secrets | [`secret_check`] | missing Secrets and keys, from the one list of Secret uses |
//! | children | [`children`] | applies the set, deletes owned objects no longer wanted |
//! | consumer group | [`sink_group`] | offset reset, lag |
//! | status | [`status`] | the status, built by a pure function |
//!
//! [`apply`] runs them in that order, [`cleanup`](cleanup::cleanup) is the finalizer, [`run`]
//! wires the `Controller`, its watches derived from the same child kinds, and [`Context`]
//! is what they share. A step that fails because of the user's input records a condition and
//! lets the others run; the stream then waits for a change (long requeue). A transient failure
//! (Kafka unreachable) records a condition and requeues with a per-object exponential backoff.
//! Nothing hot-loops: the status is only written when it changed, and the watch ignores
//! status-only updates.

pub mod children;
pub mod cleanup;
pub mod context;
pub mod monitors;
pub mod run;
pub mod secret_check;
pub mod sink_group;
pub mod status;
pub mod topic;

use std::sync::Arc;

use eventstream_crds::EventStream;
use kube::ResourceExt;
use kube::api::{Api, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};

pub use cleanup::cleanup;
pub use context::{ChildIndex, Context, key};
pub use monitors::MonitorKinds;
pub use run::{RunOptions, run};
pub use topic::topic_owner;

use crate::children::{self as build, BuildError, Component};
use crate::conditions::Check;
use crate::kafka_admin::KafkaAdminError;
use crate::{FIELD_MANAGER, FINALIZER, RESET_OFFSETS_ANNOTATION};
use sink_group::{SinkGroupOutcome, remove_reset_annotation, requested_reset};

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
pub enum Wait {
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

/// Server-side apply as the operator's field manager, forced: the operator owns every field it
/// sets on its children and on the status.
pub(crate) fn ssa() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// The apply half of the finalizer: bring the world to the spec and report it.
pub async fn apply(es: Arc<EventStream>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = es.namespace().ok_or(Error::MissingNamespace)?;
    // One view of the served monitor kinds for the whole reconcile: build and sweep agree.
    let config = ctx.config_now();
    let cfg = &*config;
    let old = es.status.clone().unwrap_or_default();
    let persistence = es.spec.persistence.is_some();
    let reset = requested_reset(&es).filter(|_| persistence);

    // Build: pure. A spec that cannot be built stops here: nothing sensible can be applied.
    let built = match build::build(&es, cfg, matches!(reset, Some(Ok(_)))) {
        Ok(c) => c,
        Err(e) => return invalid_spec(&es, &ctx, &ns, e).await,
    };
    let desired = built.desired(&es, cfg);

    let bootstrap = topic::bootstrap(&es, cfg).unwrap_or_default();
    let topic = topic::topic_step(&es, &ctx, bootstrap).await?;
    let mut wait = topic.wait;
    let secrets = secret_check::check_secrets(&es, &ctx).await?;
    if secrets.any() {
        wait = wait.max(Wait::User);
    }
    // Later Kafka steps only run against a topic that is there.
    let kafka = topic.conn.as_ref().filter(|_| topic.check.ok);
    let mut dead_letter = None;
    if let (true, Some(conn)) = (persistence, kafka)
        && let Some((check, w)) = topic::dead_letter_step(&es, &ctx, conn).await
    {
        dead_letter = Some(check);
        wait = wait.max(w);
    }

    let mut alerts_topics = None;
    if let (true, Some(conn)) = (es.spec.alerts.is_some(), kafka)
        && let Some((check, w)) = topic::alerts_topics_step(&es, &ctx, conn).await
    {
        alerts_topics = Some(check);
        wait = wait.max(w);
    }

    let applied = children::apply_children(&es, &ctx, cfg, &ns, &desired).await?;

    let group = match (persistence, kafka) {
        // Under a name conflict the sink's state is unknown: no reset against it.
        (true, Some(conn)) if applied.conflict.is_none() => {
            sink_group::sink_group_step(
                &es,
                &ctx,
                conn,
                reset.as_ref(),
                applied.sink.as_ref(),
                &old,
            )
            .await
        }
        _ => {
            if reset.is_none() && requested_reset(&es).is_some() {
                // Annotation without persistence: nothing to reset; remove it so it does not
                // linger.
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
            SinkGroupOutcome::kept(&old)
        }
    };
    wait = wait.max(group.wait);

    if let Some(c) = &applied.conflict {
        ctx.publish(
            &es,
            EventType::Warning,
            &c.reason,
            "ApplyChildren",
            c.message.clone(),
        )
        .await;
        wait = wait.max(Wait::User);
    }
    let bridge_check = match applied.conflict.clone().or(secrets.bridge) {
        Some(c) => c,
        None => {
            children::workload_check(&es, &ctx, &ns, Component::Bridge, applied.bridge.as_ref())
                .await?
        }
    };
    // The sink's first problem: a name conflict, its Secrets, then its dead-letter topic, then its group.
    let sink_problem = applied
        .conflict
        .clone()
        .or(secrets.sink)
        .or(dead_letter)
        .or(group.check);
    let sink_check = if !persistence {
        status::sink_not_configured()
    } else if let Some(c) = sink_problem {
        c
    } else {
        children::workload_check(&es, &ctx, &ns, Component::Sink, applied.sink.as_ref()).await?
    };
    // The evaluator's first problem: a name conflict, its Secrets, then its topics.
    let alerts_check = match es.spec.alerts {
        None => None,
        Some(_) => Some(
            match applied
                .conflict
                .clone()
                .or(secrets.alerts)
                .or(alerts_topics)
            {
                Some(c) => c,
                None if kafka.is_none() => Check::blocked(&topic.check),
                None => {
                    children::workload_check(
                        &es,
                        &ctx,
                        &ns,
                        Component::Alerts,
                        applied.alerts.as_ref(),
                    )
                    .await?
                }
            },
        ),
    };
    if status::needs_rollout_check(&es, &bridge_check, &sink_check, alerts_check.as_ref()) {
        wait = wait.max(Wait::Rollout);
    }
    let new_status = status::build(
        &es,
        status::Observed {
            topic_check: &topic.check,
            topic: topic.status,
            bridge_check: &bridge_check,
            sink_check: &sink_check,
            bridge: applied.bridge.as_ref(),
            sink: applied.sink.as_ref(),
            alerts_check: alerts_check.as_ref(),
            lag: group.lag,
            offset_reset: group.offset_reset,
        },
        (ctx.now)(),
    );
    if let Some((reason, note)) = status::generation_event(&es) {
        ctx.publish(&es, EventType::Normal, reason, "Reconcile", note)
            .await;
    }
    status::write_status(&es, &ctx, &ns, new_status).await?;
    // Removed only after the status that records the reset is written: the sink learns the
    // offsets from the status (through its ConfigMap), so the request must not vanish first.
    if group.reset_done {
        remove_reset_annotation(&es, &ctx, &ns).await?;
    }
    Ok(finish(&es, &ctx, wait))
}

/// A spec the builders refuse: a status and a Warning Event, then wait for the user.
async fn invalid_spec(
    es: &EventStream,
    ctx: &Context,
    ns: &str,
    e: BuildError,
) -> Result<Action, Error> {
    let check = Check::fail(e.reason(), e.to_string());
    ctx.publish(
        es,
        EventType::Warning,
        e.reason(),
        "Validate",
        e.to_string(),
    )
    .await;
    status::write_status(es, ctx, ns, status::blocked(es, &check, (ctx.now)())).await?;
    Ok(finish(es, ctx, Wait::User))
}

/// The requeue for how the reconcile ended. A retry keeps the failure count (the backoff
/// grows); every other outcome resets it.
fn finish(es: &EventStream, ctx: &Context, wait: Wait) -> Action {
    let cfg = &ctx.config;
    let (result, delay) = match wait {
        Wait::Resync => ("ok", cfg.resync),
        Wait::Rollout => ("waiting", cfg.rollout_check),
        Wait::User => ("waiting", cfg.await_user),
        Wait::Retry => ("retry", ctx.backoff(es)),
    };
    if wait != Wait::Retry {
        ctx.succeeded(es);
    }
    ctx.metrics
        .reconciliations
        .with_label_values(&[result])
        .inc();
    Action::requeue(delay)
}
