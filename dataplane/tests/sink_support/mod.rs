//! Shared by the `sink_*` integration tests: the `eventstream-dataplane sink` binary as a child
//! process with its log captured, its config, and checks of the rows in PostgreSQL.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventstream_dataplane::sink::connect::Endpoint;
use eventstream_testkit::{MockKafka, TestPostgres, free_port};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::Client;

pub const TOPIC: &str = "frames";
pub const DLQ: &str = "frames.dlq";
pub const GROUP: &str = "eventstream.test.frames.sink";

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Events table with the sink's shape but no unique key, so that a duplicate would be stored and
/// counted instead of refused (see `sink_integration.rs`).
pub const TABLE_WITHOUT_KEY: &str = r#"CREATE TABLE frames (
    "partition" integer NOT NULL, "offset" bigint NOT NULL, key text,
    ts timestamptz NOT NULL, payload jsonb, headers jsonb,
    ingested_at timestamptz NOT NULL DEFAULT now())"#;

/// The sink binary as a child process; its stderr is collected in [`Sink::log`]; killed on drop.
pub struct Sink {
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
    _config: tempfile::NamedTempFile,
}

impl Sink {
    pub fn start(config: &str, url: &str) -> Result<Self, Box<dyn std::error::Error>> {
        Self::start_with_env(config, url, &[])
    }

    /// [`Sink::start`] with extra environment variables (`POD_NAME`, …).
    pub fn start_with_env(
        config: &str,
        url: &str,
        env: &[(&str, &str)],
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let port = free_port()?;
        let config = config.replace("LISTEN_PORT", &port.to_string());
        let mut file = tempfile::NamedTempFile::new()?;
        std::io::Write::write_all(&mut file, config.as_bytes())?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_eventstream-dataplane"))
            .args(["sink", "--config"])
            .arg(file.path())
            .env("EVENTSTREAM_POSTGRES_URL", url)
            .env_remove("PGSSLMODE")
            .env_remove("PGSSLROOTCERT")
            .env_remove("PGSSLCERT")
            .env_remove("PGSSLKEY")
            .env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn")
            .env("NO_COLOR", "1")
            .env_remove("POD_NAME")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("EVENTSTREAM_GROUP_INSTANCE_ID")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut log = log.lock();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        Ok(Self {
            child,
            port,
            log,
            _config: file,
        })
    }

    pub fn log(&self) -> String {
        self.log.lock().clone()
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL: no flush, no commit, no goodbye.
    pub fn kill9(&mut self) -> std::io::Result<()> {
        self.child.kill()?;
        self.child.wait().map(|_| ())
    }

    /// SIGTERM and wait for a clean exit.
    pub async fn terminate(
        &mut self,
    ) -> Result<std::process::ExitStatus, Box<dyn std::error::Error>> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!("sink did not stop after SIGTERM:\n{}", self.log()).into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn exit_status(
        &mut self,
        within: Duration,
    ) -> Result<std::process::ExitStatus, Box<dyn std::error::Error>> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                // Let the reader thread take the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!("sink still running after {within:?}:\n{}", self.log()).into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn get(&self, path: &str) -> Result<(u16, String), Box<dyn std::error::Error>> {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: sink\r\n\r\n").as_bytes())
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad HTTP answer: {text}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// The value of a metric line starting with `prefix` (name and labels).
    pub async fn metric(&self, prefix: &str) -> Result<Option<f64>, Box<dyn std::error::Error>> {
        let (_, body) = self.get("/metrics").await?;
        Ok(body
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok()))
    }

    pub async fn wait_until<F, Fut>(&self, what: &str, within: Duration, mut check: F) -> TestResult
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + within;
        while !check().await {
            if Instant::now() > deadline {
                return Err(
                    format!("timed out waiting for {what}; sink log:\n{}", self.log()).into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn config(bootstrap: &str, extra_sink: &str) -> String {
    format!(
        "stream: {{ namespace: test, name: frames }}
kafka:
  bootstrapServers: '{bootstrap}'
  properties:
    fetch.wait.max.ms: '5'
    session.timeout.ms: '6000'
    heartbeat.interval.ms: '500'
    statistics.interval.ms: '1000'
topic: {TOPIC}
server: {{ listen: '127.0.0.1:LISTEN_PORT', shutdownGrace: 10s }}
sink: {{ table: frames, deadLetterTopic: {DLQ}, consumerGroup: {GROUP}{extra_sink} }}
"
    )
}

/// A client session for checks; the URL may carry the sink's TLS parameters (`sslmode`,
/// `sslrootcert`, …), which the sink's own connector understands.
pub async fn connect(url: &str) -> Result<Client, Box<dyn std::error::Error>> {
    let endpoint = Endpoint::parse(url, "test URL")?;
    let (client, _tls) = eventstream_dataplane::sink::connect::connect(&endpoint).await?;
    Ok(client)
}

pub async fn count(url: &str) -> i64 {
    // Each poll opens its own connection so that polling survives a database restart.
    match connect(url).await {
        Ok(c) => match c.query_one("SELECT count(*) FROM frames", &[]).await {
            Ok(row) => row.get(0),
            Err(_) => -1,
        },
        Err(_) => -1,
    }
}

pub async fn wait_rows(sink: &Sink, url: &str, at_least: i64, within: Duration) -> TestResult {
    sink.wait_until(&format!("{at_least} rows"), within, || async {
        count(url).await >= at_least
    })
    .await
}

/// Exactly `per_partition[p]` rows per partition, offsets 0..n contiguous, no duplicate, and the
/// stored positions equal to the counts.
pub async fn assert_exactly_once(url: &str, per_partition: &[(i32, i64)]) -> TestResult {
    let c = connect(url).await?;
    let total: i64 = per_partition.iter().map(|(_, n)| n).sum();
    let row = c
        .query_one(
            r#"SELECT count(*), count(DISTINCT ("partition", "offset")) FROM frames"#,
            &[],
        )
        .await?;
    let (rows, distinct): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(distinct, rows, "duplicated rows");
    assert_eq!(rows, total, "row count");
    for (p, n) in per_partition {
        let row = c
            .query_one(
                r#"SELECT count(*), coalesce(min("offset"), -1), coalesce(max("offset"), -1)
                   FROM frames WHERE "partition" = $1"#,
                &[p],
            )
            .await?;
        let (count, min, max): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(
            (count, min, max),
            (*n, 0, n - 1),
            "partition {p}: count, min, max offset"
        );
        let stored: i64 = c
            .query_one(
                "SELECT next_offset FROM eventstream_offsets WHERE stream = 'test/frames' AND topic = $1 AND \"partition\" = $2",
                &[&TOPIC, p],
            )
            .await?
            .get(0);
        assert_eq!(stored, *n, "partition {p}: stored next_offset");
    }
    Ok(())
}

pub fn event(i: usize) -> (Option<String>, String) {
    let key = format!("session-{}", i % 97);
    let payload = format!(
        r#"{{"seq":{i},"sessionId":"{key}","eventType":"frame","speed":{},"pad":"{}"}}"#,
        i % 300,
        "x".repeat(120)
    );
    (Some(key), payload)
}

pub async fn produce_range(
    bootstrap: &str,
    range: std::ops::Range<usize>,
    counts: &mut std::collections::BTreeMap<i32, i64>,
) -> TestResult {
    let records: Vec<(Option<String>, String)> = range.map(event).collect();
    for chunk in records.chunks(20_000) {
        for (p, _) in eventstream_testkit::produce(bootstrap, TOPIC, chunk).await? {
            *counts.entry(p).or_default() += 1;
        }
    }
    Ok(())
}

/// The mock cluster keeps at most 5 MiB per partition (older records are trimmed, as retention
/// would), so 100 000 events of ~200 bytes need at least 8 partitions.
pub fn setup(
    partitions: i32,
) -> Result<(MockKafka, TestPostgres, String), Box<dyn std::error::Error>> {
    let kafka = MockKafka::new(1)?;
    kafka.create_topic(TOPIC, partitions, 1)?;
    kafka.create_topic(DLQ, 1, 1)?;
    let pg = TestPostgres::start()?;
    let url = pg.url();
    Ok((kafka, pg, url))
}

pub fn counts_vec(counts: &std::collections::BTreeMap<i32, i64>) -> Vec<(i32, i64)> {
    counts.iter().map(|(p, n)| (*p, *n)).collect()
}
