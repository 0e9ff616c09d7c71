//! Subscription filters: a CEL predicate a client attaches to a subscription
//! (`{"type":"subscribe","channel":"server-7","filter":"data.cpu > 90.0"}`), compiled once when
//! it subscribes and evaluated once per record and *distinct* filter (the hub groups the
//! subscribers of a channel by filter text), never once per subscriber.
//!
//! Variables (`docs/protocol.md`): `data` (the payload: JSON as CEL values, text as a string,
//! anything else as bytes), `key` (string, bytes when not UTF-8, `null` when absent), `headers`
//! (a map of string to string; values that are not UTF-8 as bytes), `partition`, `offset`
//! (ints) and `timestamp` (the Kafka timestamp in milliseconds, `null` when absent).
//!
//! A filter that does not compile, is too long or too costly is refused at subscribe time
//! ([`ErrorCode::InvalidFilter`]). A record on which evaluation fails (a missing field, another
//! type) is not delivered and is counted ([`FilterCounters`]); it never produces an error frame.

use std::collections::HashMap;
use std::sync::Arc;

use super::protocol::{ErrorCode, ProtocolError};
use super::record::{PayloadKind, Record};
use crate::cel::{self, Activation, Expression, Limits, Value};

/// A compiled subscription filter, shared by every subscriber that wrote the same text.
#[derive(Debug)]
pub struct Filter {
    expression: Expression,
}

impl Filter {
    /// Compiles `source` with the default [`Limits`]; a refusal is an `invalid_filter` error on
    /// `channel`.
    pub fn compile(channel: &str, source: &str) -> Result<Arc<Self>, ProtocolError> {
        Expression::compile(source, &Limits::default())
            .map(|expression| Arc::new(Self { expression }))
            .map_err(|e| ProtocolError::on(ErrorCode::InvalidFilter, channel, e.to_string()))
    }

    /// The text as the client wrote it (the hub's grouping key).
    pub fn source(&self) -> &Arc<str> {
        self.expression.source()
    }

    /// Whether `record` passes, given its variables.
    pub fn evaluate(&self, activation: &Activation) -> Outcome {
        match self.expression.matches(activation) {
            Ok(true) => Outcome::Match,
            Ok(false) => Outcome::Drop,
            Err(e) => {
                tracing::trace!(filter = %self.source(), error = %e, "filter evaluation failed");
                Outcome::Failed
            }
        }
    }
}

/// What a filter made of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Deliver it.
    Match,
    /// The filter is false: not delivered.
    Drop,
    /// Evaluation failed: not delivered, counted.
    Failed,
}

impl Outcome {
    /// Whether the record is delivered.
    pub fn delivers(self) -> bool {
        self == Outcome::Match
    }
}

/// The variables of `record`, converted once (see the module docs).
pub fn activation(record: &Record) -> Activation {
    let mut a = Activation::new();
    let data = match record.kind {
        PayloadKind::Json => match serde_json::from_slice::<serde_json::Value>(&record.payload) {
            Ok(json) => cel::json_value(&json),
            Err(_) => Value::Null,
        },
        PayloadKind::Text => Value::String(Arc::new(
            String::from_utf8_lossy(&record.payload).into_owned(),
        )),
        PayloadKind::Binary => Value::Bytes(Arc::new(record.payload.to_vec())),
    };
    let key = match record.key.as_deref() {
        None => Value::Null,
        Some(k) => text_or_bytes(k),
    };
    let headers: HashMap<String, Value> = record
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), text_or_bytes(v)))
        .collect();
    a.set("data", data)
        .set("key", key)
        .set("headers", Value::Map(headers.into()))
        .set("partition", Value::Int(i64::from(record.partition)))
        .set("offset", Value::Int(record.offset))
        .set(
            "timestamp",
            record.timestamp_ms.map(Value::Int).unwrap_or(Value::Null),
        );
    a
}

fn text_or_bytes(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => Value::String(Arc::new(s.to_owned())),
        Err(_) => Value::Bytes(Arc::new(bytes.to_vec())),
    }
}

pub use super::metrics::FilterCounters;

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record(payload: &[u8], key: Option<&[u8]>) -> Record {
        Record::new(
            2,
            41,
            Some(1_700_000_000_000),
            key.map(Bytes::copy_from_slice),
            Bytes::copy_from_slice(payload),
            vec![("region".into(), Bytes::from_static(b"eu"))],
            Some("server-7".into()),
            PayloadKind::of(payload),
        )
    }

    fn outcome(filter: &str, r: &Record) -> Outcome {
        Filter::compile("c", filter)
            .expect("compiles")
            .evaluate(&activation(r))
    }

    #[test]
    fn every_variable_is_bound() {
        let r = record(br#"{"cpu": 95.5, "region": "eu"}"#, Some(b"server-7"));
        for f in [
            "data.cpu > 90.0 && data.region == 'eu'",
            "key == 'server-7'",
            "headers.region == 'eu'",
            "partition == 2 && offset == 41",
            "timestamp == 1700000000000",
            "has(data.cpu) && !has(data.mem)",
        ] {
            assert_eq!(outcome(f, &r), Outcome::Match, "{f}");
        }
        assert_eq!(outcome("data.cpu < 50", &r), Outcome::Drop);
        assert_eq!(outcome("data.mem > 1", &r), Outcome::Failed);
        assert_eq!(outcome("data.region > 1", &r), Outcome::Failed);
    }

    #[test]
    fn text_binary_and_missing_keys_have_defined_values() {
        let r = record(b"plain text", None);
        assert_eq!(
            outcome("data == 'plain text' && key == null", &r),
            Outcome::Match
        );
        let r = record(&[0xff, 0x00], Some(&[0xfe]));
        assert_eq!(
            outcome("data == b'\\xff\\x00' && key == b'\\xfe'", &r),
            Outcome::Match
        );
        assert_eq!(outcome("data.cpu > 1", &r), Outcome::Failed);
    }

    #[test]
    fn invalid_filters_are_invalid_filter_errors_on_the_channel() {
        let err = Filter::compile("server-7", "data.cpu >").expect_err("syntax");
        assert_eq!(err.code, ErrorCode::InvalidFilter);
        assert_eq!(err.channel.as_deref(), Some("server-7"));
        assert!(!err.message.is_empty());
    }
}
