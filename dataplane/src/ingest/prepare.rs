//! From a parsed [`Event`] to a record ready to produce, with no I/O: validation (every failing
//! field), the key, enrichment and headers. One [`Rules`] is compiled per stream at start-up.

use bytes::Bytes;
use eventstream_crds::config::IngestConfig;
use rdkafka::message::{Header, OwnedHeaders};

use super::body::{Event, Parse};
use super::enrich::{Enricher, HEADER_INGEST_ID, HEADER_RECEIVED_AT, Stamp};
use super::key;
use super::metrics::Reason;
use super::reply::{ApiError, Detail};
use super::validate::{Check, Validator};

/// Most field details listed for one event: a pathological event (a huge array, each element
/// failing the schema) must not turn into a response many times its size.
pub const MAX_DETAILS: usize = 100;

/// Kafka header carrying an envelope's `content_type`.
pub const HEADER_CONTENT_TYPE: &str = "content-type";

/// A stream's ingest rules, compiled once.
#[derive(Debug)]
pub struct Rules {
    validator: Validator,
    key_field: Option<String>,
    enricher: Enricher,
}

/// An event that passed every rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// Kafka key.
    pub key: Option<Bytes>,
    /// Kafka value (enriched when configured).
    pub payload: Bytes,
    /// Headers from the envelope (reserved names removed), then `content-type`.
    pub extra_headers: Vec<(String, Bytes)>,
    /// `receivedAt` and `ingestId`.
    pub stamp: Stamp,
}

impl Prepared {
    /// The Kafka headers of the record: the envelope's, then `receivedAt` and `ingestId`.
    pub fn headers(&self) -> OwnedHeaders {
        let mut h = OwnedHeaders::new_with_capacity(self.extra_headers.len() + 2);
        for (k, v) in &self.extra_headers {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_ref()),
            });
        }
        let id = self.stamp.ingest_id.hyphenated().to_string();
        h.insert(Header {
            key: HEADER_RECEIVED_AT,
            value: Some(self.stamp.received_at.as_str()),
        })
        .insert(Header {
            key: HEADER_INGEST_ID,
            value: Some(id.as_str()),
        })
    }
}

/// Why an event is refused: the answer, and the metric reasons (one per failing check).
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The error to answer with.
    pub error: ApiError,
    /// Distinct reasons, for `eventstream_ingest_validation_failures_total`.
    pub reasons: Vec<Reason>,
}

impl From<ApiError> for Rejection {
    fn from(error: ApiError) -> Self {
        let reasons = Reason::of_code(error.code).into_iter().collect();
        Self { error, reasons }
    }
}

impl Rules {
    /// Compiles the rules of `ingest`; the error names what does not compile.
    pub fn new(ingest: &IngestConfig) -> Result<Self, String> {
        Ok(Self {
            validator: Validator::new(&ingest.required_fields, ingest.schema.as_ref())?,
            key_field: ingest.key_field.clone(),
            enricher: Enricher::new(ingest.enrich.as_ref()),
        })
    }

    /// How much of a JSON payload the rules need.
    pub fn parse_mode(&self) -> Parse {
        if self.validator.needs_value() || self.key_field.is_some() || self.enricher.is_active() {
            Parse::Value
        } else {
            Parse::Check
        }
    }

    /// Validates `event` and builds its record; every failing field is listed.
    pub fn prepare(&self, event: Event, received_at: &str) -> Result<Prepared, Rejection> {
        let mut failures: Vec<(Check, Detail)> = Vec::new();
        let mut key = event.key.clone();
        match &event.value {
            Some(value) => {
                self.validator.check(value, &mut failures);
                if key.is_none()
                    && let Some(pointer) = &self.key_field
                {
                    match key::from_value(value, pointer) {
                        Ok(k) => key = Some(Bytes::from(k)),
                        Err(d) => failures.push((Check::Key, d)),
                    }
                }
            }
            None if !event.is_json => {
                let ct = event.content_type.as_deref().unwrap_or_default();
                if !self.validator.is_empty() {
                    failures.push((
                        Check::Schema,
                        Detail::new(
                            "",
                            format!(
                                "this stream validates JSON events; content_type {ct:?} is not JSON"
                            ),
                        ),
                    ));
                }
                if key.is_none()
                    && let Some(pointer) = &self.key_field
                {
                    failures.push((
                        Check::Key,
                        Detail::new(
                            pointer.as_str(),
                            format!("the payload ({ct:?}) is not JSON, so set the envelope's key"),
                        ),
                    ));
                }
            }
            // JSON that was only checked: no rule needs the value.
            None => {}
        }
        if !failures.is_empty() {
            let mut reasons: Vec<Reason> = Vec::new();
            for (check, _) in &failures {
                let r = Reason::of_check(*check);
                if !reasons.contains(&r) {
                    reasons.push(r);
                }
            }
            let total = failures.len();
            let mut details: Vec<Detail> = failures
                .into_iter()
                .take(MAX_DETAILS)
                .map(|(_, d)| d)
                .collect();
            if total > MAX_DETAILS {
                details.push(Detail::new(
                    "",
                    format!("… and {} more failures not listed", total - MAX_DETAILS),
                ));
            }
            return Err(Rejection {
                error: ApiError::validation(details),
                reasons,
            });
        }
        let stamp = Stamp::new(received_at);
        let payload = self
            .enricher
            .payload(&event.payload, event.value.as_ref(), &stamp);
        let mut extra_headers: Vec<(String, Bytes)> = event
            .headers
            .into_iter()
            .filter(|(k, _)| {
                !(k == HEADER_RECEIVED_AT || k == HEADER_INGEST_ID || k == HEADER_CONTENT_TYPE)
            })
            .collect();
        if let Some(ct) = event.content_type {
            extra_headers.push((HEADER_CONTENT_TYPE.to_string(), Bytes::from(ct)));
        }
        Ok(Prepared {
            key,
            payload,
            extra_headers,
            stamp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::body::{Format, parse_single};
    use crate::ingest::reply::ErrorCode;
    use eventstream_proto::prost::Message;
    use eventstream_proto::v1::Envelope;
    use rdkafka::message::Headers;
    use serde_json::json;

    fn rules(yaml: &str) -> Rules {
        let ingest: IngestConfig = serde_yaml::from_str(yaml).expect("ingest config");
        Rules::new(&ingest).expect("rules")
    }

    fn json_event(r: &Rules, text: &str) -> Event {
        parse_single(
            Format::Json,
            Bytes::copy_from_slice(text.as_bytes()),
            r.parse_mode(),
        )
        .expect("parses")
    }

    #[test]
    fn every_failure_is_listed_with_reasons() {
        let r = rules(
            "{ keyField: /userId, requiredFields: [eventType, userId, timestamp], schema: { properties: { timestamp: { type: string } } } }",
        );
        let e = json_event(&r, r#"{"timestamp": 5, "userId": {"id": 1}}"#);
        let err = r.prepare(e, "t").expect_err("invalid");
        assert_eq!(err.error.code, ErrorCode::ValidationFailed);
        let pointers: Vec<&str> = err
            .error
            .details
            .iter()
            .map(|d| d.pointer.as_str())
            .collect();
        assert_eq!(pointers, ["/eventType", "/timestamp", "/userId"]);
        assert_eq!(
            err.reasons,
            [Reason::RequiredField, Reason::Schema, Reason::Key]
        );
    }

    #[test]
    fn details_are_capped() {
        let r = rules("{ schema: { type: array, items: { type: string } } }");
        let items = vec!["1"; 500].join(",");
        let err = r
            .prepare(json_event(&r, &format!("[{items}]")), "t")
            .expect_err("invalid");
        assert_eq!(err.error.details.len(), MAX_DETAILS + 1);
        assert!(err.error.details[MAX_DETAILS].reason.contains("400 more"));
    }

    #[test]
    fn key_headers_and_untouched_payload() {
        let r = rules("{ keyField: /userId, requiredFields: [eventType] }");
        let text = r#"{ "eventType":"click", "userId":"u-1" }"#;
        let p = r
            .prepare(json_event(&r, text), "2024-01-01T00:00:00.000Z")
            .expect("valid");
        assert_eq!(p.key.as_deref(), Some(b"u-1".as_slice()));
        assert_eq!(p.payload.as_ref(), text.as_bytes());
        let h = p.headers();
        assert_eq!(h.count(), 2);
        assert_eq!(h.get(0).key, "receivedAt");
        assert_eq!(h.get(0).value, Some(b"2024-01-01T00:00:00.000Z".as_slice()));
        assert_eq!(h.get(1).key, "ingestId");
        assert_eq!(h.get(1).value.map(<[u8]>::len), Some(36));
    }

    #[test]
    fn no_rules_means_no_parse_and_no_key() {
        let r = rules("{}");
        assert_eq!(r.parse_mode(), Parse::Check);
        let p = r.prepare(json_event(&r, "[1, 2]"), "t").expect("valid");
        assert_eq!(p.key, None);
    }

    #[test]
    fn envelopes_keep_their_key_and_headers() {
        let r = rules("{ keyField: /userId }");
        let env = Envelope {
            key: Some(b"explicit".to_vec()),
            payload: br#"{"userId":"ignored"}"#.to_vec(),
            content_type: "application/json".into(),
            headers: vec![
                eventstream_proto::v1::Header {
                    key: "trace".into(),
                    value: b"t".to_vec(),
                },
                eventstream_proto::v1::Header {
                    key: "ingestId".into(),
                    value: b"spoof".to_vec(),
                },
            ],
            ..Default::default()
        };
        let e = parse_single(Format::Protobuf, env.encode_to_vec().into(), r.parse_mode())
            .expect("parses");
        let p = r.prepare(e, "t").expect("valid");
        assert_eq!(p.key.as_deref(), Some(b"explicit".as_slice()));
        let names: Vec<&str> = p.extra_headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["trace", "content-type"]);
    }

    #[test]
    fn binary_envelopes_need_a_key_and_no_json_rules() {
        let env = Envelope {
            payload: vec![0, 1, 2],
            content_type: "application/octet-stream".into(),
            ..Default::default()
        };
        let bytes: Bytes = env.encode_to_vec().into();
        let open = rules("{}");
        let e = parse_single(Format::Protobuf, bytes.clone(), open.parse_mode()).expect("ok");
        assert!(open.prepare(e, "t").is_ok());
        let strict = rules("{ keyField: /id, requiredFields: [id] }");
        let e = parse_single(Format::Protobuf, bytes, strict.parse_mode()).expect("ok");
        let err = strict.prepare(e, "t").expect_err("refused");
        assert_eq!(err.error.details.len(), 2);
        assert_eq!(err.error.details[1].pointer, "/id");
    }

    #[test]
    fn enrichment_writes_the_same_stamp_as_the_headers() {
        let r = rules("{ enrich: { ingestIdField: id, fields: { src: web } } }");
        let p = r.prepare(json_event(&r, r#"{"a":1}"#), "t").expect("valid");
        let v: serde_json::Value = serde_json::from_slice(&p.payload).expect("json");
        assert_eq!(v["id"], json!(p.stamp.ingest_id.to_string()));
        assert_eq!(v["src"], "web");
        assert_eq!(v["a"], 1);
    }
}
