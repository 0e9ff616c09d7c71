//! The one task per socket that moves its queue onto the socket: drains the session's client,
//! turns the items into emits ([`delivery::prepare`]) and hands them to socketioxide, waiting
//! while socketioxide's own per-socket buffer is full (the client queue in front of it keeps
//! the slow-client policy of `/ws`). It ends the socket's session the way the queue says:
//! a slow, not-reading or expired client gets an `error` event and a server disconnect; a
//! bridge shutdown delivers what is queued, then an `error` `going_away` with the resume
//! positions, and releases the connection; the transport is then closed for every socket at
//! once (`close_on_shutdown`), so that socket.io-client's stock reconnection comes back and
//! resumes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use socketioxide::extract::SocketRef;
use socketioxide::{SendError, SocketError};
use tokio::time::Instant;

use super::Conn;
use super::delivery::{self, Emit};
use crate::relay::client::{Client, Closed};
use crate::relay::protocol;
use crate::relay::record::Encoding;

/// How long a send waits between tries while socketioxide's buffer for the socket is full.
const FULL_RETRY: Duration = Duration::from_millis(5);

/// Why a send gave up.
enum Gone {
    /// The socket closed.
    Closed,
    /// Its buffer stayed full for `idleTimeout`: the client does not read.
    Stuck,
    /// While it waited, the queue closed the client (policy `disconnect`, token expiry).
    Queue(Closed),
}

async fn emit_one<T: Serialize + ?Sized>(
    socket: &SocketRef,
    client: &Client,
    event: &str,
    data: &T,
    patience: Duration,
) -> Result<(), Gone> {
    let start = Instant::now();
    loop {
        match socket.emit(event, data) {
            Ok(()) => return Ok(()),
            Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                // A writer blocked on a client that does not read must still notice that the
                // queue closed the client, as on `/ws`.
                if let Some(closed) = client.closed() {
                    return Err(Gone::Queue(closed));
                }
                if start.elapsed() >= patience {
                    return Err(Gone::Stuck);
                }
                tokio::time::sleep(FULL_RETRY).await;
            }
            Err(SendError::Serialize(e)) => {
                // Our own JSON: cannot happen; skip the item rather than the socket.
                tracing::warn!(error = %e, event, "socket.io: cannot encode an emit");
                return Ok(());
            }
            Err(SendError::Socket(SocketError::Closed)) => return Err(Gone::Closed),
        }
    }
}

async fn send(
    socket: &SocketRef,
    client: &Client,
    emit: Emit,
    patience: Duration,
) -> Result<(), Gone> {
    match emit {
        Emit::Record { event, body, meta } => {
            emit_one(socket, client, &event, &(&*body, &meta), patience).await
        }
        Emit::Control { event, body } => {
            emit_one(socket, client, event, &(&*body,), patience).await
        }
        Emit::Joined { event, ack, body } => {
            if let Some(event) = event {
                emit_one(socket, client, &event, &(&body,), patience).await?;
            }
            if let Some(ack) = ack {
                // Acks bypass the retry (one per join); a full buffer only loses this answer,
                // and the alias event above (if any) was delivered.
                let _ = ack.send(&body);
            }
            Ok(())
        }
    }
}

/// Runs until the socket disconnects, the queue closes the client, or the bridge shuts down.
pub async fn run(socket: SocketRef, conn: Arc<Conn>) {
    let shared = conn.shared.clone();
    let client = conn.client.clone();
    let patience = shared.config.idle_timeout;
    let cancelled = shared.shutdown.cancelled();
    tokio::pin!(cancelled);
    let gone = conn.gone.cancelled();
    tokio::pin!(gone);
    loop {
        let shutting_down = tokio::select! {
            biased;
            _ = &mut gone => return,
            _ = &mut cancelled => true,
            _ = client.notify.notified() => false,
        };
        let drained = client.drain();
        let emits = {
            let mut state = conn.state.lock();
            let state = &mut *state;
            let Some(session) = state.session.as_mut() else {
                return;
            };
            delivery::prepare(session, &mut state.subs, drained.items)
        };
        let mut closed = drained.closed;
        for emit in emits {
            match send(&socket, &client, emit, patience).await {
                Ok(()) => {}
                Err(Gone::Closed) => return,
                Err(Gone::Stuck) => {
                    shared.metrics.close("not_reading");
                    conn.end();
                    let _ = socket.clone().disconnect();
                    return;
                }
                Err(Gone::Queue(why)) => {
                    closed = Some(why);
                    break;
                }
            }
        }
        if shutting_down {
            going_away(&socket, &conn).await;
            return;
        }
        if let Some(closed) = closed {
            let (code, message) = match closed {
                Closed::SlowClient => (
                    "slow_client",
                    "slow client: connect again with auth.resume to resume",
                ),
                Closed::NotReading => ("not_reading", "too many unread replies"),
                Closed::TokenExpired => (
                    "token_expired",
                    "the token expired: connect again with a new token",
                ),
            };
            shared.metrics.close(code);
            let error = json!({"type": "error", "code": code, "message": message});
            // Best effort: a client that does not read has no room for it. Its session ends
            // either way; a disconnect that finds the buffer full leaves the transport to
            // Engine.IO's ping timeout.
            let _ = emit_one(
                &socket,
                &client,
                "error",
                &(&error,),
                Duration::from_secs(1),
            )
            .await;
            conn.end();
            let _ = socket.clone().disconnect();
            return;
        }
    }
}

/// Shutdown: what was queued is already out; tell the client where to resume, then release
/// the connection (the bridge waits for every connection to be released).
async fn going_away(socket: &SocketRef, conn: &Conn) {
    conn.shared.metrics.close("shutdown");
    let resume: BTreeMap<String, protocol::Positions> = conn
        .state
        .lock()
        .subs
        .iter()
        .map(|(name, sub)| (name.to_string(), sub.seen.clone()))
        .collect();
    let frame = protocol::going_away(Encoding::Json, &resume);
    if let Some(body) = delivery::raw_frame(&frame.frame) {
        let _ = emit_one(
            socket,
            &conn.client,
            "error",
            &(&*body,),
            Duration::from_secs(2),
        )
        .await;
    }
    conn.end();
}
