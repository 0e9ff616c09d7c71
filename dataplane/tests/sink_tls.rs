//! The sink over TLS against a real PostgreSQL 15 serving TLS with a certificate from a
//! throw-away CA (`TestPostgres::builder().tls_only(true)`): the binary writes rows with
//! `sslmode=require` and `verify-full`, and exits with the cause when the CA is wrong or the URL
//! says `sslmode=disable` to a server that accepts only TLS. The other `sslmode`s, the host-name
//! check, client certificates and a server without TLS are checked against the connector itself.

mod sink_support;

use std::path::Path;
use std::time::Duration;

use eventstream_dataplane::sink::SinkError;
use eventstream_dataplane::sink::connect::{self, Endpoint, SessionTls};
use eventstream_testkit::postgres::TestCa;
use eventstream_testkit::{MockKafka, TestPostgres};
use sink_support::*;

fn tls_setup() -> Result<(MockKafka, TestPostgres), Box<dyn std::error::Error>> {
    let kafka = MockKafka::new(1)?;
    kafka.create_topic(TOPIC, 2, 1)?;
    kafka.create_topic(DLQ, 1, 1)?;
    let pg = TestPostgres::builder().tls_only(true).start()?;
    Ok((kafka, pg))
}

fn ca_file(pg: &TestPostgres) -> Result<std::path::PathBuf, Box<dyn std::error::Error>> {
    Ok(pg.ca_file().ok_or("the server has no CA file")?)
}

/// `host` in a URL for `pg`, with `params` as its query.
fn url(pg: &TestPostgres, host: &str, params: &str) -> String {
    format!("postgres://postgres@{host}:{}/postgres?{params}", pg.port())
}

fn verify_full(pg: &TestPostgres, host: &str, ca: &Path) -> String {
    url(
        pg,
        host,
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    )
}

/// Whether every session of the sink (application_name `eventstream-sink`) is encrypted, as the
/// server sees it; `None` when there is none.
fn sink_sessions_encrypted(pg: &TestPostgres) -> Result<Option<bool>, Box<dyn std::error::Error>> {
    let out = pg.psql(
        "postgres",
        "SELECT bool_and(s.ssl)::text FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.application_name = 'eventstream-sink'",
    )?;
    Ok(match out.trim() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    })
}

/// Produces `n` events and waits until the sink has written them all, exactly once.
async fn write_through(kafka: &MockKafka, sink: &Sink, check_url: &str, n: usize) -> TestResult {
    let mut counts = Default::default();
    produce_range(&kafka.bootstrap(), 0..n, &mut counts).await?;
    wait_rows(sink, check_url, n as i64, Duration::from_secs(60)).await?;
    assert_exactly_once(check_url, &counts_vec(&counts)).await
}

#[tokio::test]
async fn require_encrypts_without_verifying_and_rows_arrive() -> TestResult {
    let (kafka, pg) = tls_setup()?;
    let url = url(&pg, "127.0.0.1", "sslmode=require");
    let mut sink = Sink::start(&config(&kafka.bootstrap(), ", maxDelay: 50ms"), &url)?;
    write_through(&kafka, &sink, &url, 2_000).await?;
    assert_eq!(sink_sessions_encrypted(&pg)?, Some(true));
    let log = sink.log();
    assert!(
        log.contains("TLS, server certificate not verified (sslmode=require)"),
        "the session's link is logged: {log}"
    );
    let status = sink.terminate().await?;
    assert!(status.success(), "{status}\n{}", sink.log());
    Ok(())
}

#[tokio::test]
async fn verify_full_with_the_right_ca_writes_rows() -> TestResult {
    let (kafka, pg) = tls_setup()?;
    let ca = ca_file(&pg)?;
    // `localhost` is a DNS name of the server certificate (and 127.0.0.1 an IP address of it).
    let url = verify_full(&pg, "localhost", &ca);
    let mut sink = Sink::start(&config(&kafka.bootstrap(), ", maxDelay: 50ms"), &url)?;
    write_through(&kafka, &sink, &url, 2_000).await?;
    assert_eq!(sink_sessions_encrypted(&pg)?, Some(true));
    let log = sink.log();
    let want = format!(
        "TLS, certificate and host name verified against sslrootcert={} (sslmode=verify-full)",
        ca.display()
    );
    assert!(log.contains(&want), "{want}: {log}");
    let status = sink.terminate().await?;
    assert!(status.success(), "{status}\n{}", sink.log());
    Ok(())
}

#[tokio::test]
async fn verify_full_with_a_wrong_ca_exits_naming_the_cause() -> TestResult {
    let (kafka, pg) = tls_setup()?;
    let other = tempfile::tempdir()?;
    let wrong = other.path().join("other-ca.crt");
    TestCa::new("some other CA")?.write_cert(&wrong)?;
    let url = verify_full(&pg, "127.0.0.1", &wrong).replace("postgres@", "postgres:s3cret@");
    let mut sink = Sink::start(&config(&kafka.bootstrap(), ""), &url)?;
    let status = sink.exit_status(Duration::from_secs(20)).await?;
    assert!(!status.success(), "exits: {status}");
    let log = sink.log();
    let want = format!(
        "TLS handshake with PostgreSQL at postgres@127.0.0.1:{}/postgres failed (sslmode=verify-full): \
         the server's certificate is not signed by a CA in sslrootcert={}",
        pg.port(),
        wrong.display()
    );
    assert!(log.contains(&want), "{want}: {log}");
    assert!(!log.contains("s3cret"), "the password never appears: {log}");
    let table = pg.psql("postgres", "SELECT to_regclass('frames') IS NULL")?;
    assert_eq!(table.trim(), "t", "nothing was created");
    Ok(())
}

#[tokio::test]
async fn disable_against_a_tls_only_server_exits_naming_the_cause() -> TestResult {
    let (kafka, pg) = tls_setup()?;
    let url = url(&pg, "127.0.0.1", "sslmode=disable");
    let mut sink = Sink::start(&config(&kafka.bootstrap(), ""), &url)?;
    let status = sink.exit_status(Duration::from_secs(20)).await?;
    assert!(!status.success(), "exits: {status}");
    let log = sink.log();
    let want = format!(
        "PostgreSQL at postgres@127.0.0.1:{}/postgres refused a connection without TLS",
        pg.port()
    );
    assert!(log.contains(&want), "{want}: {log}");
    assert!(
        log.contains("set sslmode=require or verify-full instead of sslmode=disable"),
        "{log}"
    );
    Ok(())
}

async fn open(url: &str) -> Result<SessionTls, SinkError> {
    let endpoint = Endpoint::parse(url, "TEST_URL")?;
    let (client, tls) = connect::connect(&endpoint).await?;
    client
        .simple_query("SELECT 1")
        .await
        .map_err(|source| SinkError::Database {
            action: "checking the session",
            source,
        })?;
    Ok(tls)
}

#[tokio::test]
async fn every_sslmode_against_a_tls_only_server() -> TestResult {
    let pg = TestPostgres::builder().tls_only(true).start()?;
    let ca = ca_file(&pg)?;
    let ca = ca.display();

    // prefer (the default) and allow end up encrypted; require does not verify.
    for params in ["", "sslmode=prefer", "sslmode=allow", "sslmode=require"] {
        let tls = open(&url(&pg, "127.0.0.1", params)).await?;
        assert!(tls.is_tls(), "{params}: {tls}");
    }

    // A name the certificate does not carry: host= for the check, hostaddr= for the socket.
    let elsewhere = |mode: &str| {
        format!(
            "postgres://postgres@db.example:{}/postgres?hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={ca}",
            pg.port()
        )
    };
    let tls = open(&elsewhere("verify-ca")).await?;
    assert_eq!(
        tls.to_string(),
        format!("TLS, certificate chain verified against sslrootcert={ca} (sslmode=verify-ca)")
    );
    let err = open(&elsewhere("verify-full"))
        .await
        .expect_err("the host name is checked");
    assert!(!err.is_retryable(), "{err}");
    assert_eq!(err.kind(), "tls");
    assert!(
        err.to_string()
            .contains("the server's certificate is not valid for host db.example"),
        "{err}"
    );

    // With a root certificate, require verifies the chain (as libpq does).
    let other = tempfile::tempdir()?;
    let wrong = other.path().join("other-ca.crt");
    TestCa::new("another CA")?.write_cert(&wrong)?;
    let err = open(&url(
        &pg,
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={}", wrong.display()),
    ))
    .await
    .expect_err("the chain is checked");
    assert!(err.to_string().contains("not signed by a CA"), "{err}");

    // prefer falls back to no TLS when the handshake fails, which this server refuses: the
    // handshake's failure is reported.
    let err = open(&url(
        &pg,
        "127.0.0.1",
        &format!("sslmode=prefer&sslrootcert={}", wrong.display()),
    ))
    .await
    .expect_err("the chain is checked");
    assert!(err.to_string().contains("not signed by a CA"), "{err}");

    let err = open(&url(&pg, "127.0.0.1", "sslmode=disable"))
        .await
        .expect_err("refused");
    assert!(matches!(err, SinkError::TlsRequired { .. }), "{err}");
    assert!(!err.is_retryable());
    Ok(())
}

#[tokio::test]
async fn a_server_without_tls() -> TestResult {
    let pg = TestPostgres::start()?;
    let tls = open(&url(&pg, "127.0.0.1", "sslmode=prefer")).await?;
    assert!(!tls.is_tls(), "{tls}");
    assert_eq!(tls.to_string(), "no TLS (sslmode=prefer)");
    for mode in ["require", "verify-full"] {
        let err = open(&url(&pg, "127.0.0.1", &format!("sslmode={mode}")))
            .await
            .expect_err("TLS is required");
        assert_eq!(
            err.to_string(),
            format!(
                "PostgreSQL at postgres@127.0.0.1:{}/postgres does not offer TLS, and sslmode={mode} requires it \
                 (enable ssl on the server, or set sslmode=prefer or disable)",
                pg.port()
            )
        );
        assert!(!err.is_retryable());
    }
    Ok(())
}

#[tokio::test]
async fn client_certificates() -> TestResult {
    let pg = TestPostgres::builder().tls_client_certs(true).start()?;
    let ca = ca_file(&pg)?;
    let (cert, key) = pg.client_cert_files().ok_or("client certificate files")?;
    let with_cert = url(
        &pg,
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
            ca.display(),
            cert.display(),
            key.display()
        ),
    );
    assert!(open(&with_cert).await?.is_tls());

    let without = verify_full(&pg, "localhost", &ca);
    let err = open(&without).await.expect_err("a certificate is required");
    assert!(matches!(err, SinkError::Authentication { .. }), "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_server_that_never_answers_the_tls_request_times_out() -> TestResult {
    // Accepts the TCP connection and then says nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().map_while(Result::ok) {
            held.push(stream);
        }
    });
    let started = std::time::Instant::now();
    let err = open(&format!(
        "postgres://postgres@127.0.0.1:{port}/postgres?sslmode=require&connect_timeout=1"
    ))
    .await
    .expect_err("no answer");
    assert!(matches!(err, SinkError::ConnectTimeout { .. }), "{err}");
    assert!(err.is_retryable(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.to_string().contains(&format!(
            "PostgreSQL at postgres@127.0.0.1:{port}/postgres did not complete the connection"
        )),
        "{err}"
    );
    Ok(())
}
