//! A bridge on the runtime flavour production uses (multi-thread) must not wedge: after sitting
//! idle (no records, no requests, a partition refresh on the way) it still answers `/healthz`,
//! accepts a new WebSocket subscriber, delivers a freshly produced record to old and new
//! subscribers alike, and stops. Every wait has a deadline, and a watchdog thread outside the
//! runtime aborts the test process should the runtime itself stop driving timers.

mod relay_support;

use std::time::Duration;

use eventstream_testkit::{MockKafka, produce};
use relay_support::*;
use serde_json::json;

/// Longer than the consumer's partition refresh interval, so that one runs while idle.
const IDLE: Duration = Duration::from_millis(10_500);

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} within {WAIT:?}: the bridge is wedged"))
}

#[test]
fn an_idle_bridge_still_serves_and_stops() {
    on_multi_thread_runtime("an_idle_bridge_still_serves_and_stops", async {
        let kafka = MockKafka::new(1).expect("mock cluster");
        kafka.create_topic("t", 2, 1).expect("topic");
        let bootstrap = kafka.bootstrap();
        let bridge = Bridge::start(config(&bootstrap, "t", "")).await;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client");

        let mut early = within("connect", connect(&bridge.url("/ws"), None)).await;
        subscribe(&mut early, "*").await;
        produce(&bootstrap, "t", &[(Some("k"), r#"{"n":1}"#)])
            .await
            .expect("produced");
        assert_eq!(events(&mut early, 1).await[0].2, json!({"n": 1}));

        tokio::time::sleep(IDLE).await;

        let healthz = within(
            "/healthz",
            http.get(format!("http://{}/healthz", bridge.addr)).send(),
        )
        .await
        .expect("/healthz answers");
        assert_eq!(healthz.status(), 200);
        assert_eq!(healthz.text().await.expect("body"), "ok\n");
        let health: serde_json::Value = within(
            "/health",
            http.get(format!("http://{}/health", bridge.addr)).send(),
        )
        .await
        .expect("/health answers")
        .json()
        .await
        .expect("json");
        assert_eq!(health["status"], "healthy", "{health}");

        let mut late = within("connect after idling", connect(&bridge.url("/ws"), None)).await;
        subscribe(&mut late, "*").await;
        let mut keyed = within("connect after idling", connect(&bridge.url("/ws"), None)).await;
        subscribe(&mut keyed, "k").await;
        within(
            "produce",
            produce(&bootstrap, "t", &[(Some("k"), r#"{"n":2}"#)]),
        )
        .await
        .expect("produced");
        for ws in [&mut early, &mut late, &mut keyed] {
            assert_eq!(events(ws, 1).await[0].2, json!({"n": 2}));
        }

        within("stop", bridge.stop()).await;
    });
}
