//! Protobuf schema of EventStream: the event envelope and the WebSocket v1 binary frames.
//!
//! The schema lives in `proto/eventstream.proto` (package `eventstream.v1`); it is compiled at
//! build time with the pure-Rust [`protox`](https://docs.rs/protox) compiler (no system `protoc`)
//! and turned into Rust types by `prost-build`. The generated types are in [`v1`].
//!
//! # What is in it
//!
//! * [`v1::Envelope`]: one Kafka record (key, payload, content type, timestamp, headers,
//!   partition, offset). It is the body of an ingest request sent as
//!   [`CONTENT_TYPE_PROTOBUF`] (the server ignores `timestamp_ms`, `partition` and `offset` on
//!   input), and the event body of binary WebSocket frames.
//! * [`v1::ClientFrame`] / [`v1::ServerFrame`]: the frames of the WebSocket protocol negotiated
//!   with the subprotocol [`SUBPROTOCOL_PROTO`]. One WebSocket binary message carries one frame.
//!   They mirror the JSON protocol ([`SUBPROTOCOL_JSON`]) one to one: `subscribe`,
//!   `unsubscribe`, `ping`, `auth` from the client; `event`, `subscribed`, `gap`, `error`,
//!   `pong`, `authenticated` from the server.
//! * [`FILE_DESCRIPTOR_SET`]: the encoded `google.protobuf.FileDescriptorSet` of the schema,
//!   with comments, for tools (reflection, `grpcurl`-style decoders, documentation).
//!
//! # Wire compatibility
//!
//! The schema is a public wire format: field numbers and enum values never change and are never
//! reused; fields are only added. A breaking change gets a new package and subprotocol. The test
//! `tests/roundtrip.rs` pins the encoding of a fixed envelope to fixed bytes.
//!
//! Maps (`partition → offset`) are generated as [`BTreeMap`]s, so encoding is deterministic.
//!
//! # Example
//!
//! ```
//! use eventstream_proto::prost::Message;
//! use eventstream_proto::v1::{ClientFrame, Envelope, PayloadEncoding, ServerFrame, client_frame};
//!
//! // Server side: answer a subscribe, then send an event.
//! let request = ClientFrame::subscribe("orders", [(0, 41), (1, 7)]).encode_to_vec();
//! let Some(client_frame::Frame::Subscribe(sub)) = ClientFrame::decode(&request[..])?.frame else {
//!     unreachable!()
//! };
//! assert_eq!(sub.since.get(&0), Some(&41));
//!
//! let envelope = Envelope {
//!     payload: br#"{"id":1}"#.to_vec(),
//!     content_type: "application/json".into(),
//!     partition: 0,
//!     offset: 42,
//!     ..Default::default()
//! };
//! let bytes = ServerFrame::event(sub.channel, envelope, PayloadEncoding::Json).encode_to_vec();
//! assert!(!bytes.is_empty());
//! # Ok::<(), eventstream_proto::prost::DecodeError>(())
//! ```
//!
//! [`BTreeMap`]: std::collections::BTreeMap

/// The `prost` crate the generated types are built on, re-exported so callers can use
/// [`prost::Message`] (`encode_to_vec`, `decode`) without depending on `prost` themselves.
pub use prost;

/// WebSocket subprotocol of the binary (protobuf) protocol: frames are [`v1::ClientFrame`] and
/// [`v1::ServerFrame`] in binary messages.
pub const SUBPROTOCOL_PROTO: &str = "eventstream.v1.proto";

/// WebSocket subprotocol of the JSON protocol, which the protobuf frames mirror.
pub const SUBPROTOCOL_JSON: &str = "eventstream.v1.json";

/// Media type of a protobuf-encoded [`v1::Envelope`] (ingest request body).
pub const CONTENT_TYPE_PROTOBUF: &str = "application/x-protobuf";

/// Encoded `google.protobuf.FileDescriptorSet` of `eventstream.proto` (with source info, i.e.
/// comments), for tools that need the schema at run time.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/eventstream.v1.fds.bin"));

/// Types generated from `eventstream.proto`, package `eventstream.v1`.
// Generated code: the lints below fire on what prost-build emits from proto comments and
// message layouts (not on hand-written code), so they are allowed here only.
#[allow(
    clippy::doc_lazy_continuation,
    clippy::doc_overindented_list_items,
    clippy::large_enum_variant
)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/eventstream.v1.rs"));
}

use v1::{
    Auth, Authenticated, Broadcast, ClientFrame, Envelope, Error, Event, Gap, GapReason,
    PayloadEncoding, Ping, Pong, Progress, ServerFrame, Subscribe, Subscribed, Unsubscribe,
    client_frame, server_frame,
};

impl Envelope {
    /// Values of the headers named `key`, in order (Kafka headers may repeat).
    pub fn header_values<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.key == key)
            .map(|h| h.value.as_slice())
    }
}

impl ClientFrame {
    /// A `subscribe` frame. `since` holds, per partition, the offset of the last event the
    /// client has seen (empty: start live).
    pub fn subscribe(
        channel: impl Into<String>,
        since: impl IntoIterator<Item = (i32, i64)>,
    ) -> Self {
        Subscribe {
            channel: channel.into(),
            since: since.into_iter().collect(),
            filter: None,
        }
        .into()
    }

    /// A `subscribe` frame with a CEL `filter` (see [`ClientFrame::subscribe`]).
    pub fn subscribe_filtered(
        channel: impl Into<String>,
        since: impl IntoIterator<Item = (i32, i64)>,
        filter: impl Into<String>,
    ) -> Self {
        Subscribe {
            channel: channel.into(),
            since: since.into_iter().collect(),
            filter: Some(filter.into()),
        }
        .into()
    }

    /// An `unsubscribe` frame.
    pub fn unsubscribe(channel: impl Into<String>) -> Self {
        Unsubscribe {
            channel: channel.into(),
        }
        .into()
    }

    /// A `ping` frame, with an optional id the server echoes.
    pub fn ping(id: Option<String>) -> Self {
        Ping { id }.into()
    }

    /// An `auth` frame: a new token for the connection (without the `Bearer ` prefix).
    pub fn auth(token: impl Into<String>) -> Self {
        Auth {
            token: token.into(),
        }
        .into()
    }
}

impl ServerFrame {
    /// An `event` frame: `envelope` delivered on `channel`.
    pub fn event(
        channel: impl Into<String>,
        envelope: Envelope,
        payload_encoding: PayloadEncoding,
    ) -> Self {
        Event {
            channel: channel.into(),
            envelope: Some(envelope),
            payload_encoding: payload_encoding.into(),
        }
        .into()
    }

    /// A `subscribed` frame: per partition, the offset of the first event delivered live.
    pub fn subscribed(
        channel: impl Into<String>,
        positions: impl IntoIterator<Item = (i32, i64)>,
    ) -> Self {
        Subscribed {
            channel: channel.into(),
            positions: positions.into_iter().collect(),
        }
        .into()
    }

    /// A `progress` frame: per partition, the next offset after what a filtered subscription
    /// has covered.
    pub fn progress(
        channel: impl Into<String>,
        positions: impl IntoIterator<Item = (i32, i64)>,
    ) -> Self {
        Progress {
            channel: channel.into(),
            positions: positions.into_iter().collect(),
        }
        .into()
    }

    /// A `broadcast` frame carrying `envelope`.
    pub fn broadcast(envelope: Envelope, payload_encoding: PayloadEncoding) -> Self {
        Broadcast {
            envelope: Some(envelope),
            payload_encoding: payload_encoding.into(),
        }
        .into()
    }

    /// A `gap` frame: per partition, offsets `from` (inclusive) to `to` (exclusive) are missed.
    pub fn gap(
        channel: impl Into<String>,
        from: impl IntoIterator<Item = (i32, i64)>,
        to: impl IntoIterator<Item = (i32, i64)>,
        reason: GapReason,
    ) -> Self {
        Gap {
            channel: channel.into(),
            from: from.into_iter().collect(),
            to: to.into_iter().collect(),
            reason: reason.into(),
        }
        .into()
    }

    /// An `error` frame about no particular channel (connection, malformed frame).
    pub fn error(code: impl Into<String>, message: impl Into<String>) -> Self {
        Error {
            code: code.into(),
            message: message.into(),
            channel: None,
        }
        .into()
    }

    /// An `error` frame about `channel`.
    pub fn channel_error(
        channel: impl Into<String>,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error {
            code: code.into(),
            message: message.into(),
            channel: Some(channel.into()),
        }
        .into()
    }

    /// A `pong` frame echoing the ping's id.
    pub fn pong(id: Option<String>) -> Self {
        Pong { id }.into()
    }

    /// An `authenticated` frame: an `auth` was accepted; `exp` is the new token's expiry
    /// (seconds since the Unix epoch).
    pub fn authenticated(exp: i64) -> Self {
        Authenticated { exp }.into()
    }
}

/// `From<Message> for Frame` for every variant of a frame's `oneof`.
macro_rules! frame_from {
    ($frame:ident, $oneof:ident, $($msg:ident),+) => {$(
        impl From<$msg> for $frame {
            fn from(m: $msg) -> Self {
                $frame { frame: Some($oneof::Frame::$msg(m)) }
            }
        }
    )+};
}

frame_from!(
    ClientFrame,
    client_frame,
    Subscribe,
    Unsubscribe,
    Ping,
    Auth
);
frame_from!(
    ServerFrame,
    server_frame,
    Event,
    Subscribed,
    Gap,
    Error,
    Pong,
    Authenticated,
    Progress,
    Broadcast
);
