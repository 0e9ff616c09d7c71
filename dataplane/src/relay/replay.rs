//! Resume: replay a subscription's missed records from Kafka, then hand it over to live
//! delivery. [`plan`] is the pure part (what to read, what to report as a gap); [`Replayer`]
//! reads with a short-lived assign-only consumer from the planned offsets up to the positions
//! the hub gave at registration, filtered by channel.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::{Semaphore, mpsc};

use super::channel::{ALL, ChannelSource};
use super::client::Client;
use super::consumer::{RelayContext, assign_only, is_out_of_range, reassign, to_record};
use super::filter::Filter;
use super::metrics::RelayMetrics;
use super::protocol::{self, ErrorCode, GapKind, Positions, ProtocolError};
use super::record::Record;

/// Longest a replay may take before the rest is reported as a gap.
pub const REPLAY_DEADLINE: Duration = Duration::from_secs(30);
/// Concurrent replays per process (each holds a Kafka consumer).
pub const MAX_CONCURRENT_REPLAYS: usize = 4;

/// What to read for a resume.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Per partition, `[start, end)` offsets to read.
    pub ranges: BTreeMap<i32, (i64, i64)>,
    /// Offsets skipped because of `replay.maxMessages`: `(from, to)` per partition.
    pub limited: Option<(Positions, Positions)>,
    /// Partitions where the client is ahead of this bridge: check they exist in Kafka.
    pub ahead: Positions,
}

/// Plans a resume: `since` is the last offset the client saw per partition, `live` the
/// positions live delivery starts from, `partitions` the partitions of the topic, `max` the
/// per-partition replay budget. Unknown partitions are an error.
pub fn plan(
    channel: &str,
    since: &Positions,
    live: &Positions,
    partitions: &Positions,
    max: u32,
) -> Result<Plan, ProtocolError> {
    let mut out = Plan::default();
    let (mut from, mut to) = (Positions::new(), Positions::new());
    for (&p, &seen) in since {
        if !partitions.contains_key(&p) {
            return Err(ProtocolError::on(
                ErrorCode::InvalidSince,
                channel,
                format!("partition {p} does not exist in this stream"),
            ));
        }
        let first = seen + 1;
        let end = live.get(&p).copied().unwrap_or(first);
        if first > end {
            out.ahead.insert(p, seen);
            continue;
        }
        if first == end {
            continue;
        }
        let start = first.max(end - i64::from(max));
        if start > first {
            from.insert(p, first);
            to.insert(p, start);
        }
        if start < end {
            out.ranges.insert(p, (start, end));
        }
    }
    if !from.is_empty() {
        out.limited = Some((from, to));
    }
    Ok(out)
}

/// What a resuming subscription asked for.
#[derive(Debug)]
pub struct Resume {
    /// The subscription (channel or `*`).
    pub name: Arc<str>,
    /// Last offset seen per partition.
    pub since: Positions,
    /// Its compiled filter: replayed records pass it too.
    pub filter: Option<Arc<Filter>>,
}

/// Runs resumes.
pub struct Replayer {
    base: ClientConfig,
    topic: String,
    source: ChannelSource,
    max_messages: u32,
    permits: Arc<Semaphore>,
    metrics: RelayMetrics,
}

enum Step {
    Record(Box<Record>),
    Gap(Positions, Positions, GapKind),
    Error(ProtocolError),
}

impl Replayer {
    /// A replayer for `topic`.
    pub fn new(
        base: ClientConfig,
        topic: String,
        source: ChannelSource,
        max_messages: u32,
        metrics: RelayMetrics,
    ) -> Self {
        Self {
            base,
            topic,
            source,
            max_messages,
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT_REPLAYS)),
            metrics,
        }
    }

    /// Replays `resume.name` for `client` from `resume.since` up to `live`, then makes it live.
    /// On an invalid `since` the subscription is withdrawn with an `invalid_since` error;
    /// `unsubscribe` is called for that.
    pub async fn resume(
        self: Arc<Self>,
        client: Arc<Client>,
        resume: Resume,
        live: Positions,
        partitions: Positions,
        unsubscribe: impl FnOnce(&Client, &str),
    ) {
        let Resume {
            name,
            since,
            filter,
        } = resume;
        let plan = match plan(&name, &since, &live, &partitions, self.max_messages) {
            Ok(plan) => plan,
            Err(err) => {
                self.refuse(&client, &name, err, unsubscribe);
                return;
            }
        };
        if let Some((from, to)) = &plan.limited {
            client.control(protocol::gap(
                client.encoding,
                &name,
                from,
                to,
                GapKind::ReplayLimit,
            ));
        }
        if plan.ranges.is_empty() && plan.ahead.is_empty() {
            self.metrics.replay(if plan.limited.is_some() {
                "limited"
            } else {
                "complete"
            });
            client.finish_replay(&name, protocol::subscribed(client.encoding, &name, &live));
            return;
        }
        let Ok(_permit) = self.permits.clone().acquire_owned().await else {
            return;
        };
        let (tx, mut rx) = mpsc::channel::<Step>(256);
        let this = self.clone();
        let channel = name.clone();
        let ranges = plan.ranges.clone();
        let ahead = plan.ahead.clone();
        let reader = tokio::task::spawn_blocking(move || {
            this.read(&channel, filter.as_deref(), ranges, ahead, tx)
        });
        let mut failed = false;
        let mut limited = plan.limited.is_some();
        let mut replayed = 0u64;
        while let Some(step) = rx.recv().await {
            match step {
                Step::Record(record) => {
                    if !client.replay(&name, &record).await {
                        // Client gone or unsubscribed: stop reading.
                        drop(rx);
                        let _ = reader.await;
                        return;
                    }
                    replayed += 1;
                }
                Step::Gap(from, to, kind) => {
                    if kind == GapKind::ReplayFailed {
                        failed = true;
                    } else {
                        limited = true;
                    }
                    client.control(protocol::gap(client.encoding, &name, &from, &to, kind));
                }
                Step::Error(err) => {
                    drop(rx);
                    let _ = reader.await;
                    self.refuse(&client, &name, err, unsubscribe);
                    return;
                }
            }
        }
        let _ = reader.await;
        self.metrics.replayed.inc_by(replayed);
        self.metrics.replay(if failed {
            "failed"
        } else if limited {
            "limited"
        } else {
            "complete"
        });
        client.finish_replay(&name, protocol::subscribed(client.encoding, &name, &live));
    }

    fn refuse(
        &self,
        client: &Client,
        name: &str,
        err: ProtocolError,
        unsubscribe: impl FnOnce(&Client, &str),
    ) {
        self.metrics.protocol_error(err.code.as_str());
        unsubscribe(client, name);
        client.control(protocol::error(client.encoding, &err));
    }

    /// Blocking: reads the ranges and sends matching records (of the channel, not broadcasts,
    /// passing `filter`), gaps and errors to `tx`.
    fn read(
        &self,
        name: &str,
        filter: Option<&Filter>,
        mut ranges: BTreeMap<i32, (i64, i64)>,
        ahead: Positions,
        tx: mpsc::Sender<Step>,
    ) {
        let fail_all = |ranges: &BTreeMap<i32, (i64, i64)>, tx: &mpsc::Sender<Step>| {
            let from = ranges.iter().map(|(p, (s, _))| (*p, *s)).collect();
            let to = ranges.iter().map(|(p, (_, e))| (*p, *e)).collect();
            let _ = tx.blocking_send(Step::Gap(from, to, GapKind::ReplayFailed));
        };
        let consumer: BaseConsumer<RelayContext> =
            match assign_only(&self.base).create_with_context(RelayContext) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create a replay consumer");
                    fail_all(&ranges, &tx);
                    return;
                }
            };
        // A client ahead of this bridge (it saw records from another replica): fine if they
        // exist in Kafka, an error if they are beyond the end of the partition.
        for (p, seen) in &ahead {
            match consumer.fetch_watermarks(&self.topic, *p, Duration::from_secs(5)) {
                Ok((_, high)) if *seen >= high => {
                    let _ = tx.blocking_send(Step::Error(ProtocolError::on(
                        ErrorCode::InvalidSince,
                        name,
                        format!(
                            "offset {seen} of partition {p} is beyond the end of the partition (next offset {high})"
                        ),
                    )));
                    return;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot check a resume position"),
            }
        }
        // Retention: what Kafka no longer has is a gap.
        let (mut from, mut to) = (Positions::new(), Positions::new());
        for (p, (start, end)) in ranges.iter_mut() {
            if let Ok((low, _)) = consumer.fetch_watermarks(&self.topic, *p, Duration::from_secs(5))
                && low > *start
            {
                from.insert(*p, *start);
                to.insert(*p, low.min(*end));
                *start = low.min(*end);
            }
        }
        if !from.is_empty() {
            let _ = tx.blocking_send(Step::Gap(from, to, GapKind::Retention));
        }
        ranges.retain(|_, (s, e)| s < e);
        if ranges.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (p, (start, _)) in &ranges {
            if tpl
                .add_partition_offset(&self.topic, *p, Offset::Offset(*start))
                .is_err()
            {
                fail_all(&ranges, &tx);
                return;
            }
        }
        if let Err(e) = consumer.assign(&tpl) {
            tracing::warn!(error = %e, "cannot assign a replay consumer");
            fail_all(&ranges, &tx);
            return;
        }
        let deadline = std::time::Instant::now() + REPLAY_DEADLINE;
        let star = name == ALL;
        while !ranges.is_empty() {
            if std::time::Instant::now() > deadline || tx.is_closed() {
                fail_all(&ranges, &tx);
                return;
            }
            let Some(result) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let msg = match result {
                Ok(msg) => msg,
                Err(e) if is_out_of_range(&e) => {
                    // Retention deleted what this replay was about to read.
                    let next = ranges.iter().map(|(p, (s, _))| (*p, *s)).collect();
                    match reassign(&consumer, &self.topic, &next) {
                        Ok(plan) => {
                            let (mut from, mut to) = (Positions::new(), Positions::new());
                            for (p, (lost, low)) in &plan.lost {
                                if let Some(r) = ranges.get_mut(p) {
                                    r.0 = (*low).min(r.1);
                                    from.insert(*p, *lost);
                                    to.insert(*p, r.0);
                                }
                            }
                            // The end of a replay is below the live position: a log now
                            // shorter than that cannot be replayed.
                            let (mut bad_from, mut bad_to) = (Positions::new(), Positions::new());
                            for p in &plan.truncated {
                                if let Some((s, e)) = ranges.remove(p) {
                                    bad_from.insert(*p, s);
                                    bad_to.insert(*p, e);
                                }
                            }
                            ranges.retain(|_, (s, e)| s < e);
                            tracing::info!(
                                lost = ?plan.lost,
                                truncated = ?plan.truncated,
                                "replay position reported out of range; re-aligned"
                            );
                            if !from.is_empty() {
                                let _ = tx.blocking_send(Step::Gap(from, to, GapKind::Retention));
                            }
                            if !bad_from.is_empty() {
                                let _ = tx.blocking_send(Step::Gap(
                                    bad_from,
                                    bad_to,
                                    GapKind::ReplayFailed,
                                ));
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot re-align a replay");
                            fail_all(&ranges, &tx);
                            return;
                        }
                    }
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "replay consumer error");
                    continue;
                }
            };
            let p = rdkafka::Message::partition(&msg);
            let o = rdkafka::Message::offset(&msg);
            let Some((_, end)) = ranges.get(&p).copied() else {
                continue;
            };
            if o >= end {
                ranges.remove(&p);
                continue;
            }
            let record = to_record(&msg, &self.source);
            drop(msg);
            if o + 1 >= end {
                ranges.remove(&p);
            } else if let Some(r) = ranges.get_mut(&p) {
                r.0 = o + 1;
            }
            let mut wanted = !record.broadcast && (star || record.channel.as_deref() == Some(name));
            if wanted && let Some(filter) = filter {
                let outcome = filter.evaluate(&super::filter::activation(&record));
                self.metrics.filter.count(outcome);
                wanted = outcome.delivers();
            }
            if wanted && tx.blocking_send(Step::Record(Box::new(record))).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(n: i32) -> Positions {
        (0..n).map(|p| (p, 0)).collect()
    }

    #[test]
    fn replays_the_gap_up_to_live() {
        let plan = plan(
            "c",
            &[(0, 9), (1, 4)].into(),
            &[(0, 20), (1, 5)].into(),
            &parts(2),
            100,
        )
        .expect("valid");
        assert_eq!(
            plan.ranges,
            [(0, (10, 20))].into(),
            "partition 1 has nothing missing"
        );
        assert_eq!(plan.limited, None);
        assert!(plan.ahead.is_empty());
    }

    #[test]
    fn budget_keeps_the_newest_and_reports_the_rest() {
        let plan = plan("c", &[(0, 9)].into(), &[(0, 1000)].into(), &parts(1), 100).expect("valid");
        assert_eq!(plan.ranges, [(0, (900, 1000))].into());
        assert_eq!(plan.limited, Some(([(0, 10)].into(), [(0, 900)].into())));
    }

    #[test]
    fn zero_budget_is_all_gap() {
        let plan = plan("c", &[(0, 9)].into(), &[(0, 20)].into(), &parts(1), 0).expect("valid");
        assert!(plan.ranges.is_empty());
        assert_eq!(plan.limited, Some(([(0, 10)].into(), [(0, 20)].into())));
    }

    #[test]
    fn unknown_partitions_are_refused_and_ahead_is_checked() {
        let err =
            plan("c", &[(7, 1)].into(), &[(0, 5)].into(), &parts(1), 10).expect_err("unknown");
        assert_eq!(err.code, ErrorCode::InvalidSince);
        let plan = plan("c", &[(0, 50)].into(), &[(0, 5)].into(), &parts(1), 10).expect("valid");
        assert_eq!(plan.ahead, [(0, 50)].into());
        assert!(plan.ranges.is_empty());
    }
}
