//! One Kafka record as the sink holds it, and the poison rule: which records cannot become a row
//! and go to the dead-letter topic instead (I/O-free, unit tested here).

use eventstream_crds::v1alpha1::PayloadFormat;

/// A Kafka record copied out of librdkafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Source partition.
    pub partition: i32,
    /// Offset in that partition.
    pub offset: i64,
    /// Kafka key, if any.
    pub key: Option<Vec<u8>>,
    /// Payload (`None` for a tombstone).
    pub payload: Option<Vec<u8>>,
    /// Headers in wire order (`None` value for a null header).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Record timestamp in milliseconds since the epoch (the receive time when Kafka has none).
    pub timestamp_ms: i64,
}

impl Record {
    /// Bytes the record occupies in a batch (payload, key and headers), for batch size limits.
    pub fn size(&self) -> usize {
        self.payload.as_ref().map_or(0, Vec::len)
            + self.key.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
                .sum::<usize>()
    }
}

/// Why a record cannot be stored. The `as_str` form is the `reason` header of the dead letter
/// and the `reason` label of `eventstream_sink_dead_letters_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoisonReason {
    /// `payload: json` and the payload is not JSON.
    NotJson,
    /// Valid JSON that `jsonb` refuses (a `\u0000` escape inside a string).
    UnsupportedJson,
    /// The payload is larger than the stream's event size limit.
    TooLarge,
    /// The key is not UTF-8 text without NUL characters (the `key` column is `text`).
    KeyNotText,
    /// A header name contains a NUL character (`headers` is `jsonb`).
    HeaderNotStorable,
    /// PostgreSQL refused the row (a constraint or data error of the table).
    RejectedByTable,
    /// `mode: Upsert` and the record has no key to find its row by (no Kafka key, or the
    /// `upsert.keyField` is missing, null, an object or an array).
    NoUpsertKey,
}

impl PoisonReason {
    /// The stable name of the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotJson => "not_json",
            Self::UnsupportedJson => "unsupported_json",
            Self::TooLarge => "too_large",
            Self::KeyNotText => "key_not_text",
            Self::HeaderNotStorable => "header_not_storable",
            Self::RejectedByTable => "rejected_by_table",
            Self::NoUpsertKey => "no_upsert_key",
        }
    }
}

/// A poison verdict: the reason and a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poison {
    /// Machine-readable reason.
    pub reason: PoisonReason,
    /// What exactly is wrong (parser message, size, database message).
    pub detail: String,
}

impl Poison {
    fn new(reason: PoisonReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// A record in a batch: a row to write, or a dead letter to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Goes into the table.
    Row(Record),
    /// Goes to the dead-letter topic.
    Dead(Record, Poison),
}

impl Entry {
    /// The record either way.
    pub fn record(&self) -> &Record {
        match self {
            Self::Row(r) | Self::Dead(r, _) => r,
        }
    }
}

/// Applies the poison rule: a record becomes a row unless its payload is too large, is not
/// (storable) JSON where JSON is required, or its key or header names cannot be stored.
pub fn classify(record: Record, format: PayloadFormat, max_payload_bytes: usize) -> Entry {
    match check(&record, format, max_payload_bytes) {
        Ok(()) => Entry::Row(record),
        Err(poison) => Entry::Dead(record, poison),
    }
}

fn check(record: &Record, format: PayloadFormat, max_payload_bytes: usize) -> Result<(), Poison> {
    if let Some(key) = &record.key {
        match std::str::from_utf8(key) {
            Ok(text) if text.contains('\0') => {
                return Err(Poison::new(
                    PoisonReason::KeyNotText,
                    "the key contains a NUL character",
                ));
            }
            Ok(_) => {}
            Err(e) => {
                return Err(Poison::new(
                    PoisonReason::KeyNotText,
                    format!("the key is not UTF-8: {e}"),
                ));
            }
        }
    }
    if record.headers.iter().any(|(name, _)| name.contains('\0')) {
        return Err(Poison::new(
            PoisonReason::HeaderNotStorable,
            "a header name contains a NUL character",
        ));
    }
    let Some(payload) = &record.payload else {
        return Ok(());
    };
    if payload.len() > max_payload_bytes {
        return Err(Poison::new(
            PoisonReason::TooLarge,
            format!(
                "the payload is {} bytes, the limit is {max_payload_bytes}",
                payload.len()
            ),
        ));
    }
    if format == PayloadFormat::Json {
        check_json(payload)?;
    }
    Ok(())
}

/// Checks that `payload` is JSON that `jsonb` accepts.
fn check_json(payload: &[u8]) -> Result<(), Poison> {
    // IgnoredAny validates the syntax without building a tree: the cheap path for every record.
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(payload) {
        return Err(Poison::new(
            PoisonReason::NotJson,
            format!("the payload is not JSON: {e}"),
        ));
    }
    // jsonb refuses the NUL character in strings; only look closer when the escape appears.
    if memfind(payload, b"\\u0000") {
        let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| {
            Poison::new(
                PoisonReason::NotJson,
                format!("the payload is not JSON: {e}"),
            )
        })?;
        if contains_nul(&value) {
            return Err(Poison::new(
                PoisonReason::UnsupportedJson,
                "the payload contains \\u0000, which PostgreSQL jsonb cannot store",
            ));
        }
    }
    Ok(())
}

fn memfind(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn contains_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(contains_nul),
        serde_json::Value::Object(map) => {
            map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v))
        }
        _ => false,
    }
}

/// The `headers` column value: a JSON object of name → value, where a value is a string (UTF-8
/// without NUL), `{"base64": "…"}` (anything else) or `null`; a repeated name gives an array of
/// its values in wire order. `None` when the record has no headers.
pub fn headers_json(headers: &[(String, Option<Vec<u8>>)]) -> Option<String> {
    use base64::Engine as _;
    if headers.is_empty() {
        return None;
    }
    let mut map = serde_json::Map::new();
    for (name, value) in headers {
        let value = match value {
            None => serde_json::Value::Null,
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) if !text.contains('\0') => serde_json::Value::String(text.to_string()),
                _ => serde_json::json!({
                    "base64": base64::engine::general_purpose::STANDARD.encode(bytes)
                }),
            },
        };
        let count = headers.iter().filter(|(n, _)| n == name).count();
        if count == 1 {
            map.insert(name.clone(), value);
        } else if let Some(serde_json::Value::Array(values)) = map.get_mut(name) {
            values.push(value);
        } else {
            map.insert(name.clone(), serde_json::Value::Array(vec![value]));
        }
    }
    Some(serde_json::Value::Object(map).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(payload: &[u8]) -> Record {
        Record {
            partition: 0,
            offset: 7,
            key: Some(b"k".to_vec()),
            payload: Some(payload.to_vec()),
            headers: vec![],
            timestamp_ms: 0,
        }
    }

    fn reason(entry: &Entry) -> Option<PoisonReason> {
        match entry {
            Entry::Row(_) => None,
            Entry::Dead(_, p) => Some(p.reason),
        }
    }

    #[test]
    fn json_rows_pass() {
        let e = classify(
            record(br#"{"a":1,"b":"\u0001"}"#),
            PayloadFormat::Json,
            1000,
        );
        assert_eq!(reason(&e), None);
    }

    #[test]
    fn non_json_is_poison_unless_binary() {
        let e = classify(record(b"not json"), PayloadFormat::Json, 1000);
        assert_eq!(reason(&e), Some(PoisonReason::NotJson));
        let e = classify(record(b"{\"a\":1} trailing"), PayloadFormat::Json, 1000);
        assert_eq!(reason(&e), Some(PoisonReason::NotJson));
        let e = classify(record(b"not json"), PayloadFormat::Binary, 1000);
        assert_eq!(reason(&e), None);
    }

    #[test]
    fn nul_escape_is_refused_but_escaped_backslash_is_not() {
        let e = classify(record(br#"{"a":"x\u0000y"}"#), PayloadFormat::Json, 1000);
        assert_eq!(reason(&e), Some(PoisonReason::UnsupportedJson));
        let e = classify(record(br#"{"a":"\\u0000"}"#), PayloadFormat::Json, 1000);
        assert_eq!(
            reason(&e),
            None,
            "an escaped backslash followed by u0000 is plain text"
        );
    }

    #[test]
    fn size_limit_applies_to_both_formats() {
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(100));
        assert_eq!(
            reason(&classify(record(big.as_bytes()), PayloadFormat::Json, 50)),
            Some(PoisonReason::TooLarge)
        );
        assert_eq!(
            reason(&classify(record(big.as_bytes()), PayloadFormat::Binary, 50)),
            Some(PoisonReason::TooLarge)
        );
    }

    #[test]
    fn keys_must_be_text() {
        let mut r = record(b"{}");
        r.key = Some(vec![0xff, 0xfe]);
        assert_eq!(
            reason(&classify(r.clone(), PayloadFormat::Json, 100)),
            Some(PoisonReason::KeyNotText)
        );
        r.key = Some(b"a\0b".to_vec());
        assert_eq!(
            reason(&classify(r, PayloadFormat::Json, 100)),
            Some(PoisonReason::KeyNotText)
        );
    }

    #[test]
    fn tombstones_are_rows() {
        let mut r = record(b"");
        r.payload = None;
        assert_eq!(reason(&classify(r, PayloadFormat::Json, 100)), None);
    }

    #[test]
    fn headers_become_a_json_object() {
        assert_eq!(headers_json(&[]), None);
        let h = vec![
            ("trace".to_string(), Some(b"abc".to_vec())),
            ("bin".to_string(), Some(vec![0, 159])),
            ("none".to_string(), None),
            ("rep".to_string(), Some(b"1".to_vec())),
            ("rep".to_string(), Some(b"2".to_vec())),
            ("rep".to_string(), Some(b"3".to_vec())),
        ];
        let v: serde_json::Value =
            serde_json::from_str(&headers_json(&h).expect("some")).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "trace": "abc",
                "bin": {"base64": "AJ8="},
                "none": null,
                "rep": ["1", "2", "3"],
            })
        );
    }

    #[test]
    fn a_repeated_header_whose_value_looks_like_an_array_stays_exact() {
        let h = vec![
            ("a".to_string(), Some(b"x".to_vec())),
            ("a".to_string(), Some(b"y".to_vec())),
        ];
        let v: serde_json::Value =
            serde_json::from_str(&headers_json(&h).expect("some")).expect("json");
        assert_eq!(v, serde_json::json!({"a": ["x", "y"]}));
    }
}
