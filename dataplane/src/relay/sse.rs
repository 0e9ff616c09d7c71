//! Server-Sent Events, for clients that cannot use WebSocket: `GET /sse?channel=X`.
//!
//! Each record is one SSE message whose `data` is the same JSON as a WebSocket `event` frame and
//! whose `id` gives, for *every* partition of the topic, the last offset the client has seen
//! (`0:41,1:-1,2:17`), so a reconnecting `EventSource` sends it back as `Last-Event-ID` and
//! resumes with the same no-gap/no-duplicate rule as WebSocket. `subscribed` carries such an id
//! too. An id that left out a partition would make that partition resume live, and whatever
//! was produced there while the client was away would never arrive (the id rule is in
//! `docs/protocol.md`). A filtered subscription's `progress` carries such an id as well, so an
//! `EventSource` resumes past what its `&filter=` dropped. Control frames are named events
//! (`subscribed`, `progress`, `gap`, `error`, `broadcast`), by the kind they carry. The subscription, its checks and the delivery accounting are the
//! [`session`](super::session)'s; this module owns the SSE framing.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::Shared;
use super::client::{Closed, Outbound};
use super::protocol::{self, ControlKind, ErrorCode, Positions, ProtocolError, SubscribeOptions};
use super::record::{Encoding, WireFrame};
use super::session::{Frame, Session, Transport, authorize, unavailable};

/// Query of `GET /sse`.
#[derive(Debug, Deserialize)]
pub struct SseQuery {
    channel: Option<String>,
    since: Option<String>,
    token: Option<String>,
    filter: Option<String>,
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
    let mut since = match resume.as_deref().filter(|s| !s.is_empty()) {
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
    let mut session = Session::open(shared.clone(), slot, Transport::Sse, Encoding::Json, claims);
    let channel: Arc<str> = channel.into();
    if let Some(since) = &mut since {
        // A resume token without some partitions (a hand-written `since`, or an id from a
        // bridge before ids named every partition) resumes those from where the channel's
        // shard is now. Completing it *before* registering makes it a replay of whatever is
        // published until registration, and makes every id of this connection, the replayed
        // events' ones included, name every partition.
        for (p, next) in shared.hub.channel_positions(&channel) {
            since.entry(p).or_insert(next - 1);
        }
    }
    // The event id names every partition, those of `since` included, so that a reconnect
    // never goes back before them.
    let positions = since.clone().unwrap_or_default();
    let options = SubscribeOptions {
        channel: channel.clone(),
        since,
        filter: query.filter.filter(|f| !f.is_empty()).map(Into::into),
    };
    if let Err(err) = session.subscribe(options) {
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
    session.resume_from(channel.clone(), positions.clone());
    let ping = shared.config.ping_interval;
    let state = Stream {
        session,
        seen: positions,
        buffer: VecDeque::new(),
        done: false,
    };
    let stream = futures::stream::unfold(state, next);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(ping))
        .into_response()
}

/// The response's state; dropping it (client gone or server closing) ends the session.
struct Stream {
    session: Session,
    /// The resume id: per partition of the topic, the last offset this client has seen or
    /// was told it need not see (below `subscribed`'s positions). Only ever moves forward.
    seen: Positions,
    buffer: VecDeque<Event>,
    done: bool,
}

fn text_of(frame: &WireFrame) -> &str {
    match frame {
        WireFrame::Text(t) => t.as_str(),
        WireFrame::Binary(_) => "",
    }
}

/// The SSE event name of a control frame: a snapshot is a record, so an unnamed `message`
/// like the live ones.
fn event_name(kind: ControlKind) -> &'static str {
    match kind {
        ControlKind::Snapshot => "message",
        kind => kind.as_str(),
    }
}

async fn next(mut st: Stream) -> Option<(Result<Event, Infallible>, Stream)> {
    loop {
        if let Some(event) = st.buffer.pop_front() {
            return Some((Ok(event), st));
        }
        if st.done {
            return None;
        }
        let shared = st.session.shared().clone();
        let client = st.session.client().clone();
        tokio::select! {
            _ = shared.shutdown.cancelled() => {
                st.fill(client.drain().items);
                let resume = [(String::from("positions"), st.seen.clone())].into();
                let going_away = protocol::going_away(Encoding::Json, &resume);
                st.buffer.push_back(Event::default().event("error").data(text_of(&going_away.frame)));
                shared.metrics.close("shutdown");
                st.done = true;
            }
            _ = client.notify.notified() => {
                let drained = client.drain();
                st.fill(drained.items);
                if let Some(closed) = drained.closed {
                    let (code, reason) = match closed {
                        Closed::SlowClient => ("slow_client", "slow client: reconnect to resume"),
                        Closed::NotReading => ("not_reading", "too many unread replies"),
                        Closed::TokenExpired => ("token_expired", "the token expired: reconnect with a new token"),
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

/// `subscribed`'s `positions` (next offsets), read back from the frame the hub or the
/// replayer encoded: SSE always speaks JSON, and reading the frame keeps the shared control
/// type free of a field only this transport needs.
pub(crate) fn subscribed_positions(frame: &WireFrame) -> Option<Positions> {
    #[derive(Deserialize)]
    struct Subscribed {
        positions: BTreeMap<String, i64>,
    }
    let parsed: Subscribed = serde_json::from_str(text_of(frame)).ok()?;
    parsed
        .positions
        .into_iter()
        .map(|(p, next)| Some((p.parse().ok()?, next)))
        .collect()
}

/// Moves `seen` forward to `to` (never back: a `since` ahead of this bridge stays a floor).
pub(crate) fn advance(seen: &mut Positions, to: impl IntoIterator<Item = (i32, i64)>) {
    for (p, o) in to {
        let at = seen.entry(p).or_insert(o);
        *at = (*at).max(o);
    }
}

impl Stream {
    fn fill(&mut self, items: Vec<Outbound>) {
        let mut batch = self.session.batch();
        for item in items {
            let event = match batch.frame(item) {
                Frame::Event {
                    subscription,
                    frame,
                } => {
                    if let Some(delivered) = batch.delivered(&subscription) {
                        advance(&mut self.seen, delivered.iter().map(|(p, o)| (*p, *o)));
                    }
                    Event::default()
                        .id(format_positions(&self.seen))
                        .data(text_of(&frame))
                }
                Frame::Control(control)
                    if matches!(
                        control.kind,
                        ControlKind::Subscribed | ControlKind::Progress
                    ) =>
                {
                    // Live delivery starts at these positions (`subscribed`), or a filtered
                    // subscription's filter dropped everything else below them (`progress`):
                    // everything of the channel below them was either sent or is not the
                    // client's to see, so the id moves to just below them on every partition.
                    if let Some(live) = subscribed_positions(&control.frame) {
                        advance(&mut self.seen, live.into_iter().map(|(p, o)| (p, o - 1)));
                    }
                    Event::default()
                        .event(event_name(control.kind))
                        .id(format_positions(&self.seen))
                        .data(text_of(&control.frame))
                }
                Frame::Control(control) => Event::default()
                    .event(event_name(control.kind))
                    .data(text_of(&control.frame)),
            };
            self.buffer.push_back(event);
        }
        batch.written();
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

    #[test]
    fn subscribed_moves_the_id_to_just_below_live_on_every_partition_and_never_back() {
        let live: Positions = [(0, 10), (1, 0), (2, 7)].into();
        let frame = protocol::subscribed(Encoding::Json, "a", &live).frame;
        assert_eq!(subscribed_positions(&frame), Some(live.clone()));
        // A `since` ahead of this bridge on partition 2 stays a floor.
        let mut seen: Positions = [(2, 9)].into();
        advance(&mut seen, live.into_iter().map(|(p, o)| (p, o - 1)));
        assert_eq!(format_positions(&seen), "0:9,1:-1,2:9");
        assert_eq!(parse_positions("0:9,1:-1,2:9"), Some(seen));
    }

    #[test]
    fn events_are_named_by_the_kind_their_frame_carries() {
        // A record whose payload looks like a control frame is still a record: its name comes
        // from the kind, never from the text.
        let snapshot = protocol::Control::snapshot(WireFrame::Text(
            r#"{"type":"event","channel":"a","data":{"type":"gap"}}"#.into(),
        ));
        assert_eq!(event_name(snapshot.kind), "message");
        let subscribed = protocol::subscribed(Encoding::Json, "a", &Positions::new());
        assert_eq!(event_name(subscribed.kind), "subscribed");
        let gap = protocol::gap(
            Encoding::Json,
            "a",
            &[(0, 1)].into(),
            &[(0, 2)].into(),
            protocol::GapKind::Retention,
        );
        assert_eq!(event_name(gap.kind), "gap");
        let error = protocol::error(
            Encoding::Json,
            &ProtocolError::new(ErrorCode::ReplayFailed, "broker down"),
        );
        assert_eq!(event_name(error.kind), "error");
    }
}
