//! The Kafka admin adapter against a real broker process (tansu): create, drift correction,
//! shrink refusal, CreatePartitions refusal (tansu does not implement it), consumer-group lag,
//! offset reset, group and topic deletion, unreachable and unresolvable brokers.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use eventstream_operator::kafka_admin::incremental::{
    AlterError, ConfigOp, incremental_alter_configs,
};
use eventstream_operator::kafka_admin::{
    DesiredTopic, KafkaAdmin, KafkaAdminError, KafkaConnection, RdKafkaAdmin, ResetTo, TopicError,
    create_if_missing, ensure_topic,
};
use eventstream_testkit::TansuBroker;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

fn desired(name: &str, partitions: i32) -> DesiredTopic {
    DesiredTopic {
        name: name.into(),
        partitions,
        replication_factor: Some(1),
        configs: BTreeMap::from([
            ("compression.type".into(), "lz4".into()),
            ("retention.ms".into(), "604800000".into()),
        ]),
        managed: true,
    }
}

fn admin() -> RdKafkaAdmin {
    RdKafkaAdmin::new(Duration::from_secs(10))
}

/// What an administrator does with `kafka-configs.sh --alter` (tansu only speaks the
/// incremental form).
async fn set_by_hand(broker: &TansuBroker, topic: &str, key: &str, value: &str) {
    let ops = [ConfigOp::Set(key.into(), value.into())];
    let conn = KafkaConnection::plaintext(broker.bootstrap());
    incremental_alter_configs(&conn, topic, &ops, Duration::from_secs(5))
        .await
        .expect("alter by hand");
}

#[tokio::test]
async fn topic_lifecycle_against_tansu() {
    let broker = TansuBroker::start().expect("tansu starts");
    let conn = KafkaConnection::plaintext(broker.bootstrap());
    let admin = admin();

    // Create.
    let report = ensure_topic(&admin, &conn, &desired("orders", 3))
        .await
        .expect("created");
    assert!(report.created);
    assert_eq!(report.topic.partitions, 3);
    assert_eq!(
        report.topic.configs.get("retention.ms").map(String::as_str),
        Some("604800000")
    );
    assert_eq!(
        report
            .topic
            .configs
            .get("compression.type")
            .map(String::as_str),
        Some("lz4")
    );

    // Idempotent: a second pass changes nothing.
    let report = ensure_topic(&admin, &conn, &desired("orders", 3))
        .await
        .expect("in sync");
    assert!(
        !report.created && report.corrected.is_empty() && report.raised_from.is_none(),
        "{report:?}"
    );

    // Drift made by hand is set back, and an override the spec does not have is removed.
    set_by_hand(&broker, "orders", "retention.ms", "1000").await;
    set_by_hand(&broker, "orders", "max.message.bytes", "2048").await;
    let view = admin
        .describe(&conn, "orders")
        .await
        .unwrap()
        .topic
        .unwrap();
    assert_eq!(view.configs["retention.ms"], "1000", "the hand edit landed");
    let report = ensure_topic(&admin, &conn, &desired("orders", 3))
        .await
        .expect("corrected");
    let drift: Vec<String> = report.corrected.iter().map(ToString::to_string).collect();
    assert!(
        drift.contains(&"retention.ms: 1000 → 604800000".to_string()),
        "{drift:?}"
    );
    let view = admin
        .describe(&conn, "orders")
        .await
        .unwrap()
        .topic
        .unwrap();
    assert_eq!(view.configs["retention.ms"], "604800000");
    // tansu reports no config source (every entry is "default"), so the removal of overrides the
    // spec does not set (max.message.bytes here) cannot be observed on it; `plan_topic`'s unit
    // tests cover that branch.

    // The spec's retention changes: applied.
    let mut longer = desired("orders", 3);
    longer
        .configs
        .insert("retention.ms".into(), "86400000".into());
    let report = ensure_topic(&admin, &conn, &longer).await.expect("altered");
    assert_eq!(report.topic.configs["retention.ms"], "86400000");

    // Shrink: refused before any request that could change the topic.
    let err = ensure_topic(&admin, &conn, &desired("orders", 2))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "PartitionDecreaseRejected", "{err}");
    assert_eq!(
        admin
            .describe(&conn, "orders")
            .await
            .unwrap()
            .topic
            .unwrap()
            .partitions,
        3
    );

    // Raise: tansu has no CreatePartitions; its refusal must be a clear, typed error.
    let err = ensure_topic(&admin, &conn, &desired("orders", 5))
        .await
        .unwrap_err();
    eprintln!("tansu's answer to CreatePartitions: {err}");
    assert!(
        matches!(
            err,
            TopicError::PartitionIncreaseFailed { from: 3, to: 5, .. }
        ) || matches!(err, TopicError::Kafka(_)),
        "{err:?}"
    );
    assert!(!err.to_string().is_empty());

    // Unmanaged: only checked.
    let unmanaged = DesiredTopic {
        managed: false,
        ..desired("not-there", 1)
    };
    assert_eq!(
        ensure_topic(&admin, &conn, &unmanaged)
            .await
            .unwrap_err()
            .reason(),
        "TopicNotFound"
    );

    // The dead-letter path: created once with one partition, then left alone (even its drift).
    let dlq = DesiredTopic {
        partitions: 1,
        ..desired("orders.dlq", 1)
    };
    assert!(
        create_if_missing(&admin, &conn, &dlq)
            .await
            .expect("created")
    );
    set_by_hand(&broker, "orders.dlq", "retention.ms", "1000").await;
    assert!(
        !create_if_missing(&admin, &conn, &dlq)
            .await
            .expect("exists")
    );
    let view = admin
        .describe(&conn, "orders.dlq")
        .await
        .unwrap()
        .topic
        .unwrap();
    assert_eq!(
        (view.partitions, view.configs["retention.ms"].as_str()),
        (1, "1000")
    );
    let unmanaged = DesiredTopic {
        managed: false,
        ..desired("not-there.dlq", 1)
    };
    assert_eq!(
        create_if_missing(&admin, &conn, &unmanaged)
            .await
            .unwrap_err()
            .reason(),
        "TopicNotFound"
    );

    // Delete; deleting again is fine.
    admin.delete_topic(&conn, "orders").await.expect("deleted");
    admin
        .delete_topic(&conn, "orders")
        .await
        .expect("deleting a missing topic is fine");
    let mut gone = false;
    for _ in 0..50 {
        if admin
            .describe(&conn, "orders")
            .await
            .unwrap()
            .topic
            .is_none()
        {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "topic still listed after DeleteTopics");
}

#[tokio::test]
async fn consumer_group_lag_reset_and_delete() {
    let broker = TansuBroker::start().expect("tansu starts");
    let conn = KafkaConnection::plaintext(broker.bootstrap());
    let admin = admin();
    ensure_topic(&admin, &conn, &desired("frames", 1))
        .await
        .expect("created");
    // One produce call per record: tansu reports the high watermark as the last batch's base
    // offset + 1, so multi-record batches would under-report it (a tansu quirk, not ours).
    for i in 0..5 {
        let record = [(None::<&str>, format!("r{i}"))];
        eventstream_testkit::produce(&broker.bootstrap(), "frames", &record)
            .await
            .expect("produced");
    }

    let group = "eventstream.racing.telemetry.sink";
    assert_eq!(
        admin.group_lag(&conn, group, "frames").await.unwrap(),
        None,
        "nothing committed yet"
    );

    // A sink that persisted two records commits offset 2.
    let consumer: BaseConsumer = broker.consumer_config(Some(group)).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("frames", 0, Offset::Offset(2))
        .unwrap();
    consumer.commit(&tpl, CommitMode::Sync).expect("commit");
    drop(consumer);
    assert_eq!(
        admin.group_lag(&conn, group, "frames").await.unwrap(),
        Some(3)
    );

    let latest = admin
        .reset_group(&conn, group, "frames", ResetTo::Latest)
        .await
        .expect("reset latest");
    assert_eq!(
        latest,
        BTreeMap::from([(0, 5)]),
        "the offsets the sink is told"
    );
    assert_eq!(
        admin.group_lag(&conn, group, "frames").await.unwrap(),
        Some(0)
    );
    let earliest = admin
        .reset_group(&conn, group, "frames", ResetTo::Earliest)
        .await
        .expect("reset earliest");
    assert_eq!(earliest, BTreeMap::from([(0, 0)]));
    assert_eq!(
        admin.group_lag(&conn, group, "frames").await.unwrap(),
        Some(5)
    );

    admin
        .delete_group(&conn, group)
        .await
        .expect("group deleted");
    admin
        .delete_group(&conn, group)
        .await
        .expect("deleting a missing group is fine");
    assert_eq!(admin.group_lag(&conn, group, "frames").await.unwrap(), None);
}

#[tokio::test]
async fn unreachable_and_unresolvable_brokers_are_named() {
    let admin = RdKafkaAdmin::new(Duration::from_secs(2));
    let port = eventstream_testkit::free_port().unwrap();
    let conn = KafkaConnection::plaintext(format!("127.0.0.1:{port}"));
    // The call ends with an error instead of hanging a reconcile: the bound is generous (the
    // admin timeout is 2 s) so that a busy machine cannot fail it, only a hang can.
    let err = tokio::time::timeout(Duration::from_secs(60), admin.describe(&conn, "t"))
        .await
        .expect("describe of an unreachable broker ends, bounded by the admin timeout")
        .unwrap_err();
    assert!(
        matches!(err, KafkaAdminError::Unreachable { .. }),
        "{err:?}"
    );

    let conn = KafkaConnection::plaintext("kafka.does-not-exist.invalid:9092");
    let err = ensure_topic(&admin, &conn, &desired("t", 1))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "KafkaUnreachable");
    assert!(err.is_transient());
    assert!(err.to_string().contains("does not resolve"), "{err}");
}

/// A SASL_SSL listener in front of tansu (which has neither): TLS with a certificate from a
/// throw-away CA, then SaslHandshake and SaslAuthenticate PLAIN checked against `user`/`password`,
/// then the bytes go to tansu as they are.
async fn sasl_ssl_front(
    tansu: String,
    user: &'static str,
    password: &'static str,
) -> (u16, String) {
    use kafka_protocol::messages::{
        ApiKey, RequestHeader, ResponseHeader, SaslAuthenticateRequest, SaslAuthenticateResponse,
        SaslHandshakeRequest, SaslHandshakeResponse,
    };
    use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let ca = eventstream_testkit::postgres::TestCa::new("kafka-ca").unwrap();
    let leaf = ca.issue("localhost", &["localhost"]).unwrap();
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();

    async fn read_frame<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> bytes::Bytes {
        let len = s.read_i32().await.unwrap();
        let mut body = vec![0; usize::try_from(len).unwrap()];
        s.read_exact(&mut body).await.unwrap();
        bytes::Bytes::from(body)
    }
    async fn reply<S: tokio::io::AsyncWrite + Unpin, R: Encodable + HeaderVersion>(
        s: &mut S,
        header: &RequestHeader,
        response: &R,
    ) {
        let mut buf = bytes::BytesMut::new();
        let mut h = ResponseHeader::default();
        h.correlation_id = header.correlation_id;
        h.encode(&mut buf, R::header_version(header.request_api_version))
            .unwrap();
        response
            .encode(&mut buf, header.request_api_version)
            .unwrap();
        s.write_all(&(buf.len() as i32).to_be_bytes())
            .await
            .unwrap();
        s.write_all(&buf).await.unwrap();
    }

    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let tansu = tansu.clone();
            tokio::spawn(async move {
                let mut tls = acceptor.accept(tcp).await.unwrap();
                let mut frame = read_frame(&mut tls).await;
                let header =
                    kafka_protocol::protocol::decode_request_header_from_buffer(&mut frame)
                        .unwrap();
                assert_eq!(header.request_api_key, ApiKey::SaslHandshake as i16);
                let hs =
                    SaslHandshakeRequest::decode(&mut frame, header.request_api_version).unwrap();
                assert_eq!(hs.mechanism.as_str(), "PLAIN");
                let mut answer = SaslHandshakeResponse::default();
                answer.mechanisms = vec![StrBytes::from_static_str("PLAIN")];
                reply(&mut tls, &header, &answer).await;

                let mut frame = read_frame(&mut tls).await;
                let header =
                    kafka_protocol::protocol::decode_request_header_from_buffer(&mut frame)
                        .unwrap();
                assert_eq!(header.request_api_key, ApiKey::SaslAuthenticate as i16);
                let auth = SaslAuthenticateRequest::decode(&mut frame, header.request_api_version)
                    .unwrap();
                let expected = format!("\0{user}\0{password}");
                let mut answer = SaslAuthenticateResponse::default();
                if auth.auth_bytes.as_ref() != expected.as_bytes() {
                    answer.error_code = 58;
                    answer.error_message =
                        Some(StrBytes::from_static_str("Invalid username or password"));
                    reply(&mut tls, &header, &answer).await;
                    return;
                }
                reply(&mut tls, &header, &answer).await;
                let mut upstream = tokio::net::TcpStream::connect(&tansu).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    (port, ca.cert_pem())
}

#[tokio::test]
async fn incremental_alter_configs_speaks_sasl_over_tls() {
    use eventstream_crds::v1alpha1::{SaslMechanism, SecurityProtocol};

    let broker = TansuBroker::start().expect("tansu starts");
    let plain = KafkaConnection::plaintext(broker.bootstrap());
    let admin = admin();
    ensure_topic(&admin, &plain, &desired("secured", 1))
        .await
        .expect("created");
    let (port, ca_pem) = sasl_ssl_front(broker.bootstrap(), "operator", "s3cret").await;
    let secured = |password: &str| KafkaConnection {
        bootstrap: format!("localhost:{port}"),
        security_protocol: SecurityProtocol::SaslSsl,
        sasl_mechanism: Some(SaslMechanism::Plain),
        username: Some("operator".into()),
        password: Some(password.into()),
        ca_pem: Some(ca_pem.clone()),
    };
    let ops = [ConfigOp::Set("retention.ms".into(), "1234".into())];

    incremental_alter_configs(&secured("s3cret"), "secured", &ops, Duration::from_secs(10))
        .await
        .expect("altered over SASL_SSL");
    let view = admin
        .describe(&plain, "secured")
        .await
        .unwrap()
        .topic
        .unwrap();
    assert_eq!(view.configs["retention.ms"], "1234");

    let err =
        incremental_alter_configs(&secured("wrong"), "secured", &ops, Duration::from_secs(10))
            .await
            .unwrap_err();
    assert!(
        matches!(err, AlterError::Refused { code: 58, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("Invalid username or password"),
        "{err}"
    );

    // A CA that did not sign the listener's certificate: the handshake fails, nothing is sent.
    let other_ca = eventstream_testkit::postgres::TestCa::new("other").unwrap();
    let mut untrusted = secured("s3cret");
    untrusted.ca_pem = Some(other_ca.cert_pem());
    let err = incremental_alter_configs(&untrusted, "secured", &ops, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("TLS handshake failed"), "{err}");
}
