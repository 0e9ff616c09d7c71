//! Tests of the harness against the real parts: PostgreSQL 15, the tansu
//! binary and librdkafka's mock cluster. They run in parallel.

use std::error::Error;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use eventstream_testkit::kafka::{self, ConsumedRecord};
use eventstream_testkit::{HarnessError, MockKafka, TansuBroker, TestPostgres};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

type TestResult = Result<(), Box<dyn Error>>;

fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

// ---------------------------------------------------------------- postgres

#[test]
fn postgres_starts_and_answers_select_1() -> TestResult {
    let pg = TestPostgres::start()?;
    assert_eq!(
        pg.url(),
        format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port())
    );
    assert!(pg.is_running());
    assert!(port_open(pg.port()));
    assert_eq!(pg.psql("postgres", "SELECT 1")?.trim(), "1");
    // Not durable by default.
    assert_eq!(pg.psql("postgres", "SHOW fsync")?.trim(), "off");
    assert_eq!(
        pg.psql("postgres", "SHOW listen_addresses")?.trim(),
        "127.0.0.1"
    );
    Ok(())
}

#[test]
fn postgres_builder_durable_and_settings() -> TestResult {
    let pg = TestPostgres::builder()
        .durable(true)
        .setting("wal_level", "logical")
        .setting("application_name", "it's quoted")
        .start()?;
    assert_eq!(pg.psql("postgres", "SHOW fsync")?.trim(), "on");
    assert_eq!(pg.psql("postgres", "SHOW wal_level")?.trim(), "logical");
    Ok(())
}

#[test]
fn postgres_create_database_and_sql_errors() -> TestResult {
    let pg = TestPostgres::start()?;
    pg.create_database("event-store")?;
    assert_eq!(
        pg.url_for("event-store").rsplit('/').next(),
        Some("event-store")
    );
    let dbs = pg.psql("postgres", "SELECT datname FROM pg_database ORDER BY 1")?;
    assert!(dbs.lines().any(|l| l == "event-store"), "{dbs}");
    // A failing statement is an error that carries psql's message.
    let err = pg
        .psql("event-store", "SELECT * FROM no_such_table")
        .err()
        .ok_or("a bad query succeeded")?;
    assert!(err.to_string().contains("no_such_table"), "{err}");
    Ok(())
}

#[test]
fn postgres_stop_and_start_again_keeps_data_and_port() -> TestResult {
    let mut pg = TestPostgres::start()?;
    pg.create_database("app")?;
    pg.psql(
        "app",
        "CREATE TABLE offsets (id int PRIMARY KEY, v text); \
         INSERT INTO offsets VALUES (1, 'one'), (2, 'two')",
    )?;
    let port = pg.port();

    pg.stop()?;
    assert!(!pg.is_running());
    assert!(!port_open(port), "port {port} still open after stop");
    assert!(matches!(
        pg.psql("app", "SELECT 1"),
        Err(HarnessError::InvalidState(_))
    ));

    pg.start_again()?;
    assert_eq!(pg.port(), port);
    assert!(port_open(port));
    assert_eq!(
        pg.psql("app", "SELECT string_agg(v, ',' ORDER BY id) FROM offsets")?
            .trim(),
        "one,two"
    );
    Ok(())
}

#[test]
fn postgres_drop_stops_server_and_removes_dir() -> TestResult {
    let pg = TestPostgres::start()?;
    let dir = pg.dir().to_path_buf();
    let port = pg.port();
    assert!(pg.data_dir().join("PG_VERSION").exists());
    drop(pg);
    assert!(!dir.exists(), "{} survived drop", dir.display());
    assert!(!port_open(port), "server on {port} survived drop");
    Ok(())
}

#[test]
fn postgres_parallel_clusters_get_distinct_ports() -> TestResult {
    let handles: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(TestPostgres::start))
        .collect();
    let mut clusters = Vec::new();
    for handle in handles {
        clusters.push(handle.join().map_err(|_| "start thread panicked")??);
    }
    let mut ports: Vec<u16> = clusters.iter().map(TestPostgres::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3);
    for pg in &clusters {
        assert_eq!(pg.psql("postgres", "SELECT 1")?.trim(), "1");
    }
    Ok(())
}

#[test]
fn postgres_missing_binaries_are_named() {
    let err = TestPostgres::builder()
        .bin_dir("/nonexistent/postgresql/bin")
        .start()
        .err();
    match err {
        Some(HarnessError::MissingBinary { binary, hint, .. }) => {
            assert_eq!(binary, "initdb");
            assert!(hint.contains("postgresql-15"), "{hint}");
        }
        other => panic!("expected MissingBinary, got {other:?}"),
    }
}

// ------------------------------------------------------------------- tansu

/// How many brokers a metadata request with `config` lists, or why it failed.
fn brokers_seen(config: rdkafka::ClientConfig) -> Result<usize, Box<dyn Error>> {
    let consumer: BaseConsumer = config.create()?;
    consumer
        .fetch_metadata(None, Duration::from_secs(5))
        .map(|m| m.brokers().len())
        .map_err(Box::<dyn Error>::from)
}

/// A broker with a SCRAM user answers clients that authenticate as that user, and nobody else.
#[tokio::test]
async fn tansu_with_a_scram_user_refuses_other_clients() -> TestResult {
    use eventstream_testkit::tansu::ScramUser;
    let broker = tokio::task::spawn_blocking(|| {
        TansuBroker::start_with_scram_user(ScramUser {
            username: "alice".into(),
            password: "s3cret".into(),
        })
    })
    .await??;
    assert_eq!(
        brokers_seen(broker.client_config())?,
        1,
        "the user is answered"
    );
    let mut wrong = broker.client_config();
    wrong.set("sasl.password", "not-it");
    assert!(brokers_seen(wrong).is_err(), "a wrong password is refused");
    let plain = kafka::client_config(&broker.bootstrap());
    assert!(
        brokers_seen(plain).is_err(),
        "a client without SASL is refused"
    );
    Ok(())
}

/// Behind a TLS front the broker is reached over TLS only, with the front's CA.
#[tokio::test]
async fn tansu_behind_a_tls_front_answers_tls_clients_only() -> TestResult {
    use eventstream_testkit::TlsFront;
    use eventstream_testkit::tansu::TansuOptions;
    let broker = tokio::task::spawn_blocking(|| {
        TansuBroker::start_with(TansuOptions {
            tls_front: Some(TlsFront::start()?),
            ..TansuOptions::default()
        })
    })
    .await??;
    assert!(broker.bootstrap().starts_with("localhost:"));
    assert_eq!(
        brokers_seen(broker.client_config())?,
        1,
        "a TLS client is answered"
    );
    let plain = kafka::client_config(&broker.bootstrap());
    assert!(
        brokers_seen(plain).is_err(),
        "a plaintext client is refused"
    );
    // Records go through the front both ways.
    let mut producer_config = broker.producer_config();
    producer_config.set("message.timeout.ms", "20000");
    let admin: AdminClient<DefaultClientContext> = broker.client_config().create()?;
    for result in admin
        .create_topics(
            &[NewTopic::new("tls", 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?
    {
        result.map_err(|(topic, code)| format!("create_topics({topic}) failed: {code:?}"))?;
    }
    let producer: FutureProducer = producer_config.create()?;
    producer
        .send(
            FutureRecord::<str, str>::to("tls").payload("over tls"),
            Duration::from_secs(20),
        )
        .await
        .map_err(|(e, _)| e)?;
    let consumer: BaseConsumer = broker.consumer_config(None).create()?;
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment.add_partition_offset("tls", 0, rdkafka::Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing consumed over TLS"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message?;
            assert_eq!(rdkafka::Message::payload(&message), Some(&b"over tls"[..]));
            break;
        }
    }
    Ok(())
}

#[tokio::test]
async fn tansu_admin_topic_and_round_trip() -> TestResult {
    let broker = TansuBroker::start()?;
    assert_eq!(broker.bootstrap(), format!("127.0.0.1:{}", broker.port()));

    let admin: AdminClient<DefaultClientContext> = broker.client_config().create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new("orders", 3, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for result in results {
        result.map_err(|(topic, code)| format!("create_topics({topic}) failed: {code:?}"))?;
    }

    let records: Vec<(Option<String>, String)> = (0..6)
        .map(|i| (Some(format!("key-{}", i % 3)), format!("order-{i}")))
        .collect();
    let positions = kafka::produce(&broker.bootstrap(), "orders", &records).await?;
    assert_eq!(positions.len(), 6);

    let consumed =
        kafka::consume_all(&broker.bootstrap(), "orders", 6, Duration::from_secs(30)).await?;
    assert_eq!(consumed.len(), 6);
    let mut payloads: Vec<String> = consumed.iter().filter_map(|r| r.payload_str()).collect();
    payloads.sort();
    let mut sent: Vec<String> = records.iter().map(|(_, p)| p.clone()).collect();
    sent.sort();
    assert_eq!(payloads, sent);
    // Keys and positions come back as produced.
    for record in &consumed {
        let index = record
            .payload_str()
            .and_then(|p| p.strip_prefix("order-").map(str::to_owned))
            .ok_or("bad payload")?
            .parse::<usize>()?;
        assert_eq!(record.key_str(), records[index].0);
        assert_eq!((record.partition, record.offset), positions[index]);
    }
    // The same key always lands on the same partition.
    for key in ["key-0", "key-1", "key-2"] {
        let mut parts: Vec<i32> = consumed
            .iter()
            .filter(|r| r.key_str().as_deref() == Some(key))
            .map(|r| r.partition)
            .collect();
        parts.dedup();
        assert_eq!(parts.len(), 1, "{key} spread over {parts:?}");
    }
    Ok(())
}

#[tokio::test]
async fn tansu_group_consumer_config_reads() -> TestResult {
    let broker = TansuBroker::start()?;
    let admin: AdminClient<DefaultClientContext> = broker.client_config().create()?;
    for result in admin
        .create_topics(
            &[NewTopic::new("grouped", 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?
    {
        result.map_err(|(topic, code)| format!("create_topics({topic}) failed: {code:?}"))?;
    }
    kafka::produce(
        &broker.bootstrap(),
        "grouped",
        &[(None::<&str>, "a"), (None, "b")],
    )
    .await?;

    let consumer: rdkafka::consumer::StreamConsumer =
        broker.consumer_config(Some("testkit-group")).create()?;
    consumer.subscribe(&["grouped"])?;
    let mut got = Vec::new();
    while got.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await??;
        got.push(rdkafka::Message::payload(&message).map(<[u8]>::to_vec));
    }
    assert_eq!(got, vec![Some(b"a".to_vec()), Some(b"b".to_vec())]);
    Ok(())
}

#[tokio::test]
async fn tansu_kill_makes_the_broker_unreachable() -> TestResult {
    let mut broker = TansuBroker::start()?;
    assert!(broker.is_running());
    assert!(
        broker
            .command_line()
            .contains("--storage-engine memory://tansu/")
    );
    let port = broker.port();
    broker.kill()?;
    assert!(!broker.is_running());
    assert!(!port_open(port), "tansu port {port} open after kill");

    let consumer: BaseConsumer = broker.client_config().create()?;
    let metadata = tokio::task::spawn_blocking(move || {
        consumer
            .fetch_metadata(None, Duration::from_secs(2))
            .map(|_| ())
    })
    .await?;
    assert!(metadata.is_err(), "metadata from a killed broker");
    Ok(())
}

// -------------------------------------------------------------------- mock

#[tokio::test]
async fn mock_round_trip_with_headers() -> TestResult {
    let mock = MockKafka::new(3)?;
    mock.create_topic("events", 4, 3)?;

    let producer: FutureProducer = kafka::producer_config(&mock.bootstrap()).create()?;
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "content-type",
            value: Some("application/json"),
        })
        .insert(Header::<&[u8]> {
            key: "nothing",
            value: None,
        });
    producer
        .send(
            FutureRecord::to("events")
                .key("h")
                .payload("{}")
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    drop(producer);

    kafka::produce(
        &mock.bootstrap(),
        "events",
        &[(Some("a"), "1"), (None, "2"), (Some("c"), "3")],
    )
    .await?;

    let consumed =
        kafka::consume_all(&mock.bootstrap(), "events", 4, Duration::from_secs(20)).await?;
    let with_headers: Vec<&ConsumedRecord> = consumed
        .iter()
        .filter(|r| r.key_str().as_deref() == Some("h"))
        .collect();
    assert_eq!(with_headers.len(), 1);
    assert_eq!(
        with_headers[0].header("content-type"),
        Some(&b"application/json"[..])
    );
    assert_eq!(
        with_headers[0].headers,
        vec![
            (
                "content-type".to_owned(),
                Some(b"application/json".to_vec())
            ),
            ("nothing".to_owned(), None),
        ]
    );
    let mut payloads: Vec<String> = consumed.iter().filter_map(|r| r.payload_str()).collect();
    payloads.sort();
    assert_eq!(payloads, ["1", "2", "3", "{}"]);
    // Sorted by partition, then offset.
    let order: Vec<(i32, i64)> = consumed.iter().map(|r| (r.partition, r.offset)).collect();
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(order, sorted);
    Ok(())
}

#[tokio::test]
async fn mock_broker_down_fails_produce_until_up() -> TestResult {
    let mock = MockKafka::new(1)?;
    mock.create_topic("outage", 1, 1)?;
    kafka::produce(&mock.bootstrap(), "outage", &[(None::<&str>, "before")]).await?;

    mock.broker_down(1)?;
    let mut config = kafka::producer_config(&mock.bootstrap());
    config.set("message.timeout.ms", "1500");
    let err = kafka::produce_with(&config, "outage", &[(None::<&str>, "during")])
        .await
        .err()
        .ok_or("produce succeeded while the only broker was down")?;
    match &err {
        HarnessError::Kafka { source, .. } => assert!(
            matches!(
                source,
                KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)
            ),
            "unexpected error {err}"
        ),
        other => return Err(format!("unexpected error {other}").into()),
    }

    mock.broker_up(1)?;
    kafka::produce(&mock.bootstrap(), "outage", &[(None::<&str>, "after")]).await?;
    let consumed =
        kafka::consume_all(&mock.bootstrap(), "outage", 2, Duration::from_secs(20)).await?;
    let payloads: Vec<String> = consumed.iter().filter_map(|r| r.payload_str()).collect();
    assert_eq!(payloads, ["before", "after"]);
    Ok(())
}

#[tokio::test]
async fn consume_all_reports_what_arrived_when_incomplete() -> TestResult {
    let mock = MockKafka::new(1)?;
    mock.create_topic("short", 2, 1)?;
    kafka::produce(&mock.bootstrap(), "short", &[(Some("k"), "only")]).await?;
    match kafka::consume_all(&mock.bootstrap(), "short", 2, Duration::from_secs(3)).await {
        Err(HarnessError::Incomplete {
            expected, received, ..
        }) => {
            assert_eq!(expected, 2);
            assert_eq!(received.len(), 1);
            assert_eq!(received[0].payload_str().as_deref(), Some("only"));
        }
        other => return Err(format!("expected Incomplete, got {other:?}").into()),
    }
    Ok(())
}

#[test]
fn free_ports_are_bindable() -> TestResult {
    let port = eventstream_testkit::free_port()?;
    assert_ne!(port, 0);
    let _listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
    Ok(())
}
