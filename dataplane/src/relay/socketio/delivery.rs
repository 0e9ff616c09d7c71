//! What a socket receives for each item of its queue: the per-subscription delivery (event
//! name, payload shape, resume positions, the answer its join still owes) and the turning of
//! the session's frames into Socket.IO emits. No I/O: the [`pump`](super::pump) sends.
//!
//! - A record is emitted as its subscription's event with two arguments: the body (the
//!   protocol v1 event object, or the bare payload) and `meta`
//!   `{channel, partition, offset, resume}`, where `resume` names, for *every* partition, the
//!   last offset this subscription has seen: what the client hands back in `auth.resume` so
//!   that a reconnect loses nothing and repeats nothing. A handler written for one argument
//!   (seed 001's `new_event`) ignores the second.
//! - `subscribed` answers the join (its acknowledgement callback and/or its alias's event)
//!   with `{channel, resume}`, once history (a resume's replay) has been delivered.
//! - Other control frames are emitted by their kind (`gap`, `error`, `pong`,
//!   `authenticated`) with the protocol v1 object; a snapshot is a record of its channel.

use std::collections::HashMap;
use std::sync::Arc;

use eventstream_crds::v1alpha1::SocketIoPayload;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use socketioxide::extract::AckSender;

use crate::relay::client::Outbound;
use crate::relay::protocol::{ControlKind, Positions};
use crate::relay::record::WireFrame;
use crate::relay::session::{Frame, Session};
use crate::relay::sse::{advance, subscribed_positions};

/// How one subscription's records reach the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The event name.
    pub event: Arc<str>,
    /// The first argument's shape.
    pub payload: SocketIoPayload,
}

/// The answer a join owes until its `subscribed`.
pub struct Answer {
    /// The alias's acknowledgement event (`dashboard_joined`).
    pub event: Option<Arc<str>>,
    /// The acknowledgement callback the client passed, if any.
    pub ack: Option<AckSender>,
}

/// One subscription of the socket.
pub struct Sub {
    /// Event name and shape.
    pub delivery: Delivery,
    /// Per partition of the topic, the last offset seen (or not the client's to see).
    pub seen: Positions,
    /// Sent on `subscribed`.
    pub answer: Option<Answer>,
}

/// The socket's subscriptions by name.
pub type Subs = HashMap<Arc<str>, Sub>;

/// One emit.
pub enum Emit {
    /// A record: `event(body, meta)`.
    Record {
        /// Event name.
        event: Arc<str>,
        /// Protocol v1 event or bare payload.
        body: Box<RawValue>,
        /// `{channel, partition, offset, resume}`.
        meta: Value,
    },
    /// A control frame: `event(body)`.
    Control {
        /// `gap`, `error`, `pong`, `authenticated`, `broadcast`, `progress`.
        event: &'static str,
        /// The protocol v1 object.
        body: Box<RawValue>,
    },
    /// A join answered.
    Joined {
        /// The alias's event, if any.
        event: Option<Arc<str>>,
        /// The callback, if any.
        ack: Option<AckSender>,
        /// `{channel, resume}`.
        body: Value,
    },
}

fn text(frame: &WireFrame) -> &str {
    match frame {
        WireFrame::Text(t) => t.as_str(),
        // Socket.IO sessions are JSON sessions.
        WireFrame::Binary(_) => "null",
    }
}

fn raw(text: &str) -> Option<Box<RawValue>> {
    RawValue::from_string(text.to_owned()).ok()
}

/// A JSON control frame as an emit argument.
pub fn raw_frame(frame: &WireFrame) -> Option<Box<RawValue>> {
    raw(text(frame))
}

/// The first argument of a record event: the v1 event object as is, or its `data` alone.
pub fn body(event_json: &str, payload: SocketIoPayload) -> Option<Box<RawValue>> {
    match payload {
        SocketIoPayload::Event => raw(event_json),
        SocketIoPayload::Payload => {
            #[derive(Deserialize)]
            struct Event<'a> {
                #[serde(borrow)]
                data: &'a RawValue,
            }
            let event: Event<'_> = serde_json::from_str(event_json).ok()?;
            raw(event.data.get())
        }
    }
}

/// `{"0": 41, "1": -1}`.
pub fn positions_json(positions: &Positions) -> Value {
    Value::Object(
        positions
            .iter()
            .map(|(p, o)| (p.to_string(), json!(o)))
            .collect(),
    )
}

/// The `channel` of a control frame about one subscription (`subscribed`, a snapshot).
fn channel_of(frame: &WireFrame) -> Option<Arc<str>> {
    #[derive(Deserialize)]
    struct About<'a> {
        #[serde(borrow)]
        channel: std::borrow::Cow<'a, str>,
    }
    let about: About<'_> = serde_json::from_str(text(frame)).ok()?;
    Some(about.channel.as_ref().into())
}

/// Turns drained queue items into emits, with the session's delivery accounting.
pub fn prepare(session: &mut Session, subs: &mut Subs, items: Vec<Outbound>) -> Vec<Emit> {
    let mut out = Vec::with_capacity(items.len());
    let mut batch = session.batch();
    for item in items {
        let position = match &item {
            Outbound::Event {
                partition, offset, ..
            } => Some((*partition, *offset)),
            _ => None,
        };
        match batch.frame(item) {
            Frame::Event {
                subscription,
                frame,
            } => {
                let Some(sub) = subs.get_mut(&subscription) else {
                    continue;
                };
                let Some((partition, offset)) = position else {
                    continue;
                };
                advance(&mut sub.seen, [(partition, offset)]);
                if let Some(body) = body(text(&frame), sub.delivery.payload) {
                    out.push(Emit::Record {
                        event: sub.delivery.event.clone(),
                        body,
                        meta: json!({
                            "channel": &*subscription,
                            "partition": partition,
                            "offset": offset,
                            "resume": positions_json(&sub.seen),
                        }),
                    });
                }
            }
            Frame::Control(control) => match control.kind {
                ControlKind::Subscribed => {
                    let (Some(channel), Some(live)) = (
                        channel_of(&control.frame),
                        subscribed_positions(&control.frame),
                    ) else {
                        continue;
                    };
                    let Some(sub) = subs.get_mut(&channel) else {
                        continue;
                    };
                    // Live delivery starts at these positions: everything below them was
                    // replayed or is not this client's to see.
                    advance(&mut sub.seen, live.into_iter().map(|(p, o)| (p, o - 1)));
                    if let Some(answer) = sub.answer.take() {
                        out.push(Emit::Joined {
                            event: answer.event,
                            ack: answer.ack,
                            body: json!({
                                "channel": &*channel,
                                "resume": positions_json(&sub.seen),
                            }),
                        });
                    }
                }
                ControlKind::Snapshot => {
                    let Some(channel) = channel_of(&control.frame) else {
                        continue;
                    };
                    let Some(sub) = subs.get(&channel) else {
                        continue;
                    };
                    if let Some(body) = body(text(&control.frame), sub.delivery.payload) {
                        out.push(Emit::Record {
                            event: sub.delivery.event.clone(),
                            body,
                            meta: json!({
                                "channel": &*channel,
                                "snapshot": true,
                                "resume": positions_json(&sub.seen),
                            }),
                        });
                    }
                }
                ControlKind::Progress => {
                    // A filtered subscription moved past records it was not sent: its resume
                    // moves with it, so that a reconnect neither re-reads them nor reports a
                    // replay_limit gap (docs/protocol.md, the progress rule).
                    let (Some(channel), Some(next)) = (
                        channel_of(&control.frame),
                        subscribed_positions(&control.frame),
                    ) else {
                        continue;
                    };
                    let Some(sub) = subs.get_mut(&channel) else {
                        continue;
                    };
                    advance(&mut sub.seen, next.into_iter().map(|(p, o)| (p, o - 1)));
                    let body = json!({"channel": &*channel, "resume": positions_json(&sub.seen)});
                    if let Some(body) = raw(&body.to_string()) {
                        out.push(Emit::Control {
                            event: "progress",
                            body,
                        });
                    }
                }
                kind => {
                    if let Some(body) = raw(text(&control.frame)) {
                        out.push(Emit::Control {
                            event: kind.as_str(),
                            body,
                        });
                    }
                }
            },
        }
    }
    batch.written();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{"type":"event","channel":"*","partition":0,"offset":4,"timestamp":null,"key":"u1","data":{"eventType":"like_clicked","n":[1,2]}}"#;

    #[test]
    fn a_record_is_the_v1_event_or_its_bare_payload() {
        let whole = body(EVENT, SocketIoPayload::Event).expect("json");
        assert_eq!(whole.get(), EVENT);
        let bare = body(EVENT, SocketIoPayload::Payload).expect("json");
        assert_eq!(bare.get(), r#"{"eventType":"like_clicked","n":[1,2]}"#);
        let text = r#"{"type":"event","channel":"a","partition":0,"offset":1,"data":"hi","encoding":"text"}"#;
        assert_eq!(
            body(text, SocketIoPayload::Payload).expect("text").get(),
            r#""hi""#
        );
        assert!(body("not json", SocketIoPayload::Payload).is_none());
    }

    #[test]
    fn a_control_frame_names_its_channel() {
        let subscribed = crate::relay::protocol::subscribed(
            crate::relay::record::Encoding::Json,
            "car-7",
            &[(0, 3)].into(),
        );
        assert_eq!(channel_of(&subscribed.frame).as_deref(), Some("car-7"));
        assert_eq!(
            positions_json(&[(0, 2), (1, -1)].into()),
            json!({"0": 2, "1": -1})
        );
    }
}
