//! Current-state tables (`mode: Upsert`, I/O-free): the key of each record, which of two records
//! of a key is the newer one, and the reduction of a batch to the newest record per key.
//!
//! **Which record wins.** Within one partition Kafka's order is the truth: the higher offset is
//! newer (it is the order the producer wrote and every consumer, the WebSocket clients included,
//! saw). Records of one key are in one partition as long as the partition count stays; after a
//! partition increase a key's records move to another partition, and for a while (producers with
//! older metadata) both may receive them. Offsets of two partitions cannot be compared, so there
//! the later Kafka timestamp wins, and of two equal timestamps the higher partition (the newer
//! partition after an increase). [`newer`] is the rule; the SQL `WHERE` of the upsert is the
//! same rule, so a replayed or late record never replaces a newer row.

use std::borrow::Cow;
use std::collections::HashMap;

use eventstream_crds::v1alpha1::{Tombstones, UpsertSpec};
use serde_json::Value;

use super::record::{Poison, PoisonReason, Record};

/// A record's place in the order of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    /// Kafka partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Kafka timestamp, milliseconds.
    pub timestamp_ms: i64,
}

impl Version {
    /// The version of `record`.
    pub fn of(record: &Record) -> Self {
        Self {
            partition: record.partition,
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
        }
    }
}

/// Whether `candidate` replaces `current`: the higher offset in the same partition; across
/// partitions the later timestamp, then the higher partition. See the [module docs](self).
pub fn newer(candidate: &Version, current: &Version) -> bool {
    if candidate.partition == current.partition {
        candidate.offset > current.offset
    } else {
        (candidate.timestamp_ms, candidate.partition) > (current.timestamp_ms, current.partition)
    }
}

/// The SQL form of [`newer`]: whether the row `candidate` replaces the row `current` (two table
/// aliases with `partition`, `offset` and `ts` columns).
pub fn newer_sql(candidate: &str, current: &str) -> String {
    format!(
        "(({c}.\"partition\" = {o}.\"partition\" AND {c}.\"offset\" > {o}.\"offset\") \
         OR ({c}.\"partition\" <> {o}.\"partition\" AND ({c}.ts, {c}.\"partition\") > ({o}.ts, {o}.\"partition\")))",
        c = candidate,
        o = current
    )
}

/// The row key of `record`: the value at `key_field` in the payload, or the Kafka key. A
/// tombstone (no payload) is always found by its Kafka key.
pub fn key_of<'a>(record: &'a Record, key_field: Option<&str>) -> Result<Cow<'a, str>, Poison> {
    let kafka_key = || match record.key.as_deref().map(std::str::from_utf8) {
        // The poison rule already refused keys that are not UTF-8 text.
        Some(Ok(text)) => Ok(Cow::Borrowed(text)),
        Some(Err(_)) | None => Err(Poison {
            reason: PoisonReason::NoUpsertKey,
            detail: if record.payload.is_none() {
                "a tombstone without a Kafka key names no row".into()
            } else {
                "the record has no Kafka key, which is the upsert key (set ingest.keyField or persistence.postgres.upsert.keyField)".into()
            },
        }),
    };
    let (Some(pointer), Some(payload)) = (key_field, record.payload.as_deref()) else {
        return kafka_key();
    };
    let value: Value = serde_json::from_slice(payload).map_err(|e| Poison {
        reason: PoisonReason::NotJson,
        detail: format!("the payload is not JSON: {e}"),
    })?;
    let text = match value.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Object(_) | Value::Array(_)) => {
            return Err(Poison {
                reason: PoisonReason::NoUpsertKey,
                detail: format!(
                    "the upsert key {pointer} is an object or array; it must be a string, number or boolean"
                ),
            });
        }
        Some(Value::Null) | None => {
            return Err(Poison {
                reason: PoisonReason::NoUpsertKey,
                detail: format!("the upsert key {pointer} is missing or null"),
            });
        }
    };
    if text.contains('\0') {
        return Err(Poison {
            reason: PoisonReason::KeyNotText,
            detail: format!("the upsert key {pointer} contains a NUL character"),
        });
    }
    Ok(Cow::Owned(text))
}

/// One change to the table: an upsert (the record has a payload) or a delete (a tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change<'a> {
    /// The row key.
    pub key: Cow<'a, str>,
    /// The newest record of the key in the batch.
    pub record: &'a Record,
}

/// A batch reduced to its changes.
#[derive(Debug, Default)]
pub struct Reduced<'a> {
    /// One change per key, in the order the keys first appeared.
    pub changes: Vec<Change<'a>>,
    /// Records without a usable key.
    pub poison: Vec<(&'a Record, Poison)>,
    /// Records replaced by a newer record of their key in the same batch.
    pub superseded: u64,
    /// Tombstones left alone (`tombstones: Ignore`).
    pub ignored_tombstones: u64,
}

/// Reduces `records` (in batch order) to the newest record per key, as applying them one by one
/// with [`newer`] would leave the table: `INSERT … ON CONFLICT DO UPDATE` may touch a row only
/// once per statement.
pub fn reduce<'a>(records: &[&'a Record], spec: &UpsertSpec) -> Reduced<'a> {
    let mut out = Reduced::default();
    let mut at: HashMap<Cow<'a, str>, usize> = HashMap::with_capacity(records.len());
    for record in records.iter().copied() {
        if record.payload.is_none() && spec.tombstones == Tombstones::Ignore {
            out.ignored_tombstones += 1;
            continue;
        }
        let key = match key_of(record, spec.key_field.as_deref()) {
            Ok(key) => key,
            Err(poison) => {
                out.poison.push((record, poison));
                continue;
            }
        };
        match at.get(&key) {
            Some(&i) => {
                out.superseded += 1;
                let held = &mut out.changes[i];
                if newer(&Version::of(record), &Version::of(held.record)) {
                    held.record = record;
                }
            }
            None => {
                at.insert(key.clone(), out.changes.len());
                out.changes.push(Change { key, record });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(partition: i32, offset: i64, ts: i64, key: &str, payload: Option<&str>) -> Record {
        Record {
            partition,
            offset,
            key: Some(key.as_bytes().to_vec()),
            payload: payload.map(|p| p.as_bytes().to_vec()),
            headers: vec![],
            timestamp_ms: ts,
        }
    }

    fn v(partition: i32, offset: i64, ts: i64) -> Version {
        Version {
            partition,
            offset,
            timestamp_ms: ts,
        }
    }

    #[test]
    fn within_a_partition_the_offset_decides_whatever_the_timestamps_say() {
        assert!(newer(&v(0, 6, 100), &v(0, 5, 900)));
        assert!(!newer(&v(0, 5, 900), &v(0, 6, 100)));
        assert!(
            !newer(&v(0, 5, 100), &v(0, 5, 100)),
            "a replay is not newer"
        );
    }

    #[test]
    fn across_partitions_the_timestamp_then_the_partition_decides() {
        assert!(newer(&v(3, 0, 200), &v(0, 90, 100)));
        assert!(!newer(&v(0, 91, 100), &v(3, 0, 200)));
        assert!(
            newer(&v(3, 0, 100), &v(0, 90, 100)),
            "tie: higher partition"
        );
        assert!(!newer(&v(0, 91, 100), &v(3, 0, 100)));
    }

    #[test]
    fn the_sql_rule_names_both_cases() {
        let sql = newer_sql("n", "o");
        assert!(sql.contains(r#"n."partition" = o."partition" AND n."offset" > o."offset""#));
        assert!(sql.contains(r#"(n.ts, n."partition") > (o.ts, o."partition")"#));
    }

    #[test]
    fn keys_come_from_the_kafka_key_or_the_payload() {
        let r = rec(0, 0, 0, "k1", Some(r#"{"id":"a","n":7,"b":true,"o":{}}"#));
        assert_eq!(key_of(&r, None).ok().as_deref(), Some("k1"));
        assert_eq!(key_of(&r, Some("/id")).ok().as_deref(), Some("a"));
        assert_eq!(key_of(&r, Some("/n")).ok().as_deref(), Some("7"));
        assert_eq!(key_of(&r, Some("/b")).ok().as_deref(), Some("true"));
        for missing in ["/o", "/nope"] {
            let e = key_of(&r, Some(missing)).expect_err("no key");
            assert_eq!(e.reason, PoisonReason::NoUpsertKey, "{missing}");
            assert!(e.detail.contains(missing), "{}", e.detail);
        }
        let mut keyless = r.clone();
        keyless.key = None;
        assert_eq!(
            key_of(&keyless, None).map_err(|p| p.reason),
            Err(PoisonReason::NoUpsertKey)
        );
        // A tombstone has no payload: its Kafka key names the row even with a keyField.
        let t = rec(0, 1, 0, "k1", None);
        assert_eq!(key_of(&t, Some("/id")).ok().as_deref(), Some("k1"));
        let nul = rec(0, 0, 0, "k", Some(r#"{"id":"a\u0000b"}"#));
        assert_eq!(
            key_of(&nul, Some("/id")).map_err(|p| p.reason),
            Err(PoisonReason::KeyNotText)
        );
    }

    #[test]
    fn a_batch_keeps_the_newest_record_of_each_key() {
        let records = [
            rec(0, 0, 10, "a", Some("1")),
            rec(0, 1, 11, "b", Some("1")),
            rec(0, 2, 5, "a", Some("2")),
            rec(1, 0, 4, "a", Some("older, other partition")),
            rec(1, 1, 50, "b", None),
        ];
        let refs: Vec<&Record> = records.iter().collect();
        let r = reduce(&refs, &UpsertSpec::default());
        let got: Vec<(&str, i32, i64)> = r
            .changes
            .iter()
            .map(|c| (c.key.as_ref(), c.record.partition, c.record.offset))
            .collect();
        assert_eq!(got, [("a", 0, 2), ("b", 1, 1)]);
        assert_eq!(r.superseded, 3);
        assert!(r.poison.is_empty());
    }

    #[test]
    fn ignored_tombstones_change_nothing() {
        let records = [rec(0, 0, 1, "a", Some("1")), rec(0, 1, 2, "a", None)];
        let refs: Vec<&Record> = records.iter().collect();
        let spec = UpsertSpec {
            key_field: None,
            tombstones: Tombstones::Ignore,
        };
        let r = reduce(&refs, &spec);
        assert_eq!(r.changes.len(), 1);
        assert_eq!(r.changes[0].record.offset, 0);
        assert_eq!(r.ignored_tombstones, 1);
    }

    #[test]
    fn records_without_a_key_are_poison_and_the_rest_is_kept() {
        let records = [
            rec(0, 0, 1, "a", Some(r#"{"id":"x"}"#)),
            rec(0, 1, 2, "a", Some(r#"{"other":1}"#)),
        ];
        let refs: Vec<&Record> = records.iter().collect();
        let spec = UpsertSpec {
            key_field: Some("/id".into()),
            tombstones: Tombstones::Delete,
        };
        let r = reduce(&refs, &spec);
        assert_eq!(r.changes.len(), 1);
        assert_eq!(r.poison.len(), 1);
        assert_eq!(r.poison[0].0.offset, 1);
    }
}
