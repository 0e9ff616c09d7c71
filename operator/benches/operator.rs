//! Operator measurements (printed, not asserted):
//! 1. the time of one steady-state reconcile of one EventStream with the Kubernetes API mocked
//!    in process (tower-test) and Kafka either faked (pure operator CPU) or real (tansu on
//!    loopback, so Kafka round trips are included);
//! 2. the resident memory of 1 000 EventStreams held in the controller's reflector cache, plus
//!    the per-stream state of the metrics.
//!
//! `cargo bench -p eventstream-operator --bench operator`
#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventstream_crds::EventStream;
use eventstream_operator::controller::reconcile;
use eventstream_operator::kafka_admin::{KafkaAdmin, RdKafkaAdmin};
use kube::runtime::reflector;
use support::*;

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn time_reconciles(kafka: Arc<dyn KafkaAdmin>, es: EventStream, n: usize) -> Vec<Duration> {
    let (client, server) = api_server(db_secret(), Some(es.clone()));
    let ctx = context(client, kafka, std::slice::from_ref(&es));
    // Warm up: create the topic and reach the steady state (status written back).
    let mut es = es;
    for _ in 0..2 {
        reconcile(Arc::new(es.clone()), ctx.clone())
            .await
            .expect("reconcile");
        let log = server.log.lock().clone();
        if let Some(p) = log.iter().rev().find(|s| s.uri.contains("/status")) {
            es.status = serde_json::from_value(p.body["status"].clone()).ok();
        }
    }
    let es = Arc::new(es);
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        reconcile(es.clone(), ctx.clone()).await.expect("reconcile");
        times.push(t.elapsed());
    }
    drop(ctx);
    server.finish().await;
    times.sort();
    times
}

fn row(name: &str, t: &[Duration]) {
    println!(
        "| {name} | {} | {:.2} | {:.2} | {:.2} |",
        t.len(),
        pct(t, 0.5).as_secs_f64() * 1e3,
        pct(t, 0.95).as_secs_f64() * 1e3,
        t[t.len() - 1].as_secs_f64() * 1e3
    );
}

fn stream(i: usize) -> EventStream {
    let mut es = finalized(telemetry());
    es.metadata.name = Some(format!("stream-{i:04}"));
    es.metadata.uid = Some(format!("11111111-0000-4000-8000-{i:012}"));
    es.metadata.namespace = Some(format!("team-{}", i % 20));
    es
}

#[tokio::main]
async fn main() {
    println!("## Memory of 1 000 EventStreams in the controller cache\n");
    let metrics =
        eventstream_operator::metrics::Metrics::new(&prometheus::Registry::new()).expect("metrics");
    let before = rss_kib();
    let (store, mut writer) = reflector::store::<EventStream>();
    let cfg = operator_config();
    for i in 0..1000 {
        let mut es = stream(i);
        // What the API server returns: spec plus a full status (conditions, topic, endpoints).
        eventstream_operator::children::build(&es, &cfg, false).expect("builds");
        es.status = Some(eventstream_crds::EventStreamStatus {
            observed_generation: Some(1),
            conditions: eventstream_operator::conditions::all(
                &[],
                &eventstream_operator::conditions::Check::ok(
                    "TopicInSync",
                    "topic matches the spec",
                ),
                &eventstream_operator::conditions::Check::ok(
                    "ReplicasReady",
                    "Deployment x: 2/2 replicas ready",
                ),
                &eventstream_operator::conditions::Check::ok(
                    "ReplicasReady",
                    "Deployment y: 1/1 replicas ready",
                ),
                Some(1),
                fixed_now(),
            ),
            topic: Some(eventstream_crds::v1alpha1::TopicStatus {
                name: format!("team.stream-{i:04}"),
                partitions: Some(10),
                replication_factor: Some(3),
                config: [("compression.type", "lz4"), ("retention.ms", "604800000")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }),
            endpoints: Some(eventstream_operator::children::endpoints(&es)),
            bridge: Some(eventstream_crds::v1alpha1::ReplicasStatus {
                replicas: 2,
                ready_replicas: 2,
            }),
            sink: Some(eventstream_crds::v1alpha1::SinkStatus {
                replicas: 1,
                ready_replicas: 1,
                consumer_group: format!("eventstream.team.stream-{i:04}.sink"),
                lag: Some(0),
                offset_reset: None,
            }),
        });
        metrics.set_conditions(
            &format!(
                "{}/{}",
                es.metadata.namespace.clone().unwrap_or_default(),
                es.metadata.name.clone().unwrap_or_default()
            ),
            &es.status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default(),
        );
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(es));
    }
    let after = rss_kib();
    println!("| streams in cache | RSS before KiB | RSS after KiB | delta MiB | per stream KiB |");
    println!("|---|---|---|---|---|");
    println!(
        "| {} | {before} | {after} | {:.2} | {:.2} |",
        store.state().len(),
        (after.saturating_sub(before)) as f64 / 1024.0,
        (after.saturating_sub(before)) as f64 / 1000.0
    );
    println!(
        "\nprocess RSS with the 1 000 streams loaded (nothing else started yet): {:.1} MiB",
        after as f64 / 1024.0
    );
    println!("\n## Reconcile of one EventStream (steady state, API mocked in process)\n");
    println!("| Kafka | reconciles | p50 ms | p95 ms | max ms |");
    println!("|---|---|---|---|---|");
    let fake = time_reconciles(Arc::new(FakeKafka::default()), finalized(telemetry()), 500).await;
    row("fake (operator CPU only)", &fake);
    match eventstream_testkit::TansuBroker::start() {
        Ok(broker) => {
            let mut es = finalized(telemetry());
            es.spec.kafka.bootstrap_servers = Some(broker.bootstrap());
            let real: Arc<dyn KafkaAdmin> = Arc::new(RdKafkaAdmin::new(Duration::from_secs(10)));
            let t = time_reconciles(real.clone(), es, 100).await;
            row("tansu on loopback (admin + lag round trips)", &t);
            // Where the Kafka time goes.
            let conn =
                eventstream_operator::kafka_admin::KafkaConnection::plaintext(broker.bootstrap());
            let mut d = Vec::new();
            let mut l = Vec::new();
            for _ in 0..50 {
                let t = Instant::now();
                real.describe(&conn, "racing.telemetry")
                    .await
                    .expect("describe");
                d.push(t.elapsed());
                let t = Instant::now();
                real.group_lag(
                    &conn,
                    "eventstream.racing.telemetry.sink",
                    "racing.telemetry",
                )
                .await
                .expect("lag");
                l.push(t.elapsed());
            }
            d.sort();
            l.sort();
            row("tansu: describe only (Metadata + DescribeConfigs)", &d);
            row(
                "tansu: sink lag only (new group client, OffsetFetch, ListOffsets)",
                &l,
            );
        }
        Err(e) => println!("| tansu | skipped: {e} | | | |"),
    }
}
