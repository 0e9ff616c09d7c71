//! The WebSocket transport: `GET /ws`, subprotocols `eventstream.v1.json` (default) and
//! `eventstream.v1.proto`. One task per connection drives reading, writing (all queued frames
//! fed, then one flush), pings and the idle timeout; buffers are sized so an idle connection
//! costs a few KiB.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::SinkExt;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use super::channel::{ALL, valid_channel};
use super::client::{Client, Closed, Outbound};
use super::protocol::{self, ErrorCode, Positions, ProtocolError, Request};
use super::record::{Encoding, WireFrame};
use super::{ConnectionSlot, Shared};
use crate::auth::{Claims, JwtVerifier};

/// Close code: the client read too slowly (policy `disconnect`).
pub const CLOSE_SLOW_CLIENT: u16 = 4008;
/// Close code: the client sent nothing for `idleTimeout`.
pub const CLOSE_IDLE: u16 = 4000;
/// Close code: the client queued too many replies without reading them.
pub const CLOSE_NOT_READING: u16 = 4009;
/// Read buffer per connection: client frames are small requests.
pub const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Bytes buffered before tungstenite writes to the socket (we flush after every batch anyway).
pub const WRITE_BUFFER_BYTES: usize = 16 * 1024;
/// Requests a client may burst; refilled at [`REQUESTS_PER_SECOND`].
pub const REQUEST_BURST: f64 = 100.0;
/// Sustained requests per second per connection; beyond it the connection is closed (1008).
pub const REQUESTS_PER_SECOND: f64 = 50.0;

/// `?token=` for clients that cannot set headers (browsers).
#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

/// Checks the token (when auth is on) before any upgrade: `Ok(None)` when auth is off.
pub fn authorize(
    shared: &Shared,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Option<Claims>, Box<Response>> {
    let Some(verifier) = &shared.verifier else {
        return Ok(None);
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(JwtVerifier::bearer)
        .or(query_token);
    let result = match token {
        Some(token) => verifier.verify(token),
        None => Err(crate::auth::AuthError::Missing),
    };
    result.map(Some).map_err(|e| {
        shared.metrics.reject("unauthorized");
        Box::new(
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                axum::Json(json!({"error": {"code": "unauthorized", "message": e.to_string()}})),
            )
                .into_response(),
        )
    })
}

/// 503 before upgrade, with `Retry-After`.
pub fn unavailable(shared: &Shared, reason: &str, message: &str) -> Response {
    shared.metrics.reject(reason);
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        axum::Json(json!({"error": {"code": reason, "message": message}})),
    )
        .into_response()
}

/// `GET /ws`.
pub async fn handler(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    if shared.shutdown.is_cancelled() {
        return unavailable(&shared, "shutting_down", "the bridge is shutting down");
    }
    let claims = match authorize(&shared, &headers, query.token.as_deref()) {
        Ok(claims) => claims,
        Err(response) => return *response,
    };
    let Some(slot) = shared.admit() else {
        return unavailable(
            &shared,
            "limit",
            "the bridge is at its connection limit; retry on another replica or later",
        );
    };
    let upgrade = upgrade.protocols([
        eventstream_proto::SUBPROTOCOL_JSON,
        eventstream_proto::SUBPROTOCOL_PROTO,
    ]);
    let encoding = match upgrade.selected_protocol() {
        Some(p) if p == eventstream_proto::SUBPROTOCOL_PROTO => Encoding::Proto,
        _ => Encoding::Json,
    };
    let max = shared.config.max_frame_bytes as usize;
    upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| connection(socket, shared, encoding, claims, slot))
}

/// How a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The peer closed or the socket failed: nothing to send.
    Gone,
    GoingAway,
    Closed(Closed),
    Idle,
    TooBig,
    Unsupported,
    RateLimited,
}

/// Per-connection request budget.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens
            + now.duration_since(self.at).as_secs_f64() * REQUESTS_PER_SECOND)
            .min(REQUEST_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What a connection has delivered, per subscription and partition (for `going_away`).
type Delivered = HashMap<Arc<str>, Positions>;

async fn connection(
    mut socket: WebSocket,
    shared: Arc<Shared>,
    encoding: Encoding,
    claims: Option<Claims>,
    _slot: ConnectionSlot,
) {
    let metrics = shared.metrics.clone();
    metrics.connections_ws.inc();
    let client = Arc::new(
        Client::new(
            shared.next_client_id(),
            encoding,
            shared.config.queue_messages as usize,
            shared.config.slow_client_policy,
        )
        .with_drop_counter(shared.metrics.slow_client_drops()),
    );
    let idle = shared.config.idle_timeout;
    let ping_every = shared.config.ping_interval;
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    // Idle detection reads this at each ping instead of arming a timer per frame, and the
    // shutdown future is created once: per-iteration timers and cancellation waiters are
    // shared, locked structures that cost more than the frames themselves at high rates.
    let mut last_heard = Instant::now();
    let cancelled = shared.shutdown.cancelled();
    tokio::pin!(cancelled);
    let mut bucket = Bucket {
        tokens: REQUEST_BURST,
        at: Instant::now(),
    };
    let mut delivered = Delivered::new();
    let end = loop {
        tokio::select! {
            biased;
            _ = &mut cancelled => break End::GoingAway,
            _ = client.notify.notified() => {
                match write_queued(&mut socket, &client, &shared, &mut delivered, idle).await {
                    Ok(None) => {}
                    Ok(Some(closed)) => break End::Closed(closed),
                    Err(()) => break End::Gone,
                }
            }
            msg = socket.recv() => {
                last_heard = Instant::now();
                let request = match msg {
                    None | Some(Ok(Message::Close(_))) => break End::Gone,
                    Some(Err(e)) => {
                        break if is_too_big(&e) { End::TooBig } else { End::Gone };
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Text(text))) => {
                        if encoding != Encoding::Json {
                            break End::Unsupported;
                        }
                        protocol::parse_json(text.as_str())
                    }
                    Some(Ok(Message::Binary(bytes))) => {
                        if encoding != Encoding::Proto {
                            break End::Unsupported;
                        }
                        protocol::parse_proto(&bytes)
                    }
                };
                if !bucket.take() {
                    break End::RateLimited;
                }
                handle(&shared, &client, claims.as_ref(), request);
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= idle {
                    break End::Idle;
                }
                let sent = tokio::time::timeout(idle, socket.send(Message::Ping(Default::default()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    break End::Gone;
                }
            }
        }
    };
    shared.hub.remove_client(&client);
    metrics
        .subscriptions
        .set(shared.hub.subscription_count() as i64);
    finish(&mut socket, &client, &shared, &mut delivered, end).await;
    metrics.connections_ws.dec();
}

fn is_too_big(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("Space limit exceeded") || text.contains("too long") || text.contains("too big")
}

/// Serves one request; errors become `error` frames on the client's queue.
pub fn handle(
    shared: &Arc<Shared>,
    client: &Arc<Client>,
    claims: Option<&Claims>,
    request: Result<Request, ProtocolError>,
) {
    let result = match request {
        Ok(Request::Subscribe { channel, since }) => {
            subscribe(shared, client, claims, channel, since)
        }
        Ok(Request::Unsubscribe { channel }) => {
            if shared.hub.unsubscribe(client, &channel) {
                shared.metrics.subscriptions.dec();
                Ok(())
            } else {
                Err(ProtocolError::on(
                    ErrorCode::NotSubscribed,
                    &channel,
                    "not subscribed to this channel",
                ))
            }
        }
        Ok(Request::Ping { id }) => {
            client.control(protocol::pong(client.encoding, id.as_ref()));
            Ok(())
        }
        Err(e) => Err(e),
    };
    if let Err(err) = result {
        shared.metrics.protocol_error(err.code.as_str());
        client.control(protocol::error(client.encoding, &err));
    }
}

/// Checks and registers a subscription, starting a replay when `since` is given.
pub fn subscribe(
    shared: &Arc<Shared>,
    client: &Arc<Client>,
    claims: Option<&Claims>,
    channel: String,
    since: Option<Positions>,
) -> Result<(), ProtocolError> {
    if channel != ALL && !valid_channel(&channel) {
        return Err(ProtocolError::on(
            ErrorCode::InvalidChannel,
            &channel,
            "a channel is 1 to 256 characters without control characters, or * for every record",
        ));
    }
    if let Some(claims) = claims
        && !claims.allows_channel(&channel)
    {
        return Err(ProtocolError::on(
            ErrorCode::Forbidden,
            &channel,
            "the token does not allow this channel",
        ));
    }
    if client.is_subscribed(&channel) {
        return Err(ProtocolError::on(
            ErrorCode::AlreadySubscribed,
            &channel,
            "already subscribed to this channel",
        ));
    }
    if client.subscription_count() >= shared.config.max_subscriptions_per_connection as usize {
        return Err(ProtocolError::on(
            ErrorCode::TooManySubscriptions,
            &channel,
            format!(
                "at most {} subscriptions per connection",
                shared.config.max_subscriptions_per_connection
            ),
        ));
    }
    let name: Arc<str> = channel.as_str().into();
    let replaying = since.is_some();
    let floor = since.clone().unwrap_or_default();
    let Some(registered) = shared.hub.subscribe(client, &name, replaying, floor) else {
        return Err(ProtocolError::on(
            ErrorCode::AlreadySubscribed,
            &channel,
            "already subscribed to this channel",
        ));
    };
    shared.metrics.subscriptions.inc();
    if let Some(since) = since {
        let hub = shared.hub.clone();
        let metrics = shared.metrics.clone();
        let partitions = shared.hub.partitions();
        tokio::spawn(shared.replayer.clone().resume(
            client.clone(),
            name,
            since,
            registered.positions,
            partitions,
            move |client, name| {
                if hub.unsubscribe(client, name) {
                    metrics.subscriptions.dec();
                }
            },
        ));
    }
    Ok(())
}

/// Writes everything queued: feeds every frame, then flushes once. `Ok(Some(_))` when the
/// queue closed the client.
async fn write_queued(
    socket: &mut WebSocket,
    client: &Client,
    shared: &Shared,
    delivered: &mut Delivered,
    deadline: Duration,
) -> Result<Option<Closed>, ()> {
    let drained = client.drain();
    if drained.closed.is_none() || !drained.items.is_empty() {
        let write = async {
            let mut events = 0u64;
            let mut bytes = 0u64;
            let now_ms = chrono::Utc::now().timestamp_millis();
            let stages = super::metrics::STAGES
                .enabled()
                .then(std::time::Instant::now);
            for item in drained.items {
                let frame = match item {
                    Outbound::Event {
                        subscription,
                        partition,
                        offset,
                        timestamp_ms,
                        consumed_at,
                        frame,
                    } => {
                        events += 1;
                        if let Some(drained_at) = stages {
                            super::metrics::STAGES
                                .queue
                                .record(drained_at.saturating_duration_since(consumed_at));
                        }
                        if let Some(ts) = timestamp_ms {
                            shared
                                .metrics
                                .latency
                                .observe((now_ms - ts).max(0) as f64 / 1000.0);
                        }
                        delivered
                            .entry(subscription)
                            .or_default()
                            .insert(partition, offset);
                        frame
                    }
                    Outbound::Control(frame) => frame,
                    Outbound::Gap {
                        subscription,
                        from,
                        to,
                        reason,
                    } => protocol::gap(client.encoding, &subscription, &from, &to, reason),
                };
                bytes += frame.len() as u64;
                socket.feed(to_message(frame)).await.map_err(|_| ())?;
            }
            socket.flush().await.map_err(|_| ())?;
            if let Some(drained_at) = stages
                && events > 0
            {
                super::metrics::STAGES.write.record(drained_at.elapsed());
            }
            shared.metrics.deliveries.inc_by(events);
            shared.metrics.bytes_out.inc_by(bytes);
            Ok::<(), ()>(())
        };
        // Most writes complete at once; only a blocked socket pays for a timer.
        tokio::pin!(write);
        match futures::poll!(&mut write) {
            std::task::Poll::Ready(Ok(())) => {}
            std::task::Poll::Ready(Err(())) => return Err(()),
            // A writer blocked on a client that does not read must still notice that the queue
            // closed the client (policy `disconnect`), or it would wait for the whole deadline.
            std::task::Poll::Pending => tokio::select! {
                result = tokio::time::timeout(deadline, write) => match result {
                    Ok(Ok(())) => {}
                    _ => return Err(()),
                },
                _ = client.wait_closed() => return Ok(client.closed()),
            },
        }
    }
    Ok(drained.closed)
}

fn to_message(frame: WireFrame) -> Message {
    match frame {
        WireFrame::Text(t) => Message::Text(t),
        WireFrame::Binary(b) => Message::Binary(b),
    }
}

/// Sends a close frame and waits (briefly) for the peer's, reading and discarding what it
/// still sends: closing with unread input would make the kernel reset the connection and the
/// client would never see the close code.
async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let handshake = async {
        if socket.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), handshake).await;
}

async fn finish(
    socket: &mut WebSocket,
    client: &Client,
    shared: &Shared,
    delivered: &mut Delivered,
    end: End,
) {
    let metrics = &shared.metrics;
    match end {
        End::Gone => {}
        End::GoingAway => {
            metrics.close("shutdown");
            // Deliver what is queued, then tell the client where to resume.
            let grace = Duration::from_secs(2);
            let _ = write_queued(socket, client, shared, delivered, grace).await;
            let resume = delivered
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            let _ = tokio::time::timeout(
                grace,
                socket.send(to_message(protocol::going_away(client.encoding, &resume))),
            )
            .await;
            close(socket, 1001, "going away: resume with your last positions").await;
        }
        End::Closed(Closed::SlowClient) => {
            metrics.close("slow_client");
            close(
                socket,
                CLOSE_SLOW_CLIENT,
                "slow client: resume with your last positions",
            )
            .await;
        }
        End::Closed(Closed::NotReading) => {
            metrics.close("not_reading");
            close(socket, CLOSE_NOT_READING, "too many unread replies").await;
        }
        End::Idle => {
            metrics.close("idle");
            close(socket, CLOSE_IDLE, "idle timeout").await;
        }
        End::TooBig => {
            metrics.close("too_big");
            close(socket, 1009, "frame larger than maxFrameBytes").await;
        }
        End::Unsupported => {
            metrics.close("protocol");
            close(socket, 1003, "frame type does not match the subprotocol").await;
        }
        End::RateLimited => {
            metrics.close("protocol");
            close(socket, 1008, "request rate exceeded").await;
        }
    }
}
