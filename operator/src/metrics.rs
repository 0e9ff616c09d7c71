//! The operator's Prometheus metrics. Labels are bounded: `result`, error `category`,
//! `condition`/`status`; never an object name (1 000 streams must not mean 1 000 series).

use std::collections::HashMap;
use std::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use parking_lot::Mutex;
use prometheus::{
    CounterVec, Gauge, GaugeVec, Histogram, HistogramOpts, Opts, Registry, exponential_buckets,
};

/// Every metric the operator exports.
pub struct Metrics {
    /// `eventstream_operator_reconciliations_total{result}`: `ok`, `waiting` (needs the user),
    /// `retry` (transient failure, backing off) or `error` (the reconcile itself failed).
    pub reconciliations: CounterVec,
    /// `eventstream_operator_reconcile_errors_total{category}`.
    pub reconcile_errors: CounterVec,
    /// `eventstream_operator_reconcile_duration_seconds`.
    pub duration: Histogram,
    /// `eventstream_operator_streams{condition,status}`: managed streams by condition.
    pub streams: GaugeVec,
    /// `eventstream_operator_kafka_admin_errors_total{category}`.
    pub kafka_admin_errors: CounterVec,
    /// `eventstream_operator_leader`: 1 on the replica holding the Lease.
    pub leader: Gauge,
    conditions: Mutex<HashMap<String, Vec<(String, String)>>>,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            reconciliations: CounterVec::new(
                Opts::new(
                    "eventstream_operator_reconciliations_total",
                    "Reconciliations of EventStreams by result",
                ),
                &["result"],
            )?,
            reconcile_errors: CounterVec::new(
                Opts::new(
                    "eventstream_operator_reconcile_errors_total",
                    "Failed reconcile steps by error category",
                ),
                &["category"],
            )?,
            duration: Histogram::with_opts(
                HistogramOpts::new(
                    "eventstream_operator_reconcile_duration_seconds",
                    "Duration of one reconciliation, including API and Kafka round trips",
                )
                .buckets(exponential_buckets(0.001, 2.0, 15)?),
            )?,
            streams: GaugeVec::new(
                Opts::new(
                    "eventstream_operator_streams",
                    "Managed EventStreams by condition type and status",
                ),
                &["condition", "status"],
            )?,
            kafka_admin_errors: CounterVec::new(
                Opts::new(
                    "eventstream_operator_kafka_admin_errors_total",
                    "Failed Kafka admin requests by category (unreachable, refused, config)",
                ),
                &["category"],
            )?,
            leader: Gauge::new(
                "eventstream_operator_leader",
                "1 when this replica holds the leader Lease",
            )?,
            conditions: Mutex::new(HashMap::new()),
        };
        registry.register(Box::new(m.reconciliations.clone()))?;
        registry.register(Box::new(m.reconcile_errors.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.streams.clone()))?;
        registry.register(Box::new(m.kafka_admin_errors.clone()))?;
        registry.register(Box::new(m.leader.clone()))?;
        Ok(m)
    }

    /// Starts a timer observed into the duration histogram when dropped.
    pub fn timer(&self) -> ReconcileTimer<'_> {
        ReconcileTimer {
            metrics: self,
            start: Instant::now(),
        }
    }

    /// Records the conditions of one stream (`namespace/name`) and refreshes the gauge.
    pub fn set_conditions(&self, stream: &str, conditions: &[Condition]) {
        let mut map = self.conditions.lock();
        map.insert(
            stream.to_string(),
            conditions
                .iter()
                .map(|c| (c.type_.clone(), c.status.clone()))
                .collect(),
        );
        self.refresh(&map);
    }

    /// Forgets a deleted stream.
    pub fn forget(&self, stream: &str) {
        let mut map = self.conditions.lock();
        map.remove(stream);
        self.refresh(&map);
    }

    fn refresh(&self, map: &HashMap<String, Vec<(String, String)>>) {
        let mut counts: HashMap<(&str, &str), f64> = HashMap::new();
        for conds in map.values() {
            for (t, s) in conds {
                *counts.entry((t.as_str(), s.as_str())).or_default() += 1.0;
            }
        }
        self.streams.reset();
        for ((t, s), n) in counts {
            self.streams.with_label_values(&[t, s]).set(n);
        }
    }
}

/// See [`Metrics::timer`].
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn cond(t: &str, s: &str) -> Condition {
        Condition {
            type_: t.into(),
            status: s.into(),
            reason: "R".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        }
    }

    #[test]
    fn streams_gauge_counts_by_condition() {
        let m = Metrics::new(&Registry::new()).unwrap();
        m.set_conditions("a/x", &[cond("Ready", "True")]);
        m.set_conditions("a/y", &[cond("Ready", "False")]);
        m.set_conditions("a/z", &[cond("Ready", "True")]);
        assert_eq!(m.streams.with_label_values(&["Ready", "True"]).get(), 2.0);
        m.set_conditions("a/z", &[cond("Ready", "False")]);
        m.forget("a/x");
        assert_eq!(m.streams.with_label_values(&["Ready", "True"]).get(), 0.0);
        assert_eq!(m.streams.with_label_values(&["Ready", "False"]).get(), 2.0);
    }
}
