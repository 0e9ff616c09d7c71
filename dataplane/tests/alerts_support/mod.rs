//! Shared by the `alerts_*` integration tests: the evaluator's config, the evaluator binary as a
//! child process, reading a topic to its end with either isolation level, and the model: what the
//! pure engine says the transitions of a set of input records are.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventstream_crds::config::DataplaneConfig;
use eventstream_dataplane::alerts::engine::{Engine, Input, compile_rules};
use eventstream_dataplane::alerts::event::{self, StateRecord};
use eventstream_testkit::{ConsumedRecord, free_port, kafka::consumer_config};
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

pub const TOPIC: &str = "ops.metrics";
pub const ALERTS: &str = "ops.metrics.alerts";
pub const STATE: &str = "ops.metrics.alerts.state";

/// A config with seed 003's thresholds (cpu > 75 warning, > 90 critical) plus a memory rule
/// with hysteresis and one with `for`.
pub fn config(bootstrap: &str, listen_port: u16, commit_interval: &str, max_batch: u32) -> String {
    format!(
        r#"
stream: {{ namespace: ops, name: metrics }}
kafka: {{ bootstrapServers: '{bootstrap}', properties: {{ fetch.wait.max.ms: '5' }} }}
topic: {TOPIC}
server: {{ listen: '127.0.0.1:{listen_port}' }}
alerts:
  topic: {ALERTS}
  stateTopic: {STATE}
  consumerGroup: eventstream.ops.metrics.alerts
  transactionalId: eventstream.ops.metrics.alerts
  key: /serverId
  startFrom: earliest
  commitInterval: {commit_interval}
  maxBatch: {max_batch}
  rules:
    - {{ name: cpu-warning, when: 'data.metrics.cpu > 75.0', severity: warning }}
    - {{ name: cpu-critical, when: 'data.metrics.cpu > 90.0', severity: critical }}
    - {{ name: memory-critical, when: 'data.metrics.memory > 90.0', clearWhen: 'data.metrics.memory < 80.0', severity: critical }}
    - {{ name: disk-sustained, when: 'data.metrics.disk > 80.0', severity: warning, for: 50ms }}
"#
    )
}

pub fn parse(config: &str) -> DataplaneConfig {
    match DataplaneConfig::from_yaml(config) {
        Ok(c) => c,
        Err(e) => panic!("test config: {e}"),
    }
}

/// A metrics sample of seed 003's shape.
pub fn sample(server: u32, cpu: f64, memory: f64, disk: f64) -> (Option<String>, String) {
    (
        Some(server.to_string()),
        format!(
            r#"{{"serverId":{server},"metrics":{{"cpu":{cpu},"memory":{memory},"disk":{disk}}}}}"#
        ),
    )
}

/// A deterministic, seeded stream of samples that crosses every threshold many times.
pub fn samples(seed: u64, servers: u32, count: usize) -> Vec<(Option<String>, String)> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    (0..count)
        .map(|_| {
            let server = next() % servers;
            let cpu = f64::from(next() % 100);
            let memory = f64::from(70 + next() % 30);
            let disk = f64::from(60 + next() % 40);
            sample(server, cpu, memory, disk)
        })
        .collect()
}

/// Reads every partition of `topic` from the beginning to its end (the last stable offset with
/// `read_committed`).
pub fn read_to_end(
    bootstrap: &str,
    topic: &str,
    read_committed: bool,
) -> Result<Vec<ConsumedRecord>, Box<dyn std::error::Error>> {
    let mut config = consumer_config(bootstrap, None);
    config.set("enable.partition.eof", "true").set(
        "isolation.level",
        if read_committed {
            "read_committed"
        } else {
            "read_uncommitted"
        },
    );
    let consumer: BaseConsumer = config.create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut open: std::collections::BTreeSet<i32> = partitions.into_iter().collect();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !open.is_empty() {
        if Instant::now() > deadline {
            return Err(format!("{topic} not read to its end in 60s").into());
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => out.push(ConsumedRecord {
                topic: m.topic().to_string(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                            .collect()
                    })
                    .unwrap_or_default(),
                timestamp: m.timestamp().to_millis(),
            }),
        }
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    Ok(out)
}

/// The last committed checkpoint on the state topic.
pub fn committed_positions(
    bootstrap: &str,
) -> Result<BTreeMap<i32, i64>, Box<dyn std::error::Error>> {
    let mut positions = BTreeMap::new();
    for r in read_to_end(bootstrap, STATE, true)? {
        if let StateRecord::Checkpoint(c) =
            event::read_state(r.key.as_deref(), r.payload.as_deref())?
        {
            positions = c.positions;
        }
    }
    Ok(positions)
}

/// End offset of every partition of `topic`.
pub fn end_offsets(
    bootstrap: &str,
    topic: &str,
) -> Result<BTreeMap<i32, i64>, Box<dyn std::error::Error>> {
    let mut ends = BTreeMap::new();
    for r in read_to_end(bootstrap, topic, false)? {
        let e = ends.entry(r.partition).or_insert(0);
        *e = (*e).max(r.offset + 1);
    }
    Ok(ends)
}

/// Waits until the evaluator's committed checkpoint covers every input record.
pub async fn wait_all_committed(bootstrap: &str, within: Duration) -> TestResult {
    let ends = end_offsets(bootstrap, TOPIC)?;
    let deadline = Instant::now() + within;
    loop {
        let positions = committed_positions(bootstrap)?;
        if ends.iter().all(|(p, e)| positions.get(p) == Some(e)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the evaluator did not commit every input record: ends {ends:?}, checkpoint {positions:?}"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One transition as the tests compare them: alert key, state, source partition and offset.
pub type Seen = (String, String, i32, i64);

/// The transitions the pure engine derives from `input`, partition by partition (every alert
/// key lives in one partition: the samples are keyed by server).
pub fn model(config: &DataplaneConfig, input: &[ConsumedRecord]) -> Vec<Seen> {
    let alerts = config.alerts.clone().expect("alerts section");
    let rules = compile_rules(&alerts).expect("rules compile");
    let mut engine = Engine::new(rules, alerts.key.clone());
    let names: Vec<String> = engine.rules().iter().map(|r| r.name.clone()).collect();
    let mut out = Vec::new();
    let headers = BTreeMap::new();
    for r in input {
        let outcome = engine.process(&Input {
            partition: r.partition,
            offset: r.offset,
            timestamp: r.timestamp.unwrap_or(0),
            key: r.key.as_deref(),
            headers: &headers,
            payload: r.payload.as_deref(),
        });
        engine.commit();
        for f in outcome.transitions {
            out.push((
                event::record_key(&names[f.id.rule], &f.id.key),
                f.transition.state().to_string(),
                r.partition,
                r.offset,
            ));
        }
    }
    sorted(out)
}

/// Transitions read from the alerts topic.
pub fn seen(records: &[ConsumedRecord]) -> Vec<Seen> {
    sorted(
        records
            .iter()
            .map(|r| {
                let v: serde_json::Value =
                    serde_json::from_slice(r.payload.as_deref().unwrap_or_default())
                        .expect("alert events are JSON");
                (
                    r.key_str().unwrap_or_default(),
                    v["state"].as_str().unwrap_or_default().to_string(),
                    v["source"]["partition"].as_i64().unwrap_or(-1) as i32,
                    v["source"]["offset"].as_i64().unwrap_or(-1),
                )
            })
            .collect(),
    )
}

/// Per alert in source order; the comparison ignores how alerts of different keys interleave.
fn sorted(mut v: Vec<Seen>) -> Vec<Seen> {
    v.sort_by(|a, b| (&a.0, a.2, a.3).cmp(&(&b.0, b.2, b.3)));
    v
}

/// Duplicates in a list of transitions.
pub fn duplicates(v: &[Seen]) -> Vec<Seen> {
    let mut counts: BTreeMap<&Seen, usize> = BTreeMap::new();
    for s in v {
        *counts.entry(s).or_default() += 1;
    }
    counts
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(s, _)| s.clone())
        .collect()
}

/// The evaluator binary as a child process; stderr collected; killed on drop.
pub struct Evaluator {
    child: Child,
    pub port: u16,
    log: Arc<Mutex<String>>,
    _config: tempfile::NamedTempFile,
}

impl Evaluator {
    /// Starts `eventstream-dataplane alerts` with `config` (its `server.listen` port is `port`).
    pub fn start(config: &str, port: u16) -> Result<Self, Box<dyn std::error::Error>> {
        let mut file = tempfile::NamedTempFile::new()?;
        std::io::Write::write_all(&mut file, config.as_bytes())?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_eventstream-dataplane"))
            .args(["alerts", "--config"])
            .arg(file.path())
            .env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn")
            .env("NO_COLOR", "1")
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

    /// SIGKILL: no commit, no abort, no goodbye.
    pub fn kill9(&mut self) -> std::io::Result<()> {
        self.child.kill()?;
        self.child.wait().map(|_| ())
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The value of the first sample of metric `name` (exact name, no labels), if served.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name).then(|| value.parse().ok())?
        })
    }
}

impl Drop for Evaluator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn port() -> u16 {
    free_port().expect("a free port")
}

/// The seed of a randomized run: `ALERTS_SEED` or the clock; printed.
pub fn seed() -> u64 {
    let seed = std::env::var("ALERTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        });
    eprintln!("ALERTS_SEED={seed}");
    seed
}

/// SIGKILL of a real evaluator process with a transaction open, after earlier transactions
/// committed: 300 records are evaluated and committed (one full batch); 150 more open a second
/// transaction that holds them, with its transitions already at the broker, when the process is
/// killed; 200 more arrive; a new evaluator starts. Then every transition a `read_committed`
/// reader sees, except the killed transaction's own records, must be exactly the model's: none
/// missing, none twice (a restart that lost the committed state or positions would repeat the
/// first batch's transitions). Returns how many records of the killed transaction that reader
/// still saw; `strict` requires none (a broker that implements transactions).
pub async fn sigkill_scenario(
    boot: &str,
    strict: bool,
) -> Result<usize, Box<dyn std::error::Error>> {
    let seed = seed();
    let port1 = port();
    // A transaction commits at 300 records, or after 50 s: the second one is open for long.
    let text = config(boot, port1, "50s", 300);
    let mut evaluator = Evaluator::start(&text, port1)?;

    let first = samples(seed, 5, 300);
    eventstream_testkit::produce(boot, TOPIC, &first).await?;
    if let Err(e) = wait_all_committed(boot, Duration::from_secs(60)).await {
        return Err(format!("{e}\nevaluator log:\n{}", evaluator.log()).into());
    }
    let committed = read_to_end(boot, ALERTS, false)?;
    let committed_end = committed.iter().map(|r| r.offset).max().unwrap_or(-1);

    let second = samples(seed.wrapping_add(1), 5, 150);
    eventstream_testkit::produce(boot, TOPIC, &second).await?;
    // The window: a transaction open, holding every new record, transitions already at the
    // broker, nothing of it committed.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let open = evaluator
            .metric("eventstream_alerts_transaction_open")
            .await;
        let held = evaluator
            .metric("eventstream_alerts_transaction_records")
            .await;
        let at_broker = read_to_end(boot, ALERTS, false)?.len() - committed.len();
        if open == Some(1.0) && held == Some(second.len() as f64) && at_broker > 0 {
            eprintln!(
                "killing with a transaction open: {} records held, {at_broker} of its transitions at the broker ({} committed before)",
                second.len(),
                committed.len()
            );
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no open transaction holding the second batch: open {open:?}, held {held:?}, at broker {at_broker}\n{}",
                evaluator.log()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before_kill = committed_positions(boot)?;
    evaluator.kill9()?;
    assert_eq!(
        before_kill.values().sum::<i64>(),
        first.len() as i64,
        "only the first batch was committed before the kill"
    );
    // What the killed transaction left at the broker.
    let aborted: Vec<ConsumedRecord> = read_to_end(boot, ALERTS, false)?
        .into_iter()
        .filter(|r| r.offset > committed_end)
        .collect();
    let aborted_end = aborted
        .iter()
        .map(|r| r.offset)
        .max()
        .unwrap_or(committed_end);

    let third = samples(seed.wrapping_add(2), 5, 200);
    eventstream_testkit::produce(boot, TOPIC, &third).await?;
    let port2 = port();
    let text2 = config(boot, port2, "100ms", 1000);
    let mut restarted = Evaluator::start(&text2, port2)?;
    wait_all_committed(boot, Duration::from_secs(120)).await?;
    assert!(restarted.running(), "{}", restarted.log());

    let input = read_to_end(boot, TOPIC, false)?;
    let want = model(&parse(&text2), &input);
    let read = read_to_end(boot, ALERTS, true)?;
    let (leaked, kept): (Vec<_>, Vec<_>) = read
        .into_iter()
        .partition(|r| r.offset > committed_end && r.offset <= aborted_end);
    let got = seen(&kept);
    assert!(
        duplicates(&got).is_empty(),
        "seed {seed}: duplicates {:?}",
        duplicates(&got)
    );
    let missing: Vec<_> = want.iter().filter(|w| !got.contains(w)).collect();
    let extra: Vec<_> = got.iter().filter(|g| !want.contains(g)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "seed {seed}: missing {missing:?}, extra {extra:?} ({} wanted, {} read)",
        want.len(),
        got.len()
    );
    // The killed transaction held transitions the restart committed again: a replay of the
    // same records is the same output.
    for s in seen(&aborted) {
        assert!(
            want.contains(&s),
            "seed {seed}: the killed transaction held {s:?}, not in the model"
        );
    }
    if strict {
        assert!(
            leaked.is_empty(),
            "seed {seed}: a read_committed reader saw {} records of the killed transaction",
            leaked.len()
        );
    }
    Ok(leaked.len())
}
