//! Topic step: who owns the topic, the Kafka connection (with the Kafka Secret), the topic
//! itself (create, raise partitions, correct configs) and the sink's dead-letter topic. Each
//! step returns what it found as data; Events are published here, conditions are built from
//! the returned [`Check`]s by the status step.

use eventstream_crds::EventStream;
use eventstream_crds::v1alpha1::TopicStatus;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;

use super::context::{Context, key};
use super::{Error, Wait};
use crate::OperatorConfig;
use crate::conditions::{Check, TOPIC_READY};
use crate::kafka_admin::{
    DesiredTopic, KafkaConnection, TopicError, TopicReport, create_if_missing, ensure_topic,
};
use crate::secrets::{self, SecretError};

/// What the topic step found.
#[derive(Debug)]
pub struct TopicOutcome {
    /// `TopicReady`'s check.
    pub check: Check,
    /// `status.topic` (the previous one when Kafka could not be asked).
    pub status: Option<TopicStatus>,
    /// The connection later steps reuse, when Kafka can be talked to.
    pub conn: Option<KafkaConnection>,
    /// How long to wait.
    pub wait: Wait,
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

/// `namespace/name` of the stream that owns `es`'s topic, when it is another one.
pub fn claimed_by_other(es: &EventStream, streams: &Store<EventStream>) -> Option<String> {
    let all = streams.state();
    let owner = topic_owner(&es.topic_name(), all.iter().map(|s| s.as_ref()))?;
    (owner.metadata.uid != es.metadata.uid).then(|| key(owner))
}

/// The stream's bootstrap servers, or the operator's default.
pub fn bootstrap(es: &EventStream, cfg: &OperatorConfig) -> Option<String> {
    es.spec
        .kafka
        .bootstrap_servers
        .clone()
        .or_else(|| cfg.kafka_bootstrap.clone())
}

/// Topic step: claim, Secret, Kafka.
pub async fn topic_step(
    es: &EventStream,
    ctx: &Context,
    bootstrap: String,
) -> Result<TopicOutcome, Error> {
    let topic = es.topic_name();
    let previous = es.status.as_ref().and_then(|s| s.topic.clone());
    let outcome = |check, status, conn, wait| TopicOutcome {
        check,
        status,
        conn,
        wait,
    };
    if let Some(owner) = claimed_by_other(es, &ctx.streams) {
        let e = TopicError::ClaimedByOther { topic, owner };
        return Ok(outcome(
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
            return Ok(outcome(check, previous, None, Wait::User));
        }
    };
    let desired = match DesiredTopic::from_stream(es) {
        Ok(d) => d,
        Err(e) => {
            return Ok(outcome(
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
            Ok(outcome(check, Some(status), Some(conn), Wait::Resync))
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
            Ok(outcome(
                Check::fail(e.reason(), e.to_string()),
                previous,
                Some(conn),
                wait,
            ))
        }
    }
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

/// Creates the dead-letter topic when missing: brokers without auto-creation would refuse the
/// first dead letter and stall the sink, so it exists before the sink runs. `None` when it
/// exists (or was just created).
pub async fn dead_letter_step(
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

/// Creates the alerts topic and the evaluator's compacted state topic when missing (never
/// altered afterwards: the alerts topic is an ordinary stream another EventStream may manage).
/// `None` when both exist (or were just created).
pub async fn alerts_topics_step(
    es: &EventStream,
    ctx: &Context,
    conn: &KafkaConnection,
) -> Option<(Check, Wait)> {
    for desired in [DesiredTopic::alerts(es), DesiredTopic::alerts_state(es)] {
        let result = match desired {
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
                    "AlertsTopicCreated",
                    "CreateTopic",
                    format!(
                        "created the alerts topic {} ({} partitions)",
                        d.name, d.partitions
                    ),
                )
                .await;
            }
            Ok((_, false)) => {}
            Err(e) => {
                let wait = topic_failure(ctx, &e);
                let message = format!("alerts topics of {}: {e}", es.alerts_topic());
                ctx.publish(
                    es,
                    EventType::Warning,
                    "AlertsTopicNotReady",
                    "CreateTopic",
                    message.clone(),
                )
                .await;
                return Some((Check::fail("AlertsTopicNotReady", message), wait));
            }
        }
    }
    None
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
    if let Some(want) = desired.replication_factor
        && i32::from(want) != report.topic.replication_factor
    {
        // Kafka changes a replication factor only by reassigning partitions; the operator does
        // not, so it must never call this topic in sync.
        let msg = format!(
            "topic {name} has replication factor {} but spec.topic.replicationFactor is {want}: \
             Kafka changes it only by a partition reassignment (kafka-reassign-partitions.sh); \
             reassign the partitions, or set the field back to {}",
            report.topic.replication_factor, report.topic.replication_factor
        );
        let reported = es
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == TOPIC_READY))
            .is_some_and(|c| c.reason == REPLICATION_CHANGE && c.message == msg);
        if !reported {
            ctx.publish(
                es,
                EventType::Warning,
                REPLICATION_CHANGE,
                "UpdateTopic",
                msg.clone(),
            )
            .await;
        }
        return Check::ok(REPLICATION_CHANGE, msg);
    }
    Check::ok("TopicInSync", format!("topic {name} matches the spec"))
}

/// `TopicReady` reason (and Event) of a replication factor the broker's topic does not have.
pub const REPLICATION_CHANGE: &str = "ReplicationChangeNeedsReassignment";
