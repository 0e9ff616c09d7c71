//! Metrics of the fan-out (all `eventstream_*`, label `stream`); documented in `docs/metrics.md`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Where live deliveries spend their time, process-wide, for benchmarks: off (one relaxed load
/// per write) until [`Stages::enable`]. Not exported to Prometheus.
pub static STAGES: Stages = Stages {
    enabled: AtomicBool::new(false),
    kafka: StageHistogram::new(),
    fanout: StageHistogram::new(),
    queue: StageHistogram::new(),
    write: StageHistogram::new(),
};

/// Latency stages of live deliveries.
pub struct Stages {
    enabled: AtomicBool,
    /// Kafka record timestamp → consumed by the bridge (per record; millisecond clock).
    pub kafka: StageHistogram,
    /// Consumed → offered to every subscriber of the batch (per published batch).
    pub fanout: StageHistogram,
    /// Consumed → taken from the client's queue by its writer (per event; includes the fan-out
    /// and the writer task's wake-up).
    pub queue: StageHistogram,
    /// Taken from the queue → flushed to the socket (per write).
    pub write: StageHistogram,
}

impl Stages {
    /// Starts recording.
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    /// Whether recording is on.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }
}

const SUB_BUCKETS: u32 = 32;
const STAGE_BUCKETS: usize = 64 + 26 * SUB_BUCKETS as usize;

/// A lock-free histogram of durations in µs: exact below 64 µs, then 32 buckets per power of two
/// (≤ 3 % error) up to ~70 minutes; longer ones count in the last bucket.
pub struct StageHistogram {
    buckets: [AtomicU64; STAGE_BUCKETS],
}

impl StageHistogram {
    const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; STAGE_BUCKETS],
        }
    }

    fn index(micros: u64) -> usize {
        if micros < 64 {
            return micros as usize;
        }
        let exp = 63 - micros.leading_zeros();
        let mantissa = (micros >> (exp - 5)) & u64::from(SUB_BUCKETS - 1);
        (64 + (exp as usize - 6) * SUB_BUCKETS as usize + mantissa as usize).min(STAGE_BUCKETS - 1)
    }

    fn upper_micros(index: usize) -> u64 {
        if index < 64 {
            return index as u64 + 1;
        }
        let exp = (index - 64) as u32 / SUB_BUCKETS + 6;
        let mantissa = (index - 64) as u64 % u64::from(SUB_BUCKETS);
        ((u64::from(SUB_BUCKETS) + mantissa + 1) << (exp - 5)) - 1
    }

    /// Records one duration.
    pub fn record(&self, d: std::time::Duration) {
        self.record_micros(d.as_micros() as u64);
    }

    /// Records one duration in µs.
    pub fn record_micros(&self, micros: u64) {
        self.buckets[Self::index(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts per bucket (to subtract an earlier snapshot).
    pub fn snapshot(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    /// Quantile `q` (upper bucket bound, µs) and count of `after − before` snapshots.
    pub fn quantile(before: &[u64], after: &[u64], q: f64) -> (u64, u64) {
        let diff: Vec<u64> = after
            .iter()
            .zip(before.iter().chain(std::iter::repeat(&0)))
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        let total: u64 = diff.iter().sum();
        if total == 0 {
            return (0, 0);
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in diff.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return (Self::upper_micros(i), total);
            }
        }
        (Self::upper_micros(STAGE_BUCKETS - 1), total)
    }
}

/// The relay's metric handles, already bound to the stream label where possible.
#[derive(Clone)]
pub struct RelayMetrics {
    /// Open connections by transport.
    pub connections_ws: IntGauge,
    /// Open SSE connections.
    pub connections_sse: IntGauge,
    /// Open Socket.IO connections (sockets on the default namespace).
    pub connections_socketio: IntGauge,
    /// Connections refused before upgrade, by reason.
    pub rejected: IntCounterVec,
    /// Current subscriptions.
    pub subscriptions: IntGauge,
    /// Records consumed from Kafka.
    pub consumed: IntCounter,
    /// Events written to clients.
    pub deliveries: IntCounter,
    /// Bytes written to clients (frame payloads).
    pub bytes_out: IntCounter,
    /// Events not delivered, by reason.
    pub dropped: IntCounterVec,
    /// Clients closed by the server, by reason.
    pub closed: IntCounterVec,
    /// Resumes by result.
    pub replays: IntCounterVec,
    /// Records replayed from Kafka.
    pub replayed: IntCounter,
    /// Protocol errors answered, by code.
    pub protocol_errors: IntCounterVec,
    /// Kafka timestamp → socket write.
    pub latency: Histogram,
    /// Per-partition lag of the bridge consumer (high watermark − position).
    pub lag: IntGaugeVec,
    /// Times Kafka reported the live consumer's position out of range.
    pub out_of_range: IntCounter,
    /// Times the live consumer found records deleted by retention before it read them.
    pub retention_gaps: IntCounter,
    /// Offsets in those retention gaps.
    pub retention_gap_offsets: IntCounter,
    /// Channels whose snapshot record left the full snapshot cache (least recently used).
    pub snapshot_evictions: IntCounter,
    /// Channels in the snapshot cache.
    pub snapshot_channels: IntGauge,
    /// Subscription filter evaluations by result.
    pub filter: FilterCounters,
    /// Broadcast frames queued to clients.
    pub broadcasts: IntCounter,
    stream: String,
}

impl RelayMetrics {
    /// Registers the relay's metrics for `stream`.
    pub fn new(registry: &Registry, stream: &str) -> prometheus::Result<Self> {
        let labels = &["stream"];
        let connections = IntGaugeVec::new(
            Opts::new(
                "eventstream_ws_connections",
                "Open WebSocket, SSE and Socket.IO connections",
            ),
            &["stream", "transport"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "eventstream_ws_connections_rejected_total",
                "Connections refused before upgrade (reason: limit, unauthorized, shutting_down)",
            ),
            &["stream", "reason"],
        )?;
        let subscriptions = IntGaugeVec::new(
            Opts::new(
                "eventstream_ws_subscriptions",
                "Current channel subscriptions",
            ),
            labels,
        )?;
        let consumed = IntCounterVec::new(
            Opts::new(
                "eventstream_bridge_records_consumed_total",
                "Records the bridge consumed from Kafka",
            ),
            labels,
        )?;
        let deliveries = IntCounterVec::new(
            Opts::new(
                "eventstream_ws_deliveries_total",
                "Events written to WebSocket and SSE clients",
            ),
            labels,
        )?;
        let bytes_out = IntCounterVec::new(
            Opts::new(
                "eventstream_ws_bytes_out_total",
                "Bytes of frames written to clients",
            ),
            labels,
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "eventstream_ws_dropped_total",
                "Events not delivered to a client (reason: slow_client)",
            ),
            &["stream", "reason"],
        )?;
        let closed = IntCounterVec::new(
            Opts::new(
                "eventstream_ws_closed_total",
                "Connections closed by the server (reason: slow_client, not_reading, idle, protocol, too_big, shutdown)",
            ),
            &["stream", "reason"],
        )?;
        let replays = IntCounterVec::new(
            Opts::new(
                "eventstream_ws_replays_total",
                "Resumes with since (result: complete, limited, failed)",
            ),
            &["stream", "result"],
        )?;
        let replayed = IntCounterVec::new(
            Opts::new(
                "eventstream_ws_replayed_records_total",
                "Records delivered from Kafka history on resume",
            ),
            labels,
        )?;
        let protocol_errors = IntCounterVec::new(
            Opts::new(
                "eventstream_ws_protocol_errors_total",
                "error frames sent, by code",
            ),
            &["stream", "code"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "eventstream_delivery_latency_seconds",
                "End-to-end latency from the Kafka record timestamp to the socket write",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            labels,
        )?;
        let lag = IntGaugeVec::new(
            Opts::new(
                "eventstream_bridge_consumer_lag",
                "Records between the bridge's position and the partition's high watermark",
            ),
            &["stream", "partition"],
        )?;
        let out_of_range = IntCounterVec::new(
            Opts::new(
                "eventstream_bridge_out_of_range_total",
                "Times Kafka reported a position of the bridge consumer out of range (each is followed by a re-alignment)",
            ),
            labels,
        )?;
        let retention_gaps = IntCounterVec::new(
            Opts::new(
                "eventstream_bridge_retention_gaps_total",
                "Times the bridge consumer found records deleted by retention before it read them (a retention gap to every subscription)",
            ),
            labels,
        )?;
        let retention_gap_offsets = IntCounterVec::new(
            Opts::new(
                "eventstream_bridge_retention_gap_offsets_total",
                "Offsets the bridge consumer skipped because retention deleted them before it read them",
            ),
            labels,
        )?;
        let snapshot_evictions = IntCounterVec::new(
            Opts::new(
                "eventstream_ws_snapshot_evictions_total",
                "Channels whose last record left the snapshot cache because it held websocket.snapshotMaxChannels (least recently used first); a new subscriber of such a channel gets no snapshot",
            ),
            labels,
        )?;
        let snapshot_channels = IntGaugeVec::new(
            Opts::new(
                "eventstream_ws_snapshot_channels",
                "Channels whose last record the snapshot cache holds",
            ),
            labels,
        )?;
        let broadcasts = IntCounterVec::new(
            Opts::new(
                "eventstream_ws_broadcasts_total",
                "Broadcast records delivered, counted once per client they were queued to",
            ),
            labels,
        )?;
        registry.register(Box::new(broadcasts.clone()))?;
        registry.register(Box::new(snapshot_evictions.clone()))?;
        registry.register(Box::new(snapshot_channels.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(subscriptions.clone()))?;
        registry.register(Box::new(consumed.clone()))?;
        registry.register(Box::new(deliveries.clone()))?;
        registry.register(Box::new(bytes_out.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(closed.clone()))?;
        registry.register(Box::new(replays.clone()))?;
        registry.register(Box::new(replayed.clone()))?;
        registry.register(Box::new(protocol_errors.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(lag.clone()))?;
        registry.register(Box::new(out_of_range.clone()))?;
        registry.register(Box::new(retention_gaps.clone()))?;
        registry.register(Box::new(retention_gap_offsets.clone()))?;
        Ok(Self {
            connections_ws: connections.with_label_values(&[stream, "websocket"]),
            connections_sse: connections.with_label_values(&[stream, "sse"]),
            connections_socketio: connections.with_label_values(&[stream, "socketio"]),
            rejected,
            subscriptions: subscriptions.with_label_values(&[stream]),
            consumed: consumed.with_label_values(&[stream]),
            deliveries: deliveries.with_label_values(&[stream]),
            bytes_out: bytes_out.with_label_values(&[stream]),
            dropped,
            closed,
            replays,
            replayed: replayed.with_label_values(&[stream]),
            protocol_errors,
            latency: latency.with_label_values(&[stream]),
            lag,
            out_of_range: out_of_range.with_label_values(&[stream]),
            retention_gaps: retention_gaps.with_label_values(&[stream]),
            retention_gap_offsets: retention_gap_offsets.with_label_values(&[stream]),
            snapshot_evictions: snapshot_evictions.with_label_values(&[stream]),
            snapshot_channels: snapshot_channels.with_label_values(&[stream]),
            filter: FilterCounters::new(registry, stream)?,
            broadcasts: broadcasts.with_label_values(&[stream]),
            stream: stream.to_string(),
        })
    }

    /// Counts a refused connection.
    pub fn reject(&self, reason: &str) {
        self.rejected
            .with_label_values(&[&self.stream, reason])
            .inc();
    }

    /// Counts a server-side close.
    pub fn close(&self, reason: &str) {
        self.closed.with_label_values(&[&self.stream, reason]).inc();
    }

    /// The counter of events dropped for slow clients.
    pub fn slow_client_drops(&self) -> prometheus::IntCounter {
        self.dropped
            .with_label_values(&[&self.stream, "slow_client"])
    }

    /// Counts a resume outcome.
    pub fn replay(&self, result: &str) {
        self.replays
            .with_label_values(&[&self.stream, result])
            .inc();
    }

    /// Counts an error frame.
    pub fn protocol_error(&self, code: &str) {
        self.protocol_errors
            .with_label_values(&[&self.stream, code])
            .inc();
    }

    /// Counts a retention gap of `offsets` offsets found by the live consumer.
    pub fn retention_gap(&self, offsets: i64) {
        self.retention_gaps.inc();
        self.retention_gap_offsets
            .inc_by(u64::try_from(offsets).unwrap_or(0));
    }

    /// Sets the lag of a partition.
    pub fn set_lag(&self, partition: i32, lag: i64) {
        self.lag
            .with_label_values(&[&self.stream, &partition.to_string()])
            .set(lag);
    }
}

/// `eventstream_ws_filter_evaluations_total{stream, result}`: one per record and distinct
/// filter, by [`Outcome`](super::filter::Outcome) (`match`, `drop`, `error`).
#[derive(Clone)]
pub struct FilterCounters {
    /// The filter held.
    pub matched: IntCounter,
    /// The filter was false.
    pub dropped: IntCounter,
    /// Evaluation failed (the record is not delivered).
    pub failed: IntCounter,
}

impl FilterCounters {
    /// Counters registered in `registry` for `stream`.
    pub fn new(registry: &Registry, stream: &str) -> Result<Self, prometheus::Error> {
        let vec = IntCounterVec::new(
            Opts::new(
                "eventstream_ws_filter_evaluations_total",
                "Subscription filter evaluations (one per record and distinct filter), by result",
            ),
            &["stream", "result"],
        )?;
        registry.register(Box::new(vec.clone()))?;
        Ok(Self::of(&vec, stream))
    }

    /// Counters in no registry (benchmarks, unit tests).
    pub fn detached() -> Self {
        let vec = IntCounterVec::new(
            Opts::new("eventstream_ws_filter_evaluations_total", "detached"),
            &["stream", "result"],
        )
        .expect("static metric definition is valid");
        Self::of(&vec, "")
    }

    fn of(vec: &IntCounterVec, stream: &str) -> Self {
        Self {
            matched: vec.with_label_values(&[stream, "match"]),
            dropped: vec.with_label_values(&[stream, "drop"]),
            failed: vec.with_label_values(&[stream, "error"]),
        }
    }

    /// Counts one evaluation.
    pub fn count(&self, outcome: super::filter::Outcome) {
        match outcome {
            super::filter::Outcome::Match => self.matched.inc(),
            super::filter::Outcome::Drop => self.dropped.inc(),
            super::filter::Outcome::Failed => self.failed.inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::StageHistogram;

    #[test]
    fn stage_buckets_bound_their_values_within_a_few_percent() {
        for micros in [0, 1, 63, 64, 65, 100, 1_000, 12_345, 999_999, 4_000_000_000] {
            let i = StageHistogram::index(micros);
            let upper = StageHistogram::upper_micros(i);
            assert!(upper >= micros, "{micros} → bucket {i} ≤ {upper}");
            assert!(
                upper as f64 <= micros as f64 * 1.04 + 1.0,
                "{micros} → bucket {i} ≤ {upper}"
            );
        }
        assert_eq!(StageHistogram::index(u64::MAX), super::STAGE_BUCKETS - 1);
        let h = StageHistogram::new();
        let before = h.snapshot();
        for micros in 1..=100 {
            h.record_micros(micros * 100);
        }
        let (p50, count) = StageHistogram::quantile(&before, &h.snapshot(), 0.5);
        assert_eq!(count, 100);
        assert!((5_000..=5_200).contains(&p50), "{p50}");
    }
}
