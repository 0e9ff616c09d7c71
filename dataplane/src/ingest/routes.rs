//! The HTTP adapter: `POST /produce`, `POST /produce/batch` and `POST /broadcast`, with CORS and security headers.
//!
//! Order of work per request, cheapest refusal first: shutting down (503) → auth (401/403, before
//! reading anything) → content type (415) → declared length (413, before reading) → body read
//! with a hard limit (413) → parse (400) → every rule (400) → produce and wait for the broker's
//! acknowledgement (200, or 503 with `Retry-After`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tower_http::cors::CorsLayer;

use super::Shared;
use super::body::{self, Format};
use super::enrich::received_at_now;
use super::metrics::Route;
use super::prepare::{Prepared, Rejection};
use super::producer::{Outgoing, Producer};
use super::reply::{self, ApiError, BatchReport, ErrorCode, ItemResult, Produced};
use crate::auth::JwtVerifier;

/// How much of an oversized body is read and discarded before answering 413, so that the
/// client reads the answer instead of a connection reset.
const DRAIN_MAX_BYTES: usize = 16 * 1024 * 1024;
/// How long draining an oversized body may take.
const DRAIN_MAX_TIME: Duration = Duration::from_secs(2);

/// The ingest routes over `shared`.
pub fn router(shared: Arc<Shared>, cors: Option<CorsLayer>) -> Router {
    let mut router = Router::new()
        .route("/produce", post(produce))
        .route("/produce/batch", post(produce_batch))
        .route("/broadcast", post(broadcast))
        .with_state(shared);
    if let Some(cors) = cors {
        router = router.layer(cors);
    }
    router.layer(axum::middleware::map_response(
        crate::cross_origin::security_headers,
    ))
}

async fn produce(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let response = match produce_one(&shared, request).await {
        Ok(response) => response,
        Err(rejection) => {
            shared.count_rejection(&rejection);
            reply::error(&rejection.error)
        }
    };
    shared.metrics.request(Route::Single, response.status());
    response
}

async fn produce_batch(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let response = match produce_many(&shared, request).await {
        Ok(response) => response,
        Err(rejection) => {
            shared.count_rejection(&rejection);
            reply::error(&rejection.error)
        }
    };
    shared.metrics.request(Route::Batch, response.status());
    response
}

async fn broadcast(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let response = match broadcast_one(&shared, request).await {
        Ok(response) => response,
        Err(rejection) => {
            shared.count_rejection(&rejection);
            reply::error(&rejection.error)
        }
    };
    shared.metrics.request(Route::Broadcast, response.status());
    response
}

/// `POST /broadcast`: the same admission, limits and durability as `/produce` (200 only once
/// the broker acknowledged), a JSON body only, checked by [`super::broadcast::check`].
async fn broadcast_one(shared: &Shared, request: Request) -> Result<Response, Rejection> {
    let (parts, body) = request.into_parts();
    admit(shared, &parts.headers)?;
    if content_type(&parts.headers, false)? != Format::Json {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "a broadcast is application/json",
        )
        .into());
    }
    let bytes = read_body(body, &parts.headers, shared.max_body_bytes).await?;
    super::broadcast::check(&bytes)?;
    let stamp = super::enrich::Stamp::new(&received_at_now());
    let started = Instant::now();
    let delivery = shared.producer.send(Outgoing {
        key: None,
        payload: &bytes,
        headers: super::broadcast::headers(&stamp),
    })?;
    let deadline = tokio::time::Instant::now() + shared.produce_timeout;
    let result = Producer::delivered(delivery, deadline).await;
    shared
        .metrics
        .produce_seconds
        .observe(started.elapsed().as_secs_f64());
    shared.update_queue_depth();
    let (partition, offset) = result?;
    shared.metrics.records.inc();
    shared.metrics.bytes.inc_by(bytes.len() as u64);
    Ok(reply::json(
        StatusCode::OK,
        &Produced {
            partition,
            offset,
            ingest_id: stamp.ingest_id,
        },
    ))
}

async fn produce_one(shared: &Shared, request: Request) -> Result<Response, Rejection> {
    let (parts, body) = request.into_parts();
    admit(shared, &parts.headers)?;
    let format = content_type(&parts.headers, false)?;
    let bytes = read_body(body, &parts.headers, shared.max_body_bytes).await?;
    let event = body::parse_single(format, bytes, shared.rules.parse_mode())?;
    let prepared = shared.rules.prepare(event, &received_at_now())?;

    let started = Instant::now();
    let delivery = shared.producer.send(outgoing(&prepared))?;
    let deadline = tokio::time::Instant::now() + shared.produce_timeout;
    let result = Producer::delivered(delivery, deadline).await;
    shared
        .metrics
        .produce_seconds
        .observe(started.elapsed().as_secs_f64());
    shared.update_queue_depth();
    let (partition, offset) = result?;
    shared.metrics.records.inc();
    shared.metrics.bytes.inc_by(prepared.payload.len() as u64);
    Ok(reply::json(
        StatusCode::OK,
        &Produced {
            partition,
            offset,
            ingest_id: prepared.stamp.ingest_id,
        },
    ))
}

async fn produce_many(shared: &Shared, request: Request) -> Result<Response, Rejection> {
    let (parts, body) = request.into_parts();
    admit(shared, &parts.headers)?;
    let format = content_type(&parts.headers, true)?;
    let bytes = read_body(body, &parts.headers, shared.max_batch_bytes).await?;
    let items = body::parse_batch(
        format,
        bytes,
        shared.rules.parse_mode(),
        shared.max_batch_items,
    )?;

    // Validate every item before producing any: a batch is produced whole or not at all.
    let received_at = received_at_now();
    let prepared: Vec<Result<Prepared, Rejection>> = items
        .into_iter()
        .map(|item| {
            item.map_err(Rejection::from)
                .and_then(|event| shared.rules.prepare(event, &received_at))
        })
        .collect();
    let invalid = prepared.iter().filter(|p| p.is_err()).count();
    if invalid > 0 {
        let total = prepared.len();
        let results = prepared
            .into_iter()
            .enumerate()
            .map(|(index, p)| match p {
                Ok(_) => ItemResult::Skipped { index },
                Err(rejection) => {
                    shared.count_rejection(&rejection);
                    ItemResult::Rejected {
                        index,
                        error: rejection.error,
                    }
                }
            })
            .collect();
        let error = ApiError::new(
            ErrorCode::ValidationFailed,
            format!("{invalid} of {total} items are invalid; nothing was produced"),
        );
        let report = BatchReport::new(results, Some(error));
        return Ok(reply::batch(StatusCode::BAD_REQUEST, &report));
    }
    let prepared: Vec<Prepared> = prepared.into_iter().flatten().collect();

    // Enqueue everything, then wait for every delivery report (librdkafka batches them).
    let started = Instant::now();
    let mut pending = Vec::with_capacity(prepared.len());
    let mut refused: Option<ApiError> = None;
    for p in &prepared {
        // After a refusal (queue full) the rest of the batch is not attempted.
        let sent = match &refused {
            Some(e) => Err(e.clone()),
            None => shared.producer.send(outgoing(p)),
        };
        if let Err(e) = &sent
            && refused.is_none()
        {
            refused = Some(e.clone());
        }
        pending.push(sent);
    }
    let deadline = tokio::time::Instant::now() + shared.produce_timeout;
    let outcomes = futures::future::join_all(pending.into_iter().map(|sent| async move {
        match sent {
            Ok(delivery) => Producer::delivered(delivery, deadline).await,
            Err(e) => Err(e),
        }
    }))
    .await;
    shared
        .metrics
        .produce_seconds
        .observe(started.elapsed().as_secs_f64());
    shared.update_queue_depth();

    let mut first_error: Option<ApiError> = None;
    let mut bytes = 0u64;
    let results: Vec<ItemResult> = outcomes
        .into_iter()
        .zip(&prepared)
        .enumerate()
        .map(|(index, (outcome, p))| match outcome {
            Ok((partition, offset)) => {
                bytes += p.payload.len() as u64;
                ItemResult::Accepted {
                    index,
                    partition,
                    offset,
                    ingest_id: p.stamp.ingest_id,
                }
            }
            Err(error) => {
                first_error.get_or_insert_with(|| error.clone());
                ItemResult::Failed { index, error }
            }
        })
        .collect();
    let accepted = results.iter().filter(|r| r.is_accepted()).count();
    shared.metrics.records.inc_by(accepted as u64);
    shared.metrics.bytes.inc_by(bytes);
    let (status, error) = match first_error {
        None => (StatusCode::OK, None),
        Some(e) => {
            let failed = results.len() - accepted;
            let status = e.code.status();
            let error = ApiError::new(
                e.code,
                format!(
                    "{failed} of {} items were not acknowledged ({}); the {accepted} accepted items are in Kafka",
                    results.len(),
                    e.message
                ),
            );
            (status, Some(error))
        }
    };
    Ok(reply::batch(status, &BatchReport::new(results, error)))
}

fn outgoing(p: &Prepared) -> Outgoing<'_> {
    Outgoing {
        key: p.key.as_deref(),
        payload: &p.payload,
        headers: p.headers(),
    }
}

/// Shutting down → 503; auth configured → a bearer token with the publish claim.
fn admit(shared: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    if shared.closing.load(Ordering::Acquire) {
        return Err(ApiError::new(
            ErrorCode::ShuttingDown,
            "this bridge is shutting down; retry on another replica",
        ));
    }
    let Some(verifier) = &shared.verifier else {
        return Ok(());
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(JwtVerifier::bearer)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "a bearer token is required (Authorization: Bearer TOKEN)",
            )
        })?;
    let claims = verifier
        .verify(token)
        .map_err(|e| ApiError::new(ErrorCode::Unauthorized, e.to_string()))?;
    if !claims.publish {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "the token does not allow publishing (claim {:?} must be true)",
                shared.publish_claim
            ),
        ));
    }
    Ok(())
}

fn content_type(headers: &HeaderMap, batch: bool) -> Result<Format, ApiError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    body::format_of(value, batch)
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::BodyTooLarge,
        format!("the body is larger than {limit} bytes"),
    )
}

/// The body, at most `limit` bytes; an oversized one is drained (up to a bound) and refused.
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut stream = body.into_data_stream();
    if declared.is_some_and(|n| n > limit as u64) {
        drain(&mut stream).await;
        return Err(too_large(limit));
    }
    // The common case is one chunk: keep it without copying.
    let mut first: Option<Bytes> = None;
    let mut buf: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                ErrorCode::BodyUnreadable,
                format!("the body could not be read: {e}"),
            )
        })?;
        total += chunk.len();
        if total > limit {
            drain(&mut stream).await;
            return Err(too_large(limit));
        }
        match (&mut first, &mut buf) {
            (None, None) => first = Some(chunk),
            (Some(f), None) => {
                let capacity = declared.map_or(total, |n| n as usize).max(total);
                let mut b = BytesMut::with_capacity(capacity);
                b.extend_from_slice(f);
                b.extend_from_slice(&chunk);
                buf = Some(b);
            }
            (_, Some(b)) => b.extend_from_slice(&chunk),
        }
    }
    Ok(match (first, buf) {
        (_, Some(b)) => b.freeze(),
        (Some(f), None) => f,
        (None, None) => Bytes::new(),
    })
}

async fn drain(stream: &mut axum::body::BodyDataStream) {
    let mut seen = 0usize;
    let _ = tokio::time::timeout(DRAIN_MAX_TIME, async {
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len();
            if seen > DRAIN_MAX_BYTES {
                break;
            }
        }
    })
    .await;
}

impl Shared {
    fn count_rejection(&self, rejection: &Rejection) {
        for reason in &rejection.reasons {
            self.metrics.failure(*reason);
        }
    }

    fn update_queue_depth(&self) {
        self.metrics
            .queue
            .set(i64::from(self.producer.queue_depth()));
    }
}
