//! Ingest against the librdkafka mock cluster: what a 200 says is what Kafka holds.
//!
//! - a produced event reads back with its payload untouched, its key, the `receivedAt` and
//!   `ingestId` headers, at the partition and offset the 200 named, on the partition the key
//!   chooses (Java-compatible murmur2);
//! - 1 000 concurrent posts get 1 000 distinct offsets, every one readable;
//! - a batch reads back in order; a protobuf envelope keeps its key and headers.

mod ingest_support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use eventstream_proto::prost::Message;
use eventstream_proto::v1::{Envelope, Header};
use eventstream_testkit::{MockKafka, consume_all};
use ingest_support::{client, config, murmur2_partition, serve};
use serde_json::{Value, json};

const READ_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produced_events_read_back_with_key_headers_and_partition() {
    let kafka = MockKafka::new(1).expect("mock cluster");
    kafka.create_topic("clicks", 6, 1).expect("topic");
    let cfg = config(
        &kafka.bootstrap(),
        "clicks",
        "ingest: { keyField: /userId, requiredFields: [eventType, userId], linger: 1ms }\n",
    );
    let server = serve(&cfg, None).await;
    let http = client();

    let mut sent = Vec::new();
    for i in 0..24 {
        let user = format!("user-{}", i % 8);
        // Spacing and key order are the client's and must survive.
        let body = format!(r#"{{ "userId": "{user}",  "eventType": "like_clicked", "n": {i} }}"#);
        let response = http
            .post(format!("{}/produce", server.url))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.expect("json");
        sent.push((user, body, answer));
    }

    let records = consume_all(&kafka.bootstrap(), "clicks", sent.len(), READ_TIMEOUT)
        .await
        .expect("read back");
    let by_position: HashMap<(i32, i64), _> = records
        .iter()
        .map(|r| ((r.partition, r.offset), r))
        .collect();
    for (user, body, answer) in &sent {
        let position = (
            answer["partition"].as_i64().expect("partition") as i32,
            answer["offset"].as_i64().expect("offset"),
        );
        let record = by_position
            .get(&position)
            .expect("the 200's position holds a record");
        assert_eq!(
            record.payload_str().as_deref(),
            Some(body.as_str()),
            "payload untouched"
        );
        assert_eq!(record.key_str().as_deref(), Some(user.as_str()));
        assert_eq!(
            record.partition,
            murmur2_partition(user.as_bytes(), 6),
            "the key chooses the partition"
        );
        let id =
            std::str::from_utf8(record.header("ingestId").expect("ingestId header")).expect("utf8");
        assert_eq!(Some(id), answer["ingestId"].as_str());
        assert_eq!(
            uuid::Uuid::parse_str(id).expect("uuid").get_version_num(),
            7
        );
        let received =
            std::str::from_utf8(record.header("receivedAt").expect("receivedAt")).expect("utf8");
        chrono::DateTime::parse_from_rfc3339(received).expect("RFC 3339");
    }
    // Per-key ordering: one user's events sit on one partition in send order.
    let mut last: HashMap<&str, i64> = HashMap::new();
    for (user, _, answer) in &sent {
        let offset = answer["offset"].as_i64().expect("offset");
        if let Some(prev) = last.insert(user.as_str(), offset) {
            assert!(offset > prev, "{user}: {offset} after {prev}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_posts_get_distinct_readable_offsets() {
    let kafka = MockKafka::new(1).expect("mock cluster");
    kafka.create_topic("load", 3, 1).expect("topic");
    let cfg = config(&kafka.bootstrap(), "load", "ingest: { linger: 2ms }\n");
    let server = serve(&cfg, None).await;
    let http = client();

    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let http = http.clone();
            let url = format!("{}/produce", server.url);
            tokio::spawn(async move {
                let response = http
                    .post(url)
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"i":{i}}}"#))
                    .send()
                    .await
                    .expect("post");
                assert_eq!(response.status(), 200);
                let v: Value = response.json().await.expect("json");
                (
                    v["partition"].as_i64().expect("partition") as i32,
                    v["offset"].as_i64().expect("offset"),
                    i,
                )
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task"));
    }
    let positions: HashSet<(i32, i64)> = answers.iter().map(|(p, o, _)| (*p, *o)).collect();
    assert_eq!(positions.len(), 1000, "every 200 names its own offset");

    let records = consume_all(&kafka.bootstrap(), "load", 1000, READ_TIMEOUT)
        .await
        .expect("all 1000 readable");
    assert_eq!(records.len(), 1000);
    let stored: HashMap<(i32, i64), String> = records
        .iter()
        .map(|r| ((r.partition, r.offset), r.payload_str().unwrap_or_default()))
        .collect();
    for (p, o, i) in answers {
        assert_eq!(stored.get(&(p, o)), Some(&format!(r#"{{"i":{i}}}"#)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_and_envelopes_read_back() {
    let kafka = MockKafka::new(1).expect("mock cluster");
    kafka.create_topic("batch", 1, 1).expect("topic");
    let cfg = config(
        &kafka.bootstrap(),
        "batch",
        "ingest: { keyField: /sessionId, enrich: { receivedAtField: receivedAt, fields: { source: bridge } } }\n",
    );
    let server = serve(&cfg, None).await;
    let http = client();

    // A JSON array of three, then NDJSON of two.
    let array =
        r#"[{"sessionId":"s1","lap":1},{"sessionId":"s2","lap":1},{"sessionId":"s1","lap":2}]"#;
    let response = http
        .post(format!("{}/produce/batch", server.url))
        .header("content-type", "application/json")
        .body(array)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.expect("json");
    assert_eq!(report["accepted"], 3);
    assert_eq!(report["rejected"], 0);
    let offsets: Vec<i64> = report["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            assert_eq!(r["status"], "accepted");
            r["offset"].as_i64().expect("offset")
        })
        .collect();
    assert_eq!(
        offsets,
        [0, 1, 2],
        "a batch keeps its order on one partition"
    );

    let response = http
        .post(format!("{}/produce/batch", server.url))
        .header("content-type", "application/x-ndjson")
        .body("{\"sessionId\":\"s3\"}\n{\"sessionId\":\"s4\"}\n")
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 200);

    // A protobuf envelope with its own key, content type and header.
    let envelope = Envelope {
        key: Some(b"explicit-key".to_vec()),
        payload: br#"{"sessionId":"s9","speed":301}"#.to_vec(),
        content_type: "application/json".into(),
        headers: vec![Header {
            key: "trace-id".into(),
            value: b"abc".to_vec(),
        }],
        ..Default::default()
    };
    let response = http
        .post(format!("{}/produce", server.url))
        .header("content-type", "application/x-protobuf")
        .body(envelope.encode_to_vec())
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 200);

    let records = consume_all(&kafka.bootstrap(), "batch", 6, READ_TIMEOUT)
        .await
        .expect("read back");
    let payloads: Vec<Value> = records
        .iter()
        .map(|r| serde_json::from_slice(r.payload.as_deref().unwrap_or_default()).expect("json"))
        .collect();
    assert_eq!(payloads[0]["lap"], 1);
    assert_eq!(payloads[2]["lap"], 2);
    assert_eq!(records[0].key_str().as_deref(), Some("s1"));
    assert_eq!(records[1].key_str().as_deref(), Some("s2"));
    for (p, r) in payloads.iter().zip(&records) {
        // Enrichment: the configured fields are in the payload, with the header's time.
        assert_eq!(p["source"], "bridge");
        let header = std::str::from_utf8(r.header("receivedAt").expect("header")).expect("utf8");
        assert_eq!(p["receivedAt"], json!(header));
    }
    let env = &records[5];
    assert_eq!(env.key_str().as_deref(), Some("explicit-key"));
    assert_eq!(env.header("trace-id"), Some(b"abc".as_slice()));
    assert_eq!(
        env.header("content-type"),
        Some(b"application/json".as_slice())
    );
    assert_eq!(payloads[5]["speed"], 301);
}
