//! The alerts evaluator's SIGKILL scenario against tansu 0.6, a broker in its own process: what
//! its transactions give a `read_committed` reader (docs/alerts.md, "What the test brokers here
//! can and cannot prove").

mod alerts_support;

use std::time::Duration;

use alerts_support::*;
use eventstream_testkit::TansuBroker;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_a_transaction_open_on_tansu() -> TestResult {
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
    let leaked = sigkill_scenario(&broker.bootstrap(), false).await?;
    eprintln!("tansu showed {leaked} records of the aborted transaction to read_committed");
    Ok(())
}
