//! The fan-out against a real Kafka-compatible broker in its own process (tansu): a client
//! receives what is produced, disconnects, and resumes from its positions with nothing lost
//! and nothing repeated.

mod relay_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use eventstream_testkit::TansuBroker;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use relay_support::*;
use serde_json::json;

/// One record per produce request: tansu 0.6 reports a high watermark of the last batch's base
/// offset + 1 for multi-record batches, which hides the tail of a batch from a reader that
/// starts below it (seen here); single-record batches keep its offsets exact.
async fn produce_one_by_one(producer: &FutureProducer, records: &[(Option<String>, String)]) {
    for (key, payload) in records {
        let mut record = FutureRecord::to("frames").payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("delivered");
    }
}

#[test]
fn fan_out_and_resume_through_tansu() {
    on_multi_thread_runtime("fan_out_and_resume_through_tansu", async {
        eventstream_dataplane::telemetry::init_logging();
        let broker = TansuBroker::start().expect("tansu starts");
        let bootstrap = broker.bootstrap();
        let admin: AdminClient<DefaultClientContext> =
            broker.client_config().create().expect("admin client");
        let topic = NewTopic::new("frames", 2, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics([&topic], &opts)
            .await
            .expect("create topics");
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");

        let bridge = Bridge::start(config(&bootstrap, "frames", "")).await;
        let mut ws = connect(&bridge.url("/ws"), None).await;
        let subscribed = subscribe(&mut ws, "*").await;
        let batch = |from: usize| -> Vec<(Option<String>, String)> {
            (from..from + 40)
                .map(|i| (Some(format!("s-{}", i % 4)), json!({"i": i}).to_string()))
                .collect()
        };
        let producer: FutureProducer = broker.producer_config().create().expect("producer");
        produce_one_by_one(&producer, &batch(0)).await;
        let first = events(&mut ws, 25).await;
        drop(ws);
        // A position for every partition (`subscribed.positions` - 1), then the events seen: the
        // first 25 events need not come from both partitions.
        let live_from: BTreeMap<String, i64> =
            serde_json::from_value(subscribed["positions"].clone()).expect("positions");
        let mut since: BTreeMap<String, i64> =
            live_from.into_iter().map(|(p, o)| (p, o - 1)).collect();
        for (p, o, _) in &first {
            let e = since.entry(p.to_string()).or_insert(*o);
            *e = (*e).max(*o);
        }
        produce_one_by_one(&producer, &batch(40)).await;
        let mut ws = connect(&bridge.url("/ws"), None).await;
        send(
            &mut ws,
            json!({"type": "subscribe", "channel": "*", "since": since}),
        )
        .await;
        let mut rest = BTreeSet::new();
        while rest.len() < 80 - 25 {
            let f = next_json(&mut ws).await;
            if f["type"] == "event" {
                assert!(
                    rest.insert(f["data"]["i"].as_i64().expect("i")),
                    "duplicate {f}"
                );
            } else {
                assert_eq!(f["type"], "subscribed", "{f}");
            }
        }
        let seen: BTreeSet<i64> = first
            .iter()
            .map(|(_, _, d)| d["i"].as_i64().expect("i"))
            .collect();
        assert!(seen.is_disjoint(&rest));
        assert_eq!(
            seen.union(&rest).copied().collect::<BTreeSet<_>>(),
            (0..80).collect()
        );
        bridge.stop().await;
    });
}
