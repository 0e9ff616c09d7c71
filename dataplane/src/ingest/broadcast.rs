//! `POST /broadcast` (seed 003's shape: `{"topic": "ops", "message": {…}}`), pure parts: the
//! body check and the record's headers. A broadcast is produced to the stream's topic like any
//! event, with no key, its body as the value, and the
//! [`HEADER_BROADCAST`](crate::relay::record::HEADER_BROADCAST) marker besides `receivedAt` and
//! `ingestId`; every bridge replica reading the topic sends it to every connected client as a
//! `broadcast` frame (`docs/protocol.md`). Ingest rules (required fields, schema, key) do not
//! apply: a broadcast is an operator's message, not a stream event.

use rdkafka::message::{Header, OwnedHeaders};
use serde_json::Value;

use super::enrich::{HEADER_INGEST_ID, HEADER_RECEIVED_AT, Stamp};
use super::reply::{ApiError, Detail, ErrorCode};
use crate::relay::record::HEADER_BROADCAST;

/// Checks a broadcast body: a JSON object with a `message` (any JSON value) and, optionally, a
/// string `topic` (a label for clients; it routes nothing).
pub fn check(body: &[u8]) -> Result<(), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(ErrorCode::EmptyBody, "the body is empty"));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorCode::MalformedJson,
            format!("the body is not JSON: {e}"),
        )
    })?;
    let Value::Object(fields) = value else {
        return Err(ApiError::validation(vec![Detail::new(
            "",
            "a broadcast is a JSON object: {\"topic\": \"…\", \"message\": …}",
        )]));
    };
    let mut details = Vec::new();
    if !fields.contains_key("message") {
        details.push(Detail::new("/message", "required field is missing"));
    }
    if let Some(topic) = fields.get("topic")
        && !topic.is_string()
    {
        details.push(Detail::new("/topic", "must be a string"));
    }
    if details.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(details))
    }
}

/// The Kafka headers of a broadcast: the marker, `receivedAt` and `ingestId`.
pub fn headers(stamp: &Stamp) -> OwnedHeaders {
    let id = stamp.ingest_id.hyphenated().to_string();
    OwnedHeaders::new_with_capacity(3)
        .insert(Header {
            key: HEADER_BROADCAST,
            value: Some("1"),
        })
        .insert(Header {
            key: HEADER_RECEIVED_AT,
            value: Some(stamp.received_at.as_str()),
        })
        .insert(Header {
            key: HEADER_INGEST_ID,
            value: Some(id.as_str()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    #[test]
    fn seed_shaped_bodies_pass_and_garbage_is_named() {
        assert_eq!(
            check(br#"{"topic":"test","message":{"hello":"world"}}"#),
            Ok(())
        );
        assert_eq!(check(br#"{"message":"maintenance at 22:00"}"#), Ok(()));
        assert_eq!(check(b"  ").map_err(|e| e.code), Err(ErrorCode::EmptyBody));
        assert_eq!(
            check(b"{").map_err(|e| e.code),
            Err(ErrorCode::MalformedJson)
        );
        assert_eq!(
            check(b"[1]").map_err(|e| e.code),
            Err(ErrorCode::ValidationFailed)
        );
        let err = check(br#"{"topic":7}"#).expect_err("invalid");
        assert_eq!(err.code, ErrorCode::ValidationFailed);
        let pointers: Vec<&str> = err.details.iter().map(|d| d.pointer.as_str()).collect();
        assert_eq!(pointers, ["/message", "/topic"]);
    }

    #[test]
    fn the_marker_is_a_header() {
        let h = headers(&Stamp::new("2026-01-01T00:00:00.000Z"));
        let keys: Vec<&str> = h.iter().map(|h| h.key).collect();
        assert_eq!(
            keys,
            [HEADER_BROADCAST, HEADER_RECEIVED_AT, HEADER_INGEST_ID]
        );
    }
}
