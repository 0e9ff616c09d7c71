//! WebSocket protocol v1 (see `docs/protocol.md`): parsing client frames in both encodings and
//! encoding the server's control frames (`subscribed`, `gap`, `error`, `pong`,
//! `authenticated`), each carried with its [`ControlKind`]. Pure.
//!
//! [`SubscribeOptions`] is what a client asks for when it subscribes, whatever the transport:
//! the one value that travels from the transport through the session and the hub to the
//! client's queue, so a new per-subscription option is a field there and its use where the
//! client admits records.

use std::collections::BTreeMap;
use std::sync::Arc;

use eventstream_proto::prost::Message;
use eventstream_proto::v1::{self as pb, ClientFrame, GapReason, ServerFrame, client_frame};
use serde_json::{Map, Value, json};

use super::record::{Encoding, WireFrame};

/// Positions per partition: the offset of a record, or the next offset to read, by context.
pub type Positions = BTreeMap<i32, i64>;

/// What a client asks for when it subscribes (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeOptions {
    /// Channel name or `*`.
    pub channel: Arc<str>,
    /// Last seen offset per partition: resume after these positions (replay from Kafka, then
    /// live), and never send anything at or below them again.
    pub since: Option<Positions>,
    /// A CEL predicate over each record (`docs/protocol.md`, [`super::filter`]): only records
    /// for which it is `true` are delivered. Compiled by the session, so every transport only
    /// carries the text.
    pub filter: Option<Arc<str>>,
}

impl SubscribeOptions {
    /// Live from now on `channel`.
    pub fn new(channel: impl Into<Arc<str>>) -> Self {
        Self {
            channel: channel.into(),
            since: None,
            filter: None,
        }
    }

    /// Only the records for which the CEL expression `filter` holds.
    pub fn filter(mut self, filter: impl Into<Arc<str>>) -> Self {
        self.filter = Some(filter.into());
        self
    }

    /// Resuming after `since`.
    pub fn since(mut self, since: Positions) -> Self {
        self.since = Some(since);
        self
    }
}

/// A request from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Start receiving a channel.
    Subscribe(SubscribeOptions),
    /// Stop receiving `channel`.
    Unsubscribe {
        /// Channel name or `*`.
        channel: String,
    },
    /// Answered with `pong` echoing `id`.
    Ping {
        /// Client-chosen id (a JSON string or number).
        id: Option<Value>,
    },
    /// A new token for the connection, checked as at the upgrade (a refresh before `exp`).
    Auth {
        /// The JWT, without `Bearer `.
        token: String,
    },
}

/// Error codes of `error` frames; stable, documented in `docs/protocol.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame is not valid JSON / protobuf, not an object, or lacks a required field.
    BadFrame,
    /// `type` names no request.
    UnknownType,
    /// The channel name is empty, too long or has control characters.
    InvalidChannel,
    /// `since` has a negative or non-integer offset, a partition the topic does not have, or an
    /// offset beyond the end of its partition.
    InvalidSince,
    /// The connection has as many subscriptions as it may.
    TooManySubscriptions,
    /// The token does not allow this channel.
    Forbidden,
    /// `unsubscribe` for a channel the connection is not subscribed to.
    NotSubscribed,
    /// `subscribe` for a channel the connection is already subscribed to.
    AlreadySubscribed,
    /// Replay from Kafka failed; the subscription continues live after a `gap`.
    ReplayFailed,
    /// The server is shutting down; `positions` says where to resume.
    GoingAway,
    /// An `auth` token was refused; the connection's current token still applies.
    Unauthorized,
    /// `auth` on a stream that checks no tokens.
    AuthDisabled,
    /// The connection's token expired (30 s leeway included); the connection closes (4001).
    TokenExpired,
    /// A subscription `filter` that does not compile, is too long or too costly.
    InvalidFilter,
}

impl ErrorCode {
    /// The code as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::InvalidSince => "invalid_since",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::ReplayFailed => "replay_failed",
            ErrorCode::GoingAway => "going_away",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::AuthDisabled => "auth_disabled",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::InvalidFilter => "invalid_filter",
        }
    }
}

/// A request that cannot be served, answered with an `error` frame.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtocolError {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// Channel concerned, if any.
    pub channel: Option<String>,
}

impl ProtocolError {
    /// An error about no particular channel.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            channel: None,
        }
    }

    /// An error about `channel`.
    pub fn on(code: ErrorCode, channel: &str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            channel: Some(channel.to_string()),
        }
    }
}

/// Parses a JSON text frame.
pub fn parse_json(text: &str) -> Result<Request, ProtocolError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ProtocolError::new(ErrorCode::BadFrame, format!("frame is not JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(ProtocolError::new(
            ErrorCode::BadFrame,
            "frame must be a JSON object with a \"type\"",
        ));
    };
    let kind = match obj.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(_) => {
            return Err(ProtocolError::new(
                ErrorCode::BadFrame,
                "\"type\" must be a string",
            ));
        }
        None => {
            return Err(ProtocolError::new(
                ErrorCode::BadFrame,
                "frame has no \"type\" (subscribe, unsubscribe, ping or auth)",
            ));
        }
    };
    match kind {
        "subscribe" => {
            let channel = channel_field(&obj)?;
            let since = match obj.get("since") {
                None | Some(Value::Null) => None,
                Some(Value::Object(map)) => Some(parse_since_json(&channel, map)?),
                Some(_) => {
                    return Err(ProtocolError::on(
                        ErrorCode::InvalidSince,
                        &channel,
                        "\"since\" must be an object of partition → last seen offset, e.g. {\"0\": 41}",
                    ));
                }
            };
            let filter = match obj.get("filter") {
                None | Some(Value::Null) => None,
                Some(Value::String(f)) => Some(f.as_str().into()),
                Some(_) => {
                    return Err(ProtocolError::on(
                        ErrorCode::InvalidFilter,
                        &channel,
                        "\"filter\" must be a string: a CEL expression such as data.cpu > 90.0",
                    ));
                }
            };
            Ok(Request::Subscribe(SubscribeOptions {
                channel: channel.into(),
                since,
                filter,
            }))
        }
        "unsubscribe" => Ok(Request::Unsubscribe {
            channel: channel_field(&obj)?,
        }),
        "ping" => match obj.get("id") {
            None | Some(Value::Null) => Ok(Request::Ping { id: None }),
            Some(id @ (Value::String(_) | Value::Number(_))) => Ok(Request::Ping {
                id: Some(id.clone()),
            }),
            Some(_) => Err(ProtocolError::new(
                ErrorCode::BadFrame,
                "ping \"id\" must be a string or a number",
            )),
        },
        "auth" => match obj.get("token") {
            Some(Value::String(token)) => Ok(Request::Auth {
                token: token.clone(),
            }),
            _ => Err(ProtocolError::new(
                ErrorCode::BadFrame,
                "auth needs a \"token\" string (the JWT, without Bearer)",
            )),
        },
        other => Err(ProtocolError::new(
            ErrorCode::UnknownType,
            format!("unknown type {other:?}: use subscribe, unsubscribe, ping or auth"),
        )),
    }
}

fn channel_field(obj: &Map<String, Value>) -> Result<String, ProtocolError> {
    match obj.get("channel") {
        Some(Value::String(channel)) => Ok(channel.clone()),
        Some(_) => Err(ProtocolError::new(
            ErrorCode::BadFrame,
            "\"channel\" must be a string",
        )),
        None => Err(ProtocolError::new(
            ErrorCode::BadFrame,
            "frame has no \"channel\"",
        )),
    }
}

fn parse_since_json(channel: &str, map: &Map<String, Value>) -> Result<Positions, ProtocolError> {
    let mut since = Positions::new();
    for (partition, offset) in map {
        let partition: i32 = partition.parse().ok().filter(|p| *p >= 0).ok_or_else(|| {
            ProtocolError::on(
                ErrorCode::InvalidSince,
                channel,
                format!("partition {partition:?} in \"since\" is not a non-negative integer"),
            )
        })?;
        let offset = offset.as_i64().filter(|o| *o >= -1).ok_or_else(|| {
            ProtocolError::on(
                ErrorCode::InvalidSince,
                channel,
                format!(
                    "offset for partition {partition} must be an integer ≥ -1 (-1: nothing seen yet)"
                ),
            )
        })?;
        since.insert(partition, offset);
    }
    Ok(since)
}

/// Parses a binary frame (`eventstream.v1.proto`).
pub fn parse_proto(bytes: &[u8]) -> Result<Request, ProtocolError> {
    let frame = ClientFrame::decode(bytes).map_err(|e| {
        ProtocolError::new(
            ErrorCode::BadFrame,
            format!("frame is not a ClientFrame: {e}"),
        )
    })?;
    match frame.frame {
        Some(client_frame::Frame::Subscribe(s)) => {
            let mut since = Positions::new();
            for (partition, offset) in s.since {
                if partition < 0 || offset < -1 {
                    return Err(ProtocolError::on(
                        ErrorCode::InvalidSince,
                        &s.channel,
                        format!("since {partition}:{offset}: partitions are ≥ 0, offsets ≥ -1"),
                    ));
                }
                since.insert(partition, offset);
            }
            Ok(Request::Subscribe(SubscribeOptions {
                channel: s.channel.into(),
                since: (!since.is_empty()).then_some(since),
                filter: s.filter.map(Into::into),
            }))
        }
        Some(client_frame::Frame::Unsubscribe(u)) => {
            Ok(Request::Unsubscribe { channel: u.channel })
        }
        Some(client_frame::Frame::Ping(p)) => Ok(Request::Ping {
            id: p.id.map(Value::String),
        }),
        Some(client_frame::Frame::Auth(a)) => Ok(Request::Auth { token: a.token }),
        None => Err(ProtocolError::new(
            ErrorCode::UnknownType,
            "ClientFrame has no known frame set",
        )),
    }
}

fn positions_json(positions: &Positions) -> Value {
    Value::Object(
        positions
            .iter()
            .map(|(p, o)| (p.to_string(), json!(o)))
            .collect(),
    )
}

/// What a control frame is, carried with it so that a transport naming its messages (SSE's
/// `event:` line) never looks inside the encoded bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlKind {
    /// `subscribed`.
    Subscribed,
    /// `gap`.
    Gap,
    /// `error` (`going_away` included).
    Error,
    /// `pong`.
    Pong,
    /// `authenticated` (an `auth` accepted).
    Authenticated,
    /// A channel's last record, sent on subscribe when `snapshot` is on: an `event` frame
    /// queued ahead of the live records, not a delivery.
    Snapshot,
    /// `progress`: a filtered subscription's positions moved past records it was not sent.
    Progress,
    /// `broadcast`: a record produced with the broadcast marker, for every client.
    Broadcast,
}

impl ControlKind {
    /// The frame's `type` on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ControlKind::Subscribed => "subscribed",
            ControlKind::Gap => "gap",
            ControlKind::Error => "error",
            ControlKind::Pong => "pong",
            ControlKind::Authenticated => "authenticated",
            ControlKind::Snapshot => "event",
            ControlKind::Progress => "progress",
            ControlKind::Broadcast => "broadcast",
        }
    }
}

/// An encoded server control frame and its kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Control {
    /// What it is.
    pub kind: ControlKind,
    /// The encoded frame.
    pub frame: WireFrame,
}

impl Control {
    /// A channel's last record as the snapshot frame.
    pub fn snapshot(frame: WireFrame) -> Self {
        Self {
            kind: ControlKind::Snapshot,
            frame,
        }
    }
}

fn text(kind: ControlKind, value: Value) -> Control {
    Control {
        kind,
        frame: WireFrame::Text(value.to_string().into()),
    }
}

fn binary(kind: ControlKind, frame: ServerFrame) -> Control {
    Control {
        kind,
        frame: WireFrame::Binary(frame.encode_to_vec().into()),
    }
}

/// `subscribed {channel, positions}`: live delivery starts at `positions` (next offsets).
pub fn subscribed(encoding: Encoding, channel: &str, positions: &Positions) -> Control {
    let kind = ControlKind::Subscribed;
    match encoding {
        Encoding::Json => text(
            kind,
            json!({
                "type": "subscribed", "channel": channel, "positions": positions_json(positions),
            }),
        ),
        Encoding::Proto => binary(
            kind,
            ServerFrame::subscribed(channel, positions.iter().map(|(p, o)| (*p, *o))),
        ),
    }
}

/// `progress {channel, positions}`: every record of a filtered subscription below `positions`
/// (next offsets, as in `subscribed`) has been sent or dropped by its filter; a client resumes
/// from `positions - 1` where that is past its last event (`docs/protocol.md`).
pub fn progress(encoding: Encoding, channel: &str, positions: &Positions) -> Control {
    let kind = ControlKind::Progress;
    match encoding {
        Encoding::Json => text(
            kind,
            json!({
                "type": "progress", "channel": channel, "positions": positions_json(positions),
            }),
        ),
        Encoding::Proto => binary(
            kind,
            ServerFrame::progress(channel, positions.iter().map(|(p, o)| (*p, *o))),
        ),
    }
}

/// `broadcast {partition, offset, timestamp, data}` of a record produced with the broadcast
/// marker; JSON embeds `data` like an `event` (text as a string with `encoding`), protobuf
/// carries the whole envelope.
pub fn broadcast(encoding: Encoding, record: &super::record::Record) -> Control {
    let kind = ControlKind::Broadcast;
    match encoding {
        Encoding::Json => Control {
            kind,
            frame: WireFrame::Text(record.json_broadcast().into()),
        },
        Encoding::Proto => Control {
            kind,
            frame: WireFrame::Binary(record.proto_broadcast().into()),
        },
    }
}

/// Why a client misses records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapKind {
    /// More than `replay.maxMessages` to replay.
    ReplayLimit,
    /// Kafka no longer has them.
    Retention,
    /// The client's queue overflowed.
    SlowClient,
    /// Replay failed (broker error).
    ReplayFailed,
}

impl GapKind {
    fn as_str(self) -> &'static str {
        match self {
            GapKind::ReplayLimit => "replay_limit",
            GapKind::Retention => "retention",
            GapKind::SlowClient => "slow_client",
            GapKind::ReplayFailed => "replay_failed",
        }
    }
}

/// `gap {channel, from, to, reason}`: per partition, offsets `from` (inclusive) to `to`
/// (exclusive) will not be delivered on this subscription; resume with `since = from - 1`.
pub fn gap(
    encoding: Encoding,
    channel: &str,
    from: &Positions,
    to: &Positions,
    kind: GapKind,
) -> Control {
    let control = ControlKind::Gap;
    match encoding {
        Encoding::Json => text(
            control,
            json!({
                "type": "gap", "channel": channel, "from": positions_json(from),
                "to": positions_json(to), "reason": kind.as_str(),
            }),
        ),
        Encoding::Proto => {
            let reason = match kind {
                GapKind::ReplayLimit => GapReason::ReplayLimit,
                GapKind::Retention => GapReason::Retention,
                GapKind::SlowClient => GapReason::SlowClient,
                GapKind::ReplayFailed => GapReason::Unspecified,
            };
            binary(
                control,
                ServerFrame::gap(
                    channel,
                    from.iter().map(|(p, o)| (*p, *o)),
                    to.iter().map(|(p, o)| (*p, *o)),
                    reason,
                ),
            )
        }
    }
}

/// `error {code, message, channel?}`.
pub fn error(encoding: Encoding, err: &ProtocolError) -> Control {
    let kind = ControlKind::Error;
    match encoding {
        Encoding::Json => {
            let mut v = json!({"type": "error", "code": err.code.as_str(), "message": err.message});
            if let Some(channel) = &err.channel {
                v["channel"] = json!(channel);
            }
            text(kind, v)
        }
        Encoding::Proto => binary(
            kind,
            match &err.channel {
                Some(channel) => {
                    ServerFrame::channel_error(channel, err.code.as_str(), &err.message)
                }
                None => ServerFrame::error(err.code.as_str(), &err.message),
            },
        ),
    }
}

/// `error {code: going_away, positions}` sent before closing on shutdown: the last offset
/// delivered per subscription and partition, ready to be sent back as `since`.
pub fn going_away(encoding: Encoding, resume: &BTreeMap<String, Positions>) -> Control {
    let kind = ControlKind::Error;
    let message = "server shutting down: reconnect and subscribe with these positions as since";
    match encoding {
        Encoding::Json => text(
            kind,
            json!({
                "type": "error", "code": ErrorCode::GoingAway.as_str(), "message": message,
                "positions": resume.iter().map(|(c, p)| (c.clone(), positions_json(p))).collect::<Map<_, _>>(),
            }),
        ),
        // The binary Error frame has no positions field; binary clients resume from the
        // positions of the events they received.
        Encoding::Proto => binary(
            kind,
            ServerFrame::error(ErrorCode::GoingAway.as_str(), message),
        ),
    }
}

/// `error {code: token_expired}`, sent before the connection ends at its token's expiry.
pub fn token_expired(encoding: Encoding) -> Control {
    error(
        encoding,
        &ProtocolError::new(
            ErrorCode::TokenExpired,
            "the token expired: connect again with a new token (refresh before exp with an auth frame to keep the connection)",
        ),
    )
}

/// `pong {id?}`.
pub fn pong(encoding: Encoding, id: Option<&Value>) -> Control {
    let kind = ControlKind::Pong;
    match encoding {
        Encoding::Json => match id {
            Some(id) => text(kind, json!({"type": "pong", "id": id})),
            None => text(kind, json!({"type": "pong"})),
        },
        Encoding::Proto => binary(
            kind,
            ServerFrame::pong(id.map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })),
        ),
    }
}

/// `authenticated {exp}`: an `auth` was accepted; the connection now ends when the token of
/// `exp` (seconds since the Unix epoch) does, unless refreshed again.
pub fn authenticated(encoding: Encoding, exp: i64) -> Control {
    let kind = ControlKind::Authenticated;
    match encoding {
        Encoding::Json => text(kind, json!({"type": "authenticated", "exp": exp})),
        Encoding::Proto => binary(kind, ServerFrame::authenticated(exp)),
    }
}

/// Decodes a server frame back to JSON (tests and tools).
pub fn proto_to_debug(bytes: &[u8]) -> Option<pb::ServerFrame> {
    ServerFrame::decode(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> ErrorCode {
        parse_json(text).expect_err("must be refused").code
    }

    #[test]
    fn parses_every_request() {
        assert_eq!(
            parse_json(r#"{"type":"subscribe","channel":"a","since":{"0":41,"3":7}}"#),
            Ok(Request::Subscribe(
                SubscribeOptions::new("a").since([(0, 41), (3, 7)].into())
            ))
        );
        assert_eq!(
            parse_json(r#"{"type":"subscribe","channel":"*"}"#),
            Ok(Request::Subscribe(SubscribeOptions::new("*")))
        );
        assert_eq!(
            parse_json(r#"{"type":"unsubscribe","channel":"a"}"#),
            Ok(Request::Unsubscribe {
                channel: "a".into()
            })
        );
        assert_eq!(
            parse_json(r#"{"type":"ping","id":7}"#),
            Ok(Request::Ping { id: Some(json!(7)) })
        );
        assert_eq!(
            parse_json(r#"{"type":"auth","token":"a.b.c"}"#),
            Ok(Request::Auth {
                token: "a.b.c".into()
            })
        );
        assert_eq!(
            parse_proto(&ClientFrame::auth("a.b.c").encode_to_vec()),
            Ok(Request::Auth {
                token: "a.b.c".into()
            })
        );
    }

    #[test]
    fn refuses_bad_frames_with_codes() {
        assert_eq!(code("hello"), ErrorCode::BadFrame);
        assert_eq!(code("[1,2]"), ErrorCode::BadFrame);
        assert_eq!(code(r#"{"channel":"a"}"#), ErrorCode::BadFrame);
        assert_eq!(code(r#"{"type":5}"#), ErrorCode::BadFrame);
        assert_eq!(code(r#"{"type":"subscribe"}"#), ErrorCode::BadFrame);
        assert_eq!(
            code(r#"{"type":"subscribe","channel":3}"#),
            ErrorCode::BadFrame
        );
        assert_eq!(
            code(r#"{"type":"publish","channel":"a"}"#),
            ErrorCode::UnknownType
        );
        assert_eq!(code(r#"{"type":"ping","id":{}}"#), ErrorCode::BadFrame);
        // Seed-style `auth` without a token (`{"type":"auth","userId":…}`) is refused plainly.
        assert_eq!(
            code(r#"{"type":"auth","userId":"test"}"#),
            ErrorCode::BadFrame
        );
        assert_eq!(code(r#"{"type":"auth","token":7}"#), ErrorCode::BadFrame);
    }

    #[test]
    fn filters_travel_as_text_in_both_encodings() {
        assert_eq!(
            parse_json(r#"{"type":"subscribe","channel":"s","filter":"data.cpu > 90.0"}"#),
            Ok(Request::Subscribe(
                SubscribeOptions::new("s").filter("data.cpu > 90.0")
            ))
        );
        let err = parse_json(r#"{"type":"subscribe","channel":"s","filter":7}"#)
            .expect_err("not a string");
        assert_eq!(
            (err.code, err.channel.as_deref()),
            (ErrorCode::InvalidFilter, Some("s"))
        );
        let bytes = ClientFrame::subscribe_filtered("s", [(0, 3)], "key == 'a'").encode_to_vec();
        assert_eq!(
            parse_proto(&bytes),
            Ok(Request::Subscribe(
                SubscribeOptions::new("s")
                    .since([(0, 3)].into())
                    .filter("key == 'a'")
            ))
        );
        let WireFrame::Text(t) = progress(Encoding::Json, "s", &[(0, 7)].into()).frame else {
            panic!()
        };
        assert_eq!(
            serde_json::from_str::<Value>(t.as_str()).expect("json"),
            json!({"type": "progress", "channel": "s", "positions": {"0": 7}})
        );
    }

    #[test]
    fn refuses_invalid_since() {
        for since in [
            r#"{"0":-2}"#,
            r#"{"-1":3}"#,
            r#"{"x":3}"#,
            r#"{"0":1.5}"#,
            r#"{"0":"3"}"#,
            "[1]",
        ] {
            let frame = format!(r#"{{"type":"subscribe","channel":"a","since":{since}}}"#);
            let err = parse_json(&frame).expect_err(&frame);
            assert_eq!(err.code, ErrorCode::InvalidSince, "{frame}");
            assert_eq!(err.channel.as_deref(), Some("a"));
        }
    }

    #[test]
    fn minus_one_means_nothing_seen_yet() {
        assert_eq!(
            parse_json(r#"{"type":"subscribe","channel":"a","since":{"0":-1}}"#),
            Ok(Request::Subscribe(
                SubscribeOptions::new("a").since([(0, -1)].into())
            ))
        );
    }

    #[test]
    fn proto_requests_round_trip() {
        let bytes = ClientFrame::subscribe("a", [(1, 5)]).encode_to_vec();
        assert_eq!(
            parse_proto(&bytes),
            Ok(Request::Subscribe(
                SubscribeOptions::new("a").since([(1, 5)].into())
            ))
        );
        let bytes = ClientFrame::subscribe("a", []).encode_to_vec();
        assert_eq!(
            parse_proto(&bytes),
            Ok(Request::Subscribe(SubscribeOptions::new("a")))
        );
        assert_eq!(
            parse_proto(&[0xff, 0xff]).map_err(|e| e.code),
            Err(ErrorCode::BadFrame)
        );
        assert_eq!(
            parse_proto(&[]).map_err(|e| e.code),
            Err(ErrorCode::UnknownType)
        );
    }

    #[test]
    fn control_frames_encode() {
        let WireFrame::Text(t) = subscribed(Encoding::Json, "a", &[(0, 42)].into()).frame else {
            panic!()
        };
        assert_eq!(
            serde_json::from_str::<Value>(t.as_str()).expect("json"),
            json!({"type": "subscribed", "channel": "a", "positions": {"0": 42}})
        );
        let WireFrame::Text(t) = gap(
            Encoding::Json,
            "a",
            &[(0, 3)].into(),
            &[(0, 9)].into(),
            GapKind::SlowClient,
        )
        .frame
        else {
            panic!()
        };
        assert_eq!(
            serde_json::from_str::<Value>(t.as_str()).expect("json"),
            json!({"type": "gap", "channel": "a", "from": {"0": 3}, "to": {"0": 9}, "reason": "slow_client"})
        );
        let WireFrame::Binary(b) = error(
            Encoding::Proto,
            &ProtocolError::on(ErrorCode::Forbidden, "a", "no"),
        )
        .frame
        else {
            panic!()
        };
        let frame = proto_to_debug(&b).expect("decodes");
        let Some(pb::server_frame::Frame::Error(e)) = frame.frame else {
            panic!()
        };
        assert_eq!(
            (e.code.as_str(), e.channel.as_deref()),
            ("forbidden", Some("a"))
        );
    }
}
