//! The evaluator's core, free of I/O: the compiled rules, the state of every alert (rule and
//! key), and what one record does to them. The Kafka shell ([`super::evaluator`]) feeds records
//! in, publishes what comes out, and commits or rolls back the batch with its transaction.

use std::collections::{BTreeMap, HashMap};

use eventstream_crds::config::AlertsConfig;
use eventstream_crds::v1alpha1::AlertSeverity;

use super::expr::{self, Program};
use super::machine::{self, Observation, Phase, Transition};

/// One compiled rule.
#[derive(Debug)]
pub struct Rule {
    /// Rule name.
    pub name: String,
    /// Severity of its alerts.
    pub severity: AlertSeverity,
    /// `for`, in milliseconds of record time.
    pub hold_ms: i64,
    when: Program,
    clear_when: Option<Program>,
}

/// A rule that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("alerts.rules[{index}] ({name}): {field} {reason}")]
pub struct RuleError {
    index: usize,
    name: String,
    field: &'static str,
    reason: String,
}

/// Compiles every rule of the config.
pub fn compile_rules(config: &AlertsConfig) -> Result<Vec<Rule>, RuleError> {
    let mut rules = Vec::with_capacity(config.rules.len());
    for (index, rule) in config.rules.iter().enumerate() {
        let error = |field, e: expr::CompileError| RuleError {
            index,
            name: rule.name.clone(),
            field,
            reason: e.0,
        };
        let when = expr::compile(&rule.when).map_err(|e| error("when", e))?;
        let clear_when = match &rule.clear_when {
            Some(text) => Some(expr::compile(text).map_err(|e| error("clearWhen", e))?),
            None => None,
        };
        rules.push(Rule {
            name: rule.name.clone(),
            severity: rule.severity,
            hold_ms: i64::try_from(rule.hold.as_millis()).unwrap_or(i64::MAX),
            when,
            clear_when,
        });
    }
    Ok(rules)
}

/// An alert: one rule about one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AlertId {
    /// Index of the rule in the config.
    pub rule: usize,
    /// The alert key's value.
    pub key: String,
}

/// A record as the engine sees it.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Partition of the record.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
    /// Kafka timestamp, Unix ms.
    pub timestamp: i64,
    /// Kafka key.
    pub key: Option<&'a [u8]>,
    /// Headers as text.
    pub headers: &'a BTreeMap<String, String>,
    /// Payload.
    pub payload: Option<&'a [u8]>,
}

/// Why a record was not evaluated at all (counted, never an error of the stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The payload is not JSON.
    NotJson,
    /// The payload has no usable alert key (missing, null, an object or an array).
    NoKey,
}

impl Skip {
    /// The `reason` label of `eventstream_alerts_records_skipped_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotJson => "not_json",
            Self::NoKey => "no_key",
        }
    }
}

/// A transition with what its event needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Fired {
    /// The alert.
    pub id: AlertId,
    /// What happened.
    pub transition: Transition,
}

/// What one record did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Transitions to publish, in rule order.
    pub transitions: Vec<Fired>,
    /// Conditions that could not decide on this record.
    pub eval_errors: u32,
    /// Set when the record was not evaluated.
    pub skipped: Option<Skip>,
    /// The payload as JSON (for the events), when it was JSON.
    pub data: Option<serde_json::Value>,
}

/// The rules and the state of every alert, with a journal of the batch in progress so that an
/// aborted transaction's changes can be undone.
#[derive(Debug)]
pub struct Engine {
    rules: Vec<Rule>,
    key_pointer: String,
    states: HashMap<AlertId, Phase>,
    /// Alert → its phase before the open batch touched it.
    journal: HashMap<AlertId, Option<Phase>>,
}

impl Engine {
    /// An engine with no alert active.
    pub fn new(rules: Vec<Rule>, key_pointer: impl Into<String>) -> Self {
        Self {
            rules,
            key_pointer: key_pointer.into(),
            states: HashMap::new(),
            journal: HashMap::new(),
        }
    }

    /// The rules, in config order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rule index called `name`.
    pub fn rule_index(&self, name: &str) -> Option<usize> {
        self.rules.iter().position(|r| r.name == name)
    }

    /// The phase of an alert (`None`: inactive).
    pub fn phase(&self, id: &AlertId) -> Option<Phase> {
        self.states.get(id).copied()
    }

    /// Number of firing alerts per rule index.
    pub fn firing_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.rules.len()];
        for (id, phase) in &self.states {
            if matches!(phase, Phase::Firing { .. })
                && let Some(c) = counts.get_mut(id.rule)
            {
                *c += 1;
            }
        }
        counts
    }

    /// Sets an alert's phase without journaling: rebuilding state at start.
    pub fn restore(&mut self, id: AlertId, phase: Option<Phase>) {
        match phase {
            Some(p) => self.states.insert(id, p),
            None => self.states.remove(&id),
        };
    }

    /// Evaluates one record against every rule, updating the state (journaled).
    pub fn process(&mut self, input: &Input<'_>) -> Outcome {
        let mut outcome = Outcome::default();
        let data: serde_json::Value = match input.payload.map(serde_json::from_slice) {
            Some(Ok(value)) => value,
            _ => {
                outcome.skipped = Some(Skip::NotJson);
                return outcome;
            }
        };
        let Some(key) = alert_key(&data, &self.key_pointer) else {
            outcome.skipped = Some(Skip::NoKey);
            outcome.data = Some(data);
            return outcome;
        };
        let kafka_key = input
            .key
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        let vars = expr::Vars {
            data: &data,
            key: &kafka_key,
            headers: input.headers,
            partition: input.partition,
            offset: input.offset,
            timestamp: input.timestamp,
        };
        let activation = match expr::activation(&vars) {
            Ok(a) => a,
            Err(_) => {
                outcome.eval_errors = u32::try_from(self.rules.len()).unwrap_or(u32::MAX);
                outcome.data = Some(data);
                return outcome;
            }
        };
        for (index, rule) in self.rules.iter().enumerate() {
            let when = expr::eval(&rule.when, &activation).ok();
            let clear = match &rule.clear_when {
                Some(program) => expr::eval(program, &activation).ok(),
                None => when.map(|w| !w),
            };
            if when.is_none() || clear.is_none() {
                outcome.eval_errors += 1;
            }
            let id = AlertId {
                rule: index,
                key: key.clone(),
            };
            let current = self.states.get(&id).copied();
            let step = machine::step(
                current,
                Observation { when, clear },
                rule.hold_ms,
                input.timestamp,
            );
            if step.next != current {
                self.journal.entry(id.clone()).or_insert(current);
                match step.next {
                    Some(p) => self.states.insert(id.clone(), p),
                    None => self.states.remove(&id),
                };
            }
            if let Some(transition) = step.transition {
                outcome.transitions.push(Fired { id, transition });
            }
        }
        outcome.data = Some(data);
        outcome
    }

    /// The alerts the open batch changed, with their phase now (what the state topic gets).
    pub fn changes(&self) -> Vec<(AlertId, Option<Phase>)> {
        let mut out: Vec<_> = self
            .journal
            .iter()
            .filter(|(id, before)| self.states.get(id).copied() != **before)
            .map(|(id, _)| (id.clone(), self.states.get(id).copied()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The batch is committed: forget how to undo it.
    pub fn commit(&mut self) {
        self.journal.clear();
    }

    /// The batch's transaction was aborted: put every alert back as it was before it.
    pub fn rollback(&mut self) {
        for (id, before) in self.journal.drain() {
            match before {
                Some(p) => self.states.insert(id, p),
                None => self.states.remove(&id),
            };
        }
    }
}

/// The value at `pointer` as an alert key: strings as they are, numbers and booleans as JSON
/// text; missing, null, objects and arrays give none.
pub fn alert_key(data: &serde_json::Value, pointer: &str) -> Option<String> {
    match data.pointer(pointer)? {
        serde_json::Value::String(s) => Some(s.clone()),
        v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)) => Some(v.to_string()),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    use eventstream_crds::config::AlertRuleConfig;

    fn config(rules: Vec<AlertRuleConfig>) -> AlertsConfig {
        AlertsConfig {
            topic: "m.alerts".into(),
            state_topic: "m.alerts.state".into(),
            consumer_group: "g".into(),
            transactional_id: "t".into(),
            key: "/serverId".into(),
            start_from: Default::default(),
            max_batch: 10,
            commit_interval: Duration::from_millis(100),
            rules,
        }
    }

    fn rule(name: &str, when: &str, severity: AlertSeverity, hold: u64) -> AlertRuleConfig {
        AlertRuleConfig {
            name: name.into(),
            when: when.into(),
            severity,
            hold: Duration::from_millis(hold),
            clear_when: None,
        }
    }

    fn seed_engine() -> Engine {
        let c = config(vec![
            rule(
                "cpu-warning",
                "data.metrics.cpu > 75.0",
                AlertSeverity::Warning,
                0,
            ),
            rule(
                "cpu-critical",
                "data.metrics.cpu > 90.0",
                AlertSeverity::Critical,
                20,
            ),
        ]);
        Engine::new(compile_rules(&c).unwrap(), c.key)
    }

    fn feed(engine: &mut Engine, offset: i64, at: i64, payload: &str) -> Outcome {
        let headers = BTreeMap::new();
        engine.process(&Input {
            partition: 0,
            offset,
            timestamp: at,
            key: None,
            headers: &headers,
            payload: Some(payload.as_bytes()),
        })
    }

    fn states(outcome: &Outcome) -> Vec<(usize, String, &'static str)> {
        outcome
            .transitions
            .iter()
            .map(|f| (f.id.rule, f.id.key.clone(), f.transition.state()))
            .collect()
    }

    #[test]
    fn rules_fire_and_resolve_per_key() {
        let mut e = seed_engine();
        let o = feed(&mut e, 0, 0, r#"{"serverId":1,"metrics":{"cpu":80}}"#);
        assert_eq!(states(&o), [(0, "1".into(), "firing")]);
        let o = feed(&mut e, 1, 5, r#"{"serverId":2,"metrics":{"cpu":95}}"#);
        assert_eq!(
            states(&o),
            [(0, "2".into(), "firing")],
            "critical waits for 20ms"
        );
        let o = feed(&mut e, 2, 30, r#"{"serverId":2,"metrics":{"cpu":96}}"#);
        assert_eq!(states(&o), [(1, "2".into(), "firing")]);
        let o = feed(&mut e, 3, 31, r#"{"serverId":1,"metrics":{"cpu":81}}"#);
        assert!(o.transitions.is_empty(), "deduplicated: {:?}", states(&o));
        let o = feed(&mut e, 4, 40, r#"{"serverId":2,"metrics":{"cpu":10}}"#);
        assert_eq!(
            states(&o),
            [(0, "2".into(), "resolved"), (1, "2".into(), "resolved")]
        );
        assert_eq!(e.firing_counts(), [1, 0]);
    }

    #[test]
    fn garbage_is_skipped_and_counted_never_fatal() {
        let mut e = seed_engine();
        let o = feed(&mut e, 0, 0, "not json");
        assert_eq!(o.skipped, Some(Skip::NotJson));
        let o = feed(&mut e, 1, 0, r#"{"metrics":{"cpu":99}}"#);
        assert_eq!(o.skipped, Some(Skip::NoKey));
        let o = feed(&mut e, 2, 0, r#"{"serverId":{"a":1},"metrics":{"cpu":99}}"#);
        assert_eq!(o.skipped, Some(Skip::NoKey));
        let o = feed(&mut e, 3, 0, r#"{"serverId":"a","metrics":{}}"#);
        assert_eq!(o.eval_errors, 2);
        assert!(o.transitions.is_empty());
        assert!(e.changes().is_empty());
    }

    #[test]
    fn a_rolled_back_batch_leaves_the_state_as_before() {
        let mut e = seed_engine();
        feed(&mut e, 0, 0, r#"{"serverId":1,"metrics":{"cpu":95}}"#);
        e.commit();
        let before_warning = e.phase(&AlertId {
            rule: 0,
            key: "1".into(),
        });
        let before_critical = e.phase(&AlertId {
            rule: 1,
            key: "1".into(),
        });
        feed(&mut e, 1, 50, r#"{"serverId":1,"metrics":{"cpu":95}}"#);
        feed(&mut e, 2, 60, r#"{"serverId":3,"metrics":{"cpu":95}}"#);
        assert_eq!(e.changes().len(), 3, "{:?}", e.changes());
        e.rollback();
        assert_eq!(
            e.phase(&AlertId {
                rule: 0,
                key: "1".into()
            }),
            before_warning
        );
        assert_eq!(
            e.phase(&AlertId {
                rule: 1,
                key: "1".into()
            }),
            before_critical
        );
        assert_eq!(
            e.phase(&AlertId {
                rule: 0,
                key: "3".into()
            }),
            None
        );
        // Replaying the same records gives the same transitions.
        let o = feed(&mut e, 1, 50, r#"{"serverId":1,"metrics":{"cpu":95}}"#);
        assert_eq!(states(&o), [(1, "1".into(), "firing")]);
    }

    #[test]
    fn keys_are_strings_numbers_or_booleans() {
        let v = serde_json::json!({"a": "x", "n": 7, "b": true, "z": null, "o": {}});
        assert_eq!(alert_key(&v, "/a").as_deref(), Some("x"));
        assert_eq!(alert_key(&v, "/n").as_deref(), Some("7"));
        assert_eq!(alert_key(&v, "/b").as_deref(), Some("true"));
        assert_eq!(alert_key(&v, "/z"), None);
        assert_eq!(alert_key(&v, "/o"), None);
        assert_eq!(alert_key(&v, "/missing"), None);
    }
}
