//! Ingest metrics, all labelled `stream` (plus bounded `route`, `code`, `reason`), registered
//! once in the process registry. Label sets are resolved at start-up so the request path only
//! touches atomics.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `eventstream_ingest_requests_total` | counter | `stream`, `route` (`produce`, `produce_batch`, `broadcast`), `code` (HTTP status) |
//! | `eventstream_ingest_records_total` | counter | `stream` — records acknowledged by Kafka |
//! | `eventstream_ingest_bytes_total` | counter | `stream` — payload bytes acknowledged by Kafka |
//! | `eventstream_ingest_produce_seconds` | histogram | `stream` — first enqueue to last delivery report of a request |
//! | `eventstream_ingest_validation_failures_total` | counter | `stream`, `reason` |
//! | `eventstream_ingest_producer_queue_messages` | gauge | `stream` — records queued or in flight in the producer |

use axum::http::StatusCode;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::reply::ErrorCode;
use super::validate::Check;

/// The two ingest routes (`route` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /produce`.
    Single,
    /// `POST /produce/batch`.
    Batch,
    /// `POST /broadcast`.
    Broadcast,
}

/// Why an event was refused before producing (`reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Empty body or item.
    EmptyBody,
    /// Not UTF-8.
    InvalidUtf8,
    /// Not JSON, or a batch that is not an array.
    MalformedJson,
    /// Not a protobuf envelope.
    InvalidProtobuf,
    /// A required field is missing.
    RequiredField,
    /// The JSON Schema refused it.
    Schema,
    /// The key field is missing or not a scalar.
    Key,
    /// Over the size or item limit.
    TooLarge,
    /// Unsupported content type.
    UnsupportedMediaType,
}

impl Reason {
    const ALL: [Reason; 9] = [
        Reason::EmptyBody,
        Reason::InvalidUtf8,
        Reason::MalformedJson,
        Reason::InvalidProtobuf,
        Reason::RequiredField,
        Reason::Schema,
        Reason::Key,
        Reason::TooLarge,
        Reason::UnsupportedMediaType,
    ];

    fn label(self) -> &'static str {
        match self {
            Reason::EmptyBody => "empty_body",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::MalformedJson => "malformed_json",
            Reason::InvalidProtobuf => "invalid_protobuf",
            Reason::RequiredField => "required_field",
            Reason::Schema => "schema",
            Reason::Key => "key",
            Reason::TooLarge => "too_large",
            Reason::UnsupportedMediaType => "unsupported_media_type",
        }
    }

    /// The reason of a whole-request or item error, if it is a validation failure.
    pub fn of_code(code: ErrorCode) -> Option<Reason> {
        match code {
            ErrorCode::EmptyBody => Some(Reason::EmptyBody),
            ErrorCode::InvalidUtf8 => Some(Reason::InvalidUtf8),
            ErrorCode::MalformedJson | ErrorCode::InvalidBatch => Some(Reason::MalformedJson),
            ErrorCode::InvalidProtobuf => Some(Reason::InvalidProtobuf),
            ErrorCode::BodyTooLarge | ErrorCode::TooManyItems => Some(Reason::TooLarge),
            ErrorCode::UnsupportedMediaType => Some(Reason::UnsupportedMediaType),
            _ => None,
        }
    }

    /// The reason of a field check.
    pub fn of_check(check: Check) -> Reason {
        match check {
            Check::Required => Reason::RequiredField,
            Check::Schema => Reason::Schema,
            Check::Key => Reason::Key,
        }
    }
}

/// HTTP statuses ingest answers with; anything else is counted as `other`.
const CODES: [u16; 9] = [200, 400, 401, 403, 413, 415, 500, 503, 0];

/// The ingest metrics of one stream.
#[derive(Clone)]
pub struct Metrics {
    requests: [[IntCounter; CODES.len()]; 3],
    /// Records acknowledged.
    pub records: IntCounter,
    /// Payload bytes acknowledged.
    pub bytes: IntCounter,
    /// Produce latency of a request.
    pub produce_seconds: Histogram,
    failures: [IntCounter; Reason::ALL.len()],
    /// Producer queue depth.
    pub queue: IntGauge,
}

impl Metrics {
    /// Creates and registers the metrics of `stream` (`namespace/name`).
    pub fn new(registry: &Registry, stream: &str) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "eventstream_ingest_requests_total",
                "Ingest requests answered, by route and HTTP status.",
            ),
            &["stream", "route", "code"],
        )?;
        let records = IntCounter::with_opts(
            Opts::new(
                "eventstream_ingest_records_total",
                "Records acknowledged by Kafka through ingest.",
            )
            .const_label("stream", stream),
        )?;
        let bytes = IntCounter::with_opts(
            Opts::new(
                "eventstream_ingest_bytes_total",
                "Payload bytes acknowledged by Kafka through ingest.",
            )
            .const_label("stream", stream),
        )?;
        let produce_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "eventstream_ingest_produce_seconds",
                "Time from enqueueing a request's records to the broker's last acknowledgement.",
            )
            .const_label("stream", stream)
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "eventstream_ingest_validation_failures_total",
                "Ingest events or requests refused before producing, by reason.",
            ),
            &["stream", "reason"],
        )?;
        let queue = IntGauge::with_opts(
            Opts::new(
                "eventstream_ingest_producer_queue_messages",
                "Records queued or in flight in the ingest producer.",
            )
            .const_label("stream", stream),
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(records.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(produce_seconds.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(queue.clone()))?;

        let by_code = |route: &str| {
            CODES.map(|code| {
                let label = if code == 0 {
                    "other".to_string()
                } else {
                    code.to_string()
                };
                requests.with_label_values(&[stream, route, label.as_str()])
            })
        };
        Ok(Self {
            requests: [
                by_code("produce"),
                by_code("produce_batch"),
                by_code("broadcast"),
            ],
            records,
            bytes,
            produce_seconds,
            failures: Reason::ALL.map(|r| failures.with_label_values(&[stream, r.label()])),
            queue,
        })
    }

    /// Counts one answered request.
    pub fn request(&self, route: Route, status: StatusCode) {
        let code = status.as_u16();
        let slot = CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(CODES.len() - 1);
        let route = match route {
            Route::Single => 0,
            Route::Batch => 1,
            Route::Broadcast => 2,
        };
        self.requests[route][slot].inc();
    }

    /// Counts one validation failure.
    pub fn failure(&self, reason: Reason) {
        if let Some(i) = Reason::ALL.iter().position(|r| *r == reason) {
            self.failures[i].inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_and_counts() {
        let registry = Registry::new();
        let m = Metrics::new(&registry, "shop/clicks").expect("metrics");
        m.request(Route::Single, StatusCode::OK);
        m.request(Route::Batch, StatusCode::IM_A_TEAPOT);
        m.failure(Reason::Schema);
        let text = crate::telemetry::render(&registry);
        assert!(text.contains(
            r#"eventstream_ingest_requests_total{code="200",route="produce",stream="shop/clicks"} 1"#
        ), "{text}");
        assert!(text.contains(
            r#"eventstream_ingest_requests_total{code="other",route="produce_batch",stream="shop/clicks"} 1"#
        ));
        assert!(text.contains(
            r#"eventstream_ingest_validation_failures_total{reason="schema",stream="shop/clicks"} 1"#
        ));
        // A second registration in the same registry is refused, not silently doubled.
        assert!(Metrics::new(&registry, "shop/clicks").is_err());
    }
}
