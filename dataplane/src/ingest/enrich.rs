//! Enrichment, with no I/O. Every record gets two Kafka headers, [`HEADER_RECEIVED_AT`] (RFC 3339,
//! milliseconds, UTC) and [`HEADER_INGEST_ID`] (a UUID v7, so ids sort by arrival). The payload
//! is left byte-for-byte as sent unless `ingest.enrich` asks for fields in it; then, for JSON
//! objects only, the fields are spliced in right after the opening `{`, keeping the rest of the
//! client's bytes (key order, spacing) intact. `receivedAtField` and `ingestIdField` overwrite a
//! value the client sent (the server's is the truth); fixed `fields` never overwrite.

use bytes::Bytes;
use eventstream_crds::v1alpha1::EnrichSpec;
use serde_json::Value;
use uuid::Uuid;

/// Kafka header holding the time the bridge received the event.
pub const HEADER_RECEIVED_AT: &str = "receivedAt";
/// Kafka header holding the event's ingest id (UUID v7).
pub const HEADER_INGEST_ID: &str = "ingestId";

/// The per-event values enrichment writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// RFC 3339 time of receipt (one per request: every item of a batch shares it).
    pub received_at: String,
    /// The event's id.
    pub ingest_id: Uuid,
}

impl Stamp {
    /// A stamp for an event received at `received_at`, with a fresh UUID v7.
    pub fn new(received_at: &str) -> Self {
        Self {
            received_at: received_at.to_owned(),
            ingest_id: Uuid::now_v7(),
        }
    }
}

/// The time of receipt as it appears in headers and payloads.
pub fn received_at_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Payload enrichment compiled from `ingest.enrich` (JSON fragments built once).
#[derive(Debug, Clone, Default)]
pub struct Enricher {
    /// `(field name, JSON-escaped "name":)` for the received-at field.
    received_at: Option<(String, String)>,
    /// Same for the ingest-id field.
    ingest_id: Option<(String, String)>,
    /// `(field name, value, complete "name":"value" fragment)` for fixed fields.
    fixed: Vec<(String, String, String)>,
}

impl Enricher {
    /// Compiles `spec` (none: payloads untouched).
    pub fn new(spec: Option<&EnrichSpec>) -> Self {
        let Some(spec) = spec else {
            return Self::default();
        };
        let prefix = |name: &String| (name.clone(), format!("{}:", json_string(name)));
        Self {
            received_at: spec.received_at_field.as_ref().map(prefix),
            ingest_id: spec.ingest_id_field.as_ref().map(prefix),
            fixed: spec
                .fields
                .iter()
                .map(|(k, v)| {
                    let fragment = format!("{}:{}", json_string(k), json_string(v));
                    (k.clone(), v.clone(), fragment)
                })
                .collect(),
        }
    }

    /// Whether payloads are touched at all.
    pub fn is_active(&self) -> bool {
        self.received_at.is_some() || self.ingest_id.is_some() || !self.fixed.is_empty()
    }

    /// The enriched payload: `raw` with the configured fields, when `value` (the parse of
    /// `raw`) is an object and enrichment is configured; `raw` itself otherwise.
    pub fn payload(&self, raw: &Bytes, value: Option<&Value>, stamp: &Stamp) -> Bytes {
        let Some(object) = value.and_then(Value::as_object) else {
            return raw.clone();
        };
        if !self.is_active() {
            return raw.clone();
        }
        let overwrites = [&self.received_at, &self.ingest_id]
            .into_iter()
            .flatten()
            .any(|(name, _)| object.contains_key(name));
        if overwrites {
            return self.rewrite(object, stamp);
        }
        let mut fragments: Vec<String> = Vec::with_capacity(2 + self.fixed.len());
        if let Some((_, prefix)) = &self.received_at {
            fragments.push(format!("{prefix}{}", json_string(&stamp.received_at)));
        }
        if let Some((_, prefix)) = &self.ingest_id {
            fragments.push(format!("{prefix}\"{}\"", stamp.ingest_id));
        }
        for (name, _, fragment) in &self.fixed {
            if !object.contains_key(name) {
                fragments.push(fragment.clone());
            }
        }
        if fragments.is_empty() {
            return raw.clone();
        }
        // `value` parsed from `raw` is an object, so the first non-space byte is `{`.
        let Some(open) = raw.iter().position(|b| *b == b'{') else {
            return raw.clone();
        };
        let inserted = fragments.join(",");
        let mut out = Vec::with_capacity(raw.len() + inserted.len() + 1);
        out.extend_from_slice(&raw[..=open]);
        out.extend_from_slice(inserted.as_bytes());
        if !object.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(&raw[open + 1..]);
        Bytes::from(out)
    }

    /// Re-serialises the object with the fields set (only when the client sent a field the
    /// server owns, so splicing would duplicate a key).
    fn rewrite(&self, object: &serde_json::Map<String, Value>, stamp: &Stamp) -> Bytes {
        let mut object = object.clone();
        if let Some((name, _)) = &self.received_at {
            object.insert(name.clone(), Value::String(stamp.received_at.clone()));
        }
        if let Some((name, _)) = &self.ingest_id {
            object.insert(name.clone(), Value::String(stamp.ingest_id.to_string()));
        }
        for (name, value, _) in &self.fixed {
            if !object.contains_key(name) {
                object.insert(name.clone(), Value::String(value.clone()));
            }
        }
        serde_json::to_vec(&object)
            .map(Bytes::from)
            .unwrap_or_default()
    }
}

fn json_string(s: &str) -> String {
    // Serialising a &str cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stamp() -> Stamp {
        Stamp {
            received_at: "2024-01-01T12:00:00.000Z".into(),
            ingest_id: Uuid::nil(),
        }
    }

    fn spec(received: Option<&str>, id: Option<&str>, fixed: &[(&str, &str)]) -> EnrichSpec {
        EnrichSpec {
            received_at_field: received.map(str::to_owned),
            ingest_id_field: id.map(str::to_owned),
            fields: fixed
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn run(e: &Enricher, raw: &str) -> String {
        let raw = Bytes::copy_from_slice(raw.as_bytes());
        let value: Option<Value> = serde_json::from_slice(&raw).ok();
        String::from_utf8(e.payload(&raw, value.as_ref(), &stamp()).to_vec()).expect("utf8")
    }

    #[test]
    fn untouched_without_config() {
        let e = Enricher::new(None);
        assert!(!e.is_active());
        assert_eq!(run(&e, r#"{ "z":1,  "a":2 }"#), r#"{ "z":1,  "a":2 }"#);
    }

    #[test]
    fn fields_are_spliced_in_front_keeping_client_bytes() {
        let e = Enricher::new(Some(&spec(
            Some("receivedAt"),
            Some("ingestId"),
            &[("source", "web"), ("z", "no")],
        )));
        let got = run(&e, r#" { "z":1,  "a":2 }"#);
        assert_eq!(
            got,
            r#" {"receivedAt":"2024-01-01T12:00:00.000Z","ingestId":"00000000-0000-0000-0000-000000000000","source":"web", "z":1,  "a":2 }"#
        );
        let v: Value = serde_json::from_str(&got).expect("still JSON");
        assert_eq!(v["z"], 1, "fixed fields never overwrite");
        assert_eq!(
            run(&e, "{}").matches(',').count(),
            3,
            "four fields, no trailing comma"
        );
        serde_json::from_str::<Value>(&run(&e, "{}")).expect("JSON");
    }

    #[test]
    fn server_fields_overwrite_client_values() {
        let e = Enricher::new(Some(&spec(Some("receivedAt"), None, &[("k", "v\"q")])));
        let got: Value =
            serde_json::from_str(&run(&e, r#"{"receivedAt":"spoofed","a":1}"#)).expect("JSON");
        assert_eq!(
            got,
            json!({"receivedAt": "2024-01-01T12:00:00.000Z", "a": 1, "k": "v\"q"})
        );
    }

    #[test]
    fn non_objects_are_untouched() {
        let e = Enricher::new(Some(&spec(Some("receivedAt"), None, &[])));
        assert_eq!(run(&e, "[1,2]"), "[1,2]");
        assert_eq!(run(&e, "\"s\""), "\"s\"");
    }

    #[test]
    fn stamps_are_fresh_v7() {
        let a = Stamp::new("t");
        let b = Stamp::new("t");
        assert_ne!(a.ingest_id, b.ingest_id);
        assert_eq!(a.ingest_id.get_version_num(), 7);
        assert!(received_at_now().ends_with('Z'));
    }
}
