//! The evaluator's Prometheus metrics, named `eventstream_alerts_*`, labelled with `stream`.
//! `rule` and `severity` are bounded by the rules of the stream (at most 100), `state` by
//! `firing|resolved`, `reason` by [`Skip`](super::engine::Skip) and the transaction outcomes.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Handles on every evaluator metric.
#[derive(Clone)]
pub struct AlertMetrics {
    stream: String,
    firing: IntGaugeVec,
    transitions: IntCounterVec,
    skipped: IntCounterVec,
    /// Conditions that could not decide on a record (missing field, wrong type).
    pub eval_errors: IntCounter,
    /// Input records in committed transactions.
    pub records: IntCounter,
    /// Transactions committed.
    pub transactions: IntCounter,
    /// Transactions aborted (and retried).
    pub aborts: IntCounter,
    /// 1 while a transaction is open.
    pub transaction_open: IntGauge,
    /// Input records processed in the open transaction.
    pub transaction_records: IntGauge,
}

impl AlertMetrics {
    /// Registers the metrics for `stream` in `registry`.
    pub fn register(registry: &Registry, stream: &str) -> prometheus::Result<Self> {
        let firing = IntGaugeVec::new(
            Opts::new(
                "eventstream_alerts_firing",
                "Alerts firing now (committed state), by rule and severity",
            ),
            &["stream", "rule", "severity"],
        )?;
        let transitions = IntCounterVec::new(
            Opts::new(
                "eventstream_alerts_transitions_total",
                "Alert transitions committed to the alerts topic, by rule, severity and state (firing|resolved)",
            ),
            &["stream", "rule", "severity", "state"],
        )?;
        let skipped = IntCounterVec::new(
            Opts::new(
                "eventstream_alerts_records_skipped_total",
                "Input records not evaluated, by reason (not_json, no_key)",
            ),
            &["stream", "reason"],
        )?;
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let vec = IntCounterVec::new(Opts::new(name, help), &["stream"])?;
            registry.register(Box::new(vec.clone()))?;
            Ok(vec.with_label_values(&[stream]))
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let vec = IntGaugeVec::new(Opts::new(name, help), &["stream"])?;
            registry.register(Box::new(vec.clone()))?;
            Ok(vec.with_label_values(&[stream]))
        };
        let metrics = Self {
            stream: stream.to_string(),
            eval_errors: counter(
                "eventstream_alerts_eval_errors_total",
                "Rule conditions that could not decide on a record (missing field, wrong type); the alert is left as it was",
            )?,
            records: counter(
                "eventstream_alerts_records_total",
                "Input records evaluated in committed transactions",
            )?,
            transactions: counter(
                "eventstream_alerts_transactions_total",
                "Kafka transactions committed by the evaluator",
            )?,
            aborts: counter(
                "eventstream_alerts_transaction_aborts_total",
                "Kafka transactions aborted by the evaluator (their records are processed again)",
            )?,
            transaction_open: gauge(
                "eventstream_alerts_transaction_open",
                "1 while the evaluator has a Kafka transaction open",
            )?,
            transaction_records: gauge(
                "eventstream_alerts_transaction_records",
                "Input records processed in the open transaction, not yet committed",
            )?,
            firing,
            transitions,
            skipped,
        };
        registry.register(Box::new(metrics.firing.clone()))?;
        registry.register(Box::new(metrics.transitions.clone()))?;
        registry.register(Box::new(metrics.skipped.clone()))?;
        Ok(metrics)
    }

    /// Sets the firing gauge of a rule.
    pub fn set_firing(&self, rule: &str, severity: &str, count: usize) {
        self.firing
            .with_label_values(&[self.stream.as_str(), rule, severity])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Counts committed transitions.
    pub fn transition(&self, rule: &str, severity: &str, state: &str, n: u64) {
        self.transitions
            .with_label_values(&[self.stream.as_str(), rule, severity, state])
            .inc_by(n);
    }

    /// Counts skipped records.
    pub fn skipped(&self, reason: &str, n: u64) {
        self.skipped
            .with_label_values(&[self.stream.as_str(), reason])
            .inc_by(n);
    }
}
