//! What the evaluator writes: alert events on the alerts topic and state records on the state
//! topic, and reading state records back. Pure encoding; `docs/alerts.md` shows both formats.
//!
//! Both topics are keyed by `<rule>/<key>` (rule names are DNS labels, so the first `/` splits
//! them). The state topic also holds one checkpoint record, key [`CHECKPOINT_KEY`], with the
//! next input offset of every partition: written in the same transaction as the transitions and
//! the state, it is where a restarted evaluator resumes.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::machine::{Phase, Transition};

/// Key of the checkpoint record on the state topic (no rule name starts with `~`).
pub const CHECKPOINT_KEY: &str = "~checkpoint";

/// The Kafka key of an alert's events and state: `<rule>/<key>`.
pub fn record_key(rule: &str, key: &str) -> String {
    format!("{rule}/{key}")
}

/// Splits a [`record_key`] into rule and key.
pub fn split_key(record_key: &str) -> Option<(&str, &str)> {
    record_key.split_once('/')
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Where the triggering record came from.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The stream's topic.
    pub topic: &'a str,
    /// Partition of the record.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
    /// Kafka timestamp of the record, Unix ms.
    pub timestamp: i64,
}

/// An alert event on the alerts topic.
pub struct AlertEvent<'a> {
    /// `namespace/name` of the stream.
    pub stream: &'a str,
    /// Rule name.
    pub rule: &'a str,
    /// Alert key value.
    pub key: &'a str,
    /// Rule severity.
    pub severity: &'a str,
    /// The transition.
    pub transition: Transition,
    /// The record that caused it.
    pub source: Source<'a>,
    /// Its payload.
    pub data: &'a Value,
}

impl AlertEvent<'_> {
    /// The event as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        let body = json!({
            "rule": self.rule,
            "key": self.key,
            "severity": self.severity,
            "state": self.transition.state(),
            "since": rfc3339(self.transition.since()),
            "at": rfc3339(self.source.timestamp),
            "stream": self.stream,
            "source": {
                "topic": self.source.topic,
                "partition": self.source.partition,
                "offset": self.source.offset,
            },
            "data": self.data,
        });
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

/// The value of a state record: the phase, or `None` (a tombstone) for an inactive alert.
pub fn state_value(phase: Option<Phase>) -> Option<Vec<u8>> {
    phase.map(|p| serde_json::to_vec(&p).unwrap_or_default())
}

/// The checkpoint record's value.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// Partition → next offset to read.
    pub positions: BTreeMap<i32, i64>,
}

impl Checkpoint {
    /// As JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A state-topic record, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateRecord {
    /// An alert's phase (`None`: inactive).
    Alert {
        /// Rule name.
        rule: String,
        /// Alert key.
        key: String,
        /// Phase.
        phase: Option<Phase>,
    },
    /// Input positions.
    Checkpoint(Checkpoint),
}

/// Why a state record cannot be read (a foreign writer, or corruption).
#[derive(Debug, thiserror::Error)]
#[error("state record with key {key:?}: {reason}")]
pub struct StateRecordError {
    key: String,
    reason: String,
}

/// Reads a state-topic record.
pub fn read_state(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<StateRecord, StateRecordError> {
    let key = key
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default();
    let error = |reason: String| StateRecordError {
        key: key.clone(),
        reason,
    };
    if key == CHECKPOINT_KEY {
        let value = value.ok_or_else(|| error("a checkpoint without a value".into()))?;
        let checkpoint = serde_json::from_slice(value).map_err(|e| error(e.to_string()))?;
        return Ok(StateRecord::Checkpoint(checkpoint));
    }
    let (rule, alert) = split_key(&key).ok_or_else(|| error("not <rule>/<key>".into()))?;
    let phase = match value {
        None => None,
        Some(v) => Some(serde_json::from_slice(v).map_err(|e| error(e.to_string()))?),
    };
    Ok(StateRecord::Alert {
        rule: rule.to_string(),
        key: alert.to_string(),
        phase,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_event_has_every_documented_field() {
        let data = json!({"serverId": 7, "metrics": {"cpu": 95.5}});
        let event = AlertEvent {
            stream: "ops/metrics",
            rule: "cpu-critical",
            key: "7",
            severity: "critical",
            transition: Transition::Firing {
                since: 1_700_000_000_000,
            },
            source: Source {
                topic: "ops.metrics",
                partition: 2,
                offset: 41,
                timestamp: 1_700_000_060_000,
            },
            data: &data,
        };
        let v: Value = serde_json::from_slice(&event.to_json()).unwrap();
        assert_eq!(
            v,
            json!({
                "rule": "cpu-critical", "key": "7", "severity": "critical", "state": "firing",
                "since": "2023-11-14T22:13:20.000Z", "at": "2023-11-14T22:14:20.000Z",
                "stream": "ops/metrics",
                "source": {"topic": "ops.metrics", "partition": 2, "offset": 41},
                "data": {"serverId": 7, "metrics": {"cpu": 95.5}}
            })
        );
    }

    #[test]
    fn state_records_round_trip() {
        let key = record_key("cpu-critical", "web/7");
        let value = state_value(Some(Phase::Pending { since: 5 }));
        assert_eq!(
            read_state(Some(key.as_bytes()), value.as_deref()).unwrap(),
            StateRecord::Alert {
                rule: "cpu-critical".into(),
                key: "web/7".into(),
                phase: Some(Phase::Pending { since: 5 })
            }
        );
        assert_eq!(
            read_state(Some(key.as_bytes()), None).unwrap(),
            StateRecord::Alert {
                rule: "cpu-critical".into(),
                key: "web/7".into(),
                phase: None
            }
        );
        let checkpoint = Checkpoint {
            positions: BTreeMap::from([(0, 10), (3, 7)]),
        };
        assert_eq!(
            read_state(Some(CHECKPOINT_KEY.as_bytes()), Some(&checkpoint.to_json())).unwrap(),
            StateRecord::Checkpoint(checkpoint)
        );
    }

    #[test]
    fn garbage_state_records_are_errors() {
        assert!(read_state(Some(b"nokey"), Some(b"{}")).is_err());
        assert!(read_state(Some(b"r/k"), Some(b"[1]")).is_err());
        assert!(read_state(Some(CHECKPOINT_KEY.as_bytes()), None).is_err());
        assert!(read_state(None, None).is_err());
    }
}
