//! Consumer-group step: the one-shot offset reset asked for by the
//! `eventstream.dev/reset-sink-offsets` annotation (sink scaled to zero first), then the sink's
//! lag. Returns what it found; the annotation is removed by the caller only after the status
//! recording the reset is written.

use eventstream_crds::EventStream;
use eventstream_crds::v1alpha1::{EventStreamStatus, SinkOffsetReset};
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;

use super::context::{Context, key};
use super::{Error, Wait};
use crate::RESET_OFFSETS_ANNOTATION;
use crate::conditions::Check;
use crate::kafka_admin::{KafkaConnection, ResetTo};

/// What the consumer-group step found.
#[derive(Debug, Default)]
pub struct SinkGroupOutcome {
    /// A problem or a reset in progress, for `SinkReady`.
    pub check: Option<Check>,
    /// `status.sink.lag`.
    pub lag: Option<i64>,
    /// `status.sink.offsetReset`.
    pub offset_reset: Option<SinkOffsetReset>,
    /// The reset happened: remove the annotation once the status is written.
    pub reset_done: bool,
    /// How long to wait.
    pub wait: Wait,
}

impl SinkGroupOutcome {
    /// Nothing asked of Kafka (no persistence, or no topic to ask about): the recorded figures
    /// stay.
    pub fn kept(old: &EventStreamStatus) -> Self {
        Self {
            lag: old.sink.as_ref().and_then(|s| s.lag),
            offset_reset: old.sink.as_ref().and_then(|s| s.offset_reset.clone()),
            ..Self::default()
        }
    }
}

/// The reset the annotation asks for, if any (`Err`: a value that is not a reset target).
pub fn requested_reset(es: &EventStream) -> Option<Result<ResetTo, String>> {
    es.annotations()
        .get(RESET_OFFSETS_ANNOTATION)
        .map(|v| v.parse::<ResetTo>())
}

/// Removes the reset annotation (merge patch: only that key).
pub async fn remove_reset_annotation(
    es: &EventStream,
    ctx: &Context,
    ns: &str,
) -> Result<(), Error> {
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

/// Reset (when asked and the sink is stopped), then lag. `conn` is `None` when Kafka cannot be
/// talked to or the topic is not ready: the previous figures stay.
pub async fn sink_group_step(
    es: &EventStream,
    ctx: &Context,
    conn: &KafkaConnection,
    reset: Option<&Result<ResetTo, String>>,
    sink: Option<&Deployment>,
    old: &EventStreamStatus,
) -> SinkGroupOutcome {
    let mut out = SinkGroupOutcome::kept(old);
    let group = es.sink_group();
    match reset {
        Some(Err(bad)) => {
            out.check = Some(Check::fail(
                "InvalidResetAnnotation",
                format!("annotation {RESET_OFFSETS_ANNOTATION}: {bad}; use earliest or latest"),
            ));
        }
        Some(Ok(to)) => {
            let stopped = sink
                .and_then(|d| d.status.as_ref())
                .map(|s| s.replicas.unwrap_or(0) == 0)
                .unwrap_or(true);
            if !stopped {
                out.check = Some(Check::fail(
                    "ResettingOffsets",
                    "scaling the sink to zero before resetting its consumer group offsets",
                ));
                out.wait = Wait::Retry;
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
                            es,
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
                        out.offset_reset = Some(record);
                        out.reset_done = true;
                        out.check = Some(Check::fail(
                            "ResettingOffsets",
                            "offsets reset; scaling the sink back up",
                        ));
                        out.wait = Wait::Retry;
                    }
                    Err(e) => {
                        ctx.metrics
                            .kafka_admin_errors
                            .with_label_values(&[e.category()])
                            .inc();
                        ctx.publish(
                            es,
                            EventType::Warning,
                            "SinkOffsetResetFailed",
                            "ResetOffsets",
                            e.to_string(),
                        )
                        .await;
                        out.check = Some(Check::fail("SinkOffsetResetFailed", e.to_string()));
                        out.wait = Wait::Retry;
                    }
                }
            }
        }
        None => {}
    }
    match ctx.kafka.group_lag(conn, &group, &es.topic_name()).await {
        Ok(l) => out.lag = l,
        Err(e) => {
            ctx.metrics
                .kafka_admin_errors
                .with_label_values(&[e.category()])
                .inc();
            tracing::debug!(stream = %key(es), error = %e, "could not read the sink lag");
        }
    }
    out
}
