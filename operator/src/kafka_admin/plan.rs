//! The pure layer: the topic a stream wants ([`DesiredTopic`]), the topic as the broker reports
//! it ([`ClusterView`]), and [`plan_topic`], which compares them without any I/O.
//!
//! Behaviour follows Strimzi's topic operator: create with partitions, replication factor and
//! configs; raise partitions, never lower them; the spec owns every dynamic topic config, so a
//! config changed or added by hand is set back; an unmanaged topic is only checked.

use std::collections::BTreeMap;

use eventstream_crds::EventStream;

use super::port::TopicError;

/// The topic a stream wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredTopic {
    /// Topic name.
    pub name: String,
    /// Partitions.
    pub partitions: i32,
    /// Replication factor; `None` is the broker's default.
    pub replication_factor: Option<i16>,
    /// Every dynamic topic config the spec sets (`retention.ms`, `compression.type`, `topic.config`).
    pub configs: BTreeMap<String, String>,
    /// `false`: only check that the topic exists.
    pub managed: bool,
}

impl DesiredTopic {
    /// The desired topic of `es`.
    pub fn from_stream(es: &EventStream) -> Result<Self, TopicError> {
        let t = &es.spec.topic;
        let mut configs = t.config.clone();
        configs.insert(
            "compression.type".into(),
            t.compression.as_kafka().to_string(),
        );
        if let Some(r) = &t.retention {
            let d = eventstream_crds::duration::parse(r).map_err(|e| TopicError::InvalidSpec {
                message: format!("spec.topic.retention {r:?}: {e}"),
            })?;
            configs.insert("retention.ms".into(), d.as_millis().to_string());
        }
        Ok(Self {
            name: es.topic_name(),
            partitions: t.partitions,
            replication_factor: t.replication_factor,
            configs,
            managed: t.managed,
        })
    }

    /// The sink's dead-letter topic: one partition (dead letters are rare and read in order), the
    /// stream's replication factor and retention. Created when missing, never altered afterwards:
    /// it may be shared by several streams, and its settings are the user's to tune.
    pub fn dead_letters(es: &EventStream) -> Result<Self, TopicError> {
        let stream = Self::from_stream(es)?;
        Ok(Self {
            name: es.dead_letter_topic(),
            partitions: 1,
            replication_factor: stream.replication_factor,
            configs: stream
                .configs
                .into_iter()
                .filter(|(k, _)| k == "retention.ms")
                .collect(),
            managed: stream.managed,
        })
    }

    /// The alerts topic: one partition (alerts are few, and one partition keeps every
    /// transition in the order the evaluator committed it), the stream's replication factor
    /// and retention. Created when missing, never altered afterwards.
    pub fn alerts(es: &EventStream) -> Result<Self, TopicError> {
        let stream = Self::from_stream(es)?;
        Ok(Self {
            name: es.alerts_topic(),
            partitions: 1,
            replication_factor: stream.replication_factor,
            configs: stream
                .configs
                .into_iter()
                .filter(|(k, _)| k == "retention.ms")
                .collect(),
            managed: true,
        })
    }

    /// The evaluator's state topic: one partition, compacted (the last phase of every alert
    /// and the last checkpoint are what a restart needs; older records may go).
    pub fn alerts_state(es: &EventStream) -> Result<Self, TopicError> {
        let stream = Self::from_stream(es)?;
        Ok(Self {
            name: es.alerts_state_topic(),
            partitions: 1,
            replication_factor: stream.replication_factor,
            configs: BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]),
            managed: true,
        })
    }
}

/// The topic as the broker reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedTopic {
    /// Topic name.
    pub name: String,
    /// Partitions.
    pub partitions: i32,
    /// Replicas of partition 0.
    pub replication_factor: i32,
    /// Every config value the broker reports.
    pub configs: BTreeMap<String, String>,
    /// Keys whose value was set on the topic itself (source `DYNAMIC_TOPIC_CONFIG`).
    pub dynamic: Vec<String>,
}

/// The broker's answer to "describe this topic".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// Brokers in the metadata.
    pub brokers: usize,
    /// The topic, when it exists.
    pub topic: Option<ObservedTopic>,
}

/// One config that differs from the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDrift {
    /// Config key.
    pub key: String,
    /// Value on the broker (`None`: default / unset).
    pub observed: Option<String>,
    /// Value in the spec (`None`: not in the spec, the dynamic override is removed).
    pub desired: Option<String>,
}

impl std::fmt::Display for ConfigDrift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "<default>".into());
        write!(
            f,
            "{}: {} → {}",
            self.key,
            show(&self.observed),
            show(&self.desired)
        )
    }
}

/// What has to change on the broker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicPlan {
    /// Create the topic.
    pub create: bool,
    /// Raise the partition count to this.
    pub raise_partitions: Option<i32>,
    /// Configs that differ; non-empty means "alter configs".
    pub drift: Vec<ConfigDrift>,
}

/// Compares the wanted topic with the broker's view. Pure.
pub fn plan_topic(desired: &DesiredTopic, view: &ClusterView) -> Result<TopicPlan, TopicError> {
    let Some(observed) = &view.topic else {
        if !desired.managed {
            return Err(TopicError::NotFound {
                topic: desired.name.clone(),
            });
        }
        if let Some(rf) = desired.replication_factor
            && rf as usize > view.brokers
        {
            return Err(TopicError::ReplicationFactorTooHigh {
                requested: rf,
                brokers: view.brokers,
            });
        }
        return Ok(TopicPlan {
            create: true,
            ..TopicPlan::default()
        });
    };
    if !desired.managed {
        return Ok(TopicPlan::default());
    }
    if desired.partitions < observed.partitions {
        return Err(TopicError::PartitionDecrease {
            topic: desired.name.clone(),
            desired: desired.partitions,
            actual: observed.partitions,
        });
    }
    let mut drift: Vec<ConfigDrift> = desired
        .configs
        .iter()
        .filter(|(k, v)| observed.configs.get(*k) != Some(*v))
        .map(|(k, v)| ConfigDrift {
            key: k.clone(),
            observed: observed.configs.get(k).cloned(),
            desired: Some(v.clone()),
        })
        .collect();
    drift.extend(
        observed
            .dynamic
            .iter()
            .filter(|k| !desired.configs.contains_key(*k))
            .map(|k| ConfigDrift {
                key: k.clone(),
                observed: observed.configs.get(k).cloned(),
                desired: None,
            }),
    );
    Ok(TopicPlan {
        create: false,
        raise_partitions: (desired.partitions > observed.partitions).then_some(desired.partitions),
        drift,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn desired() -> DesiredTopic {
        DesiredTopic {
            name: "t".into(),
            partitions: 3,
            replication_factor: Some(1),
            configs: BTreeMap::from([
                ("compression.type".into(), "lz4".into()),
                ("retention.ms".into(), "604800000".into()),
            ]),
            managed: true,
        }
    }

    fn observed(partitions: i32, configs: &[(&str, &str)], dynamic: &[&str]) -> ClusterView {
        ClusterView {
            brokers: 1,
            topic: Some(ObservedTopic {
                name: "t".into(),
                partitions,
                replication_factor: 1,
                configs: configs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                dynamic: dynamic.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }

    #[test]
    fn missing_topic_is_created_or_reported() {
        let none = ClusterView {
            brokers: 1,
            topic: None,
        };
        assert!(plan_topic(&desired(), &none).unwrap().create);
        let unmanaged = DesiredTopic {
            managed: false,
            ..desired()
        };
        assert_eq!(
            plan_topic(&unmanaged, &none).unwrap_err().reason(),
            "TopicNotFound"
        );
        let big = DesiredTopic {
            replication_factor: Some(3),
            ..desired()
        };
        let err = plan_topic(&big, &none).unwrap_err();
        assert_eq!(err.reason(), "ReplicationFactorTooHigh");
        assert!(err.to_string().contains("has 1 broker"), "{err}");
    }

    #[test]
    fn in_sync_topic_needs_nothing() {
        let view = observed(
            3,
            &[
                ("compression.type", "lz4"),
                ("retention.ms", "604800000"),
                ("segment.ms", "1"),
            ],
            &["compression.type", "retention.ms"],
        );
        assert_eq!(plan_topic(&desired(), &view).unwrap(), TopicPlan::default());
    }

    #[test]
    fn drift_and_foreign_overrides_are_corrected() {
        let view = observed(
            3,
            &[
                ("compression.type", "lz4"),
                ("retention.ms", "1000"),
                ("cleanup.policy", "compact"),
            ],
            &["retention.ms", "cleanup.policy"],
        );
        let plan = plan_topic(&desired(), &view).unwrap();
        assert_eq!(
            plan.drift
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            vec![
                "retention.ms: 1000 → 604800000",
                "cleanup.policy: compact → <default>"
            ]
        );
    }

    #[test]
    fn partitions_grow_but_never_shrink() {
        let view = observed(
            2,
            &[("compression.type", "lz4"), ("retention.ms", "604800000")],
            &[],
        );
        assert_eq!(
            plan_topic(&desired(), &view).unwrap().raise_partitions,
            Some(3)
        );
        let view = observed(5, &[], &[]);
        let err = plan_topic(&desired(), &view).unwrap_err();
        assert_eq!(err.reason(), "PartitionDecreaseRejected");
        assert!(!err.is_transient());
    }

    #[test]
    fn unmanaged_topic_is_only_checked() {
        let unmanaged = DesiredTopic {
            managed: false,
            ..desired()
        };
        assert_eq!(
            plan_topic(&unmanaged, &observed(1, &[], &["x"])).unwrap(),
            TopicPlan::default()
        );
    }

    #[test]
    fn desired_topic_from_spec() {
        let spec: eventstream_crds::EventStreamSpec = serde_yaml::from_str(
            "topic: { partitions: 10, retention: 7d, compression: lz4, config: { cleanup.policy: delete } }",
        )
        .unwrap();
        let mut es = EventStream::new("telemetry", spec);
        es.metadata.namespace = Some("racing".into());
        let d = DesiredTopic::from_stream(&es).unwrap();
        assert_eq!(d.name, "racing.telemetry");
        assert_eq!(d.configs["retention.ms"], "604800000");
        assert_eq!(d.configs["compression.type"], "lz4");
        assert_eq!(d.configs["cleanup.policy"], "delete");
    }
}
