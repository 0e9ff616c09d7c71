//! Round trips, golden encodings and malformed input for the `eventstream.v1` schema.

use std::collections::BTreeMap;

use eventstream_proto::prost::{DecodeError, Message};
use eventstream_proto::v1::{
    Auth, Authenticated, ClientFrame, Envelope, Error, Event, Gap, GapReason, Header,
    PayloadEncoding, Ping, Pong, ServerFrame, Subscribe, Subscribed, Unsubscribe, client_frame,
    server_frame,
};
use eventstream_proto::{
    CONTENT_TYPE_PROTOBUF, FILE_DESCRIPTOR_SET, SUBPROTOCOL_JSON, SUBPROTOCOL_PROTO,
};

type Result = std::result::Result<(), DecodeError>;

/// Encodes `msg`, decodes it back and checks both that the value survived and that re-encoding
/// gives the same bytes. Returns the encoding.
fn roundtrip<M: Message + Default + PartialEq + std::fmt::Debug>(msg: &M) -> Vec<u8> {
    let bytes = msg.encode_to_vec();
    let back = match M::decode(bytes.as_slice()) {
        Ok(back) => back,
        Err(e) => panic!("decoding {msg:?} from {bytes:02x?}: {e}"),
    };
    assert_eq!(&back, msg);
    assert_eq!(back.encode_to_vec(), bytes, "encoding is not deterministic");
    bytes
}

fn header(key: &str, value: &[u8]) -> Header {
    Header {
        key: key.into(),
        value: value.to_vec(),
    }
}

/// An envelope using every field, with a non-UTF-8 payload and a repeated header key.
fn full_envelope() -> Envelope {
    Envelope {
        key: Some(vec![0x00, 0xff, b'k']),
        payload: vec![0xff, 0xfe, 0x00, 0x80, 0xc3, 0x28, b'{'],
        content_type: "application/octet-stream".into(),
        timestamp_ms: 1_700_000_000_123,
        headers: vec![
            header("trace", b"a"),
            header("bin", &[0xde, 0xad, 0xbe, 0xef]),
            header("trace", b"b"),
            header("empty", b""),
        ],
        partition: 11,
        offset: i64::MAX,
    }
}

fn map(entries: &[(i32, i64)]) -> BTreeMap<i32, i64> {
    entries.iter().copied().collect()
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

#[test]
fn envelope_roundtrips() {
    let env = full_envelope();
    roundtrip(&env);

    let trace: Vec<&[u8]> = env.header_values("trace").collect();
    assert_eq!(trace, [b"a".as_slice(), b"b".as_slice()]);
    assert_eq!(env.header_values("missing").count(), 0);
}

#[test]
fn envelope_key_absent_is_not_key_empty() -> Result {
    let absent = Envelope {
        payload: b"x".to_vec(),
        ..Default::default()
    };
    let empty = Envelope {
        key: Some(Vec::new()),
        ..absent.clone()
    };
    let absent_bytes = roundtrip(&absent);
    let empty_bytes = roundtrip(&empty);
    assert_ne!(absent_bytes, empty_bytes);
    assert_eq!(Envelope::decode(absent_bytes.as_slice())?.key, None);
    assert_eq!(
        Envelope::decode(empty_bytes.as_slice())?.key,
        Some(Vec::new())
    );
    Ok(())
}

#[test]
fn default_envelope_encodes_to_nothing() {
    assert!(roundtrip(&Envelope::default()).is_empty());
}

#[test]
fn ingest_envelope_decodes_without_position() -> Result {
    // What an ingest client sends: no timestamp, partition or offset.
    let sent = Envelope {
        key: Some(b"user-1".to_vec()),
        payload: br#"{"n":1}"#.to_vec(),
        content_type: "application/json".into(),
        headers: vec![header("h", b"v")],
        ..Default::default()
    };
    let got = Envelope::decode(sent.encode_to_vec().as_slice())?;
    assert_eq!(
        (got.timestamp_ms, got.partition, got.offset),
        (0, 0, 0),
        "unset positions decode as zero"
    );
    assert_eq!(got, sent);
    Ok(())
}

#[test]
fn client_frames_roundtrip() {
    let frames = [
        ClientFrame::subscribe("orders", [(0, 41), (1, 0), (7, 1 << 40), (-1, -1)]),
        ClientFrame::subscribe("orders", []),
        ClientFrame::subscribe("", BTreeMap::new()),
        ClientFrame::unsubscribe("orders"),
        ClientFrame::ping(Some("p-1".into())),
        ClientFrame::ping(Some(String::new())),
        ClientFrame::ping(None),
        ClientFrame::auth("header.claims.signature"),
        ClientFrame::default(),
    ];
    for frame in &frames {
        roundtrip(frame);
    }
    // Absent and empty ping ids stay distinct.
    assert_ne!(frames[5].encode_to_vec(), frames[6].encode_to_vec());
}

#[test]
fn server_frames_roundtrip() {
    let frames = [
        ServerFrame::event("orders", full_envelope(), PayloadEncoding::Binary),
        ServerFrame::event("orders", Envelope::default(), PayloadEncoding::Unspecified),
        ServerFrame::from(Event {
            channel: "orders".into(),
            envelope: None,
            payload_encoding: PayloadEncoding::Json.into(),
        }),
        ServerFrame::subscribed("orders", [(0, 100), (1, 0), (2, 5_000_000_000)]),
        ServerFrame::subscribed("orders", []),
        ServerFrame::gap(
            "orders",
            map(&[(0, 10), (3, 7), (9, 0)]),
            map(&[(0, 20), (3, 8), (9, 1_000)]),
            GapReason::ReplayLimit,
        ),
        ServerFrame::gap(
            "orders",
            map(&[(1, 1)]),
            map(&[(1, 2)]),
            GapReason::Retention,
        ),
        ServerFrame::gap("orders", map(&[]), map(&[]), GapReason::SlowClient),
        ServerFrame::error("bad_frame", "frame is not a ClientFrame"),
        ServerFrame::channel_error("orders", "forbidden", "not allowed"),
        ServerFrame::pong(Some("p-1".into())),
        ServerFrame::pong(None),
        ServerFrame::authenticated(1_732_280_000),
        ServerFrame::default(),
    ];
    for frame in &frames {
        roundtrip(frame);
    }
}

#[test]
fn constructors_build_the_expected_variants() {
    let Some(server_frame::Frame::Error(err)) = ServerFrame::error("c", "m").frame else {
        panic!("not an error frame");
    };
    assert_eq!(
        err,
        Error {
            code: "c".into(),
            message: "m".into(),
            channel: None
        }
    );

    let Some(server_frame::Frame::Error(err)) = ServerFrame::channel_error("ch", "c", "m").frame
    else {
        panic!("not an error frame");
    };
    assert_eq!(err.channel.as_deref(), Some("ch"));

    let Some(server_frame::Frame::Gap(gap)) =
        ServerFrame::gap("ch", map(&[(1, 2)]), map(&[(1, 5)]), GapReason::SlowClient).frame
    else {
        panic!("not a gap frame");
    };
    assert_eq!(gap.reason(), GapReason::SlowClient);
    assert_eq!((gap.from[&1], gap.to[&1]), (2, 5));

    let Some(server_frame::Frame::Event(event)) =
        ServerFrame::event("ch", full_envelope(), PayloadEncoding::Text).frame
    else {
        panic!("not an event frame");
    };
    assert_eq!(event.payload_encoding(), PayloadEncoding::Text);
    assert_eq!(event.envelope, Some(full_envelope()));

    assert_eq!(
        ServerFrame::subscribed("ch", [(2, 9)]),
        ServerFrame::from(Subscribed {
            channel: "ch".into(),
            positions: map(&[(2, 9)]),
        })
    );
    assert_eq!(
        ServerFrame::pong(Some("x".into())),
        ServerFrame::from(Pong {
            id: Some("x".into())
        })
    );
    assert_eq!(
        ClientFrame::subscribe("ch", [(0, 1)]),
        ClientFrame::from(Subscribe {
            channel: "ch".into(),
            since: map(&[(0, 1)]),
            filter: None,
        })
    );
    assert_eq!(
        ClientFrame::subscribe_filtered("ch", [], "data.cpu > 90.0"),
        ClientFrame::from(Subscribe {
            channel: "ch".into(),
            since: map(&[]),
            filter: Some("data.cpu > 90.0".into()),
        })
    );
    assert_eq!(
        ClientFrame::unsubscribe("ch").frame,
        Some(client_frame::Frame::Unsubscribe(Unsubscribe {
            channel: "ch".into()
        }))
    );
    assert_eq!(
        ClientFrame::ping(None).frame,
        Some(client_frame::Frame::Ping(Ping { id: None }))
    );
}

// ---------------------------------------------------------------------------------------------
// Golden encodings: these bytes are the wire format. If one of these tests fails, a field number
// or type changed — that breaks every deployed client. Add a field instead.
// ---------------------------------------------------------------------------------------------

#[test]
fn golden_envelope() {
    let env = Envelope {
        key: Some(b"k".to_vec()),
        payload: vec![0xff, 0x00, 0x80],
        content_type: "a/b".into(),
        timestamp_ms: 1_700_000_000_000,
        headers: vec![header("h", &[1]), header("h", b"")],
        partition: 3,
        offset: 42,
    };
    #[rustfmt::skip]
    let want: &[u8] = &[
        0x0a, 0x01, b'k',                           // 1 key
        0x12, 0x03, 0xff, 0x00, 0x80,               // 2 payload
        0x1a, 0x03, b'a', b'/', b'b',               // 3 content_type
        0x20, 0x80, 0xd0, 0x95, 0xff, 0xbc, 0x31,   // 4 timestamp_ms
        0x2a, 0x06, 0x0a, 0x01, b'h', 0x12, 0x01, 0x01, // 5 headers[0] {1 key, 2 value}
        0x2a, 0x03, 0x0a, 0x01, b'h',               // 5 headers[1] (empty value omitted)
        0x30, 0x03,                                 // 6 partition
        0x38, 0x2a,                                 // 7 offset
    ];
    assert_eq!(env.encode_to_vec(), want);
}

#[test]
fn golden_frame_numbers() {
    // An empty variant encodes as its oneof tag (length-delimited) and length 0.
    let server: [(ServerFrame, u8); 6] = [
        (Event::default().into(), 1),
        (Subscribed::default().into(), 2),
        (Gap::default().into(), 3),
        (Error::default().into(), 4),
        (Pong::default().into(), 5),
        (Authenticated::default().into(), 6),
    ];
    for (frame, tag) in server {
        assert_eq!(frame.encode_to_vec(), [(tag << 3) | 2, 0], "{frame:?}");
    }
    let client: [(ClientFrame, u8); 4] = [
        (Subscribe::default().into(), 1),
        (Unsubscribe::default().into(), 2),
        (Ping::default().into(), 3),
        (Auth::default().into(), 4),
    ];
    for (frame, tag) in client {
        assert_eq!(frame.encode_to_vec(), [(tag << 3) | 2, 0], "{frame:?}");
    }
}

#[test]
fn golden_subscribe() {
    #[rustfmt::skip]
    let want: &[u8] = &[
        0x0a, 0x09,                         // ClientFrame 1 subscribe
        0x0a, 0x01, b'c',                   //   1 channel
        0x12, 0x04, 0x08, 0x01, 0x10, 0x07, //   2 since {1: 7}
    ];
    assert_eq!(ClientFrame::subscribe("c", [(1, 7)]).encode_to_vec(), want);
}

#[test]
fn golden_event() {
    let env = Envelope {
        offset: 1,
        ..Default::default()
    };
    #[rustfmt::skip]
    let want: &[u8] = &[
        0x0a, 0x09,             // ServerFrame 1 event
        0x0a, 0x01, b'c',       //   1 channel
        0x12, 0x02, 0x38, 0x01, //   2 envelope {7 offset: 1}
        0x18, 0x03,             //   3 payload_encoding BINARY
    ];
    assert_eq!(
        ServerFrame::event("c", env, PayloadEncoding::Binary).encode_to_vec(),
        want
    );
}

#[test]
fn golden_gap() {
    let frame = ServerFrame::gap(
        "c",
        map(&[(1, 5), (2, 10)]),
        map(&[(1, 9), (2, 12)]),
        GapReason::SlowClient,
    );
    #[rustfmt::skip]
    let want: &[u8] = &[
        0x1a, 0x1d,                         // ServerFrame 3 gap
        0x0a, 0x01, b'c',                   //   1 channel
        0x12, 0x04, 0x08, 0x01, 0x10, 0x05, //   2 from {1: 5}
        0x12, 0x04, 0x08, 0x02, 0x10, 0x0a, //   2 from {2: 10}
        0x1a, 0x04, 0x08, 0x01, 0x10, 0x09, //   3 to {1: 9}
        0x1a, 0x04, 0x08, 0x02, 0x10, 0x0c, //   3 to {2: 12}
        0x20, 0x03,                         //   4 reason SLOW_CLIENT
    ];
    assert_eq!(frame.encode_to_vec(), want);
}

#[test]
fn golden_subscribed_error_pong() {
    #[rustfmt::skip]
    let subscribed: &[u8] = &[
        0x12, 0x09,                         // ServerFrame 2 subscribed
        0x0a, 0x01, b'c',                   //   1 channel
        0x12, 0x04, 0x08, 0x03, 0x10, 0x04, //   2 positions {3: 4}
    ];
    assert_eq!(
        ServerFrame::subscribed("c", [(3, 4)]).encode_to_vec(),
        subscribed
    );
    #[rustfmt::skip]
    let error: &[u8] = &[
        0x22, 0x09,       // ServerFrame 4 error
        0x0a, 0x01, b'x', //   1 code
        0x12, 0x01, b'm', //   2 message
        0x1a, 0x01, b'c', //   3 channel
    ];
    assert_eq!(
        ServerFrame::channel_error("c", "x", "m").encode_to_vec(),
        error
    );
    // 5 pong {1 id: "i"}; an absent id is omitted, an empty one is not.
    assert_eq!(
        ServerFrame::pong(Some("i".into())).encode_to_vec(),
        [0x2a, 0x03, 0x0a, 0x01, b'i']
    );
    assert_eq!(ServerFrame::pong(None).encode_to_vec(), [0x2a, 0x00]);
    assert_eq!(
        ClientFrame::ping(Some(String::new())).encode_to_vec(),
        [0x1a, 0x02, 0x0a, 0x00]
    );
    assert_eq!(
        ClientFrame::unsubscribe("c").encode_to_vec(),
        [0x12, 0x03, 0x0a, 0x01, b'c']
    );
}

// ---------------------------------------------------------------------------------------------
// Malformed input: a DecodeError, never a panic
// ---------------------------------------------------------------------------------------------

#[test]
fn truncated_frames_are_errors() {
    let bytes =
        ServerFrame::event("orders", full_envelope(), PayloadEncoding::Binary).encode_to_vec();
    for cut in 1..bytes.len() {
        assert!(
            ServerFrame::decode(&bytes[..cut]).is_err(),
            "a frame cut at {cut} of {} decoded",
            bytes.len()
        );
    }
    let bytes = ClientFrame::subscribe("orders", [(0, 1), (1, 2)]).encode_to_vec();
    for cut in 1..bytes.len() {
        assert!(ClientFrame::decode(&bytes[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn malformed_bytes_are_errors() {
    // (what, bytes, a word of the expected error)
    let cases: &[(&str, &[u8], &str)] = &[
        // ServerFrame.event (1) must be length-delimited, not a varint.
        ("wrong wire type for a message", &[0x08, 0x01], "wire type"),
        // Envelope.partition (6) must be a varint, not length-delimited.
        (
            "wrong wire type for a scalar",
            &[0x0a, 0x04, 0x12, 0x02, 0x32, 0x00],
            "wire type",
        ),
        (
            "length past the end",
            &[0x0a, 0x05, 0x0a, 0x01],
            "underflow",
        ),
        // An unknown field 15 (varint) whose value never ends.
        ("unterminated varint", &[0x78, 0xff, 0xff], "varint"),
        (
            "varint longer than 10 bytes",
            &[
                0x78, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
            "varint",
        ),
        ("field number 0", &[0x00, 0x01], "tag"),
        ("invalid wire type 7", &[0x0f], "wire type"),
        // Error.code (4 → 1) with bytes that are not UTF-8.
        ("string not UTF-8", &[0x22, 0x03, 0x0a, 0x01, 0xff], "UTF-8"),
        // An unknown field 15 as a group end (wire type 4) with no group start.
        ("unmatched group end", &[0x7c], "group"),
    ];
    for (what, bytes, word) in cases {
        let err = ServerFrame::decode(*bytes).expect_err(what);
        assert!(err.to_string().contains(word), "{what}: {err}");
    }
    // The same on the client side: Unsubscribe.channel not UTF-8.
    assert!(ClientFrame::decode(&[0x12, 0x03, 0x0a, 0x01, 0xc3][..]).is_err());
    // Envelope: Header (5) truncated inside.
    assert!(Envelope::decode(&[0x2a, 0x03, 0x0a, 0x05, b'h'][..]).is_err());
}

#[test]
fn random_bytes_never_panic() {
    // xorshift64*: deterministic, no dependency.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let valid =
        ServerFrame::event("orders", full_envelope(), PayloadEncoding::Json).encode_to_vec();
    for round in 0..20_000 {
        let bytes: Vec<u8> = if round % 2 == 0 {
            // Pure noise.
            let len = (next() % 64) as usize;
            (0..len).map(|_| next() as u8).collect()
        } else {
            // A valid frame with a few bytes flipped: reaches deeper into the decoder.
            let mut b = valid.clone();
            for _ in 0..=(next() % 4) {
                let i = (next() as usize) % b.len();
                b[i] = next() as u8;
            }
            b
        };
        // Either result is fine; what matters is that none of these panics.
        let _ = ServerFrame::decode(bytes.as_slice());
        let _ = ClientFrame::decode(bytes.as_slice());
        let _ = Envelope::decode(bytes.as_slice());
    }
}

// ---------------------------------------------------------------------------------------------
// Forward compatibility
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_fields_and_variants_are_skipped() -> Result {
    // A future ServerFrame variant (tag 15) decodes as a frame with no known variant.
    let future = [0x7a, 0x02, 0x08, 0x01];
    assert_eq!(ServerFrame::decode(&future[..])?.frame, None);

    // An envelope with an extra field 99 (varint) still decodes its known fields.
    let mut bytes = Envelope {
        offset: 5,
        ..Default::default()
    }
    .encode_to_vec();
    bytes.extend_from_slice(&[0x98, 0x06, 0x01]);
    assert_eq!(Envelope::decode(bytes.as_slice())?.offset, 5);

    // An unknown gap reason keeps its number; the accessor falls back to UNSPECIFIED.
    let bytes = [0x1a, 0x02, 0x20, 0x63];
    let Some(server_frame::Frame::Gap(gap)) = ServerFrame::decode(&bytes[..])?.frame else {
        panic!("not a gap frame");
    };
    assert_eq!(gap.reason, 99);
    assert_eq!(gap.reason(), GapReason::Unspecified);
    assert!(GapReason::try_from(99).is_err());
    Ok(())
}

#[test]
fn enum_names_are_the_proto_names() {
    assert_eq!(
        GapReason::ReplayLimit.as_str_name(),
        "GAP_REASON_REPLAY_LIMIT"
    );
    assert_eq!(GapReason::Retention.as_str_name(), "GAP_REASON_RETENTION");
    assert_eq!(
        GapReason::SlowClient.as_str_name(),
        "GAP_REASON_SLOW_CLIENT"
    );
    assert_eq!(
        PayloadEncoding::from_str_name("PAYLOAD_ENCODING_BINARY"),
        Some(PayloadEncoding::Binary)
    );
}

// ---------------------------------------------------------------------------------------------
// Constants and the descriptor set
// ---------------------------------------------------------------------------------------------

#[test]
fn constants() {
    assert_eq!(SUBPROTOCOL_PROTO, "eventstream.v1.proto");
    assert_eq!(SUBPROTOCOL_JSON, "eventstream.v1.json");
    assert_eq!(CONTENT_TYPE_PROTOBUF, "application/x-protobuf");
}

/// The parts of `google.protobuf.FileDescriptorSet` this test reads.
#[derive(Clone, PartialEq, Message)]
struct FileDescriptorSet {
    #[prost(message, repeated, tag = "1")]
    file: Vec<FileDescriptorProto>,
}

#[derive(Clone, PartialEq, Message)]
struct FileDescriptorProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    package: String,
    #[prost(message, repeated, tag = "4")]
    message_type: Vec<DescriptorProto>,
    #[prost(message, repeated, tag = "5")]
    enum_type: Vec<DescriptorProto>,
}

/// `DescriptorProto` and `EnumDescriptorProto` both have `name = 1`.
#[derive(Clone, PartialEq, Message)]
struct DescriptorProto {
    #[prost(string, tag = "1")]
    name: String,
}

#[test]
fn file_descriptor_set_describes_the_schema() -> Result {
    let fds = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)?;
    assert_eq!(fds.file.len(), 1, "the schema imports nothing");
    let file = &fds.file[0];
    assert_eq!(file.name, "eventstream.proto");
    assert_eq!(file.package, "eventstream.v1");
    let messages: Vec<&str> = file.message_type.iter().map(|m| m.name.as_str()).collect();
    for name in [
        "Header",
        "Envelope",
        "ClientFrame",
        "Subscribe",
        "Unsubscribe",
        "Ping",
        "ServerFrame",
        "Event",
        "Subscribed",
        "Gap",
        "Error",
        "Pong",
        "Auth",
        "Authenticated",
    ] {
        assert!(messages.contains(&name), "{name} missing from {messages:?}");
    }
    let enums: Vec<&str> = file.enum_type.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(enums, ["PayloadEncoding", "GapReason"]);
    Ok(())
}
