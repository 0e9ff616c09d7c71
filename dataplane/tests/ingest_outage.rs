//! A broker outage while clients post: every request answered 200 is in the topic afterwards,
//! every other one got 503 with `Retry-After`, and none waited past `ingest.produceTimeout`.
//!
//! The broker is the librdkafka mock cluster, taken down with `broker_down` and brought back
//! with `broker_up` (its data survives, so the 200s can be checked afterwards; a killed tansu
//! loses its in-memory data, which would prove nothing about the 200s).

mod ingest_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use eventstream_testkit::{MockKafka, consume_all};
use ingest_support::{client, config, serve};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::Value;

const PRODUCE_TIMEOUT: Duration = Duration::from_secs(2);
/// Slack on top of the produce timeout for the HTTP round trip and scheduling.
const ANSWER_SLACK: Duration = Duration::from_millis(1500);

#[derive(Debug)]
enum Outcome {
    Ok {
        partition: i32,
        offset: i64,
        ingest_id: String,
        body: String,
    },
    Unavailable,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_200_survives_a_broker_outage_and_the_rest_get_503_in_time() {
    let kafka = MockKafka::new(1).expect("mock cluster");
    kafka.create_topic("outage", 2, 1).expect("topic");
    let cfg = config(
        &kafka.bootstrap(),
        "outage",
        "ingest: { produceTimeout: 2s, linger: 1ms }\n",
    );
    let server = serve(&cfg, None).await;
    let http = client();
    let stop = Arc::new(AtomicBool::new(false));

    // Eight clients posting in a loop, single events and batches of three.
    let mut clients = Vec::new();
    for c in 0..8 {
        let http = http.clone();
        let base = server.url.clone();
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let batch = n.is_multiple_of(4);
                let bodies: Vec<String> = (0..if batch { 3 } else { 1 })
                    .map(|i| format!(r#"{{"client":{c},"n":{n},"i":{i}}}"#))
                    .collect();
                let (path, body) = if batch {
                    ("/produce/batch", format!("[{}]", bodies.join(",")))
                } else {
                    ("/produce", bodies[0].clone())
                };
                let started = Instant::now();
                let response = http
                    .post(format!("{base}{path}"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("every request is answered");
                let took = started.elapsed();
                let status = response.status().as_u16();
                let retry_after = response.headers().get("retry-after").cloned();
                let v: Value = response.json().await.expect("json body");
                assert!(
                    took <= PRODUCE_TIMEOUT + ANSWER_SLACK,
                    "answered {status} after {took:?}, past the produce timeout"
                );
                match status {
                    200 if batch => {
                        for (r, body) in v["results"]
                            .as_array()
                            .expect("results")
                            .iter()
                            .zip(&bodies)
                        {
                            outcomes.push(accepted(r, body));
                        }
                    }
                    200 => outcomes.push(accepted(&v, &bodies[0])),
                    503 => {
                        assert!(retry_after.is_some(), "503 without Retry-After: {v}");
                        if batch {
                            // Items the broker did acknowledge are reported, and are in Kafka.
                            for (r, body) in v["results"]
                                .as_array()
                                .expect("results")
                                .iter()
                                .zip(&bodies)
                            {
                                if r["status"] == "accepted" {
                                    outcomes.push(accepted(r, body));
                                } else {
                                    assert_eq!(r["status"], "failed", "{v}");
                                    outcomes.push(Outcome::Unavailable);
                                }
                            }
                        } else {
                            outcomes.push(Outcome::Unavailable);
                        }
                    }
                    other => panic!("unexpected {other}: {v}"),
                }
                // Pace the clients a little so the outage window sees many requests.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            outcomes
        }));
    }

    // Healthy, then down for longer than the produce timeout, then back.
    tokio::time::sleep(Duration::from_millis(800)).await;
    kafka.broker_down(1).expect("down");
    tokio::time::sleep(PRODUCE_TIMEOUT * 2).await;
    kafka.broker_up(1).expect("up");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);

    let mut outcomes = Vec::new();
    for c in clients {
        outcomes.extend(c.await.expect("client task"));
    }
    let ok: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Ok { .. }))
        .collect();
    let unavailable = outcomes.len() - ok.len();
    eprintln!(
        "{} events acknowledged, {unavailable} answered 503",
        ok.len()
    );
    assert!(
        ok.len() > 50,
        "requests succeeded before and after the outage"
    );
    assert!(unavailable > 0, "the outage was visible as 503s");

    // Every acknowledged event is in the topic, at the position its 200 named.
    // 503'd events may be there too (they were not acknowledged, yet the broker may have
    // written them after the answer), so the topic is read to its end, not to `ok.len()`
    // records: stopping at a count could stop before an acknowledged record.
    let in_topic = records_in_topic(&kafka.bootstrap(), "outage", 2);
    assert!(in_topic >= ok.len(), "{in_topic} records in the topic");
    let records = consume_all(
        &kafka.bootstrap(),
        "outage",
        in_topic,
        Duration::from_secs(30),
    )
    .await
    .expect("every record in the topic is readable");
    let stored: HashMap<(i32, i64), (String, String)> = records
        .iter()
        .map(|r| {
            let id = r
                .header("ingestId")
                .map(|h| String::from_utf8_lossy(h).into_owned())
                .unwrap_or_default();
            (
                (r.partition, r.offset),
                (id, r.payload_str().unwrap_or_default()),
            )
        })
        .collect();
    for o in ok {
        if let Outcome::Ok {
            partition,
            offset,
            ingest_id,
            body,
        } = o
        {
            let (id, payload) = stored
                .get(&(*partition, *offset))
                .unwrap_or_else(|| panic!("a 200 ({partition}, {offset}) is not in Kafka"));
            assert_eq!(id, ingest_id);
            assert_eq!(payload, body);
        }
    }
}

/// Records between the low and high watermarks of every partition of `topic`.
fn records_in_topic(bootstrap: &str, topic: &str, partitions: i32) -> usize {
    let consumer: BaseConsumer = eventstream_testkit::kafka::consumer_config(bootstrap, None)
        .create()
        .expect("consumer");
    (0..partitions)
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            usize::try_from(high - low).expect("high >= low")
        })
        .sum()
}

fn accepted(v: &Value, body: &str) -> Outcome {
    Outcome::Ok {
        partition: v["partition"].as_i64().expect("partition") as i32,
        offset: v["offset"].as_i64().expect("offset"),
        ingest_id: v["ingestId"].as_str().expect("ingestId").to_owned(),
        body: body.to_owned(),
    }
}
