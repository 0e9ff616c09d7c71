//! The alerts evaluator against tansu 0.6, a broker in its own process. tansu 0.6 keeps
//! transaction state in its storage, but librdkafka's `commit_transaction` against it fails with
//! "EndTxnRequest (KIP-98) not supported by broker": no transaction can be committed
//! (docs/alerts.md). The evaluator must say so and stop (a pod restarts it and its status shows
//! the error), not spin or pretend: that is what this test holds it to. When tansu learns
//! transactions this test fails, and `sigkill_scenario(.., strict: true)` should run here.

mod alerts_support;

use std::time::{Duration, Instant};

use alerts_support::*;
use eventstream_testkit::TansuBroker;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_tansu_no_transaction_commits_and_the_evaluator_stops_with_the_reason() -> TestResult {
    let broker = TansuBroker::start()?;
    let admin: AdminClient<DefaultClientContext> = broker.client_config().create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let topics = [
        NewTopic::new(TOPIC, 3, TopicReplication::Fixed(1)),
        NewTopic::new(ALERTS, 1, TopicReplication::Fixed(1)),
        NewTopic::new(STATE, 1, TopicReplication::Fixed(1)),
    ];
    for result in admin.create_topics(&topics, &opts).await? {
        result.map_err(|(topic, e)| format!("creating {topic}: {e}"))?;
    }
    let boot = broker.bootstrap();
    let port = port();
    let mut evaluator = Evaluator::start(&config(&boot, port, "100ms", 1000), port)?;
    eventstream_testkit::produce(&boot, TOPIC, &samples(seed(), 5, 50)).await?;
    let deadline = Instant::now() + Duration::from_secs(90);
    while evaluator.running() {
        assert!(
            Instant::now() < deadline,
            "the evaluator neither committed nor stopped:\n{}",
            evaluator.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = evaluator.log();
    assert!(
        log.contains("committing a transaction") && log.contains("EndTxn"),
        "the evaluator stopped without naming the failed commit:\n{log}"
    );
    assert!(
        committed_positions(&boot)?.is_empty(),
        "nothing may look committed"
    );
    Ok(())
}
