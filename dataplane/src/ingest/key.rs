//! The Kafka key of an event: the value at the configured JSON pointer (`ingest.keyField`), so
//! every event of one user or session lands on one partition, in order.
//!
//! Strings are used as their UTF-8 bytes; numbers and booleans as their JSON text (`42`,
//! `true`). A missing or `null` key, or one that is an object or an array, is a validation
//! error: a stream that configures a key promises per-key ordering, and a silently keyless
//! event would break it.

use serde_json::Value;

use super::reply::Detail;

/// The key bytes for `value` at `pointer`, or the detail explaining why there is none.
pub fn from_value(value: &Value, pointer: &str) -> Result<Vec<u8>, Detail> {
    match value.pointer(pointer) {
        Some(Value::String(s)) => Ok(s.as_bytes().to_vec()),
        Some(Value::Number(n)) => Ok(n.to_string().into_bytes()),
        Some(Value::Bool(b)) => Ok(if *b {
            b"true".to_vec()
        } else {
            b"false".to_vec()
        }),
        Some(Value::Object(_)) => Err(Detail::new(
            pointer,
            "the key field is an object; it must be a string, number or boolean",
        )),
        Some(Value::Array(_)) => Err(Detail::new(
            pointer,
            "the key field is an array; it must be a string, number or boolean",
        )),
        Some(Value::Null) | None => Err(Detail::new(
            pointer,
            "the key field is missing (it is the stream's ingest.keyField)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalars_become_keys() {
        let v = json!({"userId": "u-1", "n": 42, "f": 1.5, "b": true, "d": {"id": "x"}});
        assert_eq!(from_value(&v, "/userId"), Ok(b"u-1".to_vec()));
        assert_eq!(from_value(&v, "/n"), Ok(b"42".to_vec()));
        assert_eq!(from_value(&v, "/f"), Ok(b"1.5".to_vec()));
        assert_eq!(from_value(&v, "/b"), Ok(b"true".to_vec()));
        assert_eq!(from_value(&v, "/d/id"), Ok(b"x".to_vec()));
    }

    #[test]
    fn non_scalars_and_missing_are_refused() {
        let v = json!({"d": {"id": "x"}, "a": [1], "z": null});
        for (pointer, word) in [
            ("/d", "object"),
            ("/a", "array"),
            ("/z", "missing"),
            ("/q", "missing"),
        ] {
            let err = from_value(&v, pointer).expect_err("refused");
            assert_eq!(err.pointer, pointer);
            assert!(err.reason.contains(word), "{}", err.reason);
        }
        assert!(from_value(&json!([1, 2]), "/0").is_ok());
        assert!(from_value(&json!("top"), "/a").is_err());
    }
}
