//! `eventstream-dataplane standalone` runs the alert evaluator of a stream whose config has an
//! `alerts` section in its own process: thresholds crossed over HTTP ingest come out on the
//! alerts topic of the embedded broker, and the firing gauge is on `/metrics`.

mod standalone_support;

use std::time::{Duration, Instant};

use serde_json::json;
use standalone_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_evaluates_the_alert_rules_of_a_stream_in_process() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("metrics.yaml");
    std::fs::write(
        &config,
        "stream: {namespace: ops, name: metrics}\ntopic: ops.metrics\n\
         ingest: {keyField: /serverId}\n\
         alerts:\n  topic: ops.metrics.alerts\n  stateTopic: ops.metrics.alerts.state\n  \
         consumerGroup: ops-alerts\n  transactionalId: ops-alerts\n  key: /serverId\n  \
         startFrom: earliest\n  rules:\n    \
         - {name: cpu-critical, when: 'data.metrics.cpu > 90.0', severity: critical}\n",
    )
    .expect("write");
    let mut server = Standalone::start(&[
        "--listen",
        "127.0.0.1:0",
        "--config",
        config.to_str().expect("utf8"),
    ]);
    let base = server.banner("viewer").trim_end_matches('/').to_string();
    let bootstrap = server.banner("kafka");
    let http = reqwest::Client::new();
    for cpu in [50.0, 95.0, 96.0, 10.0] {
        let r = http
            .post(format!("{base}/produce"))
            .json(&json!({"serverId": "web-1", "metrics": {"cpu": cpu}}))
            .send()
            .await
            .expect("produce");
        assert_eq!(r.status(), 200);
    }
    let alerts = eventstream_testkit::consume_all(
        &bootstrap,
        "ops.metrics.alerts",
        2,
        Duration::from_secs(60),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", server.stderr()));
    let states: Vec<(Option<String>, String)> = alerts
        .iter()
        .map(|r| {
            let v: serde_json::Value =
                serde_json::from_slice(r.payload.as_deref().unwrap_or_default()).expect("json");
            (
                r.key_str(),
                v["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            (Some("cpu-critical/web-1".into()), "firing".into()),
            (Some("cpu-critical/web-1".into()), "resolved".into()),
        ]
    );
    // The evaluator's metrics join the process's /metrics.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        if text.contains(
            "eventstream_alerts_transitions_total{rule=\"cpu-critical\",severity=\"critical\",state=\"resolved\",stream=\"ops/metrics\"} 1",
        ) {
            assert!(text.contains("eventstream_alerts_firing{rule=\"cpu-critical\",severity=\"critical\",stream=\"ops/metrics\"} 0"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "no transition counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.kill();
}
