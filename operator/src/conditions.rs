//! Status conditions computed from data: `TopicReady`, `BridgeReady`, `SinkReady` and the summary
//! `Ready`. `lastTransitionTime` moves only when a condition's status changes, so an unchanged
//! world gives a byte-identical status (no write, no watch event, no reconcile loop).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// The topic exists as specified.
pub const TOPIC_READY: &str = "TopicReady";
/// The bridge Deployment has all its replicas ready.
pub const BRIDGE_READY: &str = "BridgeReady";
/// The sink is ready, or not configured.
pub const SINK_READY: &str = "SinkReady";
/// The alerts topics exist and the evaluator is ready; present only with `spec.alerts`.
pub const ALERTS_READY: &str = "AlertsReady";
/// All of the above.
pub const READY: &str = "Ready";

/// One observed fact: a condition status with a CamelCase reason and a message for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// `True` or `False`.
    pub ok: bool,
    /// CamelCase reason (also the Event reason and, for failures, a metric label).
    pub reason: String,
    /// What happened and, on failure, what the user can do.
    pub message: String,
}

impl Check {
    /// A passing check.
    pub fn ok(reason: &str, message: impl Into<String>) -> Self {
        Self {
            ok: true,
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// A failing check.
    pub fn fail(reason: &str, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// Not checked because an earlier step failed.
    pub fn blocked(by: &Check) -> Self {
        Self::fail(&by.reason, format!("waiting: {}", by.message))
    }
}

/// `Ready`: true when all are; otherwise the first failing check, topic before bridge before
/// sink, so the reason names the step to fix first.
pub fn ready(topic: &Check, bridge: &Check, sink: &Check) -> Check {
    match [topic, bridge, sink].into_iter().find(|c| !c.ok) {
        Some(failing) => Check::fail(&failing.reason, failing.message.clone()),
        None => Check::ok("Ready", "topic, bridge and sink are ready"),
    }
}

/// Readiness of a Deployment from the status the API server returned.
pub fn workload(name: &str, desired: i32, deployment: Option<&Deployment>) -> Check {
    let status = deployment
        .and_then(|d| d.status.clone())
        .unwrap_or_default();
    let generation = deployment.and_then(|d| d.metadata.generation);
    if let Some(stuck) = status.conditions.iter().flatten().find(|c| {
        c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    }) {
        return Check::fail(
            "ProgressDeadlineExceeded",
            format!(
                "Deployment {name}: {} (check its pods: kubectl describe deploy {name})",
                stuck.message.as_deref().unwrap_or("rollout stuck")
            ),
        );
    }
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let current = generation.is_none() || status.observed_generation == generation;
    if desired == 0 {
        return Check::ok("ScaledToZero", format!("Deployment {name} has 0 replicas"));
    }
    if current && ready >= desired && updated >= desired {
        Check::ok(
            "ReplicasReady",
            format!("Deployment {name}: {ready}/{desired} replicas ready"),
        )
    } else {
        Check::fail(
            "ReplicasNotReady",
            format!("Deployment {name}: {ready}/{desired} replicas ready, {updated} updated"),
        )
    }
}

/// Waiting reasons of a container that will not get better by itself.
const STUCK: [&str; 6] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// Reasons the dataplane may put in front of its termination message (`[Reason] error: …`) for a
/// failure that needs its own condition reason. Only these are taken over: the reason is a
/// metric label, so the set stays bounded.
const DATAPLANE_REASONS: [&str; 1] = ["TableOwnedByAnotherStream"];

/// Splits `[Reason] rest` into a known dataplane reason and the rest.
fn tagged_reason(message: &str) -> Option<(&'static str, &str)> {
    let (tag, rest) = message.strip_prefix('[')?.split_once("] ")?;
    let reason = DATAPLANE_REASONS.into_iter().find(|r| *r == tag)?;
    Some((reason, rest))
}

/// Why the pods of a workload that is not ready fail, when a container says so: the first stuck
/// container (crash loop, image pull, config error) with the message it left — the dataplane
/// writes its fatal error to the termination log, so a sink that cannot use its table says
/// exactly that here, under the dataplane's own reason when it tagged one (see
/// [`DATAPLANE_REASONS`]). `None` when no pod reports a failure (still starting, or scheduling).
pub fn pod_failure(workload: &str, pods: &[Pod]) -> Option<Check> {
    let mut pods: Vec<&Pod> = pods.iter().collect();
    pods.sort_by_key(|p| p.metadata.name.clone());
    for pod in pods {
        let name = pod.metadata.name.as_deref().unwrap_or("?");
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref());
        for c in statuses.into_iter().flatten() {
            let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref());
            let Some(reason) = waiting
                .and_then(|w| w.reason.as_deref())
                .filter(|r| STUCK.contains(r))
            else {
                continue;
            };
            let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
            let said = last
                .and_then(|t| t.message.as_deref())
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .or_else(|| waiting.and_then(|w| w.message.as_deref()))
                .unwrap_or("no message");
            let exit = last.map_or(String::new(), |t| format!(" (exit code {})", t.exit_code));
            let (reason, said) = tagged_reason(said).unwrap_or((reason, said));
            return Some(Check::fail(
                reason,
                format!(
                    "{workload}: pod {name}, container {}: {reason}{exit}: {said}",
                    c.name
                ),
            ));
        }
    }
    None
}

/// The condition of `type_` for `check`, keeping `lastTransitionTime` from `existing` when the
/// status did not change.
pub fn condition(
    existing: &[Condition],
    type_: &str,
    check: &Check,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if check.ok { "True" } else { "False" };
    let since = existing
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: check.reason.clone(),
        // Kubernetes caps the message at 32768 bytes; broker errors can be long.
        message: truncate(&check.message, 1024),
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// All four conditions in a fixed order.
pub fn all(
    existing: &[Condition],
    topic: &Check,
    bridge: &Check,
    sink: &Check,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    with_alerts(existing, topic, bridge, sink, None, generation, now)
}

/// [`all`] plus `AlertsReady` (before `Ready`, which then includes it) when the stream has
/// `spec.alerts`.
pub fn with_alerts(
    existing: &[Condition],
    topic: &Check,
    bridge: &Check,
    sink: &Check,
    alerts: Option<&Check>,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut ready = ready(topic, bridge, sink);
    if let Some(a) = alerts
        && ready.ok
        && !a.ok
    {
        ready = Check::fail(&a.reason, a.message.clone());
    }
    let mut list = vec![
        (TOPIC_READY, topic),
        (BRIDGE_READY, bridge),
        (SINK_READY, sink),
    ];
    if let Some(a) = alerts {
        list.push((ALERTS_READY, a));
    }
    list.push((READY, &ready));
    list.into_iter()
        .map(|(t, c)| condition(existing, t, c, generation, now))
        .collect()
}

/// `s` cut to at most `max` bytes plus `…` (at a character boundary).
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentStatus;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn alerts_ready_appears_only_with_alerts_and_counts_for_ready() {
        let ok = Check::ok("ReplicasReady", "ok");
        let bad = Check::fail("AlertsTopicNotReady", "no ACL");
        let without = with_alerts(&[], &ok, &ok, &ok, None, Some(1), t(1));
        assert!(without.iter().all(|c| c.type_ != ALERTS_READY));
        assert_eq!(without, all(&[], &ok, &ok, &ok, Some(1), t(1)));
        let with = with_alerts(&[], &ok, &ok, &ok, Some(&bad), Some(1), t(1));
        let types: Vec<&str> = with.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(
            types,
            [TOPIC_READY, BRIDGE_READY, SINK_READY, ALERTS_READY, READY]
        );
        let ready = with.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "AlertsTopicNotReady")
        );
        let broken_bridge = Check::fail("ReplicasNotReady", "0/1");
        let with = with_alerts(&[], &ok, &broken_bridge, &ok, Some(&bad), Some(1), t(1));
        let ready = with.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(ready.reason, "ReplicasNotReady", "the bridge comes first");
    }

    #[test]
    fn transition_time_is_kept_while_status_is_unchanged() {
        let first = all(
            &[],
            &Check::ok("TopicCreated", "x"),
            &Check::ok("ReplicasReady", "y"),
            &Check::ok("NotConfigured", "z"),
            Some(1),
            t(100),
        );
        // Same statuses, different reason/message, later: times stay.
        let second = all(
            &first,
            &Check::ok("TopicInSync", "x2"),
            &Check::ok("ReplicasReady", "y"),
            &Check::ok("NotConfigured", "z"),
            Some(2),
            t(200),
        );
        assert!(
            second
                .iter()
                .all(|c| c.last_transition_time == Time(t(100)))
        );
        assert_eq!(second[0].reason, "TopicInSync");
        // A real transition moves only the conditions that changed.
        let third = all(
            &second,
            &Check::fail("KafkaUnreachable", "down"),
            &Check::ok("ReplicasReady", "y"),
            &Check::ok("NotConfigured", "z"),
            Some(2),
            t(300),
        );
        assert_eq!(third[0].last_transition_time, Time(t(300)));
        assert_eq!(third[1].last_transition_time, Time(t(100)));
        assert_eq!(third[3].status, "False");
        assert_eq!(third[3].reason, "KafkaUnreachable");
        assert_eq!(third[3].last_transition_time, Time(t(300)));
        // And the same failure again is identical: a status patch would be a no-op.
        let fourth = all(
            &third,
            &Check::fail("KafkaUnreachable", "down"),
            &Check::ok("ReplicasReady", "y"),
            &Check::ok("NotConfigured", "z"),
            Some(2),
            t(400),
        );
        assert_eq!(third, fourth);
    }

    #[test]
    fn ready_names_the_first_failing_step() {
        let r = ready(
            &Check::ok("a", ""),
            &Check::fail("ReplicasNotReady", "1/2"),
            &Check::fail("SecretNotFound", "s"),
        );
        assert_eq!((r.ok, r.reason.as_str()), (false, "ReplicasNotReady"));
        assert!(
            ready(
                &Check::ok("a", ""),
                &Check::ok("b", ""),
                &Check::ok("c", "")
            )
            .ok
        );
    }

    #[test]
    fn workload_readiness() {
        let mut d = Deployment::default();
        d.metadata.generation = Some(2);
        d.status = Some(DeploymentStatus {
            observed_generation: Some(2),
            ready_replicas: Some(2),
            updated_replicas: Some(2),
            ..DeploymentStatus::default()
        });
        assert!(workload("x", 2, Some(&d)).ok);
        assert!(!workload("x", 3, Some(&d)).ok);
        d.status.as_mut().unwrap().observed_generation = Some(1);
        assert!(
            !workload("x", 2, Some(&d)).ok,
            "a rollout in progress is not ready"
        );
        assert!(!workload("x", 1, None).ok);
        assert!(workload("x", 0, None).ok);
    }

    #[test]
    fn long_messages_are_truncated_on_a_char_boundary() {
        let c = condition(&[], READY, &Check::fail("X", "é".repeat(1000)), None, t(1));
        assert!(c.message.len() <= 1024 + '…'.len_utf8());
    }

    fn pod(name: &str, container: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"containerStatuses": [container]}
        }))
        .unwrap()
    }

    #[test]
    fn a_crash_looping_pod_reports_its_termination_message() {
        let starting = pod(
            "sink-a",
            serde_json::json!({"name": "sink", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                "state": {"waiting": {"reason": "ContainerCreating"}}}),
        );
        assert_eq!(
            pod_failure("Deployment telemetry-sink", std::slice::from_ref(&starting)),
            None
        );
        let crashing = pod(
            "sink-b",
            serde_json::json!({"name": "sink", "ready": false, "restartCount": 4, "image": "i", "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
                "lastState": {"terminated": {"exitCode": 1,
                    "message": "error: table telemetry_frames cannot take the sink's rows: column payload is text, expected jsonb\n"}}}),
        );
        let check = pod_failure("Deployment telemetry-sink", &[crashing, starting]).unwrap();
        assert!(!check.ok);
        assert_eq!(check.reason, "CrashLoopBackOff");
        assert_eq!(
            check.message,
            "Deployment telemetry-sink: pod sink-b, container sink: CrashLoopBackOff (exit code 1): error: table telemetry_frames cannot take the sink's rows: column payload is text, expected jsonb"
        );
        // A failure the dataplane tagged keeps its own reason: two streams on one table.
        let taken = pod(
            "sink-c",
            serde_json::json!({"name": "sink", "ready": false, "restartCount": 2, "image": "i", "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1,
                    "message": "[TableOwnedByAnotherStream] error: sink: table frames belongs to stream racing/laps (topic laps)"}}}),
        );
        let check = pod_failure("Deployment telemetry-sink", &[taken]).unwrap();
        assert_eq!(check.reason, "TableOwnedByAnotherStream");
        assert_eq!(
            check.message,
            "Deployment telemetry-sink: pod sink-c, container sink: TableOwnedByAnotherStream (exit code 1): error: sink: table frames belongs to stream racing/laps (topic laps)"
        );
        // An unknown tag is not a reason (reasons are metric labels): the message stays whole.
        let odd = pod(
            "sink-d",
            serde_json::json!({"name": "sink", "ready": false, "restartCount": 2, "image": "i", "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1, "message": "[Whatever] error: x"}}}),
        );
        let check = pod_failure("Deployment telemetry-sink", &[odd]).unwrap();
        assert_eq!(check.reason, "CrashLoopBackOff");
        assert!(
            check.message.ends_with("[Whatever] error: x"),
            "{}",
            check.message
        );
        let pulling = pod(
            "bridge-a",
            serde_json::json!({"name": "bridge", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"x:1\""}}}),
        );
        let check = pod_failure("Deployment b", &[pulling]).unwrap();
        assert_eq!(check.reason, "ImagePullBackOff");
        assert!(
            check
                .message
                .ends_with("ImagePullBackOff: Back-off pulling image \"x:1\""),
            "{}",
            check.message
        );
    }
}
