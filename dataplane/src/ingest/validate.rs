//! Validation of one event against the stream's rules, with no I/O: required fields (names or
//! JSON pointers; `null` counts as missing) and an optional JSON Schema, compiled once at
//! start-up. Every failing field is reported, each with its JSON pointer, never just the first.

use eventstream_crds::pointer::field_to_pointer;
use jsonschema::error::ValidationErrorKind;
use serde_json::Value;

use super::reply::Detail;

/// Which check a failure comes from (the `reason` label of the validation-failure metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// A required field is missing.
    Required,
    /// The JSON Schema refused the event.
    Schema,
    /// The key field is unusable.
    Key,
}

/// The stream's compiled rules.
pub struct Validator {
    required: Vec<String>,
    schema: Option<jsonschema::Validator>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("required", &self.required)
            .field("schema", &self.schema.is_some())
            .finish()
    }
}

impl Validator {
    /// Compiles the rules; a schema that does not compile is an error naming the problem.
    pub fn new(required_fields: &[String], schema: Option<&Value>) -> Result<Self, String> {
        let schema = match schema {
            None => None,
            Some(schema) => Some(
                jsonschema::options()
                    .should_validate_formats(true)
                    .build(schema)
                    .map_err(|e| {
                        let at = e.instance_path().as_str();
                        let at = if at.is_empty() { "/" } else { at };
                        format!("ingest.schema does not compile (at {at}): {e}")
                    })?,
            ),
        };
        Ok(Self {
            required: required_fields
                .iter()
                .map(|f| field_to_pointer(f))
                .collect(),
            schema,
        })
    }

    /// Whether any rule needs the parsed payload.
    pub fn needs_value(&self) -> bool {
        !self.required.is_empty() || self.schema.is_some()
    }

    /// Whether there is any rule at all (a non-JSON payload can only pass when there is none).
    pub fn is_empty(&self) -> bool {
        !self.needs_value()
    }

    /// Appends every failure of `value` to `out`, tagged with its check.
    pub fn check(&self, value: &Value, out: &mut Vec<(Check, Detail)>) {
        for pointer in &self.required {
            if matches!(value.pointer(pointer), None | Some(Value::Null)) {
                out.push((
                    Check::Required,
                    Detail::new(pointer.as_str(), "required field is missing"),
                ));
            }
        }
        if let Some(schema) = &self.schema {
            for error in schema.iter_errors(value) {
                let mut pointer = error.instance_path().as_str().to_owned();
                // `required` fails at the parent object: name the missing field itself.
                if let ValidationErrorKind::Required { property } = error.kind()
                    && let Some(name) = property.as_str()
                {
                    pointer.push('/');
                    pointer.push_str(&name.replace('~', "~0").replace('/', "~1"));
                }
                // `masked` leaves the client's value out of the message.
                out.push((
                    Check::Schema,
                    Detail::new(pointer, error.masked().to_string()),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn failures(v: &Validator, value: Value) -> Vec<(Check, String, String)> {
        let mut out = Vec::new();
        v.check(&value, &mut out);
        out.into_iter()
            .map(|(c, d)| (c, d.pointer, d.reason))
            .collect()
    }

    #[test]
    fn every_missing_required_field_is_listed() {
        let v = Validator::new(
            &["eventType".into(), "/device/id".into(), "timestamp".into()],
            None,
        )
        .expect("ok");
        assert!(v.needs_value());
        let got = failures(&v, json!({"eventType": "x", "timestamp": null}));
        let pointers: Vec<&str> = got.iter().map(|(_, p, _)| p.as_str()).collect();
        assert_eq!(pointers, ["/device/id", "/timestamp"]);
        assert!(got.iter().all(|(c, _, _)| *c == Check::Required));
        assert!(
            failures(
                &v,
                json!({"eventType": "", "device": {"id": 0}, "timestamp": 1})
            )
            .is_empty()
        );
    }

    #[test]
    fn schema_failures_name_their_fields() {
        let schema = json!({
            "type": "object",
            "required": ["userId"],
            "properties": {
                "userId": {"type": "string"},
                "count": {"type": "integer", "minimum": 0},
                "at": {"type": "string", "format": "date-time"}
            }
        });
        let v = Validator::new(&[], Some(&schema)).expect("compiles");
        let got = failures(&v, json!({"count": -1, "at": "yesterday"}));
        let mut pointers: Vec<&str> = got.iter().map(|(_, p, _)| p.as_str()).collect();
        pointers.sort_unstable();
        assert_eq!(pointers, ["/at", "/count", "/userId"], "{got:?}");
        assert!(got.iter().all(|(c, _, _)| *c == Check::Schema));
        // The client's value is not echoed back.
        assert!(
            got.iter().all(|(_, _, r)| !r.contains("yesterday")),
            "{got:?}"
        );
        assert!(failures(&v, json!({"userId": "u", "count": 3})).is_empty());
    }

    #[test]
    fn a_schema_that_does_not_compile_is_named() {
        let err = Validator::new(&[], Some(&json!({"type": "objekt"}))).expect_err("bad");
        assert!(err.contains("ingest.schema"), "{err}");
        assert!(err.contains("objekt"), "{err}");
    }
}
