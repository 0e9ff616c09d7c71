//! The answers of the ingest API: stable error codes with their HTTP status, and the JSON bodies
//! of successes and failures. The codes are a public contract (documented in `docs/ingest.md`):
//! clients match on `error.code`, never on `error.message`.

use std::borrow::Cow;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use uuid::Uuid;

/// Every error an ingest request can get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 400: the body (or a batch item) is empty.
    EmptyBody,
    /// 400: the body is not valid UTF-8.
    InvalidUtf8,
    /// 400: the body (or an item) is not JSON.
    MalformedJson,
    /// 400: the body could not be read (the client broke off).
    BodyUnreadable,
    /// 400: a `/produce/batch` JSON body that is not an array.
    InvalidBatch,
    /// 400: the body is not a protobuf `Envelope` (or a stream of them).
    InvalidProtobuf,
    /// 400: the event fails required fields, the schema or the key.
    ValidationFailed,
    /// 401: no token, or a token that does not verify.
    Unauthorized,
    /// 403: a valid token without the publish claim.
    Forbidden,
    /// 413: the body is larger than the configured limit.
    BodyTooLarge,
    /// 413: the batch has more items than the configured limit.
    TooManyItems,
    /// 415: a content type ingest does not take.
    UnsupportedMediaType,
    /// 503: the producer's queue is full; retry after `Retry-After`.
    QueueFull,
    /// 503: the broker refused or could not be reached; retry after `Retry-After`.
    BrokerUnavailable,
    /// 503: no acknowledgement within `ingest.produceTimeout`; retry after `Retry-After`.
    ProduceTimeout,
    /// 503: the process is shutting down.
    ShuttingDown,
    /// 500: an unexpected failure of the producer.
    Internal,
}

impl ErrorCode {
    /// The stable machine-readable code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::EmptyBody => "empty_body",
            ErrorCode::InvalidUtf8 => "invalid_utf8",
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::BodyUnreadable => "body_unreadable",
            ErrorCode::InvalidBatch => "invalid_batch",
            ErrorCode::InvalidProtobuf => "invalid_protobuf",
            ErrorCode::ValidationFailed => "validation_failed",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::TooManyItems => "too_many_items",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::BrokerUnavailable => "broker_unavailable",
            ErrorCode::ProduceTimeout => "produce_timeout",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal_error",
        }
    }

    /// The HTTP status of a request failing with this code.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::EmptyBody
            | ErrorCode::InvalidUtf8
            | ErrorCode::MalformedJson
            | ErrorCode::BodyUnreadable
            | ErrorCode::InvalidBatch
            | ErrorCode::InvalidProtobuf
            | ErrorCode::ValidationFailed => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::BodyTooLarge | ErrorCode::TooManyItems => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::QueueFull
            | ErrorCode::BrokerUnavailable
            | ErrorCode::ProduceTimeout
            | ErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Seconds for `Retry-After` on 503 answers.
    pub fn retry_after(self) -> Option<&'static str> {
        match self {
            ErrorCode::QueueFull => Some("1"),
            ErrorCode::BrokerUnavailable | ErrorCode::ProduceTimeout | ErrorCode::ShuttingDown => {
                Some("5")
            }
            _ => None,
        }
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One failing field: where (a JSON pointer into the event; `""` is the whole event) and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detail {
    /// JSON pointer of the failing field.
    pub pointer: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Detail {
    /// A detail about `pointer`.
    pub fn new(pointer: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            reason: reason.into(),
        }
    }
}

/// The `error` object of every failure body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiError {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable explanation; not stable.
    pub message: Cow<'static, str>,
    /// Every failing field, for `validation_failed`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<Detail>,
}

impl ApiError {
    /// An error without field details.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// A `validation_failed` error listing `details`.
    pub fn validation(details: Vec<Detail>) -> Self {
        let message = match details.len() {
            1 => "1 field is invalid".to_string(),
            n => format!("{n} fields are invalid"),
        };
        Self {
            code: ErrorCode::ValidationFailed,
            message: message.into(),
            details,
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a ApiError,
}

/// The body of a `/produce` 200.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Produced {
    /// Partition the event was written to.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// The `ingestId` header given to the record.
    pub ingest_id: Uuid,
}

/// What happened to one item of a batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ItemResult {
    /// In Kafka.
    #[serde(rename_all = "camelCase")]
    Accepted {
        /// Position of the item in the request (0-based).
        index: usize,
        /// Partition written to.
        partition: i32,
        /// Offset there.
        offset: i64,
        /// The record's `ingestId` header.
        ingest_id: Uuid,
    },
    /// The item itself is invalid; nothing of the batch was produced.
    Rejected {
        /// Position of the item.
        index: usize,
        /// Why.
        error: ApiError,
    },
    /// The item is valid but was not produced because other items are invalid.
    Skipped {
        /// Position of the item.
        index: usize,
    },
    /// The item is valid but the broker did not acknowledge it (503).
    Failed {
        /// Position of the item.
        index: usize,
        /// Why.
        error: ApiError,
    },
}

impl ItemResult {
    /// Whether the item is in Kafka.
    pub fn is_accepted(&self) -> bool {
        matches!(self, ItemResult::Accepted { .. })
    }
}

/// The body of every `/produce/batch` answer that got as far as items.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchReport {
    /// Items now in Kafka.
    pub accepted: usize,
    /// Items not in Kafka (`rejected`, `skipped` or `failed`).
    pub rejected: usize,
    /// One result per item, in request order.
    pub results: Vec<ItemResult>,
    /// Why the batch is not a 200.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

impl BatchReport {
    /// A report over `results`, with the overall error when any item is not accepted.
    pub fn new(results: Vec<ItemResult>, error: Option<ApiError>) -> Self {
        let accepted = results.iter().filter(|r| r.is_accepted()).count();
        Self {
            accepted,
            rejected: results.len() - accepted,
            results,
            error,
        }
    }
}

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A JSON response with `status`.
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, APPLICATION_JSON)], bytes).into_response(),
        // Our bodies are plain structs with string keys: this does not happen.
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The response of a failed request: `{"error": …}` with its status and, on 503,
/// `Retry-After`; on 401, `WWW-Authenticate`.
pub fn error(err: &ApiError) -> Response {
    with_error_headers(err.code, json(err.code.status(), &ErrorBody { error: err }))
}

/// A batch answer with `status` (and `Retry-After` when `code` asks for it).
pub fn batch(status: StatusCode, report: &BatchReport) -> Response {
    let response = json(status, report);
    match &report.error {
        Some(e) => with_error_headers(e.code, response),
        None => response,
    }
}

fn with_error_headers(code: ErrorCode, mut response: Response) -> Response {
    if let Some(secs) = code.retry_after() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
    }
    if code == ErrorCode::Unauthorized {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"eventstream\""),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_body_shape() {
        let e = ApiError::validation(vec![Detail::new("/userId", "required field is missing")]);
        let v = serde_json::to_value(ErrorBody { error: &e }).expect("json");
        assert_eq!(
            v,
            json!({"error": {"code": "validation_failed", "message": "1 field is invalid",
                "details": [{"pointer": "/userId", "reason": "required field is missing"}]}})
        );
        let e = ApiError::new(ErrorCode::BodyTooLarge, "too big");
        let v = serde_json::to_value(ErrorBody { error: &e }).expect("json");
        assert_eq!(
            v,
            json!({"error": {"code": "body_too_large", "message": "too big"}})
        );
    }

    #[test]
    fn batch_report_counts_and_tags() {
        let id = Uuid::nil();
        let report = BatchReport::new(
            vec![
                ItemResult::Accepted {
                    index: 0,
                    partition: 1,
                    offset: 7,
                    ingest_id: id,
                },
                ItemResult::Skipped { index: 1 },
            ],
            None,
        );
        assert_eq!((report.accepted, report.rejected), (1, 1));
        let v = serde_json::to_value(&report).expect("json");
        assert_eq!(v["results"][0]["status"], "accepted");
        assert_eq!(v["results"][0]["ingestId"], id.to_string());
        assert_eq!(v["results"][1], json!({"status": "skipped", "index": 1}));
        assert!(v.get("error").is_none());
    }

    #[test]
    fn statuses_and_retry_after() {
        assert_eq!(
            ErrorCode::QueueFull.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(ErrorCode::QueueFull.retry_after(), Some("1"));
        assert_eq!(ErrorCode::ValidationFailed.retry_after(), None);
        assert_eq!(
            ErrorCode::TooManyItems.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let r = error(&ApiError::new(ErrorCode::ProduceTimeout, "slow"));
        assert_eq!(r.headers()[header::RETRY_AFTER], "5");
        let r = error(&ApiError::new(ErrorCode::Unauthorized, "no"));
        assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}
