//! Status step: [`build`] assembles `status` from what the other steps found, as a pure
//! function (unit-tested below, no API); [`write_status`] applies it to the status subresource
//! only when it changed, so a steady stream causes no write and no watch event.

use eventstream_crds::EventStream;
use eventstream_crds::v1alpha1::{
    EventStreamStatus, ReplicasStatus, SinkOffsetReset, SinkStatus, TopicStatus,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch};

use super::context::{Context, key};
use super::{Error, ssa};
use crate::children;
use crate::conditions::{self, Check};

/// Everything the status is made of.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    /// `TopicReady`.
    pub topic_check: &'a Check,
    /// `status.topic`.
    pub topic: Option<TopicStatus>,
    /// `BridgeReady`.
    pub bridge_check: &'a Check,
    /// `SinkReady` (`NotConfigured` without persistence).
    pub sink_check: &'a Check,
    /// The bridge Deployment as applied.
    pub bridge: Option<&'a Deployment>,
    /// The sink Deployment as applied.
    pub sink: Option<&'a Deployment>,
    /// `AlertsReady`, when the stream has `spec.alerts`.
    pub alerts_check: Option<&'a Check>,
    /// The sink group's lag.
    pub lag: Option<i64>,
    /// The recorded offset reset.
    pub offset_reset: Option<SinkOffsetReset>,
}

fn ready_replicas(d: Option<&Deployment>) -> i32 {
    d.and_then(|d| d.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

/// `SinkReady` of a stream without persistence.
pub fn sink_not_configured() -> Check {
    Check::ok("NotConfigured", "spec.persistence is not set")
}

/// The status of `es` given what was observed; `lastTransitionTime`s are kept from the old
/// status where the condition did not change.
pub fn build(es: &EventStream, seen: Observed<'_>, now: Timestamp) -> EventStreamStatus {
    let old = es.status.clone().unwrap_or_default();
    let generation = es.metadata.generation;
    EventStreamStatus {
        observed_generation: generation,
        conditions: conditions::with_alerts(
            &old.conditions,
            seen.topic_check,
            seen.bridge_check,
            seen.sink_check,
            seen.alerts_check,
            generation,
            now,
        ),
        topic: seen.topic,
        endpoints: Some(children::endpoints(es)),
        bridge: Some(ReplicasStatus {
            replicas: es.spec.bridge.replicas,
            ready_replicas: ready_replicas(seen.bridge),
        }),
        sink: es.spec.persistence.as_ref().map(|_| SinkStatus {
            replicas: es.spec.sink.replicas,
            ready_replicas: ready_replicas(seen.sink),
            consumer_group: es.sink_group(),
            lag: seen.lag,
            offset_reset: seen.offset_reset,
        }),
    }
}

/// The status of a stream whose spec cannot be built: `check` on the topic, the workloads
/// blocked by it, everything else as it was.
pub fn blocked(es: &EventStream, check: &Check, now: Timestamp) -> EventStreamStatus {
    let old = es.status.clone().unwrap_or_default();
    let generation = es.metadata.generation;
    let blocked = Check::blocked(check);
    EventStreamStatus {
        observed_generation: generation,
        conditions: conditions::all(&old.conditions, check, &blocked, &blocked, generation, now),
        ..old
    }
}

/// Whether a workload is not ready: pods crash-looping do not change their Deployment, so no
/// watch event comes; the controller has to look again soon.
pub fn needs_rollout_check(
    es: &EventStream,
    bridge: &Check,
    sink: &Check,
    alerts: Option<&Check>,
) -> bool {
    !bridge.ok || (es.spec.persistence.is_some() && !sink.ok) || alerts.is_some_and(|a| !a.ok)
}

/// The Normal Event for a new generation: `(reason, note)`, or `None` when this generation was
/// already reported.
pub fn generation_event(es: &EventStream) -> Option<(&'static str, String)> {
    let old = es.status.as_ref().and_then(|s| s.observed_generation);
    let generation = es.metadata.generation;
    if old == generation {
        return None;
    }
    let verb = if old.is_none() { "Created" } else { "Updated" };
    Some((
        verb,
        format!(
            "applied generation {} (topic, config, bridge{})",
            generation.unwrap_or(0),
            if es.spec.persistence.is_some() {
                ", sink"
            } else {
                ""
            }
        ),
    ))
}

/// Applies `status` unless the stream already has exactly it.
pub async fn write_status(
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use eventstream_crds::EventStreamSpec;
    use k8s_openapi::api::apps::v1::DeploymentStatus;

    fn stream(spec: &str) -> EventStream {
        let spec: EventStreamSpec = serde_yaml::from_str(spec).unwrap();
        let mut es = EventStream::new("telemetry", spec);
        es.metadata.namespace = Some("racing".into());
        es.metadata.generation = Some(3);
        es
    }

    fn with_persistence() -> EventStream {
        stream(
            "persistence: { postgres: { urlSecretRef: { name: db, key: url }, table: t } }\nsink: { replicas: 2 }\nbridge: { replicas: 3 }",
        )
    }

    fn deployment(ready: i32) -> Deployment {
        Deployment {
            status: Some(DeploymentStatus {
                ready_replicas: Some(ready),
                ..DeploymentStatus::default()
            }),
            ..Deployment::default()
        }
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn observed<'a>(ok: &'a Check, bridge: &'a Deployment, sink: &'a Deployment) -> Observed<'a> {
        Observed {
            topic_check: ok,
            topic: None,
            bridge_check: ok,
            sink_check: ok,
            bridge: Some(bridge),
            sink: Some(sink),
            alerts_check: None,
            lag: Some(7),
            offset_reset: None,
        }
    }

    #[test]
    fn replicas_lag_and_group_come_from_what_was_observed() {
        let es = with_persistence();
        let ok = Check::ok("X", "fine");
        let (b, s) = (deployment(2), deployment(1));
        let status = build(&es, observed(&ok, &b, &s), t(100));
        assert_eq!(status.observed_generation, Some(3));
        let bridge = status.bridge.unwrap();
        assert_eq!((bridge.replicas, bridge.ready_replicas), (3, 2));
        let sink = status.sink.unwrap();
        assert_eq!((sink.replicas, sink.ready_replicas), (2, 1));
        assert_eq!(sink.lag, Some(7));
        assert_eq!(sink.consumer_group, "eventstream.racing.telemetry.sink");
        assert_eq!(
            status.endpoints.unwrap().websocket.as_deref(),
            Some("ws://telemetry-bridge.racing.svc:8080/ws")
        );
    }

    #[test]
    fn no_sink_status_without_persistence() {
        let es = stream("{}");
        let ok = Check::ok("X", "fine");
        let d = deployment(1);
        let status = build(&es, observed(&ok, &d, &d), t(100));
        assert!(status.sink.is_none());
    }

    #[test]
    fn ready_names_the_first_failing_step_and_transition_times_stay() {
        let mut es = with_persistence();
        let ok = Check::ok("X", "fine");
        let (b, s) = (deployment(3), deployment(2));
        es.status = Some(build(&es, observed(&ok, &b, &s), t(100)));
        let broken = Check::fail("SecretNotFound", "create it");
        let seen = Observed {
            sink_check: &broken,
            ..observed(&ok, &b, &s)
        };
        let status = build(&es, seen, t(200));
        let get = |t: &str| status.conditions.iter().find(|c| c.type_ == t).unwrap();
        assert_eq!(get("Ready").reason, "SecretNotFound");
        assert_eq!(get("SinkReady").last_transition_time.0, t(200));
        assert_eq!(
            get("TopicReady").last_transition_time.0,
            t(100),
            "unchanged condition keeps its time"
        );
    }

    #[test]
    fn a_spec_that_cannot_be_built_blocks_the_workloads_and_keeps_the_rest() {
        let mut es = with_persistence();
        es.status = Some(EventStreamStatus {
            topic: Some(TopicStatus {
                name: "racing.telemetry".into(),
                ..TopicStatus::default()
            }),
            ..EventStreamStatus::default()
        });
        let status = blocked(&es, &Check::fail("InvalidSpec", "bad field"), t(5));
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.topic.unwrap().name, "racing.telemetry");
        let bridge = status
            .conditions
            .iter()
            .find(|c| c.type_ == "BridgeReady")
            .unwrap();
        assert_eq!(
            (bridge.status.as_str(), bridge.reason.as_str()),
            ("False", "InvalidSpec")
        );
        assert!(
            bridge.message.starts_with("waiting: "),
            "{}",
            bridge.message
        );
    }

    #[test]
    fn a_failing_sink_matters_only_with_persistence() {
        let bad = Check::fail("ReplicasNotReady", "starting");
        let ok = Check::ok("X", "fine");
        assert!(needs_rollout_check(&with_persistence(), &ok, &bad, None));
        assert!(!needs_rollout_check(&stream("{}"), &ok, &bad, None));
        assert!(needs_rollout_check(&stream("{}"), &bad, &ok, None));
        assert!(needs_rollout_check(&stream("{}"), &ok, &ok, Some(&bad)));
    }

    #[test]
    fn each_generation_is_reported_once() {
        let mut es = with_persistence();
        assert_eq!(generation_event(&es).unwrap().0, "Created");
        assert!(generation_event(&es).unwrap().1.contains("bridge, sink"));
        es.status = Some(EventStreamStatus {
            observed_generation: Some(3),
            ..EventStreamStatus::default()
        });
        assert_eq!(generation_event(&es), None);
        es.metadata.generation = Some(4);
        assert_eq!(generation_event(&es).unwrap().0, "Updated");
    }
}
