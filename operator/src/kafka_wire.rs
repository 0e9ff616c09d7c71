//! A minimal Kafka protocol client for the one admin request librdkafka's Rust binding does not
//! expose: IncrementalAlterConfigs (KIP-339, API key 44, version 0). It is the fallback when a
//! broker refuses the legacy AlterConfigs (tansu implements only the incremental form), and only
//! over PLAINTEXT: a SASL/TLS handshake is librdkafka's job, not ours.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const API_KEY: i16 = 44;
const RESOURCE_TOPIC: i8 = 2;
const CLIENT_ID: &str = "eventstream-operator";
/// Largest response accepted (a response names one resource).
const MAX_RESPONSE: usize = 1 << 20;

/// One config operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOp {
    /// Set `key` to `value`.
    Set(String, String),
    /// Remove the topic-level override of `key` (back to the broker default).
    Delete(String),
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as i16).to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// Encodes the request (without the size prefix). Public for the unit test.
pub fn encode(correlation_id: i32, topic: &str, ops: &[ConfigOp]) -> Vec<u8> {
    let mut b = Vec::with_capacity(64 + ops.len() * 32);
    b.extend_from_slice(&API_KEY.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&correlation_id.to_be_bytes());
    put_str(&mut b, CLIENT_ID);
    b.extend_from_slice(&1i32.to_be_bytes());
    b.push(RESOURCE_TOPIC as u8);
    put_str(&mut b, topic);
    b.extend_from_slice(&(ops.len() as i32).to_be_bytes());
    for op in ops {
        match op {
            ConfigOp::Set(k, v) => {
                put_str(&mut b, k);
                b.push(0);
                put_str(&mut b, v);
            }
            ConfigOp::Delete(k) => {
                put_str(&mut b, k);
                b.push(1);
                b.extend_from_slice(&(-1i16).to_be_bytes());
            }
        }
    }
    b.push(0); // validate_only = false
    b
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.0.len() < n {
            return Err("truncated IncrementalAlterConfigs response".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn i16(&mut self) -> Result<i16, String> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Result<i32, String> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn nullable_str(&mut self) -> Result<Option<String>, String> {
        let len = self.i16()?;
        if len < 0 {
            return Ok(None);
        }
        Ok(Some(
            String::from_utf8_lossy(self.take(len as usize)?).into_owned(),
        ))
    }
}

/// Decodes the response body (after the size prefix): `Ok(())` or the first resource error.
pub fn decode(correlation_id: i32, body: &[u8]) -> Result<Result<(), (i16, String)>, String> {
    let mut r = Reader(body);
    if r.i32()? != correlation_id {
        return Err("IncrementalAlterConfigs response has another correlation id".into());
    }
    let _throttle = r.i32()?;
    let n = r.i32()?;
    for _ in 0..n.max(0) {
        let code = r.i16()?;
        let message = r.nullable_str()?;
        let _type = r.take(1)?;
        let _name = r.nullable_str()?;
        if code != 0 {
            let text = format!("broker error {code} ({})", error_name(code));
            let message = match message {
                Some(m) if !m.is_empty() => format!("{text}: {m}"),
                _ => text,
            };
            return Ok(Err((code, message)));
        }
    }
    Ok(Ok(()))
}

/// Kafka's name of the error codes IncrementalAlterConfigs answers with.
pub fn error_name(code: i16) -> &'static str {
    match code {
        3 => "UNKNOWN_TOPIC_OR_PARTITION",
        29 => "TOPIC_AUTHORIZATION_FAILED",
        35 => "UNSUPPORTED_VERSION",
        40 => "INVALID_CONFIG",
        42 => "INVALID_REQUEST",
        44 => "POLICY_VIOLATION",
        _ => "see the Kafka protocol error codes",
    }
}

/// Sends IncrementalAlterConfigs for `topic` to the first reachable bootstrap broker.
/// `Err(io)` means no broker could be asked; `Ok(Err(code))` is the broker's refusal.
pub async fn incremental_alter_configs(
    bootstrap: &str,
    topic: &str,
    ops: &[ConfigOp],
    timeout: Duration,
) -> Result<Result<(), (i16, String)>, String> {
    let mut last = String::from("no bootstrap server");
    for addr in bootstrap
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        let attempt = async {
            let mut stream = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("{addr}: {e}"))?;
            let req = encode(1, topic, ops);
            let mut framed = (req.len() as i32).to_be_bytes().to_vec();
            framed.extend_from_slice(&req);
            stream
                .write_all(&framed)
                .await
                .map_err(|e| format!("{addr}: {e}"))?;
            let len = stream
                .read_i32()
                .await
                .map_err(|e| format!("{addr}: {e}"))?;
            let len = usize::try_from(len).map_err(|_| format!("{addr}: negative frame size"))?;
            if len > MAX_RESPONSE {
                return Err(format!("{addr}: response of {len} bytes is too large"));
            }
            let mut body = vec![0; len];
            stream
                .read_exact(&mut body)
                .await
                .map_err(|e| format!("{addr}: {e}"))?;
            decode(1, &body)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("{addr}: timed out after {timeout:?}"),
        }
    }
    Err(last)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let b = encode(
            7,
            "t",
            &[
                ConfigOp::Set("a".into(), "1".into()),
                ConfigOp::Delete("b".into()),
            ],
        );
        let expected: Vec<u8> = [
            &[0, 44, 0, 0, 0, 0, 0, 7][..],
            &[0, 20],
            CLIENT_ID.as_bytes(),
            &[0, 0, 0, 1, 2, 0, 1, b't'],
            &[0, 0, 0, 2],
            &[0, 1, b'a', 0, 0, 1, b'1'],
            &[0, 1, b'b', 1, 0xff, 0xff],
            &[0],
        ]
        .concat();
        assert_eq!(b, expected);
    }

    #[test]
    fn response_errors_are_decoded() {
        let mut body = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        body.extend_from_slice(&[0, 40, 0, 3, b'b', b'a', b'd', 2, 0, 1, b't']);
        let (code, msg) = decode(1, &body).unwrap().unwrap_err();
        assert_eq!(code, 40);
        assert_eq!(msg, "broker error 40 (INVALID_CONFIG): bad");
        assert!(decode(2, &body).is_err(), "wrong correlation id");
        assert!(decode(1, &body[..5]).is_err(), "truncated");
    }
}
