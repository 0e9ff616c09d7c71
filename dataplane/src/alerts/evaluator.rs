//! The Kafka shell of the evaluator: consume, transform, produce, in Kafka transactions.
//!
//! One plain thread owns a transactional `BaseProducer` and a `BaseConsumer` (`read_committed`)
//! assigned every partition of the stream. A transaction opens with the first record after the
//! last commit; each record's transitions are produced into it as the record is evaluated; after
//! `maxBatch` records or `commitInterval` the alerts that changed, a checkpoint with the next
//! offset of every partition and the consumer offsets (`send_offsets_to_transaction`) join it and
//! it commits. An abortable error aborts it, undoes the batch in the engine and seeks back; a
//! fatal one (fenced by a newer evaluator) ends the process.
//!
//! On start, `init_transactions` fences any earlier evaluator of the stream (same
//! `transactional.id`) and aborts its open transaction; then the state topic is read to its end
//! with `read_committed`, which gives the state and the positions of the last committed
//! transaction, and the stream is read from those positions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use eventstream_crds::config::AlertsConfig;
use eventstream_crds::v1alpha1::StartFrom;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::engine::{AlertId, Engine, Input};
use super::event::{self, AlertEvent, CHECKPOINT_KEY, Checkpoint, Source, StateRecord};
use super::metrics::AlertMetrics;

/// Longest single poll, so that shutdown and the commit interval are noticed promptly.
const POLL_SLICE: Duration = Duration::from_millis(50);
/// Timeout of transaction calls (init, send offsets, commit, abort).
const TXN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the start waits for the topics to appear and for the state topic's end.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Retries of a retriable commit error before the evaluator gives up (about 5 s in all).
const COMMIT_RETRIES: u32 = 9;
/// How often the stream's partition count is read again (partitions can be added).
const PARTITION_REFRESH: Duration = Duration::from_secs(30);

/// Why the evaluator stopped.
#[derive(Debug, thiserror::Error)]
pub enum EvaluatorError {
    /// A Kafka call failed in a way the evaluator cannot recover from.
    #[error("{what}: {source}")]
    Kafka {
        /// What was being done.
        what: String,
        /// The Kafka error.
        source: KafkaError,
    },
    /// The state topic holds a record the evaluator cannot read.
    #[error("reading the state topic: {0}")]
    State(#[from] event::StateRecordError),
    /// A topic is missing or the state topic's end was not reached in time.
    #[error("{0}")]
    Start(String),
}

fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> EvaluatorError {
    let what = what.into();
    move |source| EvaluatorError::Kafka { what, source }
}

/// What the evaluator thread needs.
pub struct Parts {
    /// `namespace/name`.
    pub stream: String,
    /// The stream's topic.
    pub topic: String,
    /// The `alerts` section.
    pub alerts: AlertsConfig,
    /// Settings shared by every Kafka client (bootstrap, security).
    pub kafka: ClientConfig,
    /// The rules and (empty) state.
    pub engine: Engine,
    /// Metrics.
    pub metrics: AlertMetrics,
    /// Set once the state is rebuilt and the stream assigned.
    pub ready: Arc<AtomicBool>,
    /// Cancelled on shutdown: the open transaction is committed, then the thread ends.
    pub shutdown: CancellationToken,
}

/// Runs the evaluator until shutdown or a fatal error.
pub fn run(parts: Parts) -> Result<(), EvaluatorError> {
    let Parts {
        stream,
        topic,
        alerts,
        kafka: base,
        mut engine,
        metrics,
        ready,
        shutdown,
    } = parts;

    let mut producer_config = base.clone();
    producer_config
        .set("transactional.id", &alerts.transactional_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set(
            "transaction.timeout.ms",
            (TXN_TIMEOUT.as_millis() as u64 + alerts.commit_interval.as_millis() as u64)
                .to_string(),
        );
    let producer: BaseProducer = producer_config
        .create()
        .map_err(kafka("creating the transactional producer"))?;
    // Fences an earlier evaluator of this stream and aborts its open transaction, so that the
    // state topic's committed end is final before it is read.
    producer
        .init_transactions(TXN_TIMEOUT)
        .map_err(kafka("initialising transactions (init_transactions)"))?;

    let checkpoint = rebuild(&base, &alerts, &mut engine)?;
    publish_firing(&engine, &metrics);
    tracing::info!(
        stream = %stream,
        positions = ?checkpoint.positions,
        firing = engine.firing_counts().iter().sum::<usize>(),
        "alert state rebuilt from the state topic"
    );

    let mut consumer_config = base.clone();
    consumer_config
        .set("group.id", &alerts.consumer_group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer = consumer_config
        .create()
        .map_err(kafka("creating the stream consumer"))?;
    let mut loop_state = Loop {
        stream,
        topic,
        alerts,
        producer,
        consumer,
        engine,
        metrics,
        positions: checkpoint.positions,
        assigned: Vec::new(),
        batch: Batch::default(),
    };
    loop_state.assign()?;
    ready.store(true, Ordering::Release);
    let mut refreshed = Instant::now();

    loop {
        let stopping = shutdown.is_cancelled();
        if !stopping && let Some(message) = loop_state.consumer.poll(POLL_SLICE) {
            match message.map(|m| m.detach()) {
                Ok(m) => loop_state.process(&m)?,
                Err(e) => tracing::warn!(error = %e, "Kafka consumer error (retried)"),
            }
        }
        if let Some(opened) = loop_state.batch.opened
            && (stopping
                || loop_state.batch.records >= loop_state.alerts.max_batch as usize
                || opened.elapsed() >= loop_state.alerts.commit_interval)
        {
            loop_state.finish()?;
        }
        if stopping {
            return Ok(());
        }
        if loop_state.batch.opened.is_none() && refreshed.elapsed() >= PARTITION_REFRESH {
            refreshed = Instant::now();
            if let Err(e) = loop_state.assign() {
                tracing::warn!(error = %e, "could not refresh the stream's partitions");
            }
        }
    }
}

/// Reads the state topic to its committed end: the alerts' phases and the input positions.
fn rebuild(
    base: &ClientConfig,
    alerts: &AlertsConfig,
    engine: &mut Engine,
) -> Result<Checkpoint, EvaluatorError> {
    let mut config = base.clone();
    config
        .set("group.id", format!("{}.state", alerts.consumer_group))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true");
    let reader: BaseConsumer = config
        .create()
        .map_err(kafka("creating the state topic reader"))?;
    let deadline = Instant::now() + START_TIMEOUT;
    let partitions = partitions_of(&reader, &alerts.state_topic, deadline)?;
    let mut assignment = TopicPartitionList::new();
    for p in &partitions {
        assignment
            .add_partition_offset(&alerts.state_topic, *p, Offset::Beginning)
            .map_err(kafka("building the state topic assignment"))?;
    }
    reader
        .assign(&assignment)
        .map_err(kafka("assigning the state topic"))?;

    let mut open: std::collections::BTreeSet<i32> = partitions.into_iter().collect();
    let mut checkpoint = Checkpoint::default();
    while !open.is_empty() {
        if Instant::now() >= deadline {
            return Err(EvaluatorError::Start(format!(
                "the state topic {} was not read to its end within {START_TIMEOUT:?}",
                alerts.state_topic
            )));
        }
        match reader.poll(POLL_SLICE) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => tracing::warn!(error = %e, "state topic read error (retried)"),
            Some(Ok(m)) => match event::read_state(m.key(), m.payload())? {
                StateRecord::Checkpoint(c) => checkpoint = c,
                StateRecord::Alert { rule, key, phase } => {
                    // A rule removed from the spec: its alerts are gone with it.
                    if let Some(rule) = engine.rule_index(&rule) {
                        engine.restore(AlertId { rule, key }, phase);
                    }
                }
            },
        }
    }
    Ok(checkpoint)
}

fn partitions_of(
    consumer: &BaseConsumer,
    topic: &str,
    deadline: Instant,
) -> Result<Vec<i32>, EvaluatorError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let found = consumer
            .fetch_metadata(Some(topic), left.min(Duration::from_secs(5)))
            .ok()
            .and_then(|m| {
                m.topics()
                    .iter()
                    .find(|t| t.name() == topic && t.error().is_none())
                    .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
            })
            .filter(|p| !p.is_empty());
        if let Some(mut partitions) = found {
            partitions.sort_unstable();
            return Ok(partitions);
        }
        if Instant::now() >= deadline {
            return Err(EvaluatorError::Start(format!(
                "topic {topic} does not exist (the operator creates it with the EventStream's spec.alerts)"
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn publish_firing(engine: &Engine, metrics: &AlertMetrics) {
    for (rule, count) in engine.rules().iter().zip(engine.firing_counts()) {
        metrics.set_firing(&rule.name, rule.severity.as_str(), count);
    }
}

/// Work in the open transaction, applied to metrics only once it commits.
#[derive(Default)]
struct Batch {
    opened: Option<Instant>,
    records: usize,
    /// Partition → next offset after this batch's records.
    positions: BTreeMap<i32, i64>,
    /// Partition → offset of this batch's first record (where an abort seeks back to).
    starts: BTreeMap<i32, i64>,
    /// (rule index, state) → transitions.
    transitions: BTreeMap<(usize, &'static str), u64>,
    skipped: BTreeMap<&'static str, u64>,
    eval_errors: u64,
}

struct Loop {
    stream: String,
    topic: String,
    alerts: AlertsConfig,
    producer: BaseProducer,
    consumer: BaseConsumer,
    engine: Engine,
    metrics: AlertMetrics,
    /// Partition → next offset, as of the last committed transaction.
    positions: BTreeMap<i32, i64>,
    assigned: Vec<i32>,
    batch: Batch,
}

impl Loop {
    /// Assigns every partition of the stream at its committed position; partitions without one
    /// start where `startFrom` says, except partitions added while running, read from the start.
    fn assign(&mut self) -> Result<(), EvaluatorError> {
        let partitions =
            partitions_of(&self.consumer, &self.topic, Instant::now() + START_TIMEOUT)?;
        if partitions == self.assigned {
            return Ok(());
        }
        let first_assignment = self.assigned.is_empty();
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            let offset = match self.positions.get(p) {
                Some(o) => Offset::Offset(*o),
                None if !first_assignment => Offset::Beginning,
                None => match self.alerts.start_from {
                    StartFrom::Earliest => Offset::Beginning,
                    StartFrom::Latest => Offset::End,
                },
            };
            tpl.add_partition_offset(&self.topic, *p, offset)
                .map_err(kafka("building the stream assignment"))?;
        }
        // A re-assignment must not lose the position of partitions read since the last commit:
        // it happens only with no transaction open, when every position is committed.
        self.consumer
            .assign(&tpl)
            .map_err(kafka("assigning the stream's partitions"))?;
        tracing::info!(topic = %self.topic, ?partitions, "evaluating the stream");
        self.assigned = partitions;
        Ok(())
    }

    fn process(&mut self, m: &OwnedMessage) -> Result<(), EvaluatorError> {
        if self.batch.opened.is_none() {
            self.producer
                .begin_transaction()
                .map_err(kafka("beginning a transaction"))?;
            self.batch.opened = Some(Instant::now());
            self.metrics.transaction_open.set(1);
        }
        let headers: BTreeMap<String, String> = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            h.value
                                .map(|v| String::from_utf8_lossy(v).into_owned())
                                .unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let timestamp = m.timestamp().to_millis().unwrap_or(0);
        let input = Input {
            partition: m.partition(),
            offset: m.offset(),
            timestamp,
            key: m.key(),
            headers: &headers,
            payload: m.payload(),
        };
        let outcome = self.engine.process(&input);
        self.batch.records += 1;
        self.batch.starts.entry(m.partition()).or_insert(m.offset());
        self.batch.positions.insert(m.partition(), m.offset() + 1);
        self.batch.eval_errors += u64::from(outcome.eval_errors);
        if let Some(skip) = outcome.skipped {
            *self.batch.skipped.entry(skip.reason()).or_default() += 1;
        }
        self.metrics
            .transaction_records
            .set(i64::try_from(self.batch.records).unwrap_or(i64::MAX));
        let null = serde_json::Value::Null;
        let data = outcome.data.as_ref().unwrap_or(&null);
        for fired in &outcome.transitions {
            let Some(rule) = self.engine.rules().get(fired.id.rule) else {
                continue;
            };
            let body = AlertEvent {
                stream: &self.stream,
                rule: &rule.name,
                key: &fired.id.key,
                severity: rule.severity.as_str(),
                transition: fired.transition,
                source: Source {
                    topic: &self.topic,
                    partition: m.partition(),
                    offset: m.offset(),
                    timestamp,
                },
                data,
            }
            .to_json();
            let key = event::record_key(&rule.name, &fired.id.key);
            *self
                .batch
                .transitions
                .entry((fired.id.rule, fired.transition.state()))
                .or_default() += 1;
            let topic = self.alerts.topic.clone();
            self.send(&topic, &key, Some(&body), Some(timestamp))?;
        }
        Ok(())
    }

    /// Produces into the open transaction, waiting while the producer's queue is full.
    fn send(
        &mut self,
        topic: &str,
        key: &str,
        payload: Option<&[u8]>,
        timestamp: Option<i64>,
    ) -> Result<(), EvaluatorError> {
        loop {
            let mut record = BaseRecord::<str, [u8]>::to(topic).key(key);
            if let Some(p) = payload {
                record = record.payload(p);
            }
            if let Some(ts) = timestamp {
                record = record.timestamp(ts);
            }
            match self.producer.send(record) {
                Ok(()) => {
                    self.producer.poll(Duration::ZERO);
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => {
                    return Err(EvaluatorError::Kafka {
                        what: format!("producing to {topic}"),
                        source: e,
                    });
                }
            }
        }
    }

    /// Adds the state changes, the checkpoint and the offsets to the transaction and commits
    /// it; on an abortable error aborts it and goes back to the last commit.
    fn finish(&mut self) -> Result<(), EvaluatorError> {
        match self.try_commit() {
            Ok(()) => {
                let batch = std::mem::take(&mut self.batch);
                self.engine.commit();
                self.positions.extend(batch.positions);
                self.metrics.transactions.inc();
                self.metrics.records.inc_by(batch.records as u64);
                self.metrics.eval_errors.inc_by(batch.eval_errors);
                for (reason, n) in batch.skipped {
                    self.metrics.skipped(reason, n);
                }
                for ((rule, state), n) in batch.transitions {
                    if let Some(r) = self.engine.rules().get(rule) {
                        self.metrics
                            .transition(&r.name, r.severity.as_str(), state, n);
                    }
                }
                publish_firing(&self.engine, &self.metrics);
            }
            Err(e) if requires_abort(&e) => {
                tracing::warn!(error = %e, "aborting the transaction; its records are processed again");
                self.producer
                    .abort_transaction(TXN_TIMEOUT)
                    .map_err(kafka("aborting a transaction"))?;
                let batch = std::mem::take(&mut self.batch);
                self.engine.rollback();
                self.metrics.aborts.inc();
                for (p, start) in batch.starts {
                    let back = self.positions.get(&p).copied().unwrap_or(start);
                    self.consumer
                        .seek(
                            &self.topic,
                            p,
                            Offset::Offset(back),
                            Duration::from_secs(10),
                        )
                        .map_err(kafka(format!("seeking partition {p} back after an abort")))?;
                }
            }
            Err(e) => return Err(e),
        }
        self.metrics.transaction_open.set(0);
        self.metrics.transaction_records.set(0);
        Ok(())
    }

    fn try_commit(&mut self) -> Result<(), EvaluatorError> {
        let state_topic = self.alerts.state_topic.clone();
        for (id, phase) in self.engine.changes() {
            let Some(rule) = self.engine.rules().get(id.rule) else {
                continue;
            };
            let key = event::record_key(&rule.name, &id.key);
            let value = event::state_value(phase);
            self.send(&state_topic, &key, value.as_deref(), None)?;
        }
        let mut positions = self.positions.clone();
        positions.extend(self.batch.positions.iter().map(|(p, o)| (*p, *o)));
        let checkpoint = Checkpoint {
            positions: positions.clone(),
        }
        .to_json();
        self.send(&state_topic, CHECKPOINT_KEY, Some(&checkpoint), None)?;

        let mut offsets = TopicPartitionList::new();
        for (p, o) in &positions {
            offsets
                .add_partition_offset(&self.topic, *p, Offset::Offset(*o))
                .map_err(kafka("building the offsets of the transaction"))?;
        }
        let group = self
            .consumer
            .group_metadata()
            .ok_or_else(|| EvaluatorError::Start("the consumer lost its group metadata".into()))?;
        self.producer
            .send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT)
            .map_err(kafka("adding the consumer offsets to the transaction"))?;
        let mut attempt = 0u32;
        loop {
            match self.producer.commit_transaction(TXN_TIMEOUT) {
                Ok(()) => return Ok(()),
                // Bounded: a broker that cannot end transactions at all (tansu 0.6 answers that
                // EndTxn is unsupported, as retriable) must end the process with its error, not
                // spin.
                Err(KafkaError::Transaction(e)) if e.is_retriable() && attempt < COMMIT_RETRIES => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "committing the transaction again");
                    std::thread::sleep(Duration::from_millis(100) * attempt);
                }
                Err(e) => {
                    return Err(EvaluatorError::Kafka {
                        what: "committing a transaction".into(),
                        source: e,
                    });
                }
            }
        }
    }
}

/// Whether an error leaves the transaction abortable (as opposed to fatal: fenced, or the
/// producer unusable).
fn requires_abort(e: &EvaluatorError) -> bool {
    match e {
        EvaluatorError::Kafka {
            source: KafkaError::Transaction(t),
            ..
        } => t.txn_requires_abort(),
        // A produce error inside a transaction (a timeout, a broker error) leaves it abortable.
        EvaluatorError::Kafka {
            source: KafkaError::MessageProduction(_),
            ..
        } => true,
        _ => false,
    }
}
