//! CEL for alert rules, behind two functions: [`compile`] once per rule, [`eval`] once per rule
//! and record against an [`Activation`] built once per record. Nothing else in the evaluator
//! touches the `cel` crate, so one CEL wrapper can later serve alerts and subscription filters.
//!
//! Variables: `data` (the JSON payload), `key` (the Kafka key as text, `""` without one),
//! `headers` (map of header name to text), `partition`, `offset` and `timestamp` (the record's
//! Kafka timestamp, milliseconds since the Unix epoch).

use std::collections::BTreeMap;

use eventstream_crds::config::check_alert_expression;

/// A compiled rule condition.
pub struct Program {
    inner: cel::Program,
    source: String,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Program").field(&self.source).finish()
    }
}

impl Program {
    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
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

/// Compiles a rule condition: empty, over-long and unparsable expressions are refused.
pub fn compile(expression: &str) -> Result<Program, CompileError> {
    check_alert_expression(expression).map_err(CompileError)?;
    let inner = cel::Program::compile(expression)
        .map_err(|e| CompileError(format!("is not a valid CEL expression: {e}")))?;
    Ok(Program {
        inner,
        source: expression.to_string(),
    })
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
    context: cel::Context<'static>,
}

/// Converts a record's variables for evaluation.
pub fn activation(vars: &Vars<'_>) -> Result<Activation, EvalError> {
    let mut context = cel::Context::default();
    let bad = |name: &str, e: cel::SerializationError| {
        EvalError(format!("cannot convert `{name}` for CEL: {e}"))
    };
    context
        .add_variable("data", vars.data)
        .map_err(|e| bad("data", e))?;
    context
        .add_variable("key", vars.key)
        .map_err(|e| bad("key", e))?;
    context
        .add_variable("headers", vars.headers)
        .map_err(|e| bad("headers", e))?;
    context
        .add_variable("partition", i64::from(vars.partition))
        .map_err(|e| bad("partition", e))?;
    context
        .add_variable("offset", vars.offset)
        .map_err(|e| bad("offset", e))?;
    context
        .add_variable("timestamp", vars.timestamp)
        .map_err(|e| bad("timestamp", e))?;
    Ok(Activation { context })
}

/// Evaluates a condition: `Ok(true|false)`, or why it could not decide.
pub fn eval(program: &Program, activation: &Activation) -> Result<bool, EvalError> {
    match program.inner.execute(&activation.context) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(EvalError(format!(
            "`{}` gave {other:?}, not a bool",
            program.source
        ))),
        Err(e) => Err(EvalError(format!("`{}`: {e}", program.source))),
    }
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
