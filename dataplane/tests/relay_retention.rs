//! Retention gaps for live subscribers (`docs/protocol.md`, `gap` with reason `retention`),
//! against librdkafka's mock cluster, which keeps about 5 MiB per partition: while the bridge
//! cannot fetch (every Fetch fails, retriably), a partition receives more than that, so the
//! records the bridge had not read yet are deleted; every subscription is told, in order,
//! before the records that follow. And a position reported out of range while it is still
//! inside the log (no record lost) gives no gap at all.

mod relay_support;

use std::collections::BTreeSet;
use std::time::Duration;

use eventstream_testkit::MockKafka;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use relay_support::*;
use serde_json::{Value, json};

fn kafka() -> (MockKafka, String) {
    let kafka = MockKafka::new(1).expect("mock cluster");
    kafka.create_topic("t", 2, 1).expect("topic");
    let bootstrap = kafka.bootstrap();
    (kafka, bootstrap)
}

/// Produces `payloads` to `partition` with `key`, one acknowledged request each (so each is a
/// message set of its own, the unit the mock deletes); returns their offsets.
async fn produce_to(bootstrap: &str, partition: i32, key: &str, payloads: &[String]) -> Vec<i64> {
    let producer: FutureProducer = eventstream_testkit::kafka::producer_config(bootstrap)
        .create()
        .expect("producer");
    let mut offsets = Vec::with_capacity(payloads.len());
    for payload in payloads {
        let record = FutureRecord::to("t")
            .partition(partition)
            .key(key)
            .payload(payload);
        let delivery = producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("delivered");
        offsets.push(delivery.offset);
    }
    offsets
}

fn small(range: std::ops::Range<i64>) -> Vec<String> {
    range.map(|i| json!({"i": i}).to_string()).collect()
}

/// (low, high) watermarks of `partition`, from the broker.
async fn watermarks(bootstrap: &str, partition: i32) -> (i64, i64) {
    let config = eventstream_testkit::kafka::consumer_config(bootstrap, None);
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().expect("consumer");
        consumer
            .fetch_watermarks("t", partition, Duration::from_secs(5))
            .expect("watermarks")
    })
    .await
    .expect("watermarks task")
}

/// Reads frames until `n` events have arrived; returns every frame read (gaps included).
async fn frames_with_events(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut frames = Vec::new();
    let mut events = 0;
    while events < n {
        let f = next_json(ws).await;
        match f["type"].as_str() {
            Some("event") => events += 1,
            Some("gap") => {}
            _ => panic!("unexpected frame {f}"),
        }
        frames.push(f);
    }
    frames
}

/// Ping/pong barrier: the frames that arrived before the pong.
async fn barrier(ws: &mut Ws) -> Vec<Value> {
    send(ws, json!({"type": "ping", "id": "barrier"})).await;
    let mut extra = Vec::new();
    loop {
        let f = next_json(ws).await;
        if f["type"] == "pong" && f["id"] == "barrier" {
            return extra;
        }
        extra.push(f);
    }
}

/// `(partition, offset)` of the event frames, in arrival order.
fn offsets(frames: &[Value], partition: i64) -> Vec<i64> {
    frames
        .iter()
        .filter(|f| f["type"] == "event" && f["partition"] == partition)
        .map(|f| f["offset"].as_i64().expect("offset"))
        .collect()
}

fn gaps(frames: &[Value]) -> Vec<&Value> {
    frames.iter().filter(|f| f["type"] == "gap").collect()
}

#[test]
fn live_subscribers_are_told_what_retention_deleted_before_the_bridge_read_it() {
    on_multi_thread_runtime(
        "live_subscribers_are_told_what_retention_deleted_before_the_bridge_read_it",
        async {
            let (kafka, bootstrap) = kafka();
            let bridge = Bridge::start(config_with(
                &bootstrap,
                "t",
                "fetch.error.backoff.ms: '20'",
                "",
            ))
            .await;
            let mut star = connect(&bridge.url("/ws"), None).await;
            subscribe(&mut star, "*").await;
            let mut a = connect(&bridge.url("/ws"), None).await;
            subscribe(&mut a, "a").await;
            let mut b = connect(&bridge.url("/ws"), None).await;
            subscribe(&mut b, "b").await;

            assert_eq!(
                produce_to(&bootstrap, 0, "a", &small(0..5)).await,
                [0, 1, 2, 3, 4]
            );
            assert_eq!(
                produce_to(&bootstrap, 1, "b", &small(0..3)).await,
                [0, 1, 2]
            );
            assert_eq!(events(&mut star, 8).await.len(), 8);
            assert_eq!(events(&mut a, 5).await.len(), 5);
            assert_eq!(events(&mut b, 3).await.len(), 3);

            // The bridge cannot fetch any more; an in-flight fetch (10 ms long poll) ends first.
            let stall = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR; 100_000];
            kafka.cluster().request_errors(RDKafkaApiKey::Fetch, &stall);
            tokio::time::sleep(Duration::from_millis(300)).await;
            // 8 MiB into partition 0: the mock deletes the oldest message sets beyond ~5 MiB.
            let pad = "x".repeat(100 * 1024);
            let big: Vec<String> = (5..85)
                .map(|i| json!({"i": i, "pad": pad}).to_string())
                .collect();
            let written = produce_to(&bootstrap, 0, "a", &big).await;
            assert_eq!(written, (5..85).collect::<Vec<_>>());
            assert_eq!(produce_to(&bootstrap, 1, "b", &small(3..4)).await, [3]);
            let (low, high) = watermarks(&bootstrap, 0).await;
            assert!(
                low > 5 && low < 85,
                "the mock deleted records the bridge had not read: low {low}"
            );
            assert_eq!(high, 85);
            assert_eq!(
                watermarks(&bootstrap, 1).await,
                (0, 4),
                "partition 1 keeps everything"
            );
            kafka.cluster().clear_request_errors(RDKafkaApiKey::Fetch);

            let retention_gap = |channel: &str| {
                json!({"type": "gap", "channel": channel, "from": {"0": 5}, "to": {"0": low},
                       "reason": "retention"})
            };
            let kept: Vec<i64> = (low..85).collect();

            // `*`: the gap, before every record of partition 0 that follows it.
            let frames = frames_with_events(&mut star, kept.len() + 1).await;
            assert_eq!(gaps(&frames), [&retention_gap("*")], "{frames:?}");
            let first_p0 = frames
                .iter()
                .position(|f| f["type"] == "event" && f["partition"] == 0)
                .expect("partition 0 events");
            let gap_at = frames.iter().position(|f| f["type"] == "gap").expect("gap");
            assert!(
                gap_at < first_p0,
                "the gap comes before the records after it"
            );
            assert_eq!(
                offsets(&frames, 0),
                kept,
                "every record Kafka still has, in order"
            );
            assert_eq!(offsets(&frames, 1), [3]);

            // A channel of partition 0, and one of partition 1: every subscription is told.
            let frames = frames_with_events(&mut a, kept.len()).await;
            assert_eq!(frames[0], retention_gap("a"));
            assert_eq!(gaps(&frames).len(), 1);
            assert_eq!(offsets(&frames, 0), kept);
            let frames = frames_with_events(&mut b, 1).await;
            let frames = if gaps(&frames).is_empty() {
                let mut more = frames;
                more.push(next_json(&mut b).await);
                more
            } else {
                frames
            };
            assert_eq!(gaps(&frames), [&retention_gap("b")], "{frames:?}");
            assert_eq!(offsets(&frames, 1), [3]);

            for ws in [&mut star, &mut a, &mut b] {
                assert!(barrier(ws).await.is_empty(), "nothing else");
            }
            assert_eq!(
                bridge.metric("eventstream_bridge_retention_gaps_total"),
                1.0
            );
            assert_eq!(
                bridge.metric("eventstream_bridge_retention_gap_offsets_total"),
                (low - 5) as f64
            );
            assert!(bridge.metric("eventstream_bridge_out_of_range_total") >= 1.0);

            // A subscriber arriving now starts after the gap, and live delivery goes on.
            let mut late = connect(&bridge.url("/ws"), None).await;
            let subscribed = subscribe(&mut late, "*").await;
            assert_eq!(subscribed["positions"], json!({"0": 85, "1": 4}));
            assert_eq!(produce_to(&bootstrap, 0, "a", &small(85..86)).await, [85]);
            for ws in [&mut star, &mut a, &mut late] {
                let got = events(ws, 1).await;
                assert_eq!((got[0].0, got[0].1), (0, 85));
            }
            bridge.stop().await;
        },
    );
}

#[test]
fn an_out_of_range_report_for_a_position_still_in_the_log_is_no_gap() {
    on_multi_thread_runtime(
        "an_out_of_range_report_for_a_position_still_in_the_log_is_no_gap",
        async {
            let (kafka, bootstrap) = kafka();
            let bridge = Bridge::start(config(&bootstrap, "t", "")).await;
            let mut star = connect(&bridge.url("/ws"), None).await;
            subscribe(&mut star, "*").await;
            produce_to(&bootstrap, 0, "a", &small(0..5)).await;
            produce_to(&bootstrap, 1, "b", &small(0..2)).await;
            assert_eq!(events(&mut star, 7).await.len(), 7);

            // The next Fetch answers OFFSET_OUT_OF_RANGE for both partitions, yet nothing was
            // deleted: the bridge re-aligns at the same positions and tells nobody of a gap.
            kafka.cluster().request_errors(
                RDKafkaApiKey::Fetch,
                &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE],
            );
            eventually("the out-of-range report", || {
                bridge.metric("eventstream_bridge_out_of_range_total") >= 1.0
            })
            .await;
            produce_to(&bootstrap, 0, "a", &small(5..10)).await;
            produce_to(&bootstrap, 1, "b", &small(2..4)).await;
            let frames = frames_with_events(&mut star, 7).await;
            assert!(gaps(&frames).is_empty(), "{frames:?}");
            assert_eq!(
                offsets(&frames, 0),
                [5, 6, 7, 8, 9],
                "no loss, no duplicate"
            );
            assert_eq!(offsets(&frames, 1), [2, 3]);
            assert!(barrier(&mut star).await.is_empty(), "nothing else");
            assert_eq!(
                bridge.metric("eventstream_bridge_retention_gaps_total"),
                0.0
            );
            let seen: BTreeSet<i64> = offsets(&frames, 0).into_iter().collect();
            assert_eq!(seen.len(), 5);
            bridge.stop().await;
        },
    );
}

#[test]
fn a_resume_that_meets_out_of_range_reports_still_replays_everything() {
    on_multi_thread_runtime(
        "a_resume_that_meets_out_of_range_reports_still_replays_everything",
        async {
            let (kafka, bootstrap) = kafka();
            let bridge = Bridge::start(config(&bootstrap, "t", "")).await;
            produce_to(&bootstrap, 0, "a", &small(0..50)).await;
            produce_to(&bootstrap, 1, "b", &small(0..20)).await;
            eventually("all consumed", || {
                bridge.metric("eventstream_bridge_records_consumed_total") >= 70.0
            })
            .await;
            // Spurious reports for the next Fetch requests, whichever consumer sends them:
            // the replay's consumer and the live one both re-align and lose nothing.
            kafka.cluster().request_errors(
                RDKafkaApiKey::Fetch,
                &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE; 20],
            );
            let mut ws = connect(&bridge.url("/ws"), None).await;
            send(
                &mut ws,
                json!({"type": "subscribe", "channel": "*", "since": {"0": -1, "1": -1}}),
            )
            .await;
            let frames = frames_with_events(&mut ws, 70).await;
            assert!(gaps(&frames).is_empty(), "{frames:?}");
            assert_eq!(offsets(&frames, 0), (0..50).collect::<Vec<_>>());
            assert_eq!(offsets(&frames, 1), (0..20).collect::<Vec<_>>());
            assert_eq!(next_json(&mut ws).await["type"], "subscribed");
            assert!(barrier(&mut ws).await.is_empty(), "nothing else");
            assert_eq!(
                bridge.metric("eventstream_bridge_retention_gaps_total"),
                0.0
            );
            bridge.stop().await;
        },
    );
}
