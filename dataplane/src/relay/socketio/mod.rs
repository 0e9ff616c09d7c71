//! Socket.IO v4 (Engine.IO v4: long-polling, WebSocket and the upgrade between them) on
//! `/socket.io/`, served by `socketioxide` as a tower service next to `/ws` and `/sse`, and
//! going through the same [`Session`] (admission, tokens, channel permissions, the hub, the
//! slow-client queue, metrics with `transport="socketio"`). `docs/socketio.md` is the user's
//! side of it.
//!
//! - The handshake ([`accept`], a connect middleware): `auth.token` (or `Authorization`) is
//!   checked as at a `/ws` upgrade, a connection slot is taken, `auth.resume` is read; any
//!   refusal is a `connect_error` whose message starts with its code.
//! - Events: `subscribe` (a channel or `{channel, since}`) and `unsubscribe`, each join alias
//!   of `websocket.socketio.aliases`, `auth` (a token refresh); anything else is answered with
//!   an `error` event `unknown_type`.
//! - [`request`]: reading what the client sends (pure); [`delivery`]: what the socket
//!   receives (pure); [`pump`]: the task that moves the queue onto the socket.
//!
//! Channels are the hub's subscriptions, not socketioxide rooms: the hub already routes each
//! record once to the subscribed clients, and a resume needs per-socket positions that a room
//! broadcast does not have.

pub mod delivery;
pub mod pump;
pub mod request;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::routing::any_service;
use parking_lot::Mutex;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Event, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::budget::RequestBudget;
use super::client::Client;
use super::protocol::{self, ErrorCode, Positions, ProtocolError, SubscribeOptions};
use super::record::Encoding;
use super::session::{Session, Transport, unavailable};
use crate::auth::JwtVerifier;
use delivery::{Answer, Delivery, Sub, Subs};
use eventstream_crds::v1alpha1::SocketIoAlias;
use request::Handshake;

/// `router` with one stream's Socket.IO service on `/socket.io/`.
pub fn route(router: Router<Arc<Shared>>, shared: &Arc<Shared>) -> Router<Arc<Shared>> {
    let config = &shared.config;
    // Engine.IO pings every `pingInterval` and gives up on a client whose pong is later than
    // `pingTimeout`: together they are the `/ws` idle timeout.
    let ping_timeout = config
        .idle_timeout
        .saturating_sub(config.ping_interval)
        .max(std::time::Duration::from_secs(1));
    let (svc, io) = SocketIo::builder()
        .ping_interval(config.ping_interval)
        .ping_timeout(ping_timeout)
        .max_payload(u64::from(config.max_frame_bytes))
        .build_svc();
    let admit = {
        let shared = shared.clone();
        move |socket: SocketRef, TryData(auth): TryData<Value>| {
            let shared = shared.clone();
            async move { accept(&shared, &socket, auth.ok()) }
        }
    };
    io.ns("/", on_connect.with(admit));
    tokio::spawn(close_on_shutdown(io, shared.clone()));
    // While the bridge drains, a new handshake gets a 503 (as a `/ws` upgrade does), which
    // socket.io-client retries with its backoff; a `connect_error` from the handshake itself
    // would stop it for good.
    let draining = {
        let shutdown = shared.shutdown.clone();
        let shared = shared.clone();
        axum::middleware::from_fn(move |request: Request, next: Next| {
            let (shutdown, shared) = (shutdown.clone(), shared.clone());
            async move {
                if shutdown.is_cancelled() && is_handshake(&request) {
                    return unavailable(&shared, "shutting_down", "the bridge is shutting down");
                }
                next.run(request).await
            }
        })
    };
    router.route("/socket.io/", any_service(svc).layer(draining))
}

/// An Engine.IO request that opens a new session (no `sid` yet).
fn is_handshake(request: &Request) -> bool {
    !request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .any(|pair| pair.starts_with("sid="))
}

/// At shutdown, once every socket's pump has written its queue and `going_away` (each releases
/// its connection then), or after [`GOING_AWAY_GRACE`], closes every Engine.IO transport: the
/// clients see a transport close and reconnect by themselves (to another replica), where a
/// Socket.IO disconnect would leave them waiting for the application.
async fn close_on_shutdown(io: SocketIo, shared: Arc<Shared>) {
    let shutdown = shared.shutdown.clone();
    let open = shared.metrics.connections_socketio.clone();
    drop(shared);
    shutdown.cancelled().await;
    let deadline = tokio::time::Instant::now() + GOING_AWAY_GRACE;
    while open.get() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    io.close().await;
}

/// How long the sockets' pumps get to say `going_away` before the transports close.
pub const GOING_AWAY_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A refused handshake: `connect_error` with `"<code>: <message>"`.
#[derive(Debug)]
pub struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One connected socket: its session (taken out when it ends), its subscriptions' delivery
/// and what its handshake said.
pub struct Conn {
    shared: Arc<Shared>,
    client: Arc<Client>,
    handshake: Handshake,
    state: Mutex<State>,
    /// Every event the client sends spends from it, as every frame does on `/ws`.
    budget: Mutex<RequestBudget>,
    /// Cancelled when the socket disconnects: the pump stops.
    gone: CancellationToken,
}

struct State {
    session: Option<Session>,
    subs: Subs,
}

impl Conn {
    /// Spends one request; a socket over the budget is disconnected by the server (closes
    /// counted as `protocol`, as `/ws` counts its 1008), and its event is not handled.
    fn admit(&self, socket: &SocketRef) -> bool {
        let mut budget = self.budget.lock();
        if budget.take(std::time::Instant::now()) {
            return true;
        }
        // Under the budget's lock: handlers run concurrently, and only the first one over the
        // budget counts the close and disconnects.
        if !self.gone.is_cancelled() {
            self.shared.metrics.close("protocol");
            self.gone.cancel();
            drop(budget);
            let _ = socket.clone().disconnect();
        }
        false
    }

    /// Ends the session: out of the hub, slot released, gauge down; answers still owed are
    /// dropped (they hold the socket).
    fn end(&self) {
        let mut state = self.state.lock();
        state.session = None;
        state.subs.clear();
    }
}

fn refuse(shared: &Shared, reason: &str, message: impl std::fmt::Display) -> Refused {
    shared.metrics.reject(reason);
    Refused(format!("{reason}: {message}"))
}

/// The connect middleware: token, connection slot, handshake; the session is stored on the
/// socket for [`on_connect`].
fn accept(shared: &Arc<Shared>, socket: &SocketRef, auth: Option<Value>) -> Result<(), Refused> {
    if shared.shutdown.is_cancelled() {
        return Err(refuse(
            shared,
            "shutting_down",
            "the bridge is shutting down",
        ));
    }
    let handshake = request::parse_handshake(auth.as_ref()).map_err(|e| {
        shared.metrics.protocol_error(e.code.as_str());
        Refused(format!("{}: {}", e.code.as_str(), e.message))
    })?;
    let claims = match &shared.verifier {
        None => None,
        Some(verifier) => {
            let header = socket
                .req_parts()
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(JwtVerifier::bearer);
            let token = handshake.token.as_deref().or(header);
            let verified = match token {
                Some(token) => verifier.verify(token),
                None => Err(crate::auth::AuthError::Missing),
            };
            Some(verified.map_err(|e| refuse(shared, "unauthorized", e))?)
        }
    };
    let Some(slot) = shared.admit() else {
        return Err(refuse(
            shared,
            "limit",
            "the bridge is at its connection limit; retry on another replica or later",
        ));
    };
    let session = Session::open(
        shared.clone(),
        slot,
        Transport::SocketIo,
        Encoding::Json,
        claims,
    );
    let conn = Arc::new(Conn {
        shared: shared.clone(),
        client: session.client().clone(),
        handshake,
        state: Mutex::new(State {
            session: Some(session),
            subs: Subs::new(),
        }),
        budget: Mutex::new(RequestBudget::new(std::time::Instant::now())),
        gone: CancellationToken::new(),
    });
    // The handlers are in place before the namespace's connect packet goes out: a client may
    // emit `subscribe` the moment it reads that packet, before any connect handler has run, and
    // an event that finds no handler is dropped.
    register(socket, &conn);
    socket.extensions.insert(conn);
    Ok(())
}

/// After [`accept`]: the pump.
async fn on_connect(socket: SocketRef) {
    let Some(conn) = socket.extensions.get::<Arc<Conn>>() else {
        return;
    };
    tokio::spawn(pump::run(socket.clone(), conn));
}

/// The socket's events and its disconnect.
fn register(socket: &SocketRef, conn: &Arc<Conn>) {
    let config = &conn.shared.config.socketio;
    let default = Delivery {
        event: config.event.as_str().into(),
        payload: config.payload,
    };
    {
        let conn = conn.clone();
        socket.on(
            "subscribe",
            move |s: SocketRef, TryData(arg): TryData<Value>, ack: AckSender| {
                let (conn, default) = (conn.clone(), default.clone());
                async move {
                    if !conn.admit(&s) {
                        return;
                    }
                    let request = request::parse_subscribe(arg.ok().as_ref());
                    join(&conn, request, default, None, ack);
                }
            },
        );
    }
    {
        let conn = conn.clone();
        socket.on(
            "unsubscribe",
            move |s: SocketRef, TryData(arg): TryData<Value>, ack: AckSender| {
                let conn = conn.clone();
                async move {
                    if conn.admit(&s) {
                        leave(&conn, arg.ok().as_ref(), ack);
                    }
                }
            },
        );
    }
    {
        let conn = conn.clone();
        socket.on("auth", move |s: SocketRef, TryData(arg): TryData<Value>| {
            let conn = conn.clone();
            async move {
                if conn.admit(&s) {
                    refresh(&conn, arg.ok());
                }
            }
        });
    }
    for alias in &config.aliases {
        let conn = conn.clone();
        let alias: Arc<SocketIoAlias> = Arc::new(alias.clone());
        socket.on(
            alias.join.clone(),
            move |s: SocketRef, TryData(arg): TryData<Value>, ack: AckSender| {
                let (conn, alias) = (conn.clone(), alias.clone());
                async move {
                    if !conn.admit(&s) {
                        return;
                    }
                    let request =
                        request::parse_alias_join(alias.channel.as_deref(), arg.ok().as_ref());
                    let delivery = Delivery {
                        event: alias.event.as_str().into(),
                        payload: alias.payload,
                    };
                    let answer = alias.ack.as_deref().map(Arc::from);
                    join(&conn, request, delivery, answer, ack);
                }
            },
        );
    }
    {
        let conn = conn.clone();
        socket.on_fallback(move |s: SocketRef, Event(event): Event| {
            let conn = conn.clone();
            async move {
                if !conn.admit(&s) {
                    return;
                }
                fail(
                    &conn,
                    ProtocolError::new(
                        ErrorCode::UnknownType,
                        format!(
                            "unknown event {event:?}: use subscribe, unsubscribe, auth or a join alias of this stream"
                        ),
                    ),
                    None,
                );
            }
        });
    }
    {
        let conn = conn.clone();
        socket.on_disconnect(move |socket: SocketRef| {
            let conn = conn.clone();
            async move {
                conn.gone.cancel();
                conn.end();
                socket.extensions.remove::<Arc<Conn>>();
            }
        });
    }
}

/// An error: an `error` event (through the queue, in order with the records) and, when the
/// request came with an acknowledgement callback, `{error}` to it.
fn fail(conn: &Conn, err: ProtocolError, ack: Option<AckSender>) {
    conn.shared.metrics.protocol_error(err.code.as_str());
    if let Some(ack) = ack {
        let _ = ack.send(&json!({"error": {
            "code": err.code.as_str(), "message": &err.message, "channel": &err.channel,
        }}));
    }
    conn.client.control(protocol::error(Encoding::Json, &err));
}

/// `subscribe` or an alias join: checked and registered by the session; answered on its
/// `subscribed` (after a resume's history).
fn join(
    conn: &Conn,
    request: Result<SubscribeOptions, ProtocolError>,
    delivery: Delivery,
    answer: Option<Arc<str>>,
    ack: AckSender,
) {
    let mut state = conn.state.lock();
    let state = &mut *state;
    let Some(session) = state.session.as_ref() else {
        return;
    };
    let registered = request.and_then(|options| {
        let mut options = request::with_resume(options, &conn.handshake);
        let mut seen = Positions::new();
        if let Some(since) = &mut options.since {
            // As SSE: a resume that leaves out partitions resumes them from where the
            // channel is now, so that every `resume` this socket gets names every partition.
            for (p, next) in conn.shared.hub.channel_positions(&options.channel) {
                since.entry(p).or_insert(next - 1);
            }
            seen = since.clone();
        }
        let channel = options.channel.clone();
        session.subscribe(options)?;
        Ok((channel, seen))
    });
    match registered {
        Ok((channel, seen)) => {
            state.subs.insert(
                channel,
                Sub {
                    delivery,
                    seen,
                    answer: Some(Answer {
                        event: answer,
                        ack: Some(ack),
                    }),
                },
            );
        }
        Err(err) => fail(conn, err, Some(ack)),
    }
}

/// `unsubscribe`: acknowledged with `{channel}`.
fn leave(conn: &Conn, arg: Option<&Value>, ack: AckSender) {
    let mut state = conn.state.lock();
    let Some(session) = state.session.as_ref() else {
        return;
    };
    let result = request::parse_unsubscribe(arg)
        .and_then(|channel| session.unsubscribe(&channel).map(|()| channel));
    match result {
        Ok(channel) => {
            state.subs.remove(channel.as_str());
            let _ = ack.send(&json!({ "channel": channel }));
        }
        Err(err) => {
            drop(state);
            fail(conn, err, Some(ack));
        }
    }
}

/// `auth` with a token (or `{token}`): the session's refresh; answered by `authenticated` or
/// an `error` event.
fn refresh(conn: &Conn, arg: Option<Value>) {
    let token = match arg {
        Some(Value::String(token)) => token,
        Some(Value::Object(obj)) => match obj.get("token") {
            Some(Value::String(token)) => token.clone(),
            _ => String::new(),
        },
        _ => String::new(),
    };
    let mut state = conn.state.lock();
    let Some(session) = state.session.as_mut() else {
        return;
    };
    let result = if token.is_empty() {
        Err(ProtocolError::new(
            ErrorCode::BadFrame,
            "auth takes a token or {token} (the JWT, without Bearer)",
        ))
    } else {
        session.refresh(&token)
    };
    drop(state);
    if let Err(err) = result {
        fail(conn, err, None);
    }
}
