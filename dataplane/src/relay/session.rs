//! One client session, whichever transport carries it: what every transport needs between its
//! wire and the hub, written once so that a transport owns only its framing, keep-alive and the
//! way a connection ends.
//!
//! - Before a connection is accepted: [`authorize`] (the token) and [`unavailable`] (503).
//! - [`Session`]: the connection's [`Client`] queue and claims, its requests
//!   ([`Session::handle`]; [`Session::subscribe`] checks a [`SubscribeOptions`], registers it
//!   in the hub and starts its replay; [`Session::refresh`] replaces the token), and its
//!   removal from the hub when it ends.
//! - The token's lifetime: a session admitted with a token closes its client
//!   ([`Closed::TokenExpired`]) when the token stops verifying (`exp` plus the verifier's
//!   [`LEEWAY_SECS`]), unless a refresh moved that moment; each transport ends the connection
//!   its own way when it sees the close.
//! - [`Batch`]: the accounting of what is written (deliveries, bytes, latency, and the last
//!   delivered position per subscription, which a client resumes from).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::channel::{ALL, valid_channel};
use super::client::{Client, Closed, Outbound};
use super::filter::Filter;
use super::metrics::{RelayMetrics, STAGES};
use super::protocol::{
    self, Control, ErrorCode, Positions, ProtocolError, Request, SubscribeOptions,
};
use super::record::{Encoding, WireFrame};
use super::{ConnectionSlot, Shared};
use crate::auth::{Claims, JwtVerifier, LEEWAY_SECS};

/// The transport of a session, for its connection gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `GET /ws`.
    WebSocket,
    /// `GET /sse`.
    Sse,
    /// Socket.IO on `/socket.io/`.
    SocketIo,
}

impl Transport {
    fn connections(self, metrics: &RelayMetrics) -> &prometheus::IntGauge {
        match self {
            Transport::WebSocket => &metrics.connections_ws,
            Transport::Sse => &metrics.connections_sse,
            Transport::SocketIo => &metrics.connections_socketio,
        }
    }
}

/// Checks the token (when auth is on) before any upgrade: `Ok(None)` when auth is off. The
/// token comes from `Authorization: Bearer` or, for clients that cannot set headers
/// (browsers), from the `?token=` query.
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

/// What a session has delivered: per subscription and partition, the last offset written.
type Delivered = HashMap<Arc<str>, Positions>;

/// One accepted connection. Dropping it removes its client from the hub, releases its
/// connection slot and counts it out of its transport's gauge.
pub struct Session {
    shared: Arc<Shared>,
    client: Arc<Client>,
    claims: Option<Claims>,
    transport: Transport,
    delivered: Delivered,
    /// Closes the client when the token expires; replaced on refresh, aborted on drop.
    expiry: Option<tokio::task::AbortHandle>,
    _slot: ConnectionSlot,
}

/// Closes `client` when the token expiring at `exp` (Unix seconds) stops verifying: `exp` plus
/// the same leeway the verifier allows, so a token is never accepted and then cut at once.
/// A task per authenticated session rather than a timer in each transport's loop: both
/// transports already end a connection whose queue is closed.
fn watch_expiry(client: &Arc<Client>, exp: i64) -> tokio::task::AbortHandle {
    let ends_ms = (exp.saturating_add(LEEWAY_SECS as i64)).saturating_mul(1000);
    let left_ms = ends_ms.saturating_sub(chrono::Utc::now().timestamp_millis());
    let left = std::time::Duration::from_millis(left_ms.max(0) as u64);
    let client = Arc::downgrade(client);
    tokio::spawn(async move {
        tokio::time::sleep(left).await;
        if let Some(client) = client.upgrade() {
            client.expire();
        }
    })
    .abort_handle()
}

impl Session {
    /// A session on a held connection slot, with a fresh client queue sized by the config.
    pub fn open(
        shared: Arc<Shared>,
        slot: ConnectionSlot,
        transport: Transport,
        encoding: Encoding,
        claims: Option<Claims>,
    ) -> Self {
        transport.connections(&shared.metrics).inc();
        let client = Arc::new(
            Client::new(
                shared.next_client_id(),
                encoding,
                shared.config.queue_messages as usize,
                shared.config.slow_client_policy,
            )
            .with_drop_counter(shared.metrics.slow_client_drops()),
        );
        let expiry = claims
            .as_ref()
            .and_then(|c| c.expires_at)
            .map(|exp| watch_expiry(&client, exp));
        shared.hub.connect(&client);
        Self {
            shared,
            client,
            claims,
            transport,
            delivered: Delivered::new(),
            expiry,
            _slot: slot,
        }
    }

    /// The fan-out this session belongs to.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The session's queue (the hub offers to it; the transport drains it).
    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// Serves one request; errors become `error` frames on the client's queue.
    pub fn handle(&mut self, request: Result<Request, ProtocolError>) {
        let result = match request {
            Ok(Request::Subscribe(options)) => self.subscribe(options),
            Ok(Request::Unsubscribe { channel }) => self.unsubscribe(&channel),
            Ok(Request::Ping { id }) => {
                self.client
                    .control(protocol::pong(self.client.encoding, id.as_ref()));
                Ok(())
            }
            Ok(Request::Auth { token }) => self.refresh(&token),
            Err(e) => Err(e),
        };
        if let Err(err) = result {
            self.shared.metrics.protocol_error(err.code.as_str());
            self.client
                .control(protocol::error(self.client.encoding, &err));
        }
    }

    /// Checks and registers a subscription, starting a replay when it has `since`.
    pub fn subscribe(&self, options: SubscribeOptions) -> Result<(), ProtocolError> {
        let (shared, client) = (&self.shared, &self.client);
        let channel = &*options.channel;
        if channel != ALL && !valid_channel(channel) {
            return Err(ProtocolError::on(
                ErrorCode::InvalidChannel,
                channel,
                "a channel is 1 to 256 characters without control characters, or * for every record",
            ));
        }
        if let Some(claims) = &self.claims
            && !claims.allows_channel(channel)
        {
            return Err(ProtocolError::on(
                ErrorCode::Forbidden,
                channel,
                "the token does not allow this channel",
            ));
        }
        if client.is_subscribed(channel) {
            return Err(ProtocolError::on(
                ErrorCode::AlreadySubscribed,
                channel,
                "already subscribed to this channel",
            ));
        }
        if client.subscription_count() >= shared.config.max_subscriptions_per_connection as usize {
            return Err(ProtocolError::on(
                ErrorCode::TooManySubscriptions,
                channel,
                format!(
                    "at most {} subscriptions per connection",
                    shared.config.max_subscriptions_per_connection
                ),
            ));
        }
        let filter = match &options.filter {
            Some(text) => Some(match shared.hub.known_filter(channel, text) {
                Some(filter) => filter,
                None => Filter::compile(channel, text)?,
            }),
            None => None,
        };
        let Some(registered) = shared.hub.subscribe(client, &options, filter.clone()) else {
            return Err(ProtocolError::on(
                ErrorCode::AlreadySubscribed,
                channel,
                "already subscribed to this channel",
            ));
        };
        shared.metrics.subscriptions.inc();
        if let Some(since) = options.since {
            let hub = shared.hub.clone();
            let metrics = shared.metrics.clone();
            let partitions = shared.hub.partitions();
            tokio::spawn(shared.replayer.clone().resume(
                client.clone(),
                super::replay::Resume {
                    name: options.channel,
                    since,
                    filter,
                },
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

    /// Ends the subscription to `channel`.
    pub fn unsubscribe(&self, channel: &str) -> Result<(), ProtocolError> {
        if self.shared.hub.unsubscribe(&self.client, channel) {
            self.shared.metrics.subscriptions.dec();
            Ok(())
        } else {
            Err(ProtocolError::on(
                ErrorCode::NotSubscribed,
                channel,
                "not subscribed to this channel",
            ))
        }
    }

    /// Replaces the connection's token with `token`, checked exactly as at the upgrade (the
    /// same verifier). Accepted: the connection lives until the new token expires, every
    /// subscription it no longer allows ends with a `forbidden` error, and `authenticated`
    /// answers. Refused: an `unauthorized` error, and the current token (and its expiry) stays.
    pub fn refresh(&mut self, token: &str) -> Result<(), ProtocolError> {
        let Some(verifier) = &self.shared.verifier else {
            return Err(ProtocolError::new(
                ErrorCode::AuthDisabled,
                "this stream checks no tokens: the connection needs none",
            ));
        };
        if self.client.closed() == Some(Closed::TokenExpired) {
            // Too late: the connection is already ending; the client connects again.
            return Ok(());
        }
        let claims = verifier.verify(token).map_err(|e| {
            ProtocolError::new(
                ErrorCode::Unauthorized,
                format!("{e}; the connection's current token still applies"),
            )
        })?;
        let encoding = self.client.encoding;
        for name in self.client.subscriptions() {
            if claims.allows_channel(&name) {
                continue;
            }
            if self.shared.hub.unsubscribe(&self.client, &name) {
                self.shared.metrics.subscriptions.dec();
            }
            let err = ProtocolError::on(
                ErrorCode::Forbidden,
                &name,
                "the refreshed token does not allow this channel: the subscription ended",
            );
            self.shared.metrics.protocol_error(err.code.as_str());
            self.client.control(protocol::error(encoding, &err));
        }
        if let Some(old) = self.expiry.take() {
            old.abort();
        }
        self.expiry = claims.expires_at.map(|exp| watch_expiry(&self.client, exp));
        self.client.control(protocol::authenticated(
            encoding,
            claims.expires_at.unwrap_or_default(),
        ));
        self.claims = Some(claims);
        Ok(())
    }

    /// Counts `positions` as already delivered on `subscription` (a resume's `since`), for
    /// transports whose resume token names every partition (SSE's event id).
    pub fn resume_from(&mut self, subscription: Arc<str>, positions: Positions) {
        self.delivered.insert(subscription, positions);
    }

    /// Per subscription, the last offset delivered per partition: where the client resumes.
    pub fn resume_positions(&self) -> BTreeMap<String, Positions> {
        self.delivered
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    /// The last offset delivered per partition on `subscription`.
    pub fn delivered(&self, subscription: &str) -> Option<&Positions> {
        self.delivered.get(subscription)
    }

    /// Starts accounting for a batch drained from the client's queue.
    pub fn batch(&mut self) -> Batch<'_> {
        Batch {
            metrics: &self.shared.metrics,
            encoding: self.client.encoding,
            delivered: &mut self.delivered,
            now_ms: chrono::Utc::now().timestamp_millis(),
            drained_at: STAGES.enabled().then(std::time::Instant::now),
            events: 0,
            bytes: 0,
        }
    }

    /// Takes the client out of the hub: nothing more is queued for it. Idempotent; a transport
    /// calls it as soon as it knows the connection ends, before a close handshake that may take
    /// a while.
    pub fn leave(&self) {
        self.shared.hub.disconnect(self.client.id);
        self.shared.hub.remove_client(&self.client);
        self.shared
            .metrics
            .subscriptions
            .set(self.shared.hub.subscription_count() as i64);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(expiry) = self.expiry.take() {
            expiry.abort();
        }
        self.leave();
        self.transport.connections(&self.shared.metrics).dec();
    }
}

/// A queue item ready for the wire.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A record delivered on `subscription`.
    Event {
        /// The subscription (channel or `*`).
        subscription: Arc<str>,
        /// The shared encoded frame.
        frame: WireFrame,
    },
    /// A control frame (a queued gap is encoded into one here).
    Control(Control),
}

impl Frame {
    /// The encoded frame.
    pub fn wire(&self) -> &WireFrame {
        match self {
            Frame::Event { frame, .. } => frame,
            Frame::Control(control) => &control.frame,
        }
    }

    /// The encoded frame, owned.
    pub fn into_wire(self) -> WireFrame {
        match self {
            Frame::Event { frame, .. } => frame,
            Frame::Control(control) => control.frame,
        }
    }
}

/// The accounting of one drained batch as its transport writes it: every event is a delivery
/// with a latency and a new resume position, every frame's bytes count. Call
/// [`written`](Batch::written) once the batch is handed to the socket.
pub struct Batch<'a> {
    metrics: &'a RelayMetrics,
    encoding: Encoding,
    delivered: &'a mut Delivered,
    now_ms: i64,
    drained_at: Option<std::time::Instant>,
    events: u64,
    bytes: u64,
}

impl Batch<'_> {
    /// Accounts for `item`, about to be written, and returns its frame.
    pub fn frame(&mut self, item: Outbound) -> Frame {
        let frame = match item {
            Outbound::Event {
                subscription,
                partition,
                offset,
                timestamp_ms,
                consumed_at,
                frame,
            } => {
                self.events += 1;
                if let Some(drained_at) = self.drained_at {
                    STAGES
                        .queue
                        .record(drained_at.saturating_duration_since(consumed_at));
                }
                if let Some(ts) = timestamp_ms {
                    self.metrics
                        .latency
                        .observe((self.now_ms - ts).max(0) as f64 / 1000.0);
                }
                // Looked up by name first: the key exists after the first event, and an
                // `Arc` clone per event is a contended atomic with thousands of `*` clients.
                match self.delivered.get_mut(&*subscription) {
                    Some(positions) => {
                        positions.insert(partition, offset);
                    }
                    None => {
                        self.delivered
                            .insert(subscription.clone(), [(partition, offset)].into());
                    }
                }
                Frame::Event {
                    subscription,
                    frame,
                }
            }
            Outbound::Control(control) => Frame::Control(control),
            Outbound::Progress {
                subscription,
                positions,
                control,
            } => {
                // Resume from just below the progress where that is past the last event.
                let delivered = self.delivered.entry(subscription).or_default();
                for (p, next) in positions.iter() {
                    let at = delivered.entry(*p).or_insert(next - 1);
                    *at = (*at).max(next - 1);
                }
                Frame::Control(control)
            }
            Outbound::Gap {
                subscription,
                from,
                to,
                reason,
            } => Frame::Control(protocol::gap(
                self.encoding,
                &subscription,
                &from,
                &to,
                reason,
            )),
        };
        self.bytes += frame.wire().len() as u64;
        frame
    }

    /// The last offset delivered per partition on `subscription`, this batch included.
    pub fn delivered(&self, subscription: &str) -> Option<&Positions> {
        self.delivered.get(subscription)
    }

    /// Counts the batch as written: deliveries, bytes, and the write stage when recording.
    pub fn written(self) {
        if let Some(drained_at) = self.drained_at
            && self.events > 0
        {
            STAGES.write.record(drained_at.elapsed());
        }
        self.metrics.deliveries.inc_by(self.events);
        self.metrics.bytes_out.inc_by(self.bytes);
    }
}
