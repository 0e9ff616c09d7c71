//! A consumed Kafka record as the hub carries it, and its wire frames. Each record is encoded
//! at most once per (subscription name, wire encoding) and the bytes are shared by every
//! subscriber: a `*` subscriber and a channel subscriber see different `channel` fields, so a
//! record has at most four encodings, each built on first use.

use std::fmt::Write;
use std::sync::{Arc, OnceLock};

use axum::extract::ws::Utf8Bytes;
use base64::Engine;
use bytes::Bytes;
use eventstream_proto::prost::Message;
use eventstream_proto::v1::{Envelope, Header, PayloadEncoding, ServerFrame};

use super::channel::ALL;

/// Kafka header marking a record as a broadcast (any value; `POST /broadcast` sets `1`): it
/// reaches every client of every bridge replica as a `broadcast` frame, whatever it subscribed
/// to, and is never delivered as an event nor replayed (`docs/protocol.md`).
pub const HEADER_BROADCAST: &str = "eventstream-broadcast";

/// What a payload is, decided once per record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    /// A valid JSON document: embedded as it is in JSON frames.
    Json,
    /// UTF-8 text that is not JSON: a JSON string in JSON frames.
    Text,
    /// Anything else: base64 in JSON frames, raw bytes in protobuf frames.
    Binary,
}

impl PayloadKind {
    /// Classifies a payload.
    pub fn of(payload: &[u8]) -> Self {
        if serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok() {
            PayloadKind::Json
        } else if std::str::from_utf8(payload).is_ok() {
            PayloadKind::Text
        } else {
            PayloadKind::Binary
        }
    }
}

/// The wire encoding a client chose with its subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `eventstream.v1.json`: text frames.
    Json,
    /// `eventstream.v1.proto`: binary frames of `ServerFrame`.
    Proto,
}

/// An encoded frame, cheap to clone (reference-counted bytes).
#[derive(Debug, Clone, PartialEq)]
pub enum WireFrame {
    /// A text frame.
    Text(Utf8Bytes),
    /// A binary frame.
    Binary(Bytes),
}

impl WireFrame {
    /// Size on the wire (payload bytes).
    pub fn len(&self) -> usize {
        match self {
            WireFrame::Text(t) => t.len(),
            WireFrame::Binary(b) => b.len(),
        }
    }

    /// Whether the frame is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One consumed record.
#[derive(Debug)]
pub struct Record {
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// Kafka timestamp in milliseconds, when the record has one.
    pub timestamp_ms: Option<i64>,
    /// Record key.
    pub key: Option<Bytes>,
    /// Record value.
    pub payload: Bytes,
    /// Record headers, in order.
    pub headers: Vec<(String, Bytes)>,
    /// The derived channel, when the record has one.
    pub channel: Option<Arc<str>>,
    /// What the payload is.
    pub kind: PayloadKind,
    /// When the bridge built this record from Kafka (for the latency stages).
    pub consumed_at: std::time::Instant,
    /// Whether it carries the [`HEADER_BROADCAST`] marker: sent to every client as a
    /// `broadcast` frame, never as an event, never replayed.
    pub broadcast: bool,
    encoded: [OnceLock<WireFrame>; 4],
}

impl Record {
    /// A record; `channel` comes from [`super::channel::ChannelSource::derive`].
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<Bytes>,
        payload: Bytes,
        headers: Vec<(String, Bytes)>,
        channel: Option<Arc<str>>,
        kind: PayloadKind,
    ) -> Self {
        let broadcast = headers.iter().any(|(k, _)| k == HEADER_BROADCAST);
        Self {
            broadcast,
            partition,
            offset,
            timestamp_ms,
            key,
            payload,
            headers,
            channel,
            kind,
            consumed_at: std::time::Instant::now(),
            encoded: Default::default(),
        }
    }

    /// The event frame of this record for a subscription named `subscription` (the record's
    /// channel or `*`), encoded once and shared.
    pub fn frame(&self, subscription: &str, encoding: Encoding) -> WireFrame {
        let star = subscription == ALL;
        let slot = match (encoding, star) {
            (Encoding::Json, false) => 0,
            (Encoding::Json, true) => 1,
            (Encoding::Proto, false) => 2,
            (Encoding::Proto, true) => 3,
        };
        self.encoded[slot]
            .get_or_init(|| match encoding {
                Encoding::Json => WireFrame::Text(self.json_event(subscription).into()),
                Encoding::Proto => WireFrame::Binary(self.proto_event(subscription).into()),
            })
            .clone()
    }

    /// The JSON event frame, e.g.
    /// `{"type":"event","channel":"s-1","partition":0,"offset":42,"timestamp":1700000000000,"key":"s-1","data":{…}}`.
    pub fn json_event(&self, subscription: &str) -> String {
        let mut out = String::with_capacity(self.payload.len() + 128 + subscription.len());
        out.push_str(r#"{"type":"event","channel":"#);
        push_json_str(&mut out, subscription);
        // Writing into a String cannot fail.
        let _ = write!(
            out,
            r#","partition":{},"offset":{},"timestamp":"#,
            self.partition, self.offset
        );
        match self.timestamp_ms {
            Some(ts) => {
                let _ = write!(out, "{ts}");
            }
            None => out.push_str("null"),
        }
        out.push_str(r#","key":"#);
        match self.key.as_deref().map(std::str::from_utf8) {
            None => out.push_str("null"),
            Some(Ok(key)) => push_json_str(&mut out, key),
            Some(Err(_)) => {
                let key = self.key.as_deref().unwrap_or_default();
                push_json_str(
                    &mut out,
                    &base64::engine::general_purpose::STANDARD.encode(key),
                );
                out.push_str(r#","keyEncoding":"base64""#);
            }
        }
        self.push_data(&mut out);
        out.push('}');
        out
    }

    /// The JSON `broadcast` frame, e.g.
    /// `{"type":"broadcast","partition":0,"offset":7,"timestamp":1700000000000,"data":{…}}`.
    pub fn json_broadcast(&self) -> String {
        let mut out = String::with_capacity(self.payload.len() + 96);
        let _ = write!(
            out,
            r#"{{"type":"broadcast","partition":{},"offset":{},"timestamp":"#,
            self.partition, self.offset
        );
        match self.timestamp_ms {
            Some(ts) => {
                let _ = write!(out, "{ts}");
            }
            None => out.push_str("null"),
        }
        self.push_data(&mut out);
        out.push('}');
        out
    }

    /// The protobuf `ServerFrame` broadcast of this record.
    pub fn proto_broadcast(&self) -> Vec<u8> {
        let (envelope, encoding) = self.envelope();
        ServerFrame::broadcast(envelope, encoding).encode_to_vec()
    }

    /// `,"data":…` (and `"encoding"` when the payload is not JSON).
    fn push_data(&self, out: &mut String) {
        out.push_str(r#","data":"#);
        match self.kind {
            PayloadKind::Json => {
                // Checked to be JSON when the record was classified.
                out.push_str(std::str::from_utf8(&self.payload).unwrap_or("null"))
            }
            PayloadKind::Text => {
                push_json_str(out, std::str::from_utf8(&self.payload).unwrap_or_default());
                out.push_str(r#","encoding":"text""#);
            }
            PayloadKind::Binary => {
                push_json_str(
                    out,
                    &base64::engine::general_purpose::STANDARD.encode(&self.payload),
                );
                out.push_str(r#","encoding":"base64""#);
            }
        }
    }

    /// The protobuf `ServerFrame` carrying this record.
    pub fn proto_event(&self, subscription: &str) -> Vec<u8> {
        let (envelope, encoding) = self.envelope();
        ServerFrame::event(subscription, envelope, encoding).encode_to_vec()
    }

    fn envelope(&self) -> (Envelope, PayloadEncoding) {
        let envelope = Envelope {
            key: self.key.as_ref().map(|k| k.to_vec()),
            payload: self.payload.to_vec(),
            content_type: match self.kind {
                PayloadKind::Json => "application/json".into(),
                PayloadKind::Text => "text/plain; charset=utf-8".into(),
                PayloadKind::Binary => "application/octet-stream".into(),
            },
            timestamp_ms: self.timestamp_ms.unwrap_or(0),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| Header {
                    key: k.clone(),
                    value: v.to_vec(),
                })
                .collect(),
            partition: self.partition,
            offset: self.offset,
        };
        let encoding = match self.kind {
            PayloadKind::Json => PayloadEncoding::Json,
            PayloadKind::Text => PayloadEncoding::Text,
            PayloadKind::Binary => PayloadEncoding::Binary,
        };
        (envelope, encoding)
    }
}

/// Appends `s` as a JSON string literal.
pub fn push_json_str(out: &mut String, s: &str) {
    // Serialising a &str into a String cannot fail.
    if let Ok(quoted) = serde_json::to_string(s) {
        out.push_str(&quoted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn record(payload: &[u8], key: Option<&[u8]>) -> Record {
        Record::new(
            2,
            41,
            Some(1_700_000_000_000),
            key.map(Bytes::copy_from_slice),
            Bytes::copy_from_slice(payload),
            vec![("h".into(), Bytes::from_static(b"v"))],
            Some("room-1".into()),
            PayloadKind::of(payload),
        )
    }

    fn json_of(frame: WireFrame) -> Value {
        match frame {
            WireFrame::Text(t) => serde_json::from_str(t.as_str()).expect("valid JSON"),
            WireFrame::Binary(_) => panic!("expected text"),
        }
    }

    #[test]
    fn json_payloads_are_embedded() {
        let r = record(br#"{"lap": 3, "speed": 251.5}"#, Some(b"room-1"));
        let v = json_of(r.frame("room-1", Encoding::Json));
        assert_eq!(
            v,
            json!({"type": "event", "channel": "room-1", "partition": 2, "offset": 41,
                   "timestamp": 1_700_000_000_000i64, "key": "room-1",
                   "data": {"lap": 3, "speed": 251.5}})
        );
    }

    #[test]
    fn star_subscribers_get_their_own_channel_field() {
        let r = record(b"1", None);
        assert_eq!(json_of(r.frame("*", Encoding::Json))["channel"], "*");
        assert_eq!(
            json_of(r.frame("room-1", Encoding::Json))["channel"],
            "room-1"
        );
    }

    #[test]
    fn text_and_binary_payloads_are_marked() {
        let r = record(b"not json", None);
        let v = json_of(r.frame("c", Encoding::Json));
        assert_eq!(v["data"], "not json");
        assert_eq!(v["encoding"], "text");
        assert_eq!(v["key"], Value::Null);

        let r = record(&[0xff, 0x00, 0x80], Some(&[0xfe]));
        let v = json_of(r.frame("c", Encoding::Json));
        assert_eq!(v["data"], "/wCA");
        assert_eq!(v["encoding"], "base64");
        assert_eq!(v["key"], "/g==");
        assert_eq!(v["keyEncoding"], "base64");
    }

    #[test]
    fn proto_frames_carry_the_raw_record() {
        let r = record(&[0xff, 0x00], Some(b"k"));
        let WireFrame::Binary(bytes) = r.frame("c", Encoding::Proto) else {
            panic!("expected binary");
        };
        let frame = ServerFrame::decode(bytes.as_ref()).expect("decodes");
        let Some(eventstream_proto::v1::server_frame::Frame::Event(event)) = frame.frame else {
            panic!("expected an event");
        };
        assert_eq!(event.channel, "c");
        assert_eq!(event.payload_encoding(), PayloadEncoding::Binary);
        let env = event.envelope.expect("envelope");
        assert_eq!(env.payload, vec![0xff, 0x00]);
        assert_eq!(env.key, Some(b"k".to_vec()));
        assert_eq!((env.partition, env.offset), (2, 41));
        assert_eq!(env.headers.len(), 1);
    }

    #[test]
    fn frames_are_encoded_once_and_shared() {
        let r = record(b"{}", None);
        let (WireFrame::Text(a), WireFrame::Text(b)) =
            (r.frame("c", Encoding::Json), r.frame("c", Encoding::Json))
        else {
            panic!("text");
        };
        assert_eq!(a.as_str().as_ptr(), b.as_str().as_ptr());
    }
}
