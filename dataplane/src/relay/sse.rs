//! Server-Sent Events, for clients that cannot use WebSocket: `GET /sse?channel=X`.
//!
//! Each record is one SSE message whose `data` is the same JSON as a WebSocket `event` frame and
//! whose `id` lists the last offset seen per partition (`0:41,3:17`), so a reconnecting
//! `EventSource` sends it back as `Last-Event-ID` and resumes with the same no-gap/no-duplicate
//! rule as WebSocket. Control frames are named events: `subscribed`, `gap`, `error`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::client::{Client, Closed, Outbound};
use super::protocol::{self, ErrorCode, Positions, ProtocolError};
use super::record::{Encoding, WireFrame};
use super::ws::{authorize, subscribe, unavailable};
use super::{ConnectionSlot, Shared};

/// Query of `GET /sse`.
#[derive(Debug, Deserialize)]
pub struct SseQuery {
    channel: Option<String>,
    since: Option<String>,
    token: Option<String>,
}

/// Parses `0:41,3:17` (also the SSE `id`).
pub fn parse_positions(text: &str) -> Option<Positions> {
    let mut out = Positions::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (p, o) = part.split_once(':')?;
        let p: i32 = p.trim().parse().ok().filter(|p| *p >= 0)?;
        let o: i64 = o.trim().parse().ok().filter(|o| *o >= -1)?;
        out.insert(p, o);
    }
    Some(out)
}

/// Formats positions as an SSE id.
pub fn format_positions(positions: &Positions) -> String {
    positions
        .iter()
        .map(|(p, o)| format!("{p}:{o}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn bad_request(shared: &Shared, err: ProtocolError) -> Response {
    shared.metrics.protocol_error(err.code.as_str());
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": {"code": err.code.as_str(), "message": err.message}})),
    )
        .into_response()
}

/// `GET /sse?channel=X[&since=P:O,…]`, resuming from `Last-Event-ID` when present.
pub async fn handler(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<SseQuery>,
) -> Response {
    if shared.shutdown.is_cancelled() {
        return unavailable(&shared, "shutting_down", "the bridge is shutting down");
    }
    let claims = match authorize(&shared, &headers, query.token.as_deref()) {
        Ok(claims) => claims,
        Err(response) => return *response,
    };
    let Some(channel) = query.channel.filter(|c| !c.is_empty()) else {
        return bad_request(
            &shared,
            ProtocolError::new(
                ErrorCode::BadFrame,
                "the channel query parameter is required",
            ),
        );
    };
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.since);
    let since = match resume.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => match parse_positions(text) {
            Some(p) if !p.is_empty() => Some(p),
            _ => {
                return bad_request(
                    &shared,
                    ProtocolError::on(
                        ErrorCode::InvalidSince,
                        &channel,
                        "since / Last-Event-ID must look like 0:41,3:17 (partition:last seen offset)",
                    ),
                );
            }
        },
    };
    let Some(slot) = shared.admit() else {
        return unavailable(&shared, "limit", "the bridge is at its connection limit");
    };
    let client = Arc::new(
        Client::new(
            shared.next_client_id(),
            Encoding::Json,
            shared.config.queue_messages as usize,
            shared.config.slow_client_policy,
        )
        .with_drop_counter(shared.metrics.slow_client_drops()),
    );
    let positions = since.clone().unwrap_or_default();
    if let Err(err) = subscribe(&shared, &client, claims.as_ref(), channel, since) {
        let code = if err.code == ErrorCode::Forbidden {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::BAD_REQUEST
        };
        shared.metrics.protocol_error(err.code.as_str());
        return (
            code,
            axum::Json(json!({"error": {"code": err.code.as_str(), "message": err.message}})),
        )
            .into_response();
    }
    shared.metrics.connections_sse.inc();
    let ping = shared.config.ping_interval;
    let state = Stream {
        guard: Guard {
            shared: shared.clone(),
            client,
            _slot: slot,
        },
        buffer: VecDeque::new(),
        positions,
        done: false,
    };
    let stream = futures::stream::unfold(state, next);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(ping))
        .into_response()
}

/// Removes the client from the hub when the response ends (client gone or server closing).
struct Guard {
    shared: Arc<Shared>,
    client: Arc<Client>,
    _slot: ConnectionSlot,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.hub.remove_client(&self.client);
        self.shared
            .metrics
            .subscriptions
            .set(self.shared.hub.subscription_count() as i64);
        self.shared.metrics.connections_sse.dec();
    }
}

struct Stream {
    guard: Guard,
    buffer: VecDeque<Event>,
    positions: Positions,
    done: bool,
}

fn text_of(frame: &WireFrame) -> &str {
    match frame {
        WireFrame::Text(t) => t.as_str(),
        WireFrame::Binary(_) => "",
    }
}

fn event_name(frame: &WireFrame) -> &'static str {
    let text = text_of(frame);
    for name in ["subscribed", "gap", "error", "pong"] {
        if text.contains(&format!(r#""type":"{name}""#)) {
            return name;
        }
    }
    "message"
}

async fn next(mut st: Stream) -> Option<(Result<Event, Infallible>, Stream)> {
    loop {
        if let Some(event) = st.buffer.pop_front() {
            return Some((Ok(event), st));
        }
        if st.done {
            return None;
        }
        let shared = st.guard.shared.clone();
        let client = st.guard.client.clone();
        tokio::select! {
            _ = shared.shutdown.cancelled() => {
                st.fill(&client.drain().items);
                let resume = [(String::from("positions"), st.positions.clone())].into();
                let frame = protocol::going_away(Encoding::Json, &resume);
                st.buffer.push_back(Event::default().event("error").data(text_of(&frame)));
                shared.metrics.close("shutdown");
                st.done = true;
            }
            _ = client.notify.notified() => {
                let drained = client.drain();
                st.fill(&drained.items);
                if let Some(closed) = drained.closed {
                    let (code, reason) = match closed {
                        Closed::SlowClient => ("slow_client", "slow client: reconnect to resume"),
                        Closed::NotReading => ("not_reading", "too many unread replies"),
                    };
                    shared.metrics.close(code);
                    st.buffer.push_back(Event::default().event("error").data(
                        json!({"type": "error", "code": code, "message": reason}).to_string(),
                    ));
                    st.done = true;
                }
            }
        }
    }
}

impl Stream {
    fn fill(&mut self, items: &[Outbound]) {
        let metrics = &self.guard.shared.metrics;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut events = 0u64;
        for item in items {
            match item {
                Outbound::Event {
                    partition,
                    offset,
                    timestamp_ms,
                    frame,
                    ..
                } => {
                    self.positions.insert(*partition, *offset);
                    events += 1;
                    if let Some(ts) = timestamp_ms {
                        metrics
                            .latency
                            .observe((now_ms - ts).max(0) as f64 / 1000.0);
                    }
                    metrics.bytes_out.inc_by(frame.len() as u64);
                    self.buffer.push_back(
                        Event::default()
                            .id(format_positions(&self.positions))
                            .data(text_of(frame)),
                    );
                }
                Outbound::Control(frame) => {
                    self.buffer.push_back(
                        Event::default()
                            .event(event_name(frame))
                            .data(text_of(frame)),
                    );
                }
                Outbound::Gap {
                    subscription,
                    from,
                    to,
                    reason,
                } => {
                    let frame = protocol::gap(Encoding::Json, subscription, from, to, *reason);
                    self.buffer
                        .push_back(Event::default().event("gap").data(text_of(&frame)));
                }
            }
        }
        metrics.deliveries.inc_by(events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_garbage_is_refused() {
        let p = parse_positions("0:41,3:17").expect("valid");
        assert_eq!(p, [(0, 41), (3, 17)].into());
        assert_eq!(format_positions(&p), "0:41,3:17");
        for bad in ["x", "0:", ":1", "0:-2", "-1:3", "0:1:2", "0;1"] {
            assert_eq!(parse_positions(bad), None, "{bad}");
        }
    }
}
