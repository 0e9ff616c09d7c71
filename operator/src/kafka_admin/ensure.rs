//! The topic step: ties the pure plan to the port. [`ensure_topic`] brings the stream's topic to
//! the spec; [`create_if_missing`] only creates (the dead-letter topic, which is never altered).

use super::connection::KafkaConnection;
use super::plan::{ConfigDrift, DesiredTopic, ObservedTopic, plan_topic};
use super::port::{KafkaAdmin, KafkaAdminError, TopicError};

/// The outcome of [`ensure_topic`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicReport {
    /// The topic was created now.
    pub created: bool,
    /// Partitions were raised from this count.
    pub raised_from: Option<i32>,
    /// Configs set back to the spec.
    pub corrected: Vec<ConfigDrift>,
    /// The topic after the changes.
    pub topic: ObservedTopic,
}

/// Creates `desired` when it does not exist (`managed: false`: only checks that it exists).
/// Returns whether it was created. An existing topic is left exactly as it is.
pub async fn create_if_missing(
    admin: &dyn KafkaAdmin,
    conn: &KafkaConnection,
    desired: &DesiredTopic,
) -> Result<bool, TopicError> {
    let view = admin.describe(conn, &desired.name).await?;
    if view.topic.is_some() {
        return Ok(false);
    }
    // Missing: the plan is "create", or why not (unmanaged, too many replicas).
    plan_topic(desired, &view)?;
    create(admin, conn, desired).await?;
    Ok(true)
}

/// CreateTopics, with the broker's refusal as [`TopicError::CreateFailed`].
async fn create(
    admin: &dyn KafkaAdmin,
    conn: &KafkaConnection,
    desired: &DesiredTopic,
) -> Result<(), TopicError> {
    admin
        .create_topic(conn, desired)
        .await
        .map_err(|e| match e {
            KafkaAdminError::Refused { message, .. } => TopicError::CreateFailed {
                topic: desired.name.clone(),
                message,
            },
            other => other.into(),
        })
}

/// Brings the topic to the desired state: create, raise partitions, set configs. Returns what
/// changed so the caller can emit Events.
pub async fn ensure_topic(
    admin: &dyn KafkaAdmin,
    conn: &KafkaConnection,
    desired: &DesiredTopic,
) -> Result<TopicReport, TopicError> {
    let view = admin.describe(conn, &desired.name).await?;
    let plan = plan_topic(desired, &view)?;
    if plan.create {
        create(admin, conn, desired).await?;
    }
    let mut raised_from = None;
    if let (Some(to), Some(observed)) = (plan.raise_partitions, &view.topic) {
        admin
            .create_partitions(conn, &desired.name, to)
            .await
            .map_err(|e| match e {
                KafkaAdminError::Refused { message, .. } => TopicError::PartitionIncreaseFailed {
                    topic: desired.name.clone(),
                    from: observed.partitions,
                    to,
                    message,
                },
                other => other.into(),
            })?;
        raised_from = Some(observed.partitions);
    }
    if !plan.drift.is_empty() {
        let remove: Vec<String> = plan
            .drift
            .iter()
            .filter(|d| d.desired.is_none())
            .map(|d| d.key.clone())
            .collect();
        admin
            .set_topic_configs(conn, &desired.name, &desired.configs, &remove)
            .await
            .map_err(|e| match e {
                KafkaAdminError::Refused { message, .. } => TopicError::ConfigRejected {
                    topic: desired.name.clone(),
                    message,
                },
                other => other.into(),
            })?;
    }
    let changed = plan.create || raised_from.is_some() || !plan.drift.is_empty();
    let topic = if changed {
        // Report what the broker says after the change, not what we asked for.
        match admin.describe(conn, &desired.name).await?.topic {
            Some(t) => t,
            None => {
                return Err(TopicError::CreateFailed {
                    topic: desired.name.clone(),
                    message: "the broker acknowledged the creation but does not list the topic"
                        .into(),
                });
            }
        }
    } else {
        view.topic.unwrap_or_default()
    };
    Ok(TopicReport {
        created: plan.create,
        raised_from,
        corrected: if plan.create { Vec::new() } else { plan.drift },
        topic,
    })
}
