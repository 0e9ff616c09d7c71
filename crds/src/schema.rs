//! Hand-written schema fragments where the derived ones do not say what Kubernetes needs.

use schemars::{Schema, SchemaGenerator, json_schema};

/// An arbitrary JSON object kept as it is by the API server (used for an embedded JSON Schema).
pub fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}
