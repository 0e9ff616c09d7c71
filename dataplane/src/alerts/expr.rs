//! CEL for alert rules, behind two functions: [`compile`] once per rule, [`eval`] once per rule
//! and record against an [`Activation`] built once per record. Both go through the bounded
//! [`crate::cel`] that subscription filters use (and that the config's checks use), so a rule
//! is parsed on a large stack only after its nesting and length were checked.
//!
//! Variables: `data` (the JSON payload), `key` (the Kafka key as text, `""` without one),
//! `headers` (map of header name to text), `partition`, `offset` and `timestamp` (the record's
//! Kafka timestamp, milliseconds since the Unix epoch).

use std::collections::BTreeMap;
use std::sync::Arc;

use eventstream_crds::config::{alert_expression_limits, check_alert_expression};

use crate::cel::{self, Expression, Value};

/// A compiled rule condition.
#[derive(Debug)]
pub struct Program {
    inner: Expression,
}

impl Program {
    /// The expression as written.
    pub fn source(&self) -> &str {
        self.inner.source()
    }
}

/// Why an expression cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CompileError(pub String);

/// Why an expression could not decide on one record (a missing field, a wrong type, a result
/// that is not a bool). The evaluator counts it; it never stops the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(pub String);

/// Compiles a rule condition: empty, over-long, too deep or costly and unparsable expressions
/// are refused, with the config check's wording.
pub fn compile(expression: &str) -> Result<Program, CompileError> {
    check_alert_expression(expression).map_err(CompileError)?;
    let inner = Expression::compile(expression, &alert_expression_limits())
        .map_err(|e| CompileError(format!("is not a valid CEL expression: {e}")))?;
    Ok(Program { inner })
}

/// What a record offers to the conditions.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a> {
    /// The payload as JSON.
    pub data: &'a serde_json::Value,
    /// The Kafka key as text.
    pub key: &'a str,
    /// Headers as text.
    pub headers: &'a BTreeMap<String, String>,
    /// Partition of the record.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
    /// Kafka timestamp, Unix milliseconds.
    pub timestamp: i64,
}

/// A record's variables, converted once and shared by every rule.
pub struct Activation {
    inner: cel::Activation,
}

/// Converts a record's variables for evaluation.
pub fn activation(vars: &Vars<'_>) -> Result<Activation, EvalError> {
    let headers: serde_json::Map<String, serde_json::Value> = vars
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let mut inner = cel::Activation::new();
    inner
        .set_json("data", vars.data)
        .set("key", Value::String(Arc::new(vars.key.to_string())))
        .set_json("headers", &serde_json::Value::Object(headers))
        .set("partition", Value::Int(i64::from(vars.partition)))
        .set("offset", Value::Int(vars.offset))
        .set("timestamp", Value::Int(vars.timestamp));
    Ok(Activation { inner })
}

/// Evaluates a condition: `Ok(true|false)`, or why it could not decide.
pub fn eval(program: &Program, activation: &Activation) -> Result<bool, EvalError> {
    program
        .inner
        .matches(&activation.inner)
        .map_err(|e| EvalError(format!("`{}`: {e}", program.source())))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(expression: &str, data: serde_json::Value) -> Result<bool, EvalError> {
        let headers = BTreeMap::from([("source".to_string(), "agent".to_string())]);
        let vars = Vars {
            data: &data,
            key: "server-7",
            headers: &headers,
            partition: 2,
            offset: 41,
            timestamp: 1_700_000_000_000,
        };
        eval(&compile(expression).unwrap(), &activation(&vars).unwrap())
    }

    #[test]
    fn conditions_see_every_variable() {
        let data = json!({"metrics": {"cpu": 95.5}, "region": "eu"});
        assert_eq!(run("data.metrics.cpu > 90.0", data.clone()), Ok(true));
        assert_eq!(run("data.metrics.cpu > 96.0", data.clone()), Ok(false));
        assert_eq!(
            run("data.region == 'eu' && key == 'server-7'", data.clone()),
            Ok(true)
        );
        assert_eq!(
            run(
                "headers.source == 'agent' && partition == 2 && offset == 41",
                data.clone()
            ),
            Ok(true)
        );
        assert_eq!(run("timestamp > 0", data), Ok(true));
    }

    #[test]
    fn integers_and_decimals_compare_as_users_write_them() {
        // JSON does not say whether 95 is an int or a double; a threshold written either way
        // must work on either.
        assert_eq!(run("data.cpu > 90.0", json!({"cpu": 95})), Ok(true));
        assert_eq!(run("data.cpu > 90", json!({"cpu": 95.5})), Ok(true));
        assert_eq!(run("data.cpu > 90", json!({"cpu": 85})), Ok(false));
    }

    #[test]
    fn a_record_that_cannot_decide_is_an_error_not_a_false() {
        assert!(run("data.cpu > 90.0", json!({"memory": 1})).is_err());
        assert!(run("data.cpu > 90.0", json!({"cpu": "high"})).is_err());
        assert!(run("data.cpu", json!({"cpu": 1})).is_err());
    }

    #[test]
    fn a_deeply_nested_rule_is_refused_not_a_stack_overflow() {
        // 200 brackets fit in the length limit; parsing them on a 2 MiB stack aborted the
        // process before the depth bound existed.
        let deep = format!("{}1{}", "(".repeat(200), ")".repeat(200));
        let outcome = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || compile(&deep).map(|_| ()))
            .unwrap()
            .join()
            .unwrap();
        assert!(outcome.unwrap_err().0.contains("nests"));
    }

    #[test]
    fn bad_expressions_are_refused_with_the_reason() {
        assert!(compile("").is_err());
        assert!(compile("data.cpu > ").unwrap_err().0.contains("CEL"));
        assert!(
            compile(&"a".repeat(5000))
                .unwrap_err()
                .0
                .contains("at most")
        );
    }
}
