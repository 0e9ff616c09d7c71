//! The WebSocket transport: `GET /ws`, subprotocols `eventstream.v1.json` (default) and
//! `eventstream.v1.proto`. One task per connection drives reading, writing (all queued frames
//! fed, then one flush), pings and the idle timeout; buffers are sized so an idle connection
//! costs a few KiB. Requests, subscriptions and delivery accounting are the
//! [`session`](super::session)'s; this module owns the WebSocket framing and close codes.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures::SinkExt;
use serde::Deserialize;
use tokio::time::Instant;

use super::client::{Client, Closed};
use super::protocol;
use super::record::{Encoding, WireFrame};
use super::session::{Session, Transport, authorize, unavailable};
use super::{ConnectionSlot, Shared};
use crate::auth::Claims;

/// Close code: the client read too slowly (policy `disconnect`).
pub const CLOSE_SLOW_CLIENT: u16 = 4008;
/// Close code: the client sent nothing for `idleTimeout`.
pub const CLOSE_IDLE: u16 = 4000;
/// Close code: the client queued too many replies without reading them.
pub const CLOSE_NOT_READING: u16 = 4009;
/// Close code: the connection's token expired (30 s leeway included) and no `auth` refreshed it.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// Read buffer per connection: client frames are small requests.
pub const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Bytes buffered before tungstenite writes to the socket (we flush after every batch anyway).
pub const WRITE_BUFFER_BYTES: usize = 16 * 1024;
use super::budget::RequestBudget;
pub use super::budget::{REQUEST_BURST, REQUESTS_PER_SECOND};

/// `?token=` for clients that cannot set headers (browsers).
#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
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

async fn connection(
    mut socket: WebSocket,
    shared: Arc<Shared>,
    encoding: Encoding,
    claims: Option<Claims>,
    slot: ConnectionSlot,
) {
    let mut session = Session::open(shared.clone(), slot, Transport::WebSocket, encoding, claims);
    let client = session.client().clone();
    let idle = shared.config.idle_timeout;
    let ping_every = shared.config.ping_interval;
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    // Idle detection reads this at each ping instead of arming a timer per frame, and the
    // shutdown future is created once: per-iteration timers and cancellation waiters are
    // shared, locked structures that cost more than the frames themselves at high rates.
    let mut last_heard = Instant::now();
    let cancelled = shared.shutdown.cancelled();
    tokio::pin!(cancelled);
    let mut budget = RequestBudget::new(Instant::now().into_std());
    let end = loop {
        tokio::select! {
            biased;
            _ = &mut cancelled => break End::GoingAway,
            _ = client.notify.notified() => {
                match write_queued(&mut socket, &client, &mut session, idle).await {
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
                if !budget.take(Instant::now().into_std()) {
                    break End::RateLimited;
                }
                session.handle(request);
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
    // Nothing more is queued for a connection that ends, even while it says goodbye.
    session.leave();
    finish(&mut socket, &client, &mut session, end).await;
}

fn is_too_big(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("Space limit exceeded") || text.contains("too long") || text.contains("too big")
}

/// Writes everything queued: feeds every frame, then flushes once. `Ok(Some(_))` when the
/// queue closed the client.
async fn write_queued(
    socket: &mut WebSocket,
    client: &Client,
    session: &mut Session,
    deadline: Duration,
) -> Result<Option<Closed>, ()> {
    let drained = client.drain();
    if drained.closed.is_none() || !drained.items.is_empty() {
        let write = async {
            let mut batch = session.batch();
            for item in drained.items {
                socket
                    .feed(to_message(batch.frame(item).into_wire()))
                    .await
                    .map_err(|_| ())?;
            }
            socket.flush().await.map_err(|_| ())?;
            batch.written();
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

async fn finish(socket: &mut WebSocket, client: &Client, session: &mut Session, end: End) {
    let shared = session.shared().clone();
    let metrics = &shared.metrics;
    match end {
        End::Gone => {}
        End::GoingAway => {
            metrics.close("shutdown");
            // Deliver what is queued, then tell the client where to resume.
            let grace = Duration::from_secs(2);
            let _ = write_queued(socket, client, session, grace).await;
            let resume = session.resume_positions();
            let _ = tokio::time::timeout(
                grace,
                socket.send(to_message(
                    protocol::going_away(client.encoding, &resume).frame,
                )),
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
        End::Closed(Closed::TokenExpired) => {
            metrics.close("token_expired");
            // The error frame says why in the protocol's own terms (a close reason is often
            // not surfaced by browser APIs); nothing queued is written after the expiry.
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                socket.send(to_message(protocol::token_expired(client.encoding).frame)),
            )
            .await;
            close(
                socket,
                CLOSE_TOKEN_EXPIRED,
                "token expired: connect again with a new token",
            )
            .await;
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
