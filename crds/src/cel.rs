//! CEL (the Common Expression Language Kubernetes users write in CRDs) for everything that
//! reads a user's expression: compiling it once, with its cost bounded before it ever runs, and
//! evaluating it against the variables of one input. Knows nothing of records or
//! subscriptions: the dataplane's subscription filters and alert rules name their own
//! variables, and the config's checks of alert rules (here in `config`, run by the operator on
//! every spec) compile through it too, so no expression reaches the parser unchecked.
//!
//! - [`Expression::compile`] refuses, with a message meant for the person who wrote it, an
//!   expression longer than [`Limits::max_bytes`], nested deeper than [`Limits::max_depth`]
//!   (brackets and `?:` counted on the text *before* parsing: the CEL parser recurses per
//!   level and overflows the stack long before its own recursion limit reports anything, so a
//!   deep expression is never handed to it), with more than
//!   [`Limits::max_nodes`] nodes, or with more than [`Limits::max_comprehensions`] macros
//!   (`all`, `exists`, `exists_one`, `map`, `filter`), which is what bounds the work of one
//!   evaluation to a small polynomial of the input's size.
//! - [`Activation`] holds the variables of one input, converted once and shared by every
//!   expression evaluated on it; [`Expression::evaluate`] / [`Expression::matches`] never panic
//!   and turn every failure (missing field, wrong type, no such overload) into an [`EvalError`].
//!
//! The standard functions (`size`, `contains`, `startsWith`, `matches`, `timestamp`, …) are
//! registered once per process in a root context; an activation is a child scope of it.

use std::sync::{Arc, LazyLock};

use cel::Context;
use cel::common::ast::{EntryExpr, Expr};
use cel::parser::{Expression as Ast, Parser};

pub use cel::Value;

/// Bounds checked at compile time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest source, in bytes.
    pub max_bytes: usize,
    /// Deepest nesting of brackets and conditionals in the text, and deepest tree of operators.
    pub max_depth: u16,
    /// Most nodes of the parsed expression.
    pub max_nodes: usize,
    /// Most comprehension macros (`all`, `exists`, `exists_one`, `map`, `filter`).
    pub max_comprehensions: usize,
}

impl Default for Limits {
    /// 1024 bytes, depth 32, 200 nodes, 2 comprehensions.
    fn default() -> Self {
        Self {
            max_bytes: 1024,
            max_depth: 32,
            max_nodes: 200,
            max_comprehensions: 2,
        }
    }
}

/// Why an expression does not compile; the message is for the person who wrote it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// Empty or only whitespace.
    #[error("the expression is empty")]
    Empty,
    /// Longer than [`Limits::max_bytes`].
    #[error("the expression is {len} bytes long; at most {max} are allowed")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The CEL parser refused it.
    #[error("{0}")]
    Syntax(String),
    /// Brackets and conditionals nested deeper than [`Limits::max_depth`].
    #[error(
        "the expression nests {depth} levels of brackets and conditionals; at most {max} are allowed"
    )]
    TooDeep {
        /// Its nesting.
        depth: usize,
        /// The limit.
        max: u16,
    },
    /// Over [`Limits::max_nodes`] or [`Limits::max_comprehensions`].
    #[error("the expression is too costly: {0}")]
    TooCostly(String),
}

/// Why one evaluation failed (the input lacks a field, has another type, …).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// CEL's own error.
    #[error("{0}")]
    Execution(#[from] cel::ExecutionError),
    /// The expression gave something other than a boolean where one was needed.
    #[error("the expression gave {0}, not a boolean")]
    NotBool(String),
}

/// A compiled expression: parse once, evaluate per input.
#[derive(Debug)]
pub struct Expression {
    source: Arc<str>,
    ast: Ast,
}

impl Expression {
    /// Parses `source` and checks it against `limits`.
    pub fn compile(source: &str, limits: &Limits) -> Result<Self, CompileError> {
        if source.trim().is_empty() {
            return Err(CompileError::Empty);
        }
        if source.len() > limits.max_bytes {
            return Err(CompileError::TooLong {
                len: source.len(),
                max: limits.max_bytes,
            });
        }
        let depth = nesting(source);
        if depth > usize::from(limits.max_depth) {
            return Err(CompileError::TooDeep {
                depth,
                max: limits.max_depth,
            });
        }
        let ast = parse(source, limits.max_depth)?;
        let size = measure(&ast);
        // The evaluator recurses once per level (~40 KiB of stack each in an unoptimised
        // build): the same bound keeps it well inside a 2 MiB thread.
        if size.depth > usize::from(limits.max_depth) {
            return Err(CompileError::TooCostly(format!(
                "{} levels of operators, at most {} are allowed",
                size.depth, limits.max_depth
            )));
        }
        if size.nodes > limits.max_nodes {
            return Err(CompileError::TooCostly(format!(
                "{} nodes, at most {} are allowed",
                size.nodes, limits.max_nodes
            )));
        }
        if size.comprehensions > limits.max_comprehensions {
            return Err(CompileError::TooCostly(format!(
                "{} macros (all, exists, exists_one, map, filter), at most {} are allowed",
                size.comprehensions, limits.max_comprehensions
            )));
        }
        Ok(Self {
            source: source.into(),
            ast,
        })
    }

    /// The source text as written.
    pub fn source(&self) -> &Arc<str> {
        &self.source
    }

    /// Evaluates against `activation`.
    pub fn evaluate(&self, activation: &Activation) -> Result<Value, EvalError> {
        Ok(Value::resolve(&self.ast, &activation.context)?)
    }

    /// Evaluates a predicate: `Ok(true)` only for the boolean `true`.
    pub fn matches(&self, activation: &Activation) -> Result<bool, EvalError> {
        match self.evaluate(activation)? {
            Value::Bool(b) => Ok(b),
            other => Err(EvalError::NotBool(other.type_of().to_string())),
        }
    }
}

/// Pure: the deepest nesting of `(`, `[`, `{` outside string literals, plus every `?`
/// (conditionals nest to the right). Unbalanced text is measured as written; the parser then
/// refuses it.
fn nesting(source: &str) -> usize {
    let (mut depth, mut deepest, mut conditionals) = (0usize, 0usize, 0usize);
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                // Skip the literal (triple-quoted ones end at the first quote of their kind,
                // which only makes the count larger, never smaller: still a bound).
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
            }
            '(' | '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            '?' => conditionals += 1,
            _ => {}
        }
    }
    deepest + conditionals
}

/// Stack of the thread that parses: the CEL parser (ANTLR) uses ~150 KiB of stack per
/// nesting level in an unoptimised build, so even depth 16 overflows a default 2 MiB thread
/// (a Tokio worker); 16 MiB holds [`Limits::max_depth`] 32 with room to spare.
const PARSER_STACK_BYTES: usize = 16 << 20;

/// Parses on a thread of its own with [`PARSER_STACK_BYTES`] of stack (compiling is once per
/// expression, so a thread per compile is cheap next to what it protects).
fn parse(source: &str, max_depth: u16) -> Result<Ast, CompileError> {
    let text = source.to_owned();
    std::thread::Builder::new()
        .name("cel-parse".into())
        .stack_size(PARSER_STACK_BYTES)
        .spawn(move || {
            Parser::new()
                .max_recursion_depth(max_depth)
                .parse(&text)
                .map_err(|e| e.to_string())
        })
        .map_err(|e| CompileError::Syntax(format!("cannot start the CEL parser: {e}")))?
        .join()
        .map_err(|_| CompileError::Syntax("the CEL parser failed on this expression".into()))?
        .map_err(CompileError::Syntax)
}

#[derive(Default)]
struct Size {
    nodes: usize,
    comprehensions: usize,
    /// Deepest node (the evaluator recurses this deep).
    depth: usize,
}

/// Counts nodes, comprehensions and depth with an explicit stack (no recursion).
fn measure(root: &Ast) -> Size {
    let mut size = Size::default();
    let mut stack = vec![(root, 1usize)];
    while let Some((node, depth)) = stack.pop() {
        size.nodes += 1;
        size.depth = size.depth.max(depth);
        let mut children: Vec<&Ast> = Vec::new();
        match &node.expr {
            Expr::Call(call) => {
                children.extend(call.target.as_deref());
                children.extend(call.args.iter());
            }
            Expr::Comprehension(c) => {
                size.comprehensions += 1;
                children.extend([
                    &c.iter_range,
                    &c.accu_init,
                    &c.loop_cond,
                    &c.loop_step,
                    &c.result,
                ]);
            }
            Expr::List(list) => children.extend(list.elements.iter()),
            Expr::Map(map) => {
                for entry in &map.entries {
                    entry_children(&entry.expr, &mut children);
                }
            }
            Expr::Struct(s) => {
                for entry in &s.entries {
                    entry_children(&entry.expr, &mut children);
                }
            }
            Expr::Select(select) => children.push(&select.operand),
            Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
        }
        stack.extend(children.into_iter().map(|child| (child, depth + 1)));
    }
    size
}

fn entry_children<'a>(entry: &'a EntryExpr, stack: &mut Vec<&'a Ast>) {
    match entry {
        EntryExpr::StructField(f) => stack.push(&f.value),
        EntryExpr::MapEntry(e) => stack.extend([&e.key, &e.value]),
    }
}

/// The standard functions, registered once.
static ROOT: LazyLock<Context<'static>> = LazyLock::new(Context::default);

/// The variables of one input, converted once and shared by every expression evaluated on it.
pub struct Activation {
    context: Context<'static>,
}

impl Default for Activation {
    fn default() -> Self {
        Self::new()
    }
}

impl Activation {
    /// No variables yet.
    pub fn new() -> Self {
        Self {
            context: ROOT.new_inner_scope(),
        }
    }

    /// Sets `name` to `value`.
    pub fn set(&mut self, name: &str, value: Value) -> &mut Self {
        self.context.add_variable_from_value(name, value);
        self
    }

    /// Sets `name` to a JSON document (numbers: `int` when they are integers that fit, `uint`
    /// above `i64::MAX`, `double` otherwise; so `data.cpu > 90` and `data.cpu > 90.0` both
    /// work, CEL comparing numbers across types).
    pub fn set_json(&mut self, name: &str, value: &serde_json::Value) -> &mut Self {
        self.set(name, json_value(value))
    }
}

/// A JSON document as a CEL value.
pub fn json_value(value: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match value {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        J::String(s) => Value::String(Arc::new(s.clone())),
        J::Array(items) => Value::List(Arc::new(items.iter().map(json_value).collect())),
        J::Object(fields) => {
            let map: std::collections::HashMap<String, Value> = fields
                .iter()
                .map(|(k, v)| (k.clone(), json_value(v)))
                .collect();
            Value::Map(map.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile(source: &str) -> Result<Expression, CompileError> {
        Expression::compile(source, &Limits::default())
    }

    fn with_data(data: serde_json::Value) -> Activation {
        let mut a = Activation::new();
        a.set_json("data", &data)
            .set("key", Value::String(Arc::new("server-7".into())))
            .set("partition", Value::Int(3));
        a
    }

    #[test]
    fn evaluates_predicates_over_json() {
        let e = compile("data.cpu > 90.0 && data.region == 'eu'").expect("compiles");
        assert_eq!(
            e.matches(&with_data(json!({"cpu": 95, "region": "eu"}))),
            Ok(true)
        );
        assert_eq!(
            e.matches(&with_data(json!({"cpu": 91.5, "region": "eu"}))),
            Ok(true)
        );
        assert_eq!(
            e.matches(&with_data(json!({"cpu": 12, "region": "eu"}))),
            Ok(false)
        );
        let e = compile("key.startsWith('server-') && partition == 3").expect("compiles");
        assert_eq!(e.matches(&with_data(json!({}))), Ok(true));
        let e = compile("data.tags.exists(t, t == 'db')").expect("compiles");
        assert_eq!(
            e.matches(&with_data(json!({"tags": ["web", "db"]}))),
            Ok(true)
        );
    }

    #[test]
    fn failures_are_errors_never_panics() {
        let e = compile("data.cpu > 90.0").expect("compiles");
        assert!(matches!(
            e.matches(&with_data(json!({"mem": 1}))),
            Err(EvalError::Execution(_))
        ));
        assert!(e.matches(&with_data(json!({"cpu": "high"}))).is_err());
        assert!(e.matches(&with_data(json!([1, 2]))).is_err());
        let e = compile("data.cpu").expect("compiles");
        assert!(matches!(
            e.matches(&with_data(json!({"cpu": 1}))),
            Err(EvalError::NotBool(_))
        ));
        let e = compile("nothere == 1").expect("compiles");
        assert!(e.matches(&with_data(json!({}))).is_err());
        let e = compile("1 / 0 == 1").expect("compiles");
        assert!(e.matches(&with_data(json!({}))).is_err());
    }

    #[test]
    fn bad_and_costly_expressions_do_not_compile() {
        assert_eq!(compile("  ").err(), Some(CompileError::Empty));
        assert!(matches!(
            compile("data.cpu >"),
            Err(CompileError::Syntax(_))
        ));
        assert!(matches!(
            compile("data.cpu > > 1"),
            Err(CompileError::Syntax(_))
        ));
        let long = format!("data.a == '{}'", "x".repeat(1100));
        assert!(matches!(compile(&long), Err(CompileError::TooLong { .. })));
        // Deep nesting is refused before the parser sees it (it would overflow the stack).
        let deep = format!("{}1{}", "(".repeat(200), ")".repeat(200));
        assert!(matches!(compile(&deep), Err(CompileError::TooDeep { .. })));
        let deep = format!("{}1{}", "[".repeat(400), "]".repeat(400));
        assert!(matches!(compile(&deep), Err(CompileError::TooDeep { .. })));
        let chain = "true ? 1 : ".repeat(60) + "0";
        assert!(matches!(compile(&chain), Err(CompileError::TooDeep { .. })));
        // At the limit the parser (on its own thread) runs without overflowing.
        let at_limit = format!("{}1{} == 1", "(".repeat(32), ")".repeat(32));
        assert!(compile(&at_limit).is_ok());
        let at_limit = format!("{}1{} == [[1]]", "[".repeat(30), "]".repeat(30));
        assert!(compile(&at_limit).is_ok());
        let chain = "true ? 1 : ".repeat(30) + "0";
        assert!(compile(&chain).is_ok());
        // Long operator chains are refused before the evaluator recurses through them.
        let chain = (0..70).map(|_| "1").collect::<Vec<_>>().join(" + ") + " == 70";
        assert!(matches!(compile(&chain), Err(CompileError::TooCostly(_))));
        // What compiles evaluates on an ordinary 2 MiB thread (this test's).
        let longest = (0..30).map(|_| "1").collect::<Vec<_>>().join(" + ") + " == 30";
        let e = compile(&longest).expect("compiles");
        assert_eq!(e.matches(&with_data(json!({}))), Ok(true));
        let widest = (0..25).map(|_| "data.a").collect::<Vec<_>>().join(" + ") + " == 25";
        let e = compile(&widest).expect("compiles");
        assert_eq!(e.matches(&with_data(json!({"a": 1}))), Ok(true));
        let deepest = format!("{}data.a{} == 1", "(".repeat(32), ")".repeat(32));
        let e = compile(&deepest).expect("compiles");
        assert_eq!(e.matches(&with_data(json!({"a": 1}))), Ok(true));
        // Brackets inside strings do not count.
        assert!(compile(&format!("data.s == '{}'", "(".repeat(100))).is_ok());
        let wide = (0..120)
            .map(|i| format!("data.f{i} == {i}"))
            .collect::<Vec<_>>()
            .join(" || ");
        let list = format!(
            "size([{}]) == 250",
            (0..250)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(
            matches!(compile(&list), Err(CompileError::TooCostly(m)) if m.contains("nodes")),
            "a shallow expression with too many nodes"
        );
        assert!(matches!(
            Expression::compile(
                &wide,
                &Limits {
                    max_bytes: 4096,
                    ..Limits::default()
                }
            ),
            Err(CompileError::TooCostly(_))
        ));
        let nested = "data.a.all(x, data.b.all(y, data.c.exists(z, x + y == z)))";
        assert!(matches!(compile(nested), Err(CompileError::TooCostly(_))));
        assert!(compile("data.a.all(x, data.b.exists(y, x == y))").is_ok());
    }

    #[test]
    fn large_json_numbers_keep_their_kind() {
        assert_eq!(json_value(&json!(7)), Value::Int(7));
        assert_eq!(json_value(&json!(u64::MAX)), Value::UInt(u64::MAX));
        assert_eq!(json_value(&json!(1.5)), Value::Float(1.5));
    }
}
