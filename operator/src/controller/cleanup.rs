//! The cleanup half of the finalizer: the topic (only with `deletionPolicy: Delete`, a managed
//! topic and this stream owning it), its dead-letter topic (unless another stream uses it), the
//! alerts topics (likewise), and the sink's and the evaluator's consumer groups. Child objects go with the stream by owner references.

use std::sync::Arc;

use eventstream_crds::EventStream;
use eventstream_crds::v1alpha1::DeletionPolicy;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use super::Error;
use super::context::{Context, key};
use super::topic::{bootstrap, claimed_by_other};
use crate::kafka_admin::KafkaAdminError;
use crate::secrets::{self, SecretError};
use crate::{FINALIZER, SKIP_KAFKA_CLEANUP_ANNOTATION};

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
    // The alerts topics go with the topic too, unless another stream reads the alerts topic
    // (the usual second EventStream that fans the alerts out).
    let alerts = es.spec.alerts.is_some();
    let alerts_topic = es.alerts_topic();
    let delete_alerts = delete_topic
        && alerts
        && !ctx.streams.state().iter().any(|other| {
            other.metadata.uid != es.metadata.uid && other.topic_name() == alerts_topic
        });
    // The explicit way out of a deletion blocked by an unreachable Kafka: the user says so.
    if es
        .annotations()
        .get(SKIP_KAFKA_CLEANUP_ANNOTATION)
        .is_some_and(|v| v == "true")
    {
        let mut left = vec![format!("topic {topic}")];
        if es.spec.persistence.is_some() {
            left.push(format!("consumer group {}", es.sink_group()));
        }
        if alerts {
            left.push(format!("consumer group {}", es.alerts_group()));
        }
        ctx.publish(
            &es,
            EventType::Warning,
            "KafkaCleanupSkipped",
            "Cleanup",
            format!(
                "{SKIP_KAFKA_CLEANUP_ANNOTATION}: Kafka was not touched; left in Kafka: {}",
                left.join(", ")
            ),
        )
        .await;
        ctx.metrics.forget(&key(&es));
        ctx.succeeded(&es);
        return Ok(Action::await_change());
    }
    let needs_kafka = delete_topic || es.spec.persistence.is_some() || alerts;
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
                if delete_alerts {
                    ctx.kafka.delete_topic(&conn, &alerts_topic).await?;
                    ctx.kafka
                        .delete_topic(&conn, &es.alerts_state_topic())
                        .await?;
                }
                if alerts {
                    ctx.kafka.delete_group(&conn, &es.alerts_group()).await?;
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
            if delete_alerts {
                notes.push(format!(
                    "deleted alerts topics {alerts_topic} and {}",
                    es.alerts_state_topic()
                ));
            }
            if alerts {
                notes.push(format!("deleted consumer group {}", es.alerts_group()));
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
