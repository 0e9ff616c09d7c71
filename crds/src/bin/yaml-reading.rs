//! Prints how serde_yaml (YAML 1.2, the reader of the operator, the dataplane and their tests)
//! reads YAML files: `yaml-reading FILE...` prints `{"FILE": [document, ...], ...}` (non-empty documents) as JSON, in
//! the form `crds/tests/yaml_reading.py` prints for YAML 1.1 (kubectl, Helm), so the two compare
//! as equal JSON exactly when both kinds of tools read the same data. Mapping keys become
//! strings (a non-string key as its JSON text), values JSON has no type for are tagged objects.

use std::collections::BTreeMap;
use std::process::ExitCode;

use serde::Deserialize;
use serde_json::{Value as Json, json};
use serde_yaml::Value as Yaml;

fn key_text(key: &Yaml) -> String {
    match key {
        Yaml::String(s) => s.clone(),
        other => plain(other).to_string(),
    }
}

fn plain(value: &Yaml) -> Json {
    match value {
        Yaml::Null => Json::Null,
        Yaml::Bool(b) => Json::Bool(*b),
        Yaml::Number(n) => {
            if let Some(i) = n.as_i64() {
                json!(i)
            } else if let Some(u) = n.as_u64() {
                json!(u)
            } else {
                // JSON has no NaN or infinity; Python tags them the same way (`repr`).
                let f = n.as_f64().unwrap_or(f64::NAN);
                match serde_json::Number::from_f64(f) {
                    Some(n) => Json::Number(n),
                    None if f.is_nan() => json!({"!float": "nan"}),
                    None if f > 0.0 => json!({"!float": "inf"}),
                    None => json!({"!float": "-inf"}),
                }
            }
        }
        Yaml::String(s) => Json::String(s.clone()),
        Yaml::Sequence(items) => Json::Array(items.iter().map(plain).collect()),
        Yaml::Mapping(map) => {
            let object: serde_json::Map<String, Json> =
                map.iter().map(|(k, v)| (key_text(k), plain(v))).collect();
            Json::Object(object)
        }
        Yaml::Tagged(tagged) => json!({ format!("!{}", tagged.tag): plain(&tagged.value) }),
    }
}

/// The non-empty documents: serde_yaml reads an empty text as one null document where PyYAML
/// reads none, and kubectl and Helm skip empty documents either way.
fn reading(text: &str) -> Result<Vec<Json>, serde_yaml::Error> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = Yaml::deserialize(doc)?;
        if !value.is_null() {
            docs.push(plain(&value));
        }
    }
    Ok(docs)
}

fn main() -> ExitCode {
    let mut out = BTreeMap::new();
    for path in std::env::args().skip(1) {
        let read = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| reading(&text).map_err(|e| e.to_string()));
        match read {
            Ok(docs) => {
                out.insert(path, docs);
            }
            Err(e) => {
                eprintln!("yaml-reading: {path}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("{}", json!(out));
    ExitCode::SUCCESS
}
