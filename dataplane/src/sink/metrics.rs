//! The sink's Prometheus metrics, all named `eventstream_sink_*` and labelled with `stream`.
//!
//! Label sets are bounded: `partition` by the topic's partition count, `reason` by
//! [`PoisonReason`](super::record::PoisonReason), `kind` by [`SinkError::kind`](super::SinkError::kind).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Handles on every sink metric, already bound to this process's `stream` label.
#[derive(Clone)]
pub struct SinkMetrics {
    stream: String,
    /// Rows committed to the events table.
    pub rows_written: IntCounter,
    /// Transactions committed.
    pub batches: IntCounter,
    /// Rows per committed transaction.
    pub batch_rows: Histogram,
    /// Time from `BEGIN` to the end of `COMMIT` of one batch.
    pub commit_seconds: Histogram,
    lag: IntGaugeVec,
    dead_letters: IntCounterVec,
    database_errors: IntCounterVec,
    skipped: IntCounterVec,
    offset_resets: IntCounterVec,
    /// 1 while the assigned partitions are paused because the database is unavailable.
    pub paused: IntGauge,
}

fn bound_counter(
    registry: &Registry,
    name: &str,
    help: &str,
    stream: &str,
) -> prometheus::Result<IntCounter> {
    let vec = IntCounterVec::new(Opts::new(name, help), &["stream"])?;
    registry.register(Box::new(vec.clone()))?;
    Ok(vec.with_label_values(&[stream]))
}

fn bound_histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
    stream: &str,
) -> prometheus::Result<Histogram> {
    let vec = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &["stream"])?;
    registry.register(Box::new(vec.clone()))?;
    Ok(vec.with_label_values(&[stream]))
}

impl SinkMetrics {
    /// Registers the sink metrics for `stream` (`namespace/name`) in `registry`.
    pub fn register(registry: &Registry, stream: &str) -> prometheus::Result<Self> {
        let lag = IntGaugeVec::new(
            Opts::new(
                "eventstream_sink_consumer_lag",
                "Records in the partition not yet committed to PostgreSQL (high watermark minus stored next offset)",
            ),
            &["stream", "partition"],
        )?;
        registry.register(Box::new(lag.clone()))?;
        let dead_letters = IntCounterVec::new(
            Opts::new(
                "eventstream_sink_dead_letters_total",
                "Records sent to the dead-letter topic instead of the table, by reason",
            ),
            &["stream", "reason"],
        )?;
        registry.register(Box::new(dead_letters.clone()))?;
        let database_errors = IntCounterVec::new(
            Opts::new(
                "eventstream_sink_database_errors_total",
                "Failed database operations (connect, write, position lookup), by kind",
            ),
            &["stream", "kind"],
        )?;
        registry.register(Box::new(database_errors.clone()))?;
        let skipped = IntCounterVec::new(
            Opts::new(
                "eventstream_sink_rows_skipped_total",
                "Records not written because PostgreSQL already holds them (offset fence or primary key)",
            ),
            &["stream", "reason"],
        )?;
        registry.register(Box::new(skipped.clone()))?;
        let offset_resets = IntCounterVec::new(
            Opts::new(
                "eventstream_sink_offset_resets_total",
                "Partitions the sink restarted from their low watermark, by reason (topic_recreated: the stored position was past the end of the topic)",
            ),
            &["stream", "reason"],
        )?;
        registry.register(Box::new(offset_resets.clone()))?;
        let paused_vec = IntGaugeVec::new(
            Opts::new(
                "eventstream_sink_paused",
                "1 while consumption is paused because PostgreSQL is unavailable",
            ),
            &["stream"],
        )?;
        registry.register(Box::new(paused_vec.clone()))?;
        Ok(Self {
            stream: stream.to_string(),
            rows_written: bound_counter(
                registry,
                "eventstream_sink_rows_written_total",
                "Rows committed to the events table",
                stream,
            )?,
            batches: bound_counter(
                registry,
                "eventstream_sink_batches_total",
                "Batches committed (one PostgreSQL transaction each)",
                stream,
            )?,
            batch_rows: bound_histogram(
                registry,
                "eventstream_sink_batch_rows",
                "Records per committed batch",
                prometheus::exponential_buckets(1.0, 4.0, 10)?,
                stream,
            )?,
            commit_seconds: bound_histogram(
                registry,
                "eventstream_sink_commit_seconds",
                "Duration of one batch transaction, BEGIN to COMMIT",
                prometheus::exponential_buckets(0.0005, 2.0, 16)?,
                stream,
            )?,
            lag,
            dead_letters,
            database_errors,
            skipped,
            offset_resets,
            paused: paused_vec.with_label_values(&[stream]),
        })
    }

    /// Sets the lag gauge of `partition`.
    pub fn set_lag(&self, partition: i32, lag: i64) {
        self.lag
            .with_label_values(&[self.stream.as_str(), &partition.to_string()])
            .set(lag);
    }

    /// Drops the lag gauge of a partition this process no longer owns.
    pub fn forget_partition(&self, partition: i32) {
        let _ = self
            .lag
            .remove_label_values(&[self.stream.as_str(), &partition.to_string()]);
    }

    /// Counts `n` dead-lettered records for `reason`.
    pub fn dead_lettered(&self, reason: &str, n: u64) {
        self.dead_letters
            .with_label_values(&[self.stream.as_str(), reason])
            .inc_by(n);
    }

    /// Counts one database error of `kind`.
    pub fn database_error(&self, kind: &str) {
        self.database_errors
            .with_label_values(&[self.stream.as_str(), kind])
            .inc();
    }

    /// Counts `n` records skipped for `reason` (`fence` or `primary_key`).
    pub fn skipped(&self, reason: &str, n: u64) {
        if n > 0 {
            self.skipped
                .with_label_values(&[self.stream.as_str(), reason])
                .inc_by(n);
        }
    }

    /// Counts one position reset the sink made for `reason`.
    pub fn offset_reset(&self, reason: &str) {
        self.offset_resets
            .with_label_values(&[self.stream.as_str(), reason])
            .inc();
    }
}
