//! Request bodies into events, with no I/O: the content type decides the framing (one JSON
//! value, a JSON array, NDJSON lines, one protobuf `Envelope` or a stream of length-delimited
//! `Envelope`s), and every event comes out with its raw payload bytes untouched.
//!
//! JSON payloads are parsed into a [`Value`] only when something needs the value
//! ([`Parse::Value`]: required fields, schema, key, payload enrichment); otherwise they are only
//! checked for well-formedness ([`Parse::Check`]), which allocates nothing.

use std::ops::Range;

use bytes::Bytes;
use eventstream_proto::prost::Message;
use eventstream_proto::v1::Envelope;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::reply::{ApiError, ErrorCode};

/// The framing of a request body, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/json`: one value (`/produce`) or an array (`/produce/batch`).
    Json,
    /// `application/x-ndjson`, `application/ndjson`, `application/jsonl`: one value per line
    /// (`/produce/batch` only).
    Ndjson,
    /// `application/x-protobuf`, `application/protobuf`: one `Envelope` (`/produce`) or
    /// varint-length-delimited `Envelope`s (`/produce/batch`).
    Protobuf,
}

/// The format of a `Content-Type` value, or why it is refused (415).
pub fn format_of(content_type: Option<&str>, batch: bool) -> Result<Format, ApiError> {
    let Some(value) = content_type else {
        return Err(unsupported("the request has no Content-Type", batch));
    };
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    let format = if essence.eq_ignore_ascii_case("application/json") {
        Format::Json
    } else if essence.eq_ignore_ascii_case("application/x-protobuf")
        || essence.eq_ignore_ascii_case("application/protobuf")
    {
        Format::Protobuf
    } else if batch
        && (essence.eq_ignore_ascii_case("application/x-ndjson")
            || essence.eq_ignore_ascii_case("application/ndjson")
            || essence.eq_ignore_ascii_case("application/jsonl"))
    {
        Format::Ndjson
    } else {
        return Err(unsupported(&format!("Content-Type {essence:?}"), batch));
    };
    for param in parts {
        if let Some((name, charset)) = param.split_once('=')
            && name.trim().eq_ignore_ascii_case("charset")
        {
            let charset = charset.trim().trim_matches('"');
            if !(charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8")) {
                return Err(ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    format!("charset {charset:?} is not supported: send UTF-8"),
                ));
            }
        }
    }
    Ok(format)
}

fn unsupported(what: &str, batch: bool) -> ApiError {
    let accepted = if batch {
        "application/json (an array), application/x-ndjson or application/x-protobuf (length-delimited Envelopes)"
    } else {
        "application/json or application/x-protobuf (an Envelope)"
    };
    ApiError::new(
        ErrorCode::UnsupportedMediaType,
        format!("{what} is not supported here: send {accepted}"),
    )
}

/// How much of a JSON payload to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse {
    /// Only check that it is JSON.
    Check,
    /// Keep the parsed value.
    Value,
}

/// One event out of a body, before validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The payload exactly as sent (a slice of the body for JSON framings).
    pub payload: Bytes,
    /// Whether the payload is JSON (always for JSON framings; for envelopes, by content type).
    pub is_json: bool,
    /// The parsed payload, with [`Parse::Value`] and a JSON payload.
    pub value: Option<Value>,
    /// The envelope's key (`None` for JSON framings: the key comes from `ingest.keyField`).
    pub key: Option<Bytes>,
    /// The envelope's headers.
    pub headers: Vec<(String, Bytes)>,
    /// The envelope's `content_type`, when set.
    pub content_type: Option<String>,
}

impl Event {
    fn json(payload: Bytes, value: Option<Value>) -> Self {
        Self {
            payload,
            is_json: true,
            value,
            key: None,
            headers: Vec::new(),
            content_type: None,
        }
    }
}

/// The body of `/produce`: exactly one event, or why not.
pub fn parse_single(format: Format, body: Bytes, parse: Parse) -> Result<Event, ApiError> {
    if body.is_empty() {
        return Err(ApiError::new(ErrorCode::EmptyBody, "the body is empty"));
    }
    match format {
        Format::Json | Format::Ndjson => {
            check_utf8(&body)?;
            let value = parse_json(&body, parse)?;
            Ok(Event::json(body, value))
        }
        Format::Protobuf => {
            let envelope = Envelope::decode(body).map_err(|e| {
                ApiError::new(
                    ErrorCode::InvalidProtobuf,
                    format!("the body is not an eventstream.v1.Envelope: {e}"),
                )
            })?;
            from_envelope(envelope, parse)
        }
    }
}

/// One item of a batch: the event, or why the item is invalid (the batch is then refused).
pub type BatchItem = Result<Event, ApiError>;

/// The body of `/produce/batch`: one entry per item, or why the body as a whole is refused.
/// At most `max_items` items (413 past it).
pub fn parse_batch(
    format: Format,
    body: Bytes,
    parse: Parse,
    max_items: usize,
) -> Result<Vec<BatchItem>, ApiError> {
    if body.is_empty() {
        return Err(ApiError::new(ErrorCode::EmptyBody, "the body is empty"));
    }
    let items = match format {
        Format::Json => {
            check_utf8(&body)?;
            let ranges = split_array(&body, max_items)?;
            ranges
                .into_iter()
                .map(|r| {
                    let slice = body.slice(r);
                    parse_json(&slice, parse).map(|v| Event::json(slice, v))
                })
                .collect()
        }
        Format::Ndjson => {
            check_utf8(&body)?;
            let mut items = Vec::new();
            let mut start = 0;
            for line in body.split(|&b| b == b'\n') {
                let range = trim(&body, start..start + line.len());
                start += line.len() + 1;
                if range.is_empty() {
                    continue;
                }
                if items.len() == max_items {
                    return Err(too_many(max_items));
                }
                let slice = body.slice(range);
                items.push(parse_json(&slice, parse).map(|v| Event::json(slice, v)));
            }
            items
        }
        Format::Protobuf => {
            let mut buf = body;
            let mut items = Vec::new();
            while !buf.is_empty() {
                if items.len() == max_items {
                    return Err(too_many(max_items));
                }
                let envelope = Envelope::decode_length_delimited(&mut buf).map_err(|e| {
                    ApiError::new(
                        ErrorCode::InvalidProtobuf,
                        format!(
                            "envelope #{} is not a length-delimited eventstream.v1.Envelope: {e}",
                            items.len()
                        ),
                    )
                })?;
                items.push(from_envelope(envelope, parse));
            }
            items
        }
    };
    if items.is_empty() {
        return Err(ApiError::new(
            ErrorCode::EmptyBody,
            "the batch has no items",
        ));
    }
    Ok(items)
}

fn too_many(max: usize) -> ApiError {
    ApiError::new(
        ErrorCode::TooManyItems,
        format!("a batch holds at most {max} items (ingest.maxBatchItems)"),
    )
}

fn check_utf8(bytes: &[u8]) -> Result<(), ApiError> {
    std::str::from_utf8(bytes).map(|_| ()).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidUtf8,
            format!("the body is not valid UTF-8 (at byte {})", e.valid_up_to()),
        )
    })
}

fn parse_json(bytes: &[u8], parse: Parse) -> Result<Option<Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(ErrorCode::EmptyBody, "the event is empty"));
    }
    let malformed = |e: serde_json::Error| {
        ApiError::new(
            ErrorCode::MalformedJson,
            format!("the event is not JSON: {e}"),
        )
    };
    match parse {
        Parse::Check => serde_json::from_slice::<IgnoredAny>(bytes)
            .map(|_| None)
            .map_err(malformed),
        Parse::Value => serde_json::from_slice::<Value>(bytes)
            .map(Some)
            .map_err(malformed),
    }
}

/// Whether an envelope's content type says JSON (`application/json`, `…+json`); an empty one
/// is taken as JSON, the API's default.
fn is_json_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.is_empty()
        || essence.eq_ignore_ascii_case("application/json")
        || essence.to_ascii_lowercase().ends_with("+json")
}

fn from_envelope(envelope: Envelope, parse: Parse) -> Result<Event, ApiError> {
    let is_json = is_json_type(&envelope.content_type);
    let payload = Bytes::from(envelope.payload);
    let value = if is_json {
        if payload.is_empty() {
            return Err(ApiError::new(
                ErrorCode::EmptyBody,
                "the envelope's payload is empty (set content_type for non-JSON payloads)",
            ));
        }
        std::str::from_utf8(&payload).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidUtf8,
                format!(
                    "the envelope's JSON payload is not valid UTF-8 (at byte {})",
                    e.valid_up_to()
                ),
            )
        })?;
        parse_json(&payload, parse)?
    } else {
        None
    };
    Ok(Event {
        payload,
        is_json,
        value,
        key: envelope.key.map(Bytes::from),
        headers: envelope
            .headers
            .into_iter()
            .map(|h| (h.key, Bytes::from(h.value)))
            .collect(),
        content_type: (!envelope.content_type.is_empty()).then_some(envelope.content_type),
    })
}

fn trim(bytes: &[u8], mut range: Range<usize>) -> Range<usize> {
    while range.start < range.end && bytes[range.start].is_ascii_whitespace() {
        range.start += 1;
    }
    while range.end > range.start && bytes[range.end - 1].is_ascii_whitespace() {
        range.end -= 1;
    }
    range
}

/// The byte ranges of the elements of the JSON array in `bytes`, found by tracking strings and
/// nesting depth only: each element is then parsed on its own, so one malformed item is
/// reported as that item, and each payload stays byte-for-byte what the client sent.
fn split_array(bytes: &[u8], max_items: usize) -> Result<Vec<Range<usize>>, ApiError> {
    let not_array = || {
        ApiError::new(
            ErrorCode::InvalidBatch,
            "a JSON batch must be an array of events: [{…}, {…}]",
        )
    };
    let malformed = |at: usize, what: &str| {
        ApiError::new(
            ErrorCode::MalformedJson,
            format!("the batch is not a well-formed JSON array: {what} at byte {at}"),
        )
    };
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .ok_or_else(not_array)?;
    if bytes[start] != b'[' {
        return Err(not_array());
    }
    let mut ranges = Vec::new();
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut item_start = start + 1;
    let mut end = None;
    for (i, &b) in bytes.iter().enumerate().skip(start + 1) {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => depth += 1,
            b']' | b'}' if depth > 0 => depth -= 1,
            b',' | b']' if depth == 0 => {
                let range = trim(bytes, item_start..i);
                if range.is_empty() {
                    // `[]` is an empty batch; `[1,,2]` or `[1,]` is malformed.
                    if b == b']' && ranges.is_empty() {
                        end = Some(i);
                        break;
                    }
                    return Err(malformed(i, "an empty element"));
                }
                if ranges.len() == max_items {
                    return Err(too_many(max_items));
                }
                ranges.push(range);
                item_start = i + 1;
                if b == b']' {
                    end = Some(i);
                    break;
                }
            }
            b'}' => return Err(malformed(i, "an unbalanced '}'")),
            _ => {}
        }
    }
    let Some(end) = end else {
        return Err(malformed(bytes.len(), "no closing ']'"));
    };
    if let Some(extra) = bytes[end + 1..]
        .iter()
        .position(|b| !b.is_ascii_whitespace())
    {
        return Err(malformed(
            end + 1 + extra,
            "trailing characters after the array",
        ));
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventstream_proto::v1::Header;
    use serde_json::json;

    fn code<T: std::fmt::Debug>(r: Result<T, ApiError>) -> ErrorCode {
        r.expect_err("must fail").code
    }

    #[test]
    fn content_types() {
        assert_eq!(format_of(Some("application/json"), false), Ok(Format::Json));
        assert_eq!(
            format_of(Some("Application/JSON; charset=UTF-8"), false),
            Ok(Format::Json)
        );
        assert_eq!(
            format_of(Some("application/x-protobuf"), false),
            Ok(Format::Protobuf)
        );
        assert_eq!(
            format_of(Some("application/x-ndjson"), true),
            Ok(Format::Ndjson)
        );
        for (ct, batch) in [
            (None, false),
            (Some("text/plain"), false),
            (Some("application/x-ndjson"), false),
            (Some("application/x-www-form-urlencoded"), true),
            (Some("application/json; charset=latin1"), false),
        ] {
            assert_eq!(
                code(format_of(ct, batch)),
                ErrorCode::UnsupportedMediaType,
                "{ct:?}"
            );
        }
    }

    #[test]
    fn single_json_keeps_bytes() {
        let body = Bytes::from_static(br#" {"a": 1} "#);
        let e = parse_single(Format::Json, body.clone(), Parse::Value).expect("ok");
        assert_eq!(e.payload, body);
        assert_eq!(e.value, Some(json!({"a": 1})));
        let e = parse_single(Format::Json, body, Parse::Check).expect("ok");
        assert_eq!(e.value, None);
    }

    #[test]
    fn single_json_errors() {
        let cases: [(&[u8], ErrorCode); 5] = [
            (b"", ErrorCode::EmptyBody),
            (b"   ", ErrorCode::EmptyBody),
            (b"{\"a\":", ErrorCode::MalformedJson),
            (b"{\"a\":1} x", ErrorCode::MalformedJson),
            (b"{\"a\":\"\xff\"}", ErrorCode::InvalidUtf8),
        ];
        for (body, want) in cases {
            let got = parse_single(Format::Json, Bytes::copy_from_slice(body), Parse::Check);
            assert_eq!(code(got), want, "{body:?}");
        }
    }

    #[test]
    fn array_split_is_exact() {
        let body =
            Bytes::from_static(br#" [ {"a":"x,]}"} , [1,[2]] ,"s\"]" ,3 , {"b":{"c":[]}} ] "#);
        let items = parse_batch(Format::Json, body, Parse::Value, 10).expect("ok");
        let payloads: Vec<&[u8]> = items
            .iter()
            .map(|i| i.as_ref().expect("item").payload.as_ref())
            .collect();
        assert_eq!(
            payloads,
            [
                br#"{"a":"x,]}"}"#.as_slice(),
                b"[1,[2]]",
                br#""s\"]""#,
                b"3",
                br#"{"b":{"c":[]}}"#
            ]
        );
    }

    #[test]
    fn array_errors() {
        let cases: [(&[u8], ErrorCode); 8] = [
            (b"[]", ErrorCode::EmptyBody),
            (b"{\"a\":1}", ErrorCode::InvalidBatch),
            (b"[1,2", ErrorCode::MalformedJson),
            (b"[1,,2]", ErrorCode::MalformedJson),
            (b"[1,2,]", ErrorCode::MalformedJson),
            (b"[1}]", ErrorCode::MalformedJson),
            (b"[1] [2]", ErrorCode::MalformedJson),
            (b"[1,2,3,4]", ErrorCode::TooManyItems),
        ];
        for (body, want) in cases {
            let got = parse_batch(Format::Json, Bytes::copy_from_slice(body), Parse::Check, 3);
            assert_eq!(code(got), want, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn bad_items_are_reported_per_item() {
        let body = Bytes::from_static(br#"[{"a":1}, {"a":}, tru]"#);
        let items = parse_batch(Format::Json, body, Parse::Check, 10).expect("ok");
        assert!(items[0].is_ok());
        assert_eq!(
            items[1].as_ref().expect_err("bad").code,
            ErrorCode::MalformedJson
        );
        assert_eq!(
            items[2].as_ref().expect_err("bad").code,
            ErrorCode::MalformedJson
        );
    }

    #[test]
    fn ndjson_lines() {
        let body = Bytes::from_static(b"{\"a\":1}\r\n\n  {\"a\":2}\nnope\n");
        let items = parse_batch(Format::Ndjson, body, Parse::Value, 10).expect("ok");
        assert_eq!(items.len(), 3);
        assert_eq!(
            items[0].as_ref().expect("ok").payload.as_ref(),
            b"{\"a\":1}"
        );
        assert_eq!(items[1].as_ref().expect("ok").value, Some(json!({"a": 2})));
        assert!(items[2].is_err());
        let body = Bytes::from_static(b"1\n2\n3\n");
        assert_eq!(
            code(parse_batch(Format::Ndjson, body, Parse::Check, 2)),
            ErrorCode::TooManyItems
        );
        let body = Bytes::from_static(b"\n\n");
        assert_eq!(
            code(parse_batch(Format::Ndjson, body, Parse::Check, 2)),
            ErrorCode::EmptyBody
        );
    }

    fn envelope(payload: &[u8], content_type: &str, key: Option<&[u8]>) -> Envelope {
        Envelope {
            key: key.map(<[u8]>::to_vec),
            payload: payload.to_vec(),
            content_type: content_type.into(),
            headers: vec![Header {
                key: "trace".into(),
                value: b"t1".to_vec(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn protobuf_single_and_batch() {
        let e = envelope(br#"{"a":1}"#, "application/json", Some(b"k"));
        let got =
            parse_single(Format::Protobuf, e.encode_to_vec().into(), Parse::Value).expect("ok");
        assert!(got.is_json);
        assert_eq!(got.key.as_deref(), Some(b"k".as_slice()));
        assert_eq!(got.value, Some(json!({"a": 1})));
        assert_eq!(
            got.headers,
            [("trace".to_string(), Bytes::from_static(b"t1"))]
        );

        let binary = envelope(&[0, 159, 146, 150], "application/octet-stream", None);
        let got = parse_single(
            Format::Protobuf,
            binary.encode_to_vec().into(),
            Parse::Value,
        )
        .expect("binary payloads pass through");
        assert!(!got.is_json);
        assert_eq!(got.value, None);

        let mut body = Vec::new();
        for e in [
            envelope(b"1", "", None),
            envelope(b"{bad", "application/json", None),
            binary,
        ] {
            e.encode_length_delimited(&mut body).expect("encode");
        }
        let items = parse_batch(Format::Protobuf, body.into(), Parse::Check, 10).expect("ok");
        assert_eq!(items.len(), 3);
        assert!(items[0].is_ok());
        assert_eq!(
            items[1].as_ref().expect_err("bad").code,
            ErrorCode::MalformedJson
        );
        assert!(items[2].is_ok());
    }

    #[test]
    fn protobuf_garbage_is_refused() {
        let got = parse_single(
            Format::Protobuf,
            Bytes::from_static(b"\xff\xff\xff"),
            Parse::Check,
        );
        assert_eq!(code(got), ErrorCode::InvalidProtobuf);
        let got = parse_batch(
            Format::Protobuf,
            Bytes::from_static(b"\x05ab"),
            Parse::Check,
            9,
        );
        assert_eq!(code(got), ErrorCode::InvalidProtobuf);
        let empty_json = envelope(b"", "application/json", None);
        let got = parse_single(
            Format::Protobuf,
            empty_json.encode_to_vec().into(),
            Parse::Check,
        );
        assert_eq!(code(got), ErrorCode::EmptyBody);
    }
}
