//! PostgreSQL's binary `COPY` format for the events table (I/O-free).
//!
//! Layout (PostgreSQL docs, "COPY: Binary Format"): an 19-byte header, then per row a 16-bit field
//! count and each field as a 32-bit length (-1 for NULL) followed by the value in the type's
//! binary send format, then a 16-bit -1 trailer. Columns, in [`COLUMNS`] order:
//! `partition int4`, `offset int8`, `key text`, `ts timestamptz`, `payload jsonb|bytea`,
//! `headers jsonb`. `ingested_at` is filled by its column default.

use bytes::{BufMut, BytesMut};
use eventstream_crds::v1alpha1::PayloadFormat;

use super::record::{Record, headers_json};

/// The column list of every `COPY`, in encoding order.
pub const COLUMNS: &str = r#""partition", "offset", key, ts, payload, headers"#;

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
const FIELDS: i16 = 6;
/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 UTC).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;
/// The only `jsonb` binary format version.
const JSONB_VERSION: u8 = 1;

/// Appends the file header (signature, flags, header extension length).
pub fn put_header(buf: &mut BytesMut) {
    buf.put_slice(SIGNATURE);
    buf.put_i32(0);
    buf.put_i32(0);
}

/// Appends the file trailer.
pub fn put_trailer(buf: &mut BytesMut) {
    buf.put_i16(-1);
}

/// Converts milliseconds since the Unix epoch to a `timestamptz` binary value.
pub fn timestamptz(unix_ms: i64) -> i64 {
    unix_ms
        .saturating_mul(1000)
        .saturating_sub(PG_EPOCH_OFFSET_MICROS)
}

fn put_field(buf: &mut BytesMut, value: Option<&[u8]>) {
    match value {
        None => buf.put_i32(-1),
        Some(bytes) => {
            // Records larger than 2 GiB never reach here: the poison rule's size limit is lower.
            buf.put_i32(i32::try_from(bytes.len()).unwrap_or(i32::MAX));
            buf.put_slice(bytes);
        }
    }
}

/// Appends one row for `record` with `key` in the key column (the Kafka key for append, the
/// upsert key for upsert). The record must have passed the poison rule
/// ([`classify`](super::record::classify)).
pub fn put_row(buf: &mut BytesMut, record: &Record, key: Option<&[u8]>, format: PayloadFormat) {
    buf.put_i16(FIELDS);
    buf.put_i32(4);
    buf.put_i32(record.partition);
    buf.put_i32(8);
    buf.put_i64(record.offset);
    put_field(buf, key);
    buf.put_i32(8);
    buf.put_i64(timestamptz(record.timestamp_ms));
    match (&record.payload, format) {
        (None, _) => buf.put_i32(-1),
        (Some(payload), PayloadFormat::Json) => {
            buf.put_i32(i32::try_from(payload.len() + 1).unwrap_or(i32::MAX));
            buf.put_u8(JSONB_VERSION);
            buf.put_slice(payload);
        }
        (Some(payload), PayloadFormat::Binary) => put_field(buf, Some(payload)),
    }
    match headers_json(&record.headers) {
        None => buf.put_i32(-1),
        Some(json) => {
            buf.put_i32(i32::try_from(json.len() + 1).unwrap_or(i32::MAX));
            buf.put_u8(JSONB_VERSION);
            buf.put_slice(json.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_trailer_match_the_spec() {
        let mut buf = BytesMut::new();
        put_header(&mut buf);
        put_trailer(&mut buf);
        assert_eq!(&buf[..], b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0\xff\xff");
    }

    #[test]
    fn timestamps_count_from_2000() {
        assert_eq!(timestamptz(946_684_800_000), 0);
        assert_eq!(timestamptz(946_684_800_001), 1000);
    }

    #[test]
    fn a_row_has_six_fields_with_lengths() {
        let record = Record {
            partition: 2,
            offset: 5,
            key: None,
            payload: Some(b"{}".to_vec()),
            headers: vec![],
            timestamp_ms: 946_684_800_000,
        };
        let mut buf = BytesMut::new();
        put_row(&mut buf, &record, None, PayloadFormat::Json);
        let want: Vec<u8> = [
            &6i16.to_be_bytes()[..],
            &4i32.to_be_bytes(),
            &2i32.to_be_bytes(),
            &8i32.to_be_bytes(),
            &5i64.to_be_bytes(),
            &(-1i32).to_be_bytes(),
            &8i32.to_be_bytes(),
            &0i64.to_be_bytes(),
            &3i32.to_be_bytes(),
            &[1u8, b'{', b'}'],
            &(-1i32).to_be_bytes(),
        ]
        .concat();
        assert_eq!(&buf[..], &want[..]);

        let mut buf = BytesMut::new();
        put_row(&mut buf, &record, None, PayloadFormat::Binary);
        assert_eq!(buf.len(), want.len() - 1, "bytea has no version byte");
    }
}
